"""The HTML run report: sections present, thumbnails load in a real browser, captions escaped,
absent data gives notes instead of crashes."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.report import build_report, load_rounds
from pipeline.report_thumbs import make_thumb, write_thumbs

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("funnel", "histograms", "samples", "tags", "capfilt", "rounds")
# A caption that runs script if it reaches the page unescaped: it would mark <body>.
HOSTILE = ('<script>document.body.setAttribute("data-pwned","1")</script>'
           '<img src=x onerror="document.body.setAttribute(\'data-pwned\',\'1\')">\u202e evil " \' &amp;')
CAPTIONS_TYPE = pa.list_(pa.struct([("text", pa.string()), ("origin", pa.string()), ("score", pa.float32())]))


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("download_raw", "report"))
    return dst


def _put(t: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    """Set a column: the export's one schema already holds later stages' columns (as nulls)."""
    if name in t.column_names:
        return t.set_column(t.column_names.index(name), name, arr)
    return t.append_column(name, arr)


def _enrich(run: Path) -> None:
    """Add the columns later stages write (lang, CLIP/ITM scores, CapFilt captions), a hostile
    caption, and three bootstrap rounds, so every section of the report has data."""
    rng = np.random.default_rng(0)
    first = True
    for f in sorted((run / "export" / "manifest").glob("*.parquet")):
        t = pq.read_table(f)
        n = t.num_rows
        caps = t.column("caption").to_pylist()
        lang = ["zh" if c and re.search(r"[\u4e00-\u9fff]", c) else "en" for c in caps]
        kept = [d == "kept" for d in t.column("decision").to_pylist()]
        if first:
            caps[kept.index(True)] = HOSTILE
            first = False
        captions = []
        for i, (c, k) in enumerate(zip(caps, kept)):
            if not k:
                captions.append(None)
            elif i % 2:
                captions.append([{"text": c, "origin": "web", "score": 0.8},
                                 {"text": f"synthetic caption {i} <b>bold</b>", "origin": "synthetic", "score": 0.6}])
            else:
                captions.append([{"text": f"only synthetic {i}", "origin": "synthetic", "score": 0.7}])
        t = t.set_column(t.column_names.index("caption"), "caption", pa.array(caps, pa.string()))
        for name, arr in (("clip_score", pa.array(rng.normal(0.3, 0.05, n), pa.float32())),
                          ("itm_score", pa.array(rng.uniform(0, 1, n), pa.float32())),
                          ("captions", pa.array(captions, CAPTIONS_TYPE))):
            t = _put(t, name, arr)
        if "lang" not in t.column_names:  # annotate's text cleaning writes it when it runs
            t = t.append_column("lang", pa.array(lang, pa.string()))
        pq.write_table(t, f)
    for r in range(3):
        d = run / f"round_{r}"
        d.mkdir()
        m = {"r@1": 0.1 + 0.1 * r, "loss": 3.0 - r, "kept": 100 + 10 * r, "note": "text"}
        if r == 2:
            m["eval"] = {"itm_acc": 0.9}
        (d / "metrics.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def rich_run(local_run, tmp_path_factory) -> Path:
    run = _copy_run(local_run[0], tmp_path_factory.mktemp("report") / "run")
    _enrich(run)
    return run


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  imgs.forEach(i => i.setAttribute('data-ok', (i.complete && i.naturalWidth > 0) ? '1' : '0'));
  const r = document.createElement('pre');
  r.id = 'check';
  r.textContent = JSON.stringify({n: imgs.length, ok: imgs.filter(i => i.naturalWidth > 0).length,
    bad: imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    pwned: document.body.hasAttribute('data-pwned'),
    sections: [...document.querySelectorAll('section')].map(s => s.id),
    svgs: document.querySelectorAll('svg.chart').length});
  document.body.appendChild(r);
});
</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium: apt-get install -y chromium")
def test_report_renders_in_chromium(rich_run, tmp_path):
    out = build_report(rich_run, out=tmp_path / "site" / "index.html")
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html.lower(), "the report itself must need no scripts"
    probe = out.with_name("probe.html")  # beside index.html, so the relative thumbs/ paths resolve
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    res = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), tmp=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'<pre id="check">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the check script did not run; DOM tail: {res.stdout[-1000:]}"
    check = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["sections"] == list(SECTIONS)
    assert check["n"] >= 10 and check["ok"] == check["n"], check["bad"]
    assert not check["pwned"]
    assert check["svgs"] >= 6  # funnel + reason bars, 4 histograms, round plots
    shot = tmp_path / "report.png"
    res = _chromium("--window-size=1280,3200", "--hide-scrollbars", f"--screenshot={shot}", out.as_uri(), tmp=tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    with Image.open(shot) as im:
        px = np.asarray(im.convert("L"))
    assert px.shape == (3200, 1280) and px.std() > 10  # not a blank page


def test_report_sections_thumbs_and_escaping(rich_run, tmp_path):
    out = build_report(rich_run, out=tmp_path / "r" / "index.html", samples_per_reason=3)
    html = out.read_text(encoding="utf-8")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    # The hostile caption appears only as text.
    assert "<script>document" not in html and "<img src=x" not in html
    assert "&lt;script&gt;document.body" in html and "\u202e" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    # Every <img> points at an existing small JPEG under thumbs/.
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("thumbs/") for s in srcs)
    for s in set(srcs):
        with Image.open(out.parent / s) as im:
            assert im.format == "JPEG" and max(im.size) <= 128
    # Failed downloads and undecodable bytes show placeholders; kept samples show themselves.
    assert "thumbs/_missing.jpg" in srcs and "thumbs/_undecodable.jpg" in srcs
    assert sum(bool(re.fullmatch(r"thumbs/\d+\.jpg", s)) for s in srcs) >= 3
    summary = json.loads((rich_run / "summary.json").read_text())
    reasons = [*summary["rejected_by_reason"], *summary["failed_by_reason"]]
    assert {"http_404", "truncated", "small_image"} <= set(reasons)
    for reason in reasons:  # one thumbnail group per reason
        assert f": {reason}</h3>" in html
    assert "CLIP score by language" in html and "ITM score by language" in html
    assert "zh (n=" in html and "en (n=" in html
    assert "synthetic" in html and "before (web)" in html
    assert "round 2" in html and "eval.itm_acc" in html and "non-numeric metrics not plotted: note" in html
    assert "balanced" in html


def test_report_notes_missing_sections(local_run, tmp_path):
    wd, summary = local_run
    out = build_report(wd, out=tmp_path / "index.html")
    html = out.read_text(encoding="utf-8")
    assert "no `clip_score` column" in html and "CapFilt has not run" in html and "single run" in html
    assert f"input {summary['input']} = kept {summary['kept']}" in html
    assert not (wd / "report").exists()  # --out elsewhere leaves the run folder alone


def test_report_without_export_or_summary(local_run, tmp_path):
    run = _copy_run(local_run[0], tmp_path / "run")
    shutil.rmtree(run / "export")
    (run / "summary.json").unlink()
    html = build_report(run).read_text(encoding="utf-8")
    assert (run / "report" / "thumbs").is_dir()
    assert "stage outputs (no export manifest)" in html and "no summary.json" in html
    assert "from the row data" in html and "small_image" in html

    shutil.rmtree(run / "select")
    html = build_report(run).read_text(encoding="utf-8")
    assert "the select stage has not run" in html and "Aspect ratio" in html


def test_report_empty_and_missing_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nope")
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "holds no manifest or stage outputs" in html
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html


def test_bootstrap_folder_uses_last_round(rich_run, tmp_path):
    root = tmp_path / "boot"
    for r in range(2):
        (root / f"round_{r}").mkdir(parents=True)
        (root / f"round_{r}" / "metrics.json").write_text(json.dumps({"r@1": 0.2 * (r + 1)}))
    _copy_run(rich_run, root / "round_1" / "run")
    (root / "round_x").mkdir()
    (root / "round_5").mkdir()
    (root / "round_5" / "metrics.json").write_text("{broken")
    html = build_report(root).read_text(encoding="utf-8")
    assert "round_1/run" in html and "CLIP score by language" in html
    assert "round 5:" in html and "could not be read" in html
    rounds, notes = load_rounds(root)
    assert [r for r, _ in rounds] == [0, 1] and rounds[1][1] == {"r@1": 0.4}


def _png(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 10, 10, 128) if mode == "RGBA" else 128).save(buf, format="PNG")
    return buf.getvalue()


def test_make_thumb_statuses(tmp_path):
    p = tmp_path / "t.jpg"
    assert make_thumb(_png((300, 150)), p) == ("ok", 300, 150)
    with Image.open(p) as im:
        assert im.size == (128, 64) and im.mode == "RGB"
    assert make_thumb(_png((40, 40), "L"), p)[0] == "ok"
    assert make_thumb(None, tmp_path / "a.jpg")[0] == "missing"
    assert make_thumb(b"<html>not an image</html>", tmp_path / "b.jpg")[0] == "undecodable"
    assert make_thumb(_png((300, 150))[:80], tmp_path / "c.jpg")[0] == "undecodable"
    assert make_thumb(_png((300, 150)), tmp_path / "d.jpg", max_pixels=1000) == ("too_large", 300, 150)
    assert not any((tmp_path / n).exists() for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"))


def test_write_thumbs_unknown_uid_and_cleanup(local_run, tmp_path):
    thumbs = tmp_path / "thumbs"
    got = write_thumbs(local_run[0], [0, 1, 10**9], thumbs)
    assert got[10**9].status == "missing" and set(got) == {0, 1, 10**9}
    stale = thumbs / "12345.jpg"
    stale.write_bytes(b"x")
    write_thumbs(local_run[0], [0], thumbs)
    assert not stale.exists()  # our own folder: old thumbnails are cleared
    own = tmp_path / "user" / "thumbs"
    own.mkdir(parents=True)
    (own / "holiday.jpg").write_bytes(b"x")
    write_thumbs(local_run[0], [0], own)
    assert (own / "holiday.jpg").exists()  # a folder we did not create keeps its files


def test_cli_report(local_run, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["report", str(local_run[0]), "--out", str(tmp_path / "x" / "r.html"), "--per-reason", "2"]) == 0
    assert (tmp_path / "x" / "r.html").exists() and (tmp_path / "x" / "thumbs").is_dir()
    assert "report:" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_odd_columns_and_out_dir(local_run, tmp_path):
    run = _copy_run(local_run[0], tmp_path / "run")
    for f in (run / "export" / "manifest").glob("*.parquet"):
        t = pq.read_table(f)
        n = t.num_rows
        t = _put(t, "clip_score", pa.array(["high"] * n, pa.string()))
        t = _put(t, "captions", pa.array([["just a string"]] * n, pa.list_(pa.string())))
        pq.write_table(t, f)
    (tmp_path / "site").mkdir()
    out = build_report(run, out=tmp_path / "site")
    html = out.read_text(encoding="utf-8")
    assert out == tmp_path / "site" / "index.html"
    assert "column `clip_score` is string, not numeric" in html
    assert '<section id="capfilt">' in html

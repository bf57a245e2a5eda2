"""Scale check: wall time, rows/s and peak RSS per stage at 100k and 1M rows.

Downloading a million URLs is not the point here (bench/download.py measures the downloader), so
the download shards are built directly: the URL list points at a loopback corpus of a few
thousand distinct images, and each row's download result carries one of those images' bytes
(5% are failed downloads). Everything after that is the real pipeline, one stage per child
process so each stage's peak RSS is its own:

    ingest -> [download shards, synthesized] -> annotate -> dedup -> select -> export

annotate runs the real stage with its real text rules on every row; image decoding is cached per
distinct image (the list re-uses them), so the figure is the text + bookkeeping cost per row plus
one decode per distinct image.

    python bench/scale.py                 # 100k and 1M rows
    python bench/scale.py --rows 200000   # one size
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ["annotate", "dedup", "select", "export"]
N_IMAGES = 4000
SHARD = 10_000
COLORS_EN = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
COLORS_ZH = ["红色", "绿色", "蓝色", "黄色", "紫色", "橙色", "黑色", "白色", "灰色", "粉色"]
SHAPES_EN = ["circle", "square", "triangle", "star", "heart", "hexagon", "ring", "cross"]
SHAPES_ZH = ["圆形", "正方形", "三角形", "星形", "心形", "六边形", "圆环", "十字"]
PLACES_EN = ["on the left", "on the right", "at the top", "at the bottom", "in the middle"]
PLACES_ZH = ["在左边", "在右边", "在上方", "在下方", "在中间"]


def _images(seed: int = 0) -> list[bytes]:
    """Distinct small JPEGs: mostly 128x128 (kept with min_short_side 100), some tiny, some wide."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for i in range(N_IMAGES):
        size = (64, 64) if i % 10 == 0 else (400, 100) if i % 20 == 1 else (128, 128)
        im = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            d.rectangle([x0, y0, x0 + size[0] // 3, y0 + size[1] // 3],
                        fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=70)
        out.append(buf.getvalue())
    return out


def make_urls(path: Path, rows: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    img = rng.integers(0, N_IMAGES, rows)
    c, s, p, n = (rng.integers(0, len(x), rows) for x in (COLORS_EN, SHAPES_EN, PLACES_EN, [0] * 1000))
    zh = rng.random(rows) < 0.5
    caps = [f"{COLORS_ZH[c[i]]}的{SHAPES_ZH[s[i]]}{PLACES_ZH[p[i]]}，编号{n[i]}" if zh[i] else
            f"a {COLORS_EN[c[i]]} {SHAPES_EN[s[i]]} {PLACES_EN[p[i]]}, item {n[i]}" for i in range(rows)]
    # 1% exact URL repeats (the same page crawled twice)
    urls = [f"http://127.0.0.1:8731/img/{img[i]}.jpg?v={i if i % 100 else i // 100}" for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "caption": caps, "img": pa.array(img, pa.int32())}), path,
                   compression="zstd")


def synth_download(workdir: Path) -> None:
    """download/<shard>.parquet as the download stage writes it, from the URL's image id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.store import ColumnStore, atomic_write_parquet

    images = _images()
    store = ColumnStore(workdir, ["download"])
    for s in store.shards():
        t = pq.read_table(store.path("input", s), columns=["uid", "img"])
        ids = t.column("img").to_pylist()
        fail = [u % 20 == 7 for u in t.column("uid").to_pylist()]
        atomic_write_parquet(pa.table({
            "uid": t.column("uid"),
            "image": pa.array([None if f else images[i] for i, f in zip(ids, fail)], pa.binary()),
            "download_ok": pa.array([not f for f in fail]),
            "download_reason": pa.array(["http_404" if f else None for f in fail], pa.string()),
            "download_error": pa.array(["HTTP Error 404: Not Found" if f else None for f in fail], pa.string()),
        }), store.path("download", s))


def recipe(urls: Path, workdir: Path) -> dict:
    return {"input": {"path": str(urls), "keep_cols": ["img"]}, "workdir": str(workdir), "shard_size": SHARD,
            "executor": "local", "stages": ["download", *STAGES],
            "select": {"min_short_side": 100}}


def child(step: str, urls: Path, workdir: Path) -> dict:
    """One step in this process; returns its wall time and this process's peak RSS."""
    from pipeline.config import recipe_from_dict

    r = recipe_from_dict(recipe(urls, workdir))
    t0 = time.perf_counter()
    if step == "ingest":
        from pipeline.ingest import ingest

        ingest(r.input, workdir, r.shard_size)
    elif step == "download":
        synth_download(workdir)
    else:
        from pipeline.executors import LocalExecutor
        from pipeline.runner import run

        if step == "annotate":
            import stages.annotate as annotate

            # Decode each distinct image once; the text rules still run on every row.
            annotate.inspect_image = functools.lru_cache(maxsize=N_IMAGES * 2)(annotate.inspect_image)
        run(r, only=[step], executor=LocalExecutor(), quiet=True)
    return {"step": step, "seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """This process's own high-water RSS. Not getrusage: Linux carries ru_maxrss over exec, so a
    child would report at least its parent's size at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(rows: int, tmp: Path) -> list[dict]:
    urls = tmp / f"urls_{rows}.parquet"
    workdir = tmp / f"run_{rows}"
    shutil.rmtree(workdir, ignore_errors=True)
    make_urls(urls, rows)
    out = []
    for step in ["ingest", "download", *STAGES]:
        p = subprocess.run([sys.executable, __file__, "--child", step, str(urls), str(workdir)],
                           capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        if p.returncode != 0:
            raise SystemExit(f"step {step} failed:\n{p.stderr[-4000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["rows_per_s"] = rows / r["seconds"]
        out.append(r)
        print(f"{rows:>9,} rows  {step:<9} {r['seconds']:8.1f} s  {r['rows_per_s']:>10,.0f} rows/s  "
              f"peak RSS {r['peak_rss_mib']:7.0f} MiB", flush=True)
    summary = json.loads((workdir / "summary.json").read_text())
    print(f"{rows:>9,} rows  accounting: kept {summary['kept']:,} rejected {summary['rejected']:,} "
          f"failed {summary['failed']:,} balanced={summary['balanced']}  "
          f"workdir {sum(f.stat().st_size for f in workdir.rglob('*') if f.is_file()) / 2**20:,.0f} MiB", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="row counts (default 100000 and 1000000)")
    ap.add_argument("--tmp", help="scratch directory (default: a new temp dir, removed afterwards)")
    ap.add_argument("--child", nargs=3, metavar=("STEP", "URLS", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, urls, workdir = args.child
        print(json.dumps(child(step, Path(urls), Path(workdir))))
        return
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="mmcurate-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for rows in args.rows or [100_000, 1_000_000]:
            results[rows] = bench(rows, tmp)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    sizes = sorted(results)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"\npeak RSS growth {lo:,} -> {hi:,} rows ({hi / lo:.0f}x rows):")
        for a, b in zip(results[lo], results[hi]):
            print(f"  {a['step']:<9} {a['peak_rss_mib']:7.0f} -> {b['peak_rss_mib']:7.0f} MiB "
                  f"({b['peak_rss_mib'] / a['peak_rss_mib']:.1f}x)")


if __name__ == "__main__":
    main()

"""The synthetic corpus: its labels must be true of what was generated."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import opencc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.attributes import COLOR_RGB, extract_attributes
from synth.captions import all_captions, render_caption, wrong_attribute
from synth.cli import register
from synth.corpus import generate_corpus
from synth.noise import ALL_LABELS, NO_IMAGE, SERVED_FAULTS, NoiseRates, sensitive_forms
from synth.pii import card_number, id_number, is_valid_id, luhn_valid, mobile
from synth.scenes import Scene, render_scene

# High rates so a 240-row corpus holds several rows of every kind.
BUSY = NoiseRates().override({
    "tiny": 0.04, "extreme_aspect": 0.04, "exact_dup": 0.06, "near_dup": 0.06, "corrupt": 0.03,
    "truncated": 0.03, "html": 0.03, "http_404": 0.03, "http_500": 0.03, "slow": 0.03,
    "timeout": 0.03, "mismatched": 0.1, "wrong_attribute": 0.1, "uninformative": 0.1,
    "boilerplate": 0.1, "traditional": 0.1, "pii": 0.2, "sensitive": 0.1,
})
N_BUSY = 240


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    out = tmp_path_factory.mktemp("busy")
    meta = generate_corpus(out, n_rows=N_BUSY, seed=3, rates=BUSY, n_test=40)
    labels = pq.read_table(out / "labels.parquet").to_pylist()
    return out, meta, labels


def _file(out: Path, row: dict) -> bytes:
    routes = json.loads((out / "server.json").read_text())["routes"]
    return (out / routes[row["path"]]["file"]).read_bytes()


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


def _rows(labels, kind):
    rows = [r for r in labels if kind in r["labels"]]
    assert rows, f"no {kind} rows generated"
    return rows


# ---- layout --------------------------------------------------------------------------------

def test_layout_and_schema(busy):
    out, meta, labels = busy
    urls = pq.read_table(out / "urls.parquet")
    assert urls.column_names == ["url", "caption"]
    assert urls.num_rows == N_BUSY == len(labels)
    assert [r["row"] for r in labels] == list(range(N_BUSY))
    assert urls.column("url").to_pylist() == [r["url"] for r in labels]
    assert urls.column("caption").to_pylist() == [r["caption"] for r in labels]
    assert len(set(r["url"] for r in labels)) == N_BUSY
    for r in labels:
        assert r["url"].startswith("http://127.0.0.1:8731/")
        assert re.fullmatch(r"/[a-z]+(/[\w.-]+)+", r["path"]), r["path"]
        assert r["label"] in ALL_LABELS
        assert r["label"] == (r["labels"][0] if r["labels"] else "clean")
    exts = {Path(r["path"]).suffix for r in labels}
    assert {".jpg", ".png", ".webp", ""} <= exts
    lexicon = (out / "lexicon.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in lexicon if w]
    assert 30 <= len(words) <= 60
    assert any(re.search(r"[\u4e00-\u9fff]", w) for w in words)
    assert any(re.fullmatch(r"[a-z ]+", w) for w in words)
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["label_counts"] == {k: v for k, v in sorted(
        {lab: sum(r["label"] == lab for r in labels) for lab in ALL_LABELS}.items()) if v}


def test_every_kind_is_present(busy):
    _, _, labels = busy
    present = {lab for r in labels for lab in r["labels"]} | {r["label"] for r in labels}
    assert present == set(ALL_LABELS)
    assert any(len(r["labels"]) > 1 for r in labels)


def test_image_columns_follow_the_fault(busy):
    _, _, labels = busy
    for r in labels:
        served = next((lab for lab in r["labels"] if lab in SERVED_FAULTS), None)
        if served in NO_IMAGE:
            assert r["true_caption"] is None and r["image_id"] is None and r["shape"] is None
        else:
            assert r["true_caption"] and r["image_id"] and r["shape"] and r["count"] in (1, 2, 3)
            assert r["image_format"] in ("jpeg", "png", "webp")


# ---- images --------------------------------------------------------------------------------

def test_normal_images_decode_with_their_attributes(busy):
    out, _, labels = busy
    clean = [r for r in labels if r["label"] == "clean"][:25]
    for r in clean:
        with Image.open(io.BytesIO(_file(out, r))) as im:
            assert im.format.lower() == r["image_format"]
            assert im.size == (r["width"], r["height"])
            assert min(im.size) >= 200 and max(im.size) / min(im.size) <= 2


def test_tiny_and_extreme_sizes(busy):
    out, _, labels = busy
    for r in _rows(labels, "tiny"):
        with Image.open(io.BytesIO(_file(out, r))) as im:
            assert max(im.size) < 64
    for r in _rows(labels, "extreme_aspect"):
        with Image.open(io.BytesIO(_file(out, r))) as im:
            assert max(im.size) / min(im.size) > 4


def test_exact_and_near_duplicates(busy):
    out, _, labels = busy
    for r in _rows(labels, "exact_dup"):
        orig = labels[r["dup_of_row"]]
        assert _file(out, r) == _file(out, orig)
        assert r["url"] != orig["url"] and r["image_id"] == orig["image_id"]
    for r in _rows(labels, "near_dup"):
        orig = labels[r["dup_of_row"]]
        data = _file(out, r)
        assert data != _file(out, orig) and _decodes(data)
        assert r["image_id"] == orig["image_id"] and r["shape"] == orig["shape"]
    for r in labels:
        if r["dup_of_row"] is not None:
            assert r["label"] in ("exact_dup", "near_dup") or \
                {"exact_dup", "near_dup"} & set(r["labels"])
            assert labels[r["dup_of_row"]]["dup_of_row"] is None


def test_broken_bytes_do_not_decode(busy):
    out, _, labels = busy
    for kind in ("corrupt", "truncated"):
        for r in _rows(labels, kind):
            assert not _decodes(_file(out, r)), (kind, r["row"])
    for r in _rows(labels, "html"):
        body = _file(out, r)
        assert body.lstrip().lower().startswith(b"<!doctype html") and not _decodes(body)


def test_server_map_matches_labels(busy):
    out, _, labels = busy
    routes = json.loads((out / "server.json").read_text())["routes"]
    assert set(routes) == {r["path"] for r in labels}
    for r in labels:
        route = routes[r["path"]]
        status = {"http_404": 404, "http_500": 500}.get(r["labels"][0] if r["labels"] else "", 200)
        assert route["status"] == status
        assert (route["file"] is None) == (status != 200)
        if "slow" in r["labels"]:
            assert 0 < route["delay"] < 10
        elif "timeout" in r["labels"]:
            assert route["delay"] == BUSY.timeout_delay
        else:
            assert route["delay"] == 0
        if status == 200:
            assert route["content_type"].startswith("image/")


# ---- captions ------------------------------------------------------------------------------

def test_pii_is_in_the_caption_and_valid(busy):
    _, _, labels = busy
    types = set()
    for r in _rows(labels, "pii"):
        assert r["pii"]
        for item in r["pii"]:
            types.add(item["type"])
            assert item["text"] in r["caption"]
            if item["type"] == "id":
                assert is_valid_id(item["text"]), item
            if item["type"] == "card":
                digits = item["text"].replace(" ", "")
                assert 16 <= len(digits) <= 19 and luhn_valid(digits), item
    assert {"phone", "email", "id", "card", "name"} <= types
    assert all(not r["pii"] for r in labels if "pii" not in r["labels"])


def test_sensitive_words_come_from_the_lexicon(busy):
    out, _, labels = busy
    lexicon = set((out / "lexicon.txt").read_text(encoding="utf-8").split("\n")) - {""}
    forms = Counter()
    for r in _rows(labels, "sensitive"):
        assert r["sensitive_words"]
        for w in r["sensitive_words"]:
            written = [f for f, v in sensitive_forms(w).items() if v in r["caption"]]
            assert w in lexicon and written, (w, r["caption"])
            forms[written[-1]] += 1
    # Mostly as listed, but also in forms a matcher must normalise and in held-out ones.
    assert forms["plain"] > len(_rows(labels, "sensitive")) / 2 and len(forms) >= 3, forms
    for r in labels:
        if "sensitive" not in r["labels"]:
            assert not any(w in r["caption"] for w in lexicon), r["caption"]


def test_traditional_boilerplate_uninformative(busy):
    _, _, labels = busy
    t2s = opencc.OpenCC("t2s")
    for r in _rows(labels, "traditional"):
        assert r["lang"] == "zh"
        if r["true_caption"] and not {"mismatched", "wrong_attribute"} & set(r["labels"]):
            assert r["caption"] != r["true_caption"]
            assert t2s.convert(r["caption"]).startswith(r["true_caption"]) or r["pii"] or \
                r["sensitive_words"]
    for r in _rows(labels, "boilerplate"):
        assert r["caption"] != r["true_caption"]
        if r["label"] == "boilerplate":  # nothing else changed: the real caption comes first
            assert r["caption"].startswith(r["true_caption"])
    for r in _rows(labels, "uninformative"):
        assert extract_attributes(r["caption"])["shape"] is None or r["pii"] or r["sensitive_words"]


def test_caption_truth(busy):
    _, _, labels = busy
    for r in labels:
        if r["label"] == "clean":
            assert r["caption"] == r["true_caption"]
        if r["true_caption"] is None:
            continue
        got = extract_attributes(r["true_caption"])
        for k in ("shape", "color", "position", "size", "background"):
            assert got[k] == r[k], (r["true_caption"], k, got[k], r[k])
        assert got["count"] == str(r["count"])
        lang_zh = bool(re.search(r"[\u4e00-\u9fff]", r["true_caption"]))
        assert lang_zh == (r["lang"] == "zh")
    # PII names (黄伟) and sensitive words (黑彩网站) may name a colour before the caption does.
    skip = {"uninformative", "pii", "sensitive"}
    for r in _rows(labels, "wrong_attribute"):
        if r["true_caption"] is None or skip & set(r["labels"]):
            continue
        got = extract_attributes(r["caption"])
        field = r["wrong_field"]
        want = str(r[field]) if field == "count" else r[field]
        assert got[field] != want
    for r in _rows(labels, "mismatched"):
        if r["true_caption"] is None or skip & set(r["labels"]):
            continue
        got = extract_attributes(r["caption"])
        assert got["shape"] != r["shape"] and got["color"] != r["color"]


def test_languages_are_split(busy):
    _, _, labels = busy
    zh = sum(r["lang"] == "zh" for r in labels)
    assert abs(zh - N_BUSY / 2) <= 2


# ---- test split ----------------------------------------------------------------------------

def test_test_split_is_clean_and_disjoint(busy):
    out, _, labels = busy
    test = pq.read_table(out / "test" / "test.parquet").to_pylist()
    assert len(test) == 40
    keys = lambda r: (r["shape"], r["color"], r["size"], r["position"], r["count"], r["background"])
    train_keys = {keys(r) for r in labels if r["shape"] is not None}
    assert not train_keys & {keys(t) for t in test}
    assert not {r["image_id"] for r in labels} & {t["image_id"] for t in test}
    for t in test:
        assert _decodes(t["image"])
        for lang in ("en", "zh"):
            caps = t[f"captions_{lang}"]
            assert len(caps) >= 2 and len(set(caps)) == len(caps)
            for c in caps:
                assert extract_attributes(c)["shape"] == t["shape"]


# ---- determinism and rates -----------------------------------------------------------------

def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(out).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_corpus(tmp_path / "a", n_rows=40, seed=7, n_test=5)
    b = generate_corpus(tmp_path / "b", n_rows=40, seed=7, n_test=5)
    c = generate_corpus(tmp_path / "c", n_rows=40, seed=8, n_test=5)
    assert a == b
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    ua = pq.read_table(tmp_path / "a" / "urls.parquet").to_pylist()
    uc = pq.read_table(tmp_path / "c" / "urls.parquet").to_pylist()
    assert ua != uc


def test_default_rates_are_honoured(tmp_path):
    n = 400
    rates = NoiseRates()
    meta = generate_corpus(tmp_path, n_rows=n, seed=1, n_test=0)
    assert 0.40 <= meta["clean_fraction"] <= 0.52
    for name in NoiseRates.RATE_NAMES:
        want = getattr(rates, name) * n
        got = meta["labels_any_counts"].get(name, 0)
        # traditional can drop a row whose caption has no convertible character.
        assert abs(got - want) <= max(2, 0.1 * want), (name, got, want)


def test_no_noise_means_all_clean(tmp_path):
    meta = generate_corpus(tmp_path, n_rows=30, seed=2, rates=NoiseRates.none(), n_test=0)
    assert meta["label_counts"] == {"clean": 30}


def test_rates_validation():
    with pytest.raises(ValueError, match="unknown noise rate"):
        NoiseRates().override(["typo=0.1"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        NoiseRates().override(["pii"])
    with pytest.raises(ValueError, match="add up to"):
        NoiseRates().override({"http_404": 0.7, "http_500": 0.7})
    assert NoiseRates().override(["pii=0.3", "timeout_delay=5"]).pii == 0.3


def test_refuses_to_clobber_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="meta.json"):
        generate_corpus(tmp_path, n_rows=5)


# ---- pieces --------------------------------------------------------------------------------

def test_extract_attributes_examples():
    assert extract_attributes("two small red circles on the left of a striped background") == {
        "color": "red", "shape": "circle", "position": "left", "size": "small", "count": "2",
        "background": "stripes"}
    assert extract_attributes("条纹背景左侧有两个红色的小圆形") == {
        "color": "red", "shape": "circle", "position": "left", "size": "small", "count": "2",
        "background": "stripes"}
    got = extract_attributes("條紋背景右側有一個粉紅色的五角星")
    assert (got["color"], got["shape"], got["position"]) == ("pink", "star", "right")
    got = extract_attributes("A big Blue Hexagon in the middle, polka dot background")
    assert (got["color"], got["shape"], got["position"], got["size"], got["background"]) == (
        "blue", "hexagon", "center", "large", "dots")
    assert extract_attributes("圆点背景上的绿色菱形")["shape"] == "diamond"
    assert extract_attributes("IMG_2031.jpg") == {k: None for k in extract_attributes("")}
    assert extract_attributes("bright upright crossword")["color"] is None


def test_every_template_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(60):
        attrs = {"shape": str(rng.choice(["circle", "cross", "heart", "star"])),
                 "color": str(rng.choice(list(COLOR_RGB))),
                 "size": str(rng.choice(["small", "medium", "large"])),
                 "position": str(rng.choice(["left", "right", "top", "bottom", "center"])),
                 "count": int(rng.integers(1, 4)),
                 "background": str(rng.choice(["plain", "gradient", "stripes", "noise",
                                               "checker", "dots"]))}
        for lang in ("en", "zh"):
            for cap in all_captions(attrs, lang):
                got = extract_attributes(cap)
                assert got == {**attrs, "count": str(attrs["count"])}, cap
        wrong, field = wrong_attribute(attrs, rng)
        assert [k for k in attrs if wrong[k] != attrs[k]] == [field]
    with pytest.raises(ValueError, match="language"):
        render_caption(attrs, "fr", 0)


@pytest.mark.parametrize("position", ["left", "right", "top", "bottom", "center"])
def test_rendered_shapes_sit_where_the_caption_says(position):
    scene = Scene("x", "square", "red", "medium", position, 2, "stripes", 480, 320, 5)
    arr = np.asarray(render_scene(scene)).astype(int)
    mask = (np.abs(arr - np.array(COLOR_RGB["red"])).sum(axis=2) < 30)
    ys, xs = np.nonzero(mask)
    assert mask.sum() > 500
    cx, cy = xs.mean() / 480, ys.mean() / 320
    expect = {"left": cx < 0.4, "right": cx > 0.6, "top": cy < 0.4, "bottom": cy > 0.6,
              "center": 0.35 < cx < 0.65 and 0.35 < cy < 0.65}
    assert expect[position], (cx, cy)


def test_pii_generators():
    rng = np.random.default_rng(4)
    ids = [id_number(rng) for _ in range(300)]
    assert all(is_valid_id(x) for x in ids)
    assert is_valid_id(id_number(rng, want_x=True)) and id_number(rng, want_x=True).endswith("X")
    assert not is_valid_id(ids[0][:17] + ("0" if ids[0][17] != "0" else "1"))
    cards = [card_number(rng) for _ in range(300)]
    assert all(luhn_valid(c.replace(" ", "")) for c in cards)
    assert {len(c.replace(" ", "")) for c in cards} == {16, 17, 18, 19}
    assert any(" " in c for c in cards)
    forms = {re.sub(r"\d", "9", mobile(rng)) for _ in range(300)}
    assert {"99999999999", "999-9999-9999", "999 9999 9999", "+99 999 9999 9999"} <= forms


# ---- CLI -----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcurate")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_synth(tmp_path, capsys):
    args = _parser().parse_args(["synth", str(tmp_path / "c"), "--rows", "30", "--seed", "4",
                                 "--test-rows", "3", "--rate", "pii=0.5",
                                 "--base-url", "http://127.0.0.1:9999"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "wrote 30 rows" in out and re.search(r"^pii\s+\d+\s+15$", out, re.M)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["base_url"] == "http://127.0.0.1:9999" and meta["rates"]["pii"] == 0.5
    bad = _parser().parse_args(["synth", str(tmp_path / "d"), "--rate", "nope=1"])
    assert bad.func(bad) == 2
    assert "unknown noise rate" in capsys.readouterr().err


def test_cli_help_and_serve_args(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["synth", "--help"])
    text = capsys.readouterr().out
    assert "--rate NAME=VALUE" in text and "timeout_delay" in text
    args = _parser().parse_args(["serve", "corpus"])
    assert args.port is None and args.host == "127.0.0.1"


def test_boilerplate_is_written_for_the_generator_with_a_held_out_part():
    """The generator must not draw from the rule it is used to test: few of its phrases are
    verbatim entries of filters/data/boilerplate.txt, and a real part contains none of them, so
    bench/quality.py can report recall on phrases the rule list knows and on held-out ones."""
    from filters.text import load_wordlist
    from synth.noise import _GENERIC, BOILERPLATE_EN, BOILERPLATE_ZH

    rules = [r.lower() for r in load_wordlist(Path(__file__).resolve().parents[1] / "filters" / "data"
                                              / "boilerplate.txt")]
    embedded = [r for r in rules if not r.startswith("=")]
    whole = {r[1:] for r in rules if r.startswith("=")}
    for phrases in (BOILERPLATE_ZH, BOILERPLATE_EN):
        low = [p.lower() for p in phrases]
        verbatim = [p for p in low if p in embedded]
        held_out = [p for p in low if not any(e in p for e in embedded)]
        assert len(verbatim) <= len(low) // 4, verbatim
        assert len(held_out) >= len(low) // 3, held_out
        assert len(held_out) < len(low)  # and some the rule list should know
    for words in _GENERIC.values():
        assert any(w.lower() not in whole for w in words)

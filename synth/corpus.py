"""Generate the synthetic bilingual web corpus: a URL list, its ground truth, the bytes a
loopback server returns for each URL, and a clean held-out test split.

Every row is planned first (which fault, which caption noise, which language), with exact
counts from the rates, then built from its own random stream (`seed`, row), so a row's content
does not depend on how many rows come before it.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synth.attributes import BACKGROUNDS, COLORS, COUNTS, POSITIONS, SHAPES, SIZES
from synth.captions import all_captions, caption_for, wrong_attribute
from synth.noise import (
    CAPTION_ADDONS, CAPTION_CONTENT, LABEL_PRIORITY, NO_IMAGE, SERVED_FAULTS, NoiseRates,
    add_pii, add_sensitive, append_boilerplate, lexicon, uninformative,
)
from synth.pii import make_pii
from synth.scenes import FORMAT_EXT, FORMAT_MIME, Scene, encode, render_scene, sample_key, sample_scene

DEFAULT_BASE_URL = "http://127.0.0.1:8731"
FORMAT_VERSION = 1
_N_KEYS = len(SHAPES) * len(COLORS) * len(SIZES) * len(POSITIONS) * len(COUNTS) * len(BACKGROUNDS)

PII_TYPE = pa.struct([("type", pa.string()), ("text", pa.string())])
LABELS_SCHEMA = pa.schema([
    ("row", pa.int64()), ("url", pa.string()), ("caption", pa.string()), ("lang", pa.string()),
    ("label", pa.string()), ("labels", pa.list_(pa.string())), ("true_caption", pa.string()),
    ("image_id", pa.string()), ("dup_of_row", pa.int64()), ("pii", pa.list_(PII_TYPE)),
    ("sensitive_words", pa.list_(pa.string())), ("shape", pa.string()), ("color", pa.string()),
    ("size", pa.string()), ("position", pa.string()), ("count", pa.int64()),
    ("background", pa.string()), ("image_format", pa.string()),
    # Beyond the ground truth proper: served image size, which attribute a wrong_attribute
    # caption changed, and the URL path (the server's key).
    ("width", pa.int64()), ("height", pa.int64()), ("wrong_field", pa.string()),
    ("path", pa.string()),
])
TEST_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("image", pa.binary()), ("captions_en", pa.list_(pa.string())),
    ("captions_zh", pa.list_(pa.string())), ("shape", pa.string()), ("color", pa.string()),
    ("size", pa.string()), ("position", pa.string()), ("count", pa.int64()),
    ("background", pa.string()),
])


@dataclass
class _Plan:
    served: str | None = None
    content: str | None = None
    addons: set[str] = field(default_factory=set)
    lang: str = "en"
    dup_of: int | None = None


@dataclass
class _Built:
    """What pass one keeps of a row that later rows may copy (duplicates) or borrow from."""

    scene: Scene
    image: Image.Image | None = None
    data: bytes | None = None
    fmt: str | None = None
    true_caption: dict[str, str] = field(default_factory=dict)


def _exact_counts(rates: NoiseRates, names: tuple[str, ...], n: int) -> list[tuple[str, int]]:
    out, used = [], 0
    for name in names:
        k = min(int(round(getattr(rates, name) * n)), n - used)
        out.append((name, k))
        used += k
    return out


def _plan(n: int, rates: NoiseRates, rng: np.random.Generator) -> list[_Plan]:
    plans = [_Plan() for _ in range(n)]
    for group, attr in ((SERVED_FAULTS, "served"), (CAPTION_CONTENT, "content")):
        order, start = rng.permutation(n), 0
        for name, k in _exact_counts(rates, group, n):
            for i in order[start:start + k]:
                setattr(plans[i], attr, name)
            start += k
    captioned = [i for i in range(n) if plans[i].content != "uninformative"]
    for name in ("traditional", "boilerplate"):
        k = min(int(round(getattr(rates, name) * n)), len(captioned))
        for i in rng.choice(captioned, size=k, replace=False) if k else []:
            plans[i].addons.add(name)
    for name in ("pii", "sensitive"):
        k = int(round(getattr(rates, name) * n))
        for i in rng.choice(n, size=k, replace=False) if k else []:
            plans[i].addons.add(name)
    # Traditional captions are Chinese; the other rows are split to reach zh_fraction overall.
    trad = [i for i in range(n) if "traditional" in plans[i].addons]
    rest = [i for i in range(n) if "traditional" not in plans[i].addons]
    k_zh = min(len(rest), max(0, int(round(rates.zh_fraction * n)) - len(trad)))
    for i in trad:
        plans[i].lang = "zh"
    for i in rng.choice(rest, size=k_zh, replace=False) if k_zh else []:
        plans[i].lang = "zh"
    # Duplicates copy a row whose URL serves a normal image, preferably an earlier one.
    sources = [i for i in range(n) if plans[i].served in (None, "slow")]
    for i in range(n):
        if plans[i].served in ("exact_dup", "near_dup"):
            if not sources:
                plans[i].served = None  # nothing to duplicate (all rows faulty)
                continue
            earlier = [s for s in sources if s < i]
            pool = earlier or sources
            plans[i].dup_of = int(pool[int(rng.integers(0, len(pool)))])
    return plans


def _url_path(row: int, seed: int, ext: str | None, rng: np.random.Generator) -> str:
    # 7919 is prime and coprime with 10**7, so num is unique per row (row < 10**7).
    num = (row * 7919 + seed * 104729 + 1000003) % 10**7
    h = hashlib.sha1(f"{seed}:{num}".encode()).hexdigest()
    dot = f".{ext}" if ext else ""
    style = int(rng.integers(0, 6))
    if style == 0:
        return f"/img/{h[:2]}/{num}{dot}"
    if style == 1:
        return f"/uploads/20{18 + num % 7}/{1 + num % 12:02d}/{h[:10]}{num % 1000:03d}{dot}"
    if style == 2:
        return f"/media/{h[:2]}/{h[2:4]}/{h[:12]}{num}{dot}"
    if style == 3:
        return f"/photos/{num}_{h[:6]}{dot}"
    if style == 4:
        return f"/p/{h[:8]}{num}{dot}"
    return f"/static/images/{h[:4]}/{num}-{h[4:10]}{dot}"


_HTML_PAGES = [
    ("页面不存在", "您访问的页面已被删除或不存在，3秒后返回首页。"),
    ("请登录后查看", "该图片仅对登录用户可见，请先登录。"),
    ("Access denied", "Hotlinking of images on this site is not allowed."),
    ("Just a moment...", "Checking your browser before accessing the site."),
    ("403 Forbidden", "You don't have permission to access this resource."),
]


def _html_page(rng: np.random.Generator) -> bytes:
    title, msg = _HTML_PAGES[int(rng.integers(0, len(_HTML_PAGES)))]
    body = "".join(f"<p>{msg}</p>\n" for _ in range(int(rng.integers(1, 6))))
    return (f'<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n{body}"
            f'<a href="/">home</a></body></html>\n').encode()


def _pick_format(rng: np.random.Generator) -> tuple[str, int]:
    fmt = str(rng.choice(["jpeg", "png", "webp"], p=[0.6, 0.2, 0.2]))
    quality = int(rng.integers(60, 96)) if fmt == "jpeg" else int(rng.integers(50, 91))
    return fmt, quality


def _fault_size(kind: str, rng: np.random.Generator) -> tuple[int, int]:
    if kind == "tiny":
        return int(rng.integers(16, 64)), int(rng.integers(16, 64))
    short = int(rng.integers(96, 200))
    long = min(int(short * rng.uniform(4.3, 8.0)), 1600)
    return (long, short) if rng.random() < 0.7 else (short, long)


def _near_dup(img: Image.Image, src_fmt: str, rng: np.random.Generator) -> tuple[Image.Image, str, int]:
    """Crop slightly and/or resize, then re-encode at another quality (maybe another format)."""
    w, h = img.size
    ops = [("crop",), ("resize",), ("crop", "resize")][int(rng.integers(0, 3))]
    out = img
    if "crop" in ops:
        fx = rng.uniform(0.02, 0.06, size=4)
        box = (int(w * fx[0]), int(h * fx[1]), w - int(w * fx[2]), h - int(h * fx[3]))
        out = out.crop(box)
    if "resize" in ops:
        ow, oh = out.size
        # Keep normal images above a short-side >= 200 rule: only the dup label should flag it.
        scale = max(float(rng.uniform(0.6, 0.92)), min(1.0, 200 / min(ow, oh)))
        out = out.resize((max(1, round(ow * scale)), max(1, round(oh * scale))), Image.BILINEAR)
    fmt = src_fmt if rng.random() < 0.7 else str(rng.choice(["jpeg", "webp"]))
    quality = int(rng.integers(35, 80))
    return out, fmt, quality


def _test_split(n_test: int, seed: int) -> tuple[pa.Table, set[tuple]]:
    rng = np.random.default_rng([seed, 1])
    keys: list[tuple] = []
    seen: set[tuple] = set()
    while len(keys) < n_test:
        key = sample_key(rng)
        if key not in seen:
            seen.add(key)
            keys.append(key)
    cols: dict[str, list] = {name: [] for name in TEST_SCHEMA.names}
    for i, key in enumerate(keys):
        scene = sample_scene(rng, f"test{i:05d}", key)
        attrs = scene.attributes()
        cols["image_id"].append(scene.scene_id)
        cols["image"].append(encode(render_scene(scene), "jpeg", 92))
        cols["captions_en"].append(all_captions(attrs, "en"))
        cols["captions_zh"].append(all_captions(attrs, "zh"))
        for k, v in attrs.items():
            cols[k].append(v)
    return pa.table(cols, schema=TEST_SCHEMA), seen


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise FileExistsError(
            f"{out} exists, is not empty and holds no synthetic corpus (no meta.json); "
            "pick an empty or new directory so nothing of yours is overwritten")
    for sub in ("files", "test"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "files").mkdir(parents=True)
    (out / "test").mkdir()


def generate_corpus(out_dir: str | Path, n_rows: int = 1000, seed: int = 0,
                    base_url: str = DEFAULT_BASE_URL, rates: NoiseRates | None = None,
                    n_test: int = 200) -> dict:
    """Write a synthetic web corpus to `out_dir` and return its meta (also in meta.json).

    Layout: urls.parquet (url, caption), labels.parquet (ground truth, same rows and order),
    files/ + server.json (what each URL path serves), lexicon.txt (sensitive words),
    test/test.parquet (clean held-out scenes, none shared with the training rows).
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    if not 0 <= n_test <= _N_KEYS // 4:
        raise ValueError(f"n_test must be between 0 and {_N_KEYS // 4}, got {n_test}")
    rates = rates or NoiseRates()
    base_url = base_url.rstrip("/")
    out = Path(out_dir)
    _prepare_out_dir(out)

    test_table, test_keys = _test_split(n_test, seed)
    pq.write_table(test_table, out / "test" / "test.parquet")

    plans = _plan(n_rows, rates, np.random.default_rng([seed, 0]))
    rngs = [np.random.default_rng([seed, 2, i]) for i in range(n_rows)]

    # Pass 1: a scene for every row that is not a duplicate (404 rows get one too: their
    # caption still describes some picture).
    built: dict[int, _Built] = {}
    for i, plan in enumerate(plans):
        if plan.dup_of is None:
            key = sample_key(rngs[i])
            while key in test_keys:
                key = sample_key(rngs[i])
            built[i] = _Built(sample_scene(rngs[i], f"img{i:06d}", key))
    # Decoded images are kept only for rows that a near duplicate will be made from.
    originals = {p.dup_of for p in plans if p.dup_of is not None}
    delays = {"slow": rates.slow_delay, "timeout": rates.timeout_delay}

    rows: list[dict] = []
    routes: dict[str, dict] = {}
    # Duplicates come last so their originals' bytes exist; rows are re-ordered at the end.
    order = [i for i in range(n_rows) if plans[i].dup_of is None] + \
            [i for i in range(n_rows) if plans[i].dup_of is not None]
    for i in order:
        rows.append(_build_row(i, plans[i], rngs[i], built, originals, out, seed, routes, delays))
    rows.sort(key=lambda r: r["row"])
    for r in rows:
        r["url"] = base_url + r["path"]

    table = pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)
    pq.write_table(table, out / "labels.parquet")
    pq.write_table(table.select(["url", "caption"]), out / "urls.parquet")
    (out / "lexicon.txt").write_text("\n".join(lexicon()) + "\n", encoding="utf-8")
    (out / "server.json").write_text(json.dumps(
        {"base_url": base_url, "routes": routes}, ensure_ascii=False, indent=0), encoding="utf-8")

    label_counts = Counter(r["label"] for r in rows)
    any_counts = Counter(lab for r in rows for lab in r["labels"])
    meta = {
        "format_version": FORMAT_VERSION,
        "n_rows": n_rows,
        "seed": seed,
        "base_url": base_url,
        "n_test": n_test,
        "rates": rates.model_dump(),
        "label_counts": dict(sorted(label_counts.items())),
        "labels_any_counts": dict(sorted(any_counts.items())),
        "lang_counts": dict(sorted(Counter(r["lang"] for r in rows).items())),
        "clean_fraction": label_counts.get("clean", 0) / n_rows,
        "files": {"urls": "urls.parquet", "labels": "labels.parquet", "server": "server.json",
                  "lexicon": "lexicon.txt", "test": "test/test.parquet", "bytes": "files/"},
    }
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    return meta


def _other_scene(i: int, scene: Scene, built: dict[int, _Built], rng: np.random.Generator) -> dict:
    """Attributes of another row's image that differ in both shape and colour: a caption of a
    different picture, not a near miss (that is wrong_attribute's job)."""
    candidates = list(built)
    for _ in range(30):
        j = candidates[int(rng.integers(0, len(candidates)))]
        other = built[j].scene
        if j != i and other.shape != scene.shape and other.color != scene.color:
            return other.attributes()
    while True:
        key = sample_key(rng)
        if key[0] != scene.shape and key[1] != scene.color:
            return dict(zip(("shape", "color", "size", "position", "count", "background"), key))


def _build_row(i: int, plan: _Plan, rng: np.random.Generator, built: dict[int, _Built],
               originals: set[int], out: Path, seed: int, routes: dict[str, dict],
               delays: dict[str, float]) -> dict:
    lang = plan.lang
    served = plan.served
    labels: list[str] = []
    if served:
        labels.append(served)

    # ---- image ---------------------------------------------------------------------------
    if plan.dup_of is not None:
        src = built[plan.dup_of]
        scene = src.scene
        if served == "exact_dup":
            data, fmt = src.data, src.fmt
            w, h = src.scene.width, src.scene.height
        else:
            img, fmt, quality = _near_dup(src.image, src.fmt, rng)
            data = encode(img, fmt, quality)
            if data == src.data:  # same op by chance; never call identical bytes "near"
                data = encode(img, fmt, quality - 5)
            w, h = img.size
        built_here = False
    else:
        this = built[i]
        scene = this.scene
        built_here = True
        data, fmt, w, h = None, None, None, None
        if served not in NO_IMAGE:
            if served in ("tiny", "extreme_aspect"):
                fw, fh = _fault_size(served, rng)
                scene = replace(scene, width=fw, height=fh)
                this.scene = scene
            img = render_scene(scene)
            fmt, quality = _pick_format(rng)
            if served == "truncated":
                fmt = "jpeg"
            data = encode(img, fmt, quality)
            w, h = img.size
            this.data, this.fmt = data, fmt
            if i in originals:
                this.image = img  # kept for near duplicates
            if served == "truncated":
                data = data[: len(data) // 2]
    has_image = served not in NO_IMAGE
    attrs = scene.attributes()

    # ---- captions ------------------------------------------------------------------------
    true_caption = caption_for(attrs, lang, rng)
    if plan.dup_of is not None and lang in built[plan.dup_of].true_caption and rng.random() < 0.5:
        true_caption = built[plan.dup_of].true_caption[lang]  # re-posted with the same text
    if built_here:
        this.true_caption[lang] = true_caption
    wrong_field = None
    content = plan.content
    if content == "mismatched":
        caption = caption_for(_other_scene(i, scene, built, rng), lang, rng)
    elif content == "wrong_attribute":
        wrong, wrong_field = wrong_attribute(attrs, rng)
        caption = caption_for(wrong, lang, rng)
    elif content == "uninformative":
        caption = uninformative(rng, lang)
    else:
        caption = true_caption
    if content:
        labels.append(content)

    if "traditional" in plan.addons:
        converted = _s2t().convert(caption)
        if converted != caption:
            caption = converted
            labels.append("traditional")
    if "boilerplate" in plan.addons:
        caption = append_boilerplate(caption, rng, lang)
        labels.append("boilerplate")
    sensitive_words: list[str] = []
    if "sensitive" in plan.addons:
        caption, word = add_sensitive(caption, rng, lang)
        sensitive_words.append(word)
        labels.append("sensitive")
    pii: list[dict] = []
    if "pii" in plan.addons:
        phrases = []
        for _ in range(1 if rng.random() < 0.7 else 2):
            kind, text, phrase = make_pii(rng, lang)
            pii.append({"type": kind, "text": text})
            phrases.append(phrase)
        caption = add_pii(caption, phrases, rng, lang)
        labels.append("pii")

    labels.sort(key=LABEL_PRIORITY.index)
    label = labels[0] if labels else "clean"

    # ---- what the URL serves -------------------------------------------------------------
    if served == "corrupt":
        data = rng.bytes(int(rng.integers(1024, 24 * 1024)))
    elif served == "html":
        data = _html_page(rng)
    url_fmt = fmt or "jpeg"
    no_ext = rng.random() < 0.1 and served not in ("html", "corrupt")
    path = _url_path(i, seed, None if no_ext else FORMAT_EXT[url_fmt], rng)
    route = {"status": 200, "delay": 0.0, "content_type": FORMAT_MIME[url_fmt], "file": None,
             "label": label}
    if served in ("http_404", "http_500"):
        route.update(status=404 if served == "http_404" else 500, content_type="text/html")
    else:
        name = f"files/{i:06d}.{FORMAT_EXT[fmt] if fmt else 'bin'}"
        (out / name).write_bytes(data)
        route["file"] = name
    if served in delays:
        route["delay"] = float(delays[served])
    routes[path] = route

    return {
        "row": i, "path": path, "caption": caption, "lang": lang, "label": label,
        "labels": labels, "true_caption": true_caption if has_image else None,
        "image_id": scene.scene_id if has_image else None, "dup_of_row": plan.dup_of,
        "pii": pii, "sensitive_words": sensitive_words,
        **({k: v for k, v in attrs.items()} if has_image else
           {k: None for k in ("shape", "color", "size", "position", "count", "background")}),
        "image_format": fmt if has_image else None,
        "width": w if has_image else None, "height": h if has_image else None,
        "wrong_field": wrong_field,
    }


_S2T = None


def _s2t():
    global _S2T
    if _S2T is None:
        import opencc

        _S2T = opencc.OpenCC("s2t")
    return _S2T

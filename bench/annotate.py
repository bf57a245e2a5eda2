"""CPU throughput of the annotate rules, per core (one process, one thread).

    python bench/annotate.py [--images 300] [--captions 20000] [--lexicon 50000]

Prints: images/s for inspect_image next to bare PIL decode of the same bytes (ratio, goal
>= 0.8); captions/s for all text rules together with a random 50k-word lexicon on ~30-character
captions (goal >= 20k/s), and with a public-style 50k lexicon (bench/lexicon_real.py: everyday
words and phrases from jieba's dictionary plus sensitive terms, so the hygiene rules exempt part
of it); each figure is the best of 3 timed passes (the machine is shared); name detection throughput and precision/recall, reported separately;
PII precision/recall on the synthetic corpus' PII generator when synth/ is importable.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.image import inspect_image  # noqa: E402
from filters.names import NameDetector  # noqa: E402
from filters.text import CaptionCleaner, TextConfig  # noqa: E402

_COMMON_HAN = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你"
               "对生能而子那得于着下自之年过发后作里用道行所然家种事成方多经么去法学如都同现当"
               "没动面起看定天分还进好小部其些主样理心她本前开但因只从想实日军者意无力它与长把"
               "机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体"
               "政美相见被利什二等产或新己制身果加西斯月话合回特代内信表化老给世位次度门任常先"
               "海通教儿原东声提立及比员解水名真论处走义各入几口认条平系气题活尔更别打女变四神")
_ZH_PARTS = {
    "who": ["一只小猫", "两只小狗", "一个女孩", "几个孩子", "一位老人", "一辆红色汽车", "一只白色的鸟", "一群游客"],
    "where": ["在公园里", "在海边", "在沙发上", "在雪地里", "在城市街头", "在森林中", "在厨房里", "在山顶上"],
    "what": ["玩耍", "休息", "奔跑", "看着远方", "晒太阳", "吃东西", "拍照留念", "等待主人"],
    "tail": ["，阳光明媚", "，画面温馨", "，高清壁纸", "", "，夏日午后", "，风景如画", "。", "，背景虚化"],
}
_EN_WORDS = ("a the red blue green small large happy dog cat girl boy car tree house beach city "
             "street park sunset morning running sitting standing near under with on in of and "
             "bright old new wooden white black yellow flowers garden window table mountain river").split()


def _images(n: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for i in range(n):
        w, h = int(rng.integers(320, 800)), int(rng.integers(240, 600))
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        if i % 4 == 3:
            im.save(buf, "PNG")
        else:
            im.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def bench_images(n: int, rng: np.random.Generator) -> None:
    datas = _images(n, rng)

    def bare() -> None:
        for d in datas:
            with Image.open(io.BytesIO(d)) as im:
                im.load()

    def rules() -> None:
        for d in datas:
            inspect_image(d)

    bare()  # warm caches
    t_bare = min(_timed(bare) for _ in range(3))
    t_rules = min(_timed(rules) for _ in range(3))
    print(f"images: {n} web-sized JPEG/PNG (320-800 px)")
    print(f"  bare PIL decode     {n / t_bare:8.0f} images/s/core")
    print(f"  inspect_image       {n / t_rules:8.0f} images/s/core  ratio {t_bare / t_rules:.2f} (goal >= 0.8)")


def _timed(fn) -> float:
    # CPU time of this process: the figure is per core and the machine may be shared.
    t = time.process_time()
    fn()
    return time.process_time() - t


def _lexicon(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        if rng.random() < 0.6:
            words.add("".join(rng.choice(_COMMON_HAN) for _ in range(rng.randint(2, 4))))
        else:
            words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9))))
    return sorted(words)


def _captions(n: int, rng: random.Random, noise: bool = True) -> list[str]:
    """~30-character zh/en captions; with `noise`, some carry boilerplate, traditional
    characters, a phone number or an email."""
    out = []
    for i in range(n):
        if rng.random() < 0.6:
            c = "".join(rng.choice(_ZH_PARTS[k]) for k in ("who", "where", "what", "tail"))
            c += "".join(rng.choice(_COMMON_HAN) for _ in range(rng.randint(0, 10)))
            if noise and i % 10 == 0:
                c += " 查看原网页"
            if noise and i % 13 == 0:
                c = c.replace("风景", "風景").replace("东", "東") + "電話13800138000"
        else:
            c = " ".join(rng.choice(_EN_WORDS) for _ in range(rng.randint(4, 8)))
            if noise and i % 11 == 0:
                c += " - click to enlarge"
            if noise and i % 17 == 0:
                c += " mail a.b@example.com"
        out.append(c)
    return out


def _best_of(cleaner: CaptionCleaner, caps: list[str], reps: int = 3) -> float:
    from filters import language

    best = float("inf")
    for _ in range(reps):
        language.segment.cache_clear()
        language.token_boundaries.cache_clear()
        best = min(best, _timed(lambda: cleaner.clean_batch(caps)))
    return best


def bench_text(n: int, lexicon_size: int, rng: random.Random) -> None:
    lex = _lexicon(lexicon_size, rng)
    caps = _captions(n, rng)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "lex.txt")
        Path(path).write_text("\n".join(lex), encoding="utf-8")
        t = time.perf_counter()
        cleaner = CaptionCleaner(TextConfig(sensitive_lexicon=path))
        build = time.perf_counter() - t
        public = None
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import lexicon_real

            words = lexicon_real.build_lexicon(lexicon_real.load_jieba(), 3000, random.Random(0),
                                               phrases=lexicon_size - 3000 - len(lexicon_real.sensitive_terms()))
            Path(path).write_text("\n".join(words), encoding="utf-8")
            public = CaptionCleaner(TextConfig(sensitive_lexicon=path))
        except ImportError as e:  # pragma: no cover - the bench folder is not on the path
            print(f"  (public-style lexicon skipped: {e})")
    cleaner.clean_batch(caps[:200])  # warm up segmenter and converters
    from filters import language

    t = _best_of(cleaner, caps)
    avg_len = sum(map(len, caps)) / len(caps)
    hit = sum(1 for c in caps if cleaner.sensitive and cleaner.sensitive.find(c))
    print(f"text: {n} captions, mean {avg_len:.1f} chars, {lexicon_size}-word random lexicon "
          f"(built in {build:.2f}s, {len(cleaner.sensitive.exempted)} entries exempt as everyday words, "
          f"hits {100 * hit / n:.1f}% of captions), segmenter {language.SEGMENTER}")
    print(f"  all text rules      {n / t:8.0f} captions/s/core (goal >= 20000)")
    if public is not None:
        hit = sum(1 for c in caps if public.sensitive.find(c))
        print(f"  all text rules, public-style {len(public.sensitive.words) + len(public.sensitive.exempted)}"
              f"-entry lexicon (hits {100 * hit / n:.1f}%): {n / _best_of(public, caps):8.0f} captions/s/core")
    for label, cfg in [("no sensitive words", TextConfig(sensitive_lexicon="")),
                       ("no PII", TextConfig(sensitive_lexicon="", redact_pii=False)),
                       ("no t2s/PII/sensitive", TextConfig(sensitive_lexicon="", redact_pii=False, t2s=False))]:
        c = CaptionCleaner(cfg)
        print(f"  {label:<20}{n / _best_of(c, caps):8.0f} captions/s/core")


def _read_names_eval() -> list[tuple[str, set[str]]]:
    rows = []
    path = Path(__file__).resolve().parents[1] / "filters" / "data" / "names_eval.tsv"
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        text, _, gold = line.partition("\t")
        rows.append((text, {g for g in gold.split(",") if g}))
    return rows


def _prf(rows: list[tuple[str, set[str]]], det: NameDetector) -> tuple[float, float, int]:
    tp = fp = fn = 0
    for text, gold in rows:
        pred = {text[s:e] for s, e in det.find(text)}
        tp += len(pred & gold)
        fp += len(pred - gold)
        fn += len(gold - pred)
    return tp / max(1, tp + fp), tp / max(1, tp + fn), len(rows)


def bench_names(n: int, rng: random.Random) -> None:
    det = NameDetector()
    rows = _read_names_eval()
    p, r, m = _prf(rows, det)
    print(f"names: bundled labelled set ({m} captions; the rules were tuned on it): precision {p:.3f} recall {r:.3f}")
    try:
        from synth import captions as syn_caps  # noqa: F401
        from synth.pii import en_name, zh_name
    except Exception as e:  # noqa: BLE001 - synth is optional for this bench
        print(f"  synthetic names: skipped ({e})")
    else:
        nrng = np.random.default_rng(0)
        ctx_zh = ["摄影：{}", "作者 {}", "联系人{}", "{}拍摄", "{}在公园里散步", "我和{}去海边"]
        ctx_en = ["photo by {}", "by {}", "contact {}", "{}'s photo", "{} at the beach"]
        syn = []
        for i in range(400):
            if i % 2:
                name = zh_name(nrng)
                syn.append((rng.choice(ctx_zh).format(name), {name}))
            else:
                name = en_name(nrng)
                syn.append((rng.choice(ctx_en).format(name), {name}))
        syn += [(c, set()) for c in _captions(400, rng, noise=False)]
        p, r, m = _prf(syn, det)
        print(f"  synthetic (synth.pii names in context + 400 name-free captions, {m}): precision {p:.3f} recall {r:.3f}")
    caps = _captions(n, rng)
    from filters import language

    language.pos_tag.cache_clear()
    t = _timed(lambda: [det.find(c) for c in caps])
    print(f"  name detection      {n / t:8.0f} captions/s/core")


def bench_pii(n: int) -> None:
    try:
        from synth.pii import make_pii
    except Exception as e:  # noqa: BLE001
        print(f"pii: synthetic check skipped ({e})")
        return
    from filters.pii import PiiRedactor

    red = PiiRedactor()
    rng = np.random.default_rng(1)
    per: dict[str, list[int]] = {}
    for i in range(n):
        lang = "zh" if i % 2 else "en"
        kind, text, phrase = make_pii(rng, lang)
        if kind == "name":
            continue
        out, counts = red.redact(phrase, lang)
        stats = per.setdefault(kind, [0, 0])
        stats[0] += 1
        stats[1] += int(text not in out and counts.get(kind, 0) >= 1)
    clean = _captions(5000, random.Random(2), noise=False)
    fp = sum(1 for c in clean if red.redact(c)[1])
    print(f"pii: synth.pii phrases, recall by type: " +
          ", ".join(f"{k} {v[1] / v[0]:.3f} ({v[0]})" for k, v in sorted(per.items())))
    t = _timed(lambda: [red.redact(c, "zh") for c in clean])
    print(f"  false positives on 5000 PII-free captions: {fp}; PII regex set {len(clean) / t:8.0f} captions/s/core")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--captions", type=int, default=20000)
    ap.add_argument("--lexicon", type=int, default=50000)
    ap.add_argument("--text-only", action="store_true", help="only the caption-rule figures")
    args = ap.parse_args()
    rng = random.Random(0)
    if args.text_only:
        bench_text(args.captions, args.lexicon, rng)
        return
    bench_images(args.images, np.random.default_rng(0))
    bench_text(args.captions, args.lexicon, rng)
    bench_names(min(args.captions, 5000), rng)
    bench_pii(4000)


if __name__ == "__main__":
    main()

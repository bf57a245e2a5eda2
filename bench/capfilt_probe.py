"""Why CapFilt does or does not help: is the captioner right more often than the web, and does the
filter's score tell right captions from wrong ones?

Runs on a finished `bench/bootstrap.py` output: takes `--rows` decoded images of its corpus (the
corpus carries each image's true colour and shape), has a round's captioner write captions
(nucleus sampling and beam search, each steered to the row's language), and scores the web caption
and the synthetic ones with the round's filter head, by ITM and by ITC. A caption is "right" when
it names the true colour and shape. AUC is the chance that a right caption outscores a wrong one
(0.5: the score carries no information).

    .venv/bin/python bench/capfilt_probe.py --out bench_out/bootstrap --model b --rows 200
"""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def auc(ok, score) -> float:
    import numpy as np

    ok, score = np.asarray(ok, bool), np.asarray(score, float)
    pos, neg = score[ok], score[~ok]
    if not len(pos) or not len(neg):
        return float("nan")
    # ties count half: a constant score gives exactly 0.5
    return float(((pos[:, None] > neg[None, :]).mean() + (pos[:, None] == neg[None, :]).mean() / 2))


def load_rows(out: Path, n: int) -> list[dict]:
    import duckdb

    run = out / "b" / "run"
    q = f"""SELECT l.row, l.lang, l.caption, l.color, l.shape, d.image
            FROM read_parquet('{out / "corpus" / "labels.parquet"}') l
            JOIN read_parquet('{run / "download"}/*.parquet') d ON l.row = d.uid
            JOIN read_parquet('{run / "annotate"}/*.parquet') a ON l.row = a.uid
            WHERE d.download_ok AND a.decode_ok AND l.lang IN ('en', 'zh') AND l.caption <> ''
            ORDER BY hash(l.row) LIMIT {int(n)}"""
    return duckdb.connect().execute(q).df().to_dict("records")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/bootstrap", help="a bench/bootstrap.py output folder")
    ap.add_argument("--model", action="append", help="variant(s) whose captioner/filter to probe (default b)")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--n", type=int, default=3, help="captions per image")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from models.capfilt_backends import load_captioner, load_filter
    from synth.attributes import extract_attributes

    out = Path(args.out)
    if not (out / "b" / "run" / "download").exists():
        raise SystemExit(f"{out} has no finished bench/bootstrap.py run (b/run/download missing); run that first")
    rows = load_rows(out, args.rows)
    imgs = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    langs = [r["lang"] for r in rows]

    def right(text: str, r: dict) -> bool:
        a = extract_attributes(text)
        return a.get("color") == r["color"] and a.get("shape") == r["shape"]

    web_ok = [right(r["caption"], r) for r in rows]
    print(f"{len(rows)} images; web captions right (colour+shape): {np.mean(web_ok):.2f}")
    for name in args.model or ["b"]:
        cap = load_captioner({"kind": "albef", "path": str(out / name / "captioner")}, device="cpu")
        filters = {"ITM": load_filter({"kind": "albef", "path": str(out / name / "filter")}, device="cpu"),
                   "ITC": load_filter({"kind": "clip", "clip": {"kind": "mmcurate",
                                                                "path": str(out / name / "filter")}}, device="cpu")}
        for mode, kw in (("nucleus p=0.9", dict(top_p=0.9, seed=0)), (f"beam {args.n}", dict(beam=args.n))):
            synth = cap.caption(imgs, n=args.n, max_len=30, lang=langs, **kw)
            s_ok = [right(t, r) for ts, r in zip(synth, rows) for t in ts]
            colour = np.mean([extract_attributes(t).get("color") == r["color"] for ts, r in zip(synth, rows) for t in ts])
            line = [f"{name} captioner, {mode}: colour {colour:.2f}, colour+shape {np.mean(s_ok):.2f}"]
            for fname, f in filters.items():
                sc = f.score_groups(imgs, [[r["caption"], *ts] for r, ts in zip(rows, synth)])
                web_s = [s[0] for s in sc]
                syn_s = [v for s in sc for v in s[1:]]
                line.append(f"{fname} AUC web {auc(web_ok, web_s):.2f} synthetic {auc(s_ok, syn_s):.2f} "
                            f"(mean web {np.mean(web_s):.3f}, synthetic {np.mean(syn_s):.3f})")
            print("  " + "\n    ".join(line), flush=True)


if __name__ == "__main__":
    main()

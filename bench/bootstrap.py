"""The headline experiment: does curation with models in the loop help downstream?

Same tiny model, same training budget, same held-out split; only the curation changes:
  (a) raw      every pair that downloaded and decoded
  (b) rules    the cleaning rules (round 0 of a bootstrap)
  (c) +score   (b) filtered by (b)'s model: ITC score, top fraction per language
  (d) +capfilt (c) plus CapFilt with (b)'s separately fine-tuned captioner and ITM filter
  (e) round 2  (d)'s pipeline again, scored and captioned by (d)'s model
Prints retrieval R@1/5/10 both ways (ITC and ITM re-rank), caption attribute accuracy, and the
share of each noise label that survived into the training set.

    .venv/bin/python bench/bootstrap.py --rows 2000 --steps 600 --head-steps 100 --eval-images 100 \
        --keep-top 0.7 --out bench_out/bootstrap
    # CapFilt tuned for a weak captioner, on the same a-c (folders d_itc, e_itc):
    .venv/bin/python bench/bootstrap.py ...same... --capfilt-filter itc --beam 3 --web-threshold 0 \
        --synth-threshold 0 --synth-margin 0 --tag _itc
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PERMISSIVE = {"min_short_side": 0, "max_aspect_ratio": 1000, "reject_duplicates": False,
              "reject_uninformative": False, "reject_filenames": False, "reject_hashtag_only": False,
              "languages": ["zh", "en", "other"], "min_en_words": 0, "min_en_chars": 0,
              "min_zh_words": 0, "max_repetition": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400, help="training steps for every variant's model")
    ap.add_argument("--head-steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-images", type=int, default=200)
    ap.add_argument("--keep-top", type=float, default=0.8, help="score filter: top fraction per language")
    # BLIP's 0.5 assumes an ITM head trained for epochs on hard negatives; the tiny model after
    # 1,000 CPU steps gives held-out true pairs 0.36 on average and random pairs 0.13.
    ap.add_argument("--web-threshold", type=float, default=0.25, help="CapFilt ITM threshold for web captions")
    ap.add_argument("--synth-threshold", type=float, default=0.25,
                    help="CapFilt ITM threshold for synthetic captions")
    ap.add_argument("--synth-margin", type=float, default=None,
                    help="CapFilt keeps a synthetic caption only if it outscores the web caption by this")
    ap.add_argument("--capfilt-filter", choices=["itm", "itc"], default="itm",
                    help="what scores captions in (d) and (e): the filter head's ITM (BLIP) or its ITC cosine")
    ap.add_argument("--beam", type=int, default=None,
                    help="CapFilt captions by beam search with this width (default: nucleus sampling, p=0.9)")
    ap.add_argument("--tag", default="",
                    help="suffix for the (d) and (e) folders, to compare CapFilt settings on the same a-c")
    ap.add_argument("--mismatched", type=float, default=0.25,
                    help="share of rows whose caption describes another image (web alt-text is often this bad)")
    ap.add_argument("--wrong-attribute", type=float, default=0.15,
                    help="share of rows whose caption gets one attribute wrong")
    ap.add_argument("--variants", default="abcde",
                    help="which variants to run, e.g. abc (b always runs: the others start from it)")
    ap.add_argument("--out", default="bench_out/bootstrap")
    args = ap.parse_args()
    if not args.variants or set(args.variants) - set("abcde"):
        ap.error(f"--variants takes letters from abcde (e.g. abc), not {args.variants!r}")

    from pipeline.bootstrap import model_recipe, run_round, share_model_free_outputs
    from pipeline.config import BootstrapConfig
    from synth import CorpusServer, NoiseRates, generate_corpus

    out = Path(args.out).resolve()
    corpus = out / "corpus"
    if not (corpus / "meta.json").exists():
        generate_corpus(corpus, n_rows=args.rows, seed=args.seed, base_url=f"http://127.0.0.1:{free_port()}",
                        rates=NoiseRates().override({"timeout_delay": 6.0, "mismatched": args.mismatched,
                                                     "wrong_attribute": args.wrong_attribute}),
                        n_test=args.eval_images)
    labels = corpus / "labels.parquet"
    bcfg = BootstrapConfig(train_steps=args.steps, head_steps=args.head_steps, batch_size=args.batch_size,
                           eval_split=str(corpus / "test" / "test.parquet"), eval_max_images=args.eval_images,
                           score={"batch_size": 64, "rows_per_call": 512},
                           capfilt={"n_captions": 3, "max_synthetic": 2, "batch_size": 32, "beam": args.beam,
                                    "web_threshold": args.web_threshold,
                                    "synth_threshold": args.synth_threshold, "synth_margin": args.synth_margin},
                           capfilt_filter=args.capfilt_filter,
                           select={"keep_top_fraction": args.keep_top})
    base = {"input": {"path": str(corpus / "urls.parquet")}, "executor": "local", "shard_size": 500,
            "stages": ["download", "annotate", "dedup", "select", "export"],
            "download": {"processes": 2, "threads": 32, "timeout": 3, "allow_private": ["loopback"]},
            "dedup": {"semantic_threshold": 0.97}, "workdir": str(out / "b")}
    t0 = time.perf_counter()
    results = {}
    with CorpusServer(corpus, port=None):
        results["b rules"] = run_round({**base, "workdir": str(out / "b" / "run")}, bcfg, out / "b", labels, "b", "b")
        d, e = "d" + args.tag, "e" + args.tag
        for name in ("a", "c", d, e):
            share_model_free_outputs(out / "b" / "run", out / name / "run")
        raw = {**base, "workdir": str(out / "a" / "run"), "stages": ["download", "annotate", "select", "export"],
               "select": PERMISSIVE}
        want = set(args.variants)
        if "a" in want:
            results["a raw"] = run_round(raw, bcfg, out / "a", labels, "a", "a")
        if "c" in want:
            results["c +score"] = run_round(model_recipe(base, bcfg, out / "b", out / "c" / "run", capfilt=False),
                                            bcfg, out / "c", labels, "c", "c")
        if want & {"d", "e"}:
            results["d +capfilt"] = run_round(model_recipe(base, bcfg, out / "b", out / d / "run"),
                                              bcfg, out / d, labels, d, d)
        if "e" in want:
            results["e round 2"] = run_round(model_recipe(base, bcfg, out / d, out / e / "run"),
                                             bcfg, out / e, labels, e, e)
    order = [v for v in ("a raw", "b rules", "c +score", "d +capfilt", "e round 2") if v in results]
    print(f"\ncorpus {args.rows} rows (seed {args.seed}), {args.steps} steps x batch {args.batch_size} per model "
          f"(+{args.head_steps} per head), eval on {args.eval_images} held-out images; {time.perf_counter() - t0:.0f}s")
    cols = [("kept", "kept")]
    for kind, label in (("itc", "ITC"), ("itm", "ITM")):
        cols += [(f"{kind}_tr_r@1", f"{label} i2t@1"), (f"{kind}_tr_r@5", "@5"), (f"{kind}_tr_r@10", "@10"),
                 (f"{kind}_ir_r@1", "t2i@1"), (f"{kind}_ir_r@5", "@5"), (f"{kind}_ir_r@10", "@10")]
    cols += [("attr_color", "colour %"), ("attr_shape", "shape %"), ("attr_position", "position %"),
             ("attr_all", "all 3 %"), ("bleu4", "BLEU-4")]
    print("variant      " + " ".join(f"{h:>10}" for _, h in cols))
    for v in order:
        m = results[v]
        print(f"{v:12} " + " ".join(f"{m.get(k, float('nan')):10.2f}" if isinstance(m.get(k), (int, float))
                                     else f"{'-':>10}" for k, _ in cols))
    chance = {k: v for k, v in results["b rules"].items() if k.startswith("chance_")}
    print(f"chance: {chance}")
    labels_seen = sorted({k for m in results.values() for k in m if k.startswith("survived_")})
    print("\nshare of each label kept for training:")
    print("label              " + " ".join(f"{v.split()[0]:>7}" for v in order))
    for k in labels_seen:
        print(f"{k[9:]:18} " + " ".join(f"{results[v].get(k, float('nan')):7.2f}" for v in order))
    (out / f"results{args.tag}.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfull metrics: {out / f'results{args.tag}.json'}")


if __name__ == "__main__":
    main()

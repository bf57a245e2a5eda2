"""`mmcurate train` and `mmcurate eval` subcommands."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "train", help="train the ALBEF-style model (+ captioning decoder) on exported shards",
        description="Train an ALBEF-style model (ITC + ITM + MLM) with a BLIP-style captioning "
                    "decoder on WebDataset shards written by `mmcurate run` (or img2dataset). "
                    "Runs in this process, or on Ray Train workers with --num-workers / "
                    "--ray-address. The checkpoint directory then serves as the filter and "
                    "captioner of the next curation round.",
        epilog="examples:\n"
               "  mmcurate train --config tiny --data runs/demo/export/shards --out ckpt/ --steps 300\n"
               "  mmcurate train --config albef-base --data shards/ --out ckpt/ --epochs 10 "
               "--num-workers 8 --use-gpu --ray-address auto\n"
               "  mmcurate train --config tiny --data shards/ --out ckpt/ --steps 600 --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", default="tiny",
                   help="config name (tiny, albef-base) or a YAML path (default: tiny)")
    t.add_argument("--data", required=True, nargs="+",
                   help="shard directory, tar file(s) or glob(s), e.g. export/shards/")
    t.add_argument("--out", required=True, help="checkpoint directory (written and resumed from)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="optimizer steps to train for")
    g.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    t.add_argument("--batch-size", type=int, help="per-worker batch size (overrides the config)")
    t.add_argument("--lr", type=float, help="peak learning rate (overrides the config)")
    t.add_argument("--resume", action="store_true",
                   help="continue exactly from the checkpoint in --out (optimizer, queue, "
                        "momentum model, RNG and data position)")
    t.add_argument("--ray-address", help="Ray cluster to train on ('auto' or ray://host:10001); "
                   "shards and --out must be on storage every node can read")
    t.add_argument("--num-workers", type=int,
                   help="Ray Train workers (one per GPU with --use-gpu); omit for a single process")
    t.add_argument("--use-gpu", action="store_true", help="train on GPU(s) with bf16 autocast")
    t.add_argument("--loader-workers", type=int, help="JPEG decode processes per worker")
    t.add_argument("--save-every", type=int, help="save a resumable checkpoint every N steps")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set queue_size=1024 "
                        "--set text.pretrained=/models/bert-base-chinese")
    t.set_defaults(func=_cmd_train)

    e = subparsers.add_parser(
        "eval", help="retrieval R@k (ITC and ITM re-rank) and captioning metrics of a checkpoint",
        description="Evaluate a checkpoint on a held-out parquet split (image bytes, captions_en, "
                    "captions_zh, scene attributes): image<->text R@1/5/10 by ITC alone and with "
                    "ITM re-ranking of the ITC top-k (ALBEF protocol), and BLEU-4 / CIDEr / "
                    "attribute accuracy of the decoder's captions.",
        epilog="example:\n  mmcurate eval --ckpt ckpt/ --split runs/demo/corpus/test/test.parquet",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--ckpt", required=True, help="checkpoint directory written by `mmcurate train`")
    e.add_argument("--split", required=True, help="held-out parquet, e.g. test/test.parquet")
    e.add_argument("--lang", choices=["en", "zh", "both"], default="both",
                   help="captions forming the text gallery (default both)")
    e.add_argument("--k", type=int, default=16, help="ITC candidates re-ranked by ITM (default 16)")
    e.add_argument("--max-images", type=int, help="evaluate only the first N images")
    e.add_argument("--beam", type=int, default=3, help="beam size for captioning (default 3)")
    e.add_argument("--no-caption", action="store_true", help="skip the captioning metrics")
    e.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=_cmd_eval)


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, _parse_sets(args.set))
    data = args.data if len(args.data) > 1 else args.data[0]
    metrics = train(cfg, data, args.out, steps=args.steps, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, resume=args.resume,
                    ray_address=args.ray_address, num_workers=args.num_workers,
                    use_gpu=args.use_gpu, loader_workers=args.loader_workers,
                    save_every=args.save_every)
    last = ", ".join(f"{k}={v:.3f}" for k, v in metrics.get("last", {}).items())
    print(f"trained to step {metrics['step']} ({last}); {metrics['bad_samples']} bad samples "
          f"skipped; checkpoint in {args.out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate

    m = evaluate(args.ckpt, args.split, device=args.device, lang=args.lang, k=args.k,
                 max_images=args.max_images, beam=args.beam, caption=not args.no_caption)
    if args.json:
        print(json.dumps(m, ensure_ascii=False, indent=2))
    else:
        print(format_metrics(m))
    return 0


def format_metrics(m: dict) -> str:
    lines = [f"{m['n_images']} images, {m['n_texts']} captions"]
    lines.append(f"{'':14}{'tr R@1':>8}{'R@5':>8}{'R@10':>8}{'ir R@1':>9}{'R@5':>8}{'R@10':>8}")
    for name, p in (("ITC", "itc_"), ("ITM re-rank", "itm_"), ("ITM+ITC", "itm_itc_"),
                    ("chance", "chance_")):
        vals = [m.get(f"{p}{d}_r@{k}", float("nan")) for d in ("tr", "ir") for k in (1, 5, 10)]
        lines.append(f"{name:14}" + "".join(f"{v:8.1f}" if i != 3 else f"{v:9.1f}" for i, v in enumerate(vals)))
    if "bleu4" in m:
        lines.append(f"captions: BLEU-4 {m['bleu4']:.1f}  CIDEr {m['cider']:.3f}  "
                     f"zh {m['caption_zh_fraction']:.0f}%")
    if "attr_all" in m:
        lines.append("attributes right: " + "  ".join(
            f"{a} {m[f'attr_{a}']:.1f}%" for a in ("color", "shape", "position", "all")))
    for ex in m.get("examples", []):
        lines.append(f"  e.g. {ex}")
    return "\n".join(lines)

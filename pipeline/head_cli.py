"""`mmcurate train-head`: fit an NSFW / watermark / aesthetic head from a labelled parquet of
the user's own examples, in the format the image_tags stage loads."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

EMB_COLUMNS = ("img_emb", "embedding", "emb", "image_embedding")


class HeadDataError(ValueError):
    """Bad training rows: the message names the row and what to do."""


def _labels(values: list[Any], col: str, task: str) -> tuple[np.ndarray, str]:
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v):
            raise HeadDataError(f"row {i}: label column {col!r} is empty; label it or drop the row")
        if not isinstance(v, (bool, int, float, np.integer, np.floating)):
            raise HeadDataError(f"row {i}: label {v!r} in {col!r} is not a number (binary: 0/1 or "
                                "true/false; regression: a score)")
    y = np.asarray(values, np.float64)
    if task == "auto":
        task = "binary" if set(np.unique(y)) <= {0.0, 1.0} else "regression"
    if task == "binary":
        bad = np.flatnonzero((y != 0) & (y != 1))
        if len(bad):
            raise HeadDataError(f"row {int(bad[0])}: label {y[bad[0]]} is not 0 or 1 (use --task regression "
                                "for scores)")
        if len(np.unique(y)) < 2:
            raise HeadDataError(f"every label in {col!r} is {y[0]:g}; a binary head needs examples of both")
    return y, task


def _embeddings(table: Any, args: argparse.Namespace) -> tuple[np.ndarray, str | None]:
    """(N, D) embeddings from a stored column, or by embedding the image bytes with a backend."""
    from stages.image_tags import embeddings

    names = table.column_names
    emb_col = args.emb_col or next((c for c in EMB_COLUMNS if c in names), None)
    if args.emb_col and args.emb_col not in names:
        raise HeadDataError(f"no column {args.emb_col!r}; columns: {names}")
    if emb_col is not None and args.image_col is None:
        vecs, valid = embeddings(table.column(emb_col))
        if not valid.all():
            raise HeadDataError(f"row {int(np.flatnonzero(~valid)[0])}: {emb_col!r} is empty; drop rows "
                                "without an embedding (e.g. WHERE img_emb IS NOT NULL)")
        dims = {len(v) for v in vecs}  # type: ignore[arg-type]
        if len(dims) > 1:
            raise HeadDataError(f"{emb_col!r} mixes embedding widths {sorted(dims)} (several CLIP models); "
                                "fit one head per model (filter on clip_model)")
        clip_model = args.clip_model
        if clip_model is None and "clip_model" in names:
            models = set(table.column("clip_model").to_pylist())
            if len(models) > 1:
                raise HeadDataError(f"rows come from several CLIP models {sorted(map(str, models))}; fit one "
                                    "head per model (filter on clip_model)")
            clip_model = next(iter(models))
        return np.stack(vecs).astype(np.float32), clip_model  # type: ignore[arg-type]
    image_col = args.image_col or ("image" if "image" in names else None)
    if image_col is None or image_col not in names:
        raise HeadDataError(f"no embedding column ({', '.join(EMB_COLUMNS)}) and no image column; columns: "
                            f"{names}. Pass --emb-col or --image-col")
    if not (args.backend or args.backend_path):
        raise HeadDataError("embedding images needs a CLIP model: --backend open_clip:ViT-L-14:openai or "
                            "--backend-path DIR; use the same model as the score stage of the runs "
                            "the head will tag")
    from models.clip.factory import load_backend
    from models.gpu_decode import decode_pil

    # An absolute path: the score stage resolves its backend paths, and the model name recorded
    # in the sidecar must equal the clip_model that stage writes.
    spec: Any = args.backend or {"kind": args.backend_kind, "path": str(Path(args.backend_path).resolve())}
    be = load_backend(spec, device=args.device)
    images = []
    for i, data in enumerate(table.column(image_col).to_pylist()):
        img = decode_pil(data)
        if img is None:
            raise HeadDataError(f"row {i}: {image_col!r} does not decode as an image; fix or drop the row")
        images.append(img)
    return be.encode_images(images), be.name


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        return float("nan")
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def evaluate(y: np.ndarray, s: np.ndarray, task: str) -> dict[str, float]:
    if task == "binary":
        pred = s >= 0.5
        tp = int((pred & (y == 1)).sum())
        return {"n": int(len(y)), "auc": round(auc(y, s), 4), "accuracy": round(float((pred == (y == 1)).mean()), 4),
                "precision": round(tp / max(int(pred.sum()), 1), 4),
                "recall": round(tp / max(int((y == 1).sum()), 1), 4)}
    r = float(np.corrcoef(y, s)[0, 1]) if len(y) > 1 and np.std(s) > 0 else float("nan")
    return {"n": int(len(y)), "mse": round(float(np.mean((y - s) ** 2)), 4), "pearson": round(r, 4)}


def train_head(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from models.heads import fit_head, load_head, save_head

    src = Path(args.labels)
    if not src.exists():
        raise FileNotFoundError(f"labelled parquet not found: {src}")
    table = pq.read_table(src)
    if args.label_col not in table.column_names:
        raise HeadDataError(f"no label column {args.label_col!r} in {src}; columns: {table.column_names}")
    y, task = _labels(table.column(args.label_col).to_pylist(), args.label_col, args.task)
    x, clip_model = _embeddings(table, args)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(y))
    n_hold = int(round(args.holdout * len(y)))
    hold, fit = order[:n_hold], order[n_hold:]
    if task == "binary" and len(np.unique(y[fit])) < 2:
        raise HeadDataError("after holding out rows, the fitting rows hold one class only; add examples "
                            "or lower --holdout")
    state, output = fit_head(x[fit], y[fit], task, arch=args.arch, hidden=args.hidden, steps=args.steps,
                             lr=args.lr, seed=args.seed)
    name = args.name or Path(args.out).stem
    meta = {"name": name, "tag": args.tag, "task": task, "output": output, "arch": args.arch,
            "clip_model": clip_model, "embed_dim": int(x.shape[1]), "label_col": args.label_col,
            "source": str(src), "rows_fit": int(len(fit)), "rows_held_out": int(len(hold))}
    out = save_head(state, args.out, meta)
    head = load_head(out)  # score through the saved file: what the stage will run
    metrics = {"fit": evaluate(y[fit], head.score(x[fit]), task)}
    if len(hold):
        metrics["held_out"] = evaluate(y[hold], head.score(x[hold]), task)
    meta["metrics"] = metrics
    save_head(state, out, meta)
    return meta


def _cmd_train_head(args: argparse.Namespace) -> int:
    try:
        meta = train_head(args)
    except HeadDataError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"head {meta['name']} ({meta['task']}, {meta['arch']}, {meta['embed_dim']}-d, clip_model "
          f"{meta['clip_model']}) -> {args.out} (+ {Path(args.out).name}.json)")
    for split, m in meta["metrics"].items():
        print(f"  {split}: " + ", ".join(f"{k}={v}" for k, v in m.items()))
    print(f"use it: image_tags: {{{meta['tag'] or 'watermark'}: {{path: {args.out}}}}} in the recipe")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-head", help="fit an NSFW/watermark/aesthetic head on CLIP embeddings from labelled examples",
        description="Fit a small head over CLIP image embeddings from a parquet of your own labelled "
        "examples, and save it as a torch state dict in LAION's layout (weight/bias for --arch linear, "
        "improved-aesthetic-predictor's layers.N for --arch mlp) plus a JSON sidecar (name, task, the "
        "CLIP model, held-out metrics), which the image_tags stage loads. Rows need a label (binary 0/1 or "
        "true/false, or a regression score such as a 1-10 rating) and either an embedding column (e.g. "
        "img_emb and clip_model from a scored run's score/*.parquet, so the head matches that run's "
        "CLIP model) or image bytes plus --backend to embed them. A fraction of rows is held out and "
        "the head's metrics on them are printed.",
        epilog="example, with labels keyed by a scored run's uid, in DuckDB: COPY (SELECT s.img_emb, "
        "s.clip_model, l.label FROM 'runs/x/score/*.parquet' s JOIN 'labels.parquet' l USING (uid)) TO "
        "'wm.parquet'; then: mmcurate train-head wm.parquet --tag watermark --out heads/wm.pth")
    p.add_argument("labels", help="parquet with a label column and an embedding or image column")
    p.add_argument("--out", required=True, help="head file to write (.pth); a .pth.json sidecar goes beside it")
    p.add_argument("--label-col", default="label", help="label column (default: label)")
    p.add_argument("--task", choices=["auto", "binary", "regression"], default="auto",
                   help="auto: binary when every label is 0 or 1 (default)")
    p.add_argument("--tag", choices=["nsfw", "watermark", "aesthetic"], help="what the head scores (recorded)")
    p.add_argument("--name", help="head name recorded beside every score (default: the file name)")
    p.add_argument("--emb-col", help=f"embedding column (default: the first of {', '.join(EMB_COLUMNS)})")
    p.add_argument("--clip-model", help="name of the CLIP model the embeddings come from (default: the "
                   "clip_model column); image_tags then scores only rows embedded by that model")
    p.add_argument("--image-col", help="image bytes column to embed instead (needs --backend or --backend-path)")
    p.add_argument("--backend", help="CLIP backend for --image-col, e.g. open_clip:ViT-L-14:openai")
    p.add_argument("--backend-path", help="local model dir for --image-col (kind from --backend-kind)")
    p.add_argument("--backend-kind", default="open_clip", choices=["open_clip", "chinese_clip", "mmcurate"])
    p.add_argument("--device", default="cpu", help="device for embedding images (default cpu)")
    p.add_argument("--arch", choices=["linear", "mlp"], default="linear", help="default linear")
    p.add_argument("--hidden", type=int, nargs="+", default=[64], metavar="N",
                   help="hidden layer widths for --arch mlp (default 64)")
    p.add_argument("--steps", type=int, default=500, help="full-batch Adam steps (default 500)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of rows held out for metrics (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_train_head)

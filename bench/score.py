"""Scoring throughput: end-to-end pairs/s (parquet read + decode + preprocess + encode + parquet
write) next to the model-only ceiling measured in the same run, per model/precision/decode.

GPU (goals on one H100: ViT-B/32 >= 10,000 pairs/s end-to-end; ViT-L/14 >= 80% of model-only):
    python bench/score.py --device cuda --models ViT-B-32 ViT-L-14 --precisions fp16 bf16 \
        --decode cpu gpu --n 40000
CPU smoke run with a tiny random model:
    python bench/score.py --device cpu --quick

No Ray: the stage core (ScoreStage.process) is called directly. Models are random-init open_clip
configs (pretrained=None), which cost exactly what trained ones cost.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_jpegs(k: int, w: int, h: int, seed: int = 0) -> list[bytes]:
    """k distinct photo-like JPEGs (smooth gradients + shapes + mild noise, ~40-80 KB)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(k):
        a, b, c = rng.uniform(0, 1, 3)
        base = np.stack([(xx / w) * 255 * a, (yy / h) * 255 * b,
                         ((xx + yy) / (w + h)) * 255 * c], -1)
        base += rng.normal(0, 12, base.shape)
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(6):
            x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
            d.ellipse([x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)],
                      fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_shards(root: Path, n: int, rows_per_shard: int, w: int, h: int) -> list[Path]:
    jpegs = synthetic_jpegs(64, w, h)
    words = "red blue green small large circle square two three cat dog on the grass".split()
    rng = np.random.default_rng(1)
    paths = []
    for s in range(0, n, rows_per_shard):
        m = min(rows_per_shard, n - s)
        caps = [" ".join(rng.choice(words, 8)) for _ in range(m)]
        t = pa.table({"uid": pa.array(np.arange(s, s + m), pa.int64()),
                      "image": pa.array([jpegs[(s + i) % len(jpegs)] for i in range(m)], pa.binary()),
                      "caption_clean": caps, "lang": ["en"] * m, "decode_ok": [True] * m})
        p = root / f"in-{s // rows_per_shard:05d}.parquet"
        pq.write_table(t, p, compression="none")  # JPEG bytes don't compress
        paths.append(p)
    return paths


def model_only(stage, n_iter: int) -> float:
    """Pairs/s of image+text forward alone on device-resident inputs (the ceiling)."""
    import torch

    be = stage.backends["*"]
    bs = be.batch_size
    th, tw = be.pixel.size
    px = torch.randn(bs, 3, th, tw, device=be.device).to(be.dtype)
    px = px.contiguous(memory_format=torch.channels_last)
    tokens = be.tokenizer(["a red circle and two small squares on the grass"] * bs).to(be.device)
    sync = torch.cuda.synchronize if be.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):
            be.encode_pixels(px), be.model.encode_text(tokens)
        sync()
        t0 = time.perf_counter()
        for _ in range(n_iter):
            be.encode_pixels(px)
            be.model.encode_text(tokens)
        sync()
    return bs * n_iter / (time.perf_counter() - t0)


def end_to_end(stage, shards: list[Path], out_dir: Path) -> tuple[float, int]:
    import torch

    stage.process(pq.read_table(shards[0]).slice(0, stage.cfg.batch_size))  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    rows = 0
    for i, p in enumerate(shards):
        t = pq.read_table(p)
        out = stage.process(t)
        out = out.add_column(0, "uid", t.column("uid"))
        tmp = out_dir / f".score-{i:05d}.parquet.tmp"
        pq.write_table(out, tmp)
        tmp.rename(out_dir / f"score-{i:05d}.parquet")
        rows += t.num_rows
        errs = out.column("clip_error").null_count
        if errs != t.num_rows:
            raise RuntimeError(f"{t.num_rows - errs} rows failed to score in {p}")
    return rows / (time.perf_counter() - t0), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    ap.add_argument("--decode", nargs="+", default=["cpu", "gpu"])
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--rows-per-shard", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--model-iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny model, few rows (CPU smoke run)")
    a = ap.parse_args()

    import torch

    from stages.score import ScoreConfig, ScoreStage

    w, h = (int(v) for v in a.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    specs = [{"kind": "open_clip", "model": m} for m in a.models]
    if a.quick:
        from models.clip.testing import tiny_open_clip_dir

        # Tiny random model (32-px input): measures the plumbing, not a real model.
        d = tiny_open_clip_dir(work / "tiny")
        specs = [{"kind": "open_clip", "path": str(d)}]
        a.n, a.rows_per_shard, a.batch_size = min(a.n, 512), 256, 64
        a.precisions, a.decode, a.model_iters = ["fp32"], ["cpu"], 5
    shards = write_shards(work, a.n, a.rows_per_shard, w, h)
    print(f"torch {torch.__version__}, device={a.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if a.device.startswith('cuda') else ''}, "
          f"{a.n:,} pairs of {w}x{h} JPEG in {len(shards)} shards, batch {a.batch_size}, "
          f"{a.threads} decode threads", flush=True)
    for spec in specs:
        for prec in a.precisions:
            cfg = ScoreConfig(backends={"*": spec}, device=a.device, precision=prec,
                              batch_size=a.batch_size, num_decode_threads=a.threads,
                              rows_per_call=a.rows_per_shard)
            stage = ScoreStage(cfg, None)
            stage.setup(None)
            ceiling = model_only(stage, a.model_iters)
            for dec in a.decode:
                stage.cfg.decode = dec
                out_dir = work / f"out-{len(os.listdir(work))}"
                out_dir.mkdir()
                e2e, rows = end_to_end(stage, shards, out_dir)
                name = spec.get("model") or "tiny"
                print(f"{name:>9} {prec} decode={dec}: end-to-end {e2e:9,.0f} pairs/s | "
                      f"model-only {ceiling:9,.0f} pairs/s | {100 * e2e / ceiling:5.1f}% of "
                      f"ceiling ({rows:,} rows)", flush=True)
            del stage
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Export throughput: the per-shard pass (encode and stage) and the driver's finish pass (copy the
staged samples into evenly cut tars), on a run directory built from skimage's photos.

    python bench/export_reshard.py --rows 2000 --shard-size 500 --samples-per-shard 300

Prints rows/s of each pass for JPEG passthrough and for a center_crop re-encode, and the MB/s of
finish (it copies bytes, so it should run at disk speed, far above the per-shard pass).
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import ExportConfig
from pipeline.executors import LocalExecutor
from pipeline.stage import RunContext
from pipeline.store import ColumnStore, atomic_write_json
from stages.export import ExportStage


def _photos() -> list[bytes]:
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_run(wd: Path, rows: int, shard_size: int, keep: float, seed: int = 0) -> None:
    """input, download (image bytes), annotate (format, size) and select (decision) shards."""
    photos = _photos()
    sizes = [Image.open(io.BytesIO(p)).size for p in photos]
    rng = np.random.default_rng(seed)
    n_shards = -(-rows // shard_size)
    for s in range(n_shards):
        uid = np.arange(s * shard_size, min(rows, (s + 1) * shard_size), dtype=np.int64)
        pick = rng.integers(0, len(photos), len(uid))
        name = f"{s:05d}.parquet"
        for d in ("input", "download", "annotate", "select"):
            (wd / d).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"uid": uid, "url": [f"http://x/{u}.jpg" for u in uid],
                                 "caption": [f"photo {u}" for u in uid]}), wd / "input" / name)
        pq.write_table(pa.table({"uid": uid, "image": pa.array([photos[i] for i in pick], pa.binary()),
                                 "download_ok": [True] * len(uid)}), wd / "download" / name)
        pq.write_table(pa.table({"uid": uid, "image_format": ["JPEG"] * len(uid),
                                 "width": pa.array([sizes[i][0] for i in pick], pa.int32()),
                                 "height": pa.array([sizes[i][1] for i in pick], pa.int32()),
                                 "byte_size": pa.array([len(photos[i]) for i in pick], pa.int64())}),
                       wd / "annotate" / name)
        kept = rng.random(len(uid)) < keep
        pq.write_table(pa.table({"uid": uid, "decision": ["kept" if k else "rejected" for k in kept],
                                 "reason": [None if k else "small_image" for k in kept]}), wd / "select" / name)
    atomic_write_json({"n_rows": rows, "n_shards": n_shards}, wd / "input" / "meta.json")


def bench(wd: Path, cfg: ExportConfig) -> dict:
    shutil.rmtree(wd / "export", ignore_errors=True)
    shutil.rmtree(wd / "_export_state", ignore_errors=True)
    (wd / "run.json").unlink(missing_ok=True)
    store = ColumnStore(wd, ["download", "annotate", "select", "export"])
    stage = ExportStage(cfg, RunContext(workdir=str(wd), recipe=None))
    t0 = time.perf_counter()
    state = stage.prepare(store)
    LocalExecutor().map_shards(lambda: ExportStage(cfg, RunContext(workdir=str(wd), recipe=None)),
                               store, store.shards(), state, desc="export")
    t1 = time.perf_counter()
    stage.finish(store)
    t2 = time.perf_counter()
    sizes = json.loads((wd / "export" / "shards" / "sizes.json").read_text())
    mb = sum(p.stat().st_size for p in (wd / "export" / "shards").glob("*.tar")) / 1e6
    return {"kept": sum(sizes.values()), "tars": len(sizes), "min": min(sizes.values()), "max": max(sizes.values()),
            "shard_pass_s": t1 - t0, "finish_s": t2 - t1, "mb": mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--samples-per-shard", type=int, default=300)
    ap.add_argument("--keep", type=float, default=0.6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        build_run(wd, args.rows, args.shard_size, args.keep)
        for label, cfg in (("jpeg passthrough", ExportConfig(samples_per_shard=args.samples_per_shard)),
                           ("center_crop 256 jpg", ExportConfig(samples_per_shard=args.samples_per_shard,
                                                                resize_mode="center_crop", image_size=256))):
            r = bench(wd, cfg)
            print(f"{label:20s} kept {r['kept']} in {r['tars']} tars ({r['min']}-{r['max']} each), "
                  f"{r['mb']:.0f} MB | per-shard pass {r['kept'] / r['shard_pass_s']:.0f} samples/s | "
                  f"finish {r['kept'] / r['finish_s']:.0f} samples/s, {r['mb'] / r['finish_s']:.0f} MB/s")


if __name__ == "__main__":
    main()

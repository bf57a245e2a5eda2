"""How long the driver takes to learn which shards a stage still owes, on an S3 API server.

The runner asks this before every stage (and download and export again): once a shard
(a HEAD request each, serial on the driver) or from one listing of the stage's folder
(`ColumnStore.pending`, one LIST call per 1,000 keys). Starts moto's S3 server on loopback,
writes N marker objects and times both. Loopback round trips are ~1 ms; a real object store's
are 10-50 ms, so multiply the per-shard figure accordingly.

    .venv/bin/python bench/store_listing.py --shards 5000
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUCKET = "mmcurate-bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=5000, help="shards in the run (markers written: 90%%)")
    a = ap.parse_args()
    from tests.s3server import moto_server

    with moto_server(BUCKET) as (fs, _):
        from pipeline import storage
        from pipeline.store import ColumnStore

        wd = f"s3://{BUCKET}/run"
        storage.write_json({"n_shards": a.shards, "n_rows": a.shards}, storage.wpath(wd) / "input" / "meta.json")
        done = [s for s in range(a.shards) if s % 10]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: fs.pipe(f"{BUCKET}/run/annotate/{s:05d}.parquet", b""), done))
        print(f"wrote {len(done):,} markers in {time.perf_counter() - t0:.1f}s")
        store = ColumnStore(wd, ["annotate"])
        t0 = time.perf_counter()
        by_head = [s for s in store.shards() if not store.done("annotate", s)]
        t_head = time.perf_counter() - t0
        t0 = time.perf_counter()
        by_list = store.pending("annotate")
        t_list = time.perf_counter() - t0
        assert by_head == by_list, "the listing and the per-shard checks disagree"
        print(f"{a.shards:,} shards, {len(by_list):,} pending: one request a shard {t_head:.2f}s "
              f"({t_head / a.shards * 1e3:.2f} ms a shard); one listing {t_list:.2f}s "
              f"({-(-a.shards // 1000)}+ LIST pages); {t_head / max(t_list, 1e-9):.0f}x")


if __name__ == "__main__":
    main()

"""The cost of assigning rows to buckets as the number of buckets grows, exact against the
two-level index (filters/dedup/buckets.py), and what the two-level index gives up.

Fixed 5k-row buckets make N / 5,000 centroids: 2,000 at 10M rows, 20,000 at 100M, 200,000 at
1B. Every row is compared with every centroid up to EXACT_ASSIGN_MAX; above it, with ~sqrt(k)
coarse centroids and the fine centroids of its COARSE_PROBES nearest cells. On the near-duplicate
summaries of the corpus `bench/dedup_scale.py` writes (run it first for --rows), for each k:
CPU µs a row for both, the share of rows whose nearest bucket the two-level index finds, and the
share of planted (copy, source) pairs that share a bucket under each (ratio 1.1, at most 4, the
step's defaults). Centroids: k-means on a sample (256 rows a centroid) while that is cheap here,
else a uniform sample of rows (what k-means++ seeding starts from; the timing depends only on k).

    .venv/bin/python bench/dedup_assign.py --rows 10000000 --shards 10
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    from bench.dedup_buckets import summaries
    from filters.dedup.buckets import BucketIndex, assign, build_index, kmeans, train_index
    from stages.dedup import DedupConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="the corpus size written by dedup_scale.py")
    ap.add_argument("--data", default="/tmp/dedup_scale")
    ap.add_argument("--shards", type=int, default=10, help="shards read")
    ap.add_argument("--pairs", type=int, default=10_000, help="planted pairs assigned (2 rows each)")
    ap.add_argument("--centroids", default="2000,20000,200000")
    ap.add_argument("--kmeans-max", type=int, default=2000, help="train k-means up to this many centroids")
    a = ap.parse_args()
    cfg = DedupConfig()
    d = os.path.join(a.data, str(a.rows))
    files = sorted(glob.glob(os.path.join(d, "*.parquet")))[:a.shards]
    vec = summaries(files)
    truth = np.load(os.path.join(d, "truth.npz"))
    rng = np.random.default_rng(5)
    inside = np.flatnonzero((truth["copy"] < len(vec)) & (truth["src"] < len(vec)))
    pick = rng.choice(inside, min(a.pairs, len(inside)), replace=False)
    c, s = truth["copy"][pick], truth["src"][pick]
    print(f"{len(vec):,} summaries ({vec.shape[1]} dims) from {len(files)} shards; {len(c):,} planted pairs")

    def share(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean([bool(set(p[p >= 0]) & set(q[q >= 0])) for p, q in zip(x, y)]))

    for k in (int(v) for v in a.centroids.split(",")):
        t0 = time.perf_counter()
        if k <= a.kmeans_max:
            cents, how = kmeans(vec[rng.choice(len(vec), min(len(vec), 256 * k), replace=False)], k, False), "k-means"
        else:
            cents, how = vec[rng.choice(len(vec), k, replace=False)], "sampled rows"
        t1 = time.perf_counter()
        two_idx = build_index(cents, exact_max=0)
        t_build = time.perf_counter() - t1
        rows = np.concatenate([vec[c], vec[s]])
        out = {}
        schemes = [("exact", BucketIndex(cents)), ("two-level", two_idx)]
        if how == "k-means":  # what the step trains above EXACT_ASSIGN_MAX: hierarchical k-means
            t1 = time.perf_counter()
            hier = train_index(vec[rng.choice(len(vec), min(len(vec), 256 * k), replace=False)], k, False, exact_max=0)
            print(f"  hierarchical k-means for k={k:,}: {hier.k:,} buckets in {len(hier.coarse)} cells, "
                  f"{time.perf_counter() - t1:.0f}s")
            schemes += [("hierarchical", hier)]
        for name, idx in schemes:
            c0 = _cpu()
            near = assign(rows, idx, cfg.bucket_probes, False, cfg.bucket_ratio)
            out[name] = (near, (_cpu() - c0) / len(rows) * 1e6)
        (ex, ex_us), (tw, tw_us) = out["exact"], out["two-level"]
        n = len(c)
        print(f"k={k:,} ({how}, {time.perf_counter() - t0:.0f}s; coarse index {len(two_idx.coarse)} cells, "
              f"built in {t_build:.1f}s): exact {ex_us:,.0f} CPU us a row, two-level {tw_us:,.0f} "
              f"({ex_us / tw_us:.1f}x); nearest bucket found {np.mean(tw[:, 0] == ex[:, 0]):.4f}; pairs sharing a "
              f"bucket exact {share(ex[:n], ex[n:]):.4f}, two-level {share(tw[:n], tw[n:]):.4f}; buckets a row "
              f"{np.mean((ex >= 0).sum(1)):.2f} / {np.mean((tw >= 0).sum(1)):.2f}")
        if "hierarchical" in out:
            hi, hi_us = out["hierarchical"]
            print(f"  hierarchical: {hi_us:,.0f} CPU us a row; pairs sharing a bucket {share(hi[:n], hi[n:]):.4f}; "
                  f"buckets a row {np.mean((hi >= 0).sum(1)):.2f}")


if __name__ == "__main__":
    main()

"""Semantic-dedup benchmark: time and planted-duplicate recall on random 512-d embeddings.

    python bench/dedup.py --n 100000 1000000 --dup-frac 0.05 --tau 0.95

Planted duplicates are near-copies of random sources at cosine uniform in [tau+0.01, 0.995];
recall = share of planted copies labelled with their source's group; false merges = random
(non-planted) rows that were grouped with anything.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from filters.semdedup import semantic_dup_of  # noqa: E402


def make(n: int, d: int, dup_frac: float, tau: float, seed: int):
    rng = np.random.default_rng(seed)
    n_dup = int(n * dup_frac)
    n_base = n - n_dup
    x = rng.standard_normal((n, d), dtype=np.float32)
    x[:n_base] /= np.linalg.norm(x[:n_base], axis=1, keepdims=True)
    src = rng.integers(0, n_base, n_dup)
    cos = rng.uniform(tau + 0.01, 0.995, n_dup).astype(np.float32)[:, None]
    noise = x[n_base:]
    noise -= (noise * x[src]).sum(1, keepdims=True) * x[src]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x[n_base:] = cos * x[src] + np.sqrt(1 - cos**2) * noise
    return x.astype(np.float16), src, n_base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dup-frac", type=float, default=0.05)
    ap.add_argument("--tau", type=float, default=0.95)
    ap.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "clustered"])
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import faiss
    print(f"faiss {faiss.__version__}, threads={faiss.omp_get_max_threads()}, "
          f"gpus={faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}")
    for n in a.n:
        emb, src, n_base = make(n, a.dim, a.dup_frac, a.tau, a.seed)
        uids = np.arange(n, dtype=np.int64)
        t0 = time.perf_counter()
        rep = semantic_dup_of(emb, uids, threshold=a.tau, index=a.index, nprobe=a.nprobe)
        dt = time.perf_counter() - t0
        recall = float(np.mean(rep[n_base:] == rep[src]))
        planted_src = np.zeros(n_base, bool)
        planted_src[src] = True
        false_merge = int(np.sum((rep[:n_base] != uids[:n_base]) & ~planted_src))
        print(f"N={n:>9,} d={a.dim} index={a.index} nprobe={a.nprobe} tau={a.tau}: "
              f"{dt:7.1f} s ({n / dt:,.0f} rows/s), planted recall={recall:.4f} "
              f"({len(src):,} planted), false merges={false_merge}", flush=True)


if __name__ == "__main__":
    main()

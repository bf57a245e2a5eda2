"""How often a planted near copy and its source share a k-means bucket, per assignment scheme.

The distributed near-duplicate step compares rows only inside buckets (stages/dedup.py): a pair
whose rows share no bucket is never compared. With buckets of a fixed size, more rows mean more
buckets, smaller cells, and more pairs split by a border. This bench measures that loss apart
from everything else, on the corpus `bench/dedup_scale.py` writes (run that first for the size
given here):

* the share of planted pairs the crop-aligned verification accepts (the ceiling whatever the
  bucketing), and the share whose source is among the copy's 10 nearest rows over the rows read
  (exact search; is the candidate step itself the limit?),
* for k-means with as many centroids as the dedup step trains for N rows (N / bucket_rows) and
  for 10x fewer: the share of pairs with a common bucket when every row joins its P nearest
  buckets (what the step does, P = bucket_probes), and when a row joins its nearest bucket plus
  the next ones whose centroid is at most `ratio` times as far (at most P), with the mean number
  of buckets a row joins (the shuffle's volume relative to one copy a row).

    .venv/bin/python bench/dedup_buckets.py --rows 10000000 --shards 10
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def summaries(files: list[str]) -> np.ndarray:
    import pyarrow.parquet as pq

    from filters.dedup.near import near_sigs, near_summary

    out = []
    for f in files:
        sigs, _ = near_sigs(pq.read_table(f, columns=["near_sig"]).column("near_sig"))
        out.append(near_summary(sigs))
    return np.ascontiguousarray(np.concatenate(out), np.float32)


def verified_share(files: list[str], c: np.ndarray, s: np.ndarray) -> float:
    """Share of the pairs the crop-aligned check (near_verify, default thresholds) accepts: the
    ceiling of near-duplicate recall whatever the bucketing."""
    import pyarrow.parquet as pq

    from filters.dedup.near import near_sigs, near_verify
    from filters.image import NEAR_SIG_BYTES

    need = np.unique(np.concatenate([c, s]))
    sigs = np.zeros((len(need), NEAR_SIG_BYTES), np.uint8)
    log_aspect = np.zeros(len(need))
    for f in files:
        t = pq.read_table(f, columns=["uid", "near_sig", "width", "height"])
        t = t.filter(np.isin(t.column("uid").to_numpy(), need))
        at = np.searchsorted(need, t.column("uid").to_numpy())
        sigs[at] = near_sigs(t.column("near_sig"))[0]
        log_aspect[at] = np.log(t.column("width").to_numpy() / t.column("height").to_numpy())
    return float(np.mean(near_verify(sigs, log_aspect, np.searchsorted(need, c), np.searchsorted(need, s))))


def main() -> None:
    import faiss

    from stages.dedup import DedupConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="the corpus size written by dedup_scale.py")
    ap.add_argument("--data", default="/tmp/dedup_scale")
    ap.add_argument("--shards", type=int, default=10, help="shards read (rows compared inside them)")
    ap.add_argument("--pairs", type=int, default=20_000)
    a = ap.parse_args()
    d = os.path.join(a.data, str(a.rows))
    t0 = time.perf_counter()
    vec = summaries(sorted(glob.glob(os.path.join(d, "*.parquet")))[:a.shards])
    truth = np.load(os.path.join(d, "truth.npz"))
    rng = np.random.default_rng(2)
    inside = np.flatnonzero((truth["copy"] < len(vec)) & (truth["src"] < len(vec)))
    pick = rng.choice(inside, min(a.pairs, len(inside)), replace=False)
    c, s = truth["copy"][pick], truth["src"][pick]
    print(f"{len(vec):,} summaries from {a.shards} shards of the {a.rows:,}-row corpus, {len(c):,} planted "
          f"pairs ({time.perf_counter() - t0:.0f}s)")
    files = sorted(glob.glob(os.path.join(d, "*.parquet")))[:a.shards]
    print(f"planted pairs the verification accepts: {verified_share(files, c, s):.4f}")
    index = faiss.IndexFlatL2(vec.shape[1])
    index.add(vec)
    dist, _ = index.search(vec[c[:2000]], 11)
    to_src = ((vec[c[:2000]] - vec[s[:2000]]) ** 2).sum(1)
    print(f"source among the copy's 10 nearest rows (exact, these rows): "
          f"{np.mean((dist < to_src[:, None]).sum(1) <= 10):.4f}")
    cfg = DedupConfig()
    k_run = max(1, a.rows // cfg.bucket_rows)
    sample = vec[rng.choice(len(vec), min(len(vec), 256 * k_run), replace=False)]
    randoms = vec[rng.choice(len(vec), len(c), replace=False)]
    for k in sorted({max(1, k_run // 10), k_run}):
        km = faiss.Kmeans(vec.shape[1], k, niter=20, seed=0, max_points_per_centroid=256, verbose=False)
        km.train(sample[:256 * k])
        cent = km.centroids.astype(np.float64)

        def dist2(x: np.ndarray) -> np.ndarray:
            x = x.astype(np.float64)
            return np.maximum((cent ** 2).sum(1)[None] - 2 * x @ cent.T + (x ** 2).sum(1)[:, None], 0)

        dc, ds, dr = dist2(vec[c]), dist2(vec[s]), dist2(randoms)
        oc, os_, orr = (np.argsort(x, 1)[:, :8] for x in (dc, ds, dr))
        label = f"k={k:,} ({'this size' if k == k_run else 'a tenth of the rows'})"
        for p in (1, 2, 3, 4):
            share = np.mean([bool(set(oc[i, :p]) & set(os_[i, :p])) for i in range(len(c))])
            print(f"{label}: {p} nearest buckets: pair shares a bucket {share:.4f}, buckets a row {p}")

        def joined(dd: np.ndarray, o: np.ndarray, ratio: float, p: int) -> list[set]:
            near = np.sqrt(np.take_along_axis(dd, o[:, :p], 1))
            return [set(o[i, :p][near[i] <= ratio * near[i, 0]]) for i in range(len(o))]

        for ratio in (1.05, 1.1, 1.2):
            for p in (3, 4):
                share = np.mean([bool(x & y) for x, y in zip(joined(dc, oc, ratio, p), joined(ds, os_, ratio, p))])
                vol = np.mean([len(x) for x in joined(dr, orr, ratio, p)])
                print(f"{label}: nearest bucket + next within {ratio}x its distance (at most {p}): "
                      f"shares {share:.4f}, buckets a row {vol:.2f}")


if __name__ == "__main__":
    main()

"""Near-duplicate image detection against the synthetic corpus's labels, and its scale.

Quality (pairs): loads a corpus (labels.parquet) and a run's annotate outputs (near_sig, sizes),
and prints for the labelled near-duplicate pairs how many are candidates (k-NN) and verified,
how many pairs of different pictures are verified (false pairs), and after grouping how many
near/exact duplicates share a group with their original and how many clean rows were grouped.

    .venv/bin/python bench/neardup_eval.py --corpus /tmp/nd2000/corpus --run /tmp/nd2000/run

Scale: `--synthetic N` times candidate search + verification + grouping on N synthetic
signatures (smooth random thumbnails, 5% planted resized/cropped copies) and prints bytes/row.
The whole dedup stage at 100k-1M rows with realistic signatures: bench/dedup_scale.py.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from filters import dedup as D  # noqa: E402
from filters.image import NEAR_GRID, NEAR_SIG_BYTES  # noqa: E402


def quality(corpus: str, run: str, neighbors: int, max_diff: float, max_rms: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = pq.read_table(os.path.join(corpus, "labels.parquet")).to_pandas().set_index("row")
    t = pa.concat_tables([pq.read_table(f, columns=["uid", "decode_ok", "width", "height", "near_sig", "sha256"])
                          for f in sorted(glob.glob(os.path.join(run, "annotate", "*.parquet")))])
    uids = t.column("uid").to_numpy()
    sigs, valid = D.near_sigs(t.column("near_sig"))
    w = np.nan_to_num(np.array(t.column("width").to_pylist(), float))
    h = np.nan_to_num(np.array(t.column("height").to_pylist(), float))
    valid &= (w > 0) & (h > 0)
    # One row per distinct image (exact copies are the sha256 rule's job).
    sha = np.array(t.column("sha256").to_pylist(), dtype=object)
    _, first = np.unique(np.where(valid, sha, None).astype(str), return_index=True)
    rows = np.intersect1d(np.flatnonzero(valid), first)
    iid = labels["image_id"].reindex(uids[rows]).to_numpy()
    log_aspect = np.log(w[rows] / h[rows])
    pos = {u: i for i, u in enumerate(uids[rows])}
    truth = set()
    for r in labels.itertuples():
        if "near_dup" in r.labels and r.Index in pos and r.dup_of_row in pos:
            a, b = pos[r.Index], pos[int(r.dup_of_row)]
            truth.add((min(a, b), max(a, b)))
    t0 = time.perf_counter()
    a, b = D.near_candidates(sigs[rows], neighbors, max_rms)
    t1 = time.perf_counter()
    ok = D.near_verify(sigs[rows], log_aspect, a, b, max_diff=max_diff)
    t2 = time.perf_counter()
    # How far apart the labelled pairs are on the k-NN vector, against the max_rms prefilter.
    vec = D.near_summary(sigs[rows])
    ta, tb = np.array(sorted(truth)).T
    rms = np.sqrt(((vec[ta] - vec[tb]) ** 2).mean(1))
    aa, bb = D.near_candidates(sigs[rows], neighbors, None)
    nrms = np.sqrt(((vec[aa] - vec[bb]) ** 2).mean(1))
    print(f"{D.NEAR_SIG_BYTES} bytes/row; labelled pairs' k-NN RMS q50/q95/q99/max "
          f"{np.quantile(rms, [0.5, 0.95, 0.99, 1]).round(1).tolist()}; candidates without the RMS "
          f"prefilter {len(aa)}, with (<= {max_rms}) {len(a)} ({(nrms <= max_rms).mean():.3f})")
    cand = set(zip(a.tolist(), b.tolist()))
    ver = set(zip(a[ok].tolist(), b[ok].tolist()))
    false = [(i, j) for i, j in ver if iid[i] != iid[j]]
    print(f"{len(rows)} distinct decodable images; {len(truth)} labelled near-dup pairs; "
          f"{len(cand)} candidate pairs (k={neighbors}) in {t1 - t0:.2f}s, verified in {t2 - t1:.2f}s")
    print(f"candidate recall {len(truth & cand)}/{len(truth)}; verified recall {len(truth & ver)}/{len(truth)}; "
          f"false verified pairs {len(false)} of {len(cand) - len(truth & cand)} negative candidates")
    # Per-pair diff of the labelled pairs, to see the margin under max_diff.
    mats = D._interp_matrices(NEAR_GRID, D.NEAR_MAX_CROP)[1]
    cmats = D._interp_matrices(D.NEAR_CHROMA_GRID, D.NEAR_MAX_CROP)[1]
    th, ch = D._thumbs(sigs[rows]), D._chroma(sigs[rows])

    def diffs(pa_: np.ndarray, pb_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        l1, c1 = D._aligned_diff(th[pa_], th[pb_], mats, (ch[pa_], ch[pb_], cmats))
        l2, c2 = D._aligned_diff(th[pb_], th[pa_], mats, (ch[pb_], ch[pa_], cmats))
        first = l1 <= l2
        return np.where(first, l1, l2), np.where(first, c1, c2)

    d, c = diffs(*np.array(sorted(truth)).T)
    print(f"labelled pairs: aligned luma max diff q50/q95/max {np.quantile(d, [0.5, 0.95, 1]).round(1).tolist()}, "
          f"chroma q50/q95/max {np.quantile(c, [0.5, 0.95, 1]).round(1).tolist()}")
    negs = [(i, j) for i, j in cand if iid[i] != iid[j]]
    nd, nc = diffs(*np.array(negs).T)
    print(f"negative candidates passing luma <= {max_diff}: {(nd <= max_diff).sum()}, of those chroma "
          f"q01/q05/q50 {np.quantile(nc[nd <= max_diff], [0.01, 0.05, 0.5]).round(1).tolist()}")
    if false:
        fa, fb = np.array(false).T
        fd, fc = diffs(fa, fb)
        print(f"false pairs: aligned luma max diff min/q50 {fd.min():.1f}/{np.median(fd):.1f}; chroma min/q50 "
              f"{fc.min():.1f}/{np.median(fc):.1f}")
        cols = ["shape", "color", "size", "position", "count", "background"]
        for i, j in false[:8]:
            x, y = labels.loc[uids[rows][i], cols].tolist(), labels.loc[uids[rows][j], cols].tolist()
            print(f"   {uids[rows][i]} {uids[rows][j]} differ in {[c for c, p, q in zip(cols, x, y) if p != q]}")
    order = np.lexsort((uids[rows], -(w * h)[rows]))
    centre = D.star_groups(len(rows), a[ok], b[ok], order)
    grouped = np.bincount(centre, minlength=len(rows)) > 1
    in_group = grouped[centre]
    caught = sum(centre[i] == centre[j] for i, j in truth)
    clean = [i for i, u in enumerate(uids[rows]) if labels.loc[u, "label"] == "clean"]
    originals = {int(x) for x in labels["dup_of_row"].dropna()}
    wrong = [i for i in clean if in_group[i] and centre[i] != i and uids[rows][i] not in originals]
    print(f"groups: labelled pairs in one group {caught}/{len(truth)}; clean rows grouped under another "
          f"row {len(wrong)} of {len(clean)}")


def synthetic(n: int, neighbors: int, seed: int = 0) -> None:
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    n_base = n - n // 20
    # Smooth random thumbnails: 8x8 noise upsampled and blurred, so they look like the real ones
    # to the k-NN index; texture bytes and aspect equal for all rows (the cheap filters pass every
    # candidate: verification cost is the worst case).
    proto = []
    for _ in range(512):
        im = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).resize((NEAR_GRID, NEAR_GRID), Image.BICUBIC)
        proto.append(np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)), np.int16))
    proto = np.stack(proto)
    sigs = np.zeros((n, NEAR_SIG_BYTES), np.uint8)
    mix = rng.integers(0, len(proto), (n_base, 2))
    wgt = rng.random((n_base, 1, 1)).astype(np.float32)
    base = proto[mix[:, 0]] * wgt + proto[mix[:, 1]] * (1 - wgt) + rng.normal(0, 6, (n_base, 1, 1))
    sigs[:n_base, :NEAR_GRID * NEAR_GRID] = np.clip(base, 0, 255).reshape(n_base, -1)
    src = rng.integers(0, n_base, n - n_base)
    _, mats = D._interp_matrices(NEAR_GRID, 0.06)
    crop = mats[rng.integers(0, len(mats), (len(src), 2))]
    copy = np.einsum("pij,pjk,plk->pil", crop[:, 0], sigs[src, :NEAR_GRID * NEAR_GRID].reshape(-1, NEAR_GRID, NEAR_GRID).astype(np.float32), crop[:, 1])
    sigs[n_base:, :NEAR_GRID * NEAR_GRID] = np.clip(copy + rng.normal(0, 2, copy.shape), 0, 255).reshape(len(src), -1)
    sigs[:, NEAR_GRID * NEAR_GRID:] = 40
    uids = np.arange(n, dtype=np.int64)
    area = np.full(n, 1e5)
    area[n_base:] = 5e4
    t0 = time.perf_counter()
    a, b = D.near_candidates(sigs, neighbors)
    t1 = time.perf_counter()
    ok = D.near_verify(sigs, np.zeros(n), a, b)
    t2 = time.perf_counter()
    order = np.lexsort((uids, -area))
    centre = D.star_groups(n, a[ok], b[ok], order)
    t3 = time.perf_counter()
    recall = float(np.mean(centre[n_base:] == centre[src]))
    print(f"N={n:,}: {NEAR_SIG_BYTES} bytes/row of near_sig ({NEAR_SIG_BYTES * n / 1e9:.2f} GB); candidates "
          f"{len(a):,} pairs in {t1 - t0:.1f}s; verified {int(ok.sum()):,} in {t2 - t1:.1f}s; grouping "
          f"{t3 - t2:.1f}s; total {t3 - t0:.1f}s; planted copies grouped with their source: {recall:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus")
    ap.add_argument("--run")
    ap.add_argument("--neighbors", type=int, default=D.NEAR_NEIGHBORS)
    ap.add_argument("--max-diff", type=float, default=D.NEAR_MAX_DIFF)
    ap.add_argument("--max-rms", type=float, default=D.NEAR_MAX_RMS)
    ap.add_argument("--synthetic", type=int, nargs="*", default=[])
    a = ap.parse_args()
    if a.corpus and a.run:
        quality(a.corpus, a.run, a.neighbors, a.max_diff, a.max_rms)
    for n in a.synthetic:
        synthetic(n, a.neighbors)


if __name__ == "__main__":
    main()

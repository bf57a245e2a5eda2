"""Which buckets a row joins: its nearest k-means centroid and the next ones at most `ratio`
times as far, up to `probes` in all (rows near a border join both sides).

Up to EXACT_ASSIGN_MAX centroids every row is compared with every centroid. Above that (fixed
5k-row buckets make 200k centroids at 1B rows, milliseconds a row) a two-level index does the
comparing: the centroids are themselves clustered into ~sqrt(k) coarse cells, and a row is
compared with the coarse centroids and then with the fine centroids of its COARSE_PROBES nearest
cells only. A near-duplicate pair has nearly the same vector, so it probes the same cells and
meets the same candidates: a miss of the true nearest centroid moves both rows alike.
The centroids of a two-level index are trained hierarchically (train_index), so training, like
assigning, grows as ~k^1.5 rather than k^2. Distances are float64 numpy (not faiss search) so
every worker computes the same assignment.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_ASSIGN_MAX = 20_000  # centroids (100M rows at 5k a bucket)
COARSE_PROBES = 8


@dataclass
class BucketIndex:
    centroids: np.ndarray  # (k, d) float32
    coarse: np.ndarray | None = None  # (kc, d) float32, the two-level index when set
    cell_of: np.ndarray | None = None  # (k,) coarse cell of each centroid
    coarse_probes: int = COARSE_PROBES  # decided where the index is built, travels with it

    @property
    def k(self) -> int:
        return self.centroids.shape[0]


def kmeans(x: np.ndarray, k: int, spherical: bool, min_points: int = 39) -> np.ndarray:
    import faiss

    k = min(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=0, spherical=spherical, max_points_per_centroid=256,
                      min_points_per_centroid=min_points, verbose=False)
    km.train(np.ascontiguousarray(x, np.float32))
    return km.centroids.astype(np.float32)


def train_index(sample: np.ndarray, k: int, spherical: bool, exact_max: int | None = None) -> BucketIndex:
    """k bucket centroids from a training sample. Up to `exact_max` (EXACT_ASSIGN_MAX) one
    k-means; above it hierarchical, the coarse cells of the two-level index first (~sqrt(k) of
    them, on 256 sample rows a cell) and then each cell's share of the k centroids from the
    sample rows nearest it: k-means costs ~k^1.5 instead of k^2 (200k centroids at 1B rows would
    be ~10^15 flops flat), and every fine centroid belongs to the coarse cell it was trained in."""
    if k <= (EXACT_ASSIGN_MAX if exact_max is None else exact_max):
        return BucketIndex(kmeans(sample, k, spherical))
    x = sample / np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12) if spherical else sample
    kc = int(np.ceil(np.sqrt(k)))
    sub = x[np.linspace(0, len(x) - 1, min(len(x), 256 * kc)).astype(np.int64)]
    coarse = kmeans(sub, kc, spherical)
    cell = np.concatenate([_nearest(x[i:i + 65536], coarse, 1)[0][:, 0] for i in range(0, len(x), 65536)])
    fine, cell_of = [], []
    for j in range(len(coarse)):
        part = x[cell == j]
        if not len(part):
            continue
        c = kmeans(part, max(1, round(k * len(part) / len(x))), spherical, min_points=1)
        fine.append(c)
        cell_of.append(np.full(len(c), j, np.int64))
    return BucketIndex(np.concatenate(fine), coarse, np.concatenate(cell_of), COARSE_PROBES)


def build_index(centroids: np.ndarray, exact_max: int | None = None,
                coarse_probes: int | None = None) -> BucketIndex:
    """An index over given centroids: exact up to `exact_max` (EXACT_ASSIGN_MAX), else the
    centroids clustered into ~sqrt(k) coarse cells."""
    k = centroids.shape[0]
    if k <= (EXACT_ASSIGN_MAX if exact_max is None else exact_max):
        return BucketIndex(centroids)
    # sqrt(k) cells of ~sqrt(k) centroids each: few points a cell is expected here, not a warning.
    coarse = kmeans(centroids, int(np.ceil(np.sqrt(k))), spherical=False, min_points=1)
    return BucketIndex(centroids, coarse, _nearest(centroids, coarse, 1)[0][:, 0],
                       COARSE_PROBES if coarse_probes is None else coarse_probes)


def _dist2(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64)
    return (c ** 2).sum(1)[None, :] - 2.0 * (x @ c.T) + (x ** 2).sum(1)[:, None]


def _nearest(x: np.ndarray, c: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The p nearest rows of c to each row of x, nearest first: (ids, squared distances)."""
    x = x.astype(np.float64)
    d = _dist2(x, c)
    k = c.shape[0]
    p = min(p, k)
    top = np.argpartition(d, p - 1, axis=1)[:, :p] if p < k else np.tile(np.arange(k), (len(x), 1))
    dt = np.take_along_axis(d, top, 1)
    o = np.argsort(dt, axis=1, kind="stable")
    return np.take_along_axis(top, o, 1), np.take_along_axis(dt, o, 1)


def _nearest_two_level(x: np.ndarray, index: BucketIndex, p: int) -> tuple[np.ndarray, np.ndarray]:
    """As _nearest over index.centroids, searching only the fine centroids of each row's
    `index.coarse_probes` nearest coarse cells (one dense product a cell for the rows probing it)."""
    x = x.astype(np.float64)
    cells, _ = _nearest(x, index.coarse, index.coarse_probes)
    # (row, cell) probes grouped by cell, and the fine centroids grouped by cell, each by one sort.
    probe_row = np.repeat(np.arange(len(x)), cells.shape[1])
    o = np.argsort(cells.ravel(), kind="stable")
    probe_row, probe_cell = probe_row[o], cells.ravel()[o]
    by_cell = np.argsort(index.cell_of, kind="stable")
    first = np.searchsorted(index.cell_of[by_cell], np.arange(len(index.coarse) + 1))
    rows, ids, dists = [], [], []
    bounds = np.flatnonzero(np.diff(probe_cell)) + 1
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(probe_cell)]):
        j = probe_cell[s]
        members = by_cell[first[j]:first[j + 1]]
        if not len(members):
            continue
        r = probe_row[s:e]
        top, dt = _nearest(x[r], index.centroids[members], p)
        rows.append(np.repeat(r, top.shape[1]))
        ids.append(members[top].ravel())
        dists.append(dt.ravel())
    rows, ids, dists = np.concatenate(rows), np.concatenate(ids), np.concatenate(dists)
    o = np.lexsort((ids, dists, rows))
    rows, ids, dists = rows[o], ids[o], dists[o]
    start = np.searchsorted(rows, np.arange(len(x)))
    rank = np.arange(len(rows)) - start[rows]
    out_ids = np.full((len(x), p), -1, np.int64)
    out_d = np.full((len(x), p), np.inf)
    take = rank < p
    out_ids[rows[take], rank[take]] = ids[take]
    out_d[rows[take], rank[take]] = dists[take]
    return out_ids, out_d


def assign(vec: np.ndarray, index: BucketIndex, probes: int, spherical: bool,
           ratio: float = float("inf")) -> np.ndarray:
    """(rows, min(probes, k)) bucket ids, nearest first; -1 pads what is beyond `ratio`."""
    x = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12) if spherical else vec
    p = min(probes, index.k)
    near = np.empty((len(x), p), np.int64)
    # Row blocks keep each distance matrix near 64 MB whatever the number of buckets (two-level:
    # the rows-by-coarse-cells matrix; each cell's product is coarse_probes / cells of it).
    step = max(1, (1 << 23) // (index.k if index.coarse is None else len(index.coarse)))
    for s in range(0, len(x), step):
        if index.coarse is None:
            top, d2 = _nearest(x[s:s + step], index.centroids, p)
        else:
            top, d2 = _nearest_two_level(x[s:s + step], index, p)
        dt = np.sqrt(np.maximum(d2, 0))
        top[(dt > ratio * dt[:, :1]) | ~np.isfinite(dt)] = -1
        near[s:s + step] = top
    return near

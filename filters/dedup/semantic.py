"""Semantic near-duplicates: rows whose embeddings have cosine >= tau form one group, and every
row is labelled with its group's representative uid (SemDeDup / clip-retrieval style).

Pure numpy + faiss (no torch). Index choices:
  flat       exact inner-product range search (every neighbour above tau); small runs.
  ivf        faiss IndexIVFFlat (nlist ~ 4 sqrt(N), nprobe tunable); range search on CPU, and on
             faiss-gpu (which has no range search) the k nearest, kept where >= tau.
  clustered  faiss k-means (nlist ~ sqrt(N)), each row probes its `nprobe` nearest centroids,
             and pairs are scored exactly by one BLAS matrix product per cluster. Same recall
             model as IVF, but GEMM runs ~10x faster than IVF's per-query scans on CPU.
  auto       flat up to 20k rows; then ivf where faiss-gpu sees a GPU, else clustered.

Groups are stars (core.star_groups), never chains: rows are visited best first and a row joins
the first centre it is similar to, so in a chain a~b~c with cos(a, c) < tau, c is not dropped
for a (connected components would drop c although nothing kept resembles it).
semantic_bucket_pairs is the per-cluster step of the distributed path (stages/dedup.py).
"""
from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

from filters.dedup.core import best_first, star_groups

DEFAULT_THRESHOLD = 0.94
FLAT_MAX_ROWS = 20_000   # above this, IVF: flat range search is O(N^2 D)
_QUERY_BATCH = 8192      # bounds range-search result memory


def semantic_dup_of(emb: np.ndarray, uids: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                    priority: np.ndarray | None = None,
                    index: Literal["auto", "flat", "ivf", "clustered"] = "auto",
                    nprobe: int = 8, nlist: int | None = None, k: int = 64,
                    groups: np.ndarray | None = None, use_gpu: bool | None = None,
                    seed: int = 0, rank: np.ndarray | None = None) -> np.ndarray:
    """Representative uid for every row (a row that duplicates nothing is its own).

    emb: (N, D) embeddings (normalised here; rows with NaN or zero norm match nothing).
    priority: optional (N,) score, higher wins (e.g. clip_score); ties and NaN fall back to
    the smaller uid, so the choice is deterministic whatever the row order.
    groups: optional (N,) labels; rows only match inside their group (e.g. per CLIP model,
    since embeddings of different models live in different spaces).
    rank: optional (N,) position in the best-first order (core.best_first); overrides priority.
    """
    emb = np.asarray(emb)
    uids = np.asarray(uids)
    n = len(uids)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"emb must be (N, D) with N == len(uids) == {n}, got {emb.shape}")
    if len(np.unique(uids)) != n:
        raise ValueError("uids must be unique (they name the representative)")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold}")
    if priority is not None and len(priority) != n:
        raise ValueError(f"priority has {len(priority)} rows, emb has {n}")
    if n == 0:
        return uids.copy()
    x, valid = _normalise(emb)
    if groups is None:
        edges = _edges(x[valid], threshold, index, nprobe, nlist, k, use_gpu, seed)
        rows, cols = np.flatnonzero(valid)[edges[0]], np.flatnonzero(valid)[edges[1]]
    else:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} rows, emb has {n}")
        rs, cs = [], []
        for g in np.unique(groups):
            idx = np.flatnonzero((groups == g) & valid)
            e = _edges(x[idx], threshold, index, nprobe, nlist, k, use_gpu, seed)
            rs.append(idx[e[0]])
            cs.append(idx[e[1]])
        rows, cols = np.concatenate(rs), np.concatenate(cs)
    if rank is not None:
        order = np.argsort(np.asarray(rank, np.int64), kind="stable")
    else:
        order = best_first(uids, clip=None if priority is None else np.asarray(priority, np.float64))
    return uids[star_groups(n, rows, cols, order)]


def _normalise(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if x is emb:
        x = x.copy()
    finite = np.isfinite(x).all(axis=1)
    x[~finite] = 0.0
    norms = np.linalg.norm(x, axis=1)
    valid = finite & (norms > 1e-6)
    x[valid] /= norms[valid, None]
    return x, valid


def _gpu_available(use_gpu: bool | None) -> bool:
    has = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not has:
        raise RuntimeError("use_gpu=True but faiss has no GPU support here (install faiss-gpu)")
    return has if use_gpu is None else bool(use_gpu)


def _build_index(x: np.ndarray, index: str, nprobe: int, nlist: int | None,
                 seed: int) -> faiss.Index:
    n, d = x.shape
    kind = index
    if kind == "flat":
        idx = faiss.IndexFlatIP(d)
        idx.add(x)
        return idx
    if kind != "ivf":
        raise ValueError(f"index must be auto|flat|ivf|clustered, got {index!r}")
    nl = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(d)
    idx = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
    # k-means needs ~40 points per centroid; more only costs time.
    rng = np.random.default_rng(seed)
    train = x if n <= nl * 64 else x[np.sort(rng.choice(n, nl * 64, replace=False))]
    idx.cp.seed = seed
    idx.train(train)
    idx.add(x)
    idx.nprobe = min(nprobe, nl)
    return idx


def _edges(x: np.ndarray, threshold: float, index: str, nprobe: int, nlist: int | None,
           k: int, use_gpu: bool | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i != j, of rows of x with inner product >= threshold."""
    n = len(x)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    gpu = _gpu_available(use_gpu)
    if index == "auto":
        index = "flat" if n <= FLAT_MAX_ROWS else ("ivf" if gpu else "clustered")
    if index == "clustered":
        return _clustered_edges(x, threshold, nprobe, nlist, seed)
    idx = _build_index(x, index, nprobe, nlist, seed)
    if gpu:  # pragma: no cover - needs faiss-gpu
        res = faiss.StandardGpuResources()
        idx = faiss.index_cpu_to_gpu(res, 0, idx)
    rows, cols = [], []
    # faiss range search keeps results with score > radius; nudge so ">= threshold" holds.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
    for s in range(0, n, _QUERY_BATCH):
        q = x[s:s + _QUERY_BATCH]
        if gpu:  # pragma: no cover
            sims, nbrs = idx.search(q, min(k, n))
            qi = np.repeat(np.arange(len(q)), nbrs.shape[1])
            keep = (sims.ravel() >= threshold) & (nbrs.ravel() >= 0)
            r, c = qi[keep] + s, nbrs.ravel()[keep]
        else:
            lims, sims, nbrs = idx.range_search(q, radius)
            r = np.repeat(np.arange(len(q)), np.diff(lims).astype(np.int64)) + s
            c = nbrs
            keep = sims >= threshold
            r, c = r[keep], c[keep]
        off = r != c
        rows.append(r[off])
        cols.append(c[off].astype(np.int64))
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols)


def _clustered_edges(x: np.ndarray, threshold: float, nprobe: int, nlist: int | None,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    n, d = x.shape
    nl = nlist or max(1, min(int(np.sqrt(n)), n // 39))
    p = max(1, min(nprobe, nl))
    km = faiss.Kmeans(d, nl, niter=10, seed=seed, spherical=True, max_points_per_centroid=64,
                      verbose=False)
    km.train(x)
    # Unit rows and unit centroids: L2 order == inner-product order.
    _, assign = km.index.search(x, p)
    primary = assign[:, 0]
    members = _group_rows(primary, nl)
    probe_rows = np.repeat(np.arange(n), p - 1)
    probes = _group_rows(assign[:, 1:].ravel(), nl, probe_rows)
    rows, cols = [], []
    for c in range(nl):
        m = members[c]
        if len(m) == 0:
            continue
        xm = x[m]
        # Pairs inside the cluster (each once), then probing rows from other clusters.
        sims = xm @ xm.T
        r, cc = np.nonzero(np.triu(sims >= threshold, 1))
        rows.append(m[r])
        cols.append(m[cc])
        q = probes[c]
        for s in range(0, len(q), _QUERY_BATCH):
            qs = q[s:s + _QUERY_BATCH]
            r, cc = np.nonzero(x[qs] @ xm.T >= threshold)
            rows.append(qs[r])
            cols.append(m[cc])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    r, c = np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)
    off = r != c
    return r[off], c[off]


def _group_rows(labels: np.ndarray, n_groups: int,
                rows: np.ndarray | None = None) -> list[np.ndarray]:
    """rows (default arange) split by label, each part sorted: a CSR-style bucketing."""
    rows = np.arange(len(labels)) if rows is None else rows
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_groups + 1))
    sorted_rows = rows[order]
    return [sorted_rows[bounds[i]:bounds[i + 1]] for i in range(n_groups)]


def semantic_bucket_pairs(uids: np.ndarray, emb: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                          chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """uid pairs (a < b) with cosine >= threshold inside one bucket (a k-means cluster): exact,
    one matrix product per chunk of rows, in uid order so the result depends on the rows only."""
    uids = np.asarray(uids, np.int64)
    o = np.argsort(uids, kind="stable")
    uids = uids[o]
    x, valid = _normalise(np.asarray(emb)[o])
    idx = np.flatnonzero(valid)
    x, uids = x[idx], uids[idx]
    ra, rb = [], []
    for s in range(0, len(x), chunk):
        sims = x[s:s + chunk] @ x[s:].T
        r, c = np.nonzero(sims >= threshold)
        keep = c > r
        ra.append(uids[s + r[keep]])
        rb.append(uids[s + c[keep]])
    if not ra:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ra), np.concatenate(rb)

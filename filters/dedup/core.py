"""The grouping core every dedup method shares.

Conventions: every function returns, for each row, the uid of its group's representative; a row
that duplicates nothing, and every representative, gets ITS OWN uid, so `dup_of == uid` means
"keep". Exact keys are transitive by nature, so their groups are connected components
(`components`); similarity (near and semantic) is not, so its groups are stars around a
representative (`star_groups`): a chain a~b~c never puts a and c together unless a~c too.

Which member represents a group is one total order over rows, `best_first`, the same in every
method and on every path (single process or distributed), so decisions do not depend on row order
or partitioning.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def factorize(keys: Any) -> np.ndarray:
    """int64 codes for any key column (list, numpy, pandas, pyarrow); None/NaN/'' -> -1."""
    if hasattr(keys, "to_numpy") and not isinstance(keys, (pd.Series, pd.Index, np.ndarray)):
        keys = keys.to_numpy(zero_copy_only=False)  # pyarrow Array / ChunkedArray
    arr = np.asarray(keys, dtype=object) if not isinstance(keys, np.ndarray) else keys
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    codes = codes.astype(np.int64)
    if arr.dtype == object and len(uniques):
        empty = np.flatnonzero(pd.Index(uniques).astype(str) == "")
        if len(empty):
            codes[np.isin(codes, empty)] = -1
    return codes


def pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Codes of the (a, b) pair key; -1 where either part is missing."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    out = a * (int(b.max(initial=-1)) + 1) + b
    out[(a < 0) | (b < 0)] = -1
    return out


def _star_edges(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every row with a code to the first row of the same code."""
    idx = np.flatnonzero(codes >= 0)
    if not len(idx):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    c = codes[idx]
    _, first_pos, inv = np.unique(c, return_index=True, return_inverse=True)
    leader = idx[first_pos][inv]
    keep = leader != idx
    return idx[keep], leader[keep]


def _check_len(name: str, col: Any, n: int) -> None:
    if len(col) != n:
        raise ValueError(f"dedup column {name!r} has {len(col)} rows, uids has {n}: columns must be row-aligned")


def best_first(uids: Any, passes: Any = None, clip: Any = None, area: Any = None) -> np.ndarray:
    """Row order, best first, that picks every group's representative (README "dedup keeps the
    best member"): rows that pass select's other rules (caption, image size, decode...) first,
    then the higher CLIP score (unscored last), then the larger image, then the smaller uid.
    A total order on row attributes alone, so no path or partitioning can change a choice."""
    uids = np.asarray(uids, np.int64)
    n = len(uids)
    keys = [uids]
    if area is not None:
        keys.append(-np.nan_to_num(np.asarray(area, np.float64), nan=0.0))
    if clip is not None:
        c = np.asarray(clip, np.float64)
        keys.append(-np.where(np.isnan(c), -np.inf, c))
    if passes is not None:
        keys.append(~np.asarray(passes, bool))
    return np.lexsort(keys) if n else np.zeros(0, np.int64)


def rank_of(order: np.ndarray) -> np.ndarray:
    """Position of every row in `order` (0 = best)."""
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _representatives(n: int, rows: np.ndarray, cols: np.ndarray, uids: np.ndarray,
                     rank: np.ndarray) -> np.ndarray:
    """Connected components of the edges; each represented by its lowest-rank row."""
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    order = np.lexsort((rank, comp))
    sorted_comp = comp[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_comp[1:] != sorted_comp[:-1]
    rep_of_comp = np.empty(comp.max() + 1 if n else 0, dtype=np.int64)
    rep_of_comp[sorted_comp[first]] = uids[order[first]]
    return rep_of_comp[comp]


def edge_components(a: np.ndarray, b: np.ndarray, rank_key: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(uids, rep) for every uid that appears in an edge (a[i], b[i]) of uids: exact groups built
    from the edges alone, so memory follows the duplicates, not the corpus. rank_key(uids) gives
    the best-first order of those uids (default: smallest uid)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    if not len(nodes):
        return nodes, nodes.copy()
    order = np.arange(len(nodes)) if rank_key is None else rank_key(nodes)
    reps = _representatives(len(nodes), inv[:len(a)], inv[len(a):], nodes, rank_of(order))
    return nodes, reps


def edge_stars(a: np.ndarray, b: np.ndarray, rank_key: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(uids, centre uid) for every uid in an edge: star groups (see star_groups) over the edges
    alone, visiting uids best first by rank_key(uids) (default: smallest uid)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    if not len(nodes):
        return nodes, nodes.copy()
    order = np.arange(len(nodes)) if rank_key is None else rank_key(nodes)
    centre = star_groups(len(nodes), inv[:len(a)], inv[len(a):], np.asarray(order, np.int64))
    return nodes, nodes[centre]


def star_groups(n: int, a: np.ndarray, b: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Centre index per row: rows are visited best first (`order`); an unassigned row becomes a
    centre and takes every unassigned row it has an edge with. Every member is verified against
    its own centre, so A~B~C never puts A and C together unless A~C too (no chaining)."""
    centre = np.full(n, -1, np.int64)
    if not len(a):
        return np.arange(n, dtype=np.int64)
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    srt = np.argsort(src, kind="stable")
    src, dst = src[srt], dst[srt]
    start = np.searchsorted(src, np.arange(n + 1))
    has_edge = np.zeros(n, bool)
    has_edge[src] = True
    # A Python loop, but only over rows that have a verified edge (a few % of a corpus).
    for i in order[has_edge[order]]:  # rows without edges stay their own centre
        if centre[i] >= 0:
            continue
        centre[i] = i
        nb = dst[start[i]:start[i + 1]]
        nb = nb[centre[nb] < 0]
        centre[nb] = i
    centre[centre < 0] = np.flatnonzero(centre < 0)
    return centre


"""Exact duplicates (URL, image sha256, normalised caption, (caption, image) pair), optionally
merged with pHash near-duplicates: groups are the connected components of the union of all
edges (union-find; scipy's connected_components does it in C).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from filters.dedup.core import _check_len, _representatives, _star_edges, best_first, factorize, rank_of
from filters.dedup.near import DEFAULT_MAX_DISTANCE, _as_hashes, _phash_row_pairs

KEY_ORDER = ("url", "sha256", "caption", "caption_sha256")


def dup_of(uids: Any, *, area: Any = None, rank: Any = None, keys: Mapping[str, Any] | None = None,
           phash: Any = None, phash_valid: Any = None,
           max_distance: int | None = DEFAULT_MAX_DISTANCE,
           phash_verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Representative uid for every row (int64; a representative or unique row has its own uid).

    uids: unique int64 per row. area: width*height per row (None/NaN -> 0) to pick the largest.
    rank: instead of area, each row's position in the best-first order (core.best_first).
    keys: exact-duplicate key columns, e.g. {"url": urls, "sha256": shas, "caption": caption_keys,
      "caption_sha256": pair_codes(...)}; missing values (None, '', -1 codes) never match.
    phash: uint64 array (see hashing.phash_to_uint64) or hex strings; phash_valid marks rows that
      have one. max_distance: pHash Hamming threshold k (None: skip near-dup images).
    phash_verify: optional second check on candidate row pairs (arrays of row indices) returning
      a bool mask; pHash is luma-only and degenerate on low-detail images, so a colour check
      keeps a yellow star from matching a white circle at the same place.
    All groupings are merged (union-find): a row that is a URL duplicate of A and a pHash
    near-duplicate of B puts A and B in one group.
    """
    uids = np.asarray(uids, dtype=np.int64)
    n = len(uids)
    if len(np.unique(uids)) != n:
        raise ValueError("dedup: uids must be unique (they name the representative)")
    if area is None:
        area_arr = np.zeros(n, dtype=np.float64)
    else:
        _check_len("area", area, n)
        area_arr = pd.to_numeric(pd.Series(np.asarray(area, dtype=object)), errors="coerce").fillna(0).to_numpy(np.float64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for name, col in (keys or {}).items():
        _check_len(name, col, n)
        codes = col if (isinstance(col, np.ndarray) and col.dtype.kind == "i") else factorize(col)
        a, b = _star_edges(np.asarray(codes, dtype=np.int64))
        rows.append(a)
        cols.append(b)
    if phash is not None and max_distance is not None:
        _check_len("phash", phash, n)
        h, valid = _as_hashes(phash, phash_valid)
        a, b = _phash_row_pairs(h, np.flatnonzero(valid), max_distance, phash_verify is not None)
        if phash_verify is not None and len(a):
            ok = np.asarray(phash_verify(a, b), dtype=bool)
            a, b = a[ok], b[ok]
        rows.append(a)
        cols.append(b)
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    if n == 0:
        return uids.copy()
    if rank is None:
        rank = rank_of(best_first(uids, area=area_arr))
    else:
        _check_len("rank", rank, n)
    return _representatives(n, r, c, uids, np.asarray(rank, np.int64))


def exact_dup_of(keys: Any, uids: Any, area: Any = None) -> np.ndarray:
    """dup_of for a single exact key column."""
    return dup_of(uids, area=area, keys={"key": keys}, max_distance=None)


def phash_dup_of(phash: Any, uids: Any, max_distance: int = DEFAULT_MAX_DISTANCE,
                 area: Any = None, valid: Any = None) -> np.ndarray:
    """dup_of for pHash near-duplicates only."""
    return dup_of(uids, area=area, phash=phash, phash_valid=valid, max_distance=max_distance)

# ---- near-duplicate images from near_sig (filters/image.py) ----------------------------------
#
# pHash is luma-only and breaks under small crops; these scenes also collide at low resolution.
# So: candidates are the k nearest neighbours of a coarse 8x8 block-mean vector (faiss: flat
# below ~50k rows, HNSW above, never all pairs), pairs whose block means are already far apart
# (RMS > max_rms) are dropped, and each remaining pair is verified by a strict check: aspect
# ratios compatible with a crop of at most `max_crop` per side, similar texture energy, and the
# 32x32 thumbnails equal within `max_diff` (largest per-pixel difference) after aligning one to
# the other: the crop (left, right, top, bottom) is estimated per axis from the column and row
# profiles and the thumbnail is resampled (it is band-limited, so bilinear resampling is
# accurate). Verification is batched matrix products over thousands of pairs. Groups are stars
# around representatives (see star_groups), so a chain of pairwise-similar images never merges
# two different pictures.


def duplicated_by(uids: Any, keys: Mapping[str, Any], phash: Any = None, phash_valid: Any = None,
                  max_distance: int | None = DEFAULT_MAX_DISTANCE) -> list[str | None]:
    """Per row, the first rule (in the order given, pHash last) under which it shares a group with
    another row: the reason name to report for non-representatives ("dup_url", "dup_phash"...)."""
    uids = np.asarray(uids, dtype=np.int64)
    out: list[str | None] = [None] * len(uids)
    todo = np.ones(len(uids), dtype=bool)
    rules: list[tuple[str, np.ndarray]] = []
    for name, col in keys.items():
        rules.append((name, exact_dup_of(col, uids)))
    if phash is not None and max_distance is not None:
        rules.append(("phash", phash_dup_of(phash, uids, max_distance, valid=phash_valid)))
    for name, reps in rules:
        # In a group of size > 1: either not its own rep, or someone else points at it.
        grouped = reps != uids
        grouped |= np.isin(uids, reps[grouped])
        hit = np.flatnonzero(grouped & todo)
        for i in hit:
            out[i] = f"dup_{name}"
        todo[hit] = False
    return out


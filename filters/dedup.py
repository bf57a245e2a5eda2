"""Exact and near-duplicate grouping over columns (no image bytes), for the global dedup stage.

Every function returns, for each row, the uid of its group's representative; a row that
duplicates nothing, and every representative, gets ITS OWN uid (same convention as
filters/semdedup.py), so `dup_of == uid` means "keep".

Representative: the largest image (width*height, missing counts as 0), then the smallest uid,
whatever the row order.

Near-duplicate images (pHash Hamming distance <= k) use two-level multi-index hashing instead of
all pairs: by pigeonhole, two 64-bit hashes within distance k agree exactly on at least one of
k+1 disjoint bands, and on the remaining bits, again split in k+1 sub-bands, agree on at least
one sub-band. So every close pair shares one (band, sub-band) key of ~23 bits for k=4: buckets
stay small at 10M rows, candidates are verified with a popcount, and nothing is missed. Groups
are the connected components of the union of all edges (exact keys and pHash), which is the
union-find merge of the groups; scipy's connected_components does it in C.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from filters.hashing import popcount64

DEFAULT_MAX_DISTANCE = 4
KEY_ORDER = ("url", "sha256", "caption", "caption_sha256")


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


def _bands(bits: Sequence[int], n_bands: int) -> list[list[int]]:
    bits = list(bits)
    size, extra = divmod(len(bits), n_bands)
    out, pos = [], 0
    for i in range(n_bands):
        w = size + (1 if i < extra else 0)
        out.append(bits[pos:pos + w])
        pos += w
    return [b for b in out if b]


def _mask_extract(h: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    """Pack the given bit positions of each hash into a compact integer key."""
    key = np.zeros(len(h), dtype=np.uint64)
    # Contiguous runs of bits are moved at once.
    runs: list[tuple[int, int]] = []
    for b in bits:
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    shift_out = 0
    for start, width in runs:
        part = (h >> np.uint64(start)) & np.uint64((1 << width) - 1)
        key |= part << np.uint64(shift_out)
        shift_out += width
    return key


def _bucket_pairs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j in sorted order) with equal key, vectorised by offset."""
    order = np.argsort(key, kind="stable")
    ks = key[order]
    firsts, seconds = [], []
    pos = np.arange(len(ks) - 1)
    d = 1
    while len(pos):
        same = ks[pos] == ks[pos + d]
        pos = pos[same]
        if not len(pos):
            break
        firsts.append(order[pos])
        seconds.append(order[pos + d])
        d += 1
        pos = pos[pos + d < len(ks)]
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def phash_edges(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE,
                two_level: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (into `hashes`, which should be unique) with Hamming distance <= max_distance.

    two_level: None decides from the row count; True/False force it (tests compare both)."""
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    k = max_distance
    all_bits = list(range(64))
    bands = _bands(all_bits, k + 1)
    # A second level only pays off when first-level buckets would be large.
    if two_level is None:
        two_level = n > (1 << max(1, min(len(b) for b in bands)))
    src, dst = [], []
    for band in bands:
        band_key = _mask_extract(h, band)
        if two_level:
            rest = [b for b in all_bits if b not in set(band)]
            subs = _bands(rest, k + 1)
            keys = [(band_key << np.uint64(len(s))) | _mask_extract(h, s) for s in subs]
        else:
            keys = [band_key]
        for key in keys:
            a, b = _bucket_pairs(key)
            if not len(a):
                continue
            close = popcount64(h[a] ^ h[b]) <= k
            src.append(a[close])
            dst.append(b[close])
    if not src:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(src).astype(np.int64), np.concatenate(dst).astype(np.int64)


# Identical-hash buckets up to this size get every pair checked; larger ones are joined to their
# first row only (a bucket that large is a degenerate hash, e.g. blank images).
_FULL_PAIRS_MAX = 64


def _phash_row_pairs(h: np.ndarray, idx: np.ndarray, k: int, all_pairs: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs whose hashes are within k: identical hashes (star, or every pair in small
    buckets when a verifier will look at them) plus the leaders of close distinct hashes."""
    if not len(idx):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    uniq, first_pos, inv = np.unique(h[idx], return_index=True, return_inverse=True)
    leader = idx[first_pos]
    src, dst = [], []
    same = leader[inv] != idx
    src.append(idx[same])
    dst.append(leader[inv][same])
    if all_pairs:
        sizes = np.bincount(inv)
        for g in np.flatnonzero((sizes > 2) & (sizes <= _FULL_PAIRS_MAX)):
            m = idx[inv == g]
            i, j = np.triu_indices(len(m), 1)
            keep = i > 0  # pairs with the leader (i == 0) are already in the star
            src.append(m[i[keep]])
            dst.append(m[j[keep]])
    a, b = phash_edges(uniq, k)
    src.append(leader[a])
    dst.append(leader[b])
    return np.concatenate(src).astype(np.int64), np.concatenate(dst).astype(np.int64)


def _check_len(name: str, col: Any, n: int) -> None:
    if len(col) != n:
        raise ValueError(f"dedup column {name!r} has {len(col)} rows, uids has {n}: columns must be row-aligned")


def _representatives(n: int, rows: np.ndarray, cols: np.ndarray, uids: np.ndarray,
                     area: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # Best first within each component: larger area, then smaller uid.
    order = np.lexsort((uids, -area, comp))
    sorted_comp = comp[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_comp[1:] != sorted_comp[:-1]
    rep_of_comp = np.empty(comp.max() + 1 if n else 0, dtype=np.int64)
    rep_of_comp[sorted_comp[first]] = uids[order[first]]
    return rep_of_comp[comp]


def dup_of(uids: Any, *, area: Any = None, keys: Mapping[str, Any] | None = None,
           phash: Any = None, phash_valid: Any = None,
           max_distance: int | None = DEFAULT_MAX_DISTANCE,
           phash_verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Representative uid for every row (int64; a representative or unique row has its own uid).

    uids: unique int64 per row. area: width*height per row (None/NaN -> 0) to pick the largest.
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
    return _representatives(n, r, c, uids, area_arr)


def _as_hashes(phash: Any, valid: Any) -> tuple[np.ndarray, np.ndarray]:
    arr = phash.to_numpy(zero_copy_only=False) if hasattr(phash, "to_numpy") and not isinstance(phash, np.ndarray) else phash
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "ui":
        h = arr.astype(np.uint64)
        v = np.ones(len(h), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        return h, v
    from filters.hashing import phash_to_uint64

    h, v = phash_to_uint64(list(arr))
    if valid is not None:
        v &= np.asarray(valid, dtype=bool)
    return h, v


def exact_dup_of(keys: Any, uids: Any, area: Any = None) -> np.ndarray:
    """dup_of for a single exact key column."""
    return dup_of(uids, area=area, keys={"key": keys}, max_distance=None)


def phash_dup_of(phash: Any, uids: Any, max_distance: int = DEFAULT_MAX_DISTANCE,
                 area: Any = None, valid: Any = None) -> np.ndarray:
    """dup_of for pHash near-duplicates only."""
    return dup_of(uids, area=area, phash=phash, phash_valid=valid, max_distance=max_distance)


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

"""Near-duplicate images: pHash multi-index (fallback) and the near_sig thumbnail signature.

pHash (Hamming distance <= k) uses two-level multi-index hashing instead of all pairs: by
pigeonhole, two 64-bit hashes within distance k agree exactly on at least one of k+1 disjoint
bands, and on the remaining bits, again split in k+1 sub-bands, agree on at least one sub-band.
So every close pair shares one (band, sub-band) key of ~23 bits for k=4: buckets stay small at
10M rows, candidates are verified with a popcount, and nothing is missed.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from filters.dedup.core import _check_len, star_groups
from filters.hashing import popcount64
from filters.image import NEAR_CHROMA_GRID, NEAR_GRID, NEAR_SIG_BYTES, NEAR_TEX_GRID

DEFAULT_MAX_DISTANCE = 4


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


NEAR_NEIGHBORS = 10
NEAR_MAX_DIFF = 36.0
NEAR_MAX_CROP = 0.06
NEAR_MAX_TEXTURE = 20.0  # texture bytes (40 * ln(1 + energy)): 20 is a factor ~1.65
NEAR_MAX_CHROMA = 18.0
NEAR_MAX_RMS = 24.0
_TEX_END = NEAR_GRID * NEAR_GRID + 2 * NEAR_TEX_GRID * NEAR_TEX_GRID
_CROP_STEP = 0.01
_EXACT_INDEX_MAX = 50_000
_SUMMARY = 8  # the k-NN vector: 8x8 block means of the thumbnail
_ROW_CHUNK = 65536


def _block_mean(x: np.ndarray, out: int) -> np.ndarray:
    """Mean over square blocks of the last two axes, down to out x out."""
    f = x.shape[-1] // out
    return x.reshape(*x.shape[:-2], out, f, out, f).mean(axis=(-3, -1))


def near_sigs(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(signatures uint8 [n, NEAR_SIG_BYTES], valid bool [n]) from a near_sig column (pyarrow
    binary column or a list of bytes/None). Read straight from the Arrow buffers chunk by chunk:
    no Python object per row and no combined copy of the column (at 10M rows each copy is
    15 GB); any other length counts as missing."""
    if not isinstance(col, (pa.Array, pa.ChunkedArray)):
        col = pa.array(list(col), pa.binary())
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    n = len(col)
    out = np.zeros((n, NEAR_SIG_BYTES), np.uint8)
    valid = np.zeros(n, bool)
    start = 0
    for chunk in chunks:
        m = len(chunk)
        if m and not pa.types.is_null(chunk.type):
            _fill_sigs(chunk, out[start:start + m], valid[start:start + m])
        start += m
    return out, valid


def _fill_sigs(arr: pa.Array, out: np.ndarray, valid: np.ndarray) -> None:
    if not pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.large_binary())  # int64 offsets; copies only this chunk
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    present = ~np.asarray(arr.is_null())
    rows = np.flatnonzero(present & (np.diff(offsets) == NEAR_SIG_BYTES))
    for s in range(0, len(rows), _ROW_CHUNK):
        r = rows[s:s + _ROW_CHUNK]
        out[r] = data[offsets[r, None] + np.arange(NEAR_SIG_BYTES)]
    valid[rows] = True


def _thumbs(sigs: np.ndarray) -> np.ndarray:
    return sigs[:, :NEAR_GRID * NEAR_GRID].reshape(-1, NEAR_GRID, NEAR_GRID).astype(np.float32)


def near_summary(sigs: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 [n, 64]: 8x8 block means of the luma thumbnails (computed in chunks: a float copy
    of every thumbnail would be 4x the signatures)."""
    rows = np.arange(len(sigs)) if rows is None else np.asarray(rows, np.int64)
    vec = np.empty((len(rows), _SUMMARY * _SUMMARY), np.float32)
    for s in range(0, len(rows), _ROW_CHUNK):
        r = rows[s:s + _ROW_CHUNK]
        vec[s:s + len(r)] = _block_mean(_thumbs(sigs[r]), _SUMMARY).reshape(len(r), -1)
    return vec


def near_candidates(sigs: np.ndarray, k: int = NEAR_NEIGHBORS, max_rms: float | None = NEAR_MAX_RMS,
                    rows: np.ndarray | None = None, exact: bool = False,
                    vec: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j, positions in `rows`, default all) where one is among the other's k
    nearest neighbours on the 8x8 block means of the thumbnail (a crop of a few percent moves
    these little), keeping pairs whose block means differ by at most max_rms (root mean square,
    0-255; None keeps all). exact: flat search whatever the size (a bucket of the distributed
    path must give the same pairs wherever it runs; HNSW builds are not reproducible).
    vec: the summaries when already computed."""
    import faiss

    vec = near_summary(sigs, rows) if vec is None else vec
    n = len(vec)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    d = vec.shape[1]
    index = faiss.IndexFlatL2(d) if exact or n <= _EXACT_INDEX_MAX else faiss.IndexHNSWFlat(d, 32)
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(64, 4 * k)
    index.add(vec)
    kk = min(k + 1, n)
    limit = np.inf if max_rms is None else max_rms ** 2 * d
    pairs = []
    # Queries in chunks, filtered at once: the raw n x (k+1) neighbour lists are the largest
    # intermediate at scale.
    for s in range(0, n, 1 << 18):
        q = vec[s:s + (1 << 18)]
        dist, nbr = index.search(q, kk)
        src = np.repeat(np.arange(s, s + len(q), dtype=np.int64), kk)
        dst = nbr.ravel().astype(np.int64)
        keep = (dst >= 0) & (dst != src) & (dist.ravel() <= limit)
        a, b = np.minimum(src[keep], dst[keep]), np.maximum(src[keep], dst[keep])
        pairs.append(a * n + b)
    pair = np.unique(np.concatenate(pairs))
    return pair // n, pair % n


@lru_cache(maxsize=8)
def _interp_matrices(n: int, max_crop: float) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling matrices, one per (left, right) crop on a grid of _CROP_STEP: row j of
    W maps target pixel j to the source pixels under it."""
    steps = int(np.floor(max_crop / _CROP_STEP + 1e-9))
    grid = np.linspace(0, steps * _CROP_STEP, steps + 1)
    if grid[-1] < max_crop - 1e-9:
        grid = np.append(grid, max_crop)
    combos = np.array([(lo, hi) for lo in grid for hi in grid])
    mats = np.zeros((len(combos), n, n), np.float32)
    j = np.arange(n)
    for c, (lo, hi) in enumerate(combos):
        x = np.clip((lo + (1 - lo - hi) * (j + 0.5) / n) * n - 0.5, 0, n - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        f = (x - i0).astype(np.float32)
        np.add.at(mats[c], (j, i0), 1 - f)
        np.add.at(mats[c], (j, i1), f)
    mats.setflags(write=False)
    return combos, mats


def _chroma(sigs: np.ndarray) -> np.ndarray:
    c = NEAR_CHROMA_GRID
    return sigs[:, _TEX_END:_TEX_END + 2 * c * c].reshape(-1, 2, c, c).astype(np.float32)


def _best_crop(src_prof: np.ndarray, dst_prof: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Index of the crop whose resampled src profile is closest (mean abs) to dst's, per pair."""
    c, n, _ = mats.shape
    warped = (src_prof @ mats.reshape(c * n, n).T).reshape(len(src_prof), c, n)
    return np.abs(warped - dst_prof[:, None]).mean(-1).argmin(1)


def _aligned_diff(src: np.ndarray, dst: np.ndarray, mats: np.ndarray,
                  chroma: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Largest per-pixel difference between dst and src cropped and resampled onto dst's grid,
    the crop chosen per axis from the column / row mean profiles of the luma thumbnails.
    With chroma=(src_chroma, dst_chroma, chroma_mats), also the largest chroma difference
    under the same crop."""
    bx = _best_crop(src.mean(axis=1), dst.mean(axis=1), mats)
    by = _best_crop(src.mean(axis=2), dst.mean(axis=2), mats)
    warped = mats[by] @ src @ mats[bx].transpose(0, 2, 1)
    luma = np.abs(warped - dst).reshape(len(src), -1).max(axis=1)
    if chroma is None:
        return luma
    cs, cd, cm = chroma
    cw = cm[by][:, None] @ cs @ cm[bx].transpose(0, 2, 1)[:, None]
    return luma, np.abs(cw - cd).reshape(len(src), -1).max(axis=1)


def near_verify(sigs: np.ndarray, log_aspect: np.ndarray, a: np.ndarray, b: np.ndarray, *,
                max_diff: float = NEAR_MAX_DIFF, max_crop: float = NEAR_MAX_CROP,
                max_texture: float = NEAR_MAX_TEXTURE, max_chroma: float = NEAR_MAX_CHROMA,
                chunk: int = 8192) -> np.ndarray:
    """bool mask over candidate pairs (a[i], b[i]) (row indices into sigs / log_aspect): same
    picture up to re-encoding, resizing and a crop of at most max_crop per side (either image may
    be the cropped one). Cheap tests first (aspect, texture), alignment only on the survivors."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    log_aspect = np.asarray(log_aspect, np.float64)
    ok = np.abs(log_aspect[a] - log_aspect[b]) <= -np.log1p(-2 * max_crop) + 1e-6
    g2 = NEAR_GRID * NEAR_GRID
    for s in range(0, len(a), 1 << 20):
        sl = slice(s, s + (1 << 20))
        ta, tb = sigs[a[sl], g2:_TEX_END].astype(np.int16), sigs[b[sl], g2:_TEX_END].astype(np.int16)
        ok[sl] &= np.abs(ta - tb).max(axis=1) <= max_texture
    idx = np.flatnonzero(ok)
    if not len(idx):
        return ok
    _, mats = _interp_matrices(NEAR_GRID, max_crop)
    _, cmats = _interp_matrices(NEAR_CHROMA_GRID, max_crop)
    for s in range(0, len(idx), chunk):
        part = idx[s:s + chunk]
        sa, sb = sigs[a[part]], sigs[b[part]]
        ta, tb = _thumbs(sa), _thumbs(sb)
        ca, cb = _chroma(sa), _chroma(sb)
        # Either image may be the cropped one: a pair passes if one direction fits.
        l1, c1 = _aligned_diff(ta, tb, mats, (ca, cb, cmats))
        good = (l1 <= max_diff) & (c1 <= max_chroma)
        rest = np.flatnonzero(~good)
        if len(rest):
            l2, c2 = _aligned_diff(tb[rest], ta[rest], mats, (cb[rest], ca[rest], cmats))
            good[rest] = (l2 <= max_diff) & (c2 <= max_chroma)
        ok[part] = good
    return ok


def near_dup_of(uids: Any, sigs: np.ndarray, valid: np.ndarray, log_aspect: np.ndarray, *,
                area: Any = None, rank: Any = None, neighbors: int = NEAR_NEIGHBORS, max_diff: float = NEAR_MAX_DIFF,
                max_crop: float = NEAR_MAX_CROP, max_texture: float = NEAR_MAX_TEXTURE,
                max_chroma: float = NEAR_MAX_CHROMA, max_rms: float | None = NEAR_MAX_RMS) -> np.ndarray:
    """Representative uid per row for near-duplicate images (rows without a valid signature keep
    their own uid). Representative: lowest `rank` (core.best_first position) when given, else the
    largest area, then the smallest uid."""
    uids = np.asarray(uids, np.int64)
    n = len(uids)
    _check_len("near_sig", sigs, n)
    area_arr = np.zeros(n) if area is None else np.nan_to_num(np.asarray(area, np.float64))
    rows = np.flatnonzero(np.asarray(valid, bool))
    out = uids.copy()
    if len(rows) < 2:
        return out
    # Candidates come back as positions in `rows`; verification reads sigs in place (no copy of
    # the signature matrix for the subset).
    a, b = near_candidates(sigs, neighbors, max_rms, rows=rows)
    ok = near_verify(sigs, log_aspect, rows[a], rows[b], max_diff=max_diff, max_crop=max_crop,
                     max_texture=max_texture, max_chroma=max_chroma)
    order = np.argsort(np.asarray(rank, np.int64)[rows], kind="stable") if rank is not None \
        else np.lexsort((uids[rows], -area_arr[rows]))
    centre = star_groups(len(rows), a[ok], b[ok], order)
    out[rows] = uids[rows][centre]
    return out


def near_bucket_pairs(uids: np.ndarray, sigs: np.ndarray, log_aspect: np.ndarray, *,
                      neighbors: int = NEAR_NEIGHBORS, max_diff: float = NEAR_MAX_DIFF,
                      max_crop: float = NEAR_MAX_CROP, max_texture: float = NEAR_MAX_TEXTURE,
                      max_chroma: float = NEAR_MAX_CHROMA, max_rms: float | None = NEAR_MAX_RMS
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate uid pairs inside one bucket (a cluster of the 8x8 summaries): exact
    k-NN candidates, then the crop-aligned check. Rows are put in uid order first, so the pairs
    depend on the bucket's rows only, not on how they arrived."""
    uids = np.asarray(uids, np.int64)
    if len(uids) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    o = np.argsort(uids, kind="stable")
    uids, sigs, log_aspect = uids[o], sigs[o], np.asarray(log_aspect, np.float64)[o]
    a, b = near_candidates(sigs, neighbors, max_rms, exact=True)
    ok = near_verify(sigs, log_aspect, a, b, max_diff=max_diff, max_crop=max_crop,
                     max_texture=max_texture, max_chroma=max_chroma)
    return uids[a[ok]], uids[b[ok]]

"""Exact keep_top_fraction cutoffs per language without holding every score: a radix selection.

Rows are ranked by score (descending), then uid (ascending); that order is a 128-bit key per
row (an order-preserving image of the float64 score, then the uid). The cutoff of a language is
the key of its k-th row, k = ceil(f * n). Pass 1 counts the rows of each language and a
histogram of the key's top 16 bits; the bin holding the k-th row fixes those bits. Each later
pass either histograms the next 16 bits among rows with that prefix or, once at most `limit`
rows share the prefix, collects just those rows and sorts them. Memory: 65,536 counters per
language plus at most `limit` rows; passes: 2 in practice, 9 at most (only when more than
`limit` rows tie on a long prefix). Exact: no sketch, no bound to state.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DIGITS = 8  # 128 bits in 16-bit digits
_BINS = 1 << 16
_TOP = np.uint64(1 << 63)


def _keys(scores: np.ndarray, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bits = np.ascontiguousarray(scores, np.float64).view(np.uint64)
    okey = np.where(bits & _TOP, ~bits, bits | _TOP)  # ascending with the score
    return ~okey, np.asarray(uids, np.int64).astype(np.uint64)  # smaller key = better row


def _score_of(hi: np.uint64) -> float:
    okey = ~np.uint64(hi)
    bits = okey & ~_TOP if okey & _TOP else ~okey
    return float(np.array([bits], np.uint64).view(np.float64)[0])


def _digit(hi: np.ndarray, lo: np.ndarray, i: int) -> np.ndarray:
    word = hi if i < 4 else lo
    return ((word >> np.uint64(48 - 16 * (i % 4))) & np.uint64(0xFFFF)).astype(np.int64)


def _lang_codes(langs, names: dict[str, int]) -> np.ndarray:
    """Global small-int code per row ("*" for no language), growing `names` as it meets them."""
    arr = langs if isinstance(langs, (pa.Array, pa.ChunkedArray)) else pa.array(list(langs), pa.string())
    enc = pc.fill_null(arr.cast(pa.string()), "*")
    enc = (enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc).dictionary_encode()
    local = np.array([names.setdefault(v, len(names)) for v in enc.dictionary.to_pylist()], np.int64)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    return local[idx] if len(local) else np.zeros(len(idx), np.int64)


class _Lang:
    def __init__(self):
        self.n = 0
        self.prefix: list[int] = []
        self.k = 0
        self.hist = np.zeros(_BINS, np.int64)
        self.mode = "hist"
        self.got: list[tuple[np.ndarray, np.ndarray]] = []
        self.result: tuple[float, int] | None = None


def top_fraction_cutoffs(batches: Callable[[], Iterator[tuple[np.ndarray, object, np.ndarray]]],
                         fraction: Callable[[str], float | None], limit: int = 1 << 20
                         ) -> dict[str, tuple[float, int]]:
    """Per language, the (score, uid) of the last row inside the top fraction (ceil(f * n) rows
    kept, ties broken by the smaller uid). `batches()` starts a new pass over the rows:
    (scores float, NaN = unscored; languages, None = "*"; uids). `fraction(lang)`: None skips."""
    names: dict[str, int] = {}
    state: dict[int, _Lang] = {}
    first = True
    while first or any(s.result is None for s in state.values()):
        for scores, langs, uids in batches():
            scores = np.asarray(scores, np.float64)
            code = _lang_codes(langs, names)
            ok = ~np.isnan(scores)
            if not ok.any():
                continue
            hi, lo = _keys(scores[ok], np.asarray(uids)[ok])
            code = code[ok]
            for c in np.unique(code):
                if not first and int(c) not in state:
                    continue  # a language without a fraction
                st = state.setdefault(int(c), _Lang())
                if st.result is not None:
                    continue
                m = code == c
                if first:
                    st.n += int(m.sum())
                for i, d in enumerate(st.prefix):
                    m &= _digit(hi, lo, i) == d
                if st.mode == "hist":
                    st.hist += np.bincount(_digit(hi[m], lo[m], len(st.prefix)), minlength=_BINS)
                else:
                    st.got.append((hi[m], lo[m]))
        if first:
            wanted = {c: fraction(name) for name, c in names.items()}
            for c in list(state):
                if wanted.get(c) is None:
                    del state[c]
                else:
                    state[c].k = max(1, int(np.ceil(wanted[c] * state[c].n)))
            first = False
        for st in state.values():
            if st.result is not None:
                continue
            if st.mode == "collect":
                hi = np.concatenate([h for h, _ in st.got])
                lo = np.concatenate([x for _, x in st.got])
                i = np.lexsort((lo, hi))[st.k - 1]
                st.result = (_score_of(hi[i]), int(lo[i]))
                st.got = []
                continue
            cum = np.cumsum(st.hist)
            b = int(np.searchsorted(cum, st.k))
            st.k -= int(cum[b - 1]) if b else 0
            st.prefix.append(b)
            if len(st.prefix) == _DIGITS:
                hi = sum(np.uint64(d) << np.uint64(48 - 16 * i) for i, d in enumerate(st.prefix[:4]))
                lo = sum(np.uint64(d) << np.uint64(48 - 16 * i) for i, d in enumerate(st.prefix[4:]))
                st.result = (_score_of(np.uint64(hi)), int(lo))
            elif st.hist[b] <= limit:
                st.mode = "collect"
            st.hist[:] = 0
    lang_of = {c: name for name, c in names.items()}
    return {lang_of[c]: st.result for c, st in sorted(state.items(), key=lambda kv: lang_of[kv[0]])}


def in_memory(scores: np.ndarray, langs: Iterable, uids: np.ndarray) -> Callable:
    """batches() for rows already in memory (one batch)."""
    return lambda: iter([(scores, pa.array([None if v is None else str(v) for v in langs], pa.string())
                          if not isinstance(langs, (pa.Array, pa.ChunkedArray)) else langs, uids)])

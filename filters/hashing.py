"""Hash helpers shared by dedup: pHash hex <-> uint64, popcount/Hamming, caption keys."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

_PUNCT_SPACE_RE = re.compile(r"[\W_]+")


def phash_to_uint64(hexes: Sequence[str | None] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64, valid bool): 16-hex-digit pHash strings as integers; None/invalid -> 0, False."""
    n = len(hexes)
    out = np.zeros(n, dtype=np.uint64)
    valid = np.zeros(n, dtype=bool)
    for i, h in enumerate(hexes):
        if h is None or not isinstance(h, str) or len(h) != 16:
            continue
        try:
            out[i] = int(h, 16)
            valid[i] = True
        except ValueError:
            pass
    return out, valid


def uint64_to_phash(x: np.ndarray) -> list[str]:
    return [f"{int(v):016x}" for v in np.asarray(x, dtype=np.uint64)]


def popcount64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    # SWAR popcount for older numpy.
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    return popcount64(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def caption_key(text: str | None) -> str | None:
    """Exact-dedup key of a caption: NFKC, casefolded, punctuation and whitespace removed.
    Empty captions have no key (they are not duplicates of each other)."""
    if not text:
        return None
    key = _PUNCT_SPACE_RE.sub("", unicodedata.normalize("NFKC", text).casefold())
    return key or None


def caption_keys(texts: Iterable[str | None]) -> list[str | None]:
    return [caption_key(t) for t in texts]

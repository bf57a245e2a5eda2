"""Dedup as pure functions, one module per method around one grouping core:

  core.py      conventions, the representative order, components (exact) and stars (similarity)
  exact.py     exact keys: URL, sha256, caption key, (caption, image) pair
  near.py      near-duplicate images: near_sig thumbnail signature, pHash fallback
  semantic.py  semantic duplicates: image-embedding cosine (SemDeDup-style clusters)
  buckets.py   which k-means buckets a row joins (exact, or two-level above 20k centroids)

The stage (stages/dedup.py) reads the columns and runs them in one process or on Ray.
"""
from filters.dedup.core import factorize, pair_codes, star_groups  # noqa: F401
from filters.dedup.exact import KEY_ORDER, dup_of, duplicated_by, exact_dup_of, phash_dup_of  # noqa: F401
from filters.dedup.near import (DEFAULT_MAX_DISTANCE, NEAR_MAX_CHROMA, NEAR_MAX_CROP,  # noqa: F401
                                NEAR_MAX_DIFF, NEAR_MAX_RMS, NEAR_MAX_TEXTURE, NEAR_NEIGHBORS,
                                NEAR_SIG_BYTES, NEAR_CHROMA_GRID, _aligned_diff, _chroma,
                                _interp_matrices, _thumbs, near_candidates, near_dup_of, near_sigs,
                                near_summary, near_verify, phash_edges)

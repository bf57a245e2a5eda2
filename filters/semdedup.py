"""Kept for existing imports: semantic dedup lives in filters/dedup/semantic.py."""
from filters.dedup.semantic import DEFAULT_THRESHOLD, FLAT_MAX_ROWS, semantic_dup_of  # noqa: F401

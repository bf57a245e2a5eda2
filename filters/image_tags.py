"""Image-tag thresholds: NSFW, watermark and aesthetic scores (from the image_tags stage) to
rejection reasons. Pure: no torch, so select and the report use it on any machine."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class TagRule:
    key: str        # select config key holding the threshold
    column: str     # score column written by the image_tags stage
    reason: str     # rejection reason
    upper: bool     # True: reject above the threshold; False: reject below it


TAGS = ("nsfw", "watermark", "aesthetic")
TAG_RULES = (
    TagRule("max_nsfw", "nsfw_score", "nsfw", True),
    TagRule("max_watermark", "watermark_score", "watermark", True),
    TagRule("min_aesthetic", "aesthetic_score", "low_aesthetic", False),
)
# The image_tags stage's columns and types (an export schema can list them as fixed columns).
TAG_COLUMNS: dict[str, pa.DataType] = {
    **{f"{t}_score": pa.float32() for t in TAGS}, **{f"{t}_head": pa.string() for t in TAGS},
    "tag_error": pa.string(),
}
# A threshold is set but the row has no score (no embedding, or an embedding from another model
# than the head's): it cannot be shown to pass, so it is not kept silently.
UNSCORED = "no_image_tags"


def tag_reason(rule: TagRule, threshold: float, score: float | None) -> str | None:
    if score is None or score != score:  # None or NaN
        return UNSCORED
    failed = score > threshold if rule.upper else score < threshold
    return rule.reason if failed else None


def tag_reasons(rule: TagRule, threshold: float, scores: Sequence[float | None]) -> list[str | None]:
    # Scores are stored as float32: compare with the threshold at that precision, so a score
    # equal to the threshold as written in the recipe passes.
    th = float(np.float32(threshold))
    return [tag_reason(rule, th, s) for s in scores]


def active_rules(thresholds: dict[str, float | None]) -> list[tuple[TagRule, float]]:
    """The rules whose threshold is set (None: off)."""
    return [(r, thresholds[r.key]) for r in TAG_RULES if thresholds.get(r.key) is not None]


def missing_columns(thresholds: dict[str, float | None], available: Sequence[str]) -> list[str]:
    """Error lines for thresholds whose score column no finished stage produced."""
    have = set(available)
    return [f"select.{r.key} is set but no stage produced {r.column}: add image_tags to the recipe's "
            f"stages (after score) with a {r.column.removesuffix('_score')} head"
            for r, _ in active_rules(thresholds) if r.column not in have]

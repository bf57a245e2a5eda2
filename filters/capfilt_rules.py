"""CapFilt's keep rules, applied by `select` to the candidates the capfilt stage scored.

The capfilt stage only writes captions and scores (GPU work); which captions a sample keeps is a
decision, so it lives here and runs in `select`: changing a threshold re-runs select and export,
never the captioner. Pure: no torch, so select runs on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa

# `scorer` names the filter model that gave `score` (export's json carries it beside clip_model).
CAPTION_STRUCT = pa.struct([("text", pa.string()), ("origin", pa.string()), ("score", pa.float32()),
                            ("scorer", pa.string())])
CAPTION_LIST = pa.list_(CAPTION_STRUCT)


@dataclass
class Candidate:
    text: str
    origin: str             # "web" | "synthetic"
    score: float | None     # None: not scored (e.g. off-language synthetic caption)
    scorer: str | None = None  # the filter model's name

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "origin": self.origin, "score": self.score, "scorer": self.scorer}


def decide(candidates: Sequence[Candidate], web_threshold: float, synth_threshold: float,
           max_synthetic: int, primary: str = "web",
           synth_margin: float | None = None) -> tuple[list[Candidate], bool]:
    """Kept captions (primary first) and whether the sample passes capfilt."""
    web_scores = [c.score for c in candidates if c.origin == "web" and c.score is not None]
    if synth_margin is not None and web_scores:
        synth_threshold = max(synth_threshold, max(web_scores) + synth_margin)
    web = [c for c in candidates if c.origin == "web" and c.score is not None
           and c.score >= web_threshold]
    synth = [c for c in candidates if c.origin == "synthetic" and c.score is not None
             and c.score >= synth_threshold]
    # Stable sort: equal scores keep generation order, so results do not depend on hashing.
    synth = sorted(synth, key=lambda c: -c.score)[:max_synthetic]  # type: ignore[operator]
    kept = web[:1] + synth
    if primary == "best" and kept:
        kept = sorted(kept, key=lambda c: -c.score)  # type: ignore[operator]
    return kept, bool(kept)


@dataclass
class KeepRules:
    """The recipe's keep rules (capfilt section), with per-filter threshold overrides keyed by the
    filter route a row took (capfilt's `capfilt_filter` column)."""

    web_threshold: float = 0.5
    synth_threshold: float = 0.5
    max_synthetic: int = 1
    primary: str = "web"
    synth_margin: float | None = None
    per_filter: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any) -> "KeepRules":
        return cls(cfg.web_threshold, cfg.synth_threshold, cfg.max_synthetic, cfg.primary, cfg.synth_margin,
                   {k: (f.web_threshold, f.synth_threshold) for k, f in cfg.filters().items()})

    def thresholds(self, filter_key: str | None) -> tuple[float, float]:
        wt, st = self.per_filter.get(filter_key or "", (None, None))
        return (self.web_threshold if wt is None else wt, self.synth_threshold if st is None else st)

    def apply(self, candidates: Sequence[dict] | None, filter_key: str | None
              ) -> tuple[list[dict] | None, bool | None]:
        """(kept captions, pass) for one row; (None, None) for a row capfilt did not evaluate."""
        if candidates is None:
            return None, None
        wt, st = self.thresholds(filter_key)
        cands = [Candidate(c["text"], c["origin"], c["score"], c.get("scorer")) for c in candidates]
        kept, ok = decide(cands, wt, st, self.max_synthetic, self.primary, self.synth_margin)
        return [k.as_dict() for k in kept], ok

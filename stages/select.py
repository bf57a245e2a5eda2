"""select: the one place that decides. Every row leaves as kept, rejected or failed, with the
first failing rule as its reason. Rules only read stat columns, so thresholds can change and
select re-run without recomputing anything upstream.

`failed` means no usable sample exists (download or decode failure); `rejected` means a rule
said no to a usable one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from filters.image_tags import active_rules, missing_columns, tag_reasons
from filters.text import TextThresholds, caption_reasons
from pipeline.config import SelectConfig
from pipeline.stage import Resources, Stage

DECODE_REASONS = {"empty": "empty_body", "truncated": "truncated", "not_image": "not_image",
                  "html": "html", "bomb": "decompression_bomb", "corrupt": "corrupt_image"}


@dataclass
class Rule:
    reason: str | None  # None: the rule names its own reasons per row
    decision: str  # "failed" or "rejected"
    columns: tuple[str, ...]
    # batch -> per-row reason (str) or None when the row passes
    check: Callable[[pa.Table], list[str | None]]


def _col(batch: pa.Table, name: str, fill) -> np.ndarray:
    return np.array([fill if v is None else v for v in batch.column(name).to_pylist()])


def _mask_rule(reason: str, decision: str, columns: tuple[str, ...],
               fails: Callable[[pa.Table], np.ndarray]) -> Rule:
    return Rule(reason, decision, columns,
                lambda b: [reason if f else None for f in fails(b)])


def build_rules(cfg: SelectConfig, reject_sensitive: bool = False) -> list[Rule]:
    rules: list[Rule] = [
        Rule(None, "failed", ("download_ok", "download_reason"),
             lambda b: [None if ok else (r or "download_error") for ok, r in
                        zip(b.column("download_ok").to_pylist(), b.column("download_reason").to_pylist())]),
        Rule(None, "failed", ("decode_ok", "decode_error"),
             lambda b: [None if ok else DECODE_REASONS.get(e or "", e or "decode_error") for ok, e in
                        zip(b.column("decode_ok").to_pylist(), b.column("decode_error").to_pylist())]),
    ]
    size = ("width", "height", "short_side")
    rules.append(_mask_rule("small_image", "rejected", size, lambda b: (
        (_col(b, "short_side", 0) < cfg.min_short_side) | (_col(b, "width", 0) < cfg.min_width)
        | (_col(b, "height", 0) < cfg.min_height))))
    rules.append(_mask_rule("aspect_ratio", "rejected", ("aspect_ratio",),
                            lambda b: _col(b, "aspect_ratio", np.inf) > cfg.max_aspect_ratio))
    text_cols = ("text_chars", "text_uninformative", "text_is_filename", "text_hashtag_only",
                 "lang", "text_words", "text_repetition", "sensitive_hits")
    th = TextThresholds(
        languages=tuple(cfg.languages), min_en_words=cfg.min_en_words, min_en_chars=cfg.min_en_chars,
        min_zh_words=cfg.min_zh_words, max_zh_words=cfg.max_zh_words, max_en_words=cfg.max_en_words,
        max_repetition=cfg.max_repetition, reject_filenames=cfg.reject_filenames,
        reject_hashtag_only=cfg.reject_hashtag_only, reject_uninformative=cfg.reject_uninformative,
        reject_sensitive=reject_sensitive)
    rules.append(Rule(None, "rejected", text_cols, lambda b: caption_reasons(
        {("text_lang" if c == "lang" else c): b.column(c).to_pylist() for c in text_cols}, th)))
    if cfg.reject_duplicates:
        rules.append(Rule(None, "rejected", ("dup_of", "dup_reason"), lambda b: [
            r or "duplicate" if d is not None and d != u else None for u, d, r in zip(
                b.column("uid").to_pylist(), b.column("dup_of").to_pylist(), b.column("dup_reason").to_pylist())]))
    # CapFilt: null means "not evaluated" (e.g. language skipped), only False rejects.
    rules.append(Rule("capfilt", "rejected", ("capfilt_pass",), lambda b: [
        "capfilt" if p is False else None for p in b.column("capfilt_pass").to_pylist()]))
    if cfg.max_bytes:
        rules.append(_mask_rule("too_many_bytes", "rejected", ("byte_size",),
                                lambda b: _col(b, "byte_size", 0) > cfg.max_bytes))
    # Image tags (image_tags stage); prepare() makes a missing score column an error.
    # (own loop names: the text rule's lambda above reads `th` from this scope when it runs)
    for tag_rule, limit in active_rules(cfg.model_dump()):
        rules.append(Rule(None, "rejected", (tag_rule.column,), lambda b, r=tag_rule, x=limit: tag_reasons(
            r, x, b.column(r.column).to_pylist())))
    return rules


def _backend_thresholds(recipe) -> dict[str, float]:
    """Per-language thresholds set on the score stage's backends (`threshold:` in a spec)."""
    score = getattr(recipe, "score", None) if recipe is not None else None
    if score is None:
        return {}
    return {k: b.threshold for k, b in score.backends.items() if getattr(b, "threshold", None) is not None}


def min_score_for(cfg: SelectConfig, backend_th: dict[str, float], lang: str | None) -> float | None:
    v = cfg.per_lang("min_clip_score", lang)
    if v is not None:
        return v
    return backend_th.get(lang or "*", backend_th.get("*"))


def top_fraction_cutoffs(scores: np.ndarray, langs: list, uids: np.ndarray, cfg: SelectConfig
                         ) -> dict[str, tuple[float, int]]:
    """Per language, the (score, uid) of the last row inside the top fraction. Ranking by score
    then uid makes the kept count exact (ceil(f * n)) even with ties."""
    from filters.top_fraction import in_memory, top_fraction_cutoffs as exact_cutoffs

    return exact_cutoffs(in_memory(scores, langs, uids), lambda lang: cfg.per_lang("keep_top_fraction", lang))


def streamed_cutoffs(store, cfg: SelectConfig) -> dict[str, tuple[float, int]]:
    """top_fraction_cutoffs over the store shard by shard (filters/top_fraction.py: exact, a
    histogram per language and a few passes, never every score at once)."""
    import pyarrow.compute as pc

    from filters.top_fraction import top_fraction_cutoffs as exact_cutoffs

    def batches():
        for shard in store.shards():
            t = store.read(shard, ["clip_score", "lang"], optional=["lang"])
            scores = pc.fill_null(t.column("clip_score").cast(pa.float64()), float("nan")).to_numpy()
            langs = t.column("lang") if "lang" in t.column_names else pa.nulls(t.num_rows, pa.string())
            yield scores, langs, t.column("uid").to_numpy()

    return exact_cutoffs(batches, lambda lang: cfg.per_lang("keep_top_fraction", lang))


def clip_rules(cfg: SelectConfig, backend_th: dict[str, float], cutoffs: dict[str, tuple[float, int]]
               ) -> list[Rule]:
    def langs(b: pa.Table) -> list:
        return b.column("lang").to_pylist() if "lang" in b.column_names else [None] * b.num_rows

    def unscored(b: pa.Table) -> list[str | None]:
        err = b.column("clip_error").to_pylist()
        return [None if s is not None else (e if e in ("empty_caption",) or (e or "").startswith("no_backend")
                                            else "no_clip_score")
                for s, e in zip(b.column("clip_score").to_pylist(), err)]

    def too_low(b: pa.Table) -> list[str | None]:
        out = []
        for s, lang in zip(b.column("clip_score").to_pylist(), langs(b)):
            th = min_score_for(cfg, backend_th, lang)
            out.append("clip_score" if s is not None and th is not None and s < th else None)
        return out

    def outside_top(b: pa.Table) -> list[str | None]:
        out = []
        for s, lang, uid in zip(b.column("clip_score").to_pylist(), langs(b), b.column("uid").to_pylist()):
            cut = cutoffs.get(lang or "*")
            # float32 round-trip: the cutoff was computed from the same stored float32 scores
            keep = cut is None or s is None or (s, -uid) >= (cut[0], -cut[1])
            out.append(None if keep else "clip_top_fraction")
        return out

    rules = [Rule(None, "rejected", ("clip_score", "clip_error"), unscored),
             Rule("clip_score", "rejected", ("clip_score",), too_low)]
    if cfg.keep_top_fraction is not None:
        rules.append(Rule("clip_top_fraction", "rejected", ("clip_score",), outside_top))
    if cfg.max_clip_score is not None:
        rules.append(_mask_rule("clip_score_too_high", "rejected", ("clip_score",), lambda b: np.array(
            [s is not None and s > cfg.max_clip_score for s in b.column("clip_score").to_pylist()])))
    return rules


class SelectStage(Stage):
    name = "select"
    provides = ("decision", "reason")
    optional = ("lang",)

    def __init__(self, config: SelectConfig, run):
        super().__init__(config, run)
        self.backend_th = _backend_thresholds(getattr(run, "recipe", None))
        annotate = getattr(getattr(run, "recipe", None), "annotate", None)
        self.reject_sensitive = getattr(annotate, "sensitive_action", "mask") == "reject"
        self.rules = build_rules(config, self.reject_sensitive) + clip_rules(config, self.backend_th, {})

    def prepare(self, store) -> dict:
        missing = missing_columns(self.config.model_dump(), list(store.column_sources("select")))
        if missing:
            from pipeline.config import RecipeError
            raise RecipeError("; ".join(missing))
        if self.config.keep_top_fraction is None or "clip_score" not in store.column_sources("select"):
            return {}
        return {"cutoffs": streamed_cutoffs(store, self.config)}

    def setup(self, state) -> None:
        if state:
            self.rules = build_rules(self.config, self.reject_sensitive) + \
                clip_rules(self.config, self.backend_th, state["cutoffs"])

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=8192)

    def needed_columns(self, available: Sequence[str]) -> Sequence[str]:
        self._active = [r for r in self.rules if all(c in available for c in r.columns)]
        return sorted({c for r in self._active for c in r.columns})

    def process(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        decision: list[str] = ["kept"] * n
        reason: list[str | None] = [None] * n
        for rule in self._active:
            for i, r in enumerate(rule.check(batch)):
                if r is not None and reason[i] is None:
                    decision[i], reason[i] = rule.decision, r
        return pa.table({"decision": pa.array(decision, pa.string()), "reason": pa.array(reason, pa.string())})

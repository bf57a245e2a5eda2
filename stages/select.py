"""select: the one place that decides. Every row leaves as kept, rejected or failed, with the
first failing rule as its reason. Rules only read stat columns, so thresholds can change and
select re-run without recomputing anything upstream.

`failed` means no usable sample exists (download or decode failure); `rejected` means a rule
said no to a usable one.

Each rule reads the columns of one stage. A rule whose stage is in the recipe but whose columns
are missing is an error (never a silently skipped filter); a rule whose stage is not in the
recipe does not apply, unless a select setting asks for it, which is a recipe error. CapFilt's
keep rules (capfilt section) are applied here too: select writes `captions` (the kept ones,
primary first) and `capfilt_pass` when the recipe runs capfilt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from filters.capfilt_rules import CAPTION_LIST, KeepRules
from filters.image_tags import active_rules, missing_columns, tag_reasons
from filters.text import TextThresholds, caption_reasons
from pipeline.config import RecipeError, SelectConfig
from pipeline.stage import Resources, Stage
from pipeline.store import RunOrderError

DECODE_REASONS = {"empty": "empty_body", "truncated": "truncated", "not_image": "not_image",
                  "html": "html", "bomb": "decompression_bomb", "corrupt": "corrupt_image"}


@dataclass
class Rule:
    reason: str | None  # None: the rule names its own reasons per row
    decision: str  # "failed" or "rejected"
    columns: tuple[str, ...]
    # batch -> per-row reason (str) or None when the row passes
    check: Callable[[pa.Table], list[str | None]]
    stage: str = "annotate"  # the stage whose columns it reads
    configured: str | None = None  # the select setting that asked for it (None: on by default)


def _col(batch: pa.Table, name: str, fill) -> np.ndarray:
    return np.array([fill if v is None else v for v in batch.column(name).to_pylist()])


def _mask_rule(reason: str, decision: str, columns: tuple[str, ...],
               fails: Callable[[pa.Table], np.ndarray], **kw) -> Rule:
    return Rule(reason, decision, columns,
                lambda b: [reason if f else None for f in fails(b)], **kw)


def capfilt_verdicts(b: pa.Table, keep: KeepRules) -> tuple[list, list]:
    """Kept captions and pass (None: not evaluated) per row, from capfilt's scored candidates."""
    rows = [keep.apply(c, k) for c, k in zip(b.column("capfilt_candidates").to_pylist(),
                                              b.column("capfilt_filter").to_pylist())]
    return [r[0] for r in rows], [r[1] for r in rows]


def build_rules(cfg: SelectConfig, reject_sensitive: bool = False, keep: KeepRules | None = None) -> list[Rule]:
    keep = keep or KeepRules()
    rules: list[Rule] = [
        Rule(None, "failed", ("download_ok", "download_reason"),
             lambda b: [None if ok else (r or "download_error") for ok, r in
                        zip(b.column("download_ok").to_pylist(), b.column("download_reason").to_pylist())],
             stage="download"),
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
                b.column("uid").to_pylist(), b.column("dup_of").to_pylist(), b.column("dup_reason").to_pylist())],
            stage="dedup"))
    # CapFilt: null means "not evaluated" (e.g. language skipped), only False rejects.
    rules.append(Rule("capfilt", "rejected", ("capfilt_candidates", "capfilt_filter"), lambda b: [
        "capfilt" if p is False else None for p in capfilt_verdicts(b, keep)[1]], stage="capfilt"))
    if cfg.max_bytes:
        rules.append(_mask_rule("too_many_bytes", "rejected", ("byte_size",),
                                lambda b: _col(b, "byte_size", 0) > cfg.max_bytes))
    # Image tags (image_tags stage); prepare() makes a missing score column an error.
    # (own loop names: the text rule's lambda above reads `th` from this scope when it runs)
    for tag_rule, limit in active_rules(cfg.model_dump()):
        rules.append(Rule(None, "rejected", (tag_rule.column,), lambda b, r=tag_rule, x=limit: tag_reasons(
            r, x, b.column(r.column).to_pylist()), stage="image_tags", configured=tag_rule.key))
    return rules


PII_COLUMNS = ("pii_phone", "pii_email", "pii_id", "pii_card", "pii_ip", "pii_url", "pii_name")


def pii_rules() -> list[Rule]:
    """annotate.pii_action: reject: a caption that carried PII (any pii_* count) is rejected."""
    return [Rule("pii_caption", "rejected", PII_COLUMNS, lambda b: [
        "pii_caption" if any(row) else None
        for row in zip(*(b.column(c).fill_null(0).to_pylist() for c in PII_COLUMNS))])]


def _backend_thresholds(recipe) -> dict[str, float]:
    """Per-language thresholds set on the score stage's backends (`threshold:` in a spec)."""
    score = getattr(recipe, "score", None) if recipe is not None else None
    if not hasattr(score, "backends") or "score" not in recipe.stages:
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

    rules = [Rule(None, "rejected", ("clip_score", "clip_error"), unscored, stage="score"),
             Rule("clip_score", "rejected", ("clip_score",), too_low, stage="score",
                  configured="min_clip_score" if cfg.min_clip_score is not None else None)]
    if cfg.keep_top_fraction is not None:
        rules.append(Rule("clip_top_fraction", "rejected", ("clip_score",), outside_top, stage="score",
                          configured="keep_top_fraction"))
    if cfg.max_clip_score is not None:
        rules.append(_mask_rule("clip_score_too_high", "rejected", ("clip_score",), lambda b: np.array(
            [s is not None and s > cfg.max_clip_score for s in b.column("clip_score").to_pylist()]),
            stage="score", configured="max_clip_score"))
    return rules


class SelectStage(Stage):
    name = "select"
    provides = ("decision", "reason")
    optional = ("lang",)

    def __init__(self, config: SelectConfig, run):
        super().__init__(config, run)
        recipe = getattr(run, "recipe", None)
        # The recipe's stages say which rules must find their columns (None: a stage used on its
        # own, outside a run, applies the rules whose columns it is given).
        self.stages: list[str] | None = list(recipe.stages) if recipe is not None else None
        self.backend_th = _backend_thresholds(recipe)
        annotate = getattr(recipe, "annotate", None)
        self.reject_sensitive = getattr(annotate, "sensitive_action", "mask") == "reject"
        self.reject_pii = getattr(annotate, "pii_action", "placeholder") == "reject"
        capfilt = getattr(recipe, "capfilt", None)
        self.keep = KeepRules.from_config(capfilt) if hasattr(capfilt, "filters") else KeepRules()
        if self.stages is not None and "capfilt" in self.stages:
            self.provides = (*type(self).provides, "captions", "capfilt_pass")
        self.rules = self._build({})
        if self.stages is not None:
            for r in self.rules:
                if r.configured and r.stage not in self.stages:
                    raise RecipeError(f"select.{r.configured} is set but the recipe has no {r.stage} stage "
                                      f"(stages: {self.stages}); add {r.stage} to stages or remove the setting")

    def _build(self, cutoffs: dict) -> list[Rule]:
        return build_rules(self.config, self.reject_sensitive, self.keep) + \
            (pii_rules() if self.reject_pii else []) + clip_rules(self.config, self.backend_th, cutoffs)

    def active_rules(self, available: Sequence[str]) -> list[Rule]:
        """The rules to apply given the columns earlier stages produced; a rule of a stage in
        the recipe whose columns are missing is an error, not a filter silently dropped."""
        have = set(available) | {"uid"}
        active, missing = [], {}
        for r in self.rules:
            lacking = [c for c in r.columns if c not in have]
            if not lacking:
                active.append(r)
            elif self.stages is not None and r.stage in self.stages:
                missing.setdefault(r.stage, []).extend(c for c in lacking if c not in missing.get(r.stage, []))
        if missing:
            what = "; ".join(f"stage {st} has not produced {cols}" for st, cols in missing.items())
            first = next(iter(missing))
            raise RunOrderError(f"select cannot apply its rules: {what}; run stage {first} first "
                                f"(`mmcurate run RECIPE --stage {first}`, or the full recipe)")
        return active

    def prepare(self, store) -> dict:
        available = list(store.column_sources("select"))
        missing = missing_columns(self.config.model_dump(), available)
        if missing:
            raise RecipeError("; ".join(missing))
        self.active_rules(available)
        if self.config.keep_top_fraction is None or "clip_score" not in available:
            return {}
        return {"cutoffs": streamed_cutoffs(store, self.config)}

    def setup(self, state) -> None:
        if state:
            self.rules = self._build(state["cutoffs"])

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=8192)

    def needed_columns(self, available: Sequence[str]) -> Sequence[str]:
        self._active = self.active_rules(available)
        if self.stages is None and any(r.stage == "capfilt" for r in self._active):
            self.provides = (*type(self).provides, "captions", "capfilt_pass")
        return sorted({c for r in self._active for c in r.columns})

    def process(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        decision: list[str] = ["kept"] * n
        reason: list[str | None] = [None] * n
        for rule in self._active:
            for i, r in enumerate(rule.check(batch)):
                if r is not None and reason[i] is None:
                    decision[i], reason[i] = rule.decision, r
        out = {"decision": pa.array(decision, pa.string()), "reason": pa.array(reason, pa.string())}
        if "captions" in self.provides:
            kept, passed = capfilt_verdicts(batch, self.keep)
            out["captions"] = pa.array(kept, CAPTION_LIST)
            out["capfilt_pass"] = pa.array(passed, pa.bool_())
        return pa.table(out)

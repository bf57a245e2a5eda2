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


def build_rules(cfg: SelectConfig) -> list[Rule]:
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
    if cfg.max_bytes:
        rules.append(_mask_rule("too_many_bytes", "rejected", ("byte_size",),
                                lambda b: _col(b, "byte_size", 0) > cfg.max_bytes))
    return rules


class SelectStage(Stage):
    name = "select"
    provides = ("decision", "reason")

    def __init__(self, config: SelectConfig, run):
        super().__init__(config, run)
        self.rules = build_rules(config)

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

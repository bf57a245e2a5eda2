"""The rows the run report loads: all of a small run, a bounded sample of a large one.

The report reads the run one file or shard at a time. Up to `max_rows` rows it keeps them all;
beyond that it keeps a uniform sample of about `max_rows` rows (chosen by a hash of the uid, so
the same run gives the same sample) for the distributions, plus the first `per_reason` rows in
uid order of every decision and reason (the thumbnails a full load would show). Counts the
funnel needs exactly (rows per decision and reason, downloaded, decoded, exported) are summed over
every row as it streams by, so nothing grows with the run but the number of reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_ROWS = 100_000
TRUE_COLS = ("download_ok", "decode_ok", "exported")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: uids in a range spread evenly


@dataclass
class Totals:
    """Exact counts over every row of the run (the loaded rows are a sample)."""
    rows: int = 0
    decisions: dict[str, dict[str, int]] = field(default_factory=dict)  # decision -> reason -> rows
    true: dict[str, int] = field(default_factory=dict)  # column -> rows where it is truthy
    sampled: int = 0  # rows loaded


def group_key(decision: str | None, reason: str | None) -> tuple[str, str]:
    """(decision, reason) as the report groups rows: kept rows are one group; a row without a
    reason is grouped under its decision."""
    d = decision or "undecided"
    return d, "kept" if d == "kept" else (reason or d)


def _groups(t: pa.Table) -> dict[tuple[str, str], pa.Array]:
    """Row masks of the chunk per (decision, reason) group."""
    dec = t.column("decision") if "decision" in t.column_names else pa.nulls(t.num_rows, pa.string())
    rea = t.column("reason") if "reason" in t.column_names else pa.nulls(t.num_rows, pa.string())
    dec, rea = pc.cast(dec, pa.string()), pc.cast(rea, pa.string())
    pairs = pa.Table.from_arrays([dec, rea], names=["d", "r"]).group_by(["d", "r"]).aggregate([])
    out: dict[tuple[str, str], pa.Array] = {}
    for d, r in zip(pairs.column("d").to_pylist(), pairs.column("r").to_pylist()):
        m = pc.is_null(dec) if d is None else pc.fill_null(pc.equal(dec, d), False)
        m = pc.and_(m, pc.is_null(rea) if r is None else pc.fill_null(pc.equal(rea, r), False))
        key = group_key(d, r)
        out[key] = pc.or_(out[key], m) if key in out else m
    return out


def _truthy(col: pa.ChunkedArray) -> int:
    if pa.types.is_boolean(col.type):
        return int(pc.sum(pc.fill_null(col, False)).as_py() or 0)
    return sum(1 for v in col.to_pylist() if v)  # odd runs: the report counts what Python calls true


def _in_hash_sample(uid: pa.ChunkedArray, rate: float) -> np.ndarray:
    u = np.asarray(pc.fill_null(uid, 0).to_numpy(zero_copy_only=False)).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = u * _GOLDEN
    return h < np.uint64(min(rate, 1.0) * float(2**64 - 1))


def load_rows(chunks: Iterable[pa.Table], n_total: int, max_rows: int = MAX_ROWS,
              per_reason: int = 6) -> tuple[pa.Table | None, Totals | None]:
    """All rows (and no Totals) when the run has at most `max_rows`; else the sample described
    in the module docstring, in uid order, with exact Totals. Chunks need a `uid` column."""
    if n_total <= max_rows:
        parts = [t for t in chunks if t.num_rows]
        return (pa.concat_tables(parts, promote_options="default") if parts else None), None
    totals = Totals()
    rate = max_rows / n_total
    sample: list[pa.Table] = []
    firsts: dict[tuple[str, str], np.ndarray] = {}  # group -> its smallest uids so far
    candidates: list[pa.Table] = []  # rows that are among their group's first, not hash-sampled
    for t in chunks:
        if not t.num_rows:
            continue
        totals.rows += t.num_rows
        for c in TRUE_COLS:
            if c in t.column_names:
                totals.true[c] = totals.true.get(c, 0) + _truthy(t.column(c))
        hashed = _in_hash_sample(t.column("uid"), rate)
        sample.append(t.filter(pa.array(hashed)))
        if "decision" not in t.column_names:
            continue
        uids = np.asarray(pc.fill_null(t.column("uid"), -1).to_numpy(zero_copy_only=False))
        keep = np.zeros(t.num_rows, dtype=bool)
        for key, mask in _groups(t).items():
            m = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
            d, r = key
            totals.decisions.setdefault(d, {})[r] = totals.decisions.get(d, {}).get(r, 0) + int(m.sum())
            firsts[key] = np.sort(np.concatenate([firsts.get(key, uids[:0]), np.sort(uids[m])[:per_reason]]))[:per_reason]
            keep |= m & np.isin(uids, firsts[key])
        keep &= ~hashed
        if keep.any():
            candidates.append(t.filter(pa.array(keep)))
            # Drop candidates that later rows pushed out of their group's first few.
            wanted = np.concatenate(list(firsts.values()))
            cand = pa.concat_tables(candidates, promote_options="default")
            candidates = [cand.filter(pa.array(np.isin(np.asarray(cand.column("uid")), wanted)))]
    parts = [x for x in sample + candidates if x.num_rows]
    if not parts:
        return None, totals
    rows = pa.concat_tables(parts, promote_options="default").sort_by("uid")
    totals.sampled = rows.num_rows
    return rows, totals

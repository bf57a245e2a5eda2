"""Nothing is lost: input rows = kept + rejected (per reason) + failed (per reason), checked."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.compute as pc

from pipeline import storage
from pipeline.store import atomic_write_json


class AccountingError(RuntimeError):
    pass


def connect(workdir) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads the run's files, local or behind an fsspec URL (DuckDB
    then reads through the same filesystem, credentials from the environment)."""
    con = duckdb.connect()
    wd = storage.wpath(workdir)
    if storage.is_remote(wd):
        con.register_filesystem(wd.fs)
    return con


def _count_uids(con: duckdb.DuckDBPyConnection, files: list[Path], src: str) -> tuple[int, int, int, int]:
    """(rows, distinct uids, smallest, largest uid) of the select shards, one shard in memory at
    a time. Ingest gives
    each shard its own uid range, so distinct counts per shard add up when those ranges do not
    overlap; a run whose shards overlap (broken) is counted over all rows at once instead."""
    total = distinct = 0
    ranges = []
    for f in files:
        uid = storage.read_table(f, columns=["uid"]).column("uid")
        total += len(uid)
        distinct += pc.count_distinct(uid).as_py()
        if len(uid):
            mm = pc.min_max(uid)
            ranges.append((mm["min"].as_py(), mm["max"].as_py()))
    ranges.sort()
    if any(b[0] <= a[1] for a, b in zip(ranges, ranges[1:])):
        distinct = con.execute(f"SELECT count(DISTINCT uid) FROM read_parquet('{src}')").fetchone()[0]
    lo = min((a for a, _ in ranges), default=0)
    hi = max((b for _, b in ranges), default=-1)
    return total, distinct, lo, hi


def summarize(workdir: str | Path, n_input: int) -> dict:
    wd = storage.wpath(workdir)
    con = connect(wd)
    src = str(wd / "select" / "*.parquet")
    total, distinct, lo, hi = _count_uids(con, list(storage.files(wd / "select", "*.parquet")), src)
    rows = con.execute(f"SELECT decision, coalesce(reason, ''), count(*) FROM read_parquet('{src}') "
                       "GROUP BY ALL ORDER BY 1, 3 DESC, 2").fetchall()
    by: dict[str, dict[str, int]] = {"kept": {}, "rejected": {}, "failed": {}}
    for decision, reason, n in rows:
        by.setdefault(decision, {})[reason or decision] = n
    counts = {d: sum(v.values()) for d, v in by.items()}
    summary = {"input": n_input, "rows": total, "distinct_uids": distinct, **counts,
               "rejected_by_reason": by["rejected"], "failed_by_reason": by["failed"]}
    manifest = wd / "export" / "manifest"
    if manifest.exists():
        # A kept row is exported, or has export_error (its image would not encode, or its export
        # shard failed: shard_error).
        m_total, m_kept, exported, export_failed = con.execute(
            f"SELECT count(*), count(*) FILTER (decision = 'kept'), count(*) FILTER (exported), "
            f"count(*) FILTER (decision = 'kept' AND NOT coalesce(exported, false) AND export_error IS NOT NULL) "
            f"FROM read_parquet('{manifest / '*.parquet'}', union_by_name = true)").fetchone()
        summary.update(manifest_rows=m_total, exported=exported, export_failed=export_failed)
        if m_total != n_input or exported + export_failed != counts["kept"] or m_kept != counts["kept"]:
            summary["balanced"] = False
        sizes = wd / "export" / "shards" / "sizes.json"
        if sizes.exists():
            summary["export_shards"] = [{"tar": f"shards/{k}", "samples": v} for k, v in
                                        json.loads(sizes.read_text(encoding="utf-8")).items()]
            if sum(v["samples"] for v in summary["export_shards"]) != exported:
                summary["balanced"] = False
    # n distinct uids all within [0, n) are exactly the input's uids.
    balanced = (total == distinct == n_input == counts["kept"] + counts["rejected"] + counts["failed"]
                and lo >= 0 and hi < n_input and summary.get("balanced", True))
    summary["balanced"] = balanced
    return summary


def format_summary(s: dict) -> str:
    def part(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
    line = (f"accounting: input {s['input']} = kept {s['kept']} + rejected {s['rejected']} + failed "
            f"{s['failed']}  [{'balanced' if s['balanced'] else 'MISMATCH'}]")
    out = [line]
    if s["rejected_by_reason"]:
        out.append(f"  rejected: {part(s['rejected_by_reason'])}")
    if s["failed_by_reason"]:
        out.append(f"  failed:   {part(s['failed_by_reason'])}")
    if "exported" in s:
        n_tars = len(s.get("export_shards", []))
        out.append(f"  exported {s['exported']} samples to WebDataset in {n_tars} tar{'' if n_tars == 1 else 's'}; "
                   f"manifest rows {s['manifest_rows']}"
                   + (f"; {s['export_failed']} kept rows not exported (export_error: an image that would not "
                      "encode, or shard_error)" if s.get("export_failed") else ""))
    return "\n".join(out)


def check_and_record(workdir: str | Path, n_input: int) -> dict:
    s = summarize(workdir, n_input)
    atomic_write_json(s, storage.wpath(workdir) / "summary.json")
    if not s["balanced"]:
        raise AccountingError("rows were lost or duplicated:\n" + format_summary(s))
    return s

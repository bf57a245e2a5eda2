"""Nothing is lost: input rows = kept + rejected (per reason) + failed (per reason), checked."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb

from pipeline.store import atomic_write_json


class AccountingError(RuntimeError):
    pass


def summarize(workdir: str | Path, n_input: int) -> dict:
    wd = Path(workdir)
    con = duckdb.connect()
    src = str(wd / "select" / "*.parquet")
    total, distinct = con.execute(f"SELECT count(*), count(DISTINCT uid) FROM read_parquet('{src}')").fetchone()
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
        # A kept row is exported, or has export_error (its image would not encode).
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
    balanced = (total == distinct == n_input == counts["kept"] + counts["rejected"] + counts["failed"]
                and summary.get("balanced", True))
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
        out.append(f"  exported {s['exported']} samples to WebDataset in {len(s.get('export_shards', []))} tars; "
                   f"manifest rows {s['manifest_rows']}"
                   + (f"; {s['export_failed']} kept rows failed to encode (export_error)" if s.get("export_failed") else ""))
    return "\n".join(out)


def check_and_record(workdir: str | Path, n_input: int) -> dict:
    s = summarize(workdir, n_input)
    atomic_write_json(s, Path(workdir) / "summary.json")
    if not s["balanced"]:
        raise AccountingError("rows were lost or duplicated:\n" + format_summary(s))
    return s

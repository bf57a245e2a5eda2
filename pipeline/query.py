"""SQL over a run directory with DuckDB: one view per stage, plus `manifest` (every row, with its
decision) and `samples` (the exported samples, one row per sample in a tar, img2dataset's columns)."""
from __future__ import annotations

from pathlib import Path

import duckdb

from pipeline import storage
from pipeline.store import STAGE_DIRS

SKIP = {"image", "jpg"}
# Folders that are not a stage's column store (the export's published files have their own views).
NOT_STAGES = {"export", "download_raw", "report"}


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    wd = storage.wpath(run_dir)
    con = duckdb.connect()
    if storage.is_remote(wd):  # DuckDB reads the URL through its fsspec filesystem
        con.register_filesystem(wd.fs)
    views = []
    if any((wd / "export" / "manifest").glob("*.parquet")):
        con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_parquet('{wd}/export/manifest/*.parquet', "
                    "union_by_name = true)")
        views.append("manifest")
    if any((wd / "export" / "shards").glob("*.parquet")):
        con.execute(f"CREATE VIEW samples AS SELECT * FROM read_parquet('{wd}/export/shards/*.parquet')")
        views.append("samples")
    view_of = {d: s for s, d in STAGE_DIRS.items()}
    for d in sorted(p for p in wd.iterdir() if p.is_dir()) if wd.exists() else []:
        if d.name in NOT_STAGES or d.name.startswith("round_") or not any(d.glob("*.parquet")):
            continue
        name = view_of.get(d.name, d.name)
        cols = [c for c in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{d}/*.parquet')").fetchall()]
        keep = [f'"{c[0]}"' for c in cols if c[0] not in SKIP and not c[0].endswith("_emb")]
        con.execute(f'CREATE VIEW "{name}" AS SELECT {", ".join(keep)} FROM read_parquet(\'{d}/*.parquet\')')
        views.append(name)
    if not views:
        raise FileNotFoundError(f"{wd} holds no run outputs (no manifest or stage parquet files); "
                                "pass the recipe's workdir with --run")
    return con


def run_query(run_dir: str | Path, sql: str, max_rows: int = 200) -> str:
    con = connect(run_dir)
    rel = con.sql(sql)
    if rel is None:
        return ""
    return rel.limit(max_rows).__str__() if max_rows else str(rel)

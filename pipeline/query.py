"""SQL over a run directory with DuckDB: one view per stage, plus `manifest`."""
from __future__ import annotations

from pathlib import Path

import duckdb

SKIP = {"image", "jpg"}


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    wd = Path(run_dir)
    con = duckdb.connect()
    views = []
    if (wd / "export" / "manifest").exists():
        con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_parquet('{wd}/export/manifest/*.parquet')")
        views.append("manifest")
    for d in sorted(p for p in wd.iterdir() if p.is_dir()) if wd.exists() else []:
        if d.name in ("export", "download_raw") or not any(d.glob("*.parquet")):
            continue
        cols = [c for c in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{d}/*.parquet')").fetchall()]
        keep = [f'"{c[0]}"' for c in cols if c[0] not in SKIP and not c[0].endswith("_emb")]
        con.execute(f'CREATE VIEW "{d.name}" AS SELECT {", ".join(keep)} FROM read_parquet(\'{d}/*.parquet\')')
        views.append(d.name)
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

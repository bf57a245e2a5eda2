"""The run directory as a column store.

Every stage writes `workdir/<stage>/<shard>.parquet` holding `uid` plus the columns it adds, one
row per input row in input order. A row's full record is the horizontal join of its shard across
stages; nothing is copied forward, so re-running `select` with new thresholds reads the stats
columns without touching image bytes or the GPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from pipeline import storage
from pipeline.config import RecipeError

INPUT_DIR = "input"
# Where a stage's per-shard outputs live when not under its own name: export publishes its tars
# and manifest in `export/`, so its resume markers stay outside that folder (a glob over the
# export must see only the published files).
STAGE_DIRS = {"export": "_export_state"}


def stage_dir(stage: str) -> str:
    return STAGE_DIRS.get(stage, stage)


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def atomic_write_parquet(table: pa.Table, path) -> None:
    """A reader sees all or nothing: temp + rename locally, one PUT on an object store."""
    storage.write_parquet(table, path)


def atomic_write_json(obj: object, path) -> None:
    storage.write_json(obj, path)


class StoreError(RuntimeError):
    pass


class RunOrderError(StoreError, RecipeError):
    """A run that could not give what a fresh run of the recipe gives (an earlier stage is stale
    or unfinished, or the input changed). It ends the run before anything is deleted or written,
    and the CLI exits with code 2; the message names what to run first."""


class ColumnStore:
    def __init__(self, workdir: str | Path, stages: Iterable[str]):
        # A local Path, or a UPath for an object-store URL (pipeline/storage.py).
        self.workdir = storage.wpath(workdir)
        # Input columns first, then each stage's, in pipeline order; a later stage may not
        # re-provide a column (that would make "which value is current" ambiguous).
        self.sources = [INPUT_DIR, *stages]
        meta = self.workdir / INPUT_DIR / "meta.json"
        if not meta.exists():
            raise StoreError(f"{self.workdir} holds no ingested input (missing {meta}); run the download stage first")
        self.meta = json.loads(meta.read_text(encoding="utf-8"))
        self.n_shards: int = self.meta["n_shards"]
        self.n_rows: int = self.meta["n_rows"]

    def shards(self) -> list[int]:
        return list(range(self.n_shards))

    def path(self, source: str, shard: int):
        return self.workdir / stage_dir(source) / f"{shard_name(shard)}.parquet"

    def done(self, source: str, shard: int) -> bool:
        return self.path(source, shard).exists()

    def done_shards(self, source: str) -> set[int]:
        """Shards whose output `source` has committed, from one listing of its folder: on an
        object store one LIST call per 1,000 keys instead of one HEAD a shard (100k shards are
        ~100 requests, not 100k serial round trips from the driver)."""
        names = (f.name for f in storage.files(self.workdir / stage_dir(source), "[0-9]*.parquet"))
        return {int(n[:-len(".parquet")]) for n in names if n[:-len(".parquet")].isdigit()}

    def pending(self, source: str, shards: Iterable[int] | None = None) -> list[int]:
        """`shards` (default: all) that `source` has not committed yet, in order."""
        shards = self.shards() if shards is None else list(shards)
        if not shards:
            return []
        done = self.done_shards(source)
        return [s for s in shards if s not in done]

    def column_sources(self, upto: str | None = None) -> dict[str, str]:
        """column -> source (input or stage) for every source finished up to (not incl.) `upto`."""
        cols: dict[str, str] = {}
        for src in self.sources:
            if src == upto:
                break
            p = self.path(src, 0)
            if not p.exists():
                continue
            for name in storage.read_schema(p).names:
                if name != "uid":
                    cols.setdefault(name, src)
        return cols

    def read(self, shard: int, columns: Iterable[str], upto: str | None = None,
             optional: Iterable[str] = ()) -> pa.Table:
        """Columns of one shard joined across sources. Missing required columns are an error;
        missing optional ones are simply absent."""
        columns = list(dict.fromkeys(c for c in columns if c != "uid"))
        optional = set(optional)
        where = self.column_sources(upto)
        missing = [c for c in columns if c not in where and c not in optional]
        if missing:
            raise StoreError(f"columns {missing} are not produced by any finished stage before "
                             f"{upto or 'the end'}; available: {sorted(where)}")
        by_src: dict[str, list[str]] = {}
        for c in columns:
            if c in where:
                by_src.setdefault(where[c], []).append(c)
        base = storage.read_table(self.path(INPUT_DIR, shard), columns=["uid"])
        out = base
        for src, cols in by_src.items():
            t = storage.read_table(self.path(src, shard), columns=["uid", *cols])
            if t.num_rows != base.num_rows or not t.column("uid").equals(base.column("uid")):
                raise StoreError(f"{self.path(src, shard)} is not row-aligned with the input shard; "
                                 f"delete it and re-run stage {src!r}")
            for c in cols:
                out = out.append_column(t.schema.field(c), t.column(c))
        return out

    def read_all(self, columns: Iterable[str], optional: Iterable[str] = ()) -> pa.Table:
        """Narrow columns over every shard (for global passes: dedup, percentile thresholds)."""
        return pa.concat_tables([self.read(s, columns, optional=optional) for s in self.shards()])

"""Read a user's URL list, check it, and cut it into input shards with a stable `uid`.

`uid` is the row's position in the input (files in sorted order when a folder is given), so
every later stage, the manifest and any labels file join on it.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.store import INPUT_DIR, atomic_write_json, atomic_write_parquet, shard_name

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


class InputError(ValueError):
    """A URL list mmcurate cannot read; the message names the file and the fix."""


def _files(cfg: InputConfig) -> list[tuple[Path, str]]:
    p = Path(cfg.path)
    if not p.exists():
        raise InputError(f"input {p} does not exist; set input.path in the recipe")
    paths = sorted(x for x in p.iterdir() if x.suffix.lower() in FORMATS) if p.is_dir() else [p]
    if not paths:
        raise InputError(f"input folder {p} holds no .parquet/.csv/.tsv/.jsonl files")
    out = []
    for f in paths:
        fmt = cfg.format if cfg.format != "auto" else FORMATS.get(f.suffix.lower())
        if fmt is None:
            raise InputError(f"cannot tell the format of {f} from its extension; set input.format "
                             f"to one of parquet, csv, tsv, jsonl")
        out.append((f, fmt))
    return out


def _check_utf8(path: Path) -> None:
    """Text formats must be UTF-8; say where the first bad byte is instead of a parser trace."""
    dec = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                line += chunk[: e.start].count(b"\n")
                raise InputError(f"{path} is not UTF-8: invalid byte 0x{chunk[e.start]:02x} at byte "
                                 f"{bad} (line {line}); re-encode it, e.g. "
                                 f"`iconv -f GB18030 -t UTF-8 {path.name}`") from None
            line += chunk.count(b"\n")
            offset += len(chunk)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8: it ends inside a multi-byte character") from None


def _read_one(path: Path, fmt: str) -> pa.Table:
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty; a URL list needs a header/columns and at least one row")
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        _check_utf8(path)
        if fmt in ("csv", "tsv"):
            # Everything as strings: a caption "2024" must stay text, not become an integer.
            opts = pacsv.ParseOptions(delimiter="," if fmt == "csv" else "\t", newlines_in_values=fmt == "csv")
            head = pacsv.read_csv(path, parse_options=opts, read_options=pacsv.ReadOptions(block_size=1 << 16))
            conv = pacsv.ConvertOptions(column_types={n: pa.string() for n in head.column_names},
                                        strings_can_be_null=False)
            return pacsv.read_csv(path, parse_options=opts, convert_options=conv)
        return pajson.read_json(path)
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"cannot read {path} as {fmt}: {e}") from None


def _normalise(t: pa.Table, path: Path, cfg: InputConfig) -> pa.Table:
    if t.num_rows == 0:
        raise InputError(f"{path} has no rows")
    names = t.column_names
    for role, col in (("url", cfg.url_col), ("caption", cfg.caption_col)):
        if col not in names:
            raise InputError(f"{path} has no {role} column {col!r}; its columns are {names}. "
                             f"Set input.{role}_col in the recipe")
    for col in cfg.keep_cols:
        if col not in names:
            raise InputError(f"{path} has no column {col!r} listed in input.keep_cols; its columns are {names}")
    url = t.column(cfg.url_col)
    if not (pa.types.is_string(url.type) or pa.types.is_large_string(url.type)):
        raise InputError(f"{path}: url column {cfg.url_col!r} has type {url.type}, expected strings of URLs")
    cap = t.column(cfg.caption_col)
    if pa.types.is_null(cap.type):
        cap = pa.array([None] * t.num_rows, pa.string())
    elif not (pa.types.is_string(cap.type) or pa.types.is_large_string(cap.type)):
        raise InputError(f"{path}: caption column {cfg.caption_col!r} has type {cap.type}, expected text")
    cols = {"url": url.cast(pa.string()), "caption": cap.cast(pa.string())}
    for col in cfg.keep_cols:
        if col in cols:
            raise InputError(f"input.keep_cols names {col!r}, which clashes with a column mmcurate writes")
        cols[col] = t.column(col)
    return pa.table(cols)


def read_url_list(cfg: InputConfig) -> pa.Table:
    tables = [_normalise(_read_one(f, fmt), f, cfg) for f, fmt in _files(cfg)]
    t = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    return t.combine_chunks()


def ingest(cfg: InputConfig, workdir: Path, shard_size: int) -> dict:
    """Write input shards once; a rerun on the same workdir reuses them (resume)."""
    meta_path = workdir / INPUT_DIR / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["source"] != str(cfg.path) or meta["shard_size"] != shard_size:
            raise InputError(f"{workdir} already holds a run of {meta['source']} with shard_size "
                             f"{meta['shard_size']}; use a new workdir for a different input or shard size")
        return meta
    t = read_url_list(cfg)
    n = t.num_rows
    t = t.append_column("uid", pa.array(range(n), pa.int64())).select(["uid", *t.column_names])
    null_urls = pc.sum(pc.is_null(t.column("url"))).as_py() or 0
    n_shards = (n + shard_size - 1) // shard_size
    for s in range(n_shards):
        atomic_write_parquet(t.slice(s * shard_size, shard_size), workdir / INPUT_DIR / f"{shard_name(s)}.parquet")
    meta = {"source": str(cfg.path), "n_rows": n, "n_shards": n_shards, "shard_size": shard_size,
            "null_urls": null_urls}
    atomic_write_json(meta, meta_path)  # written last: its presence means ingest finished
    return meta

"""Read a user's URL list, check it, and cut it into input shards with a stable `uid`.

`uid` is the row's position in the input (files in sorted order when a folder is given), so
every later stage, the manifest and any labels file join on it.

The list is streamed: each file is read in record batches (parquet row batches, CSV and JSONL
blocks) and shards are written as soon as they fill, so ingest holds about one shard plus one
batch whatever the list's size. Every file is checked (UTF-8, columns, types) before any shard is
written; a row the reader cannot parse is named by file and row.
"""
from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipeline import storage
from pipeline.config import InputConfig
from pipeline.store import INPUT_DIR, atomic_write_json, atomic_write_parquet, shard_name

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# Read sizes: parquet rows per batch; CSV / JSONL bytes per block (a JSONL line must fit in one).
PARQUET_BATCH_ROWS = 65_536
CSV_BLOCK_BYTES = 4 << 20
JSON_BLOCK_BYTES = 16 << 20
_JSON_ROW = re.compile(r" in row (\d+)")
_CSV_ROW = re.compile(r"Row #(\d+): ")


class InputError(ValueError):
    """A URL list mmcurate cannot read; the message names the file and the fix."""


def _files(cfg: InputConfig) -> list[tuple[Path, str]]:
    p = storage.wpath(cfg.path)
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


def _readable(path):
    """What pyarrow's CSV / JSON readers take: the local path, or an open file for a URL."""
    return path.open("rb") if storage.is_remote(path) else path


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


def _read_error(path: Path, fmt: str, e: Exception, rows_before: int) -> InputError:
    """The reader's message with the failing row counted from the file's first data row (the
    readers count within a block, or CSV records including the header)."""
    msg = str(e)
    if fmt == "jsonl" and (m := _JSON_ROW.search(msg)):
        row = rows_before + int(m.group(1)) + 1
        return InputError(f"cannot read {path} as jsonl at row {row}: {_JSON_ROW.sub('', msg)}; "
                          f"fix or remove that line")
    if fmt in ("csv", "tsv") and (m := _CSV_ROW.search(msg)):
        row = int(m.group(1)) - 1
        return InputError(f"cannot read {path} as {fmt} at row {row} (after the header): "
                          f"{_CSV_ROW.sub('', msg)}; fix or remove that row")
    where = f" after row {rows_before}" if rows_before else ""
    return InputError(f"cannot read {path} as {fmt}{where}: {msg}")


@dataclass
class _Source:
    """One input file, checked, with the schema its batches will have."""
    path: Path
    fmt: str
    schema: pa.Schema

    def batches(self, cfg: InputConfig) -> Iterator[pa.RecordBatch]:
        """The file's record batches, one block at a time."""
        rows = 0
        try:
            reader = self._open(cfg)
            for b in reader:
                rows += b.num_rows
                yield b
        except (pa.ArrowInvalid, OSError) as e:
            raise _read_error(self.path, self.fmt, e, rows) from None

    def _open(self, cfg: InputConfig):
        if self.fmt == "parquet":
            # Column chunks read through a small buffer, not pre-buffered whole: a writer may
            # have put the entire file in one row group.
            return storage.parquet_file(self.path, pre_buffer=False, buffer_size=1 << 20).iter_batches(
                batch_size=PARQUET_BATCH_ROWS)
        if self.fmt in ("csv", "tsv"):
            # Everything as strings: a caption "2024" must stay text, not become an integer.
            # Serial reading, so a parse error carries its row number.
            return pacsv.open_csv(
                _readable(self.path), read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
                parse_options=_csv_parse(self.fmt),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in self.schema.names},
                                                     strings_can_be_null=False))
        # url and caption as strings whatever the first block holds: a block of null captions
        # followed by text is one column, not a type change.
        known = pa.schema([f if f.name not in (cfg.url_col, cfg.caption_col) else pa.field(f.name, pa.string())
                           for f in self.schema])
        return pajson.open_json(_readable(self.path), read_options=pajson.ReadOptions(block_size=JSON_BLOCK_BYTES),
                                parse_options=pajson.ParseOptions(explicit_schema=known,
                                                                  unexpected_field_behavior="infer"))


def _csv_parse(fmt: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="," if fmt == "csv" else "\t", newlines_in_values=fmt == "csv")


def _open_source(path: Path, fmt: str) -> _Source:
    """Check a file and learn its columns, reading at most its first block."""
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty; a URL list needs a header/columns and at least one row")
    try:
        if fmt == "parquet":
            pf = storage.parquet_file(path)
            if pf.metadata.num_rows == 0:
                raise InputError(f"{path} has no rows")
            return _Source(path, fmt, pf.schema_arrow)
        _check_utf8(path)
        if fmt in ("csv", "tsv"):
            names = pacsv.open_csv(_readable(path), parse_options=_csv_parse(fmt),
                                   read_options=pacsv.ReadOptions(block_size=1 << 16, use_threads=False)).schema.names
            return _Source(path, fmt, pa.schema([(n, pa.string()) for n in names]))
        reader = pajson.open_json(_readable(path), read_options=pajson.ReadOptions(block_size=JSON_BLOCK_BYTES))
        return _Source(path, fmt, reader.schema)
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        raise _read_error(path, fmt, e, 0) from None


def _check_columns(src: _Source, cfg: InputConfig) -> None:
    path, schema = src.path, src.schema
    names = schema.names
    for role, col in (("url", cfg.url_col), ("caption", cfg.caption_col)):
        if col not in names:
            raise InputError(f"{path} has no {role} column {col!r}; its columns are {names}. "
                             f"Set input.{role}_col in the recipe")
    for col in cfg.keep_cols:
        if col not in names:
            raise InputError(f"{path} has no column {col!r} listed in input.keep_cols; its columns are {names}")
        if col in ("uid", "url", "caption"):
            raise InputError(f"input.keep_cols names {col!r}, which clashes with a column mmcurate writes")
    url = schema.field(cfg.url_col).type
    if not (pa.types.is_string(url) or pa.types.is_large_string(url)):
        raise InputError(f"{path}: url column {cfg.url_col!r} has type {url}, expected strings of URLs")
    cap = schema.field(cfg.caption_col).type
    if not (pa.types.is_null(cap) or pa.types.is_string(cap) or pa.types.is_large_string(cap)):
        raise InputError(f"{path}: caption column {cfg.caption_col!r} has type {cap}, expected text")


def _target_schema(sources: list[_Source], cfg: InputConfig) -> pa.Schema:
    """url, caption and the kept columns; a kept column that is all null in one file takes the
    type the other files give it, and files that disagree otherwise are refused."""
    fields = [pa.field("url", pa.string()), pa.field("caption", pa.string())]
    for col in cfg.keep_cols:
        typ, seen = pa.null(), None
        for src in sources:
            t = src.schema.field(col).type
            if pa.types.is_null(t):
                continue
            if seen is not None and t != typ:
                raise InputError(f"column {col!r} listed in input.keep_cols is {typ} in {seen} but {t} in "
                                 f"{src.path}; make the files agree (or drop it from keep_cols)")
            typ, seen = t, src.path
        fields.append(pa.field(col, typ))
    return pa.schema(fields)


def _normalise(b: pa.RecordBatch, path: Path, cfg: InputConfig, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for name, src_col in zip(schema.names, [cfg.url_col, cfg.caption_col, *cfg.keep_cols]):
        a = b.column(src_col)
        typ = schema.field(name).type
        if a.type != typ:
            try:
                a = a.cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InputError(f"{path}: column {src_col!r} changes type within the file ({a.type}, "
                                 f"expected {typ}): {e}") from None
        arrays.append(a)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def stream_url_list(cfg: InputConfig) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The output schema and the list's rows as normalised record batches, file by file. Every
    file is checked before the first batch is read."""
    sources = [_open_source(f, fmt) for f, fmt in _files(cfg)]
    for src in sources:
        _check_columns(src, cfg)
    schema = _target_schema(sources, cfg)

    def gen() -> Iterator[pa.RecordBatch]:
        for src in sources:
            n = 0
            for b in src.batches(cfg):
                n += b.num_rows
                if b.num_rows:
                    yield _normalise(b, src.path, cfg, schema)
            if n == 0:
                raise InputError(f"{src.path} has no rows")
    return schema, gen()


def read_url_list(cfg: InputConfig) -> pa.Table:
    """The whole list as one table: for small lists and tests; `ingest` streams instead."""
    schema, batches = stream_url_list(cfg)
    return pa.Table.from_batches(list(batches), schema=schema).combine_chunks()


class _ShardWriter:
    """Cuts a stream of batches into shards of `shard_size` rows, numbering uids as it goes."""

    def __init__(self, out: Path, shard_size: int, schema: pa.Schema):
        self.out, self.size, self.schema = out, shard_size, schema
        self.buf: list[pa.RecordBatch] = []
        self.n_buf = self.n_rows = self.n_shards = 0

    def add(self, b: pa.RecordBatch) -> None:
        self.buf.append(b)
        self.n_buf += b.num_rows
        while self.n_buf >= self.size:
            self._write(self.size)

    def close(self) -> None:
        if self.n_buf:
            self._write(self.n_buf)

    def _write(self, n: int) -> None:
        t = pa.Table.from_batches(self.buf, schema=self.schema)
        shard, rest = t.slice(0, n).combine_chunks(), t.slice(n)
        uid = pa.array(np.arange(self.n_rows, self.n_rows + n, dtype=np.int64))
        atomic_write_parquet(pa.Table.from_arrays([uid, *shard.columns], names=["uid", *self.schema.names]),
                             self.out / f"{shard_name(self.n_shards)}.parquet")
        self.buf, self.n_buf = rest.to_batches(), rest.num_rows
        self.n_rows += n
        self.n_shards += 1


def ingest(cfg: InputConfig, workdir: Path, shard_size: int) -> dict:
    """Write input shards once; a rerun on the same workdir reuses them (resume)."""
    meta_path = workdir / INPUT_DIR / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["source"] != str(cfg.path) or meta["shard_size"] != shard_size:
            raise InputError(f"{workdir} already holds a run of {meta['source']} with shard_size "
                             f"{meta['shard_size']}; use a new workdir for a different input or shard size")
        return meta
    schema, batches = stream_url_list(cfg)
    writer = _ShardWriter(workdir / INPUT_DIR, shard_size, schema)
    null_urls = 0
    for b in batches:
        null_urls += b.column(0).null_count
        writer.add(b)
    writer.close()
    meta = {"source": str(cfg.path), "n_rows": writer.n_rows, "n_shards": writer.n_shards,
            "shard_size": shard_size, "null_urls": null_urls}
    atomic_write_json(meta, meta_path)  # written last: its presence means ingest finished
    return meta

"""Where a run's files live: a local folder, or any fsspec URL (`s3://`, `gs://`, `az://`, ...).

`wpath` gives a pathlib.Path for local paths (nothing changes for them) and a universal_pathlib
UPath for URLs, which offers the same methods (`/`, exists, glob, read_text, open, ...) over the
URL's fsspec filesystem. Parquet goes through `read_table` / `write_parquet` here so pyarrow gets
that filesystem whatever the scheme.

Commits. A local file is written to a temp name and renamed. Object stores have no rename, but an
object appears whole when its PUT (or multipart upload) completes and never before, so a remote
file is written in place: a reader sees all of it or none. Where several files make one shard,
the file whose existence marks the shard done is written last (the runner's `done` checks it).

Credentials and endpoints come from the environment, as for any fsspec / boto client:
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` (an S3-compatible server),
`GOOGLE_APPLICATION_CREDENTIALS`, ... Listings are never cached: another process (a Ray worker,
img2dataset) writes the files this one checks.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

LOCAL_SCHEMES = ("file", "local")


def scheme(p: Any) -> str:
    s = str(p)
    return s.split("://", 1)[0].lower() if "://" in s else "file"


def is_remote(p: Any) -> bool:
    if isinstance(p, Path) and not hasattr(p, "fs"):
        return False
    return scheme(p) not in LOCAL_SCHEMES


def wpath(p: Any):
    """A path object for a local path or a URL (see module doc)."""
    if is_remote(p):
        from upath import UPath

        if isinstance(p, UPath):
            return p
        return UPath(str(p), use_listings_cache=False)
    s = str(p)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def exists(p: Any) -> bool:
    return wpath(p).exists()


# ---- parquet ---------------------------------------------------------------------------------

def read_table(path: Any, **kw) -> pa.Table:
    p = wpath(path)
    if is_remote(p):
        return pq.read_table(p.path, filesystem=p.fs, **kw)
    return pq.read_table(p, **kw)


def read_schema(path: Any) -> pa.Schema:
    p = wpath(path)
    if is_remote(p):
        with p.open("rb") as f:
            return pq.read_schema(f)
    return pq.read_schema(p)


def parquet_file(path: Any, **kw) -> pq.ParquetFile:
    p = wpath(path)
    return pq.ParquetFile(p.open("rb") if is_remote(p) else p, **kw)


def write_parquet(table: pa.Table, path: Any) -> None:
    """All or nothing (module doc)."""
    p = wpath(path)
    if is_remote(p):
        pq.write_table(table, p.path, filesystem=p.fs, compression="zstd")
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, p)


# ---- other files -----------------------------------------------------------------------------

def write_bytes(data: bytes, path: Any) -> None:
    p = wpath(path)
    if is_remote(p):
        with p.open("wb") as f:
            f.write(data)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)


def write_json(obj: object, path: Any) -> None:
    write_bytes(json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"), path)


def read_json(path: Any) -> Any:
    return json.loads(wpath(path).read_text(encoding="utf-8"))


def publish_file(local: str | Path, path: Any) -> None:
    """Move a finished local file to `path`: a rename locally, one upload to a URL (the object
    appears whole), after which the local file is removed."""
    p = wpath(path)
    if is_remote(p):
        p.fs.put_file(str(local), p.path)
        os.unlink(local)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    os.replace(local, p)


def publish_copy(local: str | Path, path: Any) -> None:
    """Upload a local file that stays (a log), as one object."""
    p = wpath(path)
    p.fs.put_file(str(local), p.path)


def staging_file(path: Any, suffix: str = ".tmp") -> str:
    """Where to build a file that `publish_file` then moves to `path`: beside it locally (same
    file system, so the rename is atomic), in the local temp folder for a URL."""
    p = wpath(path)
    if is_remote(p):
        fd, tmp = tempfile.mkstemp(prefix="mmcurate-", suffix=suffix)
        os.close(fd)
        return tmp
    p.parent.mkdir(parents=True, exist_ok=True)
    return str(p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}{suffix}"))


def remove(path: Any) -> None:
    """A file or a whole folder, if there."""
    p = wpath(path)
    if is_remote(p):
        if p.fs.exists(p.path):
            p.fs.rm(p.path, recursive=True)
        return
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def files(folder: Any, pattern: str = "*", recursive: bool = False) -> Iterator:
    """Files (not folders) under `folder` matching a glob pattern on the name."""
    import fnmatch

    p = wpath(folder)
    if is_remote(p):
        if not p.fs.exists(p.path):
            return iter(())
        found = p.fs.find(p.path) if recursive else [x["name"] for x in p.fs.ls(p.path, detail=True)
                                                     if x["type"] == "file"]
        proto = scheme(p)
        return iter(sorted(wpath(f"{proto}://{f}") for f in found
                           if fnmatch.fnmatch(f.rsplit("/", 1)[-1], pattern)))
    if not p.is_dir():
        return iter(())
    it = p.rglob(pattern) if recursive else p.glob(pattern)
    return iter(sorted(x for x in it if x.is_file()))


def local_dir(path: Any) -> Path:
    """A local folder for something that can only be written to a local disk (a log file, a
    browser-rendered report): the folder itself when local, else one under the temp folder
    named after the URL (the caller uploads it with `upload_dir`)."""
    p = wpath(path)
    if not is_remote(p):
        p.mkdir(parents=True, exist_ok=True)
        return p
    import hashlib

    d = Path(tempfile.gettempdir()) / "mmcurate-remote" / hashlib.sha1(str(p).encode()).hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    return d


def upload_dir(local: Path, path: Any) -> None:
    """Copy a local folder's files to a URL (no-op when `path` is that local folder)."""
    p = wpath(path)
    if not is_remote(p):
        return
    for f in sorted(Path(local).rglob("*")):
        if f.is_file():
            p.fs.put_file(str(f), f"{p.path}/{f.relative_to(local).as_posix()}")

"""pipeline/storage.py: the same calls on a local folder and on an fsspec URL (fsspec's in-memory
filesystem here; tests/test_object_store.py runs a whole recipe against an S3 server)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import storage


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        return tmp_path / "wd"
    return f"memory://mm-{uuid.uuid4().hex[:8]}/wd"


def test_paths_round_trip(root):
    p = storage.wpath(root)
    assert storage.is_remote(p) == (not isinstance(root, Path))
    assert isinstance(storage.wpath(str(Path("/x/y"))), Path) and not storage.is_remote("/x/y")
    assert isinstance(storage.wpath("file:///x/y"), Path)
    t = pa.table({"uid": [1, 2, 3], "v": ["a", "b", None]})
    storage.write_parquet(t, p / "sel" / "00000.parquet")
    storage.write_parquet(t.slice(1), p / "sel" / "00001.parquet")
    storage.write_json({"k": "值"}, p / "meta.json")
    assert storage.read_table(p / "sel" / "00000.parquet").equals(t)
    assert storage.read_schema(p / "sel" / "00001.parquet").names == ["uid", "v"]
    assert storage.parquet_file(p / "sel" / "00001.parquet").metadata.num_rows == 2
    assert storage.read_json(p / "meta.json") == {"k": "值"}
    names = [f.name for f in storage.files(p / "sel", "*.parquet")]
    assert names == ["00000.parquet", "00001.parquet"]
    assert {f.name for f in storage.files(p, recursive=True)} == {"00000.parquet", "00001.parquet", "meta.json"}
    assert list(storage.files(p / "nothing")) == []
    # No temp files are left beside published ones.
    assert not [f for f in storage.files(p, ".*", recursive=True)]
    storage.remove(p / "sel")
    assert list(storage.files(p / "sel")) == [] and storage.exists(p / "meta.json")
    storage.remove(p / "sel")  # removing what is gone is not an error


def test_publish_file_moves_a_finished_file(root):
    p = storage.wpath(root) / "export" / "00000.tar"
    tmp = storage.staging_file(p)
    Path(tmp).write_bytes(b"x" * 1000)
    assert not storage.exists(p)
    storage.publish_file(tmp, p)
    assert not Path(tmp).exists() and p.read_bytes() == b"x" * 1000


def test_local_dir_and_upload(root, tmp_path):
    d = storage.local_dir(storage.wpath(root) / "report")
    (d / "thumbs").mkdir(parents=True, exist_ok=True)
    (d / "index.html").write_text("<html>")
    (d / "thumbs" / "1.jpg").write_bytes(b"j")
    storage.upload_dir(d, storage.wpath(root) / "report")
    got = {f.name for f in storage.files(storage.wpath(root) / "report", recursive=True)}
    assert got == {"index.html", "1.jpg"}


def test_object_digest_changes_with_content():
    from pipeline.fingerprint import path_digest

    url = f"memory://fp-{uuid.uuid4().hex[:8]}/urls.csv"
    storage.write_bytes(b"url\nhttp://a/1\n", url)
    a = path_digest(url)
    assert a and a.startswith("objects:")
    storage.write_bytes(b"url\nhttp://a/1\nhttp://a/2\n", url)
    assert path_digest(url) not in (None, a)
    assert path_digest("memory://nowhere/x.csv") is None
    assert path_digest("https://example.com/x.csv") is None  # not an object store: a plain string

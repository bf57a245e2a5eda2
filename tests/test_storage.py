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


def test_pending_shards_come_from_one_listing(root, monkeypatch):
    """The runner asks which shards a stage still owes; on an object store that must be one
    listing of the stage's folder, not one HEAD request a shard (serial round trips from the
    driver: 100k shards would be minutes per stage)."""
    import fsspec

    from pipeline.store import ColumnStore, stage_dir

    wd = storage.wpath(root)
    storage.write_json({"n_shards": 40, "n_rows": 40}, wd / "input" / "meta.json")
    t = pa.table({"uid": [0]})
    for s in (0, 3, 17, 39):
        storage.write_parquet(t, wd / "annotate" / f"{s:05d}.parquet")
    storage.write_parquet(t, wd / stage_dir("export") / "00005.parquet")
    storage.write_bytes(b"", wd / "annotate" / ".00004.parquet.tmp")  # a killed write is not done
    store = ColumnStore(root, ["annotate", "export"])
    calls = {"exists": 0, "info": 0}
    if storage.is_remote(wd):
        fs_cls = type(fsspec.filesystem("memory"))
        for name in calls:
            orig = getattr(fs_cls, name)
            monkeypatch.setattr(fs_cls, name, lambda self, *a, _o=orig, _n=name, **k: (
                calls.__setitem__(_n, calls[_n] + 1), _o(self, *a, **k))[1])
    want = [s for s in range(40) if s not in (0, 3, 17, 39)]
    assert store.pending("annotate") == want
    assert store.pending("annotate", [39, 4, 3]) == [4]
    assert store.pending("export") == [s for s in range(40) if s != 5]
    assert store.pending("dedup") == list(range(40))
    assert store.done_shards("annotate") == {0, 3, 17, 39}
    listed = dict(calls)
    assert all(store.done("annotate", s) == (s in (0, 3, 17, 39)) for s in range(40))
    if storage.is_remote(wd):  # 5 listings cost a few calls; asking shard by shard costs 40 alone
        assert sum(listed.values()) <= 10 and sum(calls.values()) - sum(listed.values()) >= 40, (listed, calls)

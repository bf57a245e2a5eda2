import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.ingest import InputError, ingest, read_url_list


def cfg(path, **kw):
    return InputConfig(path=str(path), **kw)


def test_reads_every_format_alike(tmp_path):
    rows = [{"url": "http://a/1.jpg", "caption": "一只猫, \"quoted\""}, {"url": "http://a/2.jpg", "caption": "2024"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "l.parquet")
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    (tmp_path / "l.csv").write_text('url,caption\nhttp://a/1.jpg,"一只猫, ""quoted"""\nhttp://a/2.jpg,2024\n', encoding="utf-8")
    (tmp_path / "l.tsv").write_text('url\tcaption\nhttp://a/1.jpg\t一只猫, "quoted"\nhttp://a/2.jpg\t2024\n', encoding="utf-8")
    for ext in ("parquet", "jsonl", "csv", "tsv"):
        t = read_url_list(cfg(tmp_path / f"l.{ext}"))
        assert t.to_pylist() == rows, ext  # "2024" stays text


def test_custom_columns_and_keep_cols(tmp_path):
    pq.write_table(pa.table({"URL": ["http://x/a"], "TEXT": ["hi"], "src": [3]}), tmp_path / "x.parquet")
    t = read_url_list(cfg(tmp_path / "x.parquet", url_col="URL", caption_col="TEXT", keep_cols=["src"]))
    assert t.column_names == ["url", "caption", "src"]


@pytest.mark.parametrize("setup, needle", [
    (lambda p: (p / "e.csv").write_text(""), "is empty"),
    (lambda p: (p / "e.csv").write_text("url,caption\n"), "has no rows"),
    (lambda p: (p / "e.csv").write_text("link,text\nhttp://a,b\n"), "no url column 'url'; its columns are ['link', 'text']"),
    (lambda p: (p / "e.csv").write_text("url,text\nhttp://a,b\n"), "no caption column 'caption'"),
    (lambda p: (p / "e.csv").write_bytes("url,caption\nhttp://a,caf\xe9\n".encode("latin-1")), "is not UTF-8: invalid byte 0xe9 at byte 24 (line 2)"),
    (lambda p: pq.write_table(pa.table({"url": [1, 2], "caption": ["a", "b"]}), p / "e.parquet"), "has type int64"),
    (lambda p: pq.write_table(pa.table({"url": ["a"], "caption": [1.5]}), p / "e.parquet"), "caption column 'caption' has type double"),
    (lambda p: (p / "e.jsonl").write_text('{"url": "a", "caption": "b"}\n{broken\n'), "cannot read"),
    (lambda p: (p / "e.txt").write_text("x"), "cannot tell the format"),
])
def test_bad_url_lists_name_the_problem(tmp_path, setup, needle):
    setup(tmp_path)
    f = next(tmp_path.iterdir())
    with pytest.raises(InputError) as e:
        read_url_list(cfg(f))
    assert needle in str(e.value) and str(f.name) in str(e.value)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_url_list(cfg(tmp_path / "nope.parquet"))


def test_ingest_shards_and_uids_and_resume(tmp_path):
    pq.write_table(pa.table({"url": [f"http://x/{i}" for i in range(25)], "caption": ["c"] * 25}), tmp_path / "u.parquet")
    meta = ingest(cfg(tmp_path / "u.parquet"), tmp_path / "wd", shard_size=10)
    assert meta["n_rows"] == 25 and meta["n_shards"] == 3
    shards = [pq.read_table(tmp_path / "wd/input" / f"{i:05d}.parquet") for i in range(3)]
    assert [s.num_rows for s in shards] == [10, 10, 5]
    assert pa.concat_tables(shards).column("uid").to_pylist() == list(range(25))
    assert ingest(cfg(tmp_path / "u.parquet"), tmp_path / "wd", shard_size=10) == meta
    with pytest.raises(InputError, match="shard_size"):
        ingest(cfg(tmp_path / "u.parquet"), tmp_path / "wd", shard_size=7)

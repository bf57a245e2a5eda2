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


# ---- streaming: the list is read in batches and written shard by shard ------------------------

def _write_all_formats(d, rows):
    """The same rows as parquet (several row groups), CSV (with a multi-line caption), TSV, JSONL."""
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), d / "a.parquet", row_group_size=17)
    (d / "b.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    esc = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    (d / "c.csv").write_text("url,caption\n" + "".join(f"{r['url']},{esc(r['caption'])}\n" for r in rows), encoding="utf-8")
    (d / "d.tsv").write_text("url\tcaption\n" + "".join(f"{r['url']}\t{r['caption'].replace(chr(10), ' ')}\n" for r in rows),
                             encoding="utf-8")


def test_ingest_streams_in_batches_and_shards_match_the_list(tmp_path, monkeypatch):
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    import pipeline.ingest as ing

    def whole_file(*a, **k):
        raise AssertionError("ingest read a whole file into memory")
    for mod, name in ((pq, "read_table"), (pacsv, "read_csv"), (pajson, "read_json")):
        monkeypatch.setattr(mod, name, whole_file)
    # Small reads, so every file spans many batches and batches straddle shard boundaries.
    monkeypatch.setattr(ing, "PARQUET_BATCH_ROWS", 13, raising=False)
    monkeypatch.setattr(ing, "CSV_BLOCK_BYTES", 1 << 10, raising=False)
    monkeypatch.setattr(ing, "JSON_BLOCK_BYTES", 1 << 10, raising=False)
    rows = [{"url": f"http://h/{i}.jpg", "caption": f"第{i}张 \"cap\", x" + ("\nline two" if i % 9 == 0 else "")}
            for i in range(200)]
    _write_all_formats(tmp_path / "in", rows)
    meta = ingest(cfg(tmp_path / "in"), tmp_path / "wd", shard_size=64)
    monkeypatch.undo()
    assert meta["n_rows"] == 800 and meta["n_shards"] == 13
    shards = [pq.read_table(tmp_path / "wd/input" / f"{i:05d}.parquet") for i in range(13)]
    assert [s.num_rows for s in shards] == [64] * 12 + [32]
    got = pa.concat_tables(shards)
    assert got.column_names == ["uid", "url", "caption"] and got.column("uid").to_pylist() == list(range(800))
    tsv = [{**r, "caption": r["caption"].replace("\n", " ")} for r in rows]
    assert got.drop(["uid"]).to_pylist() == rows * 3 + tsv  # a.parquet, b.jsonl, c.csv, d.tsv


def test_jsonl_null_captions_before_text_are_one_text_column(tmp_path, monkeypatch):
    import pipeline.ingest as ing

    monkeypatch.setattr(ing, "JSON_BLOCK_BYTES", 1 << 10, raising=False)
    rows = [{"url": f"http://h/{i}", "caption": None if i < 100 else f"c{i}"} for i in range(150)]
    (tmp_path / "n.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ingest(cfg(tmp_path / "n.jsonl"), tmp_path / "wd", shard_size=1000)
    t = pq.read_table(tmp_path / "wd/input/00000.parquet")
    assert t.schema.field("caption").type == pa.string() and t.drop(["uid"]).to_pylist() == rows


@pytest.mark.parametrize("name, body", [
    ("late.jsonl", "".join(f'{{"url": "http://h/{i}", "caption": "c"}}\n' for i in range(3000)) + "{broken\n"),
    ("late.csv", "url,caption\n" + "".join(f"http://h/{i},c\n" for i in range(3000)) + "http://h/x,c,extra\n"),
    ("late.tsv", "url\tcaption\n" + "".join(f"http://h/{i}\tc\n" for i in range(3000)) + "http://h/x\tc\textra\n"),
])
@pytest.mark.parametrize("small_blocks", [False, True])
def test_a_bad_row_deep_in_a_file_is_named_by_row(tmp_path, monkeypatch, name, body, small_blocks):
    import pipeline.ingest as ing

    if small_blocks:  # the bad row sits many blocks in: the row is counted across them
        monkeypatch.setattr(ing, "CSV_BLOCK_BYTES", 1 << 10, raising=False)
        monkeypatch.setattr(ing, "JSON_BLOCK_BYTES", 1 << 10, raising=False)
    (tmp_path / name).write_text(body, encoding="utf-8")
    with pytest.raises(InputError) as e:
        ingest(cfg(tmp_path / name), tmp_path / "wd", shard_size=500)
    assert name in str(e.value) and "row 3001" in str(e.value)
    assert not (tmp_path / "wd/input/meta.json").exists()  # an ingest that failed is not finished


def test_keep_cols_types_across_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"url": ["http://a/1"], "caption": ["a"], "src": pa.nulls(1)}), d / "a.parquet")
    pq.write_table(pa.table({"url": ["http://a/2"], "caption": ["b"], "src": [7]}), d / "b.parquet")
    ingest(cfg(d, keep_cols=["src"]), tmp_path / "wd", shard_size=1)
    # Every shard has the one type, also the shard whose rows came from the all-null file.
    assert [pq.read_schema(tmp_path / f"wd/input/0000{i}.parquet").field("src").type for i in (0, 1)] == [pa.int64()] * 2
    pq.write_table(pa.table({"url": ["http://a/3"], "caption": ["c"], "src": ["x"]}), d / "c.parquet")
    with pytest.raises(InputError, match=r"'src'.*int64 in .*b\.parquet but string in .*c\.parquet"):
        ingest(cfg(d, keep_cols=["src"]), tmp_path / "wd2", shard_size=1)

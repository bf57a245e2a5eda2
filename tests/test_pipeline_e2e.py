"""The foundation end to end on the synthetic corpus: download → annotate → select → export."""
from __future__ import annotations

import json
import shutil

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.accounting import AccountingError, check_and_record
from pipeline.config import recipe_from_dict
from pipeline.runner import run
from tests.conftest import recipe_dict

# What each injected download fault must become in the manifest.
FAULT_REASON = {"http_404": {"http_404"}, "http_500": {"http_500"}, "timeout": {"timeout"},
                "html": {"html"}, "truncated": {"truncated"}, "corrupt": {"not_image", "corrupt_image"}}


def manifest(wd) -> pa.Table:
    return pq.read_table(wd / "export" / "manifest").sort_by("uid")


def test_accounting_balances(local_run, corpus):
    wd, s = local_run
    n = pq.read_metadata(corpus / "urls.parquet").num_rows
    assert s["balanced"] and s["input"] == n == s["kept"] + s["rejected"] + s["failed"]
    assert s["exported"] == s["kept"] > 0
    m = manifest(wd)
    assert m.column("uid").to_pylist() == list(range(n))


def test_download_failures_match_labels(local_run, corpus):
    wd, _ = local_run
    labels = pq.read_table(corpus / "labels.parquet").to_pylist()
    m = {r["uid"]: r for r in manifest(wd).to_pylist()}
    seen = set()
    for lab in labels:
        row = m[lab["row"]]
        fault = next((l for l in lab["labels"] if l in FAULT_REASON), None)
        if fault:
            seen.add(fault)
            assert row["decision"] == "failed" and row["reason"] in FAULT_REASON[fault], (lab, row)
        else:
            assert row["decision"] != "failed", (lab, row)
    assert seen == set(FAULT_REASON)  # the corpus really exercised every fault


def test_rejections_follow_labels(local_run, corpus):
    wd, _ = local_run
    labels = {r["row"]: r for r in pq.read_table(corpus / "labels.parquet").to_pylist()}
    for row in manifest(wd).to_pylist():
        if "tiny" in labels[row["uid"]]["labels"]:
            assert row["reason"] == "small_image"
        if "extreme_aspect" in labels[row["uid"]]["labels"]:
            assert row["reason"] in ("aspect_ratio", "small_image")


def test_webdataset_shards_load(local_run):
    wd, s = local_run
    tars = sorted(str(p) for p in (wd / "export" / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == s["kept"]
    for smp in samples:
        assert smp["jpg"].size[0] > 0 and isinstance(smp["txt"], str) and smp["txt"]
        assert smp["json"]["key"] == smp["__key__"] and smp["json"]["caption"] == smp["txt"]


def test_query_command(local_run, capsys):
    from pipeline.cli import main

    wd, s = local_run
    assert main(["query", "--run", str(wd), "SELECT count(*) AS n FROM manifest WHERE decision = 'kept'"]) == 0
    assert str(s["kept"]) in capsys.readouterr().out


def test_accounting_catches_lost_and_duplicated_rows(local_run, tmp_path):
    wd, s = local_run
    copy = tmp_path / "wd"
    shutil.copytree(wd, copy)
    shard = copy / "select" / "00000.parquet"
    t = pq.read_table(shard)
    pq.write_table(t.slice(1), shard)
    with pytest.raises(AccountingError, match="lost or duplicated"):
        check_and_record(copy, s["input"])
    pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), shard)
    with pytest.raises(AccountingError):
        check_and_record(copy, s["input"])


def test_changed_threshold_reruns_select_only(local_run, corpus, tmp_path):
    wd, s = local_run
    copy = tmp_path / "wd"
    shutil.copytree(wd, copy)
    before = (copy / "annotate" / "00000.parquet").stat().st_mtime_ns
    r = recipe_from_dict(recipe_dict(corpus, copy, select={"min_short_side": 10_000}))
    s2 = run(r, quiet=True)
    assert (copy / "annotate" / "00000.parquet").stat().st_mtime_ns == before
    assert s2["kept"] == 0 and s2["balanced"]
    # the size rule is the first rejection rule: every usable row now fails it
    assert s2["rejected_by_reason"] == {"small_image": s["kept"] + s["rejected"]}
    assert s2["failed_by_reason"] == s["failed_by_reason"]


def test_ray_executor_matches_local(local_run, corpus, tmp_path):
    wd, _ = local_run
    copy = tmp_path / "wd"
    shutil.copytree(wd, copy, ignore=shutil.ignore_patterns("annotate", "dedup", "select", "export", "_export_state"))
    run(recipe_from_dict(recipe_dict(corpus, copy, executor="ray")), quiet=True)
    for stage in ("annotate", "dedup", "select", "export"):
        for f in sorted((wd / stage).glob("*.parquet")):
            assert pq.read_table(copy / stage / f.name).equals(pq.read_table(f)), f"{stage}/{f.name}"
    assert manifest(copy).equals(manifest(wd))
    for tar in (wd / "export" / "shards").glob("*.tar"):
        a = {k: v for k, v in _tar_members(tar)}
        b = {k: v for k, v in _tar_members(copy / "export" / "shards" / tar.name)}
        assert a == b


def _tar_members(path):
    import tarfile
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            yield m.name, tf.extractfile(m).read()

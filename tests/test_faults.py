"""Fault tolerance: Ray workers killed mid-shard are restarted and their shards redone; a shard
that keeps failing is recorded, its rows are accounted as failed/shard_error, the run goes on,
and the next run retries it. Final manifests must equal an uninterrupted run's."""
from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import pipeline.runner
from pipeline.config import recipe_from_dict
from pipeline.executors import FAILED_SHARDS_FILE, SHARD_ERROR
from pipeline.runner import run
from tests.conftest import recipe_dict
from tests.faultstages import PLAN, build_with_faults, kill_marker, write_plan

DOWNSTREAM = ("annotate", "dedup", "score", "capfilt", "select", "export")
SHARD = 40  # rows per shard in the conftest recipe


def _manifest(wd):
    # `key` carries each run directory's id; the decisions are what must match.
    return pq.read_table(wd / "export" / "manifest").sort_by("uid").drop_columns(["key"])


def _copy_downloaded(src, dst):
    """The reference run's input and downloads, nothing after: the test re-runs the rest."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*DOWNSTREAM, "_export_state", "summary.json",
                                                            FAILED_SHARDS_FILE))


def _shard_rows(table, shard):
    uid = table.column("uid")
    return table.filter(pc.and_(pc.greater_equal(uid, shard * SHARD), pc.less(uid, (shard + 1) * SHARD)))


def _other_rows(table, shard):
    uid = table.column("uid")
    return table.filter(pc.or_(pc.less(uid, shard * SHARD), pc.greater_equal(uid, (shard + 1) * SHARD)))


@pytest.fixture
def faulty(monkeypatch):
    monkeypatch.setattr(pipeline.runner, "build_stage", build_with_faults)


def test_failing_shard_is_recorded_accounted_and_retried(faulty, local_run, corpus, tmp_path):
    ref_wd, ref = local_run
    wd = tmp_path / "wd"
    _copy_downloaded(ref_wd, wd)
    # Shard 0 on purpose: later stages learn a stage's columns from shard 0's file.
    write_plan(wd, "annotate", always_raise=[0])
    recipe = recipe_from_dict(recipe_dict(corpus, wd))
    s = run(recipe, quiet=True)

    assert s["balanced"] and s["input"] == ref["input"]
    assert [(f["stage"], f["shard"], f["attempts"]) for f in s["failed_shards"]] == [("annotate", 0, 2)]
    assert "injected fault in shard 0" in s["failed_shards"][0]["error"]
    assert s["failed_by_reason"][SHARD_ERROR] == SHARD
    recorded = json.loads((wd / FAILED_SHARDS_FILE).read_text())
    assert recorded[0]["stage"] == "annotate" and "RuntimeError" in recorded[0]["traceback"]

    got, want = _manifest(wd), _manifest(ref_wd)
    assert got.num_rows == want.num_rows == len(set(got.column("uid").to_pylist()))
    bad = _shard_rows(got, 0)
    assert set(bad.column("decision").to_pylist()) == {"failed"}
    assert set(bad.column("reason").to_pylist()) == {SHARD_ERROR}
    assert pq.read_table(wd / "_export_state" / "00000.parquet").column("exported").to_pylist() == [False] * SHARD
    tar_rows = [u for f in (wd / "export" / "shards").glob("*.parquet") for u in pq.read_table(f).column("uid").to_pylist()]
    assert tar_rows and not set(range(SHARD)) & set(tar_rows)  # no sample of the failed shard in a tar
    # Every other shard decided as the reference did (no rule went missing), except that dedup
    # ran over the surviving rows: a duplicate of a row in the failed shard is now kept.
    assert got.schema == want.schema
    dup_of_failed = pc.less(pc.fill_null(want.column("dup_of"), 10**9), SHARD)
    same = pc.invert(pc.and_(dup_of_failed, pc.greater_equal(want.column("uid"), SHARD)))
    assert _other_rows(got.filter(same), 0).equals(_other_rows(want.filter(same), 0))
    for k in (1, 2, 3):
        assert pq.read_table(wd / "annotate" / f"0000{k}.parquet").equals(
            pq.read_table(ref_wd / "annotate" / f"0000{k}.parquet"))

    # The fault goes away: the next run retries shard 0 and the result equals the reference.
    (wd / PLAN).unlink()
    s2 = run(recipe, quiet=True)
    assert s2["failed_shards"] == [] and not (wd / FAILED_SHARDS_FILE).exists()
    assert _manifest(wd).equals(want)
    assert s2["kept"] == ref["kept"]


def test_ray_worker_kills_and_a_bad_shard(faulty, local_run, corpus, tmp_path):
    ref_wd, _ = local_run
    wd = tmp_path / "wd"
    _copy_downloaded(ref_wd, wd)
    # Three shards kill their worker process mid-shard (SIGKILL, once each: more than one actor's
    # max_restarts, so the executor also replaces a dead actor); the last shard raises every time
    # (the last, because dedup's prepare state indexes uids from the first one without gaps).
    write_plan(wd, "annotate", kill_once=[0, 1, 2], always_raise=[3])
    recipe = recipe_from_dict(recipe_dict(corpus, wd, executor="ray"))
    s = run(recipe, quiet=True)

    pids = {int(kill_marker(wd, "annotate", k).read_text()) for k in (0, 1, 2)}
    assert len(pids) >= 1  # the kills really happened, inside worker processes
    assert [(f["stage"], f["shard"]) for f in s["failed_shards"]] == [("annotate", 3)]
    assert s["balanced"] and s["failed_by_reason"][SHARD_ERROR] == SHARD

    got, want = _manifest(wd), _manifest(ref_wd)
    assert got.num_rows == want.num_rows == len(set(got.column("uid").to_pylist()))
    dup_of_failed = pc.greater_equal(pc.fill_null(want.column("dup_of"), -1), 3 * SHARD)
    same = pc.invert(pc.and_(dup_of_failed, pc.less(want.column("uid"), 3 * SHARD)))
    assert _other_rows(got.filter(same), 3).equals(_other_rows(want.filter(same), 3))
    for k in (0, 1, 2):  # killed shards: redone once, identical bytes to the local run's
        assert pq.read_table(wd / "annotate" / f"0000{k}.parquet").equals(
            pq.read_table(ref_wd / "annotate" / f"0000{k}.parquet"))

    (wd / PLAN).unlink()
    run(recipe_from_dict(recipe_dict(corpus, wd)), quiet=True)
    assert _manifest(wd).equals(want)


def test_failing_export_shard_keeps_decisions_and_is_retried(faulty, local_run, corpus, tmp_path):
    """An export shard that keeps failing (a full disk, an object store refusing the PUT) must not
    turn select's decisions into failures nor unbalance the accounting: its kept rows stay kept,
    are not exported, and carry export_error=shard_error until the next run exports them."""
    ref_wd, ref = local_run
    wd = tmp_path / "wd"
    shutil.copytree(ref_wd, wd, ignore=shutil.ignore_patterns("export", "_export_state", "summary.json",
                                                              FAILED_SHARDS_FILE))
    write_plan(wd, "export", always_raise=[1])
    recipe = recipe_from_dict(recipe_dict(corpus, wd))
    s = run(recipe, quiet=True)

    assert [(f["stage"], f["shard"]) for f in s["failed_shards"]] == [("export", 1)]
    want = _manifest(ref_wd)
    lost = _shard_rows(want, 1).filter(pc.field("decision") == "kept").num_rows
    assert lost > 0
    assert s["balanced"] and s["kept"] == ref["kept"] and s["rejected"] == ref["rejected"]
    assert s["exported"] == ref["exported"] - lost and s["export_failed"] == ref["export_failed"] + lost
    got = _manifest(wd)
    bad, ref_bad = _shard_rows(got, 1), _shard_rows(want, 1)
    assert bad.column("decision").equals(ref_bad.column("decision"))
    assert bad.column("reason").equals(ref_bad.column("reason"))
    kept = bad.filter(pc.field("decision") == "kept")
    assert set(kept.column("export_error").to_pylist()) == {SHARD_ERROR}
    assert not any(bad.column("exported").to_pylist())
    tar_rows = {u for f in (wd / "export" / "shards").glob("*.parquet") for u in pq.read_table(f).column("uid").to_pylist()}
    assert tar_rows and not set(range(SHARD, 2 * SHARD)) & tar_rows

    (wd / PLAN).unlink()
    s2 = run(recipe, quiet=True)
    assert s2["failed_shards"] == [] and s2["exported"] == ref["exported"]
    assert _manifest(wd).equals(want)

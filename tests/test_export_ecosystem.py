"""The export as the ecosystem reads it: open_clip's trainer sizes it from sizes.json, wids from its
shard index, Hugging Face `datasets` loads two runs (one scored, one not) together, keys never
collide across runs or bootstrap rounds, and a killed export resumes to the same bytes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline.config import recipe_from_dict
from pipeline.runner import run
from tests.conftest import recipe_dict

# Model-free outputs of the session's reference run, reused so each run here only re-selects and
# re-exports (and run B scores). Not run.json: a new run directory draws its own id.
REUSED = ("input", "download", "download_raw", "annotate")


def _fresh(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in REUSED:
        if (src / name).exists():
            shutil.copytree(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from models.clip.testing import tiny_open_clip_dir

    return tiny_open_clip_dir(tmp_path_factory.mktemp("oc"))


@pytest.fixture(scope="module")
def runs(local_run, corpus, clip_dir, tmp_path_factory):
    """A: rules and dedup, 16 samples per tar. B: scored by a tiny CLIP, no dedup, tars cut by
    bytes: the manifests must still have one schema."""
    ref, _ = local_run
    root = tmp_path_factory.mktemp("eco")
    a = _fresh(ref, root / "a")
    sa = run(recipe_from_dict(recipe_dict(corpus, a, export={"samples_per_shard": 16})), quiet=True)
    b = _fresh(ref, root / "b")
    d = recipe_dict(corpus, b, stages=["download", "annotate", "score", "select", "export"],
                    export={"bytes_per_shard": 60_000})
    d["score"] = {"device": "cpu", "batch_size": 32, "rows_per_call": 64,
                  "backends": {"*": {"kind": "open_clip", "path": str(clip_dir)}}}
    sb = run(recipe_from_dict(d), quiet=True)
    return (a, sa), (b, sb)


def _tars(wd: Path) -> list[Path]:
    return sorted((wd / "export" / "shards").glob("*.tar"))


def _members(tar: Path) -> list[str]:
    with tarfile.open(tar) as tf:
        return tf.getnames()


def _keys(wd: Path) -> list[str]:
    return [m.rsplit(".", 1)[0] for t in _tars(wd) for m in _members(t) if m.endswith(".json")]


def test_sizes_index_stats_and_even_tars(runs):
    for wd, s in runs:
        shards = wd / "export" / "shards"
        sizes = json.loads((shards / "sizes.json").read_text())
        tars = _tars(wd)
        assert sorted(sizes) == [t.name for t in tars] and len(tars) >= 3
        assert sum(sizes.values()) == s["exported"] == s["kept"] > 0
        for t in tars:
            assert len(_members(t)) == 3 * sizes[t.name]
            st = json.loads((shards / f"{t.stem}_stats.json").read_text())
            assert st["successes"] == st["count"] == sizes[t.name] and st["status_dict"] == {"success": st["count"]}
            rows = pq.read_table(shards / f"{t.stem}.parquet")
            assert rows.num_rows == st["count"] and set(rows.column("status").to_pylist()) == {"success"}
        index = json.loads((shards / "shardindex.json").read_text())
        assert index["__kind__"] == "wids-shard-index-v1"
        assert {x["url"]: x["nsamples"] for x in index["shardlist"]} == sizes
        assert s["export_shards"] == [{"tar": f"shards/{k}", "samples": v} for k, v in sizes.items()]
    (a, _), (b, _) = runs
    counts = sorted(json.loads((a / "export" / "shards" / "sizes.json").read_text()).values())
    assert counts[-1] - counts[0] <= 1 and counts[-1] <= 16  # cut evenly over the run, not per input shard


def test_export_folder_holds_only_published_files(runs):
    for wd, s in runs:
        names = {p.relative_to(wd / "export").as_posix() for p in (wd / "export").rglob("*") if p.is_file()}
        internal = [n for n in names if not (n.startswith("manifest/") or n.startswith("shards/"))]
        assert not internal, internal
        con = duckdb.connect()
        # The glob that used to double rows (resume markers beside the manifest) now sees the manifest.
        n, kept = con.execute(f"SELECT count(*), count(*) FILTER (decision = 'kept') FROM "
                              f"read_parquet('{wd}/export/manifest/*.parquet')").fetchone()
        assert n == s["input"] and kept == s["kept"]
        assert not list((wd / "export").glob("*.parquet"))


def test_keys_unique_across_runs_and_kept_in_manifest(runs):
    (a, sa), (b, sb) = runs
    ka, kb = _keys(a), _keys(b)
    assert len(set(ka)) == len(ka) == sa["kept"] and len(set(kb)) == len(kb) == sb["kept"]
    assert not set(ka) & set(kb)
    man = pq.read_table(a / "export" / "manifest").to_pylist()
    kept = {r["key"]: r["uid"] for r in man if r["exported"]}
    assert set(kept) == set(ka)
    run_id = json.loads((a / "run.json").read_text())["run_id"]
    assert all(k == f"{run_id}_{u:09d}" for k, u in kept.items())


def test_bootstrap_rounds_do_not_collide(runs, corpus, tmp_path):
    import pipeline.bootstrap as B

    (a, sa), _ = runs
    # A later round's run shares round 0's model-free outputs, as bootstrap sets it up.
    r1 = tmp_path / "round_1" / "run"
    B.share_model_free_outputs(a, r1)
    s1 = run(recipe_from_dict(recipe_dict(corpus, r1, export={"samples_per_shard": 16})), quiet=True)
    assert s1["kept"] == sa["kept"] and not set(_keys(a)) & set(_keys(r1))


def test_one_schema_whatever_stages_ran(runs):
    (a, _), (b, _) = runs
    ma, mb = (pq.read_schema(sorted((w / "export" / "manifest").glob("*.parquet"))[0]) for w in (a, b))
    assert ma == mb and ma.metadata[b"mmcurate.schema_version"] == b"1"
    assert str(ma.field("clip_score").type) == "float" and "scorer" in str(ma.field("captions").type)
    ja, jb = (json.loads(tarfile.open(_tars(w)[0]).extractfile(f"{_keys(w)[0]}.json").read()) for w in (a, b))
    assert list(ja) == list(jb)
    assert ja["clip_score"] is None and ja["captions"][0]["score"] is None and ja["clip_model"] is None
    assert jb["clip_score"] is not None and jb["schema_version"] == ja["schema_version"] == 1


def test_every_score_names_its_model(runs, clip_dir):
    _, (b, _) = runs
    for t in _tars(b):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    j = json.loads(tf.extractfile(m).read())
                    assert j["clip_model"] and j["captions"][0]["scorer"] == j["clip_model"]
                    assert j["captions"][0]["score"] == j["clip_score"]


def test_open_clip_trains_without_sample_count(runs, clip_dir, tmp_path):
    (a, sa), _ = runs
    tars = _tars(a)
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", "::".join(map(str, tars)),
           "--dataset-type", "webdataset", "--model", f"local-dir:{clip_dir}", "--device", "cpu",
           "--precision", "fp32", "--batch-size", "16", "--workers", "0", "--epochs", "1",
           "--warmup", "1", "--lr", "1e-4", "--save-frequency", "0", "--logs", str(tmp_path),
           "--name", "eco", "--log-every-n-steps", "1", "--seed", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "number of dataset samples must be specified" not in log
    # The epoch is sized from sizes.json: the kept count rounded up to whole batches.
    seen = -(-sa["kept"] // 16) * 16
    assert f"Train Epoch: 0 [{seen}/{seen} (100%)]" in (tmp_path / "eco" / "out.log").read_text(), log[-3000:]
    assert "train_num_samples: None" in (tmp_path / "eco" / "params.txt").read_text()


def test_hf_datasets_loads_two_runs_together(runs, tmp_path):
    datasets = pytest.importorskip("datasets")
    from stages.export_schema import hf_features

    (a, sa), (b, sb) = runs
    # The unscored run first: its null scores would type the column as null without the schema.
    files = [str(t) for t in _tars(a) + _tars(b)]
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               features=hf_features(), cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == sa["kept"] + sb["kept"]
    assert len(set(ds["__key__"])) == ds.num_rows
    scored = [j for j in ds["json"] if j["clip_score"] is not None]
    assert len(scored) == sb["kept"] and all(j["captions"][0]["scorer"] for j in scored)
    man = [str(p) for w in (a, b) for p in sorted((w / "export" / "manifest").glob("*.parquet"))]
    mds = datasets.load_dataset("parquet", data_files={"train": man}, split="train",
                                cache_dir=str(tmp_path / "hf"))
    assert mds.num_rows == sa["input"] + sb["input"]
    assert sum(1 for e in mds["exported"] if e) == sa["kept"] + sb["kept"]


def test_wids_reads_both_indexes(runs, tmp_path, monkeypatch):
    import wids

    # wids' default cache names a copy by its whole URL; its cache_dir names it by file name only,
    # where two exports' 00000.tar would meet.
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids"))

    (a, sa), (b, sb) = runs
    spec = tmp_path / "both.json"
    spec.write_text(json.dumps({"wids_version": 1, "name": "both", "datasets": [
        {"source_url": str(w / "export" / "shards" / "shardindex.json")} for w in (a, b)]}))
    ds = wids.ShardListDataset(str(spec), transformations=[])
    assert len(ds) == sa["kept"] + sb["kept"]
    keys = {ds[i]["__key__"] for i in range(len(ds))}
    assert len(keys) == len(ds)
    first = ds[0]
    assert ".jpg" in first and json.loads(first[".json"].getvalue())["key"] == first["__key__"]


def test_killed_export_resumes_to_the_same_bytes(runs, corpus, tmp_path):
    (a, sa), _ = runs
    copy = tmp_path / "a"
    shutil.copytree(a, copy)
    want = {t.name: t.read_bytes() for t in _tars(copy)}
    manifest = pq.read_table(copy / "export" / "manifest")
    # Killed mid-finish: one tar's stats never landed, another tar is gone; and one input
    # shard's staged samples and marker are gone (killed mid-shard).
    tars = _tars(copy)
    (copy / "export" / "shards" / f"{tars[0].stem}_stats.json").unlink()
    tars[1].unlink()
    (copy / "_export_state" / "00002.parquet").unlink()
    (copy / "_export_state" / "staged" / "00002.tar").unlink()
    (copy / "export" / "manifest" / "00001.parquet").unlink()  # deleted by hand: rebuilt
    s = run(recipe_from_dict(recipe_dict(corpus, copy, export={"samples_per_shard": 16})), quiet=True)
    assert s["exported"] == sa["exported"]
    assert {t.name: t.read_bytes() for t in _tars(copy)} == want
    assert pq.read_table(copy / "export" / "manifest").equals(manifest)

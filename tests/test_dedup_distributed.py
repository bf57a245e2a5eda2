"""The distributed dedup path (Ray tasks, a real local Ray with 2 workers) and the in-process
path give the same decisions: exact keys, near-duplicate images in several k-means buckets,
semantic duplicates per CLIP model, and a real column store through the stage."""
import importlib.util
import os

import numpy as np
import pyarrow as pa
import pytest

from stages.dedup import DedupConfig, LocalMapper, TableSource, run_dedup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def mapper():
    from pipeline.dedup_ray import RayMapper

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    try:
        yield RayMapper()
    finally:
        ray.shutdown()


def _bench():
    spec = importlib.util.spec_from_file_location("dedup_scale", os.path.join(ROOT, "bench", "dedup_scale.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _same(a, b):
    assert np.array_equal(a.uid, b.uid) and np.array_equal(a.rep, b.rep) and np.array_equal(a.reason, b.reason)


@pytest.fixture(scope="module")
def corpus():
    """Planted near copies (crop + resize), exact image and URL repeats (bench generator)."""
    t, truth = _bench().synthesise(6000, seed=3, n_proto=400)
    return t, truth


def test_exact_and_near_agree_across_buckets_and_paths(corpus, mapper):
    t, truth = corpus
    cfg = DedupConfig(semantic_threshold=None, bucket_rows=800, exact=["url", "sha256", "caption_image"])
    local = run_dedup(TableSource(t, 700), cfg)
    dist = run_dedup(TableSource(t, 1100), cfg, mapper=mapper)  # other shard layout too
    _same(local, dist)
    rep, _ = local.lookup(t.column("uid").to_numpy())
    caught = np.mean(rep[truth["copy"]] == rep[truth["src"]])
    assert caught > 0.85 and local.reason.tolist().count(4) > 0.8 * len(truth["copy"])
    # One bucket (exact k-NN over all rows) finds the same planted pairs up to a few at borders.
    one, _ = run_dedup(TableSource(t), cfg.model_copy(update={"bucket_rows": 10_000})).lookup(t.column("uid").to_numpy())
    assert np.mean(one[truth["copy"]] == one[truth["src"]]) - caught < 0.02


def test_semantic_per_model_agrees_and_is_a_star(mapper):
    rng = np.random.default_rng(0)
    n, d = 3000, 32
    base = rng.standard_normal((n, d)).astype(np.float32)
    src = rng.choice(n - 300, 300, replace=False)
    base[n - 300:] = base[src] + 0.05 * rng.standard_normal((300, d)).astype(np.float32)
    model = np.where(np.arange(n) % 7 == 0, "zh-clip", "en-clip")
    model[n - 300:] = model[src]
    t = pa.table({"uid": np.arange(n, dtype=np.int64) * 2 + 1,
                  "img_emb": pa.array(list(base.astype(np.float16)), pa.list_(pa.float16())),
                  "clip_model": model, "clip_score": rng.random(n).astype(np.float32)})
    cfg = DedupConfig(semantic_threshold=0.94, bucket_rows=500, near="off", exact=[])
    local = run_dedup(TableSource(t, 400), cfg)
    _same(local, run_dedup(TableSource(t, 900), cfg, mapper=mapper))
    uid = t.column("uid").to_numpy()
    rep, why = local.lookup(uid)
    assert np.mean(rep[n - 300:] == rep[src]) > 0.95 and set(w for w in why if w) == {"dup_semantic"}
    # Every member is similar to its own representative (a star), and the kept row scores best.
    x = base / np.linalg.norm(base, axis=1, keepdims=True)
    pos = (rep - 1) // 2
    assert np.all((x * x[pos]).sum(1)[rep != uid] >= 0.94 - 1e-3)
    score = t.column("clip_score").to_numpy()
    assert np.all(score[rep != uid] <= score[pos[rep != uid]])


def test_stage_on_a_column_store_same_with_ray(tmp_path, mapper):
    from tests.test_filters_dedup import _write_store
    from stages.dedup import StoreSource, select_rules
    from pipeline.config import Recipe

    good = "a small boat on a calm lake"
    rows = [dict(caption="IMG_0001.jpg", sha="a" * 64, clip=0.4), dict(caption=good, sha="a" * 64, clip=0.3),
            dict(caption=good + " at dawn", sha="b" * 64), dict(caption=good + " at dawn", sha="c" * 64)]
    store = _write_store(tmp_path, rows)
    recipe = Recipe(input={"path": str(tmp_path / "urls.parquet")}, workdir=str(tmp_path))
    cfg = DedupConfig(semantic_threshold=None, exact=["url", "sha256", "caption"])
    rules = select_rules(recipe)
    local = run_dedup(StoreSource(store), cfg, rules, LocalMapper())
    _same(local, run_dedup(StoreSource(store), cfg, rules, mapper))
    assert local.uid.tolist() == [0, 3] and local.rep.tolist() == [1, 2]


def test_two_level_assignment_agrees_across_paths(corpus, mapper, monkeypatch):
    """Above EXACT_ASSIGN_MAX buckets rows are assigned through the two-level index, built on the
    driver and shipped to the tasks: both paths still decide alike, and the planted pairs found
    stay within a few of the exact assignment's (forced here: 30 buckets in 6 coarse cells, 2 probed)."""
    from filters.dedup import buckets

    t, truth = corpus
    uids = t.column("uid").to_numpy()
    cfg = DedupConfig(semantic_threshold=None, bucket_rows=200, exact=["url", "sha256", "caption_image"])
    exact, _ = run_dedup(TableSource(t, 700), cfg).lookup(uids)
    monkeypatch.setattr(buckets, "EXACT_ASSIGN_MAX", 10)
    monkeypatch.setattr(buckets, "COARSE_PROBES", 2)
    local = run_dedup(TableSource(t, 700), cfg)
    _same(local, run_dedup(TableSource(t, 1100), cfg, mapper=mapper))
    two, _ = local.lookup(uids)
    caught = np.mean(two[truth["copy"]] == two[truth["src"]])
    assert caught > 0.85 and abs(caught - np.mean(exact[truth["copy"]] == exact[truth["src"]])) < 0.02

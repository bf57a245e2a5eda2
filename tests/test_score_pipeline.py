"""The score stage inside the pipeline: Ray and local give the same scores, thresholds per
language, and broken rows become reasons."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import SelectConfig, recipe_from_dict
from pipeline.runner import run
from stages.select import top_fraction_cutoffs
from tests.conftest import recipe_dict

STAGES = ["download", "annotate", "score", "dedup", "select", "export"]
# Only the CLIP rules decide (and download/decode failures).
PERMISSIVE = {"reject_duplicates": False, "min_short_side": 0, "max_aspect_ratio": 100,
              "reject_uninformative": False, "reject_filenames": False, "reject_hashtag_only": False,
              "min_en_words": 0, "min_en_chars": 0, "min_zh_words": 0, "max_repetition": 1}


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    from models.clip.testing import tiny_chinese_clip_dir, tiny_open_clip_dir

    root = tmp_path_factory.mktemp("clip")
    return tiny_open_clip_dir(root / "oc"), tiny_chinese_clip_dir(root / "cn")


def score_recipe(corpus, wd, clip_dirs, **over):
    oc, cn = clip_dirs
    d = recipe_dict(corpus, wd, stages=STAGES)
    d["score"] = {"device": "cpu", "batch_size": 32, "rows_per_call": 64,
                  "backends": {"en": {"kind": "open_clip", "path": str(oc), "threshold": -1.0},
                               "zh": {"kind": "chinese_clip", "path": str(cn), "threshold": -1.0}}}
    d.update(over)
    return d


@pytest.fixture(scope="module")
def scored(local_run, corpus, clip_dirs, tmp_path_factory):
    wd_ref, _ = local_run
    wd = tmp_path_factory.mktemp("scored")
    shutil.copytree(wd_ref, wd, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("dedup", "select", "export", "summary.json"))
    summary = run(recipe_from_dict(score_recipe(corpus, wd, clip_dirs)), quiet=True)
    return wd, summary


def test_scores_are_normalised_and_row_aligned(scored):
    wd, s = scored
    assert s["balanced"]
    for f in sorted((wd / "score").glob("*.parquet")):
        t = pq.read_table(f)
        assert t.column("uid").equals(pq.read_table(wd / "input" / f.name, columns=["uid"]).column("uid"))
        ok = [i for i, v in enumerate(t.column("clip_score").to_pylist()) if v is not None]
        for i in ok:  # en and zh models differ in width, so rows differ in length
            img = np.asarray(t.column("img_emb")[i].as_py(), np.float32)
            txt = np.asarray(t.column("txt_emb")[i].as_py(), np.float32)
            assert abs(np.linalg.norm(img) - 1) < 2e-3 and abs(np.linalg.norm(txt) - 1) < 2e-3
            assert abs(float(img @ txt) - t.column("clip_score")[i].as_py()) < 2e-3


def test_routing_by_language_and_errors_become_reasons(scored):
    wd, _ = scored
    m = pq.read_table(wd / "export" / "manifest").to_pylist()
    models = {r["lang"]: r["clip_model"] for r in m if r["clip_score"] is not None}
    assert models["en"] != models["zh"] and "chinese" in models["zh"].lower()
    for r in m:
        if not r["decode_ok"]:
            assert r["clip_score"] is None and r["decision"] == "failed"
        if r["clip_error"] == "empty_caption" and r["decode_ok"]:
            assert r["decision"] == "rejected"


def test_ray_scores_equal_local(scored, corpus, clip_dirs, tmp_path):
    wd, _ = scored
    copy = tmp_path / "wd"
    shutil.copytree(wd, copy, ignore=shutil.ignore_patterns("score", "dedup", "select", "export"))
    run(recipe_from_dict(score_recipe(corpus, copy, clip_dirs, executor="ray")), quiet=True)
    for f in sorted((wd / "score").glob("*.parquet")):
        a, b = pq.read_table(f), pq.read_table(copy / "score" / f.name)
        assert a.equals(b), f.name


def test_per_language_threshold_and_top_fraction(scored, corpus, clip_dirs):
    wd, _ = scored
    t = pq.read_table(wd / "score", columns=["uid", "clip_score"])
    lang = pq.read_table(wd / "annotate", columns=["lang"]).column("lang").to_pylist()
    scores = np.array([np.nan if v is None else v for v in t.column("clip_score").to_pylist()])
    en = scores[[l == "en" and not np.isnan(s) for l, s in zip(lang, scores)]]
    cut_en = float(np.median(en))
    # Random tiny models embed every image alike, so semantic dedup would merge them all: off here.
    # Thresholds per language: en at its median, zh permissive.
    run(recipe_from_dict(score_recipe(corpus, wd, clip_dirs, dedup={"semantic_threshold": None},
                                      select={**PERMISSIVE, "min_clip_score": {"en": cut_en, "zh": -1.0}})), quiet=True)
    m = pq.read_table(wd / "export" / "manifest").to_pylist()
    for r in m:
        if r["reason"] == "clip_score":
            assert r["lang"] == "en" and r["clip_score"] < cut_en
    assert any(r["reason"] == "clip_score" for r in m)
    # top fraction per language, computed globally in select: exactly ceil(f * n) per language
    run(recipe_from_dict(score_recipe(corpus, wd, clip_dirs, dedup={"semantic_threshold": None},
                                      select={**PERMISSIVE, "keep_top_fraction": 0.3})), quiet=True)
    m = pq.read_table(wd / "export" / "manifest").to_pylist()
    for lg in ("en", "zh"):
        rows = [r for r in m if r["lang"] == lg and r["clip_score"] is not None]
        kept = [r for r in rows if r["reason"] != "clip_top_fraction"]
        assert len(kept) == int(np.ceil(0.3 * len(rows))), lg
        assert min(r["clip_score"] for r in kept) >= max(r["clip_score"] for r in rows if r not in kept)


def test_top_fraction_is_exact_with_ties():
    scores = np.array([0.5, 0.5, 0.5, 0.5, 0.1, np.nan])
    cuts = top_fraction_cutoffs(scores, ["en"] * 6, np.arange(6), SelectConfig(keep_top_fraction=0.5))
    assert cuts == {"en": (0.5, 2)}  # 3 of 5 scored rows: uids 0, 1, 2 by score then uid

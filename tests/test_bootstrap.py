"""Bootstrap rounds on a tiny corpus: round 1 is scored and captioned by round 0's separate
filter and captioner copies, and an interrupted bootstrap resumes without redoing work."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import pipeline.bootstrap as B
from pipeline.config import recipe_from_dict
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def boot(local_run, corpus, tmp_path_factory):
    wd = tmp_path_factory.mktemp("boot")
    d = recipe_dict(corpus, wd)
    d["bootstrap"] = {"rounds": 2, "train_steps": 4, "head_steps": 2, "batch_size": 8,
                      "eval_split": str(corpus / "test" / "test.parquet"), "eval_max_images": 6,
                      "capfilt": {"n_captions": 1, "max_len": 8, "batch_size": 16, "web_threshold": 0.0},
                      "score": {"rows_per_call": 64}, "select": {"keep_top_fraction": 0.9}}
    recipe = recipe_from_dict(d)
    return recipe, recipe.model_dump(mode="json"), wd


def test_rounds_wire_models_and_resume(boot, monkeypatch):
    recipe, raw, wd = boot
    # Round 0 only (an interruption between rounds).
    [r0] = B.bootstrap(recipe, raw, rounds=1)
    assert (wd / "round_0" / "DONE").exists() and r0["kept"] > 0 and "itc_r_mean" in r0
    for head in ("model", "filter", "captioner"):
        assert (wd / "round_0" / head / "model.pt").exists()
    cfg_f = json.loads((wd / "round_0" / "filter" / "config.json").read_text())
    cfg_c = json.loads((wd / "round_0" / "captioner" / "config.json").read_text())
    assert cfg_f["loss_weights"]["lm"] == 0 and cfg_c["loss_weights"]["itm"] == 0
    model_mtime = (wd / "round_0" / "model" / "model.pt").stat().st_mtime_ns

    # Round 1 is interrupted after training, during evaluation.
    real_eval = B._evaluate
    monkeypatch.setattr(B, "_evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        B.bootstrap(recipe, raw, rounds=2)
    assert not (wd / "round_1" / "DONE").exists() and (wd / "round_1" / "model" / "DONE").exists()
    round1_model = (wd / "round_1" / "model" / "model.pt").stat().st_mtime_ns
    monkeypatch.setattr(B, "_evaluate", real_eval)
    res = B.bootstrap(recipe, raw, rounds=2)
    assert [m["round"] for m in res] == [0, 1]
    # Nothing finished was redone.
    assert (wd / "round_0" / "model" / "model.pt").stat().st_mtime_ns == model_mtime
    assert (wd / "round_1" / "model" / "model.pt").stat().st_mtime_ns == round1_model

    # Round 1 was scored by round 0's filter and captioned by its captioner.
    used = json.loads((wd / "round_1" / "run" / "recipe.json").read_text())
    assert used["score"]["backends"]["*"]["path"].endswith("round_0/filter")
    assert used["capfilt"]["captioner"]["path"].endswith("round_0/captioner")
    m = pq.read_table(wd / "round_1" / "run" / "export" / "manifest").to_pylist()
    scored = [r for r in m if r["clip_score"] is not None]
    assert scored and any(r["capfilt_candidates"] for r in m)
    # Downloads were shared, not fetched again.
    assert not (wd / "round_1" / "run" / "download_raw").exists() or \
        (wd / "round_1" / "run" / "download" / "00000.parquet").stat().st_ino == \
        (wd / "round_0" / "run" / "download" / "00000.parquet").stat().st_ino

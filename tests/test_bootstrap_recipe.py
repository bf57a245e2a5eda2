"""Which models a later bootstrap round plugs into its recipe (no training needed)."""
from __future__ import annotations

from pathlib import Path

from pipeline.bootstrap import model_recipe, round_recipe
from pipeline.config import BootstrapConfig, recipe_from_dict


def _base(tmp_path: Path) -> dict:
    return {"input": {"path": str(tmp_path / "urls.parquet")}, "workdir": str(tmp_path / "w"),
            "executor": "local", "stages": ["download", "annotate", "dedup", "select", "export"]}


def test_later_round_scores_and_captions_with_previous_round(tmp_path):
    d = round_recipe(_base(tmp_path), BootstrapConfig(), tmp_path, 1)
    rec = recipe_from_dict(d)
    assert rec.stages == ["download", "annotate", "score", "dedup", "capfilt", "select", "export"]
    assert d["score"]["backends"]["*"]["path"] == str(tmp_path / "round_0" / "filter")
    assert d["capfilt"]["captioner"] == {"kind": "albef", "path": str(tmp_path / "round_0" / "captioner")}
    assert d["capfilt"]["filter"] == {"kind": "albef", "path": str(tmp_path / "round_0" / "filter")}


def test_itc_filter_option_uses_the_filter_heads_similarity(tmp_path):
    bcfg = BootstrapConfig(capfilt_filter="itc", capfilt={"web_threshold": 0.3})
    d = model_recipe(_base(tmp_path), bcfg, tmp_path / "round_0", tmp_path / "round_1" / "run")
    rec = recipe_from_dict(d)
    f = rec.capfilt.filter
    assert f.kind == "clip" and f.clip.kind == "mmcurate" and f.clip.path == str(tmp_path / "round_0" / "filter")
    assert rec.capfilt.web_threshold == 0.3


def test_round0_rules_only_drops_model_stages(tmp_path):
    base = {**_base(tmp_path), "stages": ["download", "annotate", "score", "dedup", "capfilt", "select", "export"],
            "score": {"backends": {"*": "open_clip:ViT-B-32:x"}}}
    d = round_recipe(base, BootstrapConfig(), tmp_path, 0)
    assert "score" not in d["stages"] and "capfilt" not in d["stages"] and "score" not in d

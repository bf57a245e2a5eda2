"""Stage name → implementation and its recipe section. Imports are lazy so that a machine
without a stage's heavy dependencies (e.g. no torch) can still run the others."""
from __future__ import annotations

import importlib
from typing import Any

from pipeline.config import Recipe
from pipeline.stage import RunContext, Stage

STAGES: dict[str, str] = {
    "download": "stages.download:DownloadStage",
    "annotate": "stages.annotate:AnnotateStage",
    "score": "stages.score:ScoreStage",
    "image_tags": "stages.image_tags:ImageTagsStage",
    "dedup": "stages.dedup:DedupStage",
    "capfilt": "stages.capfilt:CapfiltStage",
    "select": "stages.select:SelectStage",
    "export": "stages.export:ExportStage",
}


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise KeyError(f"stage {name!r} is not implemented; available: {sorted(STAGES)}")
    mod, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def stage_config(recipe: Recipe, name: str) -> Any:
    return getattr(recipe, name, None)


def build_stage(name: str, recipe: Recipe) -> Stage:
    ctx = RunContext(workdir=recipe.workdir, recipe=recipe, seed=recipe.seed)
    return stage_class(name)(stage_config(recipe, name), ctx)

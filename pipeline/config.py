"""Recipe YAML → typed objects. Unknown keys and bad values are errors that name the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STAGE_ORDER = ("download", "annotate", "score", "dedup", "capfilt", "select", "export")


class RecipeError(ValueError):
    """A recipe that cannot be run; the message says which key and what to do."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(Strict):
    path: str = Field(description="URL list: parquet, csv, tsv, jsonl, or a folder of them")
    format: Literal["auto", "parquet", "csv", "tsv", "jsonl"] = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    # Extra input columns carried through to the manifest (e.g. a source id).
    keep_cols: list[str] = []


class DownloadConfig(Strict):
    processes: int = Field(2, ge=1)
    threads: int = Field(32, ge=1)
    timeout: float = Field(10.0, gt=0, description="seconds per request")
    retries: int = Field(0, ge=0)
    # img2dataset's distributor; "auto" = multiprocessing locally, ray on a cluster address.
    distributor: Literal["auto", "multiprocessing", "ray"] = "auto"
    user_agent_token: str | None = "mmcurate"
    # Respect X-Robots-Tag noai/noimageai directives like img2dataset does by default.
    respect_robots_headers: bool = True


class AnnotateConfig(Strict):
    max_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb limit")


class SelectConfig(Strict):
    """Thresholds. A row is kept when every rule passes; otherwise its first failing rule names it."""

    min_short_side: int = Field(200, ge=0)
    min_width: int = Field(0, ge=0)
    min_height: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    max_bytes: int | None = Field(None, gt=0)


class ExportConfig(Strict):
    # Keep the original caption in the manifest for audit (switch off for privacy).
    keep_original_caption: bool = True
    jpeg_quality: int = Field(95, ge=1, le=100, description="re-encode quality for non-JPEG images")


class Recipe(Strict):
    input: InputConfig
    workdir: str
    stages: list[str] = ["download", "annotate", "select", "export"]
    shard_size: int = Field(10_000, ge=1, description="input rows per shard (unit of work and resume)")
    executor: Literal["ray", "local"] = "ray"
    ray_address: str | None = None
    seed: int = 0
    download: DownloadConfig = DownloadConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    select: SelectConfig = SelectConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STAGE_ORDER]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known stages: {list(STAGE_ORDER)}")
        if len(set(v)) != len(v):
            raise ValueError(f"stage listed twice in {v}")
        order = [STAGE_ORDER.index(s) for s in v]
        if order != sorted(order):
            raise ValueError(f"stages must follow the pipeline order {list(STAGE_ORDER)}; got {v}")
        return v

    @model_validator(mode="after")
    def _needs_download(self) -> "Recipe":
        if self.stages and self.stages[0] != "download":
            raise ValueError("the first stage must be 'download' (it turns the URL list into rows)")
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid recipe {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key (check its spelling; see README 'Recipe')")
        elif e["type"] == "missing":
            lines.append(f"  - {loc}: required key is missing")
        else:
            lines.append(f"  - {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def recipe_from_dict(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, source)) from None
    if base_dir is not None:  # relative paths in a recipe are relative to the recipe file
        if "://" not in recipe.input.path and not Path(recipe.input.path).is_absolute():
            recipe.input.path = str((base_dir / recipe.input.path).resolve())
        if "://" not in recipe.workdir and not Path(recipe.workdir).is_absolute():
            recipe.workdir = str((base_dir / recipe.workdir).resolve())
    return recipe


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {p} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p} is not valid YAML: {e}") from None
    if data is None:
        raise RecipeError(f"recipe {p} is empty; it needs at least 'input' and 'workdir'")
    if overrides and isinstance(data, dict):
        data = {**data, **overrides}
    return recipe_from_dict(data, str(p), base_dir=p.parent.resolve())

"""Recipe YAML → typed objects. Unknown keys and bad values are errors that name the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STAGE_ORDER = ("download", "annotate", "score", "image_tags", "dedup", "capfilt", "select", "export")


class RecipeError(ValueError):
    """A recipe that cannot be run; the message says which key and what to do."""


# Fingerprint roles of a setting (pipeline/fingerprint.py; README "How a run is stored"). A
# setting enters its own stage's fingerprint unless its Field says otherwise, so a new option is
# result-affecting until declared: RUNTIME for settings that cannot change an output (parallelism,
# batch sizes, device), SELECT_RULE for keep rules kept in another stage's section that only
# `select` applies (they enter select's fingerprint, so changing one never reruns that stage).
RUNTIME = {"fingerprint": "runtime"}
SELECT_RULE = {"fingerprint": "select"}


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
    processes: int = Field(2, ge=1, json_schema_extra=RUNTIME)
    threads: int = Field(32, ge=1, json_schema_extra=RUNTIME)
    timeout: float = Field(10.0, gt=0, description="seconds per request")
    retries: int = Field(0, ge=0)
    # img2dataset's distributor; "auto" = multiprocessing locally, ray on a cluster address.
    distributor: Literal["auto", "multiprocessing", "ray"] = Field("auto", json_schema_extra=RUNTIME)
    user_agent_token: str | None = "mmcurate"
    # Respect X-Robots-Tag noai/noimageai directives like img2dataset does by default.
    respect_robots_headers: bool = True
    # SSRF guard: URLs (and redirects) that reach these non-public address categories are
    # refused with reason blocked_address unless listed here; `[loopback]` serves a local corpus.
    allow_private: list[Literal["metadata", "loopback", "link_local", "private", "multicast",
                                "unspecified", "reserved"]] = []
    max_redirects: int = Field(5, ge=0, description="redirects followed per URL (reason too_many_redirects)")
    max_image_bytes: int | None = Field(50_000_000, gt=0, description="larger bodies fail with too_large")
    resolve_threads: int = Field(16, ge=1, description="unused: the pre-download check no longer resolves "
                                 "names (the connect-time guard does); kept so recipes that set it load",
                                 json_schema_extra=RUNTIME)


class AnnotateConfig(Strict):
    max_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb limit")
    # Caption cleaning (filters/text.py); the cleaned caption is `caption_clean`.
    boilerplate: str | None = Field(None, description="boilerplate list file; None: the shipped list")
    traditional_to_simplified: bool = True
    redact_pii: bool = True
    # What a PII match becomes (filters/pii.py): a placeholder in the caption's language, nothing
    # (remove), or a placeholder with the row rejected by select, reason pii_caption (reject).
    pii_action: Literal["placeholder", "remove", "reject"] = "placeholder"
    # Regions whose numbers are recognised without a country code (ISO codes libphonenumber
    # knows); a number written with + or 00 is recognised whatever its country.
    phone_regions: list[str] = ["CN", "HK", "MO", "TW", "US"]
    # An 8-digit Hong Kong/Macau or 10-digit US number written bare or with dashes and no phone
    # word nearby reads exactly like a SKU or part number, so by default it is left alone
    # (bench/text_real.py: recall 0.90 on such bare numbers, 1.0 on every other form). true
    # redacts them too, at about 1.8% of look-alikes redacted instead of 0.04%.
    phone_bare_numbers: bool = False
    redact_names: bool = False  # opt-in: name rules do not reach 0.95 precision (README)
    sensitive_lexicon: str | None = Field(None, description="one word per line; None: the shipped "
                                          "small default; '' disables")
    sensitive_action: Literal["mask", "reject", "tag"] = "mask"
    sensitive_min_len: int = Field(2, ge=1)
    sensitive_allowlist: list[str] = []
    sensitive_zh_boundaries: bool = True
    # Lexicon hygiene for a raw lexicon (the shipped one is curated: all strict). Everyday words
    # (among jieba's N most frequent entries; null: off) and entries found in more than
    # sensitive_max_share of the run's captions (measured on up to sensitive_share_sample of them
    # before annotate runs, reported in sensitive_exemptions.json; null: off) are not matched,
    # unless forced by sensitive_strict / sensitive_strict_file.
    sensitive_strict: list[str] = []
    sensitive_strict_file: str | None = None
    sensitive_common_rank: int | None = Field(20_000, ge=1)
    sensitive_max_share: float | None = Field(0.01, gt=0, le=1)
    sensitive_share_sample: int = Field(200_000, ge=1)

    @field_validator("phone_regions")
    @classmethod
    def _phone_regions(cls, v):
        import phonenumbers

        v = [r.upper() for r in v]
        bad = [r for r in v if r not in phonenumbers.SUPPORTED_REGIONS]
        if bad:
            raise ValueError(f"unknown phone regions {bad}: use two-letter region codes such as CN, HK, MO, TW, US")
        return v


class SelectConfig(Strict):
    """Thresholds. A row is kept when every rule passes; otherwise its first failing rule names it."""

    min_short_side: int = Field(200, ge=0)
    min_width: int = Field(0, ge=0)
    min_height: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    max_bytes: int | None = Field(None, gt=0)
    # Caption rules (stats from annotate). DataComp's English rule: > 2 words and > 5 chars.
    languages: list[str] = ["zh", "en"]
    min_en_words: int = Field(3, ge=0)
    min_en_chars: int = Field(6, ge=0)
    max_en_words: int = Field(128, ge=1)
    min_zh_words: int = Field(1, ge=0)
    max_zh_words: int = Field(128, ge=1)
    max_repetition: float = Field(0.6, ge=0, le=1)
    reject_filenames: bool = True
    reject_hashtag_only: bool = True
    reject_uninformative: bool = True
    # Duplicates (needs the dedup stage): rows whose dup_of names another row.
    reject_duplicates: bool = True
    # CLIP score (needs the score stage). A number applies to every language; a mapping sets it
    # per caption language with "*" as the fallback, e.g. {en: 0.28, zh: 0.25, "*": 0.25}.
    min_clip_score: float | dict[str, float] | None = None
    # Keep the top fraction by CLIP score within each language, computed over the whole run
    # (DataComp's best single filter kept the top 30%). Same number-or-mapping form.
    keep_top_fraction: float | dict[str, float] | None = None
    # Upper cut: captions that merely repeat text rendered in the image score suspiciously high.
    max_clip_score: float | None = None
    # Image tags (needs the image_tags stage with that head): reasons nsfw, watermark,
    # low_aesthetic; a row the head could not score is rejected as no_image_tags. None: off.
    max_nsfw: float | None = None
    max_watermark: float | None = None
    min_aesthetic: float | None = None

    @field_validator("keep_top_fraction")
    @classmethod
    def _fraction(cls, v):
        vals = v.values() if isinstance(v, dict) else [] if v is None else [v]
        if any(not 0 < x <= 1 for x in vals):
            raise ValueError("keep_top_fraction must be in (0, 1]")
        return v

    def per_lang(self, name: str, lang: str | None) -> float | None:
        v = getattr(self, name)
        if not isinstance(v, dict):
            return v
        return v.get(lang or "*", v.get("*"))


class ExportConfig(Strict):
    # Keep the original caption in the manifest for audit (switch off for privacy).
    keep_original_caption: bool = True
    jpeg_quality: int = Field(95, ge=1, le=100, description="quality of re-encoded jpg and webp images")
    # img2dataset's image options (README "Export"). JPEG bytes are copied untouched unless a
    # resize, max_side or another output format asks for a re-encode.
    output_format: Literal["jpg", "webp", "png"] = "jpg"
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "no"
    image_size: int = Field(256, ge=1, description="target side for resize_mode")
    resize_only_if_bigger: bool = False
    max_side: int | None = Field(None, ge=1, description="longer side cap (downscale only), any mode")
    # Tars are cut evenly over the whole run's kept samples: about samples_per_shard each, or by
    # the downloaded bytes when bytes_per_shard is set.
    samples_per_shard: int = Field(10_000, ge=1)
    bytes_per_shard: int | None = Field(None, ge=1)


class BootstrapConfig(Strict):
    """`mmcurate bootstrap`: rounds in which each round's model filters and captions the next."""

    rounds: int = Field(2, ge=1)
    # Round 0's scorer: "rules" drops the model stages; "recipe" runs the recipe's own score and
    # capfilt sections (e.g. a pretrained CLIP or BLIP the user has).
    round0: Literal["rules", "recipe"] = "rules"
    model: str = Field("tiny", description="ALBEF config name or YAML path for every round's model")
    train_steps: int = Field(300, ge=1, description="steps for each round's fresh model")
    head_steps: int = Field(60, ge=0, description="fine-tune steps for the filter and captioner copies")
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    eval_split: str | None = Field(None, description="held-out parquet (synth: corpus/test/test.parquet)")
    eval_max_images: int | None = Field(None, ge=1)
    eval_lang: Literal["en", "zh", "both"] = "both"
    # What scores captions in later rounds' capfilt: the filter head's ITM probability (BLIP), or
    # its ITC cosine. Measured by bench/capfilt_probe.py after 600 CPU steps, ITM told right from
    # wrong captions barely better than chance (AUC 0.47-0.58) and ITC web ones did (0.70-0.85).
    capfilt_filter: Literal["itm", "itc"] = "itm"
    # Settings merged into later rounds' score / capfilt / select sections (the model paths are
    # filled in by the bootstrap), e.g. select: {keep_top_fraction: 0.8}.
    score: dict[str, Any] = {}
    capfilt: dict[str, Any] = {}
    select: dict[str, Any] = {}


# Sections of model stages are validated by the stage's own config class (imported only when the
# stage is in the recipe, so a rules-only recipe never imports torch).
MODEL_STAGE_CONFIGS = {"score": "stages.score:ScoreConfig", "image_tags": "stages.image_tags:ImageTagsConfig",
                       "capfilt": "stages.capfilt:CapfiltConfig",
                       "dedup": "stages.dedup:DedupConfig"}


class Recipe(Strict):
    input: InputConfig
    workdir: str
    stages: list[str] = ["download", "annotate", "dedup", "select", "export"]
    shard_size: int = Field(10_000, ge=1, description="input rows per shard (unit of work and resume)")
    executor: Literal["ray", "local"] = "ray"
    ray_address: str | None = None
    seed: int = 0
    download: DownloadConfig = DownloadConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    score: Any = None
    dedup: Any = None
    capfilt: Any = None
    image_tags: Any = None
    select: SelectConfig = SelectConfig()
    export: ExportConfig = ExportConfig()
    bootstrap: BootstrapConfig | None = None

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


def _validate_model_sections(recipe: Recipe, data: dict, source: str) -> None:
    import importlib

    for name, target in MODEL_STAGE_CONFIGS.items():
        raw = data.get(name)
        if name not in recipe.stages:
            continue
        mod, cls_name = target.split(":")
        cls = getattr(importlib.import_module(mod), cls_name)
        if raw is not None and not isinstance(raw, dict):
            raise RecipeError(f"invalid recipe {source}:\n  - {name}: expected a mapping of settings")
        try:
            setattr(recipe, name, cls.model_validate(raw or {}))
        except ValidationError as e:
            msg = _format_errors(e, source).replace("\n  - ", f"\n  - {name}.")
            raise RecipeError(msg) from None


def _check_image_tags(recipe: Recipe, source: str) -> None:
    """A tag threshold needs its head in this recipe: without it select has no score to read."""
    from filters.image_tags import TAG_RULES

    tags = recipe.image_tags if "image_tags" in recipe.stages else None
    if "image_tags" in recipe.stages and "score" not in recipe.stages:
        raise RecipeError(f"invalid recipe {source}:\n  - stages: image_tags reads the score stage's "
                          "image embeddings; add score before it")
    if "image_tags" in recipe.stages and recipe.bootstrap is not None:
        # Later rounds re-score with their own model: its embeddings are not the heads' CLIP space.
        raise RecipeError(f"invalid recipe {source}:\n  - stages: image_tags cannot run inside bootstrap "
                          "rounds (each round re-scores with its own model, not the CLIP model the heads "
                          "were fitted on); tag and filter the input with a plain `mmcurate run` first")
    for r in TAG_RULES:
        tag = r.column.removesuffix("_score")
        if getattr(recipe.select, r.key) is not None and getattr(tags, tag, None) is None:
            raise RecipeError(f"invalid recipe {source}:\n  - select.{r.key}: needs the image_tags stage "
                              f"with a {tag} head (image_tags: {{{tag}: {{path: HEAD_FILE}}}}; README "
                              "'Image tags'), or remove the threshold")


def recipe_from_dict(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, source)) from None
    _validate_model_sections(recipe, data, source)
    _check_image_tags(recipe, source)
    if base_dir is not None:  # relative paths in a recipe are relative to the recipe file
        if "://" not in recipe.input.path and not Path(recipe.input.path).is_absolute():
            recipe.input.path = str((base_dir / recipe.input.path).resolve())
        if "://" not in recipe.workdir and not Path(recipe.workdir).is_absolute():
            recipe.workdir = str((base_dir / recipe.workdir).resolve())
        if recipe.capfilt is not None:
            recipe.capfilt.resolve_paths(base_dir)
        if recipe.image_tags is not None:
            recipe.image_tags.resolve_paths(base_dir)
        b = recipe.bootstrap
        if b is not None and b.eval_split and not Path(b.eval_split).is_absolute():
            b.eval_split = str((base_dir / b.eval_split).resolve())
        if recipe.score is not None:
            for spec in recipe.score.backends.values():
                if spec.path and "://" not in spec.path and not Path(spec.path).is_absolute() \
                        and (base_dir / spec.path).exists():
                    spec.path = str((base_dir / spec.path).resolve())
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

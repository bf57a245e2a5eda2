"""capfilt: BLIP's captioner + filter, per sample.

For every decodable image, a captioner writes `n_captions` synthetic captions (nucleus sampling
with `top_p`, BLIP's 0.9; or the n best of beam search with `beam`). A filter scores the web
caption and each synthetic one. This stage writes the candidates and their scores only; the
keep rules below live in this recipe section, where users know them, but `select` applies them
(filters/capfilt_rules.py), so changing one re-runs select and export and never the captioner:

* the web caption, if its score >= `web_threshold` (BLIP's 0.5 for an ITM head);
* up to `max_synthetic` synthetic captions whose score >= `synth_threshold`, best first; with
  `synth_margin` set, a synthetic caption must also outscore the row's web caption by that much
  (a captioner weaker than the web text then only replaces captions the filter doubts, instead
  of adding its noise to rows whose web caption is fine);
  (duplicates and copies of the web caption are dropped before scoring);
* `capfilt_pass` is False when no caption survives; `select` turns that into reason `capfilt`.

The primary caption (first in select's `captions`) is the kept web caption, or the best synthetic
one when the web caption failed (`primary: best` puts the highest-scoring kept caption first).

Languages. The captioner is configured per caption language (`captioner: {en: ..., zh: ...}`,
"*" for the rest, or one spec for all), and so may the filter be. A row's language is its `lang`
column, else it is detected from the caption's script. When the row's captioner does not write
the row's language (e.g. an English-only BLIP on a zh row), `on_language_mismatch` decides:

* `web_only` (default): no synthetic captions; only the web caption is filtered, so the row
  keeps it or fails capfilt on the filter's word.
* `skip`: leave the row untouched: every output is null and `capfilt_status` says
  `skipped_language`, so select does not judge the row on capfilt.

With `synthetic_language: match` (default) the row's language is passed to the captioner; the
project's own bilingual decoder then bans the other script's tokens, so it writes in the row's
language instead of whichever it drifts to. A synthetic caption that still comes out in another
language (a backend that cannot be steered) stays in `capfilt_candidates` with a null score and
is never kept.

Columns (one row per input row): `capfilt_candidates` (list<struct<text, origin, score>>: the
web caption first, then every synthetic one, each with its filter score; null when not evaluated:
no image, decode failure, skipped language, no filter for the language), `capfilt_filter` (the
filter route the row took, e.g. "en" or "*": which per-filter thresholds apply),
`capfilt_web_score` (float; null when the web caption is empty or not scored) and
`capfilt_status` (why a row was or was not evaluated: ok, web_only, filter_only,
skipped_language, no_image, decode_error, no_filter). `select` writes `captions` (the kept ones,
primary first) and `capfilt_pass` from them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Sequence

import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters.capfilt_rules import CAPTION_LIST, CAPTION_STRUCT, Candidate, decide  # noqa: F401 (re-exported)
from filters.image import to_rgb
from filters.language import detect_language
from models.capfilt_backends import (Captioner, CaptionerSpec, CaptionFilter, FilterSpec,
                                     load_captioner, load_filter)
from filters.language import route_language
from pipeline.config import RUNTIME, SELECT_RULE
from pipeline.stage import Resources, Stage

ANY_LANG = "*"
# Languages the script detector can tell apart; other rows are not checked for language match.
_DETECTABLE = {"en", "zh"}


class CapfiltConfig(BaseModel):
    """Recipe section for `capfilt`. `captioner` and `filter` take one spec for every language
    or a map from caption language to spec ("*" catches the rest)."""

    model_config = ConfigDict(extra="forbid")

    captioner: CaptionerSpec | dict[str, CaptionerSpec] | None = None
    filter: FilterSpec | dict[str, FilterSpec]
    n_captions: int = Field(default=5, ge=0)          # synthetic captions written per image
    top_p: float = Field(default=0.9, gt=0, le=1)
    beam: int | None = Field(default=None, ge=1)      # set: beam search instead of sampling
    max_len: int = Field(default=30, ge=1)            # new tokens per synthetic caption
    min_len: int = Field(default=3, ge=0)
    # Keep rules: applied by select (SELECT_RULE), so changing one never re-runs the captioner.
    web_threshold: float = Field(0.5, json_schema_extra=SELECT_RULE)
    synth_threshold: float = Field(0.5, json_schema_extra=SELECT_RULE)
    # set: synthetic must beat the web score by this
    synth_margin: float | None = Field(None, json_schema_extra=SELECT_RULE)
    # synthetic captions a sample may keep
    max_synthetic: int = Field(default=1, ge=0, json_schema_extra=SELECT_RULE)
    primary: Literal["web", "best"] = Field("web", json_schema_extra=SELECT_RULE)
    synthetic_language: Literal["match", "any"] = "match"
    on_language_mismatch: Literal["web_only", "skip"] = "web_only"
    device: str = Field("auto", json_schema_extra=RUNTIME)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # Rows per process() and per model forward. Not RUNTIME: sampling is seeded per batch (by its
    # first uid), so another batch size samples other synthetic captions.
    batch_size: int = Field(default=64, ge=1)
    decode_threads: int = Field(default=4, ge=1, json_schema_extra=RUNTIME)
    seed: int | None = None                           # None: the run's seed
    gpus: float = Field(default=1.0, gt=0, le=8, json_schema_extra=RUNTIME)  # per worker on CUDA
    cpus: float = Field(default=2.0, gt=0, json_schema_extra=RUNTIME)

    @model_validator(mode="after")
    def _check(self) -> "CapfiltConfig":
        if self.n_captions and self.captioner is None:
            raise ValueError("capfilt.n_captions > 0 needs a `captioner` (or set n_captions: 0 "
                             "to only filter web captions)")
        if self.beam and self.n_captions > self.beam:
            raise ValueError(f"capfilt.n_captions={self.n_captions} cannot exceed beam={self.beam}: "
                             "beam search returns at most `beam` captions")
        if isinstance(self.filter, dict) and not self.filter:
            raise ValueError("capfilt.filter is empty: give one spec, or a map with key '*'")
        if isinstance(self.captioner, dict) and not self.captioner:
            raise ValueError("capfilt.captioner is empty: give one spec, or a map with key '*'")
        return self

    def captioners(self) -> dict[str, CaptionerSpec]:
        if self.captioner is None or not self.n_captions:
            return {}
        return self.captioner if isinstance(self.captioner, dict) else {ANY_LANG: self.captioner}

    def filters(self) -> dict[str, FilterSpec]:
        return self.filter if isinstance(self.filter, dict) else {ANY_LANG: self.filter}

    def resolve_paths(self, base_dir: str | Path) -> "CapfiltConfig":
        """Make relative model `path`s relative to `base_dir` (the recipe file's folder)."""
        base = Path(base_dir)

        def fix(p: str | None) -> str | None:
            return str((base / p).resolve()) if p and not Path(p).is_absolute() else p

        for spec in [*self.captioners().values(), *self.filters().values()]:
            spec.path = fix(spec.path)
            clip = getattr(spec, "clip", None)
            if clip is not None and not isinstance(clip, str):
                clip.path = fix(clip.path)
        return self


route = route_language  # one routing rule for every per-language setting


# ---- candidates (pure) -----------------------------------------------------------------------
def synthetic_candidates(web: str, texts: Sequence[str], row_lang: str | None,
                         match_language: bool) -> list[Candidate]:
    """Candidates from generated texts: stripped, de-duplicated, copies of the web caption
    dropped; off-language ones get score None (never kept, still reported)."""
    seen = {web.strip().lower()} if web else set()
    out: list[Candidate] = []
    base = (row_lang or "").lower().split("-")[0]
    for t in texts:
        t = (t or "").strip()
        if not t or t.lower() in seen:
            continue
        seen.add(t.lower())
        out.append(Candidate(t, "synthetic", 0.0))
        if match_language and base in _DETECTABLE and detect_language(t) != base:
            out[-1].score = None
    return out


# ---- the stage -----------------------------------------------------------------------------
class CapfiltStage(Stage):
    name = "capfilt"
    needs = ("image", "caption", "decode_ok")
    optional = ("caption_clean", "lang")
    provides = ("capfilt_candidates", "capfilt_filter", "capfilt_web_score", "capfilt_status")

    @classmethod
    def fingerprint_extra(cls, recipe: Any) -> dict[str, Any]:
        # The run's seed drives sampling unless the section sets its own.
        cfg = getattr(recipe, "capfilt", None)
        return {"run_seed": recipe.seed} if getattr(cfg, "seed", None) is None else {}

    def __init__(self, config: CapfiltConfig | dict, run: Any = None):
        if not isinstance(config, CapfiltConfig):
            config = CapfiltConfig(**(config or {}))
        super().__init__(config, run)
        self.cfg: CapfiltConfig = config
        self.captioner_specs = config.captioners()
        self.filter_specs = config.filters()
        self.captioners: dict[str, Captioner] = {}
        self.filters: dict[str, CaptionFilter] = {}
        self._pool: ThreadPoolExecutor | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def _uses_cuda(self) -> bool:
        import torch

        devs = [s.device or self.cfg.device for s in
                [*self.captioner_specs.values(), *self.filter_specs.values()]]
        if any(str(d).startswith("cuda") for d in devs):
            return True
        return any(d in (None, "", "auto") for d in devs) and torch.cuda.is_available()

    def resources(self) -> Resources:
        if self._uses_cuda():
            return Resources(cpus=self.cfg.cpus, gpus=self.cfg.gpus, batch_size=self.cfg.batch_size)
        return Resources(cpus=1.0, gpus=0.0, batch_size=self.cfg.batch_size)

    def setup(self, state: Any = None) -> None:
        c = self.cfg
        kw = dict(device=c.device, precision=c.precision, batch_size=c.batch_size)
        loaded_c: dict[str, Captioner] = {}
        for key, spec in self.captioner_specs.items():
            ident = spec.model_dump_json(exclude={"languages"})
            if ident not in loaded_c:
                loaded_c[ident] = load_captioner(spec, **kw)
            self.captioners[key] = loaded_c[ident]
        loaded_f: dict[str, CaptionFilter] = {}
        for key, fspec in self.filter_specs.items():
            ident = fspec.model_dump_json(exclude={"web_threshold", "synth_threshold"})
            if ident not in loaded_f:
                loaded_f[ident] = load_filter(fspec, **kw)
            self.filters[key] = loaded_f[ident]
        self._pool = ThreadPoolExecutor(c.decode_threads, thread_name_prefix="capfilt-decode")

    def _seed(self, batch: pa.Table) -> int:
        base = self.cfg.seed if self.cfg.seed is not None else getattr(self.run, "seed", 0) or 0
        first = batch.column("uid")[0].as_py() if "uid" in batch.column_names and batch.num_rows else 0
        # Tied to the rows, not the call order, so a resumed or re-sharded run samples the same.
        return (base * 1_000_003 + int(first)) % (2 ** 63)

    # ---- per batch -------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        if not self.filters:
            self.setup(None)
        c = self.cfg
        n = batch.num_rows
        names = batch.column_names
        if "image" not in names:
            raise ValueError("capfilt needs an 'image' column (image bytes from download)")
        if "caption" not in names and "caption_clean" not in names:
            raise ValueError("capfilt needs 'caption_clean' (annotate) or 'caption' (input list)")
        # Never fall back to the raw caption row by row: it may hold the PII that cleaning removed.
        cap_col = "caption_clean" if "caption_clean" in names else "caption"
        web = [w.strip() if isinstance(w, str) else "" for w in batch.column(cap_col).to_pylist()]
        langs_in = batch.column("lang").to_pylist() if "lang" in names else [None] * n
        langs = [lg or detect_language(w) for lg, w in zip(langs_in, web)]
        dec_ok = batch.column("decode_ok").to_pylist() if "decode_ok" in names else [None] * n
        datas = batch.column("image").to_pylist()

        status: list[str] = ["ok"] * n
        cap_key: list[str | None] = [None] * n
        flt_key: list[str | None] = [None] * n
        for i in range(n):
            if not datas[i]:
                status[i] = "no_image"
            elif dec_ok[i] is False:
                status[i] = "decode_error"
        images = self._decode([datas[i] if status[i] == "ok" else None for i in range(n)])
        for i in range(n):
            if status[i] != "ok":
                continue
            if images[i] is None:
                status[i] = "decode_error"
                continue
            flt_key[i] = route(langs[i], list(self.filter_specs))
            if flt_key[i] is None:
                status[i] = "no_filter"
                continue
            if not self.captioner_specs:
                status[i] = "filter_only"
                continue
            key = route(langs[i], list(self.captioner_specs))
            if key is not None and self.captioner_specs[key].writes(langs[i]):
                cap_key[i] = key
            elif c.on_language_mismatch == "skip":
                status[i] = "skipped_language"
            else:
                status[i] = "web_only"

        # Synthetic captions, one captioner at a time (a worker may hold one per language).
        synth: list[list[str]] = [[] for _ in range(n)]
        seed = self._seed(batch)
        steer = c.synthetic_language == "match"
        for key in dict.fromkeys(k for k in cap_key if k is not None):
            rows = [i for i in range(n) if cap_key[i] == key]
            texts = self.captioners[key].caption([images[i] for i in rows], n=c.n_captions,
                                                 top_p=c.top_p, max_len=c.max_len, beam=c.beam,
                                                 min_len=c.min_len, seed=seed,
                                                 lang=[langs[i] for i in rows] if steer else None)
            for i, t in zip(rows, texts):
                synth[i] = t

        cands: list[list[Candidate] | None] = [None] * n
        for i in range(n):
            if status[i] in ("ok", "web_only", "filter_only"):
                cl = [Candidate(web[i], "web", 0.0)] if web[i] else []
                cl += synthetic_candidates(web[i], synth[i], langs[i], c.synthetic_language == "match")
                cands[i] = cl

        # Score: one image against all of its candidates, grouped by filter.
        for key in dict.fromkeys(k for k, cl in zip(flt_key, cands) if cl is not None):
            rows = [i for i in range(n) if flt_key[i] == key and cands[i]]
            groups = [[cd for cd in cands[i] if cd.score is not None] for i in rows]  # type: ignore[union-attr]
            scores = self.filters[key].score_groups([images[i] for i in rows],
                                                    [[cd.text for cd in g] for g in groups])
            for g, s in zip(groups, scores):
                for cd, v in zip(g, s):
                    cd.score, cd.scorer = float(v), self.filters[key].name

        cand_col: list[list[dict] | None] = [None] * n
        web_score: list[float | None] = [None] * n
        for i in range(n):
            cl = cands[i]
            if cl is None:
                continue
            cand_col[i] = [k.as_dict() for k in cl]
            web_score[i] = next((k.score for k in cl if k.origin == "web"), None)
        return pa.table({
            "capfilt_candidates": pa.array(cand_col, CAPTION_LIST),
            "capfilt_filter": pa.array([k if cl is not None else None for k, cl in zip(flt_key, cands)],
                                       pa.string()),
            "capfilt_web_score": pa.array(web_score, pa.float32()),
            "capfilt_status": pa.array(status, pa.string()),
        })

    def _decode(self, datas: list[bytes | None]) -> list[Image.Image | None]:
        def one(d: bytes | None) -> Image.Image | None:
            if not d:
                return None
            try:
                return to_rgb(d)
            except ValueError:  # the row's decode_error (from annotate) says why
                return None

        if self._pool is None:
            return [one(d) for d in datas]
        return list(self._pool.map(one, datas))


def capfilt_pairs(stage: CapfiltStage, images: list[bytes | None], captions: list[str],
                  langs: list[str | None] | None = None) -> pa.Table:
    """Run capfilt on a few pairs without building a table by hand (notebooks, benchmarks)."""
    n = len(images)
    t = pa.table({"uid": pa.array(range(n), pa.int64()), "image": pa.array(images, pa.binary()),
                  "caption": pa.array(captions, pa.string()),
                  "lang": pa.array(langs or [None] * n, pa.string())})
    return stage.process(t)

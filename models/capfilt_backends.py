"""Captioner and filter backends for the CapFilt stage (BLIP's bootstrapping of captions).

A *captioner* writes n synthetic captions per image; a *filter* scores (image, caption) pairs.
Both come from the project's own ALBEF-style checkpoint (decoder and ITM head), from Hugging
Face BLIP (`BlipForConditionalGeneration`, `BlipForImageTextRetrieval`; a hub id or a local dir
saved with save_pretrained), or, for the filter only, from any CLIP backend of `models.clip`.

Filters score *groups*: one image against its web caption and all its synthetic captions. Each
backend encodes the image once and reuses its features for every caption of the group, which
is where CapFilt spends its time (n + 1 texts per image).

Score scales differ: ITM heads give a match probability (BLIP's keep threshold is 0.5), CLIP
gives a cosine (useful thresholds are around 0.2-0.35 and depend on the model).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.clip.base import resolve_device, resolve_dtype
from models.clip.factory import BackendSpec, load_backend, parse_spec

Precision = Literal["auto", "fp32", "fp16", "bf16"]


# ---- specs (recipe) ------------------------------------------------------------------------
class CaptionerSpec(BaseModel):
    """Which model writes synthetic captions.

    kind albef: `path` is a checkpoint dir written by the project's trainer (bilingual when its
    tokenizer was trained on both languages). kind blip: `model` (hub id, e.g.
    Salesforce/blip-image-captioning-base) or `path` (local dir with model + processor).
    `languages` are the caption languages the model writes (None: any); a row whose language is
    not among them is a language mismatch (see the stage's `on_language_mismatch`).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["albef", "blip"]
    path: str | None = None
    model: str | None = None
    languages: list[str] | None = None
    # BLIP was trained with this prefix for captioning; it is stripped from the output.
    prompt: str = "a picture of "
    # Fingerprint roles as in pipeline/config.py. batch_size stays result-affecting: sampled
    # captions depend on which images share a generate() call and its seed.
    device: str | None = Field(None, json_schema_extra={"fingerprint": "runtime"})
    precision: Precision | None = None
    batch_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "CaptionerSpec":
        if self.kind == "albef" and not self.path:
            raise ValueError("captioner kind 'albef' needs `path` (a checkpoint dir from the trainer)")
        if self.kind == "blip" and not (self.model or self.path):
            raise ValueError("captioner kind 'blip' needs `model` (hub id) or `path` (local dir)")
        if self.languages is None and self.kind == "blip":
            # Released BLIP captioners are English-only.
            self.languages = ["en"]
        return self

    def writes(self, lang: str | None) -> bool:
        if self.languages is None or "*" in self.languages:
            return True
        return _base_lang(lang) in {_base_lang(x) for x in self.languages}


class FilterSpec(BaseModel):
    """Which model scores captions against their image.

    kind albef: ITM head of a trainer checkpoint (`path`). kind blip_itm: HF
    BlipForImageTextRetrieval (`model` or `path`). kind clip: cosine of a `models.clip` backend
    given in `clip` (a BackendSpec or a 'open_clip:ViT-B-32:tag' style string).
    `web_threshold` / `synth_threshold` override the stage's when this filter's scale differs.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["albef", "blip_itm", "clip"]
    path: str | None = None
    model: str | None = None
    clip: BackendSpec | str | None = None
    # Keep rules applied by `select` (fingerprint roles as in pipeline/config.py).
    web_threshold: float | None = Field(None, json_schema_extra={"fingerprint": "select"})
    synth_threshold: float | None = Field(None, json_schema_extra={"fingerprint": "select"})
    device: str | None = Field(None, json_schema_extra={"fingerprint": "runtime"})
    precision: Precision | None = None
    batch_size: int | None = Field(default=None, ge=1, json_schema_extra={"fingerprint": "runtime"})
    max_len: int = Field(default=35, ge=4)  # token limit when tokenizing captions to score

    @model_validator(mode="after")
    def _check(self) -> "FilterSpec":
        if self.kind == "albef" and not self.path:
            raise ValueError("filter kind 'albef' needs `path` (a checkpoint dir from the trainer)")
        if self.kind == "blip_itm" and not (self.model or self.path):
            raise ValueError("filter kind 'blip_itm' needs `model` (hub id) or `path` (local dir)")
        if self.kind == "clip":
            if self.clip is None:
                raise ValueError("filter kind 'clip' needs `clip` (a score backend spec, e.g. "
                                 "'open_clip:ViT-B-32:laion2b_s34b_b79k')")
            self.clip = parse_spec(self.clip)
        return self


def _base_lang(lang: str | None) -> str:
    return str(lang or "").lower().replace("_", "-").split("-")[0]


# ---- interfaces ----------------------------------------------------------------------------
class Captioner(ABC):
    name: str = "captioner"

    @abstractmethod
    def caption(self, images: Sequence[Image.Image], n: int, top_p: float = 0.9,
                max_len: int = 30, beam: int | None = None, min_len: int = 3,
                seed: int | None = None, lang: Sequence[str | None] | None = None) -> list[list[str]]:
        """n captions per image: nucleus sampling, or the n best beams when `beam` is set.
        `lang` is the language each image's captions should be in; a backend that can steer its
        decoder (the own bilingual model) does, the others ignore it."""


class CaptionFilter(ABC):
    name: str = "filter"

    @abstractmethod
    def score_groups(self, images: Sequence[Image.Image],
                     texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Score image i against each of texts[i]; returns one float32 array per image."""

    def score_pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise ValueError(f"score_pairs scores pairs: got {len(images)} images and {len(texts)} texts")
        parts = self.score_groups(images, [[t] for t in texts])
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _flatten(texts: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """Texts of all groups in one list, and the image index of each."""
    flat = [t for group in texts for t in group]
    owner = np.repeat(np.arange(len(texts)), [len(g) for g in texts]).astype(np.int64)
    return flat, owner


def _split(scores: np.ndarray, texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
    bounds = np.cumsum([len(g) for g in texts])[:-1]
    return [a.astype(np.float32) for a in np.split(scores, bounds)]


# ---- the project's own model ---------------------------------------------------------------
@lru_cache(maxsize=4)
def _albef(path: str, device: str, batch_size: int) -> Any:
    # Captioner and filter often name the same checkpoint: load it once per worker.
    from models.albef.inference import AlbefInference

    return AlbefInference.load(path, device=device, batch_size=batch_size)


class AlbefCaptioner(Captioner):
    def __init__(self, path: str, device: torch.device, batch_size: int = 64):
        self.inf = _albef(str(Path(path).resolve()), str(device), batch_size)
        self.name = f"albef:{Path(path).name}"

    def caption(self, images, n, top_p=0.9, max_len=30, beam=None, min_len=3, seed=None, lang=None):
        if not images:
            return []
        return self.inf.caption(list(images), n=n, top_p=top_p, max_len=max_len, beam=beam,
                                min_len=min_len, seed=seed, lang=lang)


class AlbefItmFilter(CaptionFilter):
    def __init__(self, path: str, device: torch.device, batch_size: int = 64):
        self.inf = _albef(str(Path(path).resolve()), str(device), batch_size)
        self.name = f"albef_itm:{Path(path).name}"
        self.batch_size = batch_size

    @torch.no_grad()
    def score_groups(self, images, texts):
        if not images:
            return []
        flat, owner = _flatten(texts)
        out = np.zeros(len(flat), np.float32)
        bs = self.batch_size
        for i in range(0, len(images), bs):
            embeds, _ = self.inf.image_embeddings(list(images[i:i + bs]))
            sel = np.nonzero((owner >= i) & (owner < i + bs))[0]
            for j in range(0, len(sel), bs):
                rows = sel[j:j + bs]
                idx = torch.as_tensor(owner[rows] - i, device=embeds.device)
                out[rows] = self.inf.itm_from_embeddings(embeds[idx], [flat[r] for r in rows]).numpy()
        return _split(out, texts)


# ---- Hugging Face BLIP ---------------------------------------------------------------------
def _hf_source(path: str | None, model: str | None) -> str:
    if path:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"BLIP model directory {path} does not exist")
        return str(path)
    return str(model)


def _hf_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    return resolve_dtype(precision, device)


class BlipCaptioner(Captioner):
    def __init__(self, source: str, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 32, prompt: str = "a picture of "):
        from transformers import AutoProcessor, BlipForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(source)
        self.model = BlipForConditionalGeneration.from_pretrained(source, dtype=dtype).to(device).eval()
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.prompt = prompt
        self.name = f"blip:{source}"

    @torch.no_grad()
    def caption(self, images, n, top_p=0.9, max_len=30, beam=None, min_len=3, seed=None, lang=None):
        # BLIP's decoder writes one language; its spec's `languages` route the other rows.
        if beam and n > beam:
            raise ValueError(f"cannot return n={n} captions from beam={beam}; use n <= beam")
        if seed is not None:
            torch.manual_seed(seed)
        tok = self.processor.tokenizer
        out: list[list[str]] = []
        for i in range(0, len(images), self.batch_size):
            chunk = list(images[i:i + self.batch_size])
            px = self.processor.image_processor(chunk, return_tensors="pt").pixel_values
            prompt = tok([self.prompt.strip()] * len(chunk), return_tensors="pt")
            # generate() swaps [CLS] for the decoder's BOS and drops the final [SEP]: the
            # returned sequences start with those prompt_len tokens, which we cut off.
            prompt_len = prompt.input_ids.shape[1] - 1
            kw: dict[str, Any] = dict(max_new_tokens=max_len, min_new_tokens=min_len,
                                      num_return_sequences=n)
            if beam:
                kw.update(num_beams=beam, do_sample=False)
            else:  # pure nucleus sampling, as in BLIP's CapFilt (no top-k cut)
                kw.update(do_sample=True, top_p=top_p, top_k=0)
            seqs = self.model.generate(pixel_values=px.to(self.device, self.dtype),
                                       input_ids=prompt.input_ids.to(self.device),
                                       attention_mask=prompt.attention_mask.to(self.device), **kw)
            texts = tok.batch_decode(seqs[:, prompt_len:], skip_special_tokens=True)
            texts = [t.strip() for t in texts]
            out += [texts[k * n:(k + 1) * n] for k in range(len(chunk))]
        return out


class BlipItmFilter(CaptionFilter):
    def __init__(self, source: str, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 64, max_len: int = 35):
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        self.processor = AutoProcessor.from_pretrained(source)
        self.model = BlipForImageTextRetrieval.from_pretrained(source, dtype=dtype).to(device).eval()
        self.device, self.dtype, self.batch_size, self.max_len = device, dtype, batch_size, max_len
        self.name = f"blip_itm:{source}"

    @torch.no_grad()
    def score_groups(self, images, texts):
        if not images:
            return []
        flat, owner = _flatten(texts)
        out = np.zeros(len(flat), np.float32)
        bs, m = self.batch_size, self.model
        for i in range(0, len(images), bs):
            px = self.processor.image_processor(list(images[i:i + bs]), return_tensors="pt").pixel_values
            # Same computation as BlipForImageTextRetrieval.forward(use_itm_head=True), with the
            # vision tower run once per image instead of once per caption.
            embeds = m.vision_model(pixel_values=px.to(self.device, self.dtype)).last_hidden_state
            sel = np.nonzero((owner >= i) & (owner < i + bs))[0]
            for j in range(0, len(sel), bs):
                rows = sel[j:j + bs]
                e = embeds[torch.as_tensor(owner[rows] - i, device=self.device)]
                enc = self.processor.tokenizer([flat[r] for r in rows], padding=True, truncation=True,
                                               max_length=self.max_len, return_tensors="pt").to(self.device)
                hidden = m.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                        encoder_hidden_states=e,
                                        encoder_attention_mask=torch.ones(e.shape[:-1], dtype=torch.long,
                                                                          device=self.device)
                                        ).last_hidden_state
                logits = m.itm_head(hidden[:, 0, :]).float()
                out[rows] = logits.softmax(-1)[:, 1].cpu().numpy()
        return _split(out, texts)


# ---- CLIP ----------------------------------------------------------------------------------
class ClipFilter(CaptionFilter):
    def __init__(self, spec: BackendSpec, device: str | None, precision: str | None,
                 batch_size: int | None):
        self.backend = load_backend(spec, device=device, precision=precision, batch_size=batch_size)
        self.name = f"clip:{self.backend.name}"

    def score_groups(self, images, texts):
        if not images:
            return []
        flat, owner = _flatten(texts)
        img = self.backend.encode_images(list(images))
        txt = self.backend.encode_texts(flat) if flat else np.zeros((0, img.shape[1]), np.float32)
        return _split(np.einsum("nd,nd->n", img[owner], txt), texts)


# ---- factories -----------------------------------------------------------------------------
def load_captioner(spec: CaptionerSpec | dict, *, device: str | None = None,
                   precision: str | None = None, batch_size: int = 32) -> Captioner:
    """Load a captioner; keyword defaults apply where the spec leaves a field unset."""
    s = spec if isinstance(spec, CaptionerSpec) else CaptionerSpec(**spec)
    dev = resolve_device(s.device or device)
    bs = s.batch_size or batch_size
    if s.kind == "albef":
        return AlbefCaptioner(s.path or "", dev, bs)
    return BlipCaptioner(_hf_source(s.path, s.model), dev, _hf_dtype(s.precision or precision, dev),
                         bs, s.prompt)


def load_filter(spec: FilterSpec | dict, *, device: str | None = None,
                precision: str | None = None, batch_size: int = 64) -> CaptionFilter:
    s = spec if isinstance(spec, FilterSpec) else FilterSpec(**spec)
    bs = s.batch_size or batch_size
    if s.kind == "clip":
        return ClipFilter(s.clip, s.device or device, s.precision or precision, bs)  # type: ignore[arg-type]
    dev = resolve_device(s.device or device)
    if s.kind == "albef":
        return AlbefItmFilter(s.path or "", dev, bs)
    return BlipItmFilter(_hf_source(s.path, s.model), dev, _hf_dtype(s.precision or precision, dev),
                         bs, s.max_len)

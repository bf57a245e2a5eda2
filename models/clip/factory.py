"""`load_backend(spec)`: one entry point from a recipe's backend spec to a loaded scorer."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.clip.base import ClipBackend, resolve_device, resolve_dtype


class BackendSpec(BaseModel):
    """Which model scores a language's captions, where it runs, and its keep threshold.

    kind open_clip: `model` (architecture, e.g. ViT-B-32) + `pretrained` (tag or file; None for
    random init), or `path` (a dir with open_clip_config.json, or a checkpoint file + model).
    kind chinese_clip: `model` or `path` (hub id or local dir saved with save_pretrained).
    kind mmcurate: `path` (a checkpoint dir written by the project's trainer).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["open_clip", "chinese_clip", "mmcurate"]
    model: str | None = None
    pretrained: str | None = None
    path: str | None = None
    # Fingerprint roles as in pipeline/config.py (RUNTIME, SELECT_RULE), spelled out so that
    # models/ does not import the pipeline.
    # None: the score config's default ("auto")
    device: str | None = Field(None, json_schema_extra={"fingerprint": "runtime"})
    precision: Literal["auto", "fp32", "fp16", "bf16"] | None = None
    batch_size: int | None = Field(default=None, ge=1, json_schema_extra={"fingerprint": "runtime"})
    context_length: int | None = Field(default=None, ge=1)
    # Used by `select`, not here: each backend's cosine scale differs.
    threshold: float | None = Field(None, json_schema_extra={"fingerprint": "select"})

    @model_validator(mode="after")
    def _check_source(self) -> "BackendSpec":
        if self.kind == "mmcurate" and not self.path:
            raise ValueError("backend kind 'mmcurate' needs `path` (a trained checkpoint dir)")
        if self.kind == "chinese_clip" and not (self.model or self.path):
            raise ValueError("backend kind 'chinese_clip' needs `model` (hub id) or `path`")
        if self.kind == "open_clip" and not (self.model or self.path):
            raise ValueError("backend kind 'open_clip' needs `model` (e.g. ViT-B-32) or `path`")
        return self


_SHORTHAND = {"open_clip", "chinese_clip", "mmcurate"}


def parse_spec(spec: "BackendSpec | dict | str") -> BackendSpec:
    """Accepts a BackendSpec, a dict, or a string 'kind:model[:pretrained]' such as
    'open_clip:ViT-B-32:laion2b_s34b_b79k', 'chinese_clip:/models/cn-clip', 'mmcurate:/ckpt'."""
    if isinstance(spec, BackendSpec):
        return spec
    if isinstance(spec, dict):
        return BackendSpec(**spec)
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        if kind not in _SHORTHAND or not rest:
            raise ValueError(f"backend string {spec!r} must look like 'open_clip:ViT-B-32[:tag]', "
                             "'chinese_clip:<id or dir>' or 'mmcurate:<checkpoint dir>'")
        if kind == "open_clip":
            model, _, pretrained = rest.partition(":")
            return BackendSpec(kind=kind, model=model, pretrained=pretrained or None)
        if kind == "mmcurate":
            return BackendSpec(kind=kind, path=rest)
        return BackendSpec(kind=kind, model=rest)
    raise TypeError(f"backend spec must be a dict, str or BackendSpec, got {type(spec).__name__}")


def load_backend(spec: "BackendSpec | dict | str", *, device: str | None = None,
                 precision: str | None = None, batch_size: int | None = None) -> ClipBackend:
    """Load a scorer; keyword defaults apply where the spec leaves a field unset."""
    s = parse_spec(spec)
    dev = resolve_device(s.device or device)
    dtype = resolve_dtype(s.precision or precision, dev)
    bs = s.batch_size or batch_size or 256
    if s.kind == "open_clip":
        from models.clip.open_clip_backend import OpenClipBackend
        return OpenClipBackend(model=s.model, pretrained=s.pretrained, path=s.path, device=dev,
                               dtype=dtype, batch_size=bs, context_length=s.context_length)
    if s.kind == "chinese_clip":
        from models.clip.chinese_clip_backend import ChineseClipBackend
        return ChineseClipBackend(model=s.path or s.model or "", device=dev, dtype=dtype,
                                  batch_size=bs, context_length=s.context_length)
    from models.clip.mmcurate_backend import MmcurateBackend
    return MmcurateBackend(path=s.path or "", device=dev, dtype=dtype, batch_size=bs)

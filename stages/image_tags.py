"""image_tags: NSFW, watermark and aesthetic scores from small heads over the CLIP image
embeddings `score` stored (`img_emb`), so tagging costs no image decode and no CLIP forward.

Each score is a float32 column (null where the row could not be scored), with the head's name
beside it; `tag_error` says why a configured head left a row unscored:

* `no_embedding`: score stored no image embedding (no image, decode failure, no backend);
* `<tag>:dim_mismatch` / `<tag>:model_mismatch`: the row's embedding comes from a CLIP model
  the head was not fitted on (other width, or another model than the head's `clip_model`).
  Rows of several languages may be embedded by different models; a head applies only to its own.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters.image_tags import TAG_COLUMNS, TAGS
from models.heads import LoadedHead, load_head
from pipeline.stage import Resources, Stage


class HeadSpec(BaseModel):
    """One head: a file in a LAION format or written by `mmcurate train-head`."""

    model_config = ConfigDict(extra="forbid")

    path: str
    name: str | None = Field(None, description="recorded beside each score; default: the sidecar's or the file name")
    output: Literal["identity", "sigmoid", "softmax"] | None = Field(
        None, description="override the format's output transform (LAION NSFW: sigmoid; aesthetic: identity)")
    positive_class: int | None = Field(None, ge=0, description="for heads with several outputs (softmax)")
    clip_model: str | None = Field(None, description="score only rows whose clip_model is this one "
                                   "(default: the sidecar's; a width check always applies)")


class ImageTagsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nsfw: HeadSpec | None = None
    watermark: HeadSpec | None = None
    aesthetic: HeadSpec | None = None
    # How the work is batched, not what it computes: never part of the fingerprint.
    rows_per_call: int = Field(8192, ge=1, json_schema_extra={"fingerprint": "runtime"})

    @model_validator(mode="after")
    def _some_head(self) -> "ImageTagsConfig":
        if not any(getattr(self, t) for t in TAGS):
            raise ValueError("image_tags needs at least one head: nsfw, watermark or aesthetic "
                             "(each {path: FILE}; README 'Image tags')")
        return self

    def resolve_paths(self, base_dir: Any) -> None:
        from pathlib import Path

        for t in TAGS:
            spec = getattr(self, t)
            if spec and not Path(spec.path).is_absolute() and (Path(base_dir) / spec.path).exists():
                spec.path = str((Path(base_dir) / spec.path).resolve())


SCORE_COLS = {t: f"{t}_score" for t in TAGS}
HEAD_COLS = {t: f"{t}_head" for t in TAGS}


def embeddings(col: pa.ChunkedArray | pa.Array) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Per-row float32 vectors (None where null) from a fixed- or variable-size list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
        flat = arr.values.to_numpy(zero_copy_only=False)[arr.offset * d:(arr.offset + n) * d]
        mat = flat.astype(np.float32).reshape(n, d)
        return [mat[i] if valid[i] else None for i in range(n)], valid
    offs = arr.offsets.to_numpy()
    vals = arr.values.to_numpy(zero_copy_only=False).astype(np.float32)
    return [vals[offs[i]:offs[i + 1]] if valid[i] else None for i in range(n)], valid


class ImageTagsStage(Stage):
    name = "image_tags"
    needs = ("img_emb",)
    optional = ("clip_model",)
    provides = tuple(TAG_COLUMNS)

    def __init__(self, config: ImageTagsConfig | dict | None, run: Any = None):
        if not isinstance(config, ImageTagsConfig):
            config = ImageTagsConfig(**(config or {}))
        super().__init__(config, run)
        self.cfg: ImageTagsConfig = config
        self.heads: dict[str, LoadedHead] = {}

    def resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=0.0, batch_size=self.cfg.rows_per_call)

    def setup(self, state: Any = None) -> None:
        for t in TAGS:
            spec: HeadSpec | None = getattr(self.cfg, t)
            if spec is not None:
                h = load_head(spec.path, output=spec.output, positive_class=spec.positive_class, name=spec.name)
                if spec.clip_model:
                    h.clip_model = spec.clip_model
                self.heads[t] = h

    def process(self, batch: pa.Table) -> pa.Table:
        if not self.heads:
            self.setup()
        n = batch.num_rows
        if "img_emb" not in batch.column_names:
            raise ValueError("image_tags needs 'img_emb' (the score stage's image embeddings)")
        vecs, valid = embeddings(batch.column("img_emb"))
        models = (batch.column("clip_model").to_pylist() if "clip_model" in batch.column_names
                  else [None] * n)
        errors: list[list[str]] = [[] if valid[i] else ["no_embedding"] for i in range(n)]
        out: dict[str, pa.Array] = {}
        for t in TAGS:
            head = self.heads.get(t)
            scores = np.full(n, np.nan, np.float32)
            if head is not None:
                rows = []
                for i in range(n):
                    if not valid[i]:
                        continue
                    if len(vecs[i]) != head.in_dim:  # type: ignore[arg-type]
                        errors[i].append(f"{t}:dim_mismatch")
                    elif head.clip_model and models[i] != head.clip_model:
                        errors[i].append(f"{t}:model_mismatch")
                    else:
                        rows.append(i)
                if rows:
                    scores[rows] = head.score(np.stack([vecs[i] for i in rows]))
                    for i in rows:
                        if np.isnan(scores[i]):  # e.g. a non-finite stored vector
                            errors[i].append(f"{t}:not_finite")
            out[SCORE_COLS[t]] = pa.array(scores, pa.float32(), mask=np.isnan(scores))
            out[HEAD_COLS[t]] = pa.array([head.name if head is not None else None] * n, pa.string())
        out["tag_error"] = pa.array([";".join(e) if e else None for e in errors], pa.string())
        return pa.table({c: out[c] for c in self.provides})

"""dedup: the one global step. Groups exact duplicates (URL, image sha256, normalised caption,
(caption, image) pair), near-duplicate images (pHash Hamming distance <= k, through a
multi-index, never all pairs) and, when the score stage ran, semantic duplicates (image
embedding cosine >= tau, faiss). It writes `dup_of` (the representative's uid; a row that is kept
names itself) and `dup_reason`; it deletes nothing, select decides.

Scale: `prepare` reads only stat columns (int64 codes, 64-bit hashes, sizes, the 1,544-byte
near_sig), never image bytes. The near_sig column dominates: 1.5 GB per 1M rows, held once by
Arrow and once as the numpy matrix dedup verifies against (bench/dedup_scale.py: 1M rows peak
4.8 GB). Because uids are row positions, the result is two
arrays indexed by uid that every worker looks rows up in.
"""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from filters.dedup import (NEAR_MAX_CHROMA, NEAR_MAX_CROP, NEAR_MAX_DIFF, NEAR_MAX_RMS, NEAR_MAX_TEXTURE,
                           NEAR_NEIGHBORS, dup_of, near_dup_of, near_sigs, pair_codes)
from filters.hashing import phash_to_uint64
from filters.image import color_distance
from pipeline.stage import Resources, Stage

KEYS = ("url", "sha256", "caption", "caption_image")
log = logging.getLogger("mmcurate")


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Exact keys, in the order their reason is reported.
    exact: list[Literal["url", "sha256", "caption", "caption_image"]] = ["url", "sha256", "caption_image"]
    # Near-duplicate images: "signature" (near_sig thumbnails, aligned and verified; falls back to
    # pHash on runs annotated before near_sig existed), "phash", or "off".
    near: Literal["signature", "phash", "off"] = "signature"
    # signature: nearest neighbours checked per row; largest per-pixel difference (0-255) of the
    # aligned 32x32 thumbnails; largest crop per side; largest texture-byte difference; largest
    # per-pixel difference of the aligned chroma thumbnails; largest RMS difference (0-255) of
    # the 8x8 k-NN vectors for a pair to be verified at all (None: verify every neighbour).
    near_neighbors: int = Field(NEAR_NEIGHBORS, ge=1, le=100)
    near_max_diff: float = Field(NEAR_MAX_DIFF, ge=0, le=255)
    near_max_crop: float = Field(NEAR_MAX_CROP, ge=0, le=0.2)
    near_max_texture: float = Field(NEAR_MAX_TEXTURE, ge=0, le=255)
    near_max_chroma: float = Field(NEAR_MAX_CHROMA, ge=0, le=255)
    near_max_rms: float | None = Field(NEAR_MAX_RMS, ge=0, le=255)
    # near: phash: pHash Hamming distance (None: off).
    phash_max_distance: int | None = Field(4, ge=0, le=16)
    # Second check on pHash candidates: mean absolute difference (0-255) of the 4x4 colour
    # signatures. pHash is luma-only and collides on low-detail images (None: no check).
    color_max_distance: float | None = Field(12.0, ge=0, le=255)
    # Image-embedding cosine for semantic duplicates (needs score; None: off).
    semantic_threshold: float | None = Field(0.94, ge=-1, le=1)
    semantic_index: Literal["auto", "flat", "ivf", "clustered"] = "auto"
    # Guard: an embedding space in which more than this share of rows are "duplicates" is a
    # degenerate model (random or barely trained), not a corpus of copies; semantic dedup is then
    # skipped with a warning instead of wiping the run.
    semantic_max_fraction: float = Field(0.5, gt=0, le=1)


def _codes(values: list) -> np.ndarray:
    import pandas as pd

    codes, _ = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    return codes.astype(np.int64)


def compute_dups(t: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, list[str | None]]:
    """(dup_of, reason) for the rows of `t`, which holds uid and whatever stats exist."""
    uids = t.column("uid").to_numpy()
    n = len(uids)
    cols = t.column_names
    ok = np.array([bool(v) for v in t.column("decode_ok").to_pylist()]) if "decode_ok" in cols else np.ones(n, bool)
    w = np.nan_to_num(np.array(t.column("width").to_pylist(), dtype=float)) if "width" in cols else np.zeros(n)
    h = np.nan_to_num(np.array(t.column("height").to_pylist(), dtype=float)) if "height" in cols else np.zeros(n)
    # Usable rows win over failed ones, then the largest image, then the smallest uid.
    area = np.where(ok, w * h + 1, 0)
    sha = _codes([s if o else None for s, o in zip(t.column("sha256").to_pylist(), ok)]) \
        if "sha256" in cols else None
    # Factorised codes (not the raw 63-bit keys) so the (caption, image) pair code cannot overflow.
    cap = _codes(t.column("caption_key").to_pylist()) if "caption_key" in cols else None
    available = {"url": _codes(t.column("url").to_pylist()), "sha256": sha, "caption": cap,
                 "caption_image": pair_codes(cap, sha) if cap is not None and sha is not None else None}
    keys = {k: available[k] for k in cfg.exact if available.get(k) is not None}
    if cfg.near == "signature" and "near_sig" in cols:
        reps = _signature_dups(t, uids, keys, ok, w, h, area, cfg)
        reason = _reasons(uids, reps, keys, None, None, cfg, area, near_reason="dup_near")
        if cfg.semantic_threshold is not None and "img_emb" in cols:
            reps, reason = _semantic(t, uids, reps, reason, cfg)
        return reps, reason
    phash = valid = None
    if cfg.near != "off" and cfg.phash_max_distance is not None and "phash" in cols:
        phash, valid = phash_to_uint64(t.column("phash").to_pylist())
        valid &= ok
    verify = None
    if phash is not None and cfg.color_max_distance is not None and "color_sig" in cols:
        sigs = t.column("color_sig").to_pylist()
        verify = lambda a, b: np.array([color_distance(sigs[i], sigs[j]) <= cfg.color_max_distance
                                        for i, j in zip(a, b)], bool)
    reps = dup_of(uids, area=area, keys=keys, phash=phash, phash_valid=valid,
                  max_distance=cfg.phash_max_distance, phash_verify=verify)
    reason = _reasons(uids, reps, keys, phash, valid, cfg, area)
    if cfg.semantic_threshold is not None and "img_emb" in cols:
        reps, reason = _semantic(t, uids, reps, reason, cfg)
    return reps, reason


def _signature_dups(t: pa.Table, uids: np.ndarray, keys: dict, ok: np.ndarray, w: np.ndarray,
                    h: np.ndarray, area: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Exact groups first (transitive by nature), then near-duplicate stars among their
    representatives: only kept images can make another image redundant."""
    reps = dup_of(uids, area=area, keys=keys, max_distance=None)
    sigs, valid = near_sigs(t.column("near_sig"))
    valid &= ok & (reps == uids) & (w > 0) & (h > 0)
    log_aspect = np.log(np.where(valid, w, 1) / np.where(valid, h, 1))
    near = near_dup_of(uids, sigs, valid, log_aspect, area=area, neighbors=cfg.near_neighbors,
                       max_diff=cfg.near_max_diff, max_crop=cfg.near_max_crop,
                       max_texture=cfg.near_max_texture, max_chroma=cfg.near_max_chroma,
                       max_rms=cfg.near_max_rms)
    pos = np.searchsorted(uids, reps, sorter=np.argsort(uids))
    return near[np.argsort(uids)[pos]]


def _reasons(uids, reps, keys, phash, valid, cfg, area, near_reason: str = "dup_phash") -> list[str | None]:
    """Name each non-representative by the first key under which it equals another row."""
    out: list[str | None] = [None] * len(uids)
    todo = reps != uids
    for name, codes in keys.items():
        if not todo.any():
            break
        single = dup_of(uids, area=area, keys={name: codes}, max_distance=None)
        hit = todo & ((single != uids) | np.isin(uids, single[single != uids]))
        hit &= np.isin(reps, reps[single != uids]) | (single != uids)
        for i in np.flatnonzero(hit):
            out[i] = f"dup_{name}"
        todo &= ~hit
    for i in np.flatnonzero(todo):
        out[i] = near_reason
    return out


def _semantic(t, uids, reps, reason, cfg):
    from filters.semdedup import semantic_dup_of

    emb_col = t.column("img_emb")
    keep = np.flatnonzero((reps == uids) & np.array([v is not None for v in emb_col.to_pylist()]))
    if len(keep) < 2:
        return reps, reason
    vecs = [np.asarray(emb_col[int(i)].as_py(), np.float32) for i in keep]
    # Backends of different sizes: zero-pad to one width; rows only match within their model
    # (groups below), and padding changes no norm or dot product there.
    width = max(len(v) for v in vecs)
    emb = np.zeros((len(vecs), width), np.float32)
    for row, v in enumerate(vecs):
        emb[row, :len(v)] = v
    prio = np.array([np.nan if v is None else v for v in t.column("clip_score").to_pylist()], float)[keep] \
        if "clip_score" in t.column_names else None
    groups = np.array(t.column("clip_model").to_pylist(), dtype=object)[keep] \
        if "clip_model" in t.column_names else None
    sem = semantic_dup_of(emb, uids[keep], threshold=cfg.semantic_threshold, priority=prio,
                          index=cfg.semantic_index, groups=groups)
    n_dup = int((sem != uids[keep]).sum())
    if n_dup > cfg.semantic_max_fraction * len(keep):
        log.warning("semantic dedup would mark %d of %d rows as duplicates (> %.0f%%): the embeddings "
                    "look degenerate (untrained model?); skipping semantic dedup", n_dup, len(keep),
                    100 * cfg.semantic_max_fraction)
        return reps, reason
    pos = {int(u): i for i, u in enumerate(uids)}
    reps = reps.copy()
    for u, r in zip(uids[keep], sem):
        if r != u:
            reps[pos[int(u)]] = r
            reason[pos[int(u)]] = "dup_semantic"
    # Rows that pointed at a representative that just became a semantic duplicate follow it.
    reps = np.array([reps[pos[int(r)]] if reps[pos[int(r)]] != r else r for r in reps], np.int64)
    return reps, reason


class DedupStage(Stage):
    name = "dedup"
    provides = ("dup_of", "dup_reason")

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=65536)

    def prepare(self, store) -> dict:
        avail = store.column_sources("dedup")
        near = {"signature": ["near_sig", "phash", "color_sig"], "phash": ["phash", "color_sig"],
                "off": []}[self.config.near]
        wanted = ["url", "decode_ok", "width", "height", "sha256", "caption_key", *near,
                  "img_emb", "clip_score", "clip_model"]
        if self.config.semantic_threshold is None:
            wanted = wanted[:-3]
        t = store.read_all([c for c in wanted if c in avail])
        reps, reason = compute_dups(t, self.config)
        uids = t.column("uid").to_numpy()
        order = np.argsort(uids)
        return {"uids": uids[order], "dup_of": reps[order], "reason": [reason[i] for i in order]}

    def setup(self, state) -> None:
        self.state = state

    def process(self, batch: pa.Table) -> pa.Table:
        # Failed shards leave gaps in the uids, so look rows up rather than offset them.
        idx = np.searchsorted(self.state["uids"], batch.column("uid").to_numpy())
        return pa.table({"dup_of": pa.array(self.state["dup_of"][idx], pa.int64()),
                         "dup_reason": pa.array([self.state["reason"][i] for i in idx], pa.string())})

"""dedup: the one global step. Groups exact duplicates (URL, image sha256, normalised caption,
(caption, image) pair), near-duplicate images (near_sig thumbnails: k-NN candidates, crop-aligned
verification) and, when the score stage ran, semantic duplicates (image-embedding cosine >= tau).
It writes `dup_of` (the representative's uid; a row that is kept names itself) and `dup_reason`;
it deletes nothing, select decides. The representative is the best member by one documented
order (filters/dedup/core.best_first): passes select's other rules, then CLIP score, then image
size, then uid.

One algorithm, two ways to run it (`dedup.distributed`): every step is a map over shards and a
reduce over partitions, run in this process (LocalMapper) or as Ray tasks (pipeline/dedup_ray.py),
so both give the same decisions by construction:
  exact     map: per key, rows hash-partitioned by key value; reduce: groups of equal keys become
            edges. The driver joins the edges into components (memory follows the duplicates).
  near      map: the 8x8 summary of each signature, a uid-hashed sample trains k-means
            (`bucket_rows` rows a bucket); map: each row goes to its nearest bucket and the next
            ones within `bucket_ratio` of its distance (at most `bucket_probes`; above 20k buckets
            found through a two-level index, filters/dedup/buckets.py) with its full signature;
            reduce (a range of buckets a task): exact k-NN and verification inside each bucket. The driver builds stars from the verified edges.
  semantic  the same with the image embedding (SemDeDup: k-means, assign, compare within
            clusters in chunks), per CLIP model.
Up to `bucket_rows` candidate rows there is one bucket: exact k-NN / exact cosine over all rows.
The driver holds per-row arrays only for rows in a duplicate edge, never per-row Python objects.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from filters.dedup.buckets import assign, train_index
from filters.dedup.core import best_first, edge_components, edge_stars
from filters.dedup.exact import dup_of
from filters.dedup.near import (NEAR_MAX_CHROMA, NEAR_MAX_CROP, NEAR_MAX_DIFF, NEAR_MAX_RMS, NEAR_MAX_TEXTURE,
                                NEAR_NEIGHBORS, NEAR_SIG_BYTES, near_bucket_pairs, near_sigs, near_summary)
from filters.dedup.semantic import semantic_bucket_pairs
from filters.hashing import phash_to_uint64
from filters.image import color_distance
from pipeline.config import RUNTIME
from pipeline.stage import Resources, Stage

KEYS = ("url", "sha256", "caption", "caption_image")
REASONS = ("dup_url", "dup_sha256", "dup_caption", "dup_caption_image", "dup_near", "dup_phash",
           "dup_semantic")
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
    # Guard: an embedding space in which more than this share of rows are "duplicates" is a
    # degenerate model (random or barely trained), not a corpus of copies; semantic dedup is then
    # skipped with a warning instead of wiping the run.
    semantic_max_fraction: float = Field(0.5, gt=0, le=1)
    # Near and semantic candidates are compared inside k-means buckets of about this many rows
    # (one bucket, i.e. exact search over all rows, up to this many). Each row joins its nearest
    # bucket and the next ones whose centroid is at most `bucket_ratio` times as far, up to
    # `bucket_probes` buckets: rows near a border join both sides, rows deep in a cell only it.
    # (bench/dedup_buckets.py: at 10M rows, 2,000 cells, a planted pair shares a bucket 0.9988 of
    # the time this way for 2.77 buckets a row; 0.9706 with the 2 nearest buckets a row.)
    bucket_rows: int = Field(5_000, ge=2)
    bucket_probes: int = Field(4, ge=1, le=8)
    bucket_ratio: float = Field(1.1, ge=1.0)
    # Ray tasks (true), this process (false), or Ray when it is running and the run has at least
    # `distributed_min_rows` rows (auto). Both give the same decisions (RUNTIME: never a rerun).
    distributed: bool | Literal["auto"] = Field("auto", json_schema_extra=RUNTIME)
    distributed_min_rows: int = Field(1_000_000, ge=0, json_schema_extra=RUNTIME)


# ---- sources: where map tasks read their shard ------------------------------------------------

class TableSource:
    """An in-memory table cut into shards (for compute_dups, tests and benchmarks)."""

    def __init__(self, t: pa.Table, shard_rows: int = 1 << 16):
        self.t, self.shard_rows = t, shard_rows
        self.n_rows = t.num_rows

    def shards(self) -> list[int]:
        return list(range(max(1, math.ceil(self.n_rows / self.shard_rows))))

    def columns(self) -> set[str]:
        return set(self.t.column_names) - {"uid"}

    def read(self, shard: int, columns, optional=()) -> pa.Table:
        part = self.t.slice(shard * self.shard_rows, self.shard_rows)
        return part.select(["uid", *[c for c in columns if c in part.column_names and c != "uid"]])


class FileSource:
    """Parquet files, one shard each, holding uid and the dedup columns (bench/dedup_scale.py)."""

    def __init__(self, paths: list[str]):
        import pyarrow.parquet as pq

        self.paths = list(paths)
        self.n_rows = sum(pq.read_metadata(p).num_rows for p in self.paths)
        self._names = set(pq.read_schema(self.paths[0]).names) - {"uid"} if self.paths else set()

    def shards(self) -> list[int]:
        return list(range(len(self.paths)))

    def columns(self) -> set[str]:
        return self._names

    def read(self, shard: int, columns, optional=()) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(self.paths[shard], columns=["uid", *[c for c in columns if c in self._names]])


class StoreSource:
    """The run's column store, as seen by the dedup stage (columns of the stages before it)."""

    def __init__(self, store):
        self.store = store
        self.n_rows = store.n_rows
        self._names = set(store.column_sources("dedup"))

    def shards(self) -> list[int]:
        return list(self.store.shards())

    def columns(self) -> set[str]:
        return self._names

    def read(self, shard: int, columns, optional=()) -> pa.Table:
        return self.store.read(shard, [c for c in columns if c in self._names], upto="dedup")


class LocalMapper:
    """Runs map and reduce steps in this process, in order (the GPU machine has no Ray)."""

    workers = 1

    def map(self, fn, args_list: list[tuple], parts: int | None = None) -> list:
        return [fn(*a) for a in args_list]

    def put(self, x):
        return x

    def get(self, xs):
        return xs


# ---- per-row quality: the best-member order --------------------------------------------------

QUALITY = pa.schema([("uid", pa.int64()), ("passes", pa.bool_()), ("clip", pa.float32()), ("area", pa.float64())])


def quality_columns(source_cols: set[str], rules: list | None) -> list[str]:
    cols = {"decode_ok", "width", "height", "clip_score"}
    for r in _usable_rules(source_cols, rules):
        cols.update(r.columns)
    return sorted(c for c in cols if c in source_cols)


def _usable_rules(cols: set[str], rules: list | None) -> list:
    return [r for r in rules or [] if all(c in cols for c in r.columns)]


def _quality(t: pa.Table, rules: list | None) -> pa.Table:
    """uid, passes (select's other rules; without them: decodes), clip score, area (0 when the
    image is unusable, so a usable row always wins)."""
    n, names = t.num_rows, set(t.column_names)
    ok = pc.fill_null(t.column("decode_ok"), False).to_numpy(zero_copy_only=False) \
        if "decode_ok" in names else np.ones(n, bool)
    w = _num(t, "width", n)
    h = _num(t, "height", n)
    passes = ok.copy()
    for r in _usable_rules(names, rules):
        passes &= np.array([v is None for v in r.check(t)], bool)
    clip = _num(t, "clip_score", n, np.nan).astype(np.float32)
    return pa.table({"uid": t.column("uid"), "passes": passes, "clip": clip,
                     "area": np.where(ok, w * h + 1, 0.0)}, schema=QUALITY)


def _num(t: pa.Table, name: str, n: int, fill: float = 0.0) -> np.ndarray:
    if name not in t.column_names:
        return np.full(n, fill, np.float64)
    return pc.fill_null(t.column(name).cast(pa.float64()), fill).to_numpy(zero_copy_only=False)


class _Ranker:
    """best_first over the rows whose quality the driver received (only rows in an edge)."""

    def __init__(self, tables: list[pa.Table]):
        q = pa.concat_tables(tables, promote_options="default") if tables else QUALITY.empty_table()
        uid = q.column("uid").to_numpy()
        u, first = np.unique(uid, return_index=True)
        self.uid = u
        self.passes = q.column("passes").to_numpy(zero_copy_only=False)[first]
        self.clip = q.column("clip").to_numpy(zero_copy_only=False)[first]
        self.area = q.column("area").to_numpy()[first]

    def __call__(self, nodes: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.uid, nodes)
        if len(nodes) and (i.max() >= len(self.uid) or (self.uid[i] != nodes).any()):
            raise RuntimeError("dedup: a row in a duplicate edge came without its quality columns")
        return best_first(nodes, self.passes[i], self.clip[i], self.area[i])


# ---- exact keys ------------------------------------------------------------------------------

def _exact_map(source, shard: int, keys: list[str], rules, n_parts: int) -> list[pa.Table]:
    """Rows of one shard, hash-partitioned by (key, value), with their quality."""
    cols = set(source.columns())
    need = {"url": ["url"], "sha256": ["sha256", "decode_ok"], "caption": ["caption_key"],
            "caption_image": ["caption_key", "sha256", "decode_ok"]}
    t = source.read(shard, sorted({c for k in keys for c in need[k]} | set(quality_columns(cols, rules))))
    q = _quality(t, rules)
    parts: list[list[pa.Table]] = [[] for _ in range(n_parts)]
    for key_id, name in enumerate(keys):
        v = _key_values(t, name)
        if v is None:
            continue
        idx = np.flatnonzero(pc.is_valid(v).to_numpy(zero_copy_only=False))
        if not len(idx):
            continue
        v = v.take(idx)
        h = pd.util.hash_array(v.to_numpy(zero_copy_only=False).astype(object)) % np.uint64(n_parts)
        sub = pa.table({"key_id": np.full(len(idx), key_id, np.int8), "key": v}).append_column(
            "uid", q.column("uid").take(idx))
        for c in ("passes", "clip", "area"):
            sub = sub.append_column(c, q.column(c).take(idx))
        for p in np.unique(h):
            parts[int(p)].append(sub.take(np.flatnonzero(h == p)))
    empty = pa.schema([("key_id", pa.int8()), ("key", pa.large_string()), *QUALITY])
    return [pa.concat_tables(p) if p else empty.empty_table() for p in parts]


def _key_values(t: pa.Table, name: str) -> pa.Array | None:
    """The key of every row as a string (null: no key): usable rows only for image keys, empty
    strings are no key."""
    names = t.column_names
    ok = pc.fill_null(t.column("decode_ok"), False) if "decode_ok" in names else None

    def usable_sha():
        s = t.column("sha256").cast(pa.large_string())
        return s if ok is None else pc.if_else(ok, s, pa.scalar(None, pa.large_string()))

    if name == "url" and "url" in names:
        v = t.column("url").cast(pa.large_string())
    elif name == "sha256" and "sha256" in names:
        v = usable_sha()
    elif name == "caption" and "caption_key" in names:
        v = t.column("caption_key").cast(pa.large_string())
    elif name == "caption_image" and "caption_key" in names and "sha256" in names:
        v = pc.binary_join_element_wise(t.column("caption_key").cast(pa.large_string()), usable_sha(), pa.scalar(":", pa.large_string()))
    else:
        return None
    v = v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v
    return pc.if_else(pc.equal(v, ""), pa.scalar(None, pa.large_string()), v)


def _exact_reduce(*parts: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Edges (a, b, key_id) joining every row to the first row of its equal-key group, and the
    quality of the rows in them."""
    t = pa.concat_tables(parts)
    a, b, k = [], [], []
    kid = t.column("key_id").to_numpy()
    for key_id in np.unique(kid):
        sel = np.flatnonzero(kid == key_id)
        codes, _ = pd.factorize(t.column("key").take(sel).to_numpy(zero_copy_only=False))
        uid = t.column("uid").take(sel).to_numpy()
        o = np.lexsort((uid, codes))
        codes, uid = codes[o], uid[o]
        first = np.ones(len(codes), bool)
        first[1:] = codes[1:] != codes[:-1]
        leader = uid[np.flatnonzero(first)[np.cumsum(first) - 1]]
        m = ~first
        a.append(leader[m])
        b.append(uid[m])
        k.append(np.full(int(m.sum()), key_id, np.int8))
    return _edges_with_quality(t, a, b, k)


def _edges_with_quality(t: pa.Table, a: list, b: list, k: list | None = None) -> tuple[pa.Table, pa.Table]:
    a = np.concatenate(a) if a else np.zeros(0, np.int64)
    b = np.concatenate(b) if b else np.zeros(0, np.int64)
    edges = {"a": a, "b": b}
    if k is not None:
        edges["key_id"] = np.concatenate(k) if k else np.zeros(0, np.int8)
    involved = np.unique(np.concatenate([a, b]))
    uid = t.column("uid").to_numpy()
    rows = np.flatnonzero(np.isin(uid, involved))
    q = t.select(list(QUALITY.names)).take(rows)
    return pa.table(edges), q


# ---- near and semantic: k-means buckets --------------------------------------------------------

@dataclass
class BucketSpec:
    """What a bucketed method reads and compares (picklable: it travels to the tasks)."""
    kind: Literal["near", "semantic"]
    cfg: DedupConfig
    rules: list | None
    exclude: Any = None  # sorted uids that take no part (already duplicates)
    centroids: dict = field(default_factory=dict)  # group -> (first bucket id, BucketIndex or None)
    group: str | None = None  # partition and reduce one group (CLIP model) at a time
    width: int = 0  # payload bytes a row in that group

    def columns(self, cols: set[str]) -> list[str]:
        base = ["near_sig", "decode_ok", "width", "height"] if self.kind == "near" else ["img_emb", "clip_model"]
        return sorted((set(base) | set(quality_columns(cols, self.rules))) & cols)

    def rows(self, t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, group labels, vectors to bucket by, payload rows, log aspect, vector
        width per row), for rows of self.group when set."""
        n = t.num_rows
        uid = t.column("uid").to_numpy()
        keep = ~np.isin(uid, self.exclude) if self.exclude is not None and len(self.exclude) else np.ones(n, bool)
        if self.kind == "near":
            sigs, valid = near_sigs(t.column("near_sig"))
            w, h = _num(t, "width", n), _num(t, "height", n)
            ok = pc.fill_null(t.column("decode_ok"), False).to_numpy(zero_copy_only=False) \
                if "decode_ok" in t.column_names else np.ones(n, bool)
            idx = np.flatnonzero(valid & ok & (w > 0) & (h > 0) & keep)
            vec = near_summary(sigs, idx)
            return (idx, np.full(len(idx), "", object), vec, sigs[idx], np.log(w[idx] / h[idx]),
                    np.full(len(idx), vec.shape[1] if vec.ndim == 2 else 0))
        col = t.column("img_emb")
        has = pc.is_valid(col).to_numpy(zero_copy_only=False) & keep
        model = pc.fill_null(t.column("clip_model").cast(pa.string()), "").to_numpy(zero_copy_only=False) \
            if "clip_model" in t.column_names else np.full(n, "", object)
        if self.group is not None:
            has &= model == self.group
        idx = np.flatnonzero(has)
        lens = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        width = int(lens[idx].max()) if len(idx) else 0
        vec = np.zeros((len(idx), width), np.float32)
        # Backends of different widths: zero-padded to one width; rows only meet inside their
        # model's buckets, and padding changes no norm or dot product there.
        for L in np.unique(lens[idx]):
            sel = np.flatnonzero(lens[idx] == L)
            flat = pc.list_flatten(col.take(idx[sel])).to_numpy(zero_copy_only=False)
            vec[sel, :L] = np.asarray(flat, np.float32).reshape(len(sel), int(L))
        return idx, np.asarray(model[idx], object), vec, vec, np.zeros(len(idx)), lens[idx]

    def pairs(self, uids: np.ndarray, payload: np.ndarray, aspect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        if self.kind == "near":
            return near_bucket_pairs(uids, payload, aspect, neighbors=c.near_neighbors, max_diff=c.near_max_diff,
                                     max_crop=c.near_max_crop, max_texture=c.near_max_texture,
                                     max_chroma=c.near_max_chroma, max_rms=c.near_max_rms)
        return semantic_bucket_pairs(uids, payload, c.semantic_threshold)


def _sample_hash(uids: np.ndarray) -> np.ndarray:
    """A uniform 64-bit hash of the uid: the training sample is a property of the rows, not of
    the shard layout or the worker that read them."""
    x = np.asarray(uids, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return x ^ (x >> np.uint64(29))


def _sample_map(source, shard: int, spec: BucketSpec, keep_below: float) -> dict:
    """Per group: row count and the sampled rows' (uid, vector)."""
    t = source.read(shard, spec.columns(set(source.columns())))
    idx, groups, vec, _, _, dims = spec.rows(t)
    uid = t.column("uid").to_numpy()[idx]
    pick = _sample_hash(uid) < np.uint64(min(keep_below, 1.0) * 2.0 ** 64 - 1) if keep_below < 1 \
        else np.ones(len(uid), bool)
    out = {}
    for g in np.unique(groups):
        m = groups == g
        w = int(dims[m].max())  # one model, one width: shard padding removed
        out[str(g)] = (int(m.sum()), uid[m & pick], vec[m & pick][:, :w], w)
    return out


def _partition_map(source, shard: int, spec: BucketSpec, reducer_of_bucket: np.ndarray,
                   n_parts: int) -> list[pa.Table]:
    """Rows of one shard sent to the reducers of their buckets, with payload and quality."""
    t = source.read(shard, spec.columns(set(source.columns())))
    idx, groups, vec, payload, aspect, dims = spec.rows(t)
    if spec.kind == "semantic":
        vec = payload = vec[:, :spec.width // 4]
    q = _quality(t.take(idx), spec.rules)
    bucket_rows, buckets = [], []
    for g in np.unique(groups):
        m = np.flatnonzero(groups == g)
        first, cents = spec.centroids[str(g)]
        if cents is None:
            bucket_rows.append(m)
            buckets.append(np.full(len(m), first, np.int64))
            continue
        near = assign(vec[m], cents, spec.cfg.bucket_probes, spec.kind == "semantic", spec.cfg.bucket_ratio)
        joined = near.ravel() >= 0
        bucket_rows.append(np.repeat(m, near.shape[1])[joined])
        buckets.append(first + near.ravel()[joined])
    rows = np.concatenate(bucket_rows) if bucket_rows else np.zeros(0, np.int64)
    bucket = np.concatenate(buckets) if buckets else np.zeros(0, np.int64)
    width = spec.width
    pay = np.ascontiguousarray(payload).view(np.uint8).reshape(len(payload), width) if len(payload) \
        else np.zeros((0, width), np.uint8)
    out = []
    red = reducer_of_bucket[bucket] if len(bucket) else np.zeros(0, np.int64)
    for p in range(n_parts):
        sel = rows[red == p]
        buf = pa.py_buffer(np.ascontiguousarray(pay[sel]).reshape(-1))
        payload_col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(sel), [None, buf])
        out.append(pa.table({"bucket": bucket[red == p], "payload": payload_col, "aspect": aspect[sel],
                             **{c: q.column(c).take(sel) for c in QUALITY.names}}))
    return out


def _bucket_reduce(spec: BucketSpec, *parts: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Verified pairs inside every bucket of this reducer's range, and their rows' quality."""
    t = pa.concat_tables(parts)
    bucket = t.column("bucket").to_numpy()
    uid = t.column("uid").to_numpy()
    o = np.lexsort((uid, bucket))
    bucket, uid = bucket[o], uid[o]
    width = t.schema.field("payload").type.byte_width
    raw = np.frombuffer(t.column("payload").combine_chunks().buffers()[1], np.uint8) if t.num_rows else \
        np.zeros(0, np.uint8)
    off = t.column("payload").combine_chunks().offset if t.num_rows else 0
    pay = raw[off * width:(off + t.num_rows) * width].reshape(t.num_rows, width)[o]
    if spec.kind == "semantic":
        pay = pay.view(np.float32)
    aspect = t.column("aspect").to_numpy()[o]
    a, b = [], []
    bounds = np.flatnonzero(np.diff(bucket)) + 1
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(bucket)]):
        pa_, pb = spec.pairs(uid[s:e], pay[s:e], aspect[s:e])
        a.append(pa_)
        b.append(pb)
    return _edges_with_quality(t, a, b)


def _buckets(mapper, source, spec: BucketSpec, shards: list[int]) -> tuple[pa.Table, pa.Table, int]:
    """Verified similarity edges of one bucketed method, their rows' quality, and the number of
    candidate rows."""
    cfg = spec.cfg
    # ~256 training rows a centroid; the count comes from the same pass.
    est = getattr(source, "n_rows", 0) or 1
    n_buckets_est = max(1, math.ceil(est / cfg.bucket_rows))
    keep_below = min(1.0, 256 * n_buckets_est / est)
    spec_ref = mapper.put(spec)
    samples = mapper.get(mapper.map(_sample_map, [(source, s, spec_ref, keep_below) for s in shards]))
    groups: dict[str, list] = {}
    for part in samples:
        for g, (cnt, u, v, w) in part.items():
            acc = groups.setdefault(g, [0, [], [], 0])
            acc[0] += cnt
            acc[1].append(u)
            acc[2].append(v)
            acc[3] = max(acc[3], w)
    n_cand = sum(acc[0] for acc in groups.values())
    edges, quality = [], []
    for g in sorted(groups):
        cnt, us, vs, dim = groups[g]
        k = max(1, math.ceil(cnt / cfg.bucket_rows))
        cents = None
        if k > 1:
            u, v = np.concatenate(us), np.concatenate(vs)
            cents = train_index(v[np.argsort(u)], k, spherical=spec.kind == "semantic")
            k = cents.k
        spec.centroids = {g: (0, cents)}
        spec.group = None if spec.kind == "near" else g
        spec.width = NEAR_SIG_BYTES if spec.kind == "near" else 4 * dim
        # Partitions of ~128 MB, at least two per worker, at most one per bucket.
        n_parts = int(min(k, max(2 * getattr(mapper, "workers", 1),
                                 math.ceil(cnt * min(cfg.bucket_probes, k) * (spec.width + 40) / 2 ** 27))))
        reducer_of_bucket = (np.arange(k) * n_parts // k).astype(np.int64)
        spec_ref = mapper.put(spec)
        parts = mapper.map(_partition_map, [(source, s, spec_ref, reducer_of_bucket, n_parts) for s in shards],
                           parts=n_parts)
        results = mapper.get(mapper.map(_bucket_reduce, [(spec_ref, *[p[r] for p in parts]) for r in range(n_parts)]))
        edges += [e for e, _ in results]
        quality += [q for _, q in results]
    edges_t = pa.concat_tables(edges) if edges else pa.table({"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)})
    return edges_t, quality, n_cand


# ---- the whole step --------------------------------------------------------------------------

@dataclass
class DedupResult:
    """Rows that are duplicates (sorted uid), the uid they defer to, and why (REASONS index)."""
    uid: np.ndarray
    rep: np.ndarray
    reason: np.ndarray

    def lookup(self, uids: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        uids = np.asarray(uids, np.int64)
        if not len(self.uid):
            return uids.copy(), [None] * len(uids)
        i = np.clip(np.searchsorted(self.uid, uids), 0, len(self.uid) - 1)
        hit = self.uid[i] == uids
        rep = np.where(hit, self.rep[i], uids)
        reason = [REASONS[self.reason[j]] if h else None for j, h in zip(i.tolist(), hit.tolist())]
        return rep, reason


def run_dedup(source, cfg: DedupConfig, rules: list | None = None, mapper=None) -> DedupResult:
    """Every duplicate row of `source` with its representative and reason (see module doc)."""
    mapper = mapper or LocalMapper()
    shards = source.shards()
    cols = set(source.columns())
    if cfg.near == "phash" or (cfg.near == "signature" and "near_sig" not in cols and "phash" in cols):
        if not isinstance(mapper, LocalMapper):
            raise ValueError("dedup.near: phash has no distributed path; use near: signature, or "
                             "dedup.distributed: false")
        return _phash_dense(source, cfg, rules)
    keys = [k for k in cfg.exact if {"url": "url" in cols, "sha256": "sha256" in cols,
                                     "caption": "caption_key" in cols,
                                     "caption_image": "caption_key" in cols and "sha256" in cols}[k]]
    dup_u, dup_r, dup_why = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
    quality: list[pa.Table] = []
    if keys:
        n_parts = max(2 * getattr(mapper, "workers", 1), math.ceil(source.n_rows * 120 * len(keys) / 2 ** 27))
        rules_ref = mapper.put(rules)
        parts = mapper.map(_exact_map, [(source, s, keys, rules_ref, n_parts) for s in shards], parts=n_parts)
        res = mapper.get(mapper.map(_exact_reduce, [tuple(p[r] for p in parts) for r in range(n_parts)]))
        edges = pa.concat_tables([e for e, _ in res])
        quality += [q for _, q in res]
        a, b = edges.column("a").to_numpy(), edges.column("b").to_numpy()
        nodes, reps = edge_components(a, b, _Ranker(quality))
        dup = reps != nodes
        dup_u, dup_r = nodes[dup], reps[dup]
        # Reason: the first key (recipe order) under which the row equals another row.
        kid = edges.column("key_id").to_numpy()
        ends = np.concatenate([a, b])
        first_key = pd.Series(np.concatenate([kid, kid])).groupby(ends).min()
        dup_why = first_key.reindex(dup_u).to_numpy().astype(np.int8)
        dup_why = np.array([REASONS.index(f"dup_{keys[k]}") for k in dup_why], np.int8) if len(dup_why) \
            else dup_why
    if cfg.near == "signature" and "near_sig" in cols:
        spec = BucketSpec("near", cfg, rules, exclude=dup_u)
        edges, q, _ = _buckets(mapper, source, spec, shards)
        quality += q
        dup_u, dup_r, dup_why = _merge(dup_u, dup_r, dup_why, edges, quality, REASONS.index("dup_near"))
    if cfg.semantic_threshold is not None and "img_emb" in cols:
        spec = BucketSpec("semantic", cfg, rules, exclude=dup_u)
        edges, q, n_cand = _buckets(mapper, source, spec, shards)
        quality += q
        new = _merge(dup_u, dup_r, dup_why, edges, quality, REASONS.index("dup_semantic"))
        n_sem = len(new[0]) - len(dup_u)
        if n_sem > cfg.semantic_max_fraction * max(n_cand, 1):
            log.warning("semantic dedup would mark %d of %d rows as duplicates (> %.0f%%): the embeddings "
                        "look degenerate (untrained model?); skipping semantic dedup", n_sem, n_cand,
                        100 * cfg.semantic_max_fraction)
        else:
            dup_u, dup_r, dup_why = new
    o = np.argsort(dup_u)
    return DedupResult(dup_u[o], dup_r[o], dup_why[o])


def _merge(dup_u, dup_r, dup_why, edges: pa.Table, quality: list[pa.Table], reason: int):
    """Add the stars of a similarity step over the rows that were still kept; rows that deferred
    to a row that now joins a star follow it to its centre."""
    nodes, centre = edge_stars(edges.column("a").to_numpy(), edges.column("b").to_numpy(), _Ranker(quality))
    new = centre != nodes
    nu, nc = nodes[new], centre[new]
    o = np.argsort(nu)
    nu, nc = nu[o], nc[o]
    if len(nu) and len(dup_r):
        i = np.clip(np.searchsorted(nu, dup_r), 0, len(nu) - 1)
        dup_r = np.where(nu[i] == dup_r, nc[i], dup_r)
    return (np.concatenate([dup_u, nu]), np.concatenate([dup_r, nc]),
            np.concatenate([dup_why, np.full(len(nu), reason, np.int8)]))


def _phash_dense(source, cfg: DedupConfig, rules) -> DedupResult:
    """near: phash (the fallback for runs without near_sig): one process, all rows at once."""
    cols = set(source.columns())
    want = ["url", "decode_ok", "width", "height", "sha256", "caption_key", "phash", "color_sig"]
    t = pa.concat_tables([source.read(s, sorted((set(want) | set(quality_columns(cols, rules))) & cols))
                          for s in source.shards()])
    uids = t.column("uid").to_numpy()
    q = _quality(t, rules)
    rank = np.empty(len(uids), np.int64)
    rank[best_first(uids, q.column("passes").to_numpy(zero_copy_only=False), q.column("clip").to_numpy(
        zero_copy_only=False), q.column("area").to_numpy())] = np.arange(len(uids))
    keys = {}
    for name in cfg.exact:
        v = _key_values(t, name)
        if v is not None:
            codes, _ = pd.factorize(v.to_numpy(zero_copy_only=False), use_na_sentinel=True)
            keys[name] = codes.astype(np.int64)
    phash = valid = verify = None
    if cfg.near != "off" and cfg.phash_max_distance is not None and "phash" in cols:
        phash, valid = phash_to_uint64(t.column("phash").to_pylist())
        valid &= q.column("area").to_numpy() > 0
        if cfg.color_max_distance is not None and "color_sig" in cols:
            sigs = t.column("color_sig").to_pylist()
            verify = lambda a, b: np.array([color_distance(sigs[i], sigs[j]) <= cfg.color_max_distance  # noqa: E731
                                            for i, j in zip(a, b)], bool)
    reps = dup_of(uids, rank=rank, keys=keys, phash=phash, phash_valid=valid,
                  max_distance=cfg.phash_max_distance if phash is not None else None, phash_verify=verify)
    why = np.full(len(uids), REASONS.index("dup_phash"), np.int8)
    todo = reps != uids
    for name, codes in keys.items():
        single = dup_of(uids, rank=rank, keys={name: codes}, max_distance=None)
        hit = todo & ((single != uids) | np.isin(uids, single[single != uids]))
        why[hit] = REASONS.index(f"dup_{name}")
        todo &= ~hit
    d = reps != uids
    res = DedupResult(uids[d], reps[d], why[d])
    if cfg.semantic_threshold is not None and "img_emb" in cols:
        spec = BucketSpec("semantic", cfg, rules, exclude=np.sort(uids[d]))
        edges, qs, n_cand = _buckets(LocalMapper(), source, spec, source.shards())
        new = _merge(res.uid, res.rep, res.reason, edges, qs + [q], REASONS.index("dup_semantic"))
        if len(new[0]) - len(res.uid) <= cfg.semantic_max_fraction * max(n_cand, 1):
            o = np.argsort(new[0])
            res = DedupResult(new[0][o], new[1][o], new[2][o])
    o = np.argsort(res.uid)
    return DedupResult(res.uid[o], res.rep[o], res.reason[o])


def compute_dups(t: pa.Table, cfg: DedupConfig, rules: list | None = None, mapper=None,
                 shard_rows: int = 1 << 16) -> tuple[np.ndarray, list[str | None]]:
    """(dup_of, reason) for the rows of an in-memory table holding uid and whatever stats exist."""
    res = run_dedup(TableSource(t, shard_rows), cfg, rules, mapper)
    return res.lookup(t.column("uid").to_numpy())


def select_rules(recipe) -> list | None:
    """select's rules other than the duplicate rule (the best member must pass them)."""
    sel = getattr(recipe, "select", None)
    if sel is None:
        return None
    from stages.select import build_rules

    annotate = getattr(recipe, "annotate", None)
    reject_sensitive = getattr(annotate, "sensitive_action", "mask") == "reject"
    return build_rules(sel.model_copy(update={"reject_duplicates": False}), reject_sensitive)


def use_ray(cfg: DedupConfig, n_rows: int) -> bool:
    if cfg.distributed is False:
        return False
    try:
        import ray
    except ImportError:
        if cfg.distributed is True:
            raise RuntimeError("dedup.distributed: true needs Ray (pip install ray), or set it to auto/false")
        return False
    if cfg.distributed is True:
        return True
    return ray.is_initialized() and n_rows >= cfg.distributed_min_rows


class DedupStage(Stage):
    name = "dedup"
    provides = ("dup_of", "dup_reason")

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=65536)

    def prepare(self, store) -> DedupResult:
        source = StoreSource(store)
        mapper = None
        if use_ray(self.config, source.n_rows):
            from pipeline.dedup_ray import RayMapper

            mapper = RayMapper()
        return run_dedup(source, self.config, select_rules(getattr(self.run, "recipe", None)), mapper)

    def setup(self, state) -> None:
        self.state = state

    def process(self, batch: pa.Table) -> pa.Table:
        rep, reason = self.state.lookup(batch.column("uid").to_numpy())
        return pa.table({"dup_of": pa.array(rep, pa.int64()), "dup_reason": pa.array(reason, pa.string())})

"""score: embed image and cleaned caption with a CLIP backend chosen by caption language, and
store the cosine plus L2-normalised fp16 embeddings (for semantic dedup and later rounds).

Throughput design (GPU): images are decoded either on CPU threads (PIL, JPEG DCT-downscaled)
or in batches by nvJPEG on the GPU; a one-chunk-ahead prefetch thread decodes and tokenizes
chunk i+1 while the GPU encodes chunk i; pixels travel as pinned uint8 (4x less than float);
embeddings stay on the device until the whole call is done, so the GPU queue never drains on a
per-chunk host sync.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.clip.base import ClipBackend
from models.clip.factory import BackendSpec, load_backend
from models.gpu_decode import decode_batch_device, decode_cpu, decode_pil, gpu_decode_available
from filters.language import route_language
from pipeline.config import RUNTIME
from pipeline.stage import Resources, Stage

DEFAULT_LANG = "*"


class ScoreConfig(BaseModel):
    """Recipe section for `score`. `backends` maps a caption language ("en", "zh", ...) to the
    model that scores it; "*" catches every other language. Specs that are equal are loaded
    once. Top-level device/precision/batch_size apply where a backend leaves them unset."""

    model_config = ConfigDict(extra="forbid")

    backends: dict[str, BackendSpec] = Field(default_factory=lambda: {
        DEFAULT_LANG: BackendSpec(kind="open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k")})
    # RUNTIME: how the work is spread, not what it computes, so changing one never rescores.
    device: str = Field("auto", json_schema_extra=RUNTIME)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(default=256, ge=1, json_schema_extra=RUNTIME)      # rows per model forward
    rows_per_call: int = Field(default=4096, ge=1, json_schema_extra=RUNTIME)  # rows per process()
    # auto: GPU when the model is on CUDA; like `device`, a choice of where pixels are decoded.
    decode: Literal["cpu", "gpu", "auto"] = Field("auto", json_schema_extra=RUNTIME)
    num_decode_threads: int = Field(default=8, ge=1, json_schema_extra=RUNTIME)
    jpeg_draft: bool = True
    gpus: float = Field(default=1.0, gt=0, le=8, json_schema_extra=RUNTIME)  # per worker on CUDA (0.5: 2/GPU)
    cpus: float = Field(default=4.0, gt=0, json_schema_extra=RUNTIME)

    @model_validator(mode="after")
    def _check(self) -> "ScoreConfig":
        if not self.backends:
            raise ValueError("score.backends is empty: name at least one backend (key '*' for all)")
        return self

    def spec_for(self, key: str) -> BackendSpec:
        return self.backends[key]


route = route_language  # one routing rule for every per-language setting


def _emb_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float16(), dim)


class ScoreStage(Stage):
    name = "score"
    needs = ("image",)
    # caption_clean comes from annotate when it ran; the raw caption is the fallback.
    optional = ("caption_clean", "caption", "lang", "decode_ok")
    provides = ("clip_score", "clip_model", "clip_error", "img_emb", "txt_emb")

    def __init__(self, config: ScoreConfig | dict | None, run: Any = None):
        if not isinstance(config, ScoreConfig):
            config = ScoreConfig(**(config or {}))
        super().__init__(config, run)
        self.cfg: ScoreConfig = config
        self.backends: dict[str, ClipBackend] = {}
        self.dim = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    def _uses_cuda(self) -> bool:
        devs = [s.device or self.cfg.device for s in self.cfg.backends.values()]
        if any(str(d).startswith("cuda") for d in devs):
            return True
        return any(d == "auto" for d in devs) and torch.cuda.is_available()

    def resources(self) -> Resources:
        if self._uses_cuda():
            return Resources(cpus=self.cfg.cpus, gpus=self.cfg.gpus, batch_size=self.cfg.rows_per_call)
        return Resources(cpus=1.0, gpus=0.0, batch_size=self.cfg.rows_per_call)

    def setup(self, state: Any = None) -> None:
        loaded: dict[str, ClipBackend] = {}
        for key, spec in self.cfg.backends.items():
            ident = spec.model_dump_json(exclude={"threshold"})
            if ident not in loaded:
                loaded[ident] = load_backend(spec, device=self.cfg.device,
                                             precision=self.cfg.precision,
                                             batch_size=self.cfg.batch_size)
            self.backends[key] = loaded[ident]
        dims = {k: b.embed_dim for k, b in self.backends.items()}
        # One size: fixed-size list columns (zero-copy to numpy). Several (e.g. ViT-L/14 for en,
        # a base Chinese-CLIP for zh): variable-size lists; dedup compares only within a model.
        self.mixed = len(set(dims.values())) != 1
        self.dim = max(dims.values())
        self.pool = ThreadPoolExecutor(self.cfg.num_decode_threads, thread_name_prefix="decode")
        self.prefetch = ThreadPoolExecutor(1, thread_name_prefix="prefetch")

    # ---- per batch ---------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        if not self.backends:
            self.setup(None)
        n = batch.num_rows
        names = batch.column_names
        if "image" not in names:
            raise ValueError("score needs an 'image' column (binary image bytes from download)")
        images: list[bytes | None] = batch.column("image").to_pylist()
        cap_col = "caption_clean" if "caption_clean" in names else "caption"
        if cap_col not in names:
            raise ValueError("score needs 'caption_clean' (annotate) or 'caption' (input list)")
        captions = [c.strip() if isinstance(c, str) else "" for c in batch.column(cap_col).to_pylist()]
        langs = batch.column("lang").to_pylist() if "lang" in names else [None] * n
        dec_ok = batch.column("decode_ok").to_pylist() if "decode_ok" in names else [None] * n

        keys = list(self.backends)
        which = [route(lg, keys) for lg in langs]
        err: list[str | None] = [None] * n
        for i in range(n):
            if which[i] is None:
                err[i] = f"no_backend:{langs[i]}"
            elif not images[i]:
                err[i] = "no_image"
            elif dec_ok[i] is False:
                err[i] = "decode_error"
            elif not captions[i]:
                err[i] = "empty_caption"

        img = np.zeros((n, self.dim), np.float16)
        txt = np.zeros((n, self.dim), np.float16)
        has_img = np.zeros(n, bool)
        has_txt = np.zeros(n, bool)
        model_name: list[str | None] = [None] * n
        row_dim = np.full(n, self.dim, np.int64)
        for key in dict.fromkeys(w for w in which if w is not None):
            be = self.backends[key]
            rows = [i for i in range(n) if which[i] == key]
            for i in rows:
                model_name[i] = be.name
                row_dim[i] = be.embed_dim
            img_rows = [i for i in rows if err[i] not in ("no_image", "decode_error")]
            txt_rows = [i for i in rows if captions[i]]
            ie, iok = self._encode(be, [images[i] for i in img_rows], [captions[i] for i in txt_rows])
            e_img, e_txt = ie
            idx = np.asarray(img_rows, dtype=np.int64)
            img[idx[iok], :be.embed_dim] = e_img[iok]
            has_img[idx[iok]] = True
            for i in idx[~iok]:
                if err[i] is None or err[i] == "empty_caption":
                    err[i] = "decode_error"
            tidx = np.asarray(txt_rows, dtype=np.int64)
            txt[tidx, :be.embed_dim] = e_txt
            has_txt[tidx] = True

        both = has_img & has_txt
        score = np.einsum("nd,nd->n", img.astype(np.float32), txt.astype(np.float32))
        # Score from fp16-stored vectors so a re-scoring from the stored columns agrees.
        return pa.table({
            "clip_score": pa.array(score, pa.float32(), mask=~both),
            "clip_model": pa.array(model_name, pa.string()),
            "clip_error": pa.array([None if both[i] else (err[i] or "not_scored") for i in range(n)],
                                   pa.string()),
            "img_emb": _emb_array(img, has_img, row_dim, self.mixed),
            "txt_emb": _emb_array(txt, has_txt, row_dim, self.mixed),
        })

    # ---- encoding core -----------------------------------------------------------------------
    def _use_gpu_decode(self, be: ClipBackend) -> bool:
        if self.cfg.decode == "cpu" or be.device.type != "cuda" or be.pixel is None:
            return False
        if self.cfg.decode == "gpu" and not gpu_decode_available():
            raise RuntimeError("score.decode is 'gpu' but torchvision's GPU decode_jpeg is not "
                               "available; set decode: cpu or auto")
        return gpu_decode_available()

    def _encode(self, be: ClipBackend, datas: list[bytes | None], texts: list[str]
                ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Encode images and texts in chunks with a one-ahead prefetch. Returns
        ((img (m, D) fp16, txt (t, D) fp16), image-decoded-ok mask)."""
        bs = be.batch_size
        n_chunks = max((len(datas) + bs - 1) // bs, (len(texts) + bs - 1) // bs)
        gpu_dec = self._use_gpu_decode(be)
        stream = torch.cuda.Stream(be.device) if gpu_dec else None

        def prepare(c: int) -> tuple[Any, np.ndarray, list[str], Any]:
            d = datas[c * bs:(c + 1) * bs]
            t = texts[c * bs:(c + 1) * bs]
            if be.pixel is None:
                pil = list(self.pool.map(decode_pil, d))
                return pil, np.array([p is not None for p in pil], bool), t, None
            if gpu_dec:
                with torch.cuda.stream(stream):
                    px, ok = self._decode_gpu(be, d)
                    ev = torch.cuda.Event()
                    ev.record(stream)
                return px, ok, t, ev
            arrs = list(self.pool.map(lambda b: decode_cpu(b, be.pixel, self.cfg.jpeg_draft), d))
            ok = np.array([a is not None for a in arrs], bool)
            th, tw = be.pixel.size
            u8 = torch.zeros((len(d), th, tw, 3), dtype=torch.uint8)
            for j, a in enumerate(arrs):
                if a is not None:
                    u8[j] = torch.from_numpy(a)
            u8 = u8.permute(0, 3, 1, 2)
            if be.device.type == "cuda":
                u8 = u8.pin_memory()
            return u8, ok, t, None

        img_parts: list[Any] = []
        txt_parts: list[Any] = []
        oks: list[np.ndarray] = []
        fut: Future | None = self.prefetch.submit(prepare, 0) if n_chunks else None
        with torch.inference_mode():
            for c in range(n_chunks):
                px, ok, t, ev = fut.result()  # type: ignore[union-attr]
                fut = self.prefetch.submit(prepare, c + 1) if c + 1 < n_chunks else None
                if ev is not None:
                    torch.cuda.current_stream(be.device).wait_event(ev)
                if len(ok):
                    oks.append(ok)
                    if be.pixel is None:
                        good = [p for p in px if p is not None]
                        e = np.zeros((len(px), be.embed_dim), np.float32)
                        if good:
                            e[ok] = be.encode_images(good)
                        img_parts.append(torch.from_numpy(e))
                    elif gpu_dec:
                        img_parts.append(be.encode_pixels(_normalize_float(px, be)).half())
                    else:
                        img_parts.append(be.encode_uint8(px).half())
                if t:
                    txt_parts.append(be.encode_text_tensor(t).half())
        e_img = (torch.cat(img_parts).float().cpu().numpy().astype(np.float16) if img_parts
                 else np.zeros((0, be.embed_dim), np.float16))
        e_txt = (torch.cat(txt_parts).float().cpu().numpy().astype(np.float16) if txt_parts
                 else np.zeros((0, be.embed_dim), np.float16))
        ok_all = np.concatenate(oks) if oks else np.zeros(0, bool)
        return (e_img, e_txt), ok_all

    def _decode_gpu(self, be: ClipBackend, d: list[bytes | None]) -> tuple[torch.Tensor, np.ndarray]:
        # nvJPEG for plain JPEGs (EXIF orientation applied on device), the CPU decoder for the rest.
        assert be.pixel is not None
        return decode_batch_device(d, be.pixel, be.device, self.pool.map, self.cfg.jpeg_draft)


def _normalize_float(px: torch.Tensor, be: ClipBackend) -> torch.Tensor:
    from models.clip.transforms import normalize_batch

    return normalize_batch(px, be.pixel, be.dtype)  # type: ignore[arg-type]


def _emb_array(arr: np.ndarray, valid: np.ndarray, row_dim: np.ndarray, mixed: bool) -> pa.Array:
    if not mixed:
        return _fixed_list(arr, valid, arr.shape[1])
    lengths = np.where(valid, row_dim, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate([arr[i, :lengths[i]] for i in range(len(arr))] or [np.zeros(0, np.float16)])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.float16), pa.float16()),
                                    mask=pa.array(~valid))


def _fixed_list(arr: np.ndarray, valid: np.ndarray, dim: int) -> pa.Array:
    values = pa.array(np.ascontiguousarray(arr, dtype=np.float16).reshape(-1), pa.float16())
    mask = pa.array(~valid, pa.bool_())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


def encode_pairs(stage: ScoreStage, images: list[bytes | None], captions: list[str],
                 langs: list[str | None] | None = None) -> pa.Table:
    """Score a small list of pairs without building a table by hand (benchmarks, notebooks)."""
    n = len(images)
    t = pa.table({"image": pa.array(images, pa.binary()), "caption": pa.array(captions, pa.string()),
                  "lang": pa.array(langs or [None] * n, pa.string())})
    return stage.process(t)

"""Image bytes -> model-sized pixels, on CPU threads (PIL) or on the GPU (nvJPEG).

The GPU path decodes a batch of JPEGs with torchvision.io.decode_jpeg(device="cuda") (nvJPEG)
and resizes on device, so a fast GPU is not starved by CPU JPEG decoding. Anything nvJPEG
cannot take (PNG, WebP, GIF, CMYK or broken JPEGs) falls back to the CPU path per image.
"""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from models.clip.transforms import PixelSpec, draft_size, pil_to_uint8, tensor_resize_crop

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes | None) -> bool:
    return bool(data) and data[:3] == JPEG_MAGIC  # type: ignore[index]


def gpu_decode_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def open_image(data: bytes, spec: PixelSpec | None = None, draft: bool = True) -> Image.Image:
    """Decode to an RGB PIL image; a JPEG is DCT-downscaled first when spec allows (2-4x less
    decode work for web-sized images, and the result is still >= the model's input size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF/palette warnings on web images are not errors
        im = Image.open(io.BytesIO(data))
        if draft and spec is not None and im.format == "JPEG":
            im.draft("RGB", draft_size(spec))
        return im.convert("RGB")


def decode_cpu(data: bytes | None, spec: PixelSpec, draft: bool = True) -> np.ndarray | None:
    """One image -> HWC uint8 at spec.size, or None when it cannot be decoded (never raises)."""
    if not data:
        return None
    try:
        return pil_to_uint8(open_image(data, spec, draft), spec)
    except Exception:  # noqa: BLE001 - any decoder failure is reported as decode_error
        return None


def decode_pil(data: bytes | None) -> Image.Image | None:
    if not data:
        return None
    try:
        return open_image(data)
    except Exception:  # noqa: BLE001
        return None


def decode_jpegs_gpu(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Batched nvJPEG decode to CHW uint8 RGB tensors on `device`; None where it failed."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    bufs = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(bufs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        # One bad image fails the whole batch: retry one by one to isolate it.
        out: list[torch.Tensor | None] = []
        for b in bufs:
            try:
                out.append(decode_jpeg(b, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def resize_batch_gpu(images: Sequence[torch.Tensor], spec: PixelSpec) -> torch.Tensor:
    """CHW uint8 device tensors of any sizes -> NCHW float 0..255 at spec.size. Images that
    share a size are resized in one call (web crawls have a few common sizes)."""
    th, tw = spec.size
    out = torch.empty((len(images), 3, th, tw), device=images[0].device, dtype=torch.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault((im.shape[-2], im.shape[-1]), []).append(i)
    for idx in by_shape.values():
        out[idx] = tensor_resize_crop(torch.stack([images[i] for i in idx]), spec)
    return out

"""The one interface every CLIP-like scorer implements, whatever library it comes from."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from models.clip.transforms import PixelSpec, normalize_batch, pil_to_uint8

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; "
                           "use device: cpu (or auto) in the score config")
    return dev


def resolve_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on GPU (CLIP scoring is insensitive to it) and fp32 on CPU, where
    half-precision matmuls are slow or unsupported."""
    if precision in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of auto|fp32|fp16|bf16, got {precision!r}")
    return _DTYPES[precision]


class ClipBackend(ABC):
    """Image and text encoders into one space; all outputs are L2-normalised float32.

    Subclasses with a tensor image path set `pixel` and implement `encode_pixels`; the score
    stage then decodes/resizes images itself (CPU threads or nvJPEG) and feeds uint8 batches
    through `encode_uint8`. A backend with `pixel = None` only takes PIL images.
    """

    name: str = "clip"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    batch_size: int = 256
    embed_dim: int = 0
    pixel: PixelSpec | None = None

    # ---- tensor path (used by the score stage) ----------------------------------------------
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised NCHW pixels on self.device -> (N, D) unit vectors (float32, on device)."""
        raise NotImplementedError(f"backend {self.name} has no tensor image path")

    @abstractmethod
    def encode_text_tensor(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> (N, D) unit vectors (float32, on device)."""

    def encode_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..255 float NCHW (any device) -> (N, D) unit vectors on device."""
        assert self.pixel is not None
        x = pixels.to(self.device, non_blocking=True)
        return self.encode_pixels(normalize_batch(x, self.pixel, self.dtype))

    # ---- public numpy API --------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> normalised CHW float32 tensor (CPU), the model's input format."""
        if self.pixel is None:
            raise NotImplementedError(f"backend {self.name} does not expose its preprocessing")
        arr = torch.from_numpy(pil_to_uint8(image, self.pixel)).permute(2, 0, 1)
        return normalize_batch(arr[None], self.pixel, torch.float32)[0].contiguous()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            u8 = np.stack([pil_to_uint8(im, self.pixel) for im in chunk])  # type: ignore[arg-type]
            t = torch.from_numpy(u8).permute(0, 3, 1, 2)
            with torch.inference_mode():
                out.append(self.encode_uint8(t).float().cpu().numpy())
        return _concat(out, self.embed_dim)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            with torch.inference_mode():
                out.append(self.encode_text_tensor(list(texts[i:i + self.batch_size]))
                           .float().cpu().numpy())
        return _concat(out, self.embed_dim)

    @staticmethod
    def similarity(img_emb: np.ndarray, txt_emb: np.ndarray) -> np.ndarray:
        """Row-wise cosine of two row-aligned (N, D) arrays of unit vectors."""
        if img_emb.shape != txt_emb.shape:
            raise ValueError(f"similarity needs row-aligned arrays, got {img_emb.shape} "
                             f"and {txt_emb.shape}")
        return np.einsum("nd,nd->n", img_emb.astype(np.float32), txt_emb.astype(np.float32))

    def describe(self) -> str:
        return f"{self.name} device={self.device} dtype={str(self.dtype).replace('torch.', '')}"


def _concat(parts: list[np.ndarray], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32, copy=False))


def l2n(x: torch.Tensor) -> torch.Tensor:
    # Normalise in float32: fp16 norms of 768-d vectors lose the last digits of the cosine.
    return torch.nn.functional.normalize(x.float(), dim=-1)

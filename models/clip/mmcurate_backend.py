"""The project's own ALBEF-style checkpoint as a scorer (round r's model filters round r+1).

`models.albef` is built alongside this package; it is imported only when this backend is asked
for, so the rest of scoring works without it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from models.clip.base import ClipBackend, l2n
from models.clip.transforms import PixelSpec


class MmcurateBackend(ClipBackend):
    def __init__(self, path: str, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32, batch_size: int = 256):
        try:
            from models.albef import AlbefInference  # type: ignore[attr-defined]
        except ImportError:
            try:
                from models.albef.inference import AlbefInference  # type: ignore[no-redef]
            except ImportError as e:
                raise ImportError("backend kind 'mmcurate' needs models.albef.AlbefInference "
                                  f"(the project's trained model): {e}") from e
        load = AlbefInference.load
        try:
            self.inner: Any = load(path, device=str(device))
        except TypeError:  # a load() without a device argument
            self.inner = load(path)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.name = f"mmcurate:{path}"
        # Use the model's own tensor path when it exposes one; else PIL lists only.
        spec = getattr(self.inner, "pixel_spec", None)
        self.pixel = spec if isinstance(spec, PixelSpec) else None
        self.embed_dim = int(self.encode_texts(["a"]).shape[-1])

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return l2n(torch.as_tensor(self.inner.encode_pixels(pixels)))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.pixel is not None:
            return super().encode_images(images)
        return self._batched(self.inner.encode_images, list(images))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._batched(self.inner.encode_texts, list(texts))

    def encode_text_tensor(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.encode_texts(texts)).to(self.device)

    def _batched(self, fn: Any, items: list) -> np.ndarray:
        out = []
        for i in range(0, len(items), self.batch_size):
            with torch.inference_mode():
                e = fn(items[i:i + self.batch_size])
            e = e.float().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e, np.float32)
            # Re-normalise: the contract is unit vectors, whatever the model returns.
            e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            out.append(e.astype(np.float32))
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(out)

"""Chinese-CLIP (OFA-Sys) through transformers: a hub id or a local save_pretrained dir."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from models.clip.base import ClipBackend, l2n
from models.clip.transforms import PixelSpec


def _features(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected tensor; 5.x returns an output with pooler_output.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def pixel_spec_from_processor(proc: Any) -> PixelSpec:
    """Translate a CLIP-style HF image processor's settings into our PixelSpec."""
    def hw(d: Any) -> tuple[int, int] | None:
        if d is None:
            return None
        d = d if isinstance(d, dict) else dict(d)
        if d.get("height") and d.get("width"):
            return int(d["height"]), int(d["width"])
        if d.get("shortest_edge"):
            return int(d["shortest_edge"]), int(d["shortest_edge"])
        return None

    size = getattr(proc, "size", None)
    crop = hw(getattr(proc, "crop_size", None)) if getattr(proc, "do_center_crop", False) else None
    size_d = size if isinstance(size, dict) else (dict(size) if size is not None else {})
    squash = bool(size_d.get("height") and size_d.get("width"))
    out = crop or hw(size_d) or (224, 224)
    if squash and crop and crop != hw(size_d):
        raise ValueError(f"unsupported image processor: resize to {hw(size_d)} then crop {crop}")
    resample = getattr(proc, "resample", 3)
    interp = {2: "bilinear", 3: "bicubic", 0: "nearest", 1: "lanczos"}.get(int(resample), "bicubic")
    return PixelSpec(size=out, mean=tuple(proc.image_mean), std=tuple(proc.image_std),
                     interpolation=interp, resize_mode="squash" if squash else "shortest")


class ChineseClipBackend(ClipBackend):
    def __init__(self, model: str, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32, batch_size: int = 256,
                 context_length: int | None = None):
        from transformers import AutoImageProcessor, AutoTokenizer, ChineseCLIPModel

        self.model = ChineseCLIPModel.from_pretrained(model).to(device=device, dtype=dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.pixel = pixel_spec_from_processor(AutoImageProcessor.from_pretrained(model))
        self.context_length = context_length or min(
            52, int(self.model.config.text_config.max_position_embeddings))
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.name = f"chinese_clip:{model}"
        self.embed_dim = int(self.model.config.projection_dim)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return l2n(_features(self.model.get_image_features(pixel_values=pixels.to(self.dtype))))

    def encode_text_tensor(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.context_length, return_tensors="pt")
        enc = {k: v.to(self.device, non_blocking=True) for k, v in enc.items()}
        return l2n(_features(self.model.get_text_features(**enc)))

"""Image preprocessing shared by every CLIP backend, on CPU (PIL) and on device (torch).

Backends describe their input with a `PixelSpec`; the score stage then resizes and crops once
per image (PIL on a CPU thread, or torch on the GPU after nvJPEG decode) and ships uint8 pixels
to the device, where normalisation is one fused op over the whole batch. Shipping uint8 rather
than normalised float32 cuts host-to-device traffic by 4x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class PixelSpec:
    """How a backend wants its images: output size (h, w), normalisation, and resize policy.

    resize_mode: "shortest" (scale the short side to fit, then centre-crop: CLIP's eval
    transform), "squash" (stretch to h x w), or "longest" (fit the long side, pad with fill).
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill: int = 0

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise ValueError(f"resize_mode must be shortest|squash|longest, got {self.resize_mode!r}")
        if self.interpolation not in _PIL_RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_PIL_RESAMPLE)}, "
                             f"got {self.interpolation!r}")


def _scaled_size(w: int, h: int, spec: PixelSpec) -> tuple[int, int]:
    th, tw = spec.size
    if spec.resize_mode == "squash":
        return tw, th
    if spec.resize_mode == "shortest":
        if th == tw:  # torchvision's Resize(int): short side exact, long side floored
            short, long = min(w, h), max(w, h)
            new_long = int(th * long / short)
            return (th, new_long) if w <= h else (new_long, th)
        scale = max(th / h, tw / w)
    else:
        scale = min(th / h, tw / w)
    # round like torchvision's Resize so CPU output matches open_clip's own transform
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def draft_size(spec: PixelSpec) -> tuple[int, int]:
    """Smallest (w, h) a JPEG may be DCT-downscaled to without losing resolution we need."""
    th, tw = spec.size
    if spec.resize_mode == "shortest":
        s = max(th, tw)
        return s, s
    return tw, th


def pil_to_uint8(img: Image.Image, spec: PixelSpec) -> np.ndarray:
    """Resize + crop/pad one PIL image to spec.size; returns HWC uint8 RGB."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    th, tw = spec.size
    w, h = img.size
    nw, nh = _scaled_size(w, h, spec)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _PIL_RESAMPLE[spec.interpolation])
    arr = np.asarray(img, dtype=np.uint8)
    return _crop_or_pad(arr, th, tw, spec.fill)


def _crop_or_pad(arr: np.ndarray, th: int, tw: int, fill: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h < th or w < tw:  # centre-pad, as torchvision's CenterCrop does for small inputs
        out = np.full((max(h, th), max(w, tw), 3), fill, dtype=np.uint8)
        top, left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
        out[top:top + h, left:left + w] = arr
        arr, h, w = out, out.shape[0], out.shape[1]
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return np.require(arr[top:top + th, left:left + tw], requirements=["C", "W"])


def tensor_resize_crop(img: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    """Resize + crop/pad CHW or NCHW (same-size batch) uint8 on any device to spec.size;
    returns float 0..255 in the same layout.

    Used after GPU decode, so the pixels never leave the device. Antialiased like PIL, so the
    result is close to (not bit-identical with) the CPU path.
    """
    single = img.dim() == 3
    x = img.unsqueeze(0) if single else img
    th, tw = spec.size
    h, w = x.shape[-2:]
    nw, nh = _scaled_size(w, h, spec)
    x = x.float()
    if (nh, nw) != (h, w):
        mode = spec.interpolation if spec.interpolation in ("bicubic", "bilinear") else "bilinear"
        x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
        x = x.clamp_(0, 255)
    if nh < th or nw < tw:
        pad_h, pad_w = max(0, th - nh), max(0, tw - nw)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                  value=float(spec.fill))
        nh, nw = x.shape[-2], x.shape[-1]
    top = int(round((nh - th) / 2.0))
    left = int(round((nw - tw) / 2.0))
    x = x[..., top:top + th, left:left + tw]
    return x[0] if single else x


def normalize_batch(pixels: torch.Tensor, spec: PixelSpec, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (or 0..255 float) NCHW -> normalised NCHW in `dtype`, on pixels' device."""
    mean = torch.tensor(spec.mean, device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    x = pixels.float().div_(255.0).sub_(mean).div_(std)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)

"""Resizing for export, with img2dataset's modes (pure: PIL images in, PIL images out).

- no: as it is.
- keep_ratio: the shorter side becomes `image_size`, aspect ratio kept.
- center_crop: the shorter side becomes `image_size`, then the centre square is cut.
- border: the longer side becomes `image_size`, then black borders pad it to a square.

`only_if_bigger` (img2dataset's resize_only_if_bigger) leaves images whose resizing side is
already at most `image_size` unscaled (center_crop and border still make them square).
`max_side` then caps the longer side whatever the mode, keeping the ratio (no upscaling).
"""
from __future__ import annotations

from PIL import Image

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")


def _scaled(im: Image.Image, side: int, target: int, only_if_bigger: bool) -> Image.Image:
    if side == target or (only_if_bigger and side <= target):
        return im
    f = target / side
    size = (max(1, round(im.width * f)), max(1, round(im.height * f)))
    return im.resize(size, Image.LANCZOS if f < 1 else Image.BICUBIC)


def resize_image(im: Image.Image, mode: str = "no", image_size: int = 256, only_if_bigger: bool = False,
                 max_side: int | None = None) -> Image.Image:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode {mode!r} is not one of {RESIZE_MODES}")
    if mode in ("keep_ratio", "center_crop"):
        im = _scaled(im, min(im.size), image_size, only_if_bigger)
        if mode == "center_crop":
            s = min(min(im.size), image_size)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            im = im.crop((left, top, left + s, top + s))
    elif mode == "border":
        im = _scaled(im, max(im.size), image_size, only_if_bigger)
        s = max(im.size)
        if im.size != (s, s):
            canvas = Image.new(im.mode, (s, s), 0)
            canvas.paste(im, ((s - im.width) // 2, (s - im.height) // 2))
            im = canvas
    if max_side is not None and max(im.size) > max_side:
        im = _scaled(im, max(im.size), max_side, True)
    return im

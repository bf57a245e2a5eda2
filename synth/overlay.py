"""Watermark-like overlays on rendered scenes: the kind stock sites and reposting apps stamp on
images (a semi-transparent banner with a site name, a corner logo, or the name tiled across).

Used to give a watermark head something real to learn from the synthetic corpus. The texts and
styles come in two disjoint halves (`split`), so a head fitted on one half is measured on
overlays it never saw.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

STYLES = ("banner", "corner", "tiled")
# Site-name-like marks; "fit" and "held_out" share none.
TEXTS = {
    "fit": ("© stockpix.com", "shutterfolio", "PICSTORE", "图虫网 tuchong", "@photo_daily",
            "dreamimages.net", "SAMPLE", "版权所有 图库"),
    "held_out": ("© imagebank.cn", "alamy-like", "PREVIEW", "千图网 58pic", "@design_hub",
                 "gettypix.com", "WATERMARK", "视觉中国 vcg"),
}


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:  # Pillow >= 10.1 ships a scalable default font when FreeType is available
        return ImageFont.load_default(size=px)
    except TypeError:  # pragma: no cover - older Pillow: fixed 11 px bitmap font
        return ImageFont.load_default()


def add_overlay(img: Image.Image, rng: np.random.Generator, split: str = "fit",
                style: str | None = None) -> tuple[Image.Image, str]:
    """A copy of `img` with a watermark drawn on it; returns (image, style used)."""
    if split not in TEXTS:
        raise ValueError(f"overlay split {split!r}; expected one of {sorted(TEXTS)}")
    style = style or str(rng.choice(STYLES))
    if style not in STYLES:
        raise ValueError(f"overlay style {style!r}; expected one of {STYLES}")
    text = str(rng.choice(TEXTS[split]))
    w, h = img.size
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    light = rng.random() < 0.7
    ink = (255, 255, 255) if light else (20, 20, 20)
    alpha = int(rng.integers(140, 230))
    if style == "banner":
        bh = int(h * rng.uniform(0.12, 0.2))
        y0 = h - bh if rng.random() < 0.7 else 0
        draw.rectangle((0, y0, w, y0 + bh), fill=(*((0, 0, 0) if light else (255, 255, 255)), alpha // 2))
        font = _font(max(10, int(bh * 0.6)))
        draw.text((w * 0.05, y0 + bh * 0.2), text, font=font, fill=(*ink, alpha))
    elif style == "corner":
        s = int(min(w, h) * rng.uniform(0.18, 0.28))
        x0 = w - s - 8 if rng.random() < 0.5 else 8
        y0 = h - s - 8 if rng.random() < 0.6 else 8
        draw.ellipse((x0, y0, x0 + s, y0 + s), outline=(*ink, alpha), width=max(2, s // 12))
        font = _font(max(10, s // 4))
        draw.text((x0 + s * 0.12, y0 + s * 0.38), text[:8], font=font, fill=(*ink, alpha))
    else:  # tiled: the mark repeated over the whole image, as preview images carry it
        font = _font(max(12, min(w, h) // 9))
        step_y = max(24, h // 4)
        for k, y in enumerate(range(0, h, step_y)):
            draw.text(((k % 2) * w * 0.25 - w * 0.1, y), (text + "   ") * 3, font=font, fill=(*ink, alpha // 2))
        layer = layer.rotate(float(rng.uniform(-30, 30)), resample=Image.BICUBIC)
    return Image.alpha_composite(base, layer).convert("RGB"), style

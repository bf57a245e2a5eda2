"""Rendered scenes: a few coloured shapes at a position over a textured background.

A `Scene` is the ground truth (what the captions describe); `render_scene` draws it with PIL
(no fonts) and numpy, fast enough for thousands of images per minute on one core.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from synth.attributes import BACKGROUNDS, COLOR_RGB, COLORS, COUNTS, POSITIONS, SHAPES, SIZES

# Shape radius as a fraction of the image's short side.
_SIZE_FRAC = {"small": 0.07, "medium": 0.11, "large": 0.155}

# Backgrounds are desaturated so that they are never read as one of the shape colours; light
# tones behind dark shapes and dark tones behind light ones.
_LIGHT_TONES = [(235, 232, 224), (214, 220, 226), (226, 226, 226), (238, 228, 210), (205, 214, 205)]
_DARK_TONES = [(52, 58, 70), (70, 70, 74), (40, 48, 56), (78, 66, 60), (58, 70, 66)]


@dataclass(frozen=True)
class Scene:
    scene_id: str
    shape: str
    color: str
    size: str
    position: str
    count: int
    background: str
    width: int
    height: int
    # Seed for everything the attributes leave open (tones, jitter, stripe widths).
    render_seed: int

    def key(self) -> tuple:
        """The attribute tuple; the held-out test split shares none with the training rows."""
        return (self.shape, self.color, self.size, self.position, self.count, self.background)

    def attributes(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("shape", "color", "size", "position", "count", "background")}


def sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly 256-640 px sides with common aspect ratios: every normal image passes a
    short-side >= 200 rule and an aspect <= 2 rule."""
    short = int(rng.integers(240, 481))
    ratio = float(rng.choice([1.0, 1.0, 4 / 3, 3 / 2, 16 / 9]))
    long = min(int(short * ratio), 640)
    return (long, short) if rng.random() < 0.7 else (short, long)


def sample_scene(rng: np.random.Generator, scene_id: str, key: tuple | None = None) -> Scene:
    if key is None:
        key = sample_key(rng)
    w, h = sample_size(rng)
    shape, color, size, position, count, background = key
    return Scene(scene_id, shape, color, size, position, count, background, w, h,
                 int(rng.integers(0, 2**31 - 1)))


def sample_key(rng: np.random.Generator) -> tuple:
    return (
        str(rng.choice(SHAPES)), str(rng.choice(COLORS)), str(rng.choice(SIZES)),
        str(rng.choice(POSITIONS)), int(rng.choice(COUNTS)), str(rng.choice(BACKGROUNDS)),
    )


# ---- drawing -------------------------------------------------------------------------------

def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _background(kind: str, w: int, h: int, rng: np.random.Generator, dark: bool) -> Image.Image:
    tones = _DARK_TONES if dark else _LIGHT_TONES
    i, j = rng.choice(len(tones), size=2, replace=False)
    a = np.array(tones[i], dtype=np.float32)
    b = np.array(tones[j], dtype=np.float32)
    # Push the second tone a little further from the first so textures are visible.
    b = np.clip(b + (b - a) * 0.6 + (-18 if not dark else 18), 0, 255)
    if kind == "plain":
        return Image.new("RGB", (w, h), tuple(int(v) for v in a))
    if kind == "gradient":
        t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h, dtype=np.float32)
        line = a[None, :] * (1 - t[:, None]) + b[None, :] * t[:, None]
        arr = np.broadcast_to(line[None, :, :], (h, w, 3)) if len(t) == w else \
            np.broadcast_to(line[:, None, :], (h, w, 3))
        return Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8))
    if kind == "stripes":
        period = int(rng.integers(12, 36))
        img = Image.new("RGB", (w, h), tuple(int(v) for v in a))
        draw = ImageDraw.Draw(img)
        horizontal = rng.random() < 0.5
        for o in range(0, h if horizontal else w, period):
            box = (0, o, w, o + period // 2) if horizontal else (o, 0, o + period // 2, h)
            draw.rectangle(box, fill=tuple(int(v) for v in b))
        return img
    if kind == "noise":
        # Coarse grain (4 px cells): visibly noisy, yet compresses well enough for PNG/WebP.
        cells = rng.random((h // 4 + 1, w // 4 + 1, 1), dtype=np.float32)
        grain = np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)[:h, :w]
        arr = a[None, None, :] * (1 - grain) + b[None, None, :] * grain
        return Image.fromarray(arr.astype(np.uint8))
    if kind == "checker":
        cell = int(rng.integers(16, 48))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy // cell + xx // cell) % 2).astype(bool)
        arr = np.where(mask[:, :, None], b[None, None, :], a[None, None, :])
        return Image.fromarray(arr.astype(np.uint8))
    if kind == "dots":
        img = Image.new("RGB", (w, h), tuple(int(v) for v in a))
        draw = ImageDraw.Draw(img)
        step = int(rng.integers(18, 34))
        r = max(2, step // 6)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in b))
        return img
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(phase + 2 * math.pi * k / n),
                 cy + radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return ring(3, r, -math.pi / 2 + rot)
    if shape == "hexagon":
        return ring(6, r, rot)
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + rot + math.pi * k / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    if shape == "cross":
        a, t = r, r * 0.33
        return [(cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t),
                (cx + a, cy + t), (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a),
                (cx - t, cy + t), (cx - a, cy + t), (cx - a, cy - t), (cx - t, cy - t)]
    if shape == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x * r / 17, cy - y * r / 17))
        return pts
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_centres(scene: Scene, rng: np.random.Generator) -> tuple[float, list[tuple[float, float]]]:
    """Radius and centres of the scene's shapes: a row of `count` shapes inside the region its
    position names (left/right half, top/bottom half, or the middle)."""
    w, h = scene.width, scene.height
    r = _SIZE_FRAC[scene.size] * min(w, h)
    # Region (x0, y0, x1, y1) where centres may go.
    m = r * 1.1
    regions = {
        "left": (m, m, w * 0.38, h - m),
        "right": (w * 0.62, m, w - m, h - m),
        "top": (m, m, w - m, h * 0.38),
        "bottom": (m, h * 0.62, w - m, h - m),
        "center": (w * 0.36, h * 0.36, w * 0.64, h * 0.64),
    }
    x0, y0, x1, y1 = regions[scene.position]
    # Lay the shapes out along the region's long axis, spaced so they don't overlap.
    vertical = (y1 - y0) > (x1 - x0)
    n = scene.count
    centres = []
    if scene.position == "center" and n > 1:
        # The middle band is small: spread along the image's long axis around its centre.
        vertical = h > w
        long_side = h if vertical else w
        r = min(r, 0.9 * long_side / (2.3 * (n - 1) + 2))
        span = (n - 1) * 2.3 * r
        start = (h if vertical else w) / 2 - span / 2
        for k in range(n):
            c = start + k * 2.3 * r
            centres.append((w / 2, c) if vertical else (c, h / 2))
        return r, centres
    lo, hi = (y0, y1) if vertical else (x0, x1)
    other_lo, other_hi = (x0, x1) if vertical else (y0, y1)
    seg = (hi - lo) / n
    # Three large shapes may not fit side by side in half an image: shrink them rather than
    # let them overlap into one blob (a count must stay countable).
    r = min(r, seg / 2.2)
    slack = max(0.0, seg - 2.2 * r)
    for k in range(n):
        a = lo + seg * (k + 0.5) + rng.uniform(-0.5, 0.5) * slack * (n > 1)
        b = (other_lo + other_hi) / 2 + rng.uniform(-0.3, 0.3) * max(0.0, other_hi - other_lo)
        centres.append((b, a) if vertical else (a, b))
    return r, centres


def render_scene(scene: Scene) -> Image.Image:
    rng = np.random.default_rng(scene.render_seed)
    fill = COLOR_RGB[scene.color]
    dark = _luma(fill) > 150
    img = _background(scene.background, scene.width, scene.height, rng, dark)
    draw = ImageDraw.Draw(img)
    r, centres = shape_centres(scene, rng)
    outline = tuple(int(v * 0.6) for v in fill) if not dark else (255, 255, 255)
    for cx, cy in centres:
        rot = float(rng.uniform(-0.25, 0.25))
        if scene.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline)
        else:
            draw.polygon(_polygon(scene.shape, cx, cy, r, rot), fill=fill, outline=outline)
    return img


# ---- encoding ------------------------------------------------------------------------------

FORMAT_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
FORMAT_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        # Level 1: PNG of textured scenes is slow at higher levels and barely smaller.
        img.save(buf, format="PNG", compress_level=1)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected jpeg, png or webp")
    return buf.getvalue()

"""Every image mode Pillow can write, in every format that holds it, made from real photos.

The photos are the ones scikit-image ships inside its wheel (`skimage.data`: astronaut, coffee,
chelsea, camera, ...; no network), the alpha channel is the `horse` silhouette with a feathered
edge, so transparency has hard and soft parts. Each sample carries the picture a viewer should
see (`expected`: RGB, EXIF orientation applied, alpha over white), computed here with numpy from
the arrays that were written, never with the decoder under test.

A cell (mode, format) exists only where the format *holds* the mode: Pillow wrote it without
converting to another mode first (reopening gives the same mode, or the format's own name for
it: a 16-bit PGM reopens as "I", a JPEG stores YCbCr and decodes to RGB). Cells where Pillow
refuses or silently converts are reported as such, not counted.

`held_out()` is the other half: files in skimage's wheel written by other encoders, so the
decode rules are not only checked on what Pillow's own writers produce.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

MODES: tuple[str, ...] = ("1", "L", "LA", "P", "P+t", "PA", "I;16", "I", "F", "RGB", "RGBA",
                          "CMYK", "YCbCr", "LAB", "HSV")
# PPM is Pillow's writer for the whole netpbm family: PBM for "1", PGM for L / 16-bit, PPM for
# RGB, PFM for F.
FORMATS: tuple[str, ...] = ("PNG", "GIF", "TIFF", "WEBP", "BMP", "JPEG", "ICO", "PPM", "AVIF")
LOSSY = {"JPEG", "WEBP", "AVIF"}
# Reopened mode -> written mode, where a format names the same pixels differently.
_SAME = {("PPM", "I;16"): "I", ("GIF", "1"): "L", ("JPEG", "YCbCr"): "RGB", ("GIF", "L"): "P", ("GIF", "P+t"): "P",
         ("PNG", "P+t"): "P", ("TIFF", "P+t"): "P", ("BMP", "P+t"): "P", ("ICO", "P+t"): "P"}
PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "camera", "rocket", "retina")
SIZE = (200, 136)  # non-square (orientation mistakes change the size); short side > 64 px
# EXIF orientation -> stored array from the displayed one (EXIF 2.3, tag 0x0112): the stored
# image is what a viewer must transform back. Written out with numpy, independently of PIL.
_STORED_FROM_DISPLAYED = {
    1: lambda d: d,
    2: lambda d: d[:, ::-1],
    3: lambda d: d[::-1, ::-1],
    4: lambda d: d[::-1, :],
    5: lambda d: d.swapaxes(0, 1),
    6: lambda d: np.rot90(d, 1),      # viewer rotates 90 degrees clockwise
    7: lambda d: np.rot90(d, 2).swapaxes(0, 1),
    8: lambda d: np.rot90(d, -1),     # viewer rotates 90 degrees counter-clockwise
}


@dataclass
class Sample:
    name: str
    mode: str
    fmt: str
    data: bytes
    expected: np.ndarray          # HxWx3 uint8: what a viewer shows (alpha over white)
    lossy: bool
    resized: bool = False         # ICO stores a thumbnail
    frames: int = 1
    orientation: int = 1
    meta: dict = field(default_factory=dict)


def photo(name: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A real photo from skimage's wheel as HxWx3 uint8, resized to `size` (w, h)."""
    from skimage import data

    arr = getattr(data, name)()
    im = Image.fromarray(arr).convert("RGB")
    return np.asarray(im.resize(size, Image.Resampling.LANCZOS))


def alpha(size: tuple[int, int] = SIZE) -> np.ndarray:
    """The horse silhouette as alpha: opaque horse, transparent background, feathered edge."""
    from skimage import data

    mask = Image.fromarray((~data.horse()).astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(2)))


def over_white(rgb: np.ndarray, a: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, 2)
    w = a.astype(np.float64)[:, :, None] / 255.0
    return np.clip(np.round(rgb * w + 255.0 * (1 - w)), 0, 255).astype(np.uint8)


def _gray3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g.astype(np.uint8)[:, :, None], 3, 2)


def _palette(rgb: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    p = Image.fromarray(rgb).quantize(255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal = np.asarray(p.getpalette("RGB"), np.uint8).reshape(-1, 3)
    pal = np.vstack([pal, np.zeros((256 - len(pal), 3), np.uint8)])
    return p, pal


def make(mode: str, rgb: np.ndarray, a: np.ndarray) -> tuple[Image.Image, np.ndarray, dict]:
    """An image in `mode` from photo `rgb` and alpha `a`, and what a viewer should see."""
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    save_kw: dict = {}
    if mode == "1":
        im = Image.fromarray(gray).convert("1")
        exp = _gray3(np.asarray(im, np.uint8) * 255)
    elif mode == "L":
        im, exp = Image.fromarray(gray), _gray3(gray)
    elif mode == "LA":
        im = Image.merge("LA", (Image.fromarray(gray), Image.fromarray(a)))
        exp = over_white(gray, a)
    elif mode in ("P", "P+t", "PA"):
        p, pal = _palette(rgb)
        idx = np.asarray(p)
        exp = pal[idx]
        if mode == "P+t":
            # GIF-style binary transparency: index 255 (unused by the 255-colour palette).
            idx = np.where(a < 128, 255, idx).astype(np.uint8)
            p = Image.fromarray(idx, "P")
            p.putpalette(pal.tobytes())
            p.info["transparency"] = 255
            save_kw["transparency"] = 255
            exp = np.where((a < 128)[:, :, None], 255, exp).astype(np.uint8)
            im = p
        elif mode == "PA":
            im = p.convert("PA")
            im.putalpha(Image.fromarray(a))
            exp = over_white(exp, a)
        else:
            im = p
    elif mode == "I;16":
        im = Image.fromarray(gray.astype(np.uint16) * 257)  # full 16-bit range
        exp = _gray3(gray)
    elif mode == "I":
        im = Image.fromarray(gray.astype(np.int32) * 257, "I")
        exp = _gray3(gray)
    elif mode == "F":
        im = Image.fromarray(gray.astype(np.float32) / 255.0, "F")  # 0..1 floats
        exp = _gray3(gray)
    elif mode == "RGB":
        im, exp = Image.fromarray(rgb), rgb
    elif mode == "RGBA":
        im = Image.fromarray(np.dstack([rgb, a]), "RGBA")
        exp = over_white(rgb, a)
    else:  # CMYK, YCbCr, LAB, HSV: colour-space round trips, close to the photo
        im, exp = Image.fromarray(rgb).convert(mode), rgb
    return im, exp, save_kw


def encode(im: Image.Image, fmt: str, **kw) -> bytes | None:
    """Pillow's bytes for `im` in `fmt`, or None when Pillow cannot write that mode there."""
    buf = io.BytesIO()
    try:
        im.save(buf, fmt, **kw)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return buf.getvalue()


def holds(mode: str, fmt: str, data: bytes) -> bool:
    """True when the file holds `mode` itself (Pillow did not convert it on save)."""
    with Image.open(io.BytesIO(data)) as im:
        got = im.mode
        has_t = "transparency" in im.info
    want = {"P+t": "P"}.get(mode, mode)
    if mode == "P+t" and not has_t:
        return False
    return got == want or got == _SAME.get((fmt, mode))


def matrix(size: tuple[int, int] = SIZE) -> tuple[list[Sample], dict[tuple[str, str], str]]:
    """(samples, status) for MODES x FORMATS. status: 'held' (a sample), 'refused' (Pillow
    cannot write it), or 'converted' (Pillow wrote another mode)."""
    a = alpha(size)
    samples: list[Sample] = []
    status: dict[tuple[str, str], str] = {}
    for i, mode in enumerate(MODES):
        rgb = photo(PHOTOS[i % len(PHOTOS)], size)
        im, exp, kw = make(mode, rgb, a)
        for fmt in FORMATS:
            data = encode(im, fmt, **kw)
            if data is None:
                status[mode, fmt] = "refused"
                continue
            if not holds(mode, fmt, data):
                status[mode, fmt] = "converted"
                continue
            status[mode, fmt] = "held"
            samples.append(Sample(f"{mode}.{fmt.lower()}", mode, fmt, data, exp,
                                  lossy=fmt in LOSSY, resized=fmt == "ICO"))
    return samples, status


def animations(size: tuple[int, int] = SIZE) -> list[Sample]:
    """Animated GIF, APNG, animated WebP and a multi-frame TIFF; the first frame is expected."""
    frames = [photo(n, size) for n in ("chelsea", "coffee", "astronaut")]
    a = alpha(size)
    out: list[Sample] = []
    # GIF: palette frames, the first with GIF transparency.
    p, pal = _palette(frames[0])
    idx = np.where(a < 128, 255, np.asarray(p)).astype(np.uint8)
    first = Image.fromarray(idx, "P")
    first.putpalette(pal.tobytes())
    rest = [Image.fromarray(f).quantize(255) for f in frames[1:]]
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=rest, duration=80, loop=0, transparency=255)
    exp = np.where((a < 128)[:, :, None], 255, pal[np.asarray(p)]).astype(np.uint8)
    out.append(Sample("animated.gif", "P+t", "GIF", buf.getvalue(), exp, lossy=False, frames=3))
    rgba = [Image.fromarray(np.dstack([f, a]), "RGBA") for f in frames]
    for fmt, kw, lossy in (("PNG", {}, False), ("WEBP", {"quality": 90}, True)):
        buf = io.BytesIO()
        rgba[0].save(buf, fmt, save_all=True, append_images=rgba[1:], duration=80, loop=0, **kw)
        out.append(Sample(f"animated.{fmt.lower()}", "RGBA", fmt, buf.getvalue(),
                          over_white(frames[0], a), lossy=lossy, frames=3))
    buf = io.BytesIO()
    Image.fromarray(frames[0]).save(buf, "TIFF", save_all=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    out.append(Sample("multipage.tiff", "RGB", "TIFF", buf.getvalue(), frames[0], lossy=False, frames=3))
    return out


def oriented(size: tuple[int, int] = (160, 104)) -> list[Sample]:
    """EXIF orientations 1-8 on JPEG, PNG, WebP and AVIF; the displayed picture is expected."""
    shown = photo("astronaut", size)
    out: list[Sample] = []
    for o, to_stored in _STORED_FROM_DISPLAYED.items():
        stored = Image.fromarray(np.ascontiguousarray(to_stored(shown)))
        exif = Image.Exif()
        exif[0x0112] = o
        for fmt, kw in (("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"quality": 90}),
                        ("AVIF", {"quality": 90})):
            out.append(Sample(f"orientation{o}.{fmt.lower()}", "RGB", fmt,
                              encode(stored, fmt, exif=exif, **kw) or b"", shown,
                              lossy=fmt in LOSSY, orientation=o))
    return out


def held_out() -> list[Sample]:
    """Files in skimage's wheel that Pillow opens (written by other encoders). Their expected
    picture is Pillow's own first-frame RGB/L conversion (these files are RGB, L or RGBA)."""
    import skimage

    root = os.path.join(os.path.dirname(skimage.__file__), "data")
    out: list[Sample] = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                mode, fmt, n = im.mode, im.format, getattr(im, "n_frames", 1)
                if mode == "RGBA":
                    arr = np.asarray(im)
                    exp = over_white(arr[:, :, :3], arr[:, :, 3])
                else:
                    exp = np.asarray(im.convert("RGB"))
        except Exception:  # noqa: BLE001 - not an image Pillow opens: not part of the set
            continue
        out.append(Sample(name, mode, fmt, data, exp, lossy=fmt == "JPEG", frames=n))
    return out

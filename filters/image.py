"""Image checks on raw bytes: decode once, record what we learn, never raise.

`inspect_image` is the annotate stage's image rule set: it opens the bytes with PIL, refuses
decompression bombs from the header alone (before any pixel buffer is allocated), decodes the
first frame fully (so truncation shows up), and records size after EXIF orientation, format,
mode, hashes. `to_rgb` is the one decoder model stages use, so every model sees the same pixels
(orientation applied, alpha flattened on white, CMYK and 16-bit brought to 8-bit RGB).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485
# pHash is computed on a 32x32 resample; box-reducing to ~64 px first (integer reduce, cheap)
# keeps the resample from dominating the cost without changing the low-frequency content.
_PHASH_REDUCE_TO = 64

IMAGE_COLUMNS: tuple[str, ...] = (
    "decode_ok", "decode_error", "image_format", "image_mode", "width", "height", "short_side",
    "aspect_ratio", "byte_size", "exif_rotated", "is_animated", "sha256", "phash", "color_sig",
    "near_sig",
)
SIG_GRID = 4  # color_sig: mean RGB over a 4x4 grid, 48 bytes
# near_sig: a band-limited 32x32 luma thumbnail (1024 bytes) + texture energy on a 2x2 grid for
# two gradient directions (8 bytes). Band-limiting (Gaussian blur before sampling) keeps the
# thumbnail smooth, so dedup can resample it at a sub-pixel crop offset without aliasing:
# textures finer than ~3 thumbnail pixels blur to their mean, and the texture bytes keep them apart.
# Then Cb and Cr thumbnails at 16x16 (512 bytes), band-limited the same way: luma alone lets a
# red shape match a green one of the same brightness.
NEAR_GRID = 32
NEAR_TEX_GRID = 2
NEAR_CHROMA_GRID = 16
NEAR_SIG_BYTES = NEAR_GRID * NEAR_GRID + 2 * NEAR_TEX_GRID * NEAR_TEX_GRID + 2 * NEAR_CHROMA_GRID ** 2
_NEAR_WORK = 128       # texture is measured on a 128x128 resample (a fixed relative scale)
_NEAR_BLUR = 0.6       # Gaussian sigma in thumbnail pixels
_NEAR_TEX_SCALE = 40.0  # texture byte = 40 * ln(1 + mean |gradient|)

# We enforce our own `max_pixels` from the header, so PIL's warning for images between its
# limit and twice its limit is noise here (images above 2x still raise DecompressionBombError,
# which we record as "bomb").
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

_MAGICS: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
)
# EXIF orientations 5..8 are the transposed ones: stored width is the displayed height.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_MAGICS) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _riff_truncated(data: bytes) -> bool:
    if data[:4] != b"RIFF" or len(data) < 8:
        return False
    declared = int.from_bytes(data[4:8], "little") + 8
    return declared > len(data)


def _classify_error(exc: Exception, data: bytes) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return "bomb"
    msg = str(exc).lower()
    if isinstance(exc, UnidentifiedImageError):
        # A known signature that PIL cannot parse is almost always a cut-off header.
        return "truncated" if _looks_like_image(data) else "not_image"
    if "truncated" in msg or _riff_truncated(data):
        return "truncated"
    return "corrupt"


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1


def _phash(im: Image.Image, orientation: int) -> str:
    small = im
    short = min(im.size)
    if short > _PHASH_REDUCE_TO:
        small = im.reduce(max(1, short // _PHASH_REDUCE_TO))
    small = _to_8bit(small)
    if small.mode == "P":
        # Converting a palette image with transparency straight to L makes PIL warn per image.
        small = small.convert("RGBA")
    return phash_hex(_transpose(small, orientation))


def _near_sig(im: Image.Image, orientation: int, rgb: Image.Image) -> bytes:
    # Same cheap integer reduce as pHash: the 128 px work image only needs ~2x oversampling.
    small = im
    short = min(im.size)
    if short > 2 * _NEAR_WORK:
        small = im.reduce(max(1, short // (2 * _NEAR_WORK)))
    return near_signature(_transpose(small, orientation), rgb)


def _color_signature(data: bytes, im: Image.Image, orientation: int) -> bytes:
    """Mean colour over a 4x4 grid (48 bytes): the colour layout pHash (luma only) cannot see."""
    return _small_rgb(data, im, orientation).resize((SIG_GRID, SIG_GRID), Image.Resampling.BOX).tobytes()


def _small_rgb(data: bytes, im: Image.Image, orientation: int) -> Image.Image:
    """The image in RGB for colour stats, orientation applied. JPEGs were decoded to grey for
    pHash, so their colour comes from a 1/8-scale draft decode, which costs a small fraction of
    the full decode."""
    if im.format == "JPEG" and im.mode == "L":
        with Image.open(io.BytesIO(data)) as small:
            small.draft("RGB", (max(1, small.size[0] // 8), max(1, small.size[1] // 8)))
            rgb = small.convert("RGB")
    else:
        rgb = _to_8bit(im)
        rgb = rgb.convert("RGBA").convert("RGB") if rgb.mode in ("P", "PA", "LA") else rgb.convert("RGB")
    return _transpose(rgb, orientation)


def near_signature(im: Image.Image, rgb: Image.Image | None = None) -> bytes:
    """near_sig of a decoded image (any mode; orientation already applied): see NEAR_SIG_BYTES.

    Both parts are measured relative to the image frame, so a resized copy gets (nearly) the same
    bytes and a slightly cropped copy a slightly stretched thumbnail that dedup aligns."""
    from PIL import ImageFilter

    g = _to_8bit(im)
    if g.mode == "P":
        g = g.convert("RGBA")
    g = g.convert("L")
    work = g.resize((_NEAR_WORK, _NEAR_WORK), Image.Resampling.BOX)
    arr = np.asarray(work, dtype=np.float32)
    gx = np.abs(np.diff(arr, axis=1))[:-1, :]
    gy = np.abs(np.diff(arr, axis=0))[:, :-1]
    t, c = NEAR_TEX_GRID, (_NEAR_WORK - 1) // NEAR_TEX_GRID
    cells = [d[:t * c, :t * c].reshape(t, c, t, c).mean(axis=(1, 3)) for d in (gx, gy)]
    tex = np.clip(np.round(_NEAR_TEX_SCALE * np.log1p(np.stack(cells))), 0, 255).astype(np.uint8)
    scale = _NEAR_WORK // NEAR_GRID
    thumb = work.filter(ImageFilter.GaussianBlur(_NEAR_BLUR * scale)).resize(
        (NEAR_GRID, NEAR_GRID), Image.Resampling.BOX)
    if rgb is None:
        rgb = g.convert("RGB")
    cw = 4 * NEAR_CHROMA_GRID
    ycc = rgb.convert("RGB").resize((cw, cw), Image.Resampling.BILINEAR).convert("YCbCr")
    # PIL blurs only RGB-like modes: the YCbCr planes are blurred as if they were RGB.
    ycc = Image.frombytes("RGB", ycc.size, ycc.tobytes()).filter(ImageFilter.GaussianBlur(_NEAR_BLUR * 4)).resize(
        (NEAR_CHROMA_GRID, NEAR_CHROMA_GRID), Image.Resampling.BOX)
    chroma = np.asarray(ycc, np.uint8)[:, :, 1:].transpose(2, 0, 1)
    return thumb.tobytes() + tex.tobytes() + chroma.tobytes()


def color_distance(a: bytes | None, b: bytes | None) -> float:
    """Mean absolute difference (0-255) between two colour signatures; inf if either is missing."""
    if not a or not b or len(a) != len(b):
        return float("inf")
    return float(np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)).mean())


def _dct_matrix(n: int, keep: int) -> np.ndarray:
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


# First 8 rows of the (unnormalised, scipy type-II) 32-point DCT: only the 8x8 low-frequency
# block is used by pHash, so two small matrix products replace two full scipy DCTs.
_DCT8 = _dct_matrix(32, 8)


def phash_hex(im: Image.Image) -> str:
    """imagehash.phash(im) (hash_size=8, highfreq_factor=4) as 16 hex digits, computed with a
    truncated DCT matrix: same pixels, same 8x8 block, same median rule (about 10x faster than
    imagehash's full scipy DCT on 32x32; tests check it equals imagehash.phash)."""
    px = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = _DCT8 @ px @ _DCT8.T
    bits = (low > np.median(low)).ravel()
    return np.packbits(bits).tobytes().hex()


def _transpose(im: Image.Image, orientation: int) -> Image.Image:
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return im.transpose(method) if method is not None else im


def _to_8bit(im: Image.Image) -> Image.Image:
    """Bring 16/32-bit integer and float single-channel images to 8-bit 'L' by scaling.

    PIL's own I;16 -> L conversion clips at 255, which turns most 16-bit images white.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    return im


def inspect_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Decode `data` once and return the stats in IMAGE_COLUMNS. Never raises.

    decode_error is None on success, else one of: "empty", "not_image", "truncated", "bomb"
    (width*height above `max_pixels`, checked from the header before any pixel allocation),
    "corrupt" (anything else the decoder rejects). Size stats are filled whenever the header was
    readable, even for bombs and truncated bodies, so select can report them.
    """
    if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
        data = b""  # not bytes at all (e.g. a str): recorded as an empty body, never a crash
    out: dict[str, Any] = {
        "decode_ok": False, "decode_error": None, "image_format": None, "image_mode": None,
        "width": None, "height": None, "short_side": None, "aspect_ratio": None,
        "byte_size": len(data) if data else 0, "exif_rotated": False, "is_animated": False,
        "sha256": hashlib.sha256(data).hexdigest() if data else None, "phash": None,
        "color_sig": None, "near_sig": None,
    }
    if not data:
        out["decode_error"] = "empty"
        return out
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            out["decode_error"] = "not_image"
            return out
        data = bytes(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            orientation = _orientation(im)
            if orientation in _SWAPPING_ORIENTATIONS:
                w, h = h, w
            out.update(image_format=im.format, image_mode=im.mode, width=w, height=h,
                       short_side=min(w, h), aspect_ratio=max(w, h) / max(1, min(w, h)),
                       exif_rotated=orientation != 1,
                       is_animated=bool(getattr(im, "is_animated", False)))
            if w * h > max_pixels:
                out["decode_error"] = "bomb"
                return out
            if w == 0 or h == 0:
                out["decode_error"] = "corrupt"
                return out
            if im.format == "JPEG" and im.mode == "RGB":
                # pHash needs luma only: libjpeg decodes straight to grayscale at full size
                # (every scan is still entropy-decoded, so truncation and corrupt Huffman data
                # are caught; chroma IDCT and colour conversion are skipped). Y is the same
                # ITU-R 601 luma PIL's convert("L") computes. Model stages decode with to_rgb.
                im.draft("L", im.size)
            im.load()
            gray = im
            out["phash"] = _phash(gray, orientation)
            rgb = _small_rgb(data, im, orientation)
            out["color_sig"] = rgb.resize((SIG_GRID, SIG_GRID), Image.Resampling.BOX).tobytes()
            out["near_sig"] = _near_sig(im, orientation, rgb)
            out["decode_ok"] = True
    except Exception as e:  # noqa: BLE001 - any decoder failure is a recorded reason
        out["decode_error"] = _classify_error(e, data)
    return out


def inspect_images(datas: Iterable[bytes | None],
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, list[Any]]:
    """Batch form of `inspect_image`: one list per column of IMAGE_COLUMNS, row-aligned."""
    cols: dict[str, list[Any]] = {k: [] for k in IMAGE_COLUMNS}
    for data in datas:
        row = inspect_image(data, max_pixels)
        for k in IMAGE_COLUMNS:
            cols[k].append(row[k])
    return cols


def to_rgb(data: bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS,
           background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Decode to an 8-bit RGB image as displayed: EXIF orientation applied, first frame of an
    animation, alpha composited on `background`, CMYK/16-bit/float converted.

    Raises ValueError naming the reason (same names as inspect_image) on undecodable input;
    callers should only pass rows whose decode_ok is True.
    """
    if isinstance(data, Image.Image):
        im = data
    else:
        if not data:
            raise ValueError("to_rgb: empty image bytes (decode_error 'empty')")
        try:
            im = Image.open(io.BytesIO(data))
            if im.size[0] * im.size[1] > max_pixels:
                raise ValueError(f"to_rgb: {im.size[0]}x{im.size[1]} exceeds max_pixels={max_pixels} "
                                 "(decode_error 'bomb')")
            im.load()
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as one clear error type
            raise ValueError(f"to_rgb: cannot decode image ({_classify_error(e, bytes(data))}): {e}") from e
    im = ImageOps.exif_transpose(im) or im
    im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, background)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if im.mode != "RGB":
        # CMYK and YCbCr use PIL's built-in matrix conversion; good enough for models, which do
        # not see colour-managed output anyway.
        im = im.convert("RGB")
    return im


def to_rgb_batch(datas: Sequence[bytes]) -> list[Image.Image | None]:
    """Decode many; undecodable entries become None (the caller has decode_error for why)."""
    out: list[Image.Image | None] = []
    for d in datas:
        try:
            out.append(to_rgb(d))
        except ValueError:
            out.append(None)
    return out

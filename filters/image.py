"""Image checks on raw bytes: decode once, record what we learn, never raise.

`inspect_image` is the annotate stage's image rule set: it opens the bytes with PIL, refuses
decompression bombs from the header alone (before any pixel buffer is allocated), decodes the
first frame fully (so truncation shows up), and records size after EXIF orientation, format,
mode, hashes.

`to_rgb` is the one decode path: every stage that feeds pixels to a model or writes `key.jpg`
(annotate's hashes and signatures, score on CPU and, for the orientation, on the GPU, capfilt,
export, the trainer's reader) gets the same 8-bit RGB picture, the one a viewer sees:

* EXIF orientation (tag 0x0112 in the EXIF block of JPEG, PNG, WebP, TIFF...) applied;
* the first frame of an animation or multi-page file;
* alpha (RGBA, LA, PA, a palette or grey level marked transparent) composited on white,
  `ALPHA_BACKGROUND`, as a browser shows it on a default page;
* any mode Pillow opens converted: palette expanded, 1-bit to 0/255, CMYK / YCbCr / LAB / HSV
  by Pillow's conversions, 16-bit integer ("I;16*") divided by 257, 32-bit integer ("I") as 8-bit
  when its values fit, else as 16-bit (or scaled by its maximum beyond that), float ("F") as 0..1
  when its maximum is <= 1, else as 0..255; out-of-range values clipped.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485
# The one background alpha is composited on, in every stage (README: "One decode path").
ALPHA_BACKGROUND = (255, 255, 255)
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


def orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8 of an opened image; 1 when absent, unreadable or out of range.

    Read from what the header carries (JPEG APP1, WebP EXIF, TIFF IFD0, a PNG eXIf chunk before
    the pixel data; Pillow falls back to XMP's tiff:Orientation), never by decoding pixels:
    PngImageFile.getexif would decode the whole image to look for a late eXIf chunk, before
    the decompression-bomb check has run."""
    try:
        o = int(Image.Image.getexif(im).get(_EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1
    return o if 1 <= o <= 8 else 1


def peek(data: bytes) -> tuple[str | None, str | None, int]:
    """(format, mode, EXIF orientation) from the header alone, no pixel decode; (None, None, 1)
    when the header is unreadable. Lets export decide without decoding whether the bytes are
    already what every reader shows."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format, im.mode, orientation(im)
    except Exception:  # noqa: BLE001 - the decode itself reports why
        return None, None, 1


def _reduce_to(im: Image.Image, target: int) -> Image.Image:
    """Integer box-reduce so the short side stays >= target (cheap; only for L/RGB images)."""
    short = min(im.size)
    return im.reduce(short // target) if short >= 2 * target else im


def phash_image(im: Image.Image) -> str:
    """pHash of a decoded picture (to_rgb's output, or its L): box-reduced to ~64 px first,
    which keeps the 32x32 resample cheap without changing the low-frequency content."""
    return phash_hex(_reduce_to(im, _PHASH_REDUCE_TO))


def _jpeg_small_rgb(data: bytes, o: int) -> Image.Image:
    """A YCbCr JPEG's colour for the signatures, oriented: the luma pass skipped chroma, so
    colour comes from a 1/8-scale draft decode, a small fraction of the full decode's cost."""
    with Image.open(io.BytesIO(data)) as small:
        small.draft("RGB", (max(1, small.size[0] // 8), max(1, small.size[1] // 8)))
        return _transpose(small.convert("RGB"), o)


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
    """Bring 16/32-bit integer and float single-channel images to 8-bit 'L' by scaling (see the
    module docstring for the rule); a transparent grey level (PNG tRNS) becomes alpha ('LA').

    PIL's own I;16 -> L conversion clips at 255, which turns most 16-bit images white.
    """
    mode = im.mode
    if not (mode in ("I", "F") or mode.startswith("I;16")):
        return im
    raw = np.asarray(im)
    arr = raw.astype(np.float64)
    if mode.startswith("I;16"):
        arr /= 257.0
    elif mode == "I":
        top = arr.max(initial=0)
        if top > 255:
            arr *= 255.0 / (65535.0 if top <= 65535 else top)
    else:
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        if arr.max(initial=0) <= 1.0:
            arr *= 255.0
    out = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    t = im.info.get("transparency")
    if mode != "F" and isinstance(t, int):
        return Image.merge("LA", (out, Image.fromarray(np.where(raw == t, 0, 255).astype(np.uint8), "L")))
    return out


def _flatten(im: Image.Image) -> Image.Image:
    """A loaded image in any mode -> 8-bit 'L' or 'RGB' as displayed, before orientation: deep
    modes scaled, palettes expanded, alpha composited on ALPHA_BACKGROUND. 'L' is kept for grey
    pictures without alpha (its RGB is the same value three times; hashing needs only luma)."""
    im = _to_8bit(im)
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if im.mode in ("L", "RGB"):
        return im
    # 1 -> L (0/255); P, CMYK, YCbCr, LAB, HSV, RGBX -> RGB by Pillow's conversions (not colour
    # managed: models never saw colour-managed pixels either).
    return im.convert("L" if im.mode == "1" else "RGB")


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
            o = orientation(im)
            if o in _SWAPPING_ORIENTATIONS:
                w, h = h, w
            out.update(image_format=im.format, image_mode=im.mode, width=w, height=h,
                       short_side=min(w, h), aspect_ratio=max(w, h) / max(1, min(w, h)),
                       exif_rotated=o != 1,
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
                # ITU-R 601 luma PIL's convert("L") computes from to_rgb's RGB.
                im.draft("L", im.size)
                im.load()
                out["phash"] = phash_hex(_transpose(_reduce_to(im, _PHASH_REDUCE_TO), o))
                rgb = _jpeg_small_rgb(data, o)
                near_src = _transpose(_reduce_to(im, 2 * _NEAR_WORK), o)
                out["color_sig"] = rgb.resize((SIG_GRID, SIG_GRID), Image.Resampling.BOX).tobytes()
            else:
                # Everything else goes through to_rgb's own steps, so the hashes describe the
                # picture the models see (alpha on white, palette expanded, 16-bit scaled...).
                im.load()
                shown = _transpose(_flatten(im), o)
                out["phash"] = phash_image(shown)
                rgb = shown
                near_src = _reduce_to(shown, 2 * _NEAR_WORK)
                out["color_sig"] = shown.resize((SIG_GRID, SIG_GRID), Image.Resampling.BOX).convert(
                    "RGB").tobytes()
            out["near_sig"] = near_signature(near_src, rgb)
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
           draft: tuple[int, int] | None = None) -> Image.Image:
    """The one decoder: bytes (or an opened, not yet transposed image) -> the 8-bit RGB picture
    a viewer sees: EXIF orientation applied, first frame, alpha on ALPHA_BACKGROUND (white), any
    mode converted (rules in the module docstring).

    `draft` (w, h), for callers that downscale anyway: a JPEG is DCT-downscaled while decoding
    (by 2, 4 or 8) as long as the displayed picture stays at least w x h. Same picture, lower
    resolution, 2-4x less decode work for web-sized JPEGs.

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
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as one clear error type
            raise ValueError(f"to_rgb: cannot decode image ({_classify_error(e, bytes(data))}): {e}") from e
    o = orientation(im)
    try:
        if draft is not None and im.format == "JPEG":
            dw, dh = draft
            # The request is in displayed pixels; draft works on stored ones.
            im.draft(im.mode, (dh, dw) if o in _SWAPPING_ORIENTATIONS else (dw, dh))
        im.load()
        shown = _transpose(_flatten(im), o)
    except Exception as e:  # noqa: BLE001 - re-raised as one clear error type
        raw = b"" if isinstance(data, Image.Image) else bytes(data)
        raise ValueError(f"to_rgb: cannot decode image ({_classify_error(e, raw)}): {e}") from e
    return shown if shown.mode == "RGB" else shown.convert("RGB")


def export_jpeg(data: bytes, quality: int, fmt: str | None = None) -> bytes:
    """The bytes of an exported `key.jpg`. The original bytes when they already are what every
    reader shows: a JPEG in YCbCr/RGB or grey whose EXIF orientation is 1 (no generation loss).
    Anything else, including a JPEG with orientation 2-8 (a reader that ignores EXIF would show
    it rotated or mirrored) or CMYK, is to_rgb's picture re-encoded at `quality`, without EXIF.
    So key.jpg's size is annotate's width/height. `fmt` (annotate's image_format, optional)
    skips the header read for non-JPEGs."""
    if fmt in (None, "JPEG"):
        kind, mode, o = peek(data)
        if kind == "JPEG" and mode in ("RGB", "L") and o == 1:
            return data
    buf = io.BytesIO()
    to_rgb(data).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_rgb_batch(datas: Sequence[bytes]) -> list[Image.Image | None]:
    """Decode many; undecodable entries become None (the caller has decode_error for why)."""
    out: list[Image.Image | None] = []
    for d in datas:
        try:
            out.append(to_rgb(d))
        except ValueError:
            out.append(None)
    return out

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from filters.image import (ALPHA_BACKGROUND, IMAGE_COLUMNS, NEAR_SIG_BYTES, export_jpeg, inspect_image,
                           inspect_images, to_rgb)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1), "RGB")


def _png_with_header_size(w: int, h: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims w x h (CRC fixed, so PIL trusts the header)."""
    data = bytearray(_save(Image.new("RGB", (1, 1)), "PNG"))
    ihdr_start = 8 + 8  # signature, then length + type of the IHDR chunk
    body = bytearray(data[ihdr_start:ihdr_start + 13])
    body[0:8] = struct.pack(">II", w, h)
    data[ihdr_start:ihdr_start + 13] = body
    data[ihdr_start + 13:ihdr_start + 17] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)))
    return bytes(data)


def test_ok_jpeg_records_everything():
    d = _save(_gradient(64, 32), "JPEG")
    r = inspect_image(d)
    assert r["decode_ok"] and r["decode_error"] is None
    assert (r["image_format"], r["image_mode"], r["width"], r["height"]) == ("JPEG", "RGB", 64, 32)
    assert r["short_side"] == 32 and r["aspect_ratio"] == 2.0
    assert r["byte_size"] == len(d) and len(r["sha256"]) == 64
    assert len(r["phash"]) == 16 and int(r["phash"], 16) >= 0
    assert set(r) == set(IMAGE_COLUMNS)


@pytest.mark.parametrize("data", [None, b""])
def test_empty(data):
    r = inspect_image(data)
    assert r["decode_error"] == "empty" and not r["decode_ok"] and r["byte_size"] == 0


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_truncated(fmt):
    d = _save(_gradient(), fmt)
    r = inspect_image(d[: len(d) // 2])
    assert not r["decode_ok"] and r["decode_error"] == "truncated"


def test_truncated_header_with_known_signature():
    d = _save(_gradient(), "PNG")[:20]
    assert inspect_image(d)["decode_error"] == "truncated"


def test_not_image():
    assert inspect_image(b"<html><body>404 Not Found</body></html>")["decode_error"] == "not_image"


def test_corrupt_body():
    d = bytearray(_save(_gradient(128, 128), "JPEG", quality=90))
    # Destroy the start of the scan data: header parses, decoding fails or gives garbage.
    sos = d.find(b"\xff\xda")
    d[sos + 20: sos + 400] = b"\xff" * 380
    r = inspect_image(bytes(d))
    # libjpeg may tolerate some garbage; it must either decode or record a reason, never raise.
    assert r["decode_ok"] or r["decode_error"] in {"corrupt", "truncated"}


def test_bomb_by_parameter_reads_header_only():
    d = _save(_gradient(100, 100), "PNG")
    r = inspect_image(d, max_pixels=1000)
    assert r["decode_error"] == "bomb" and (r["width"], r["height"]) == (100, 100)


def test_bomb_header_claims_huge_size():
    d = _png_with_header_size(100_000, 100_000)  # 10 G pixels: allocating would be fatal
    r = inspect_image(d)
    assert r["decode_error"] == "bomb" and not r["decode_ok"]


def test_bomb_just_over_default():
    d = _png_with_header_size(10_000, 9_000)  # 90M > 89.48M, under PIL's own 2x limit
    r = inspect_image(d)
    assert r["decode_error"] == "bomb" and r["width"] == 10_000


def test_cmyk_jpeg():
    d = _save(_gradient().convert("CMYK"), "JPEG")
    r = inspect_image(d)
    assert r["decode_ok"] and r["image_mode"] == "CMYK" and r["phash"]
    assert to_rgb(d).mode == "RGB"


def test_16bit_png():
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    d = _save(Image.fromarray(arr), "PNG")
    r = inspect_image(d)
    assert r["decode_ok"] and r["image_mode"].startswith("I")
    rgb = to_rgb(d)
    px = np.asarray(rgb)
    assert rgb.mode == "RGB" and px.min() < 10 and px.max() > 245  # scaled, not clipped white


def test_palette_with_alpha():
    im = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    im.paste((0, 0, 255, 255), (0, 0, 16, 32))
    d = _save(im.convert("P"), "PNG", transparency=0)
    r = inspect_image(d)
    assert r["decode_ok"] and r["image_mode"] == "P"
    rgb = to_rgb(d)
    assert rgb.mode == "RGB"


def test_rgba_flattened_on_white():
    d = _save(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG")
    assert to_rgb(d).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (20, 10), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    r = inspect_image(buf.getvalue())
    assert r["decode_ok"] and r["is_animated"] and (r["width"], r["height"]) == (20, 10)
    assert to_rgb(buf.getvalue()).size == (20, 10)


def _blocks(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, size=(4, 8, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.NEAREST)


def test_exif_rotated():
    im = _blocks(200, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    d = _save(im, "JPEG", exif=exif)
    r = inspect_image(d)
    assert r["decode_ok"] and r["exif_rotated"]
    assert (r["width"], r["height"]) == (100, 200)
    assert to_rgb(d).size == (100, 200)
    plain = inspect_image(_save(im.transpose(Image.Transpose.ROTATE_270), "JPEG"))
    # Same displayed picture, so pHash after orientation is (near) identical.
    dist = bin(int(plain["phash"], 16) ^ int(r["phash"], 16)).count("1")
    assert dist <= 6


def test_webp_and_extreme_aspect():
    r = inspect_image(_save(_gradient(300, 10), "WEBP"))
    assert r["decode_ok"] and r["aspect_ratio"] == 30.0 and r["short_side"] == 10


def test_never_raises_on_random_bytes():
    rng = np.random.default_rng(0)
    base = _save(_gradient(), "JPEG")
    for i in range(200):
        d = np.frombuffer(base, dtype=np.uint8).copy()
        d[rng.integers(0, len(d), size=8)] = rng.integers(0, 256, size=8, dtype=np.uint8)
        r = inspect_image(d[: rng.integers(1, len(d) + 1)].tobytes())
        assert r["decode_ok"] or r["decode_error"] in {"truncated", "corrupt", "not_image", "bomb"}


def test_batch_columns_are_row_aligned():
    good = _save(_gradient(), "PNG")
    cols = inspect_images([good, None, b"junk", good])
    assert list(cols) == list(IMAGE_COLUMNS)
    assert cols["decode_ok"] == [True, False, False, True]
    assert cols["decode_error"] == [None, "empty", "not_image", None]
    assert cols["sha256"][0] == cols["sha256"][3]


def test_to_rgb_bad_input_raises_clear_error():
    with pytest.raises(ValueError, match="not_image"):
        to_rgb(b"junk")
    with pytest.raises(ValueError, match="empty"):
        to_rgb(b"")


def test_phash_hex_equals_imagehash():
    import imagehash

    from filters.image import phash_hex

    rng = np.random.default_rng(3)
    for i in range(20):
        small = rng.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
        im = Image.fromarray(small, "RGB").resize((90 + i, 60 + 2 * i), Image.Resampling.BILINEAR)
        assert phash_hex(im) == str(imagehash.phash(im))


def _photo(w: int = 200, h: int = 136) -> Image.Image:
    """A real photo (skimage's wheel) when available, else the block pattern."""
    try:
        from skimage import data
    except ImportError:
        return _blocks(w, h)
    return Image.fromarray(data.chelsea()).resize((w, h), Image.Resampling.LANCZOS)


@pytest.mark.parametrize("mode,fmt", [("P", "GIF"), ("P", "PNG"), ("1", "PNG"), ("1", "PPM"),
                                      ("I;16", "PNG"), ("LAB", "TIFF"), ("P", "BMP"), ("L", "GIF")])
def test_valid_images_are_not_corrupt(mode, fmt):
    # Regression: the pHash path box-reduced images > 64 px in their own mode, which Pillow
    # refuses for P, 1, I;16, LAB... ("image has wrong mode"): everyday GIFs came out "corrupt".
    im = _photo()
    if mode == "I;16":
        im = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)
    else:
        im = im.convert(mode)
    r = inspect_image(_save(im, fmt))
    assert r["decode_ok"], r["decode_error"]
    assert (r["width"], r["height"]) == (200, 136) and r["phash"] and len(r["near_sig"]) == NEAR_SIG_BYTES


def test_alpha_is_hashed_on_the_models_background():
    # A transparent background is white for every consumer, so its hashes must see white too:
    # a logo on transparent black and the same logo on opaque white are the same picture.
    logo = _photo(120, 96)
    a = Image.new("L", logo.size, 0)
    a.paste(255, (30, 20, 90, 76))
    on_clear = Image.merge("RGBA", (*Image.new("RGB", logo.size, 0).split(), a))
    on_clear.paste(logo.crop((30, 20, 90, 76)), (30, 20))
    on_white = Image.new("RGB", logo.size, ALPHA_BACKGROUND)
    on_white.paste(logo.crop((30, 20, 90, 76)), (30, 20))
    r1, r2 = inspect_image(_save(on_clear, "PNG")), inspect_image(_save(on_white, "PNG"))
    assert r1["phash"] == r2["phash"] and r1["color_sig"] == r2["color_sig"]
    assert to_rgb(_save(on_clear, "PNG")).tobytes() == on_white.tobytes()


def test_16bit_grey_scaled_by_its_depth_not_by_its_content():
    # 16-bit values / 257, as browsers show them: a bright one maps to its 8-bit level, and a
    # nearly black one (all values < 256 of 65535) stays nearly black rather than being
    # mistaken for 8-bit data.
    for lo, hi, want in ((100 * 257, 200 * 257, (100, 200)), (100, 200, (0, 1))):
        arr = np.full((40, 60), hi, np.uint16)
        arr[:, :30] = lo
        px = np.asarray(to_rgb(_save(Image.fromarray(arr), "PNG")))
        assert (px[0, 0, 0], px[0, -1, 0]) == want


def test_draft_request_follows_exif_rotation():
    # A 90-degree JPEG (stored 800x400, shown 400x800) asked for at least 180x100 shown pixels:
    # the draft works on stored pixels, so the request must be turned too, or the DCT scale
    # picks 1/4 and the picture comes out 100 px wide.
    exif = Image.Exif()
    exif[0x0112] = 6
    d = _save(_blocks(800, 400), "JPEG", exif=exif)
    assert to_rgb(d, draft=(180, 100)).size == (200, 400)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_export_jpeg_keeps_bytes_only_when_readers_show_the_same_picture(orientation):
    im = _blocks(120, 80)
    exif = Image.Exif()
    exif[0x0112] = orientation
    d = _save(im, "JPEG", quality=90, exif=exif)
    out = export_jpeg(d, 95, "JPEG")
    shown = to_rgb(d)
    if orientation == 1:
        assert out == d  # no generation loss
    else:
        with Image.open(io.BytesIO(out)) as back:  # read as an EXIF-ignoring reader does
            assert back.getexif().get(0x0112, 1) == 1 and back.size == shown.size
            assert np.abs(np.asarray(back.convert("RGB"), float) - np.asarray(shown, float)).mean() < 3


def test_export_jpeg_reencodes_cmyk_and_non_jpeg():
    cmyk = _save(_blocks(64, 48).convert("CMYK"), "JPEG")
    out = export_jpeg(cmyk, 95, "JPEG")
    with Image.open(io.BytesIO(out)) as back:
        assert back.mode == "RGB"
    png = _save(Image.new("RGBA", (10, 8), (0, 0, 0, 0)), "PNG")
    with Image.open(io.BytesIO(export_jpeg(png, 95, "PNG"))) as back:
        assert back.format == "JPEG" and back.getpixel((0, 0))[0] > 250  # alpha on white

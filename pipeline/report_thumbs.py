"""Thumbnails for the run report: small JPEG files read from the download stage's image bytes.

Images are hostile web bytes: anything that fails to open, is larger than the pixel limit, or
was never downloaded gets a placeholder file instead, with the reason kept for the caption.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline import storage
from PIL import Image, ImageDraw, ImageOps

# The same default as annotate.max_pixels: above it a header alone can make us allocate GBs.
MAX_PIXELS = 89_478_485
MARKER = ".mmcurate-report-thumbs"
PLACEHOLDERS = {"missing": "no image bytes", "undecodable": "cannot decode", "too_large": "too many pixels"}

warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Thumb:
    src: str  # path relative to the report file
    status: str  # "ok" or a PLACEHOLDERS key
    width: int | None = None  # of the original image, when it opened
    height: int | None = None


def _placeholder(path: Path, text: str, size: int) -> None:
    im = Image.new("RGB", (size, size), (222, 222, 222))
    d = ImageDraw.Draw(im)
    d.line((0, 0, size, size), fill=(190, 190, 190), width=2)
    d.line((0, size, size, 0), fill=(190, 190, 190), width=2)
    d.rectangle((4, size // 2 - 9, size - 5, size // 2 + 9), fill=(245, 245, 245))
    d.text((8, size // 2 - 6), text, fill=(120, 30, 30))
    im.save(path, format="JPEG", quality=80)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB") if im.mode != "RGB" else im


def make_thumb(data: bytes | None, path: Path, size: int = 128, quality: int = 70,
               max_pixels: int = MAX_PIXELS) -> tuple[str, int | None, int | None]:
    """Write a thumbnail of `data` to `path`; returns (status, width, height). Never raises on
    bad bytes: the status says what went wrong and nothing is written."""
    if not data:
        return "missing", None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                return "too_large", w, h
            # JPEG can decode straight to a reduced scale: far cheaper than a full decode.
            im.draft("RGB", (size * 2, size * 2))
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            im.thumbnail((size, size))
            im.save(path, format="JPEG", quality=quality)
        return "ok", w, h
    except Exception:  # any decoder error on web bytes is a data fact, not a report failure
        return "undecodable", None, None


def _prepare_dir(thumbs: Path, size: int) -> None:
    thumbs.mkdir(parents=True, exist_ok=True)
    # Clear thumbnails of an earlier report, but only in a folder this code created.
    if (thumbs / MARKER).exists():
        for p in thumbs.glob("*.jpg"):
            p.unlink()
    (thumbs / MARKER).write_text("thumbnails written by `mmcurate report`; safe to delete\n")
    for key, text in PLACEHOLDERS.items():
        _placeholder(thumbs / f"_{key}.jpg", text, size)


def write_thumbs(run_dir: str | Path, uids: Iterable[int], thumbs: Path, size: int = 128,
                 quality: int = 70) -> dict[int, Thumb]:
    """Thumbnails for `uids` from RUN_DIR/download/*.parquet (column `image`), written to
    `thumbs`; every requested uid gets an entry (a placeholder when there is no usable image)."""
    wanted = set(int(u) for u in uids)
    _prepare_dir(thumbs, size)
    rel = thumbs.name
    out: dict[int, Thumb] = {}

    def record(uid: int, data: bytes | None) -> None:
        status, w, h = make_thumb(data, thumbs / f"{uid}.jpg", size, quality)
        name = f"{uid}.jpg" if status == "ok" else f"_{status}.jpg"
        out[uid] = Thumb(f"{rel}/{name}", status, w, h)

    for shard in storage.files(storage.wpath(run_dir) / "download", "*.parquet") if wanted else []:
        pf = storage.parquet_file(shard)
        if "image" not in pf.schema_arrow.names:
            continue
        here = wanted.intersection(pf.read(columns=["uid"]).column("uid").to_pylist())
        if not here:
            continue
        # Stream the bytes column in batches: a shard of full-size images can be hundreds of MB.
        for batch in pf.iter_batches(batch_size=256, columns=["uid", "image"]):
            ids = batch.column(0).to_pylist()
            pick = [i for i, u in enumerate(ids) if u in here]
            if not pick:
                continue
            images = batch.column(1)
            for i in pick:
                record(ids[i], images[i].as_py())
        wanted -= here
        if not wanted:
            break
    for uid in wanted:  # no download shard holds it
        out[uid] = Thumb(f"{rel}/_missing.jpg", "missing")
    return out

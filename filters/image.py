"""Image checks on raw bytes: decode once, record what we learn, never raise."""
from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image

DEFAULT_MAX_PIXELS = 89_478_485


def inspect_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    out: dict[str, Any] = {
        "decode_ok": False, "decode_error": None, "image_format": None, "image_mode": None,
        "width": None, "height": None, "short_side": None, "aspect_ratio": None,
        "byte_size": len(data) if data else 0, "exif_rotated": False,
        "sha256": hashlib.sha256(data).hexdigest() if data else None, "phash": None,
    }
    if not data:
        out["decode_error"] = "empty"
        return out
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                out["decode_error"] = "bomb"
                return out
            im.load()
            out.update(image_format=im.format, image_mode=im.mode, width=w, height=h,
                       short_side=min(w, h), aspect_ratio=max(w, h) / max(1, min(w, h)),
                       decode_ok=True)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a recorded reason
        msg = str(e).lower()
        out["decode_error"] = ("truncated" if "truncated" in msg else
                               "not_image" if "cannot identify" in msg else "corrupt")
    return out

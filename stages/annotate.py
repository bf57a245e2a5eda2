"""annotate: decode each image once and clean each caption, recording stats as columns.

It never drops a row. The cleaned caption (`caption_clean`: normalised, boilerplate removed,
traditional→simplified, PII redacted, sensitive words masked) is what flows on to scoring and
export; the original stays in the input shard for audit.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa

from filters.hashing import caption_key
from filters.image import inspect_image
from filters.text import CaptionCleaner, TextConfig
from pipeline.config import AnnotateConfig
from pipeline.stage import Resources, Stage

IMAGE_COLUMNS: dict[str, pa.DataType] = {
    "decode_ok": pa.bool_(), "decode_error": pa.string(), "image_format": pa.string(),
    "image_mode": pa.string(), "width": pa.int32(), "height": pa.int32(), "short_side": pa.int32(),
    "aspect_ratio": pa.float32(), "byte_size": pa.int64(), "exif_rotated": pa.bool_(),
    "is_animated": pa.bool_(), "sha256": pa.string(), "phash": pa.string(),
    "color_sig": pa.binary(), "near_sig": pa.binary(),
}
TEXT_COLUMNS: dict[str, pa.DataType] = {
    "caption_clean": pa.string(), "lang": pa.string(), "caption_key": pa.int64(),
    "text_decode_replaced": pa.bool_(), "text_t2s_chars": pa.int32(),
    "text_boilerplate_removed": pa.int32(), "text_uninformative": pa.bool_(),
    "text_is_filename": pa.bool_(), "text_hashtag_only": pa.bool_(), "text_chars": pa.int32(),
    "text_words": pa.int32(), "text_zh_chars": pa.int32(), "text_repetition": pa.float32(),
    "sensitive_hits": pa.int32(), "sensitive_words": pa.list_(pa.string()),
    "pii_phone": pa.int32(), "pii_email": pa.int32(), "pii_id": pa.int32(), "pii_card": pa.int32(),
    "pii_ip": pa.int32(), "pii_url": pa.int32(), "pii_name": pa.int32(),
}
# filters/text.py names → column names here
_RENAME = {"caption": "caption_clean", "text_lang": "lang"}


def sniff_html(data: bytes | None) -> bool:
    head = (data or b"")[:512].lstrip().lower()
    # Markup where an image should be: an error page or a soft-404 served with an image type.
    return head.startswith(b"<")


def key_code(text: str | None) -> int | None:
    """Exact-dedup key of a caption as a 63-bit code: compact at 10M rows, collisions ~N^2/2^64."""
    k = caption_key(text)
    if k is None:
        return None
    return int.from_bytes(hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class AnnotateStage(Stage):
    name = "annotate"
    needs = ("image", "download_ok", "caption")
    provides = (*IMAGE_COLUMNS, *TEXT_COLUMNS)

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=512)

    def setup(self, state=None) -> None:
        c: AnnotateConfig = self.config
        self.cleaner = CaptionCleaner(TextConfig(
            boilerplate_path=c.boilerplate, t2s=c.traditional_to_simplified, redact_pii=c.redact_pii,
            sensitive_lexicon=c.sensitive_lexicon, sensitive_action=c.sensitive_action,
            sensitive_min_len=c.sensitive_min_len, sensitive_allowlist=tuple(c.sensitive_allowlist),
            sensitive_zh_boundaries=c.sensitive_zh_boundaries, redact_names=c.redact_names))

    def process(self, batch: pa.Table) -> pa.Table:
        if not hasattr(self, "cleaner"):
            self.setup()
        cfg: AnnotateConfig = self.config
        cols: dict[str, list] = {k: [] for k in (*IMAGE_COLUMNS, *TEXT_COLUMNS)}
        for data, ok in zip(batch.column("image").to_pylist(), batch.column("download_ok").to_pylist()):
            if not ok:
                stats = {"decode_ok": False, "decode_error": "not_downloaded", "byte_size": 0}
            else:
                stats = inspect_image(data, max_pixels=cfg.max_pixels)
                if stats.get("decode_error") in ("not_image", "corrupt") and sniff_html(data):
                    stats["decode_error"] = "html"
            for k in IMAGE_COLUMNS:
                cols[k].append(stats.get(k))
        text = self.cleaner.clean_batch(batch.column("caption").to_pylist())
        for src, values in text.items():
            dst = _RENAME.get(src, src)
            if dst in cols:
                cols[dst] = values
        cols["caption_key"] = [key_code(t) for t in cols["caption_clean"]]
        return pa.table({k: pa.array(v, t) for k, v in cols.items()
                         for t in [{**IMAGE_COLUMNS, **TEXT_COLUMNS}[k]]})

"""annotate: decode each image once and record its stats; adds columns, never drops a row."""
from __future__ import annotations

import pyarrow as pa

from filters.image import inspect_image
from pipeline.config import AnnotateConfig
from pipeline.stage import Resources, Stage

IMAGE_COLUMNS: dict[str, pa.DataType] = {
    "decode_ok": pa.bool_(), "decode_error": pa.string(), "image_format": pa.string(),
    "width": pa.int32(), "height": pa.int32(), "short_side": pa.int32(),
    "aspect_ratio": pa.float32(), "byte_size": pa.int64(), "sha256": pa.string(), "phash": pa.string(),
}


def sniff_html(data: bytes | None) -> bool:
    head = (data or b"")[:512].lstrip().lower()
    # Markup where an image should be: an error page or a soft-404 served with an image type.
    return head.startswith(b"<")


class AnnotateStage(Stage):
    name = "annotate"
    needs = ("image", "download_ok")
    provides = tuple(IMAGE_COLUMNS)

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=256)

    def process(self, batch: pa.Table) -> pa.Table:
        cfg: AnnotateConfig = self.config
        cols: dict[str, list] = {k: [] for k in IMAGE_COLUMNS}
        for data, ok in zip(batch.column("image").to_pylist(), batch.column("download_ok").to_pylist()):
            if not ok:
                stats = {"decode_ok": False, "decode_error": "not_downloaded", "byte_size": 0}
            else:
                stats = inspect_image(data, max_pixels=cfg.max_pixels)
                if stats.get("decode_error") in ("not_image", "corrupt") and sniff_html(data):
                    stats["decode_error"] = "html"
            for k in IMAGE_COLUMNS:
                cols[k].append(stats.get(k))
        return pa.table({k: pa.array(v, IMAGE_COLUMNS[k]) for k, v in cols.items()})

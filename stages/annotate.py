"""annotate: decode each image once and clean each caption, recording stats as columns.

It never drops a row. The cleaned caption (`caption_clean`: normalised, boilerplate removed,
traditional→simplified, PII redacted, sensitive words masked) is what flows on to scoring and
export; the original stays in the input shard for audit.

Its `prepare` pass (on the driver, before the shards) measures each sensitive-lexicon entry's
share of the run's own captions and exempts entries above `sensitive_max_share`: a raw lexicon's
everyday words (小男孩, 背景) would otherwise mask a large part of a run. The list, with counts,
goes to `sensitive_exemptions.json` in the run dir and to the log.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator

import pyarrow as pa

from filters.hashing import caption_key
from filters.image import inspect_image
from filters.sensitive import measure_shares, share_exemptions
from filters.text import CaptionCleaner, TextConfig
from pipeline import storage
from pipeline.config import AnnotateConfig
from pipeline.stage import Resources, Stage
from pipeline.store import atomic_write_json

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
SENSITIVE_REPORT = "sensitive_exemptions.json"

log = logging.getLogger(__name__)


def _sample_captions(store, limit: int) -> Iterator[object]:
    """Up to `limit` raw captions spread evenly over every input shard (the first rows of each),
    streamed batch by batch. Read from the input, not from a stage, so the sample is the same
    whichever shards failed before."""
    n_shards = store.n_shards
    per_shard = math.ceil(limit / max(1, n_shards))
    for shard in range(n_shards):
        left = per_shard
        pf = storage.parquet_file(store.path("input", shard))
        for batch in pf.iter_batches(columns=["caption"], batch_size=min(8192, per_shard)):
            vals = batch.column(0).to_pylist()[:left]
            yield from vals
            left -= len(vals)
            if left <= 0:
                break


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

    def text_config(self, exempt: tuple[str, ...] = ()) -> TextConfig:
        c: AnnotateConfig = self.config
        return TextConfig(
            boilerplate_path=c.boilerplate, t2s=c.traditional_to_simplified, redact_pii=c.redact_pii,
            pii_action=c.pii_action, phone_regions=tuple(c.phone_regions),
            phone_bare_numbers=c.phone_bare_numbers,
            sensitive_lexicon=c.sensitive_lexicon, sensitive_action=c.sensitive_action,
            sensitive_min_len=c.sensitive_min_len, sensitive_allowlist=tuple(c.sensitive_allowlist),
            sensitive_zh_boundaries=c.sensitive_zh_boundaries, redact_names=c.redact_names,
            sensitive_strict=tuple(c.sensitive_strict), sensitive_strict_file=c.sensitive_strict_file,
            sensitive_common_rank=c.sensitive_common_rank, sensitive_exempt=exempt)

    def prepare(self, store) -> dict | None:
        c: AnnotateConfig = self.config
        if c.sensitive_lexicon == "":
            return None
        # The matcher sees the text it sees in process() (normalised, boilerplate removed, PII
        # redacted); names are redacted after matching, so the name detector is not built.
        cleaner = CaptionCleaner(self.text_config(), names=False)
        matcher = cleaner.sensitive
        exempt: dict[str, tuple[int, float]] = {}
        n = 0
        if matcher is not None and c.sensitive_max_share is not None:
            n, counts = measure_shares(matcher, (cleaner.sensitive_input(x) for x in _sample_captions(
                store, c.sensitive_share_sample)))
            exempt = share_exemptions(counts, n, c.sensitive_max_share, strict=matcher.strict)
        report = {
            "lexicon": c.sensitive_lexicon or "(shipped default: all entries strict)",
            "entries_matched": len(matcher.words) if matcher else 0,
            "strict": sorted(matcher.strict) if matcher else [],
            "common_rank": c.sensitive_common_rank, "max_share": c.sensitive_max_share,
            "captions_measured": n,
            "exempt_common": [{"word": w, "why": why} for w, why in sorted(matcher.exempted.items())]
            if matcher else [],
            "exempt_share": [{"word": w, "captions": k, "share": sh} for w, (k, sh) in exempt.items()],
        }
        atomic_write_json(report, storage.wpath(self.run.workdir) / SENSITIVE_REPORT)
        if report["exempt_common"] or exempt:
            log.info("sensitive lexicon: %d everyday words exempted by jieba's counts (%s); %d by their "
                     "share of %d captions (%s); see %s", len(report["exempt_common"]),
                     ", ".join(e["word"] for e in report["exempt_common"][:10]), len(exempt), n,
                     ", ".join(f"{w} {100 * sh:.1f}%" for w, (_, sh) in list(exempt.items())[:10]),
                     SENSITIVE_REPORT)
        return {"exempt": {w: list(v) for w, v in exempt.items()}}

    def setup(self, state=None) -> None:
        exempt = tuple((state or {}).get("exempt", {}))
        self.cleaner = CaptionCleaner(self.text_config(exempt))

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

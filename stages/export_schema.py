"""The export's one schema: the manifest's columns, each sample's json fields and the per-tar
parquet's columns, with fixed types whichever stages ran. A value a stage did not produce is a
typed null, so exports of different recipes (or rounds) load and concatenate as one table.

Bump SCHEMA_VERSION when a field is renamed, removed or retyped (adding one is also a bump: a
reader concatenating two exports needs the same columns); README "Export schema" documents it.
"""
from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

from filters.image_tags import TAG_COLUMNS
from stages.annotate import IMAGE_COLUMNS, TEXT_COLUMNS

SCHEMA_VERSION = 1

# A caption with the score that kept it and the model that gave the score.
CAPTION_TYPE = pa.struct([("text", pa.string()), ("origin", pa.string()), ("score", pa.float32()),
                          ("scorer", pa.string())])
CAPTION_LIST = pa.list_(CAPTION_TYPE)

# Every column a stage of STAGE_ORDER adds (bytes and embedding vectors excepted), in pipeline
# order. Input columns listed in the recipe's `keep_cols` follow these in the manifest.
MANIFEST_COLUMNS: dict[str, pa.DataType] = {
    "uid": pa.int64(), "key": pa.string(), "url": pa.string(), "caption": pa.string(),
    "download_ok": pa.bool_(), "download_reason": pa.string(), "download_error": pa.string(),
    **IMAGE_COLUMNS, **TEXT_COLUMNS,
    "clip_score": pa.float32(), "clip_model": pa.string(), "clip_error": pa.string(),
    **TAG_COLUMNS,
    "dup_of": pa.int64(), "dup_reason": pa.string(),
    "capfilt_candidates": CAPTION_LIST, "capfilt_filter": pa.string(), "capfilt_web_score": pa.float32(),
    "capfilt_status": pa.string(),
    "decision": pa.string(), "reason": pa.string(), "captions": CAPTION_LIST, "capfilt_pass": pa.bool_(),
    "exported": pa.bool_(), "tar": pa.string(), "export_error": pa.string(),
    "export_width": pa.int32(), "export_height": pa.int32(),
}
# Columns that never go to the manifest: image bytes and vectors are large and live in the tars
# or the score stage's outputs.
NOT_IN_MANIFEST = ("image",)

# `key.json` in each tar. JSON numbers read back as int64/double, so those are the types here; a
# reader that infers types from a few samples (Hugging Face's webdataset builder) can be given
# these as `hf_features()`.
SAMPLE_FIELDS: dict[str, pa.DataType] = {
    "schema_version": pa.int64(), "key": pa.string(), "uid": pa.int64(), "run_id": pa.string(),
    "url": pa.string(), "caption": pa.string(), "lang": pa.string(),
    "width": pa.int64(), "height": pa.int64(),                      # of the exported image
    "original_width": pa.int64(), "original_height": pa.int64(),    # of the downloaded image
    "image_format": pa.string(), "sha256": pa.string(),             # of the downloaded bytes
    "clip_score": pa.float64(), "clip_model": pa.string(),
    # Image tags (nsfw, watermark, aesthetic): each score with the head that gave it.
    **{c: (pa.float64() if c.endswith("_score") else pa.string()) for c in TAG_COLUMNS if c != "tag_error"},
    "captions": pa.list_(pa.struct([("text", pa.string()), ("origin", pa.string()),
                                    ("score", pa.float64()), ("scorer", pa.string())])),
}
SAMPLE_SCHEMA = pa.schema(list(SAMPLE_FIELDS.items()))

# img2dataset's per-shard parquet (one per tar): every row planned for that tar, with its status.
TAR_TABLE_COLUMNS: dict[str, pa.DataType] = {
    **{k: v for k, v in SAMPLE_FIELDS.items() if k != "captions"},
    "status": pa.string(), "error_message": pa.string(), "tar": pa.string(),
}
TAR_TABLE_SCHEMA = pa.schema(list(TAR_TABLE_COLUMNS.items()))


def manifest_columns(available: Iterable[str]) -> list[str]:
    """The manifest's columns in order: the fixed ones, then extra input/stage columns."""
    avail = list(available)
    extra = [c for c in avail if c not in MANIFEST_COLUMNS and c not in NOT_IN_MANIFEST
             and not c.endswith("_emb")]
    return [*MANIFEST_COLUMNS, *extra]


def conform(table: pa.Table, columns: list[str]) -> pa.Table:
    """`table` with exactly `columns`: fixed ones cast to their type, absent ones typed nulls."""
    n = table.num_rows
    arrays, fields = [], []
    for c in columns:
        typ = MANIFEST_COLUMNS.get(c)
        if c in table.column_names:
            col = table.column(c)
            if typ is not None and col.type != typ:
                col = _cast(col, typ, c)
            arrays.append(col)
            fields.append(pa.field(c, col.type))
        else:
            typ = typ or pa.string()
            arrays.append(pa.nulls(n, typ))
            fields.append(pa.field(c, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema_metadata()))


def _cast(col: pa.ChunkedArray, typ: pa.DataType, name: str) -> pa.ChunkedArray:
    if pa.types.is_list(typ) and pa.types.is_struct(typ.value_type) and pa.types.is_list(col.type):
        # Caption lists from a stage that wrote fewer struct fields (no `scorer`): add them as nulls.
        return pa.chunked_array([pa.array(_fill_struct(ch.to_pylist(), typ.value_type), typ)
                                 for ch in col.chunks], typ)
    try:
        return col.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TypeError(f"manifest column {name!r} has type {col.type}, which does not convert to the "
                        f"export schema's {typ} (schema version {SCHEMA_VERSION}): {e}") from e


def _fill_struct(rows: list[Any], struct: pa.StructType) -> list[Any]:
    names = [struct.field(i).name for i in range(struct.num_fields)]
    return [None if r is None else [{k: (it or {}).get(k) for k in names} for it in r] for r in rows]


def schema_metadata() -> dict[bytes, bytes]:
    return {b"mmcurate.schema_version": str(SCHEMA_VERSION).encode()}


def hf_features(image_ext: str = "jpg"):
    """Hugging Face `datasets` features for the exported tars (`load_dataset("webdataset", ...,
    features=hf_features())`): its webdataset builder infers types from the first five samples,
    and a sample whose score is null there would type the column as null for every tar."""
    import datasets

    feats = datasets.Features.from_arrow_schema(pa.schema([("json", pa.struct(list(SAMPLE_FIELDS.items()))),
                                                           ("txt", pa.string()),
                                                           ("__key__", pa.string()),
                                                           ("__url__", pa.string())]))
    return datasets.Features({image_ext: datasets.Image(), "txt": feats["txt"], "json": feats["json"],
                              "__key__": feats["__key__"], "__url__": feats["__url__"]})

"""export: WebDataset tars of the kept samples (key.jpg, key.txt, key.json) and a parquet
manifest of every row with its decision, one of each per shard.

The tar and the manifest are written to temp names and renamed before the stage's own shard
output (the resume marker) lands, so a killed export is redone whole for that shard.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from filters.image import export_jpeg
from pipeline.config import ExportConfig
from pipeline.stage import Resources, Stage
from pipeline.store import shard_name

BINARY_OR_VECTOR = ("image",)
JSON_FIELDS = ("url", "lang", "width", "height", "image_format", "sha256", "clip_score")


def sample_key(uid: int) -> str:
    return f"{uid:09d}"


def to_jpeg(data: bytes, fmt: str | None, quality: int) -> bytes:
    """`key.jpg`: the decode path's picture (orientation applied, alpha on white). A JPEG that
    already shows it to readers ignoring EXIF (orientation 1, not CMYK) keeps its bytes; anything
    else is re-encoded. Rules in filters.image.export_jpeg."""
    return export_jpeg(data, quality, fmt)


class ExportStage(Stage):
    name = "export"
    needs = ("url", "caption", "decision", "reason", "image")
    provides = ("exported", "tar")

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=512)

    def needed_columns(self, available: Sequence[str]) -> Sequence[str]:
        # Everything upstream goes to the manifest, except bytes and embedding vectors.
        self._manifest_cols = [c for c in available if c not in BINARY_OR_VECTOR and not c.endswith("_emb")
                               and not (c == "caption" and not self.config.keep_original_caption
                                        and "caption_clean" in available)]
        return list(dict.fromkeys([*self.needs, *self._manifest_cols]))

    @property
    def out_dir(self) -> Path:
        return Path(self.run.workdir) / "export"

    def begin_shard(self, shard: int) -> None:
        self._shard = shard_name(shard)
        shards = self.out_dir / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        self._tar_final = shards / f"{self._shard}.tar"
        self._tar_tmp = shards / f".{self._shard}.{uuid.uuid4().hex[:8]}.tar.tmp"
        self._writer = wds.TarWriter(str(self._tar_tmp))
        self._manifest: list[pa.Table] = []

    def end_shard(self, shard: int) -> None:
        self._writer.close()
        os.replace(self._tar_tmp, self._tar_final)
        man = pa.concat_tables(self._manifest)
        path = self.out_dir / "manifest" / f"{self._shard}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(man, tmp, compression="zstd")
        os.replace(tmp, path)

    def _caption(self, row: dict) -> str:
        # CapFilt's kept captions, primary first; else the cleaned web caption.
        caps = row.get("captions") or []
        if caps and caps[0].get("text"):
            return caps[0]["text"]
        return row.get("caption_clean") or row.get("caption") or ""

    def process(self, batch: pa.Table) -> pa.Table:
        cfg: ExportConfig = self.config
        rows = batch.to_pylist()
        exported = []
        for row in rows:
            if row["decision"] != "kept":
                exported.append(False)
                continue
            key = sample_key(row["uid"])
            caption = self._caption(row)
            meta = {"key": key, "uid": row["uid"], "caption": caption,
                    **{f: row[f] for f in JSON_FIELDS if f in row and row[f] is not None}}
            if row.get("captions"):
                meta["captions"] = row["captions"]
            else:
                meta["captions"] = [{"text": caption, "origin": "web", "score": row.get("clip_score")}]
            self._writer.write({"__key__": key, "jpg": to_jpeg(row["image"], row.get("image_format"), cfg.jpeg_quality),
                                "txt": caption, "json": json.dumps(meta, ensure_ascii=False)})
            exported.append(True)
        self._manifest.append(batch.select(["uid", *[c for c in self._manifest_cols if c != "uid"]]))
        tar = f"shards/{self._shard}.tar"
        return pa.table({"exported": pa.array(exported, pa.bool_()),
                         "tar": pa.array([tar if e else None for e in exported], pa.string())})

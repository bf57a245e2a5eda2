"""export: WebDataset tars of the kept samples (key.<jpg|webp|png>, key.txt, key.json), resharded
evenly over the whole run, with the files trainers and loaders look for beside them, and a parquet
manifest of every row with its decision.

Two passes. Per input shard (parallel, resumable like every stage): each kept row's image is
encoded (resize, format) and staged with its txt and json in `_export_state/staged/NNNNN.tar`,
the img2dataset-style rows in `_export_state/staged/NNNNN.parquet`, and the shard's manifest part
in `export/manifest/`; the resume marker `_export_state/NNNNN.parquet` lands last. The kept rows'
output tars were assigned in `prepare` from select's decisions over the run (contiguous runs of
kept rows, sizes even to one sample), so every worker knows each row's tar and key up front.
Then `finish` (driver, after every shard) copies the staged members into `export/shards/NNNNN.tar`
and writes per tar its parquet and `NNNNN_stats.json` (last: a tar whose stats name the same
content is not rewritten, so a killed finish resumes), then `sizes.json` (open_clip) and
`shardindex.json` (wids). Keys are `<run id>_<uid>`: the run id is drawn once per run directory
(`run.json`), so keys never collide across runs or bootstrap rounds and stay fixed on resume.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from filters.image import export_jpeg, to_rgb
from filters.resize import resize_image
from pipeline import storage
from pipeline.config import ExportConfig
from pipeline.stage import Resources, Stage
from pipeline.store import atomic_write_json, atomic_write_parquet, shard_name, stage_dir
from stages.export_schema import (SAMPLE_FIELDS, SCHEMA_VERSION, TAR_TABLE_SCHEMA, conform,
                                  manifest_columns, schema_metadata)

RUN_FILE = "run.json"
SIZES_FILE = "sizes.json"
WIDS_INDEX = "shardindex.json"
PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}
TAG_FIELDS = [c for c in SAMPLE_FIELDS if c.endswith(("_score", "_head")) and c != "clip_score"]
_OUTPUT_NAME = re.compile(r"^\d{5,}(\.tar|\.parquet|_stats\.json)$")


def run_id(workdir: str | Path) -> str:
    """This run directory's id, drawn on first use and kept in run.json (resume keeps keys)."""
    p = storage.wpath(workdir) / RUN_FILE
    if p.exists():
        return json.loads(p.read_text(encoding="utf-8"))["run_id"]
    rid = uuid.uuid4().hex[:10]
    atomic_write_json({"run_id": rid}, p)
    return rid


def sample_key(rid: str, uid: int) -> str:
    # No dots: webdataset readers split a member name at the first dot into key and extension.
    return f"{rid}_{uid:09d}"


def export_dir(workdir: str | Path) -> Path:
    return storage.wpath(workdir) / "export"


def state_dir(workdir: str | Path) -> Path:
    return storage.wpath(workdir) / stage_dir("export")


def shard_files(workdir: str | Path, shard: int) -> list[Path]:
    """What phase one writes for an input shard besides its marker (removed to redo the shard)."""
    staged = state_dir(workdir) / "staged"
    return [export_dir(workdir) / "manifest" / f"{shard_name(shard)}.parquet",
            staged / f"{shard_name(shard)}.tar", staged / f"{shard_name(shard)}.parquet"]


def plan_tars(kept_per_shard: dict[int, int], kept_bytes: np.ndarray | None, samples_per_shard: int,
              bytes_per_shard: int | None) -> np.ndarray:
    """Index (among the run's kept rows, in shard then row order) of each output tar's first row.

    Rows are cut into n tars as evenly as the target allows: by count (sizes differ by at most
    one), or with `bytes_per_shard`, by cumulative downloaded bytes."""
    total = sum(kept_per_shard.values())
    if total == 0:
        return np.zeros(0, np.int64)
    if bytes_per_shard is None or kept_bytes is None:
        n = -(-total // samples_per_shard)
        return (np.arange(n, dtype=np.int64) * total) // n
    b = np.asarray(kept_bytes, np.float64)
    cum = np.concatenate([[0.0], np.cumsum(b)[:-1]])
    n = max(1, int(-(-b.sum() // bytes_per_shard)))
    tar_of = np.minimum((cum * n / max(b.sum(), 1.0)).astype(np.int64), n - 1)
    starts = np.flatnonzero(np.concatenate([[True], tar_of[1:] != tar_of[:-1]]))
    return starts.astype(np.int64)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata, so the same samples give byte-identical tars on every run.
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, 0o444, "", ""
    return ti


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    tf.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def _round(x: float | None) -> float | None:
    # float32 columns: six decimals is their precision, without the binary tail in the json.
    return None if x is None else round(float(x), 6)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def to_jpeg(data: bytes, fmt: str | None, quality: int) -> bytes:
    """`key.jpg`: the decode path's picture (orientation applied, alpha on white). A JPEG that
    already shows it to readers ignoring EXIF (orientation 1, not CMYK) keeps its bytes; anything
    else is re-encoded. Rules in filters.image.export_jpeg."""
    return export_jpeg(data, quality, fmt)


class ExportStage(Stage):
    name = "export"
    needs = ("url", "caption", "decision", "reason", "image")
    provides = ("key", "exported", "tar", "export_error", "export_width", "export_height")

    def resources(self) -> Resources:
        return Resources(cpus=1, batch_size=512)

    def needed_columns(self, available: Sequence[str]) -> Sequence[str]:
        # Everything upstream goes to the manifest, except bytes and embedding vectors.
        self._manifest_cols = manifest_columns(available)
        self._drop_caption = not self.config.keep_original_caption and "caption_clean" in available
        return list(dict.fromkeys([*self.needs, *(c for c in self._manifest_cols if c in available)]))

    # ---- driver: the run-wide tar plan ---------------------------------------------------------
    def prepare(self, store) -> dict[str, Any]:
        wd = storage.wpath(self.run.workdir)
        for tmp in storage.files(export_dir(wd), ".*.tmp", recursive=True):  # a killed run's partial files
            tmp.unlink()
        for old in [*storage.files(export_dir(wd), "[0-9]*.parquet"), export_dir(wd) / "_stage.json"]:
            storage.remove(old)  # resume markers of the layout before `_export_state`
        cfg: ExportConfig = self.config
        by_bytes = cfg.bytes_per_shard is not None and "byte_size" in store.column_sources(upto=self.name)
        kept_per_shard: dict[int, int] = {}
        kept_bytes = []
        for s in store.shards():
            t = store.read(s, ["decision", *(["byte_size"] if by_bytes else [])], upto=self.name)
            kept = np.asarray(t.column("decision").to_pylist(), dtype=object) == "kept"
            kept_per_shard[s] = int(kept.sum())
            if by_bytes:
                sizes = np.asarray(t.column("byte_size").fill_null(0).to_numpy(zero_copy_only=False))
                kept_bytes.append(sizes[kept])
        starts = plan_tars(kept_per_shard, np.concatenate(kept_bytes) if kept_bytes else None,
                           cfg.samples_per_shard, cfg.bytes_per_shard if by_bytes else None)
        before, acc = {}, 0
        for s in sorted(kept_per_shard):
            before[s], acc = acc, acc + kept_per_shard[s]
        return {"run_id": run_id(wd), "starts": starts, "kept_before": before}

    def setup(self, state: Any) -> None:
        self.state = state

    # ---- per input shard: encode and stage -----------------------------------------------------
    def begin_shard(self, shard: int) -> None:
        self._shard = shard
        self._kept_seen = 0
        staged = state_dir(self.run.workdir) / "staged"
        staged.mkdir(parents=True, exist_ok=True)
        self._tar_final = staged / f"{shard_name(shard)}.tar"
        self._tar_tmp = storage.staging_file(self._tar_final)
        self._tf = tarfile.open(self._tar_tmp, "w")
        self._rows: list[dict[str, Any]] = []
        self._manifest: list[pa.Table] = []

    def end_shard(self, shard: int) -> None:
        self._tf.close()
        # The staged tar, its table and the manifest part first; the executor writes the shard's
        # marker after them, and the marker's existence is what says the shard is done.
        storage.publish_file(self._tar_tmp, self._tar_final)
        staged = pa.Table.from_pylist(self._rows, schema=TAR_TABLE_SCHEMA)
        atomic_write_parquet(staged.replace_schema_metadata(schema_metadata()), self._tar_final.with_suffix(".parquet"))
        atomic_write_parquet(pa.concat_tables(self._manifest),
                             export_dir(self.run.workdir) / "manifest" / f"{shard_name(shard)}.parquet")

    def _caption(self, row: dict) -> str:
        # CapFilt's kept captions, primary first; else the cleaned web caption.
        caps = row.get("captions") or []
        if caps and caps[0].get("text"):
            return caps[0]["text"]
        return row.get("caption_clean") or row.get("caption") or ""

    def _encode(self, data: bytes, fmt: str | None) -> tuple[bytes, int, int]:
        cfg: ExportConfig = self.config
        if cfg.output_format == "jpg" and cfg.resize_mode == "no" and cfg.max_side is None:
            out = to_jpeg(data, fmt, cfg.jpeg_quality)
        else:
            im = resize_image(to_rgb(data), cfg.resize_mode, cfg.image_size, cfg.resize_only_if_bigger,
                              cfg.max_side)
            buf = io.BytesIO()
            im.save(buf, format=PIL_FORMAT[cfg.output_format],
                    **({"quality": cfg.jpeg_quality} if cfg.output_format != "png" else {}))
            out = buf.getvalue()
        with Image.open(io.BytesIO(out)) as check:
            w, h = check.size
        return out, w, h

    def _sample(self, row: dict, key: str, caption: str, w: int | None, h: int | None) -> dict[str, Any]:
        score = _round(row.get("clip_score"))
        caps = [{"text": c.get("text"), "origin": c.get("origin"), "score": _round(c.get("score")),
                 "scorer": c.get("scorer")} for c in row.get("captions") or []]
        if not caps:  # no capfilt: the web caption, scored by the score stage if it ran
            caps = [{"text": caption, "origin": "web", "score": score,
                     "scorer": row.get("clip_model") if score is not None else None}]
        meta = {"schema_version": SCHEMA_VERSION, "key": key, "uid": row["uid"],
                "run_id": self.state["run_id"], "url": row.get("url"), "caption": caption,
                "lang": row.get("lang"), "width": w, "height": h,
                "original_width": row.get("width"), "original_height": row.get("height"),
                "image_format": row.get("image_format"), "sha256": row.get("sha256"),
                "clip_score": score, "clip_model": row.get("clip_model"),
                **{c: _round(row.get(c)) if c.endswith("_score") else row.get(c) for c in TAG_FIELDS},
                "captions": caps}
        return meta

    def process(self, batch: pa.Table) -> pa.Table:
        cfg: ExportConfig = self.config
        starts = self.state["starts"]
        n = batch.num_rows
        keys = [sample_key(self.state["run_id"], u) for u in batch.column("uid").to_pylist()]
        exported, tars, errors = [False] * n, [None] * n, [None] * n
        widths: list[int | None] = [None] * n
        heights: list[int | None] = [None] * n
        for i, row in enumerate(batch.to_pylist()):
            if row["decision"] != "kept":
                continue
            g = self.state["kept_before"][self._shard] + self._kept_seen
            self._kept_seen += 1
            tar = f"{shard_name(int(np.searchsorted(starts, g, side='right')) - 1)}.tar"
            caption = self._caption(row)
            try:
                data, widths[i], heights[i] = self._encode(row["image"], row.get("image_format"))
            except Exception as e:  # noqa: BLE001 - a bad image is this row's error, not the shard's
                errors[i] = f"{type(e).__name__}: {e}"[:500]
            meta = self._sample(row, keys[i], caption, widths[i], heights[i])
            self._rows.append({**{k: v for k, v in meta.items() if k != "captions"}, "tar": tar,
                               "status": "failed_to_resize" if errors[i] else "success",
                               "error_message": errors[i]})
            if errors[i]:
                continue
            _add(self._tf, f"{keys[i]}.{cfg.output_format}", data)
            _add(self._tf, f"{keys[i]}.txt", caption.encode("utf-8"))
            _add(self._tf, f"{keys[i]}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            exported[i], tars[i] = True, f"shards/{tar}"
        out = pa.table({"key": pa.array(keys, pa.string()), "exported": pa.array(exported, pa.bool_()),
                        "tar": pa.array(tars, pa.string()), "export_error": pa.array(errors, pa.string()),
                        "export_width": pa.array(widths, pa.int32()),
                        "export_height": pa.array(heights, pa.int32())})
        man = batch
        if self._drop_caption:
            man = man.drop_columns(["caption"])
        for c in out.column_names:
            man = man.append_column(c, out.column(c))
        self._manifest.append(conform(man, self._manifest_cols))
        return out

    # ---- driver, after every shard: assemble the tars ------------------------------------------
    def finish(self, store) -> None:
        wd = storage.wpath(self.run.workdir)
        out_dir = export_dir(wd) / "shards"
        out_dir.mkdir(parents=True, exist_ok=True)
        staged = state_dir(wd) / "staged"
        stats: dict[str, dict] = {}
        pending: list[tuple[int, pa.Table]] = []
        current: str | None = None
        done = store.done_shards(self.name)
        staged_names = {f.name for f in storage.files(staged, "*.parquet")}
        for s in store.shards():
            p = staged / f"{shard_name(s)}.parquet"
            if not (s in done and p.name in staged_names):
                continue  # a shard that failed: its rows are accounted as failed, not exported
            self._ensure_manifest(store, s)
            t = storage.read_table(p)
            names = t.column("tar").to_pylist()
            i = 0
            while i < len(names):  # rows come in tar order: each tar is a contiguous run
                j = i
                while j < len(names) and names[j] == names[i]:
                    j += 1
                if current is not None and names[i] != current:
                    stats[current] = self._write_tar(out_dir, staged, current, pending)
                    pending = []
                current = names[i]
                pending.append((s, t.slice(i, j - i)))
                i = j
        if current is not None:
            stats[current] = self._write_tar(out_dir, staged, current, pending)
        self._close_staged()
        keep = {Path(n).stem for n in stats}
        for f in storage.files(out_dir):  # tars of an earlier plan
            if _OUTPUT_NAME.match(f.name) and f.name.split(".")[0].split("_")[0] not in keep:
                storage.remove(f)
        sizes = {name: st["successes"] for name, st in stats.items()}
        atomic_write_json(sizes, out_dir / SIZES_FILE)
        atomic_write_json({"__kind__": "wids-shard-index-v1", "wids_version": 1,
                           "name": f"mmcurate-{run_id(wd)}",
                           "shardlist": [{"url": name, "nsamples": st["successes"], "filesize": st["bytes"]}
                                         for name, st in stats.items()]}, out_dir / WIDS_INDEX)

    def _ensure_manifest(self, store, shard: int) -> None:
        """A manifest part deleted with export/ (markers kept) is rebuilt from the stage outputs."""
        path = export_dir(self.run.workdir) / "manifest" / f"{shard_name(shard)}.parquet"
        if path.exists():
            return
        available = list(store.column_sources(upto=self.name))
        self.needed_columns(available)
        t = store.read(shard, [c for c in self._manifest_cols if c in available], upto=self.name)
        marker = storage.read_table(store.path(self.name, shard))
        for c in self.provides:
            t = t.append_column(c, marker.column(c))
        if self._drop_caption:
            t = t.drop_columns(["caption"])
        atomic_write_parquet(conform(t, self._manifest_cols), path)

    def _staged(self, staged: Path, shard: int) -> tuple[BinaryIO, dict[str, tuple[int, int]]]:
        """The staged tar of `shard`, open, with each key's byte range (its members' headers and
        padded data, contiguous as staged). One shard at a time: tars are written in input order."""
        cur = getattr(self, "_open_staged", None)
        if cur is None or cur[0] != shard:
            self._close_staged()
            path = staged / f"{shard_name(shard)}.tar"
            spans: dict[str, tuple[int, int]] = {}
            with path.open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf.getmembers():
                    end = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                    start = spans.get(m.name.split(".", 1)[0], (m.offset, end))[0]
                    spans[m.name.split(".", 1)[0]] = (start, end)
            self._open_staged = cur = (shard, path.open("rb"), spans)
        return cur[1], cur[2]

    def _close_staged(self) -> None:
        cur = getattr(self, "_open_staged", None)
        if cur is not None:
            cur[1].close()
        self._open_staged = None

    def _write_tar(self, out_dir: Path, staged: Path, name: str, parts: list[tuple[int, pa.Table]]) -> dict:
        rows = pa.concat_tables([t for _, t in parts])
        status = rows.column("status").to_pylist()
        content = hashlib.sha256(json.dumps([SCHEMA_VERSION, rows.column("key").to_pylist(), status,
                                             rows.column("error_message").to_pylist()]).encode()).hexdigest()
        tar_path = out_dir / name
        stats_path = out_dir / f"{Path(name).stem}_stats.json"
        if tar_path.exists() and stats_path.exists():
            old = json.loads(stats_path.read_text(encoding="utf-8"))
            if old.get("content") == content:
                return old
        tmp = storage.staging_file(tar_path)
        # Whole member blocks are copied as staged (headers included): no re-encoding, and the
        # same samples give the same bytes.
        with open(tmp, "wb") as dst:
            for s, t in parts:
                src, spans = self._staged(staged, s)
                for k, st in zip(t.column("key").to_pylist(), t.column("status").to_pylist()):
                    if st != "success":
                        continue
                    if k not in spans:
                        raise RuntimeError(f"{staged / shard_name(s)}.tar lacks sample {k}; delete "
                                           f"{state_dir(self.run.workdir) / shard_name(s)}.parquet and "
                                           "run again to redo that shard's export")
                    start, end = spans[k]
                    src.seek(start)
                    dst.write(src.read(end - start))
            dst.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
        n_bytes = os.path.getsize(tmp)
        storage.publish_file(tmp, tar_path)
        atomic_write_parquet(rows, tar_path.with_suffix(".parquet"))
        counts: dict[str, int] = {}
        for st in status:
            counts[st] = counts.get(st, 0) + 1
        errors: dict[str, int] = {}
        for e in rows.column("error_message").drop_null().to_pylist():
            errors[e.split(":")[0]] = errors.get(e.split(":")[0], 0) + 1
        st = {"tar": name, "count": rows.num_rows, "successes": counts.get("success", 0),
              "failed_to_resize": rows.num_rows - counts.get("success", 0), "status_dict": counts,
              "error_types": errors, "bytes": n_bytes, "schema_version": SCHEMA_VERSION,
              "content": content}
        atomic_write_json(st, stats_path)  # last: its presence with this content marks the tar done
        return st

"""download: img2dataset fetches every URL; every input row comes back with bytes or a reason.

img2dataset runs over the input shards as they are (one input file per shard, same shard size),
so its output shard i holds exactly the uids of input shard i. Re-encoding is switched off: the
original bytes flow on and `annotate` decodes each image once, which is also where HTML served
as an image and truncated files are told apart.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import DownloadConfig, Recipe
from pipeline.stage import Resources, Stage
from pipeline.store import INPUT_DIR, ColumnStore, atomic_write_parquet, shard_name

log = logging.getLogger("mmcurate")
RAW_DIR = "download_raw"
_HTTP = re.compile(r"HTTP Error (\d{3})")


def classify_error(message: str | None) -> str:
    """img2dataset's free-text error → a short reason name that the manifest counts by."""
    if not message:
        return "download_error"
    m = _HTTP.search(message)
    if m:
        return f"http_{m.group(1)}"
    low = message.lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "unknown url type" in low or "no host given" in low or "nonetype" in low:
        return "invalid_url"
    if "refused" in low or "name or service not known" in low or "urlopen error" in low \
            or "reset by peer" in low or "remote end closed" in low:
        return "connection_error"
    return "download_error"


class DownloadStage(Stage):
    name = "download"
    provides = ("image", "download_ok", "download_reason", "download_error")

    def resources(self) -> Resources:
        return Resources(cpus=float(self.config.processes))

    # download is not mapped by an executor: img2dataset is its own distributed system.
    def run_all(self, store: ColumnStore, recipe: Recipe, ray_connected: bool) -> list[int]:
        cfg: DownloadConfig = self.config
        pending = [s for s in store.shards() if not store.done(self.name, s)]
        if not pending:
            return []
        raw = store.workdir / RAW_DIR
        if any(not (raw / f"{shard_name(s)}_stats.json").exists() for s in pending):
            self._img2dataset(store, recipe, raw, ray_connected)
        for s in pending:
            atomic_write_parquet(self._convert(store, raw, s), store.path(self.name, s))
        return pending

    def _img2dataset(self, store: ColumnStore, recipe: Recipe, raw: Path, ray_connected: bool) -> None:
        from img2dataset import download

        cfg: DownloadConfig = self.config
        distributor = cfg.distributor
        if distributor == "auto":
            distributor = "ray" if (ray_connected and recipe.ray_address) else "multiprocessing"
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        log.info("download: img2dataset over %d shards (%s, %d processes x %d threads)",
                 store.n_shards, distributor, cfg.processes, cfg.threads)
        download(
            url_list=str(store.workdir / INPUT_DIR), input_format="parquet", url_col="url",
            caption_col="caption", save_additional_columns=["uid"], output_format="parquet",
            output_folder=str(raw), processes_count=cfg.processes, thread_count=cfg.threads,
            number_sample_per_shard=store.meta["shard_size"], timeout=cfg.timeout, retries=cfg.retries,
            # Keep original bytes; decisions about size/aspect belong to select, not the downloader.
            resize_mode="no", disable_all_reencoding=True, min_image_size=0,
            max_aspect_ratio=float("inf"), incremental_mode="incremental", enable_wandb=False,
            distributor=distributor, user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=None if cfg.respect_robots_headers else [],
            compute_hash=None, verify_hash=None,
        )

    def _convert(self, store: ColumnStore, raw: Path, shard: int) -> pa.Table:
        uids = pq.read_table(store.path(INPUT_DIR, shard), columns=["uid"]).column("uid")
        path = raw / f"{shard_name(shard)}.parquet"
        if not path.exists():
            raise RuntimeError(f"img2dataset wrote no {path}; delete {raw} and re-run the download stage")
        t = pq.read_table(path, columns=["uid", "status", "error_message", "jpg"])
        t = t.sort_by("uid")
        got = t.column("uid")
        # Rows the downloader did not return are accounted for, never dropped.
        if not got.equals(uids):
            t = _align(t, uids)
        ok = pc.equal(t.column("status"), "success")
        ok = pc.fill_null(ok, False)
        errors = t.column("error_message").to_pylist()
        reasons = [None if o else classify_error(e) for o, e in zip(ok.to_pylist(), errors)]
        image = pc.if_else(ok, t.column("jpg").cast(pa.binary()), pa.scalar(None, pa.binary()))
        return pa.table({"uid": uids, "image": image, "download_ok": ok,
                         "download_reason": pa.array(reasons, pa.string()),
                         "download_error": pa.array([None if o else (e or "no response") for o, e in
                                                     zip(ok.to_pylist(), errors)], pa.string())})


def _align(t: pa.Table, uids: pa.ChunkedArray) -> pa.Table:
    by_uid = {u: i for i, u in enumerate(t.column("uid").to_pylist())}
    idx = [by_uid.get(u) for u in uids.to_pylist()]
    cols = {}
    for name in ("status", "error_message", "jpg"):
        col = t.column(name).to_pylist()
        cols[name] = [col[i] if i is not None else None for i in idx]
    cols["status"] = [s if i is not None else "missing" for s, i in zip(cols["status"], idx)]
    cols["error_message"] = [e if i is not None else "row missing from the downloader's output"
                             for e, i in zip(cols["error_message"], idx)]
    return pa.table({"uid": uids, "status": pa.array(cols["status"], pa.string()),
                     "error_message": pa.array(cols["error_message"], pa.string()),
                     "jpg": pa.array(cols["jpg"], pa.binary())})

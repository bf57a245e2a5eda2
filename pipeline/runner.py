"""Run a recipe: ingest, then each stage over the shards it has not finished yet."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from pipeline.accounting import check_and_record, format_summary
from pipeline.config import Recipe
from pipeline.executors import (LocalExecutor, RayExecutor, load_failed_shards, make_executor,
                                record_failed_shards, reset_failed_shards, without_shards,
                                write_failed_placeholders)
from pipeline.ingest import ingest
from pipeline.registry import build_stage, stage_config
from pipeline.store import ColumnStore, atomic_write_json, stage_dir

log = logging.getLogger("mmcurate")
FINGERPRINT = "_stage.json"


def _fingerprint(recipe: Recipe, stages: list[str]) -> dict[str, str]:
    """Each stage's fingerprint covers its own config and every earlier stage's, so changing a
    threshold redoes that stage and what follows it, and nothing upstream."""
    out, prev = {}, json.dumps(recipe.input.model_dump(), sort_keys=True) + str(recipe.shard_size)
    for name in stages:
        cfg = stage_config(recipe, name)
        # Only non-default settings count, so a release that adds an option does not redo work.
        dumped = cfg.model_dump(mode="json", exclude_defaults=True) if cfg is not None else None
        blob = prev + name + json.dumps(dumped, sort_keys=True)
        prev = hashlib.sha256(blob.encode()).hexdigest()[:16]
        out[name] = prev
    return out


def _invalidate_stale(workdir: Path, stages: list[str], fps: dict[str, str], forced: set[str]) -> None:
    stale = False
    for name in stages:
        d = workdir / stage_dir(name)
        marker = d / FINGERPRINT
        recorded = json.loads(marker.read_text())["fingerprint"] if marker.exists() else None
        changed = recorded is not None and recorded != fps[name]
        if name == "download" and changed and name not in forced:
            # Downloads are the one step that cannot be recomputed exactly (the web changes).
            log.warning("download settings changed since these images were fetched; keeping them "
                        "(use --redo download to fetch again)")
            changed = False
        if d.exists() and (stale or name in forced or changed):
            log.info("stage %s: settings changed or redo asked; its outputs will be recomputed", name)
            shutil.rmtree(d)
            stale = True
            if name == "download":
                shutil.rmtree(workdir / "download_raw", ignore_errors=True)
            if d.name != name:  # what the stage published under its own name (export/) is stale too
                shutil.rmtree(workdir / name, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
        # Temp files of a killed run: their shard was never renamed into place, so it is redone.
        for tmp in d.rglob(".*.tmp"):
            tmp.unlink()
        atomic_write_json({"fingerprint": fps[name]}, marker)


def _finish(stage, store: ColumnStore, failed: set[int]) -> None:
    """A stage's pass after all its shards (export assembles its tars); it must be idempotent,
    since a run killed during it calls it again."""
    finish = getattr(stage, "finish", None)
    if finish is not None:
        finish(without_shards(store, failed))


def run(recipe: Recipe, only: list[str] | None = None, redo: list[str] | None = None,
        executor: LocalExecutor | RayExecutor | None = None, quiet: bool = False) -> dict | None:
    """Run the recipe's stages (or `only` those) and, when select has run, check the accounting."""
    t_start = time.perf_counter()
    workdir = Path(recipe.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "recipe.json").write_text(recipe.model_dump_json(indent=2), encoding="utf-8")
    stages = list(recipe.stages)
    for name in only or []:
        if name not in stages:
            raise ValueError(f"stage {name!r} is not in this recipe's stages {stages}")
    meta = ingest(recipe.input, workdir, recipe.shard_size)
    log.info("input: %d rows in %d shards of up to %d", meta["n_rows"], meta["n_shards"], recipe.shard_size)
    _invalidate_stale(workdir, stages, _fingerprint(recipe, stages), set(redo or []))
    store = ColumnStore(workdir, stages)
    # Shards that failed before are tried again when their stage runs; until then (and when they
    # fail again) later stages skip them and placeholders account their rows as shard_error.
    failed = reset_failed_shards(store, stages, [n for n in stages if not only or n in only])
    own_executor = executor is None
    ex = executor or make_executor(recipe.executor, recipe.ray_address)
    timings = {}
    try:
        for name in stages:
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            stage = build_stage(name, recipe)
            if name == "download":
                done = stage.run_all(store, recipe, ray_connected=isinstance(ex, RayExecutor))
            else:
                pending = [s for s in store.shards() if not store.done(name, s) and s not in failed]
                if not pending:
                    log.info("stage %s: all %d shards already done", name, store.n_shards)
                    write_failed_placeholders(store, name, stage.provides, failed)
                    _finish(stage, store, failed)
                    continue
                state = stage.prepare(without_shards(store, failed))
                factory = functools.partial(build_stage, name, recipe)
                done = ex.map_shards(factory, store, pending, state, desc=name)
            failed |= record_failed_shards(store, name, done)
            write_failed_placeholders(store, name, stage.provides, failed)
            _finish(stage, store, failed)
            timings[name] = round(time.perf_counter() - t0, 2)
            log.info("stage %s: %d shards in %.1fs", name, len(done), timings[name])
    finally:
        if own_executor:
            ex.shutdown()
    if not (store.path("select", store.n_shards - 1).exists() and
            all(store.done("select", s) for s in store.shards())):
        return None
    summary = check_and_record(workdir, meta["n_rows"])
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    summary["stage_seconds"] = timings
    summary["failed_shards"] = [{k: r[k] for k in ("stage", "shard", "error", "attempts")}
                                for r in load_failed_shards(workdir)]
    atomic_write_json(summary, workdir / "summary.json")
    if not quiet:
        print(format_summary(summary))
        for r in summary["failed_shards"]:
            print(f"  shard {r['shard']} failed in stage {r['stage']} ({r['attempts']} attempts): "
                  f"{r['error'].splitlines()[0]}; its rows are failed/shard_error; run again to retry it")
    return summary

"""Run a recipe: ingest, then each stage over the shards it has not finished yet."""
from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.accounting import check_and_record, format_summary
from pipeline.config import Recipe
from pipeline.executors import (LocalExecutor, RayExecutor, load_failed_shards, make_executor,
                                record_failed_shards, reset_failed_shards, without_shards,
                                write_failed_placeholders)
from pipeline.fingerprint import input_fingerprint, stage_fingerprints, stage_settings
from pipeline.ingest import ingest
from pipeline.registry import build_stage
from pipeline.store import (INPUT_DIR, ColumnStore, RunOrderError, atomic_write_json, shard_name,
                            stage_dir)

log = logging.getLogger("mmcurate")
FINGERPRINT = "_stage.json"


def _marker(d: Path) -> dict:
    try:
        return json.loads((d / FINGERPRINT).read_text())
    except (OSError, ValueError):
        return {}


def _dirs(workdir: Path, name: str) -> list[Path]:
    """The stage's own directory, and what it publishes under its name when that differs."""
    return list(dict.fromkeys([workdir / stage_dir(name), workdir / name]))


def _has_outputs(workdir: Path, name: str) -> bool:
    return any(any(p.name != FINGERPRINT for p in storage.files(d, recursive=True)) for d in _dirs(workdir, name))


def _shards_done(workdir: Path, name: str, n_shards: int) -> int:
    return sum((workdir / stage_dir(name) / f"{shard_name(s)}.parquet").exists() for s in range(n_shards))


@dataclass
class _Plan:
    fps: dict[str, str]
    own: dict[str, str]  # each stage's own settings alone, to tell "changed" from "upstream changed"
    # stage -> why its outputs cannot be used: changed, redo, unknown, or gap (an earlier
    # stage's outputs they were computed from are gone)
    stale: dict[str, str]


def _plan(recipe: Recipe, workdir: Path, stages: list[str], base: str, redo: set[str], n_shards: int) -> _Plan:
    """Which stages hold outputs computed under other settings than the recipe's. Pure."""
    own = stage_settings(recipe, stages)
    fps = stage_fingerprints(recipe, stages, base=base, own=own)
    if "download" in stages and "download" not in redo:
        recorded = _marker(workdir / stage_dir("download")).get("fingerprint")
        if recorded is not None and recorded != fps["download"] and _has_outputs(workdir, "download"):
            # Downloads are the one step that cannot be recomputed exactly (the web changes); what
            # follows was computed from the kept images, so its fingerprints chain from theirs.
            log.warning("download settings changed since these images were fetched; keeping them "
                        "(use --redo download to fetch again)")
            fps = stage_fingerprints(recipe, stages, base=base, pinned={"download": recorded}, own=own)
    stale: dict[str, str] = {}
    redone, gap = False, False
    for name in stages:
        recorded = _marker(workdir / stage_dir(name)).get("fingerprint")
        redone = redone or name in redo
        if redone:
            stale[name] = "redo"
        elif not _has_outputs(workdir, name):
            pass
        elif recorded is None:
            if name != "download":  # a download written without the runner (bench) is adopted
                stale[name] = "unknown"
        elif recorded != fps[name]:
            stale[name] = "changed"
        elif gap:
            stale[name] = "gap"
        # Outputs computed from shards of an earlier stage that are gone (deleted, or a partial
        # copy) are not trusted: that stage recomputes them, and what follows is redone.
        gap = gap or name in stale or _shards_done(workdir, name, n_shards) < n_shards
    return _Plan(fps, own, stale)


def _refuse_if_out_of_order(workdir: Path, stages: list[str], plan: _Plan, only: list[str],
                            n_shards: int, recipe_path: str | None) -> None:
    """`--stage X` runs X on what earlier stages left; when one of them is stale or unfinished,
    X would compute from outputs a fresh run would not have, so the run stops (nothing deleted)."""
    last = max(stages.index(n) for n in only)
    need: list[tuple[str, str]] = []
    for name in stages[:last]:
        if name in only:
            continue
        why = plan.stale.get(name)
        if why == "changed":
            own = _marker(workdir / stage_dir(name)).get("settings")
            why = (f"stage {name}'s settings changed" if own != plan.own[name] else
                   f"stage {name} was computed from an earlier stage whose settings changed")
        elif why == "redo":
            why = f"stage {name} is to be redone (--redo)"
        elif why == "unknown":
            why = f"stage {name}'s outputs carry no fingerprint"
        elif why == "gap":
            why = f"stage {name} was computed from outputs of an earlier stage that are gone"
        else:
            done = _shards_done(workdir, name, n_shards)
            if done == n_shards:
                continue
            why = (f"stage {name} has not run" if done == 0 else
                   f"stage {name} has not finished ({done} of {n_shards} shards done)")
        need.append((name, why))
    if need:
        args = " ".join(f"--stage {n}" for n, _ in need)
        asked = " ".join(f"--stage {n}" for n in only)
        raise RunOrderError(f"cannot run {asked} yet: {need[0][1]}; run `mmcurate run "
                            f"{recipe_path or 'RECIPE.yaml'} {args}` (or the full recipe) first")


def _apply(workdir: Path, stages: list[str], plan: _Plan) -> None:
    """Clear every stale stage, whether it runs now or not, so no stale decision or export is
    left behind; then record in each stage directory the fingerprint its outputs belong to."""
    for name in stages:
        d = workdir / stage_dir(name)
        if name in plan.stale:
            log.info("stage %s: settings changed or redo asked; its outputs will be recomputed", name)
            for x in _dirs(workdir, name):
                storage.remove(x)
            if name == "download":
                storage.remove(workdir / "download_raw")
            if name == "select":
                storage.remove(workdir / "summary.json")
        d.mkdir(parents=True, exist_ok=True)
        # Temp files of a killed run: their shard was never renamed into place, so it is redone.
        # (An object store has none: an object is written whole or not at all.)
        for tmp in storage.files(d, ".*.tmp", recursive=True):
            tmp.unlink()
        m = _marker(d)
        if m.get("fingerprint") != plan.fps[name] or (name not in plan.stale and "settings" not in m):
            atomic_write_json({"fingerprint": plan.fps[name], "settings": plan.own[name]}, d / FINGERPRINT)


def _check_input(recipe: Recipe, workdir: Path) -> str:
    """The input's fingerprint. A workdir that ingested another input (settings, shard size or
    file contents) is refused: every stage's outputs there describe the old rows."""
    fp = input_fingerprint(recipe)
    recorded = _marker(workdir / INPUT_DIR).get("fingerprint")
    if recorded is not None and recorded != fp and (workdir / INPUT_DIR / "meta.json").exists():
        raise RunOrderError(f"the input changed since {workdir} ingested it (input settings, shard_size "
                            f"or the contents of {recipe.input.path}); use a new workdir, or delete "
                            f"{workdir} to start over")
    return fp


def _finish(stage, store: ColumnStore, failed: set[int]) -> None:
    """A stage's pass after all its shards (export assembles its tars); it must be idempotent,
    since a run killed during it calls it again."""
    finish = getattr(stage, "finish", None)
    if finish is not None:
        finish(without_shards(store, failed))


def run(recipe: Recipe, only: list[str] | None = None, redo: list[str] | None = None,
        executor: LocalExecutor | RayExecutor | None = None, quiet: bool = False,
        recipe_path: str | None = None) -> dict | None:
    """Run the recipe's stages (or `only` those) and, when select has run, check the accounting.
    Stale outputs (computed under other settings) are cleared first. With `only`, an earlier
    stage that is stale or unfinished raises RunOrderError before anything is touched; its
    message names the stages to run first (and `recipe_path`)."""
    t_start = time.perf_counter()
    workdir = storage.wpath(recipe.workdir)
    stages = list(recipe.stages)
    for name in [*(only or []), *(redo or [])]:
        if name not in stages:
            raise ValueError(f"stage {name!r} is not in this recipe's stages {stages}")
    base = _check_input(recipe, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = ingest(recipe.input, workdir, recipe.shard_size)
    if _marker(workdir / INPUT_DIR).get("fingerprint") != base:
        atomic_write_json({"fingerprint": base}, workdir / INPUT_DIR / FINGERPRINT)
    log.info("input: %d rows in %d shards of up to %d", meta["n_rows"], meta["n_shards"], recipe.shard_size)
    plan = _plan(recipe, workdir, stages, base, set(redo or []), meta["n_shards"])
    if only:
        _refuse_if_out_of_order(workdir, stages, plan, only, meta["n_shards"], recipe_path)
    # Stages are built before anything is cleared: a recipe error a stage finds ends the run here.
    built = {name: build_stage(name, recipe) for name in stages if not only or name in only}
    (workdir / "recipe.json").write_text(recipe.model_dump_json(indent=2), encoding="utf-8")
    _apply(workdir, stages, plan)
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
            stage = built[name]
            if name == "download":
                done = stage.run_all(store, recipe, ray_connected=isinstance(ex, RayExecutor))
            else:
                pending = [s for s in store.pending(name) if s not in failed]
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
    if store.pending("select"):
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
            what = ("its kept rows are not exported (export_error shard_error)" if r["stage"] == "export"
                    else "its rows are failed/shard_error")
            print(f"  shard {r['shard']} failed in stage {r['stage']} ({r['attempts']} attempts): "
                  f"{r['error'].splitlines()[0]}; {what}; run again to retry it")
    return summary

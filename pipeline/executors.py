"""Executors drive shard-wise stages: the same `process_shard` runs in-process or in Ray actors,
so both give byte-identical shard outputs."""
from __future__ import annotations

import copy
import json
import logging
import os
import time
import traceback
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from tqdm import tqdm

from pipeline import storage
from pipeline.stage import RunContext, Stage
from pipeline.store import INPUT_DIR, ColumnStore, StoreError, atomic_write_json, atomic_write_parquet, shard_name

log = logging.getLogger("mmcurate")

StageFactory = Callable[[], Stage]


class StageOutputError(RuntimeError):
    pass


# A shard whose stage keeps raising is retried this many more times, then recorded as failed
# (failed_shards.json) and its rows are accounted as failed with reason `shard_error`.
SHARD_RETRIES = 1
SHARD_ERROR = "shard_error"
FAILED_SHARDS_FILE = "failed_shards.json"
# Errors that say the recipe or the stage code is wrong, not the shard: retrying or skipping would
# hide them, so they end the run.
FATAL_ERRORS: tuple[type[BaseException], ...] = (StageOutputError, StoreError)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000]


def _failure(shard: int, attempts: int, err: BaseException | str, tb: str = "") -> dict[str, Any]:
    msg = err if isinstance(err, str) else _describe(err)
    log.error("shard %d failed %d time(s), giving up on it: %s", shard, attempts, msg.splitlines()[0] if msg else "")
    return {"shard": shard, "error": msg, "attempts": attempts, "traceback": tb[-4000:]}


def _check_output(stage: Stage, batch: pa.Table, out: pa.Table) -> pa.Table:
    if out.num_rows != batch.num_rows:
        raise StageOutputError(f"stage {stage.name!r} returned {out.num_rows} rows for {batch.num_rows}; "
                               "stages must return one row per input row (rows are never dropped)")
    if "uid" in out.column_names:
        if not out.column("uid").equals(batch.column("uid")):
            raise StageOutputError(f"stage {stage.name!r} reordered rows")
        out = out.drop_columns(["uid"])
    extra = set(out.column_names) - set(stage.provides)
    missing = set(stage.provides) - set(out.column_names)
    if extra or missing:
        raise StageOutputError(f"stage {stage.name!r} declared {sorted(stage.provides)} but returned "
                               f"{sorted(out.column_names)}")
    return out.select(list(stage.provides))


def process_shard(stage: Stage, store: ColumnStore, shard: int) -> dict[str, Any]:
    """Read the stage's columns for one shard, run it batch by batch, write the shard atomically."""
    t0 = time.perf_counter()
    available = list(store.column_sources(upto=stage.name))
    table = store.read(shard, [*stage.needed_columns(available), *stage.optional], upto=stage.name,
                       optional=stage.optional)
    bs = stage.resources().batch_size
    begin = getattr(stage, "begin_shard", None)
    if begin:
        begin(shard)
    # An empty shard still goes through process() once so the output has the stage's schema.
    parts = [_check_output(stage, b, stage.process(b))
             for b in (table.slice(off, bs) for off in range(0, max(table.num_rows, 1), bs))]
    out = pa.concat_tables(parts).add_column(0, "uid", table.column("uid"))
    end = getattr(stage, "end_shard", None)
    if end:
        end(shard)
    atomic_write_parquet(out, store.path(stage.name, shard))
    return {"shard": shard, "rows": table.num_rows, "seconds": time.perf_counter() - t0, "pid": os.getpid()}


class LocalExecutor:
    """In-process, one shard after another: for debugging and machines without Ray."""

    name = "local"

    def __init__(self, shard_retries: int = SHARD_RETRIES):
        self.shard_retries = shard_retries

    def map_shards(self, factory: StageFactory, store: ColumnStore, shards: list[int], state: Any,
                   desc: str) -> list[dict]:
        """One result per shard; a shard that failed every attempt has an `error` key."""
        stage = factory()
        stage.setup(state)
        results = []
        for s in tqdm(shards, desc=desc, unit="shard", disable=not shards):
            for attempt in range(1, self.shard_retries + 2):
                try:
                    results.append(process_shard(stage, store, s))
                    break
                except FATAL_ERRORS:
                    raise
                except Exception as e:  # noqa: BLE001 - a bad shard must not end the run
                    log.warning("stage %s shard %d attempt %d failed: %s", desc, s, attempt, _describe(e))
                    if attempt > self.shard_retries:
                        results.append(_failure(s, attempt, e, traceback.format_exc()))
        return results

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """A pool of Ray actors per stage, each loading the stage once and taking shards in turn."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 shard_retries: int = SHARD_RETRIES):
        import ray

        self.shard_retries = shard_retries
        self.ray = ray
        if not ray.is_initialized():
            from pipeline.logs import route_ray

            route_ray()  # quiet CLI runs: Ray's logs and its workers' output go to the run log
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "configure_logging": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                # Workers must import the project's packages from this checkout.
                ray.init(num_cpus=num_cpus, runtime_env={"env_vars": {"PYTHONPATH": _project_root()}},
                         **kwargs)
        self.address = address

    def cluster_resources(self) -> dict[str, float]:
        return self.ray.cluster_resources()

    def pool_size(self, stage: Stage, n_shards: int) -> int:
        res = stage.resources()
        avail = self.cluster_resources()
        n = n_shards
        if res.cpus > 0:
            n = min(n, int(avail.get("CPU", 1) // res.cpus) or 1)
        if res.gpus > 0:
            n = min(n, int(avail.get("GPU", 0) // res.gpus))
            if n == 0:
                raise RuntimeError(f"stage {stage.name!r} asks for {res.gpus} GPU per worker but the Ray "
                                   "cluster has none; set the stage's device to cpu")
        if res.max_workers:
            n = min(n, res.max_workers)
        return max(1, n)

    def map_shards(self, factory: StageFactory, store: ColumnStore, shards: list[int], state: Any,
                   desc: str) -> list[dict]:
        """One result per shard; a shard that failed every attempt has an `error` key.

        Two layers of retry: a worker process that dies (killed, OOM, node lost) is restarted by
        Ray and its task re-run (max_restarts / max_task_retries); an actor out of restarts is
        replaced here. A shard whose stage raises is re-queued `shard_retries` times, then
        recorded as failed and the run goes on.
        """
        if not shards:
            return []
        ray = self.ray
        probe = factory()
        res = probe.resources()
        n = self.pool_size(probe, len(shards))
        actor_cls = ray.remote(_ShardWorker).options(num_cpus=res.cpus, num_gpus=res.gpus,
                                                     max_restarts=2, max_task_retries=2)
        state_ref = ray.put(state)

        def new_actor():
            return actor_cls.remote(factory, str(store.workdir), store.sources[1:], state_ref)

        actors = [new_actor() for _ in range(n)]
        idle, queue = list(actors), deque(shards)
        attempts: Counter[int] = Counter()
        inflight: dict[Any, tuple[Any, int]] = {}
        results = []
        try:
            with tqdm(total=len(shards), desc=desc, unit="shard") as bar:
                while queue or inflight:
                    while queue and idle:
                        actor, s = idle.pop(), queue.popleft()
                        attempts[s] += 1
                        inflight[actor.run.remote(s)] = (actor, s)
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    for ref in ready:
                        actor, s = inflight.pop(ref)
                        try:
                            results.append(ray.get(ref))
                            idle.append(actor)
                            bar.update(1)
                            continue
                        except ray.exceptions.RayActorError as e:
                            # Out of restarts: a fresh actor takes its place.
                            ray.kill(actor, no_restart=True)
                            actor = new_actor()
                            actors.append(actor)
                            idle.append(actor)
                            err: BaseException = e
                            tb = ""
                        except ray.exceptions.RayTaskError as e:
                            cause = getattr(e, "cause", None)
                            if isinstance(cause, FATAL_ERRORS):
                                raise cause from None
                            idle.append(actor)
                            err, tb = (cause if isinstance(cause, BaseException) else e), str(e)
                        log.warning("stage %s shard %d attempt %d failed: %s", desc, s, attempts[s], _describe(err))
                        if attempts[s] > self.shard_retries:
                            results.append(_failure(s, attempts[s], err, tb))
                            bar.update(1)
                        else:
                            queue.append(s)
        finally:
            for a in actors:
                ray.kill(a)
        return sorted(results, key=lambda r: r["shard"])

    def shutdown(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()


class _ShardWorker:
    def __init__(self, factory: StageFactory, workdir: str, stages: list[str], state: Any):
        self.stage = factory()
        self.store = ColumnStore(workdir, stages)
        self.stage.setup(state)

    def run(self, shard: int) -> dict:
        return process_shard(self.stage, self.store, shard)


# ---- failed shards: recorded in the run dir, accounted as failed rows, retried on the next run --

def load_failed_shards(workdir: str | Path) -> list[dict]:
    p = storage.wpath(workdir) / FAILED_SHARDS_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else []


def save_failed_shards(workdir: str | Path, records: list[dict]) -> None:
    p = storage.wpath(workdir) / FAILED_SHARDS_FILE
    if records:
        atomic_write_json(sorted(records, key=lambda r: (r["shard"], r["stage"])), p)
    elif p.exists():
        storage.remove(p)


def shard_outputs(store: ColumnStore, stage: str, shard: int) -> list[Path]:
    """Every file a stage writes for one shard (export also writes a tar and a manifest part)."""
    paths = [store.path(stage, shard)]
    if stage == "export":
        from stages.export import shard_files  # its tars are assembled from these by its finish pass

        paths += shard_files(store.workdir, shard)
    return paths


def reset_failed_shards(store: ColumnStore, stages: list[str], to_run: Iterable[str]) -> set[int]:
    """Before a run: shards that failed in a stage about to run get their placeholder outputs of
    that stage and every later one removed, so they are tried again. Returns the shards that stay
    failed (their stage is not part of this run)."""
    from pipeline.registry import stage_class

    to_run = set(to_run)
    keep, still_failed = [], set()
    for rec in load_failed_shards(store.workdir):
        if rec["stage"] not in to_run or rec["stage"] not in stages:
            keep.append(rec)
            still_failed.add(rec["shard"])
            continue
        every_shard = False
        for later in stages[stages.index(rec["stage"]):]:
            # A global stage (one with a prepare pass, e.g. dedup) saw the run without this shard;
            # once the shard is back, its outputs and everything after them are stale everywhere.
            every_shard = every_shard or (later != rec["stage"] and stage_class(later).prepare is not Stage.prepare)
            for shard in (store.shards() if every_shard else [rec["shard"]]):
                for p in shard_outputs(store, later, shard):
                    storage.remove(p)
    save_failed_shards(store.workdir, keep)
    return still_failed


def record_failed_shards(store: ColumnStore, stage: str, results: list[dict]) -> set[int]:
    """Add this stage's failed shards to failed_shards.json; returns their numbers."""
    failed = [r for r in results if "error" in r]
    if failed:
        records = [r for r in load_failed_shards(store.workdir)
                   if not (r["stage"] == stage and r["shard"] in {f["shard"] for f in failed})]
        records += [{"stage": stage, "shard": f["shard"], "error": f["error"], "attempts": f.get("attempts", 1),
                     "traceback": f.get("traceback", "")} for f in failed]
        save_failed_shards(store.workdir, records)
    return {f["shard"] for f in failed}


def without_shards(store: ColumnStore, skip: set[int]) -> ColumnStore:
    """A view of the store without some shards, for a global `prepare` pass (dedup) that must not
    read the missing outputs of failed shards."""
    if not skip:
        return store
    view = copy.copy(store)
    keep = [s for s in store.shards() if s not in skip]
    view.shards = lambda: keep  # type: ignore[method-assign]
    return view


def _null_like(schema: pa.Schema, uids: pa.Array, values: dict[str, pa.Array]) -> pa.Table:
    cols = [uids] + [values[f.name].cast(f.type) if f.name in values else pa.nulls(len(uids), f.type)
                     for f in schema if f.name != "uid"]
    return pa.Table.from_arrays(cols, schema=pa.schema([schema.field("uid"), *[f for f in schema if f.name != "uid"]]))


def _sibling_schema(paths: Iterable[Path]) -> pa.Schema | None:
    for p in paths:
        if p.exists():
            return storage.read_schema(p)
    return None


def write_failed_placeholders(store: ColumnStore, stage: str, provides: Iterable[str], shards: Iterable[int]) -> None:
    """Outputs for shards that failed in this stage or an earlier one, so every row is accounted
    for and later stages see the same columns in every shard:
    select writes decision=failed, reason=shard_error; export writes its marker and a manifest
    part (no tar) that keep select's decisions, a kept row carrying export_error=shard_error
    (kept, not exported: the next run retries it); any other stage writes its columns as nulls
    (schema of a finished shard)."""
    shards = store.pending(stage, shards)
    if not shards:
        return
    skip = set(shards)
    finished = [store.path(stage, s) for s in store.shards() if s not in skip]
    schema = _sibling_schema(finished)
    if schema is None:  # every shard failed: nothing to borrow, only the stage's own names
        schema = pa.schema([("uid", pa.int64()), *[(c, pa.string()) for c in provides]])
    man_dir = store.workdir / "export" / "manifest"
    man_schema = _sibling_schema(man_dir / f"{shard_name(s)}.parquet" for s in store.shards()
                                 if s not in skip) if stage == "export" else None
    for s in shards:
        inp = storage.read_table(store.path(INPUT_DIR, s))
        uids, n = inp.column("uid").combine_chunks(), inp.num_rows
        failed = {"decision": pa.array(["failed"] * n, pa.string()),
                  "reason": pa.array([SHARD_ERROR] * n, pa.string())}
        values = dict(failed) if stage == "select" else {}
        if stage == "export":
            decided = _select_decisions(store, s, uids) or failed
            kept = pc.equal(decided["decision"], "kept").fill_null(False)
            values = {"exported": pa.array([False] * n, pa.bool_()),
                      "export_error": pc.if_else(kept, SHARD_ERROR, pa.scalar(None, pa.string()))}
            base = {c: inp.column(c).combine_chunks() for c in inp.column_names if c != "uid"} | decided | values
            man = man_schema or pa.schema([("uid", pa.int64()), *[(c, a.type) for c, a in base.items()]])
            atomic_write_parquet(_null_like(man, uids, base), man_dir / f"{shard_name(s)}.parquet")
        atomic_write_parquet(_null_like(schema, uids, values), store.path(stage, s))


def _select_decisions(store: ColumnStore, shard: int, uids: pa.Array) -> dict[str, pa.Array] | None:
    """select's decision and reason for a shard, row-aligned with the input; None if select has
    not written it."""
    path = store.path("select", shard)
    if not path.exists():
        return None
    t = storage.read_table(path, columns=["uid", "decision", "reason"])
    if not t.column("uid").combine_chunks().equals(uids):
        raise StoreError(f"{path} is not row-aligned with the input shard; delete it and re-run stage 'select'")
    return {"decision": t.column("decision").combine_chunks(), "reason": t.column("reason").combine_chunks()}


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_executor(kind: str, address: str | None = None) -> LocalExecutor | RayExecutor:
    if kind == "local":
        return LocalExecutor()
    return RayExecutor(address=address or os.environ.get("RAY_ADDRESS"))


__all__ = ["FAILED_SHARDS_FILE", "LocalExecutor", "RayExecutor", "SHARD_ERROR", "load_failed_shards",
           "make_executor", "process_shard", "record_failed_shards", "reset_failed_shards", "RunContext",
           "without_shards", "write_failed_placeholders"]

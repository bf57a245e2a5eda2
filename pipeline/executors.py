"""Executors drive shard-wise stages: the same `process_shard` runs in-process or in Ray actors,
so both give byte-identical shard outputs."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import pyarrow as pa
from tqdm import tqdm

from pipeline.stage import RunContext, Stage
from pipeline.store import ColumnStore, atomic_write_parquet

log = logging.getLogger("mmcurate")

StageFactory = Callable[[], Stage]


class StageOutputError(RuntimeError):
    pass


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

    def map_shards(self, factory: StageFactory, store: ColumnStore, shards: list[int], state: Any,
                   desc: str) -> list[dict]:
        stage = factory()
        stage.setup(state)
        results = []
        for s in tqdm(shards, desc=desc, unit="shard", disable=not shards):
            results.append(process_shard(stage, store, s))
        return results

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """A pool of Ray actors per stage, each loading the stage once and taking shards in turn."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        import ray

        self.ray = ray
        if not ray.is_initialized():
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
        if not shards:
            return []
        ray = self.ray
        probe = factory()
        res = probe.resources()
        n = self.pool_size(probe, len(shards))
        actor_cls = ray.remote(_ShardWorker).options(num_cpus=res.cpus, num_gpus=res.gpus,
                                                     max_restarts=2, max_task_retries=2)
        state_ref = ray.put(state)
        actors = [actor_cls.remote(factory, str(store.workdir), store.sources[1:], state_ref) for _ in range(n)]
        pool = ray.util.ActorPool(actors)
        results = []
        try:
            with tqdm(total=len(shards), desc=desc, unit="shard") as bar:
                for r in pool.map_unordered(lambda a, s: a.run.remote(s), shards):
                    results.append(r)
                    bar.update(1)
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


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_executor(kind: str, address: str | None = None) -> LocalExecutor | RayExecutor:
    if kind == "local":
        return LocalExecutor()
    return RayExecutor(address=address or os.environ.get("RAY_ADDRESS"))


__all__ = ["LocalExecutor", "RayExecutor", "make_executor", "process_shard", "RunContext"]

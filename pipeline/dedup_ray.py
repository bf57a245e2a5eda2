"""Ray tasks for the dedup stage's map and reduce steps (stages/dedup.py says what they compute).

Map tasks return one object per partition (num_returns), so a reduce task fetches only its own
partition of every shard; the object store spills to disk when the partitions outgrow it.
"""
from __future__ import annotations

import os


class RayMapper:
    def __init__(self):
        import ray

        if not ray.is_initialized():
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": root}}, include_dashboard=False,
                     configure_logging=False)
        self.ray = ray
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = {}

    def map(self, fn, args_list: list[tuple], parts: int | None = None) -> list:
        """One result per args tuple; with `parts`, fn returns that many partitions and each
        result is a list of one reference per partition."""
        n = parts or 1
        key = (fn, n)
        if key not in self._remote:
            target = fn if n > 1 or parts is None else _first_of(fn)
            self._remote[key] = self.ray.remote(num_cpus=1, num_returns=n, max_retries=2)(target)
        refs = [self._remote[key].remote(*a) for a in args_list]
        if parts is None:
            return refs
        return [r if isinstance(r, list) else [r] for r in refs]

    def put(self, x):
        return self.ray.put(x)

    def get(self, refs):
        return self.ray.get(list(refs))


def _first_of(fn):
    def one(*args):
        return fn(*args)[0]
    return one

"""Fault injection for tests: wraps a real stage so that, inside the worker running it, chosen
shards kill the worker process once or raise every time. The plan is a JSON file in the run's
workdir, so it reaches Ray workers without environment variables:

    {"stage": "annotate", "kill_once": [0, 1], "always_raise": [2], "driver_pid": 1234}

Tests patch `pipeline.runner.build_stage` with `build_with_faults` (this module is importable by
Ray workers because the project root is on their PYTHONPATH).
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from pipeline.registry import build_stage

PLAN = "_faults.json"


def write_plan(workdir: Path, stage: str, kill_once=(), always_raise=()) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / PLAN).write_text(json.dumps({"stage": stage, "kill_once": list(kill_once),
                                            "always_raise": list(always_raise), "driver_pid": os.getpid()}))


def kill_marker(workdir: Path, stage: str, shard: int) -> Path:
    return Path(workdir) / f"_killed_{stage}_{shard}"


def build_with_faults(name: str, recipe):
    stage = build_stage(name, recipe)
    path = Path(recipe.workdir) / PLAN
    if not path.exists():
        return stage
    plan = json.loads(path.read_text())
    if plan["stage"] != name:
        return stage
    original = getattr(stage, "begin_shard", None)

    def begin_shard(shard: int) -> None:
        if shard in plan["always_raise"]:
            raise RuntimeError(f"injected fault in shard {shard}")
        marker = kill_marker(Path(recipe.workdir), name, shard)
        if shard in plan["kill_once"] and not marker.exists():
            if os.getpid() == plan["driver_pid"]:
                raise AssertionError("kill_once is for Ray workers; it would kill the test process")
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if original:
            original(shard)

    stage.begin_shard = begin_shard
    return stage

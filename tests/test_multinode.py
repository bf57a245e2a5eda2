"""A real two-node Ray cluster on loopback (a head and a worker, separate `ray start` processes)
runs the recipe through `mmcurate run --ray-address`, and the manifest equals the local run's.

The nodes run with `ray start --block` in their own sessions and are stopped by signalling those
process groups, not with `ray stop`, which would stop every Ray instance on the machine (other
test runs included).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import _free_port, recipe_dict

RAY = str(Path(sys.executable).with_name("ray"))
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # A throwaway cluster on this machine: no token auth, so the driver needs no shared secret.
    env["RAY_AUTH_MODE"] = "disabled"
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([RAY, "start", *args, "--block"], stdout=fh, stderr=subprocess.STDOUT,
                                env=_env(), start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever is left of that node (same process group, started by us)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive_nodes(address: str) -> int:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR', include_dashboard=False); "
            "print(sum(n['Alive'] for n in ray.nodes()), int(ray.cluster_resources().get('CPU', 0)))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    if out.returncode != 0:
        return 0
    nodes, cpus = out.stdout.split()[-2:]
    return int(nodes) if int(cpus) == int(nodes) else 0


@pytest.fixture(scope="module")
def cluster():
    # A short temp dir: Ray's socket paths live under it and must stay below the 107-byte limit.
    temp = tempfile.mkdtemp(prefix="mmc-ray-", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}"]
    procs = [_start(["--head", f"--port={port}", "--include-dashboard=false", *common], Path(temp) / "head.log")]
    try:
        deadline = time.monotonic() + 60
        while _alive_nodes(address) < 1:
            assert procs[0].poll() is None and time.monotonic() < deadline, \
                (Path(temp) / "head.log").read_text()[-3000:]
            time.sleep(1)
        procs.append(_start([f"--address={address}", *common], Path(temp) / "worker.log"))
        while _alive_nodes(address) < 2:
            assert procs[1].poll() is None and time.monotonic() < deadline, \
                (Path(temp) / "worker.log").read_text()[-3000:]
            time.sleep(1)
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(temp, ignore_errors=True)


def test_two_node_cluster_run_equals_local_run(cluster, local_run, corpus, tmp_path):
    ref_wd, ref = local_run
    wd = tmp_path / "wd"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(corpus, wd, executor="ray")))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(recipe), "--ray-address", cluster],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    seconds = time.monotonic() - t0
    # Downloads went through img2dataset's ray distributor (a cluster address was given); that
    # INFO line is in the run log (the console shows warnings and progress bars only).
    log = (wd / "logs" / "run.log").read_text()
    assert "shards (ray, " in log, log[-3000:]
    got = pq.read_table(wd / "export" / "manifest").sort_by("uid")
    want = pq.read_table(ref_wd / "export" / "manifest").sort_by("uid")
    assert got.num_rows == want.num_rows == len(set(got.column("uid").to_pylist()))
    # Keys carry each run directory's id; everything else must match.
    assert got.drop_columns(["key"]).equals(want.drop_columns(["key"]))
    assert "balanced" in out.stdout and seconds < 240

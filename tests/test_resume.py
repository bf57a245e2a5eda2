"""A run killed with a signal and run again gives the same manifest as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import yaml

from tests.conftest import recipe_dict


def _start(recipe_path, log):
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(recipe_path)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(proc, path, limit=300.0):
    """Poll for a file that marks mid-run progress; returns False if the run ended first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def test_kill_and_resume_gives_identical_manifest(local_run, corpus, tmp_path):
    wd_ref, _ = local_run
    wd = tmp_path / "wd"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(corpus, wd)))
    with open(tmp_path / "log1", "wb") as log:
        # First kill: mid-download, once the downloader finished its first shard.
        p = _start(recipe, log)
        assert _wait_for(p, wd / "download_raw" / "00000_stats.json")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        # Second kill: mid-annotate (the first annotate shard is written, later ones are not).
        p = _start(recipe, log)
        reached = _wait_for(p, wd / "annotate" / "00000.parquet")
        if reached and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    with open(tmp_path / "log2", "wb") as log:
        p = _start(recipe, log)
        assert p.wait(timeout=600) == 0, (tmp_path / "log2").read_text()
    ref = pq.read_table(wd_ref / "export" / "manifest").sort_by("uid")
    got = pq.read_table(wd / "export" / "manifest").sort_by("uid")
    assert got.num_rows == ref.num_rows and len(set(got.column("uid").to_pylist())) == got.num_rows
    keep = [c for c in ref.column_names if c != "key"]  # keys carry each run directory's id
    assert got.select(keep).equals(ref.select(keep))
    assert not [t for t in wd.rglob(".*.tmp") if "download_raw" not in t.parts]

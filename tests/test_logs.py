"""Quiet by default: a CLI run prints mmcurate's own lines and progress bars; img2dataset's
banners, Ray's logs and what worker processes write go to WORKDIR/logs/run.log, and `--verbose`
shows them on the console as well.

Every run is a real `mmcurate` process (the console is its stdout and stderr) against the
synthetic corpus served on loopback; Ray starts for real.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import _free_port, recipe_dict

ROOT = Path(__file__).resolve().parent.parent
# What img2dataset prints in the driver and in its pool's processes.
I2D_BANNERS = ("check your bandwidth speed", "Starting the downloading of this file", "Sharding file number",
               "images per sec")
# What Ray prints: its own logger, its C++ core worker, messages relayed from raylets and workers.
RAY_NOISE = ("Started a local Ray instance", "Token authentication is enabled", "core_worker.cc", "(raylet)",
             "pid=")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small corpus (a 404 and a corrupt file among its rows, nothing slow) on loopback."""
    from synth import CorpusServer, NoiseRates, generate_corpus

    out = tmp_path_factory.mktemp("logs_corpus")
    port = _free_port()
    generate_corpus(out, n_rows=30, seed=3, base_url=f"http://127.0.0.1:{port}", n_test=0,
                    rates=NoiseRates().override({"slow": 0.0, "timeout": 0.0, "http_404": 0.05, "corrupt": 0.05}))
    with CorpusServer(out, port=port):
        yield out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env


def _cli(tmp_path: Path, recipe: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path), *args], capture_output=True,
                          text=True, env=_env(), cwd=tmp_path, timeout=300)


def test_quiet_run_keeps_third_party_output_in_the_run_log(corpus, tmp_path):
    wd = tmp_path / "wd"
    out = _cli(tmp_path, recipe_dict(corpus, wd, executor="ray"), "--stage", "download", "--stage", "annotate")
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-5000:]
    for banner in I2D_BANNERS + RAY_NOISE:
        assert banner not in console, (banner, console[-5000:])
    log = (wd / "logs" / "run.log").read_text()
    # What was hidden is in the log: img2dataset's banners and its pool's lines, Ray's own log.
    for banner in I2D_BANNERS + ("Started a local Ray instance",):
        assert banner in log, banner
    # mmcurate's own INFO lines are in the log too; the console has one bar per stage and the
    # closing lines, the last naming the log.
    assert "download: img2dataset over" in log and "download: img2dataset over" not in console
    assert "download:" in out.stderr and "annotate:" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"full log: {wd / 'logs' / 'run.log'}"


@pytest.mark.slow  # a second img2dataset start (~10 s idle, more on a busy machine)
def test_verbose_shows_third_party_output(corpus, tmp_path):
    wd = tmp_path / "wd"
    out = _cli(tmp_path, recipe_dict(corpus, wd), "--stage", "download", "--verbose")
    assert out.returncode == 0, out.stderr[-5000:]
    console = out.stdout + out.stderr
    assert "check your bandwidth speed" in console and "download: img2dataset over" in console
    assert "download: img2dataset over" in (wd / "logs" / "run.log").read_text()


WORKER_SCRIPT = textwrap.dedent("""
    import io, os, sys, time
    from pipeline.logs import capture
    from pipeline.executors import RayExecutor

    def decode():
        from PIL import Image
        # A palette PNG with per-entry transparency: Pillow warns when it becomes RGB.
        im = Image.new("P", (8, 8))
        im.putpalette([0, 0, 0, 255, 0, 0] * 128)
        im.info["transparency"] = bytes([0, 128] + [255] * 254)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        print("a line a worker prints")
        os.write(2, b"a line written to a worker's descriptor 2\\n")
        return 1

    workdir, verbose = sys.argv[1], sys.argv[2] == "1"
    with capture(workdir, verbose=verbose) as log:
        ex = RayExecutor(num_cpus=1)
        assert ex.ray.get(ex.ray.remote(decode).remote()) == 1
        # Ray relays worker output to the driver asynchronously: wait for it (at most 60 s).
        deadline = time.monotonic() + 60
        want = "a line written to a worker's descriptor 2"
        while time.monotonic() < deadline and want not in (log.read_text() if not verbose else want):
            time.sleep(0.2)
        ex.shutdown()
    print("finished")
""")


def test_ray_worker_output_goes_to_the_run_log(tmp_path):
    out = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(tmp_path), "0"], capture_output=True,
                         text=True, env=_env(), cwd=tmp_path, timeout=180)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-5000:]
    assert console.strip() == "finished", console[-5000:]
    log = (tmp_path / "logs" / "run.log").read_text()
    for line in ("Palette images with Transparency expressed in bytes", "a line a worker prints",
                 "a line written to a worker's descriptor 2"):
        assert line in log, line

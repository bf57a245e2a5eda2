"""Input, workdir and export on an object store: a real S3 API server (moto in server mode)
started on loopback, the demo recipe run end to end against it through the CLI, killed and
resumed; the result equals the same recipe run on a local folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.s3

BUCKET = "mmcurate-test"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on loopback (tests/s3server.py)."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from tests.s3server import moto_server

    with moto_server(BUCKET) as server:
        yield server


def _demo_recipe(corpus, workdir: str, input_path: str, executor: str) -> dict:
    from pipeline.demo import demo_recipe

    d = demo_recipe(corpus, workdir, executor)
    d["input"]["path"] = input_path
    d["workdir"] = workdir
    d["shard_size"] = 40  # several shards, so a kill lands between shard commits
    d.pop("bootstrap")
    return d


def _start(recipe_path, log, env):
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(recipe_path)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env})


def _wait_for(fs, proc, key: str, limit: float = 300.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if fs.exists(key):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError(f"s3://{key} never appeared")


def test_demo_recipe_on_s3_killed_and_resumed(s3_server, corpus, tmp_path):
    from pipeline.config import recipe_from_dict
    from pipeline.runner import run

    fs, env = s3_server
    fs.put_file(str(corpus / "urls.parquet"), f"{BUCKET}/lists/urls.parquet")
    wd = f"s3://{BUCKET}/runs/demo"
    recipe = tmp_path / "s3.yaml"
    recipe.write_text(yaml.safe_dump(_demo_recipe(corpus, wd, f"s3://{BUCKET}/lists/urls.parquet", "ray")))
    ref_wd = tmp_path / "local"
    ref = run(recipe_from_dict(_demo_recipe(corpus, str(ref_wd), str(corpus / "urls.parquet"), "local")),
              quiet=True)

    root = f"{BUCKET}/runs/demo"
    with open(tmp_path / "log1", "wb") as log:
        # Killed mid-download (img2dataset finished its first shard) and again once the first
        # annotate shard is committed.
        p = _start(recipe, log, env)
        assert _wait_for(fs, p, f"{root}/download_raw/00000_stats.json"), (tmp_path / "log1").read_text()
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        p = _start(recipe, log, env)
        if _wait_for(fs, p, f"{root}/annotate/00000.parquet") and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    with open(tmp_path / "log2", "wb") as log:
        p = _start(recipe, log, env)
        assert p.wait(timeout=600) == 0, (tmp_path / "log2").read_text()
    out = (tmp_path / "log2").read_text()
    assert "[balanced]" in out and f"{wd}/export/shards" in out

    # Same rows, same decisions, same exported samples as the local run.
    got = pq.read_table(f"{root}/export/manifest", filesystem=fs).sort_by("uid")
    want = pq.read_table(ref_wd / "export" / "manifest").sort_by("uid")
    keep = [c for c in want.column_names if c != "key"]  # keys carry each run directory's id
    assert got.num_rows == want.num_rows == ref["input"]
    assert got.select(keep).equals(want.select(keep))
    tars = sorted(fs.glob(f"{root}/export/shards/*.tar"))
    assert len(tars) == len(list((ref_wd / "export" / "shards").glob("*.tar"))) >= 1
    n_jpg = 0
    for t in tars:
        with fs.open(t, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
            n_jpg += sum(m.name.endswith(".jpg") for m in tf.getmembers())
    assert n_jpg == ref["exported"]
    # Published files only: markers and staged samples stay outside export/, and an object store
    # has no temp files to leave behind.
    assert not [k for k in fs.find(root) if k.rsplit("/", 1)[-1].startswith(".")]
    assert fs.exists(f"{root}/export/shards/sizes.json") and fs.exists(f"{root}/logs/run.log")

    # The CLI's query and a rerun read the same URLs: nothing left to do, same accounting.
    q = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", "--run", wd,
                        "SELECT count(*) AS n FROM manifest WHERE decision = 'kept'"],
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert q.returncode == 0 and str(ref["kept"]) in q.stdout, q.stderr

    # The report reads the run from the bucket and is published beside it.
    from pipeline.report import build_report

    assert str(build_report(wd)) == f"{wd}/report/index.html"
    html = fs.cat(f"{root}/report/index.html").decode()
    assert str(ref["kept"]) in html and fs.find(f"{root}/report/thumbs")


def test_input_fingerprint_follows_the_object(s3_server):
    """A URL list rewritten in place (same size, other bytes) is another input: the run refuses
    the old workdir instead of mixing rows (the ETag changes, no byte is read)."""
    from pipeline.fingerprint import path_digest

    fs, _ = s3_server
    key = f"{BUCKET}/fp/urls.csv"
    fs.pipe(key, b"url,caption\nhttp://a/1.jpg,one\n")
    first = path_digest(f"s3://{key}")
    assert first and first == path_digest(f"s3://{key}")
    fs.pipe(key, b"url,caption\nhttp://a/2.jpg,one\n")
    assert path_digest(f"s3://{key}") not in (None, first)
    assert path_digest(f"s3://{BUCKET}/fp/") != first  # a folder: every object under it
    assert path_digest(f"s3://{BUCKET}/missing.csv") is None

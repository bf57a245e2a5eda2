"""Shared fixtures: one small synthetic corpus served on loopback, and one finished local run."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Enough of every download fault that each shows up in a 160-row corpus.
FAULTY = {"http_404": 0.05, "http_500": 0.04, "html": 0.04, "truncated": 0.04, "corrupt": 0.04,
          "timeout": 0.03, "slow": 0.03, "tiny": 0.04, "extreme_aspect": 0.04,
          "timeout_delay": 6.0, "slow_delay": 0.2}
DOWNLOAD_TIMEOUT = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from synth import CorpusServer, NoiseRates, generate_corpus

    out = tmp_path_factory.mktemp("corpus")
    port = _free_port()
    generate_corpus(out, n_rows=160, seed=7, base_url=f"http://127.0.0.1:{port}",
                    rates=NoiseRates().override(FAULTY), n_test=20)
    server = CorpusServer(out, port=port).start()
    yield out
    server.stop()


def recipe_dict(corpus: Path, workdir: Path, **over) -> dict:
    d = {"input": {"path": str(corpus / "urls.parquet")}, "workdir": str(workdir), "shard_size": 40,
         "executor": "local", "stages": ["download", "annotate", "dedup", "select", "export"],
         "download": {"processes": 1, "threads": 32, "timeout": DOWNLOAD_TIMEOUT,
                      # the corpus is served on loopback, which the SSRF guard refuses by default
                      "allow_private": ["loopback"]}}
    d.update(over)
    return d


@pytest.fixture(scope="session")
def local_run(corpus, tmp_path_factory):
    from pipeline.config import recipe_from_dict
    from pipeline.runner import run

    wd = tmp_path_factory.mktemp("run_local")
    summary = run(recipe_from_dict(recipe_dict(corpus, wd)), quiet=True)
    return wd, summary

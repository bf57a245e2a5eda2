"""`mmcurate demo`: generate the synthetic corpus, serve it on loopback, run the demo recipe."""
from __future__ import annotations

import shutil
import socket
import time
from importlib import resources
from pathlib import Path

import yaml

from pipeline.config import recipe_from_dict
from pipeline.runner import run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_recipe(corpus: Path, workdir: Path, executor: str) -> dict:
    data = yaml.safe_load(resources.files("pipeline").joinpath("recipes/demo.yaml").read_text("utf-8"))
    data["input"]["path"] = str(corpus / "urls.parquet")
    data["workdir"] = str(workdir)
    data["executor"] = executor
    return data


def demo(workdir: str = "runs/demo", rows: int = 1000, seed: int = 0, executor: str = "ray") -> dict:
    from synth import CorpusServer, generate_corpus

    root = Path(workdir).resolve()
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    port = free_port()
    corpus = root / "corpus"
    print(f"[1/3] generating {rows} synthetic rows (seed {seed}) in {corpus}")
    generate_corpus(corpus, n_rows=rows, seed=seed, base_url=f"http://127.0.0.1:{port}", n_test=100)
    with CorpusServer(corpus, port=port) as server:
        print(f"[2/3] serving it on {server.url}; running the pipeline ({executor} executor)")
        recipe = recipe_from_dict(demo_recipe(corpus, root / "run", executor), "demo.yaml")
        summary = run(recipe)
    print(f"[3/3] done in {time.perf_counter() - t0:.0f}s. Shards: {root / 'run/export/shards'}; "
          f"manifest: {root / 'run/export/manifest'}")
    print(f'      try: mmcurate query --run {root / "run"} "SELECT decision, reason, count(*) FROM manifest GROUP BY ALL ORDER BY 3 DESC"')
    return summary

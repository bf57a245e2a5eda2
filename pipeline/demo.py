"""`mmcurate demo`: generate the synthetic corpus, serve it on loopback, run the demo recipe."""
from __future__ import annotations

import json
import shutil
import socket
import time
from importlib import resources
from pathlib import Path

import yaml

from pipeline.bootstrap import bootstrap
from pipeline.config import recipe_from_dict
from pipeline.logs import capture
from pipeline.report import build_report
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
    data["bootstrap"]["eval_split"] = str(corpus / "test" / "test.parquet")
    return data


def demo(workdir: str = "runs/demo", rows: int = 1000, seed: int = 0, executor: str = "ray",
         rounds: int | None = 2, verbose: bool = False) -> dict:
    """Third-party and worker output goes to WORKDIR/logs/run.log unless `verbose`."""
    root = Path(workdir).resolve()
    if root.exists():
        shutil.rmtree(root)
    with capture(root, verbose=verbose) as log_file:
        summary = _demo(root, rows, seed, executor, rounds)
    print(f"      full log: {log_file}")
    return summary


def _demo(root: Path, rows: int, seed: int, executor: str, rounds: int | None) -> dict:
    from synth import CorpusServer, NoiseRates, generate_corpus

    t0 = time.perf_counter()
    port = free_port()
    corpus = root / "corpus"
    print(f"[1/4] generating {rows} synthetic rows (seed {seed}) in {corpus}")
    # Timeouts wait 8 s (the downloader gives up after 3 s), not the default 20 s.
    generate_corpus(corpus, n_rows=rows, seed=seed, base_url=f"http://127.0.0.1:{port}", n_test=100,
                    rates=NoiseRates().override({"timeout_delay": 8.0}))
    data = demo_recipe(corpus, root / "run", executor)
    with CorpusServer(corpus, port=port) as server:
        recipe = recipe_from_dict(data, "demo.yaml")
        if not rounds:
            print(f"[2/4] serving it on {server.url}; running the pipeline ({executor} executor)")
            summary = run(recipe)
            results = []
        else:
            print(f"[2/4] serving it on {server.url}; {rounds} bootstrap rounds ({executor} executor): "
                  "curate → train → eval, then score + caption the next round with that model")
            results = bootstrap(recipe, recipe.model_dump(mode="json"), rounds=rounds)
            summary = json.loads((root / "run" / f"round_{rounds - 1}" / "run" / "summary.json").read_text())
    print("[3/4] writing the report")
    report = build_report(root / "run")
    if results:
        print("\nround   kept   ITC R@mean   ITM R@mean   attribute acc.")
        for m in results:
            print(f"{m['round']:5} {m['kept']:6}   {m.get('itc_r_mean', float('nan')):10.3f}   "
                  f"{m.get('itm_r_mean', float('nan')):10.3f}   {m.get('attr_all', float('nan')):14.3f}")
    print(f"\n[4/4] done in {time.perf_counter() - t0:.0f}s.")
    print(f"      report: {report}")
    last = root / "run" / (f"round_{rounds - 1}/run" if rounds else "")
    print(f"      shards: {last / 'export/shards'}   manifest: {last / 'export/manifest'}")
    print(f'      try: mmcurate query --run {last} "SELECT decision, reason, count(*) FROM manifest GROUP BY ALL ORDER BY 3 DESC"')
    return summary

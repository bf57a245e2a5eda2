"""The `mmcurate` command."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pipeline.logs import add_verbose_flag, capture, console_handler

# Subcommands that live beside the stage or model they drive; each module has register(sub).
PLUGINS = ("synth.cli", "filters.lexicon_audit_cli", "models.albef.cli", "pipeline.report_cli",
           "pipeline.bootstrap_cli", "pipeline.head_cli")
# Commands that keep third-party output in the run log unless --verbose (pipeline/logs.py).
CAPTURED = ("run", "demo", "bootstrap")


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_recipe
    from pipeline.runner import run

    overrides = {}
    if args.executor:
        overrides["executor"] = args.executor
    if args.ray_address:
        overrides["ray_address"] = args.ray_address
    if args.workdir:
        overrides["workdir"] = args.workdir
    recipe = load_recipe(args.recipe, overrides)
    with capture(recipe.workdir, verbose=args.verbose) as log_file:
        summary = run(recipe, only=args.stage, redo=args.redo, recipe_path=args.recipe)
    if summary and summary.get("failed_shards"):
        print(f"warning: {len(summary['failed_shards'])} shard(s) failed and are accounted as failed "
              "(reason shard_error; in export: kept, not exported, export_error shard_error); "
              "run the same command again to retry them", file=sys.stderr)
        print(f"full log: {log_file}")
        return 4
    if summary is None:
        print(f"stages done; select has not run yet, so there is no accounting. Outputs in {recipe.workdir}")
    else:
        print(f"outputs: {recipe.workdir}/export/shards (WebDataset), {recipe.workdir}/export/manifest "
              f"(parquet); query them with: mmcurate query --run {recipe.workdir} \"SELECT ...\"")
    print(f"full log: {log_file}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from pipeline.query import run_query

    print(run_query(args.run, args.sql, max_rows=args.max_rows))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import demo

    demo(workdir=args.workdir, rows=args.rows, seed=args.seed, executor=args.executor, rounds=args.rounds,
         verbose=args.verbose)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmcurate",
        description="Curate web-crawled image-text pairs into clean training shards, with models in the loop.",
        epilog="Start with `mmcurate demo`, then `mmcurate run RECIPE.yaml`. See README.md for the recipe format.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging; for run, demo and bootstrap: show third-party output on the console")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a recipe's stages (resumes where a previous run stopped)",
                       description="Run the stages of RECIPE. Finished shards are skipped, so a killed "
                       "run resumes. A stage whose settings changed is recomputed with everything after it.")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--stage", action="append", metavar="NAME",
                   help="run only this stage (repeatable); earlier stages must have finished")
    r.add_argument("--redo", action="append", metavar="NAME", default=[],
                   help="discard this stage's outputs (and those after it) and recompute")
    r.add_argument("--executor", choices=["ray", "local"], help="override the recipe's executor")
    r.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--workdir", help="override the recipe's workdir: a folder, or an object-store URL "
                   "(s3://bucket/run; credentials and AWS_ENDPOINT_URL from the environment)")
    add_verbose_flag(r)
    r.set_defaults(func=_cmd_run)

    q = sub.add_parser("query", help="SQL over a run directory (DuckDB)",
                       description="Run SQL over a run directory. Views: manifest (every row with its "
                       "decision), and one per stage (input, download, annotate, select, ...).",
                       epilog='example: mmcurate query --run runs/demo/run "SELECT reason, count(*) '
                       'FROM manifest GROUP BY reason ORDER BY 2 DESC"')
    q.add_argument("sql")
    q.add_argument("--run", default=".", help="the run's workdir, a folder or URL (default: current directory)")
    q.add_argument("--max-rows", type=int, default=200)
    q.set_defaults(func=_cmd_query)

    d = sub.add_parser("demo", help="generate the synthetic corpus, serve it on loopback and run the pipeline",
                       description="End-to-end demo on 2 cores: synth -> serve -> two bootstrap rounds "
                       "(curate, train, eval; the second round scores and captions with the first "
                       "round's model) -> HTML report.")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--rows", type=int, default=600)
    d.add_argument("--rounds", type=int, default=2, help="bootstrap rounds (0: one pipeline run, no models)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--executor", choices=["ray", "local"], default="ray")
    add_verbose_flag(d)
    d.set_defaults(func=_cmd_demo)

    for mod in PLUGINS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency, not an absent plugin
                raise
            continue
        m.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in CAPTURED and not args.verbose:
        # Until the command opens its run log, only mmcurate's own warnings reach the console.
        logging.basicConfig(level=logging.INFO, handlers=[console_handler(verbose=False)])
    else:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from pipeline.config import RecipeError
    from pipeline.ingest import InputError
    from pipeline.accounting import AccountingError

    try:
        return int(args.func(args) or 0)
    except (RecipeError, InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AccountingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

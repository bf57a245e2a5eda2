"""`mmcurate bootstrap RECIPE --rounds R`."""
from __future__ import annotations

import argparse

from pipeline.logs import add_verbose_flag


def _cmd(args: argparse.Namespace) -> int:
    from pipeline.bootstrap import bootstrap
    from pipeline.config import BootstrapConfig, load_recipe
    from pipeline.logs import capture

    recipe = load_recipe(args.recipe)
    if recipe.bootstrap is None:
        recipe.bootstrap = BootstrapConfig()
    if args.eval_split:
        recipe.bootstrap.eval_split = args.eval_split
    raw = recipe.model_dump(mode="json")
    with capture(recipe.workdir, verbose=args.verbose) as log_file:
        results = bootstrap(recipe, raw, rounds=args.rounds)
    keys = ["kept", "itc_r_mean", "itm_r_mean", "attr_all", "bleu4"]
    print("round  " + "  ".join(f"{k:>11}" for k in keys))
    for m in results:
        print(f"{m['round']:5}  " + "  ".join(f"{m.get(k, float('nan')):11.3f}" if isinstance(m.get(k), float)
                                             else f"{m.get(k, '-')!s:>11}" for k in keys))
    print(f"rounds in {recipe.workdir}/round_*/ (metrics.json, run/, model/, filter/, captioner/); "
          f"report: mmcurate report {recipe.workdir}")
    print(f"full log: {log_file}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bootstrap", help="curation rounds with models in the loop (train, then filter + caption the next round)",
        description="Round 0 runs the recipe with its initial scorer (rules only unless bootstrap.round0 "
        "is 'recipe'), trains a fresh model on the result and fine-tunes separate filter and captioner "
        "copies; each later round scores and captions with the previous round's copies. Everything "
        "lives under WORKDIR/round_r/ and an interrupted bootstrap resumes.")
    p.add_argument("recipe", help="recipe YAML with a bootstrap: section")
    p.add_argument("--rounds", type=int, help="number of rounds (default: bootstrap.rounds)")
    p.add_argument("--eval-split", help="held-out parquet (overrides bootstrap.eval_split)")
    add_verbose_flag(p)
    p.set_defaults(func=_cmd)

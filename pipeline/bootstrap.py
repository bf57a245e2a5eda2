"""Bootstrap rounds: each round's model filters and captions the next round's data.

    round_0/run       the recipe's pipeline with its initial scorer (rules only by default)
    round_0/model     ALBEF-style model trained from scratch on round_0's shards
    round_0/filter    model fine-tuned with ITC + ITM only   (scores round 1)
    round_0/captioner model fine-tuned with the LM loss only  (captions round 1)
    round_0/metrics.json, round_0/DONE
    round_1/run       score (round_0/filter) → dedup → capfilt (round_0/captioner + filter) → ...

Every round trains a fresh model (BLIP: a fresh model beats continued training). The captioner
and the filter are fine-tuned as separate copies so the filter does not wave through its own
captions (BLIP's confirmation bias). Each step leaves a marker and resumes: the pipeline by its
shards, training from its checkpoint, a round by `DONE`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.config import STAGE_ORDER, BootstrapConfig, Recipe, recipe_from_dict
from pipeline.runner import run
from pipeline.store import atomic_write_json

log = logging.getLogger("mmcurate")
REUSED = ("input", "download", "download_raw", "annotate")  # model-free: shared by every round


def round_dir(root: Path, r: int) -> Path:
    return root / f"round_{r}"


def _link_tree(src: Path, dst: Path) -> None:
    """Share round 0's downloads and annotations (hard links: no copy, no refetch)."""
    if dst.exists() or not src.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp, copy_function=os.link)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def round_recipe(base: dict[str, Any], bcfg: BootstrapConfig, root: Path, r: int) -> dict[str, Any]:
    """The recipe a round runs: round 0 as configured (minus model stages when it is rules-only),
    later rounds with the previous round's filter and captioner plugged in."""
    workdir = round_dir(root, r) / "run"
    if r == 0:
        d = json.loads(json.dumps(base))
        d.pop("bootstrap", None)
        d["workdir"] = str(workdir)
        if bcfg.round0 == "rules":
            d["stages"] = [s for s in d.get("stages") or Recipe.model_fields["stages"].default
                           if s not in ("score", "capfilt")]
            d.pop("score", None)
            d.pop("capfilt", None)
        return d
    return model_recipe(base, bcfg, round_dir(root, r - 1), workdir)


def model_recipe(base: dict[str, Any], bcfg: BootstrapConfig, prev: Path, workdir: Path,
                 capfilt: bool = True) -> dict[str, Any]:
    """A recipe scored (and, with `capfilt`, captioned) by the models a round left in `prev`."""
    d = json.loads(json.dumps(base))
    d.pop("bootstrap", None)
    d["workdir"] = str(workdir)
    stages = set(d.get("stages") or Recipe.model_fields["stages"].default) | {"score"}
    stages = stages | {"capfilt"} if capfilt else stages - {"capfilt"}
    d["stages"] = [s for s in STAGE_ORDER if s in stages]
    d["score"] = {"device": bcfg.device, **bcfg.score,
                  "backends": {"*": {"kind": "mmcurate", "path": str(prev / "filter")}}}
    if capfilt:
        filt = ({"kind": "albef", "path": str(prev / "filter")} if bcfg.capfilt_filter == "itm" else
                {"kind": "clip", "clip": {"kind": "mmcurate", "path": str(prev / "filter")}})
        d["capfilt"] = {"device": bcfg.device, **bcfg.capfilt,
                        "captioner": {"kind": "albef", "path": str(prev / "captioner")}, "filter": filt}
    else:
        d.pop("capfilt", None)
    d["select"] = {**(d.get("select") or {}), **bcfg.select}
    return d


def run_round(recipe_dict: dict[str, Any], bcfg: BootstrapConfig, rdir: Path, labels: Path | None,
              name: str, round_id: int | str) -> dict[str, Any]:
    """Curate with `recipe_dict` (workdir rdir/run), train a fresh model and its two heads on the
    result, evaluate, and write rdir/metrics.json. Each step resumes."""
    done = rdir / "metrics.json"
    if (rdir / "DONE").exists() and done.exists():
        log.info("%s: done already", name)
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    rdir.mkdir(parents=True, exist_ok=True)
    rec = recipe_from_dict(recipe_dict, name)
    log.info("%s: pipeline (%s)", name, " → ".join(rec.stages))
    summary = run(rec)
    if not summary["kept"]:
        raise RuntimeError(f"{name}: the curation kept no samples, so there is nothing to train on; "
                           f"see {rdir / 'run' / 'summary.json'} and loosen the thresholds")
    log.info("%s: training on %d kept samples", name, summary["kept"])
    _train_models(bcfg, rdir / "run" / "export" / "shards", rdir)
    metrics: dict[str, Any] = {"round": round_id, "kept": summary["kept"], "rejected": summary["rejected"],
                               "failed": summary["failed"]}
    metrics.update(_evaluate(bcfg, rdir))
    if labels is not None and labels.exists():
        metrics.update(noise_survival(rdir / "run", labels))
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(metrics, done)
    (rdir / "DONE").write_text("ok")
    return metrics


def share_model_free_outputs(src_run: Path, dst_run: Path) -> None:
    for name in REUSED:
        _link_tree(src_run / name, dst_run / name)


def _train_models(bcfg: BootstrapConfig, shards: Path, rdir: Path) -> None:
    from models.albef.train import train

    common = dict(batch_size=bcfg.batch_size, lr=bcfg.lr, use_gpu=bcfg.device == "cuda", progress=True)
    base = rdir / "model"
    if not (base / "DONE").exists():
        train(bcfg.model, shards, base, steps=bcfg.train_steps, resume=True, **common)
        (base / "DONE").write_text("ok")
    heads = {"filter": {"itc": 1.0, "itm": 1.0, "mlm": 0.0, "lm": 0.0},
             "captioner": {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "lm": 1.0}}
    for name, weights in heads.items():
        out = rdir / name
        if (out / "DONE").exists():
            continue
        train(bcfg.model, shards, out, steps=bcfg.head_steps, resume=True, init_from=base,
              overrides={"loss_weights": weights}, **common)
        (out / "DONE").write_text("ok")


def _evaluate(bcfg: BootstrapConfig, rdir: Path) -> dict[str, Any]:
    from models.albef.eval import evaluate

    device = "cuda" if bcfg.device == "cuda" else "cpu"
    m = evaluate(rdir / "filter", bcfg.eval_split, device=device, lang=bcfg.eval_lang,
                 max_images=bcfg.eval_max_images, caption=False)
    caps = evaluate(rdir / "captioner", bcfg.eval_split, device=device, lang=bcfg.eval_lang,
                    max_images=bcfg.eval_max_images, caption=True)
    m.update({k: v for k, v in caps.items() if k in ("bleu4", "cider", "caption_zh_fraction", "examples")
              or k.startswith("attr")})
    return m


def noise_survival(run_dir: Path, labels: Path) -> dict[str, float]:
    """Share of each noise label's rows that were kept (synthetic corpora carry labels)."""
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        f"SELECT l.label, avg(CASE WHEN m.decision = 'kept' THEN 1.0 ELSE 0.0 END), count(*) "
        f"FROM read_parquet('{labels}') l JOIN read_parquet('{run_dir}/export/manifest/*.parquet') m "
        f"ON l.row = m.uid GROUP BY l.label ORDER BY l.label").fetchall()
    return {f"survived_{label}": round(float(v), 4) for label, v, _ in rows}


def bootstrap(recipe: Recipe, raw: dict[str, Any], rounds: int | None = None) -> list[dict[str, Any]]:
    bcfg = recipe.bootstrap or BootstrapConfig()
    if bcfg.eval_split is None:
        raise ValueError("bootstrap.eval_split is required: a held-out parquet with image, captions_en, "
                         "captions_zh (mmcurate synth writes test/test.parquet)")
    from pipeline import storage

    if storage.is_remote(recipe.workdir):
        # Training writes checkpoints with torch.save and reads them back by path.
        raise ValueError(f"bootstrap trains models in its workdir, which must be a local folder, not "
                         f"{recipe.workdir}; `mmcurate run` takes object-store URLs for input, workdir "
                         "and export")
    root = Path(recipe.workdir)
    n = rounds or bcfg.rounds
    labels = Path(recipe.input.path).parent / "labels.parquet"
    results = []
    for r in range(n):
        rdir = round_dir(root, r)
        if r > 0:
            share_model_free_outputs(round_dir(root, 0) / "run", rdir / "run")
        m = run_round(round_recipe(raw, bcfg, root, r), bcfg, rdir, labels, f"round {r}", r)
        results.append(m)
        log.info("round %d: %s", r, {k: v for k, v in m.items() if k.startswith(("itc_r", "itm_r", "attr"))})
    return results

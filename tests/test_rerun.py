"""Reruns are exact: after any recipe edit and any run (full or `--stage X`), what the workdir
holds equals a fresh run of the current recipe, or the run refuses and names what to run first.

The corpus is small and fault-light (no timeouts) and is downloaded once; every workdir here
starts from a copy of that download, so each run costs annotate..export on 48 rows.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main as cli_main
from tests.conftest import _free_port, recipe_dict

ROWS, SHARD = 48, 16
STAGES = ["download", "annotate", "dedup", "select", "export"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from synth import CorpusServer, NoiseRates, generate_corpus

    out = tmp_path_factory.mktemp("rerun_corpus")
    port = _free_port()
    # Many duplicates (so dedup settings matter), PII and traditional characters (annotate
    # settings matter), no slow or timed-out URLs (fast).
    rates = NoiseRates().override({"exact_dup": 0.15, "near_dup": 0.15, "pii": 0.15, "traditional": 0.1,
                                   "timeout": 0.0, "slow": 0.0, "http_404": 0.04, "tiny": 0.06})
    generate_corpus(out, n_rows=ROWS, seed=3, base_url=f"http://127.0.0.1:{port}", rates=rates, n_test=0)
    server = CorpusServer(out, port=port).start()
    yield out
    server.stop()


@pytest.fixture(scope="module")
def downloaded(small_corpus, tmp_path_factory):
    """A workdir holding only the ingested input and the download (with their fingerprints)."""
    wd = tmp_path_factory.mktemp("rerun_download")
    rc = _run(_write(small_corpus, wd, base_recipe(small_corpus, wd)), "--stage", "download")
    assert rc == 0
    return wd


def base_recipe(corpus: Path, wd: Path) -> dict:
    d = recipe_dict(corpus, wd, shard_size=SHARD, stages=list(STAGES))
    d["select"] = {"min_short_side": 64}
    return d


def _write(corpus: Path, wd: Path, recipe: dict) -> Path:
    path = wd.parent / f"{wd.name}.yaml"
    path.write_text(yaml.safe_dump({**recipe, "workdir": str(wd)}))
    return path


def _run(recipe_path: Path, *args: str) -> int:
    return cli_main(["run", str(recipe_path), *args])


def new_workdir(downloaded: Path, dest: Path) -> Path:
    """A workdir that starts from the shared download (what a fresh run would fetch)."""
    dest.mkdir(parents=True)
    for name in ("input", "download"):
        shutil.copytree(downloaded / name, dest / name)
    return dest


def _run_id(wd: Path) -> str | None:
    p = wd / "run.json"  # each workdir draws its own id for sample keys (stages/export.py)
    return json.loads(p.read_text())["run_id"] if p.exists() else None


def export_contents(wd: Path) -> dict:
    """The exported manifest rows and every tar member's bytes, independent of tar headers and
    of the workdir's run id."""
    rid = _run_id(wd)

    def norm(b: bytes) -> bytes:
        return b.replace(rid.encode(), b"RUN") if rid else b

    man = pq.read_table(wd / "export" / "manifest").sort_by("uid")
    rows = json.loads(norm(json.dumps(man.to_pylist(), default=repr).encode()))
    members = {}
    for tar in sorted((wd / "export" / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                members[norm(f"{tar.name}/{m.name}".encode())] = norm(tf.extractfile(m).read()) if m.isfile() else None
    return {"manifest": rows, "members": members}


def fresh(downloaded: Path, tmp: Path, recipe: dict, corpus: Path) -> dict:
    wd = new_workdir(downloaded, tmp)
    assert _run(_write(corpus, wd, recipe)) == 0
    return export_contents(wd)


def _mtimes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*.parquet"))}


# ---- finding 3 of issue 12: `--stage select` after an upstream edit -----------------------------

def test_stage_select_after_dedup_edit_refuses_and_full_run_is_exact(small_corpus, downloaded, tmp_path, capsys):
    wd = new_workdir(downloaded, tmp_path / "wd")
    recipe = base_recipe(small_corpus, wd)
    recipe["dedup"] = {"exact": ["url"], "near": "off"}  # few duplicates found
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    before = _mtimes(wd / "dedup")
    recipe["dedup"] = {}  # the defaults: sha256 and near-duplicates too
    path = _write(small_corpus, wd, recipe)
    capsys.readouterr()
    assert _run(path, "--stage", "select") == 2
    err = capsys.readouterr().err
    assert f"stage dedup's settings changed; run `mmcurate run {path} --stage dedup` (or the full recipe) first" in err
    # a refusal touches nothing
    assert _mtimes(wd / "dedup") == before
    # the full run recomputes dedup, select and export: the export equals a fresh run's
    assert _run(path) == 0
    got = export_contents(wd)
    want = fresh(downloaded, tmp_path / "fresh", recipe, small_corpus)
    assert got == want
    dups = [r for r in got["manifest"] if (r["reason"] or "").startswith("dup_")]
    assert dups, "the corpus must hold duplicates the default dedup finds"


def test_stage_by_stage_after_edit_is_exact(small_corpus, downloaded, tmp_path, capsys):
    """The way the refusal message says: run dedup, then select, then export."""
    wd = new_workdir(downloaded, tmp_path / "wd")
    recipe = base_recipe(small_corpus, wd)
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    recipe["dedup"] = {"near": "off"}
    path = _write(small_corpus, wd, recipe)
    assert _run(path, "--stage", "dedup") == 0
    # select and export were stale: cleared, not left behind
    assert not list((wd / "select").glob("*.parquet")) and not (wd / "export" / "manifest").exists()
    assert not (wd / "summary.json").exists()
    assert _run(path, "--stage", "export") == 2
    assert "stage select has not run" in capsys.readouterr().err
    assert _run(path, "--stage", "select") == 0
    assert _run(path, "--stage", "export") == 0
    assert export_contents(wd) == fresh(downloaded, tmp_path / "fresh", recipe, small_corpus)


def test_select_threshold_edit_reruns_select_and_export_only(small_corpus, downloaded, tmp_path):
    wd = new_workdir(downloaded, tmp_path / "wd")
    recipe = base_recipe(small_corpus, wd)
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    upstream = {n: _mtimes(wd / n) for n in ("annotate", "dedup")}
    recipe["select"] = {"min_short_side": 300}
    path = _write(small_corpus, wd, recipe)
    assert _run(path, "--stage", "select") == 0
    assert {n: _mtimes(wd / n) for n in ("annotate", "dedup")} == upstream
    assert _run(path) == 0
    assert export_contents(wd) == fresh(downloaded, tmp_path / "fresh", recipe, small_corpus)


# ---- fingerprints: only result-affecting settings, and the contents of files they name ----------

def test_settings_that_cannot_change_a_result_do_not_invalidate(small_corpus, downloaded, tmp_path):
    wd = new_workdir(downloaded, tmp_path / "wd")
    recipe = base_recipe(small_corpus, wd)
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    done = {n: _mtimes(wd / n) for n in ("annotate", "dedup", "select")}
    recipe["download"] = {**recipe["download"], "threads": 7, "processes": 3, "resolve_threads": 3}
    recipe["executor"] = "local"
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    assert {n: _mtimes(wd / n) for n in ("annotate", "dedup", "select")} == done


def test_file_named_in_recipe_is_fingerprinted_by_content(small_corpus, downloaded, tmp_path):
    wd = new_workdir(downloaded, tmp_path / "wd")
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("zzzunusedword\n", encoding="utf-8")
    recipe = base_recipe(small_corpus, wd)
    recipe["annotate"] = {"sensitive_lexicon": str(lexicon), "sensitive_action": "reject"}
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    assert not [r for r in export_contents(wd)["manifest"] if r["reason"] == "sensitive_caption"]
    # Same recipe text, new lexicon contents: the words the corpus planted in its captions.
    lexicon.write_text((small_corpus / "lexicon.txt").read_text(encoding="utf-8"), encoding="utf-8")
    assert _run(path) == 0
    got = export_contents(wd)
    assert [r for r in got["manifest"] if r["reason"] == "sensitive_caption"]
    assert got == fresh(downloaded, tmp_path / "fresh", recipe, small_corpus)


def test_changed_input_file_is_refused(small_corpus, downloaded, tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    shutil.copy(small_corpus / "urls.parquet", corpus / "urls.parquet")
    wd = tmp_path / "wd"
    path = _write(corpus, wd, base_recipe(corpus, wd))
    # ingests the list, then refuses: nothing is downloaded yet
    assert _run(path, "--stage", "annotate") == 2
    assert "stage download has not run" in capsys.readouterr().err
    assert (wd / "input" / "meta.json").exists()
    t = pq.read_table(corpus / "urls.parquet")
    pq.write_table(t.slice(0, ROWS - 1), corpus / "urls.parquet")
    assert _run(path) == 2
    assert "the input changed since" in capsys.readouterr().err


def test_score_threshold_and_batch_size_never_rescore(small_corpus, downloaded, tmp_path):
    """A backend's `threshold` is a select rule kept in the score section; batch sizes and the
    device cannot change a score. Neither re-runs the (GPU) score stage."""
    from models.clip.testing import tiny_open_clip_dir

    clip = tiny_open_clip_dir(tmp_path / "oc")
    wd = new_workdir(downloaded, tmp_path / "wd")
    recipe = base_recipe(small_corpus, wd)
    recipe["stages"] = ["download", "annotate", "score", "select", "export"]
    recipe["score"] = {"device": "cpu", "batch_size": 8, "rows_per_call": 16,
                       "backends": {"*": {"kind": "open_clip", "path": str(clip)}}}
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    scored = _mtimes(wd / "score")
    recipe["score"] = {**recipe["score"], "batch_size": 32, "rows_per_call": 8, "num_decode_threads": 1,
                       "backends": {"*": {"kind": "open_clip", "path": str(clip), "batch_size": 4}}}
    path = _write(small_corpus, wd, recipe)
    selected = _mtimes(wd / "select")
    assert _run(path) == 0
    assert _mtimes(wd / "score") == scored and _mtimes(wd / "select") == selected
    # A threshold that rejects about half the scored rows.
    scores = sorted(s for s in pq.read_table(wd / "score").column("clip_score").to_pylist() if s is not None)
    recipe["score"]["backends"]["*"]["threshold"] = scores[len(scores) // 2]
    path = _write(small_corpus, wd, recipe)
    assert _run(path, "--stage", "select") == 0
    assert _mtimes(wd / "score") == scored
    assert _run(path) == 0
    got = export_contents(wd)
    assert sum(r["reason"] == "clip_score" for r in got["manifest"]) >= 5
    assert _close(_decoded(got), _decoded(fresh(downloaded, tmp_path / "fresh", recipe, small_corpus)))


def _albef_ckpt(out: Path) -> Path:
    import torch
    from albef_helpers import tiny_model, tiny_overrides, toy_tokenizer
    from models.albef.checkpoint import save_config
    from models.albef.config import load_config

    tok = toy_tokenizer()
    save_config(out, load_config("tiny", tiny_overrides(**{"text.vocab_size": tok.vocab_size})))
    tok.save(out / "tokenizer")
    torch.save({"model": tiny_model(tok).state_dict(), "step": 0}, out / "model.pt")
    return out


def test_capfilt_keep_rule_edit_reruns_select_and_export_only(small_corpus, downloaded, tmp_path, monkeypatch):
    """Finding 4 of issue 12: changing a capfilt keep rule never calls the captioner again."""
    from models.capfilt_backends import AlbefCaptioner

    calls = []
    original = AlbefCaptioner.caption

    def counted(self, images, *a, **kw):
        calls.append(len(images))
        return original(self, images, *a, **kw)

    monkeypatch.setattr(AlbefCaptioner, "caption", counted)
    spec = {"kind": "albef", "path": str(_albef_ckpt(tmp_path / "ckpt"))}
    wd = new_workdir(downloaded, tmp_path / "wd")
    recipe = base_recipe(small_corpus, wd)
    recipe["stages"] = ["download", "annotate", "dedup", "capfilt", "select", "export"]
    recipe["capfilt"] = {"captioner": spec, "filter": spec, "n_captions": 2, "max_len": 6, "device": "cpu",
                         "synthetic_language": "any", "web_threshold": 0.0, "synth_threshold": 0.0,
                         "max_synthetic": 2, "batch_size": 16}
    path = _write(small_corpus, wd, recipe)
    assert _run(path) == 0
    assert calls
    captioned = _mtimes(wd / "capfilt")
    cands = [c for r in pq.read_table(wd / "capfilt").column("capfilt_candidates").to_pylist() if r for c in r]
    web = sorted(c["score"] for c in cands if c["origin"] == "web")
    synth = sorted(c["score"] for c in cands if c["origin"] == "synthetic" and c["score"] is not None)
    # Thresholds in the middle of this model's scores: some rows keep web captions, some gain
    # synthetic ones, some fail capfilt.
    recipe["capfilt"].update(web_threshold=web[len(web) // 2], synth_threshold=synth[len(synth) // 2],
                             max_synthetic=1)
    path = _write(small_corpus, wd, recipe)
    calls.clear()
    assert _run(path, "--stage", "select") == 0
    assert _run(path) == 0
    assert calls == [] and _mtimes(wd / "capfilt") == captioned
    got = export_contents(wd)
    assert any(r["reason"] == "capfilt" for r in got["manifest"])
    # export and the manifest read the kept captions from select's output
    sel = pq.read_table(wd / "select").to_pylist()
    kept = {r["uid"]: r["captions"] for r in sel if r["decision"] == "kept"}
    for r in got["manifest"]:
        if r["decision"] == "kept" and kept[r["uid"]]:
            assert [c["text"] for c in r["captions"]] == [c["text"] for c in kept[r["uid"]]]
    assert any(c["origin"] == "synthetic" for caps in kept.values() if caps for c in caps)
    assert _close(_decoded(got), _decoded(fresh(downloaded, tmp_path / "fresh", recipe, small_corpus)))


# ---- select: a rule whose columns are missing is an error --------------------------------------

def test_select_rule_with_missing_columns_is_an_error(small_corpus, downloaded, tmp_path):
    from pipeline.config import recipe_from_dict
    from pipeline.store import ColumnStore, RunOrderError
    from stages.select import SelectStage
    from pipeline.registry import build_stage

    wd = new_workdir(downloaded, tmp_path / "wd")
    recipe = recipe_from_dict(base_recipe(small_corpus, wd))
    assert _run(_write(small_corpus, wd, base_recipe(small_corpus, wd)), "--stage", "annotate") == 0
    store = ColumnStore(wd, recipe.stages)  # dedup is in the recipe but has not run
    stage = build_stage("select", recipe)
    assert isinstance(stage, SelectStage)
    with pytest.raises(RunOrderError, match="stage dedup has not produced"):
        stage.prepare(store)
    with pytest.raises(RunOrderError, match="dedup"):
        stage.needed_columns(list(store.column_sources("select")))
    # Without dedup in the recipe, there is no duplicate rule to apply.
    no_dedup = recipe_from_dict({**base_recipe(small_corpus, wd), "stages": ["download", "annotate", "select"]})
    stage = build_stage("select", no_dedup)
    assert "dup_of" not in stage.needed_columns(list(ColumnStore(wd, no_dedup.stages).column_sources("select")))


def test_select_setting_without_its_stage_is_a_recipe_error(small_corpus, tmp_path, capsys):
    wd = tmp_path / "wd"
    recipe = base_recipe(small_corpus, wd)
    recipe["select"] = {"keep_top_fraction": 0.5}  # needs the score stage
    assert _run(_write(small_corpus, wd, recipe)) == 2
    assert "select.keep_top_fraction is set but the recipe has no score stage" in capsys.readouterr().err


# ---- property: random edit sequences against fresh runs ---------------------------------------

SCORED = ["download", "annotate", "score", "dedup", "select", "export"]
# Each knob: recipe path -> values. Result-affecting edits in several stages, keep rules routed to
# select from the score section, and settings that must not invalidate anything.
KNOBS: dict[tuple[str, ...], list] = {
    ("select", "min_short_side"): [0, 64, 300],
    ("select", "reject_duplicates"): [True, False],
    ("dedup", "near"): ["signature", "off"],
    ("dedup", "exact"): [["url", "sha256", "caption_image"], ["url"]],
    ("annotate", "redact_pii"): [True, False],
    ("annotate", "sensitive_action"): ["mask", "reject"],
    ("score", "backends", "*", "threshold"): [None, 0.0, 0.05],
    ("score", "batch_size"): [8, 64],          # RUNTIME
    ("download", "threads"): [8, 32],          # RUNTIME
}


def _set(d: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    if value is None:
        d.pop(path[-1], None)
    else:
        d[path[-1]] = value


def _close(a, b) -> bool:
    """Equal, with floats compared to 1e-5 (a batch size may move the last bits of a score)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _decoded(contents: dict) -> dict:
    members = {k: (json.loads(v) if k.endswith(b".json") else v) for k, v in contents["members"].items()}
    return {"manifest": contents["manifest"], "members": members}


def _files(wd: Path) -> dict[str, int]:
    """Every file and its mtime, but the CLI's own log (pipeline/logs.py), which every command appends to."""
    return {str(p.relative_to(wd)): p.stat().st_mtime_ns for p in sorted(wd.rglob("*"))
            if p.is_file() and p.relative_to(wd).parts[0] != "logs"}


def test_random_edit_sequences_match_fresh_runs(small_corpus, downloaded, tmp_path_factory, capsys):
    from hypothesis import HealthCheck, given, settings, strategies as st

    from pipeline.config import recipe_from_dict
    from pipeline.fingerprint import stage_fingerprints
    from pipeline.store import stage_dir
    from models.clip.testing import tiny_open_clip_dir

    clip = tiny_open_clip_dir(tmp_path_factory.mktemp("rerun_clip") / "oc")
    root = tmp_path_factory.mktemp("rerun_prop")
    fresh_cache: dict[str, dict] = {}
    stats = {"sequences": 0, "runs": 0, "refused": 0, "compared": 0}

    def start(wd: Path) -> dict:
        d = base_recipe(small_corpus, wd)
        d["stages"] = list(SCORED)
        d["score"] = {"device": "cpu", "batch_size": 8, "rows_per_call": 16,
                      "backends": {"*": {"kind": "open_clip", "path": str(clip)}}}
        # A random-init CLIP's embeddings are degenerate; duplicates are found by image hashes.
        d["dedup"] = {"semantic_threshold": None}
        return d

    # Every sequence starts from a finished run of the starting recipe.
    base_wd = new_workdir(downloaded, root / "base")
    assert _run(_write(small_corpus, base_wd, start(base_wd))) == 0

    def expected(recipe: dict) -> dict:
        key = json.dumps({k: v for k, v in recipe.items() if k != "workdir"}, sort_keys=True)
        if key not in fresh_cache:
            wd = new_workdir(downloaded, root / f"fresh{len(fresh_cache)}")
            assert _run(_write(small_corpus, wd, recipe)) == 0
            fresh_cache[key] = _decoded(export_contents(wd))
        return fresh_cache[key]

    edit = st.tuples(st.sampled_from(sorted(KNOBS)), st.integers(0, 2))
    target = st.sampled_from([None, *SCORED[1:]])  # None: a full run

    @settings(max_examples=int(os.environ.get("MMCURATE_RERUN_EXAMPLES", "10")), deadline=None,
              derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.lists(edit, min_size=1, max_size=2), target), min_size=1, max_size=3))
    def check(steps):
        stats["sequences"] += 1
        wd = root / f"seq{stats['sequences']}"
        shutil.copytree(base_wd, wd)
        recipe = start(wd)
        for edits, what in steps:
            for knob, i in edits:
                values = KNOBS[knob]
                _set(recipe, knob, copy.deepcopy(values[i % len(values)]))
            path = _write(small_corpus, wd, recipe)
            stats["runs"] += 1
            before = _files(wd)
            capsys.readouterr()
            rc = _run(path, *(["--stage", what] if what else []))
            if rc == 2:
                stats["refused"] += 1
                err = capsys.readouterr().err
                m = re.search(r"run `mmcurate run \S+ ((?:--stage \w+ ?)+)` \(or the full recipe\) first", err)
                assert what and m, err
                named = re.findall(r"--stage (\w+)", m.group(1))
                assert all(SCORED.index(n) < SCORED.index(what) for n in named), err
                assert _files(wd) == before  # a refusal changes nothing
                continue
            assert rc == 0
            # Nothing stale is left: every stage directory holding outputs carries the
            # fingerprint of the current recipe.
            fps = stage_fingerprints(recipe_from_dict(recipe), SCORED)
            for name in SCORED:
                d = wd / stage_dir(name)
                if list(d.glob("*.parquet")):
                    assert json.loads((d / "_stage.json").read_text())["fingerprint"] == fps[name], name
            if (wd / "export" / "manifest").exists():
                stats["compared"] += 1
                assert _close(_decoded(export_contents(wd)), expected(recipe))
        # Whatever happened, a full run now gives the fresh run's export.
        assert _run(path) == 0
        stats["compared"] += 1
        assert _close(_decoded(export_contents(wd)), expected(recipe))
        shutil.rmtree(wd)

    check()
    with capsys.disabled():
        print(f"\nrerun property: {stats['sequences']} sequences, {stats['runs']} runs "
              f"({stats['refused']} refused), {stats['compared']} exports compared with "
              f"{len(fresh_cache)} fresh runs")
    assert stats["sequences"] >= 1

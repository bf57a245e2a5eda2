"""Cleaning quality against the synthetic corpus's ground truth.

Generates a corpus (fixed seed), serves it on loopback, runs download → annotate → dedup →
select → export with the corpus's own sensitive lexicon, and prints per noise label how many rows
were removed or fixed (recall), the precision on clean rows, PII redaction recall per type, the
sensitive-word recall (by the form the word was written in: plain, normalisable, held out) with
the share of clean captions altered, and name detection P/R.

The generator writes its own boilerplate phrases and generic alt-text words (synth/noise.py), not
the rule list's: boilerplate and uninformative recall are split into phrases the rule list
(filters/data/boilerplate.txt) contains and held-out ones it does not.

    .venv/bin/python bench/quality.py --rows 5000
"""
from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Labels a rule must remove (decision != kept).
REMOVE = ("tiny", "extreme_aspect", "corrupt", "truncated", "html", "http_404", "http_500",
          "timeout", "exact_dup", "near_dup", "uninformative")
# Labels a rule must fix in the caption that flows on.
FIX = ("pii", "sensitive", "traditional", "boilerplate")
# Labels no rule in this pipeline is meant to catch (the model stages do): reported only.
MODEL_ONLY = ("mismatched", "wrong_attribute")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pair_removed(row: dict, m: dict) -> bool:
    """A duplicate is caught when it and its original are not both kept."""
    other = row.get("dup_of_row")
    mine = m[row["row"]]["decision"] != "kept"
    if other is None:
        return mine
    return mine or m[other]["decision"] != "kept"


def _written(word: str, raw: str) -> list[str]:
    """The lexicon word and the form it was written in: neither may survive in caption_clean."""
    from synth.noise import sensitive_forms

    return [word] + [v for v in sensitive_forms(word).values() if v in raw]


def _rule_entries() -> tuple[list[str], set[str]]:
    from filters.text import DEFAULT_BOILERPLATE, load_wordlist

    rules = [r.lower() for r in load_wordlist(DEFAULT_BOILERPLATE)]
    return [r for r in rules if not r.startswith("=")], {r[1:].strip() for r in rules if r.startswith("=")}


def boilerplate_split(labels: list[dict], m: dict) -> None:
    """Recall on generator phrases the rule list knows vs held-out ones: the rule fired
    (text_boilerplate_removed > 0) and, for rows with no other noise, the whole phrase is gone."""
    from filters.text import normalize_text
    from synth.noise import _GENERIC, BOILERPLATE_EN, BOILERPLATE_ZH

    embedded, whole = _rule_entries()
    phrases = sorted(BOILERPLATE_ZH + BOILERPLATE_EN, key=len, reverse=True)
    known = {p: any(e in p.lower() for e in embedded) for p in phrases}
    print("\nboilerplate by part (generator phrases; 'in list': contains a rule-list entry):")
    for part in (True, False):
        n = fired = only = gone = 0
        for r in labels:
            if "boilerplate" not in r["labels"]:
                continue
            ph = next((p for p in phrases if r["caption"].endswith(p) or p in r["caption"]), None)
            if ph is None or known[ph] != part:
                continue
            out = m[r["row"]]
            n += 1
            fired += (out["text_boilerplate_removed"] or 0) > 0
            if r["labels"] == ["boilerplate"]:
                only += 1
                gone += (out.get("caption_clean") or "") == normalize_text(r["true_caption"])
        name = "in list" if part else "held out"
        print(f"  {name:9} {len(set(p for p in phrases if known[p] == part)):3} phrases, {n:4} rows: "
              f"rule fired {fired / max(1, n):.3f}; phrase wholly gone {gone}/{only} = {gone / max(1, only):.3f}")
    gen = {w.lower(): w.lower() in whole for ws in _GENERIC.values() for w in ws}
    print("uninformative alt-text by part (whole caption is one generator phrase or generic word):")
    for part in (True, False):
        rows = [r for r in labels if "uninformative" in r["labels"] and r["caption"]
                and ((r["caption"].lower() in gen and gen[r["caption"].lower()] == part)
                     or (r["caption"] in known and known[r["caption"]] == part))]
        caught = sum(m[r["row"]]["decision"] != "kept" for r in rows)
        print(f"  {'in list' if part else 'held out':9} {len(rows):4} rows: removed {caught / max(1, len(rows)):.3f}")


def evaluate(corpus: Path, wd: Path) -> None:
    import pyarrow.parquet as pq

    from filters.names import NameDetector
    from filters.text import normalize_text

    labels = pq.read_table(corpus / "labels.parquet").to_pylist()
    m = {r["uid"]: r for r in pq.read_table(wd / "export" / "manifest").to_pylist()}

    print(f"{'label':18}{'rows':>7}{'caught':>8}{'recall':>8}   how")
    by_label: dict[str, list] = defaultdict(list)
    for lab in labels:
        for name in lab["labels"]:
            by_label[name].append(lab)
    for name in REMOVE:
        rows = by_label.get(name, [])
        if name in ("exact_dup", "near_dup"):
            caught = sum(pair_removed(r, m) for r in rows)
        else:
            caught = sum(m[r["row"]]["decision"] != "kept" for r in rows)
        reasons = Counter(m[r["row"]]["reason"] for r in rows if m[r["row"]]["decision"] != "kept")
        rec = caught / len(rows) if rows else float("nan")
        print(f"{name:18}{len(rows):7}{caught:8}{rec:8.3f}   removed: {dict(reasons.most_common(3))}")

    # Fixes: the caption that flows on no longer carries the noise.
    for name in FIX:
        rows = by_label.get(name, [])
        fixed = 0
        for r in rows:
            out = m[r["row"]].get("caption_clean") or ""
            if name == "pii":
                ok = all(p["text"] not in out for p in r["pii"] if p["type"] != "name")
            elif name == "sensitive":
                ok = all(v not in out for w in r["sensitive_words"] for v in _written(w, r["caption"]))
            elif name == "traditional":
                ok = m[r["row"]]["text_t2s_chars"] > 0
            else:
                ok = m[r["row"]]["text_boilerplate_removed"] > 0
            fixed += ok
        print(f"{name:18}{len(rows):7}{fixed:8}{(fixed / len(rows) if rows else float('nan')):8.3f}   fixed in caption_clean")
    for name in MODEL_ONLY:
        rows = by_label.get(name, [])
        kept = sum(m[r["row"]]["decision"] == "kept" for r in rows)
        print(f"{name:18}{len(rows):7}{len(rows) - kept:8}{'':8}   (needs the model stages; rules leave {kept} kept)")

    # Precision on clean rows: a clean row removed by a rule is a false positive, except the
    # original of a duplicate pair, which the representative choice may legitimately drop.
    originals = {r["dup_of_row"] for r in labels if r.get("dup_of_row") is not None}
    clean = [r for r in labels if r["label"] == "clean"]
    fp = [r for r in clean if m[r["row"]]["decision"] != "kept"
          and not (r["row"] in originals and (m[r["row"]]["reason"] or "").startswith("dup_"))]
    print(f"\nclean rows: {len(clean)}; wrongly removed: {len(fp)}; precision on clean rows: "
          f"{1 - len(fp) / len(clean):.4f}")
    print(f"  removed clean rows by reason: {dict(Counter(m[r['row']]['reason'] for r in fp).most_common(6))}")
    altered = [r for r in clean if (m[r["row"]].get("caption_clean") or "") != normalize_text(r["caption"])]
    print(f"  clean captions altered by text rules: {len(altered)} of {len(clean)}")

    boilerplate_split(labels, m)

    # PII per type.
    print("\nPII redaction recall per type (inserted strings gone from caption_clean):")
    per = defaultdict(lambda: [0, 0])
    for r in labels:
        out = m[r["row"]].get("caption_clean") or ""
        for p in r["pii"] or []:
            per[p["type"]][0] += 1
            per[p["type"]][1] += p["text"] not in out
    for t, (n, ok) in sorted(per.items()):
        note = " (names are opt-in: not redacted by default)" if t == "name" else ""
        print(f"  {t:6} {ok}/{n} = {ok / n:.3f}{note}")

    # Sensitive words: recall on the corpus lexicon, by the form the word was written in, and what
    # the lexicon does to clean captions.
    from synth.noise import HELD_OUT_FORMS, sensitive_forms

    sens = by_label.get("sensitive", [])
    per_form: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in sens:
        out = m[r["row"]].get("caption_clean") or ""
        for w in r["sensitive_words"]:
            form = [f for f, v in sensitive_forms(w).items() if v in r["caption"]][-1]
            per_form[form][0] += 1
            per_form[form][1] += all(v not in out for v in _written(w, r["caption"]))
    clean_hit = sum(m[r["row"]]["sensitive_hits"] > 0 for r in clean)
    known = [v for f, v in per_form.items() if f not in HELD_OUT_FORMS]
    held = [v for f, v in per_form.items() if f in HELD_OUT_FORMS]
    print(f"\nsensitive words: recall on forms the matcher normalises {sum(v[1] for v in known)}/"
          f"{sum(v[0] for v in known)}, on held-out forms {sum(v[1] for v in held)}/{sum(v[0] for v in held)} "
          f"({', '.join(f'{f} {v[1]}/{v[0]}' for f, v in sorted(per_form.items()))}); "
          f"clean captions altered by the lexicon: {clean_hit}/{len(clean)} = {clean_hit / len(clean):.4f}")

    # Names: detector P/R on raw captions of rows that carry a labelled name, and on clean rows.
    det = NameDetector()
    tp = fn = fp_n = 0
    for r in labels:
        if not r["caption"]:
            continue
        truth = {p["text"] for p in r["pii"] or [] if p["type"] == "name"}
        found = {r["caption"][s:e] for s, e in det.find(r["caption"])}
        tp += sum(any(t in f or f in t for f in found) for t in truth)
        fn += sum(not any(t in f or f in t for f in found) for t in truth)
        fp_n += sum(not any(t in f or f in t for t in truth) for f in found)
    print(f"names (opt-in rule): precision {tp / max(1, tp + fp_n):.3f}, recall {tp / max(1, tp + fn):.3f} "
          f"(tp {tp}, fp {fp_n}, fn {fn})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep the corpus and run in this folder")
    args = ap.parse_args()
    from synth import CorpusServer

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_quality_"))
    tmp.mkdir(parents=True, exist_ok=True)
    corpus = tmp / "corpus"
    from synth import NoiseRates, generate_corpus

    port = free_port()
    if not (corpus / "meta.json").exists():
        generate_corpus(corpus, n_rows=args.rows, seed=args.seed, base_url=f"http://127.0.0.1:{port}",
                        rates=NoiseRates().override({"timeout_delay": 8.0}), n_test=10)
    from pipeline.config import recipe_from_dict
    from pipeline.runner import run

    wd = tmp / "run"
    # Short timeout delay so the bench measures rules, not waiting; the server takes the
    # corpus's own port (port=None).
    with CorpusServer(corpus, port=None):
        recipe = recipe_from_dict({
            "input": {"path": str(corpus / "urls.parquet")}, "workdir": str(wd), "executor": "local",
            "shard_size": 1000, "stages": ["download", "annotate", "dedup", "select", "export"],
            "download": {"processes": 2, "threads": 32, "timeout": 3, "allow_private": ["loopback"]},
            "annotate": {"sensitive_lexicon": str(corpus / "lexicon.txt")},
        })
        t0 = time.perf_counter()
        summary = run(recipe, quiet=True)
        secs = time.perf_counter() - t0
    print(f"corpus: {args.rows} rows, seed {args.seed}; pipeline {secs:.0f}s; kept {summary['kept']}, "
          f"rejected {summary['rejected']}, failed {summary['failed']} (balanced: {summary['balanced']})\n")
    evaluate(corpus, wd)


if __name__ == "__main__":
    main()

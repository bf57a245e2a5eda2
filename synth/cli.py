"""`mmcurate synth` and `mmcurate serve`: argparse subcommands for the synthetic corpus."""
from __future__ import annotations

import argparse
import sys
import time

from synth.noise import ALL_LABELS, NoiseRates

_RATE_HELP = ", ".join(f"{k}={v:g}" for k, v in NoiseRates().model_dump().items())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `synth` and `serve` subcommands; each sets `func` to its handler."""
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic bilingual web corpus with ground-truth noise labels",
        description=(
            "Render shape scenes with English and Chinese captions, inject web noise "
            "(mismatched/uninformative captions, PII, sensitive words, traditional script, "
            "tiny/extreme/corrupt/truncated images, HTML, 404/500, slow and timed-out URLs, "
            "exact and near duplicates) and write OUT_DIR/urls.parquet (url, caption), "
            "labels.parquet (ground truth per row), files/ + server.json (what `mmcurate "
            "serve` returns), lexicon.txt (sensitive words) and test/test.parquet (a clean "
            "held-out split for retrieval eval)."),
        epilog=f"Noise rates (fractions of all rows) and delays (seconds), with defaults: "
               f"{_RATE_HELP}.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write the corpus to "
                   "(new, empty, or an earlier corpus to replace)")
    p.add_argument("--rows", type=int, default=1000, help="number of URL rows (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes "
                   "(default 0)")
    p.add_argument("--base-url", default="http://127.0.0.1:8731",
                   help="scheme://host:port the URLs point at; serve on that port "
                        "(default http://127.0.0.1:8731)")
    p.add_argument("--test-rows", type=int, default=200,
                   help="scenes in the clean held-out test split (default 200)")
    p.add_argument("--rate", action="append", default=[], metavar="NAME=VALUE",
                   help="override one noise rate or delay, e.g. --rate pii=0.2 "
                        "--rate timeout_delay=30; repeatable")
    p.add_argument("--clean", action="store_true",
                   help="start from no noise at all (NoiseRates.none()); --rate adds some back")
    p.set_defaults(func=run_synth)

    s = subparsers.add_parser(
        "serve",
        help="serve a synthetic corpus over loopback HTTP",
        description=(
            "Serve CORPUS_DIR (written by `mmcurate synth`) on a loopback address: each URL "
            "path answers with its row's behaviour (image bytes, 404, 500, HTML with an image "
            "content-type, a delay). Runs until Ctrl-C."),
    )
    s.add_argument("corpus_dir", metavar="CORPUS_DIR", help="directory written by mmcurate synth")
    s.add_argument("--host", default="127.0.0.1",
                   help="loopback address to bind (127.0.0.1, ::1 or localhost)")
    s.add_argument("--port", type=int, default=None,
                   help="port (default: the one in the corpus's base_url, so its URLs resolve)")
    s.add_argument("--verbose", action="store_true", help="log one line per request")
    s.set_defaults(func=run_serve)


def run_synth(args: argparse.Namespace) -> int:
    from synth.corpus import generate_corpus

    rates = NoiseRates.none() if args.clean else NoiseRates()
    try:
        rates = rates.override(args.rate)
    except ValueError as e:
        print(f"mmcurate synth: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    meta = generate_corpus(args.out_dir, n_rows=args.rows, seed=args.seed,
                           base_url=args.base_url, rates=rates, n_test=args.test_rows)
    elapsed = time.perf_counter() - t0
    print(f"wrote {meta['n_rows']} rows + {meta['n_test']} test scenes to {args.out_dir} "
          f"in {elapsed:.1f}s (seed {meta['seed']}, urls at {meta['base_url']})")
    print(f"languages: {meta['lang_counts']}")
    print(f"{'label':<16}{'primary':>8}{'any':>8}")
    for label in ALL_LABELS:
        primary = meta["label_counts"].get(label, 0)
        anyc = meta["labels_any_counts"].get(label, primary if label == "clean" else 0)
        if primary or anyc:
            print(f"{label:<16}{primary:>8}{anyc:>8}")
    print(f"clean fraction: {meta['clean_fraction']:.1%}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from synth.server import CorpusServer

    try:
        srv = CorpusServer(args.corpus_dir, host=args.host, port=args.port, verbose=args.verbose)
    except (FileNotFoundError, ValueError) as e:
        print(f"mmcurate serve: {e}", file=sys.stderr)
        return 2
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {len(srv.paths)} URLs of {args.corpus_dir} at "
          f"http://{host}:{srv.configured_port}  (Ctrl-C to stop)", flush=True)
    srv.serve_forever()
    return 0

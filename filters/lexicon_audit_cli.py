"""`mmcurate lexicon-audit LEXICON --sample CAPTIONS`: check a sensitive lexicon on real captions
before using it, so that innocent substrings are caught before they mask or reject good data. It
prints what the hygiene defaults exempt and why (an everyday word by jieba's counts, or an entry
frequent in the sample itself), then what still hits."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from filters.sensitive import (
    DEFAULT_COMMON_RANK, DEFAULT_MAX_SHARE, SHARE_MIN_HITS, audit_lexicon, read_lexicon,
)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "lexicon-audit", help="hit rate and most frequent hits of a sensitive lexicon on a caption sample",
        description="Match LEXICON (one word per line) against a caption sample the way the "
                    "annotate stage does, and report the share of captions hit and the words that "
                    "hit most. Warns when the lexicon hits more than --warn-rate of captions.")
    p.add_argument("lexicon", metavar="LEXICON", help="text file, one word per line ('#' comments)")
    p.add_argument("--sample", metavar="CAPTIONS", required=True,
                   help="captions: .txt (one per line), .parquet or .jsonl with a caption column")
    p.add_argument("--column", default="caption", help="caption column for parquet/jsonl (default: caption)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many captions")
    p.add_argument("--top", type=int, default=20, help="how many of the most frequent hits to list")
    p.add_argument("--warn-rate", type=float, default=0.03, help="warn above this share of captions hit")
    p.add_argument("--min-len", type=int, default=2, help="drop lexicon entries shorter than this")
    p.add_argument("--allowlist", default=None, help="file of allowed words/phrases, one per line")
    p.add_argument("--no-zh-boundaries", action="store_true",
                   help="let Chinese matches cross jieba word boundaries")
    p.add_argument("--strict", default=None, metavar="FILE",
                   help="entries to match whatever the exemptions say (annotate.sensitive_strict_file)")
    p.add_argument("--common-rank", type=int, default=DEFAULT_COMMON_RANK,
                   help="exempt entries among this many most frequent entries of jieba's "
                        f"dictionary (annotate.sensitive_common_rank; default {DEFAULT_COMMON_RANK}; 0: off)")
    p.add_argument("--max-share", type=float, default=DEFAULT_MAX_SHARE,
                   help="exempt entries found in more than this share of the sample "
                        f"(annotate.sensitive_max_share; default {DEFAULT_MAX_SHARE}; needs at least "
                        f"{SHARE_MIN_HITS} hits)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
    return p


def iter_captions(path: str | Path, column: str = "caption", limit: int | None = None) -> Iterator[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"caption sample {p} does not exist")
    n = 0
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(p)
        if column not in pf.schema_arrow.names:
            raise KeyError(f"{p} has no column {column!r} (columns: {pf.schema_arrow.names}); pass --column")
        for batch in pf.iter_batches(columns=[column], batch_size=65536):
            for v in batch.column(0).to_pylist():
                if limit is not None and n >= limit:
                    return
                n += 1
                yield v or ""
    elif suffix in (".jsonl", ".ndjson"):
        with p.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if limit is not None and n >= limit:
                    return
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg}); fix or drop that line") from e
                if column not in obj:
                    raise KeyError(f"{p}:{lineno} has no key {column!r}; pass --column")
                n += 1
                yield obj[column] or ""
    else:
        with p.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield line.rstrip("\n")


def run(args: argparse.Namespace) -> int:
    try:
        words = read_lexicon(args.lexicon)
        allow = read_lexicon(args.allowlist) if args.allowlist else []
        strict = read_lexicon(args.strict) if args.strict else []
        report = audit_lexicon(words, iter_captions(args.sample, args.column, args.limit),
                               top=args.top, warn_rate=args.warn_rate, min_len=args.min_len,
                               allowlist=allow, zh_boundaries=not args.no_zh_boundaries,
                               strict=strict, common_rank=args.common_rank or None,
                               max_share=args.max_share)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"lexicon-audit: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.json:
        d = dict(vars(report))
        d["top_words"] = [list(x) for x in report.top_words]
        print(json.dumps(d, ensure_ascii=False))
    else:
        print(report.format())
    if report.warn:
        print(f"lexicon-audit: warning: {100 * report.hit_rate:.2f}% of captions hit "
              f"(> {100 * report.warn_rate:.1f}%)", file=sys.stderr)
    return 0

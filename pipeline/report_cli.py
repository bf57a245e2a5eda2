"""`mmcurate report RUNDIR [--out FILE]`: the HTML run report."""
from __future__ import annotations

import argparse
import time


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import build_report

    t0 = time.perf_counter()
    path = build_report(args.rundir, out=args.out, samples_per_reason=args.per_reason,
                        thumb_size=args.thumb_size)
    print(f"report: {path} (thumbnails in {path.parent / 'thumbs'}) in {time.perf_counter() - t0:.1f}s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report", help="write an HTML report of a run (funnel, histograms, sample thumbnails, rounds)",
        description="Write a self-contained HTML page about a run: rows per stage and per decision and "
        "reason, CLIP/ITM score, aspect-ratio and caption-length histograms, thumbnails of a few samples "
        "per reason, NSFW/watermark/aesthetic tag histograms with thumbnails per tag reason, CapFilt captions "
        "before/after, and metrics across bootstrap rounds (round_0/, "
        "round_1/ ... with metrics.json). Sections the run has no data for are replaced by a note.",
        epilog="example: mmcurate report runs/demo/run && xdg-open runs/demo/run/report/index.html")
    r.add_argument("rundir", help="the run's workdir (or a bootstrap folder holding round_N/)")
    r.add_argument("--out", help="HTML file to write (default: RUNDIR/report/index.html); "
                   "thumbnails go to a thumbs/ folder beside it")
    r.add_argument("--per-reason", type=int, default=6, metavar="N", help="thumbnails per reason (default 6)")
    r.add_argument("--thumb-size", type=int, default=128, metavar="PX", help="thumbnail long side (default 128)")
    r.set_defaults(func=_cmd_report)

"""Driver memory: peak RSS of each driver-side step at two run sizes, to show it does not grow
with the number of rows.

The steps are the ones the driver runs over every row: ingest of the URL list, the download
pre-check (`_guard_inputs`, no DNS), annotate and select through the runner with the local
executor (in-process, so a worker's memory is the driver's here), the accounting check, and the
HTML report. The download itself is synthesized as bench/scale.py does (URLs into a loopback
corpus of a few thousand images, 5% failed), so no network is used. Each step runs in its own
child process and reports its high-water RSS (VmHWM).

`--ray` runs select on a local Ray (2 CPUs) instead, and also reports the peak RSS of each Ray
worker process (read from /proc while the step runs). annotate stays local: its per-image decode
cache (as in bench/scale.py) lives in the process that runs it.

`--before DIR` runs ingest, accounting and report a second time with the code in DIR (e.g. the
tree of an earlier commit: `git archive COMMIT | tar -x -C DIR`) on the same run, for a
before/after comparison at the same sizes.

    python bench/driver_memory.py --rows 200000 --rows 1000000
    python bench/driver_memory.py --rows 200000 --before /tmp/old-tree
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["ingest", "download", "precheck", "annotate", "select", "accounting", "report"]
BEFORE_STEPS = ["ingest", "accounting", "report"]  # the steps whose code the comparison is about
SETUP = {"download"}  # the bench's own synthesis, not a pipeline step


def _peak_rss_mib() -> float:
    """High-water RSS of this process (not ru_maxrss, which Linux carries over exec from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = _ppid(pid)
    return False


class _WorkerPeaks:
    """High-water RSS of every Ray worker process this process started (its raylet's children;
    other users' Ray clusters on the machine are left out). VmHWM is a high-water mark, so
    polling only has to catch each process once before it exits."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "_WorkerPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    if not (d / "cmdline").read_bytes().startswith(b"ray::") or \
                            not _descends_from(int(d.name), os.getpid()):
                        continue
                    for line in (d / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            kib = int(line.split()[1]) / 1024
                            self.peaks[int(d.name)] = max(self.peaks.get(int(d.name), 0.0), kib)
                except OSError:
                    continue


def recipe(urls: Path, workdir: Path, shard: int) -> dict:
    return {"input": {"path": str(urls), "keep_cols": ["img"]}, "workdir": str(workdir), "shard_size": shard,
            "executor": "local", "stages": ["download", "annotate", "select"], "select": {"min_short_side": 100}}


def child(step: str, code: Path, urls: Path, workdir: Path, shard: int, ray: bool = False) -> dict:
    """One step in this process, importing the pipeline from `code`."""
    sys.path.insert(0, str(code))
    sys.path.insert(1, str(ROOT / "bench"))
    from pipeline.config import recipe_from_dict

    r = recipe_from_dict(recipe(urls, workdir, shard))
    t0 = time.perf_counter()
    workers = None
    if step == "ingest":
        from pipeline.ingest import ingest

        ingest(r.input, workdir, r.shard_size)
    elif step == "download":
        import scale

        scale.synth_download(workdir)
    elif step == "precheck":
        from pipeline.registry import build_stage
        from pipeline.store import ColumnStore

        build_stage("download", r)._guard_inputs(ColumnStore(workdir, ["download"]))
    elif step in ("annotate", "select"):
        from pipeline.executors import LocalExecutor
        from pipeline.runner import run

        if step == "annotate":
            import scale
            import stages.annotate as annotate

            # Decode each distinct image once; the text rules still run on every row.
            annotate.inspect_image = functools.lru_cache(maxsize=scale.N_IMAGES * 2)(annotate.inspect_image)
        if ray and step == "select":
            from pipeline.executors import RayExecutor

            ex = RayExecutor(num_cpus=2)
            t0 = time.perf_counter()  # Ray's start is not the step's cost
            with _WorkerPeaks() as wp:
                run(r, only=[step], executor=ex, quiet=True)
                ex.shutdown()
            workers = sorted(wp.peaks.values(), reverse=True)
        else:
            run(r, only=[step], executor=LocalExecutor(), quiet=True)
    elif step == "accounting":
        from pipeline.accounting import check_and_record

        check_and_record(workdir, json.loads((workdir / "input" / "meta.json").read_text())["n_rows"])
    elif step == "report":
        from pipeline.report import build_report

        build_report(workdir, out=workdir / f"report-{code.name}" / "index.html")
    return {"step": step, "seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_rss_mib(),
            "worker_peaks_mib": workers}


def _step(step: str, code: Path, urls: Path, workdir: Path, shard: int, ray: bool) -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    p = subprocess.run([sys.executable, __file__, "--child", step, str(code), str(urls), str(workdir), str(shard),
                        "ray" if ray else "local"],
                       capture_output=True, text=True, env=env, cwd=str(code))
    if p.returncode != 0:
        raise SystemExit(f"step {step} ({code}) failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench(rows: int, tmp: Path, shard: int, before: Path | None, ray: bool) -> dict[tuple[str, str], dict]:
    sys.path.insert(0, str(ROOT / "bench"))
    import scale

    urls, workdir = tmp / f"urls_{rows}.parquet", tmp / f"run_{rows}"
    shutil.rmtree(workdir, ignore_errors=True)
    scale.make_urls(urls, rows)
    out = {}
    for step in STEPS:
        for label, code in (("after", ROOT), ("before", before)):
            if code is None or (label == "before" and step not in BEFORE_STEPS):
                continue
            wd = workdir
            if label == "before" and step == "ingest":  # its own workdir; the run goes on from the new one
                wd = tmp / f"run_{rows}_before"
                shutil.rmtree(wd, ignore_errors=True)
            r = _step(step, code, urls, wd, shard, ray and label == "after")
            if wd != workdir:
                shutil.rmtree(wd, ignore_errors=True)
            out[(step, label)] = r
            tag = " (bench setup)" if step in SETUP else ""
            print(f"{rows:>9,} rows  {label:<6} {step:<10} {r['seconds']:7.1f} s  {rows / r['seconds']:>10,.0f} rows/s  "
                  f"peak RSS {r['peak_rss_mib']:7.0f} MiB{tag}", flush=True)
            if r.get("worker_peaks_mib") is not None:
                w = r["worker_peaks_mib"]
                print(f"{'':>16}Ray worker processes: {len(w)}, peak RSS each (MiB): "
                      f"{', '.join(f'{x:.0f}' for x in w)}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="row counts (default 200000 and 1000000)")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--before", type=Path, help="a tree of older code to compare ingest, accounting and report with")
    ap.add_argument("--ray", action="store_true", help="run select on a local Ray and report each worker's peak")
    ap.add_argument("--tmp", help="scratch directory (default: a new temp dir, removed afterwards)")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, code, urls, workdir, shard, executor = args.child
        print(json.dumps(child(step, Path(code), Path(urls), Path(workdir), int(shard), executor == "ray")))
        return
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="mmcurate-driver-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for rows in args.rows or [200_000, 1_000_000]:
            results[rows] = bench(rows, tmp, args.shard_size, args.before, args.ray)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    sizes = sorted(results)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"\npeak RSS {lo:,} -> {hi:,} rows ({hi / lo:.0f}x rows):")
        for key in results[lo]:
            if key[0] in SETUP or key not in results[hi]:
                continue
            a, b = results[lo][key]["peak_rss_mib"], results[hi][key]["peak_rss_mib"]
            print(f"  {key[1]:<6} {key[0]:<10} {a:7.0f} -> {b:7.0f} MiB ({b / a:.2f}x)")


if __name__ == "__main__":
    main()

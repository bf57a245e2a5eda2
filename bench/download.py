"""Download throughput: mmcurate's download stage next to plain img2dataset on the same URL list
and the same loopback server, and the ratio (goal >= 0.95).

    .venv/bin/python bench/download.py --rows 3000
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_img2dataset(urls: Path, out: Path, args) -> None:
    from img2dataset import download

    download(url_list=str(urls), input_format="parquet", url_col="url", caption_col="caption",
             output_format="parquet", output_folder=str(out), processes_count=args.processes,
             thread_count=args.threads, number_sample_per_shard=args.shard_size, timeout=args.timeout,
             resize_mode="no", disable_all_reencoding=True, enable_wandb=False,
             distributor="multiprocessing")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from pipeline.config import recipe_from_dict
    from pipeline.runner import run
    from synth import CorpusServer, NoiseRates, generate_corpus

    tmp = Path(tempfile.mkdtemp(prefix="bench_download_"))
    port = free_port()
    # Web noise on, but no deliberate delays: they would measure the server's sleep, not us.
    rates = NoiseRates().override({"slow": 0.0, "timeout": 0.0})
    generate_corpus(tmp / "corpus", n_rows=args.rows, seed=1, base_url=f"http://127.0.0.1:{port}",
                    rates=rates, n_test=10)
    urls = tmp / "corpus" / "urls.parquet"
    ours, plain = [], []
    with CorpusServer(tmp / "corpus", port=port):
        for i in range(args.repeats):
            out = tmp / f"plain{i}"
            t0 = time.perf_counter()
            plain_img2dataset(urls, out, args)
            plain.append(args.rows / (time.perf_counter() - t0))
            shutil.rmtree(out)
            wd = tmp / f"ours{i}"
            recipe = recipe_from_dict({"input": {"path": str(urls)}, "workdir": str(wd), "executor": "local",
                                       "shard_size": args.shard_size, "stages": ["download"],
                                       "download": {"processes": args.processes, "threads": args.threads,
                                                    "timeout": args.timeout, "allow_private": ["loopback"]}})
            t0 = time.perf_counter()
            run(recipe, quiet=True)  # ingest + img2dataset + per-row status conversion
            ours.append(args.rows / (time.perf_counter() - t0))
            shutil.rmtree(wd)
    shutil.rmtree(tmp)
    best_ours, best_plain = max(ours), max(plain)
    print(f"rows={args.rows} processes={args.processes} threads={args.threads} (best of {args.repeats})")
    print(f"{'':24}{'samples/s':>12}")
    print(f"{'plain img2dataset':24}{best_plain:12.1f}")
    print(f"{'mmcurate download':24}{best_ours:12.1f}")
    print(f"ratio (mmcurate / img2dataset): {best_ours / best_plain:.3f}")


if __name__ == "__main__":
    main()

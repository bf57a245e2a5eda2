"""Dedup (exact keys + near-duplicate images) at scale, through the dedup stage's own code path.

Synthesises N rows of the columns `dedup.prepare` reads (url, decode_ok, width, height, sha256,
caption_key, near_sig), then times `stages.dedup.compute_dups` (semantic off) and prints wall time,
rows/s, peak RSS (VmHWM, reset after synthesis, so it is the dedup's peak including the input
table it holds) and a 10M-row extrapolation.

Signatures are realistic rather than random: a few thousand rendered scenes (flat or gradient
backgrounds, 1-4 coloured shapes, as in the synthetic corpus) go through the real
`near_signature`; each row blends two of them with a random weight and brightness shift (a
distinct picture that still lands among close neighbours in the k-NN index), and 5% of rows are
planted copies of another row, resized and cropped by up to 6% per side (the thumbnails
resampled with the same matrices dedup aligns with, plus noise). 3% of rows repeat another row's
URL and 2% another row's image (same sha256 and signature).

    .venv/bin/python bench/dedup_scale.py --rows 100000 1000000

Each size runs in its own process so peaks do not mix.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status(field: str) -> float:
    """A /proc/self/status field in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def render_signatures(count: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    from filters.image import NEAR_SIG_BYTES, near_signature

    out = np.zeros((count, NEAR_SIG_BYTES), np.uint8)
    for i in range(count):
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        im = Image.new("RGB", (160, 120), bg)
        d = ImageDraw.Draw(im)
        if rng.random() < 0.5:  # gradient background
            for y in range(0, 120, 4):
                d.rectangle((0, y, 160, y + 4), fill=tuple(int(c * (0.6 + 0.4 * y / 120)) for c in bg))
        for _ in range(rng.integers(1, 5)):
            x, y, r = rng.integers(10, 150), rng.integers(10, 110), rng.integers(6, 40)
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)((x - r, y - r, x + r, y + r), fill=col)
        out[i] = np.frombuffer(near_signature(im), np.uint8)
    return out


def _flipped(sig: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Signatures with their luma and chroma planes flipped / transposed at random (one of the 8
    symmetries of the square each): 8x the distinct pictures to blend from."""
    from filters.image import NEAR_CHROMA_GRID, NEAR_GRID

    g2, c = NEAR_GRID * NEAR_GRID, NEAR_CHROMA_GRID
    out = sig.copy()
    luma = out[:, :g2].reshape(-1, NEAR_GRID, NEAR_GRID)
    chroma = out[:, g2 + 8:].reshape(-1, 2, c, c)
    for k in range(8):
        rows = np.flatnonzero(rng.integers(0, 8, len(sig)) == k)
        for plane in (luma, chroma):
            v = np.rot90(plane[rows], k % 4, axes=(-2, -1))
            plane[rows] = np.flip(v, -1) if k >= 4 else v
    return out


def _mosaic(parts: list[np.ndarray]) -> np.ndarray:
    """A 2x2 mosaic of four signatures (each plane halved by 2x2 block means and tiled; texture
    averaged): full-contrast pictures, 3000^4 of them, none a blend that looks like its parents."""
    from filters.image import NEAR_CHROMA_GRID, NEAR_GRID

    g2, c = NEAR_GRID * NEAR_GRID, NEAR_CHROMA_GRID
    m = len(parts[0])

    def tile(planes: list[np.ndarray], size: int) -> np.ndarray:
        half = [p.reshape(*p.shape[:-2], size // 2, 2, size // 2, 2).mean(axis=(-3, -1)) for p in planes]
        top = np.concatenate(half[:2], axis=-1)
        return np.concatenate([top, np.concatenate(half[2:], axis=-1)], axis=-2)

    from scipy.ndimage import gaussian_filter

    # The seams are blurred like the signature's own band-limiting.
    luma = gaussian_filter(tile([p[:, :g2].reshape(m, NEAR_GRID, NEAR_GRID) for p in parts], NEAR_GRID),
                           (0, 0.6, 0.6), mode="nearest")
    tex = np.mean([p[:, g2:g2 + 8] for p in parts], axis=0)
    chroma = gaussian_filter(tile([p[:, g2 + 8:].reshape(m, 2, c, c) for p in parts], c),
                             (0, 0, 0.6, 0.6), mode="nearest")
    return np.concatenate([luma.reshape(m, -1), tex, chroma.reshape(m, -1)], axis=1)


CHUNK_ROWS = 1_000_000


def synthesise_chunk(n: int, lo: int, hi: int, proto: np.ndarray, rng: np.random.Generator):
    """Rows [lo, hi) of an n-row corpus. Planted near copies and repeated images pair rows of the
    same chunk (any two of its rows, so across its shards); repeated URLs point anywhere in n."""
    import pyarrow as pa

    from filters import dedup as D
    from filters.image import NEAR_CHROMA_GRID, NEAR_GRID, NEAR_SIG_BYTES

    m_all = hi - lo
    sigs = np.empty((m_all, NEAR_SIG_BYTES), np.uint8)
    chunk = 1 << 16
    for s in range(0, m_all, chunk):
        m = min(chunk, m_all - s)
        mixed = _mosaic([_flipped(proto[rng.integers(0, len(proto), m)], rng) for _ in range(4)])
        mixed[:, :NEAR_GRID * NEAR_GRID] += rng.normal(0, 8, (m, 1)).astype(np.float32)
        sigs[s:s + m] = np.clip(np.round(mixed), 0, 255)
    width = rng.integers(200, 1200, m_all)
    height = np.round(width / rng.choice([0.75, 1.0, 1.333, 1.5], m_all)).astype(np.int64)
    # Planted near-duplicates: a crop of up to 6% per side, resized smaller.
    # Copies, their sources, exact image copies and their originals are disjoint rows, so no
    # later step overwrites what a planted pair was made from.
    n_near, n_img = m_all // 20, m_all // 50
    perm = rng.permutation(m_all)
    copy, src = perm[:n_near], perm[n_near:2 * n_near]
    dup_img, orig = perm[2 * n_near:2 * n_near + n_img], perm[2 * n_near + n_img:2 * n_near + 2 * n_img]
    _, lm = D._interp_matrices(NEAR_GRID, D.NEAR_MAX_CROP)
    _, cm = D._interp_matrices(NEAR_CHROMA_GRID, D.NEAR_MAX_CROP)
    g2 = NEAR_GRID * NEAR_GRID
    tex_end = g2 + 8
    for s in range(0, n_near, chunk):
        c, r = copy[s:s + chunk], src[s:s + chunk]
        cx, cy = rng.integers(0, len(lm), (2, len(c)))
        th = sigs[r, :g2].reshape(-1, NEAR_GRID, NEAR_GRID).astype(np.float32)
        th = lm[cy] @ th @ lm[cx].transpose(0, 2, 1) + rng.normal(0, 2, th.shape).astype(np.float32)
        ch = sigs[r, tex_end:].reshape(-1, 2, NEAR_CHROMA_GRID, NEAR_CHROMA_GRID).astype(np.float32)
        ch = cm[cy][:, None] @ ch @ cm[cx].transpose(0, 2, 1)[:, None]
        sigs[c, :g2] = np.clip(np.round(th), 0, 255).reshape(len(c), -1)
        sigs[c, g2:tex_end] = sigs[r, g2:tex_end]
        sigs[c, tex_end:] = np.clip(np.round(ch), 0, 255).reshape(len(c), -1)
        width[c] = width[r] * 3 // 4
        height[c] = height[r] * 3 // 4
    url = np.arange(lo, hi)
    sha = np.arange(lo, hi)
    dup_url = rng.choice(m_all, m_all * 3 // 100, replace=False)
    url[dup_url] = rng.integers(0, n, len(dup_url))
    sha[dup_img], sigs[dup_img] = sha[orig], sigs[orig]
    width[dup_img], height[dup_img] = width[orig], height[orig]
    offsets = np.arange(0, (m_all + 1) * NEAR_SIG_BYTES, NEAR_SIG_BYTES, dtype=np.int64)
    near_sig = pa.LargeBinaryArray.from_buffers(pa.large_binary(), m_all, [None, pa.py_buffer(offsets),
                                                                           pa.py_buffer(sigs.reshape(-1))])
    t = pa.table({
        "uid": np.arange(lo, hi, dtype=np.int64),
        "url": pa.array([f"https://img.example.com/{u:09d}.jpg" for u in url]),
        "decode_ok": np.ones(m_all, bool), "width": width, "height": height,
        "sha256": pa.array([f"{s:064x}" for s in sha]),
        "caption_key": rng.integers(0, 1 << 62, m_all),
        "near_sig": near_sig,
    })
    truth = {"copy": copy + lo, "src": src + lo, "url": url, "sha": sha}
    return t, truth


def synthesise(n: int, seed: int = 0, n_proto: int = 3000):
    """The whole corpus in memory (small n; write_corpus streams it chunk by chunk)."""
    import pyarrow as pa

    proto = render_signatures(n_proto, np.random.default_rng(seed)).astype(np.float32)
    tables, truths = [], []
    for i, lo in enumerate(range(0, n, CHUNK_ROWS)):
        t, tr = synthesise_chunk(n, lo, min(n, lo + CHUNK_ROWS), proto, np.random.default_rng([seed, i]))
        tables.append(t)
        truths.append(tr)
    truth = {k: np.concatenate([tr[k] for tr in truths]) for k in truths[0]}
    return pa.concat_tables(tables), truth


def _write_chunk(args) -> dict:
    import pyarrow.parquet as pq

    n, i, lo, hi, proto, seed, out, shard_rows = args
    t, truth = synthesise_chunk(n, lo, hi, proto, np.random.default_rng([seed, i]))
    for s in range(0, t.num_rows, shard_rows):
        pq.write_table(t.slice(s, shard_rows), os.path.join(out, f"{(lo + s) // shard_rows:05d}.parquet"),
                       compression="zstd")
    return truth


def write_corpus(n: int, out: str, shard_rows: int, seed: int = 0, jobs: int = 2) -> None:
    """Synthesise n rows chunk by chunk (`jobs` processes; 1M rows, about 1.5 GB of signatures,
    in memory each) and write them as parquet shards plus the planted truth (own process, so the
    dedup process starts clean)."""
    from multiprocessing import get_context

    if CHUNK_ROWS % shard_rows:
        raise SystemExit(f"--shard-rows must divide {CHUNK_ROWS:,}")
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    proto = render_signatures(3000, np.random.default_rng(seed)).astype(np.float32)
    tasks = [(n, i, lo, min(n, lo + CHUNK_ROWS), proto, seed, out, shard_rows)
             for i, lo in enumerate(range(0, n, CHUNK_ROWS))]
    with get_context("spawn").Pool(min(jobs, len(tasks))) as pool:
        truths = pool.map(_write_chunk, tasks, chunksize=1)
    truth = {k: np.concatenate([tr[k] for tr in truths]) for k in truths[0]}
    np.savez(os.path.join(out, "truth.npz"), **truth)
    print(f"N={n:,}: synthesised and written in {time.perf_counter() - t0:.0f}s", flush=True)


def _tree_peaks() -> tuple[list[tuple[str, float]], float]:
    """(name, VmHWM GB) of every process this one started (the local Ray: gcs, raylet, workers),
    and the CPU seconds they used, including workers that already exited (their parent reaped
    them, so they are in its children's times)."""
    import psutil

    out, cpu = [], 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            with open(f"/proc/{p.pid}/status") as f:
                hwm = next((int(line.split()[1]) / 1e6 for line in f if line.startswith("VmHWM:")), float("nan"))
            out.append((p.name()[:24], hwm))
            t = p.cpu_times()
            cpu += t.user + t.system + t.children_user + t.children_system
        except (OSError, psutil.Error):
            continue
    return out, cpu


def _truth_groups(n: int, truth) -> np.ndarray:
    """Component per row of the planted relations (copy-source, repeated URL, repeated image)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = [truth["copy"]], [truth["src"]]
    for key in (truth["url"], truth["sha"]):
        o = np.argsort(key, kind="stable")
        same = key[o][1:] == key[o][:-1]
        a.append(o[1:][same])
        b.append(o[:-1][same])
    a, b = np.concatenate(a), np.concatenate(b)
    return connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)[1]


def run_one(n: int, data: str, distributed: bool, workers: int, object_store_gb: float) -> None:
    import glob

    from filters.image import NEAR_SIG_BYTES
    from stages.dedup import REASONS, DedupConfig, FileSource, run_dedup

    source = FileSource(sorted(glob.glob(os.path.join(data, "*.parquet"))))
    mapper = None
    if distributed:
        import ray

        from pipeline.dedup_ray import RayMapper

        ray.init(num_cpus=workers, object_store_memory=int(object_store_gb * 2**30), include_dashboard=False,
                 configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(
                     os.path.dirname(os.path.abspath(__file__)))}})
        mapper = RayMapper()
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # restart VmHWM from the current RSS
        f.write("5")
    cfg = DedupConfig(semantic_threshold=None)
    _, cpu_before = _tree_peaks()
    own_before = sum(os.times()[:2])
    t1 = time.perf_counter()
    res = run_dedup(source, cfg, None, mapper)
    wall = time.perf_counter() - t1
    peak = _status("VmHWM")
    procs, cpu_after = _tree_peaks()
    # CPU seconds a row, over the driver and every Ray process: the cost figure that a loaded
    # machine does not inflate the way it inflates wall time.
    cpu = sum(os.times()[:2]) - own_before + cpu_after - cpu_before
    if distributed:
        ray.shutdown()
    truth = np.load(os.path.join(data, "truth.npz"))
    uids = np.arange(n)
    reps, _ = res.lookup(uids)
    c, s = truth["copy"], truth["src"]
    # A planted copy is caught when it and its source end in one group (either can represent).
    caught = float(np.mean(reps[c] == reps[s]))
    # 3% of rows repeat a random row's URL with another picture: a copy (or source) in such a
    # group defers to the URL group's best row, so it cannot join its source's group.
    _, url_n = np.unique(truth["url"], return_inverse=True)
    tangled = (np.bincount(url_n)[url_n][c] > 1) | (np.bincount(url_n)[url_n][s] > 1)
    clean = float(np.mean((reps[c] == reps[s])[~tangled]))
    # The outcome a user sees: the planted pair is not both kept (one of them was removed, as a
    # near copy of the other or for another duplicate key).
    kept = np.ones(n, bool)
    kept[res.uid] = False
    deduped = float(np.mean(~(kept[c] & kept[s])))
    grp = _truth_groups(n, truth)
    false = int((grp[res.uid] != grp[res.rep]).sum())
    kinds = {REASONS[k]: int(v) for k, v in zip(*np.unique(res.reason, return_counts=True))}
    worker_peaks = sorted((h for name, h in procs if name.startswith("ray::")), reverse=True)
    others = {name: round(h, 2) for name, h in procs if not name.startswith("ray::")}
    print(f"N={n:,} {'distributed, ' + str(workers) + ' workers' if distributed else 'one process'}: "
          f"dedup {wall:.1f}s ({n / wall:,.0f} rows/s; {cpu:.0f} CPU s = {1e6 * cpu / n:.0f} CPU us/row); driver RSS before {base:.2f} GB, peak {peak:.2f} GB; "
          f"worker peaks (GB) {[round(h, 2) for h in worker_peaks]}; other Ray processes {others}; "
          f"near_sig {NEAR_SIG_BYTES} B/row = {NEAR_SIG_BYTES * n / 1e9:.2f} GB; removed {len(res.uid):,} {kinds}; "
          f"planted near copies grouped with source {caught:.4f} (all {len(c):,}), {clean:.4f} "
          f"({int((~tangled).sum()):,} not in a random-URL group); planted pairs not both kept {deduped:.4f}; false merges {false} "
          f"({false / n:.4%} of rows)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--distributed", action="store_true", help="Ray tasks on a local Ray (else one process)")
    ap.add_argument("--workers", type=int, default=2, help="Ray worker CPUs (--distributed)")
    ap.add_argument("--object-store-gb", type=float, default=2.0, help="Ray object store; more spills to disk")
    ap.add_argument("--data", default="/tmp/dedup_scale", help="where the synthetic shards are written (kept)")
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2, help="processes writing the synthetic corpus")
    ap.add_argument("--exact-assign-max", type=int, help="use the two-level bucket index above this many "
                    "buckets (default: filters/dedup/buckets.py's EXACT_ASSIGN_MAX, 20,000)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--write", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.write:
        write_corpus(a.write, os.path.join(a.data, str(a.write)), a.shard_rows, jobs=a.jobs)
        return
    if a.exact_assign_max is not None:  # the driver builds the index; tasks get it with their spec
        from filters.dedup import buckets
        buckets.EXACT_ASSIGN_MAX = a.exact_assign_max
    if a.one:
        run_one(a.one, os.path.join(a.data, str(a.one)), a.distributed, a.workers, a.object_store_gb)
        return
    for n in a.rows:
        if not os.path.exists(os.path.join(a.data, str(n), "truth.npz")):
            subprocess.run([sys.executable, os.path.abspath(__file__), "--write", str(n), "--data", a.data,
                            "--shard-rows", str(a.shard_rows), "--jobs", str(a.jobs)], check=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--data", a.data,
               "--workers", str(a.workers), "--object-store-gb", str(a.object_store_gb)]
        if a.exact_assign_max is not None:
            cmd += ["--exact-assign-max", str(a.exact_assign_max)]
        subprocess.run(cmd + (["--distributed"] if a.distributed else []), check=True)


if __name__ == "__main__":
    main()

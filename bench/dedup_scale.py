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


def synthesise(n: int, seed: int = 0, n_proto: int = 3000):
    import pyarrow as pa

    from filters import dedup as D
    from filters.image import NEAR_CHROMA_GRID, NEAR_GRID, NEAR_SIG_BYTES

    rng = np.random.default_rng(seed)
    proto = render_signatures(n_proto, rng).astype(np.float32)
    sigs = np.empty((n, NEAR_SIG_BYTES), np.uint8)
    chunk = 1 << 16
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        mixed = _mosaic([_flipped(proto[rng.integers(0, len(proto), m)], rng) for _ in range(4)])
        mixed[:, :NEAR_GRID * NEAR_GRID] += rng.normal(0, 8, (m, 1)).astype(np.float32)
        sigs[s:s + m] = np.clip(np.round(mixed), 0, 255)
    width = rng.integers(200, 1200, n)
    height = np.round(width / rng.choice([0.75, 1.0, 1.333, 1.5], n)).astype(np.int64)
    # Planted near-duplicates: a crop of up to 6% per side, resized smaller.
    # Copies, their sources, exact image copies and their originals are disjoint rows, so no
    # later step overwrites what a planted pair was made from.
    n_near, n_img = n // 20, n // 50
    perm = rng.permutation(n)
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
    url = np.arange(n)
    sha = np.arange(n)
    dup_url = rng.choice(n, n * 3 // 100, replace=False)
    url[dup_url] = rng.integers(0, n, len(dup_url))
    sha[dup_img], sigs[dup_img] = sha[orig], sigs[orig]
    width[dup_img], height[dup_img] = width[orig], height[orig]
    offsets = np.arange(0, (n + 1) * NEAR_SIG_BYTES, NEAR_SIG_BYTES, dtype=np.int64)
    near_sig = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets),
                                                                       pa.py_buffer(sigs.reshape(-1))])
    t = pa.table({
        "uid": np.arange(n, dtype=np.int64),
        "url": pa.array([f"https://img.example.com/{u:09d}.jpg" for u in url]),
        "decode_ok": np.ones(n, bool), "width": width, "height": height,
        "sha256": pa.array([f"{s:064x}" for s in sha]),
        "caption_key": rng.integers(0, 1 << 62, n),
        "near_sig": near_sig,
    })
    truth = {"copy": copy, "src": src}
    return t, truth


def write_corpus(n: int, out: str, shard_rows: int) -> None:
    """Synthesise n rows and write them as parquet shards plus the planted truth (own process,
    so the dedup process starts clean)."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    t, truth = synthesise(n)
    os.makedirs(out, exist_ok=True)
    for i, s in enumerate(range(0, n, shard_rows)):
        pq.write_table(t.slice(s, shard_rows), os.path.join(out, f"{i:05d}.parquet"), compression="zstd")
    url = np.array([int(u.rsplit("/", 1)[1].split(".")[0]) for u in t.column("url").to_pylist()])
    sha = np.array([int(x, 16) for x in t.column("sha256").to_pylist()])
    np.savez(os.path.join(out, "truth.npz"), copy=truth["copy"], src=truth["src"], url=url, sha=sha)
    print(f"N={n:,}: synthesised and written in {time.perf_counter() - t0:.0f}s", flush=True)


def _tree_peaks() -> list[tuple[str, float]]:
    """(name, VmHWM GB) of every process this one started (the local Ray: gcs, raylet, workers)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            with open(f"/proc/{p.pid}/status") as f:
                hwm = next((int(line.split()[1]) / 1e6 for line in f if line.startswith("VmHWM:")), float("nan"))
            out.append((p.name()[:24], hwm))
        except (OSError, psutil.Error):
            continue
    return out


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
    t1 = time.perf_counter()
    res = run_dedup(source, cfg, None, mapper)
    wall = time.perf_counter() - t1
    peak = _status("VmHWM")
    procs = _tree_peaks() if distributed else []
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
    grp = _truth_groups(n, truth)
    false = int((grp[res.uid] != grp[res.rep]).sum())
    kinds = {REASONS[k]: int(v) for k, v in zip(*np.unique(res.reason, return_counts=True))}
    worker_peaks = sorted((h for name, h in procs if name.startswith("ray::")), reverse=True)
    others = {name: round(h, 2) for name, h in procs if not name.startswith("ray::")}
    print(f"N={n:,} {'distributed, ' + str(workers) + ' workers' if distributed else 'one process'}: "
          f"dedup {wall:.1f}s ({n / wall:,.0f} rows/s); driver RSS before {base:.2f} GB, peak {peak:.2f} GB; "
          f"worker peaks (GB) {[round(h, 2) for h in worker_peaks]}; other Ray processes {others}; "
          f"near_sig {NEAR_SIG_BYTES} B/row = {NEAR_SIG_BYTES * n / 1e9:.2f} GB; removed {len(res.uid):,} {kinds}; "
          f"planted near copies grouped with source {caught:.4f} (all {len(c):,}), {clean:.4f} "
          f"({int((~tangled).sum()):,} not in a random-URL group); false merges {false} "
          f"({false / n:.4%} of rows)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--distributed", action="store_true", help="Ray tasks on a local Ray (else one process)")
    ap.add_argument("--workers", type=int, default=2, help="Ray worker CPUs (--distributed)")
    ap.add_argument("--object-store-gb", type=float, default=2.0, help="Ray object store; more spills to disk")
    ap.add_argument("--data", default="/tmp/dedup_scale", help="where the synthetic shards are written (kept)")
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--write", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.write:
        write_corpus(a.write, os.path.join(a.data, str(a.write)), a.shard_rows)
        return
    if a.one:
        run_one(a.one, os.path.join(a.data, str(a.one)), a.distributed, a.workers, a.object_store_gb)
        return
    for n in a.rows:
        if not os.path.exists(os.path.join(a.data, str(n), "truth.npz")):
            subprocess.run([sys.executable, os.path.abspath(__file__), "--write", str(n), "--data", a.data,
                            "--shard-rows", str(a.shard_rows)], check=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--data", a.data,
               "--workers", str(a.workers), "--object-store-gb", str(a.object_store_gb)]
        subprocess.run(cmd + (["--distributed"] if a.distributed else []), check=True)


if __name__ == "__main__":
    main()

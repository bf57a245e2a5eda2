"""ITC/ITM gathers across workers whose batches differ in size (corrupt samples dropped) and in
sequence length (the tokenizer pads to each worker's longest caption), as real captions do.

The gathers run in two real gloo processes on loopback; the end-to-end test trains through Ray
Train with two workers and compares with one process training on the same global batches.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import tarfile
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from albef_helpers import COLORS, POS, tiny_overrides, toy_sample
from tests.conftest import _free_port

# (rows, sequence length, hidden) on each of the two workers: rank 1 has more and longer rows.
SHAPES = [(2, 3, 4), (3, 5, 4)]
PAD_ID = 7


def _inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, length, hidden = SHAPES[rank]
    x = torch.arange(n * length * hidden, dtype=torch.float32).reshape(n, length, hidden) + 100 * rank
    ids = torch.arange(n * length).reshape(n, length) + 1000 * rank
    return x, ids


def _weights() -> torch.Tensor:
    rows = sum(s[0] for s in SHAPES)
    return torch.linspace(-1, 1, rows * max(s[1] for s in SHAPES) * SHAPES[0][2]).reshape(rows, -1, SHAPES[0][2])


def _gather_worker(rank: int, port: int, out: str) -> None:
    try:
        import torch.distributed as dist

        from models.albef.distributed import gather_no_grad, gather_with_grad
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=len(SHAPES), timeout=timedelta(seconds=30))
        x, ids = _inputs(rank)
        x.requires_grad_(True)
        y = gather_with_grad(x)
        # Each worker's loss weighs the gathered rows differently; x's gradient is their sum.
        (y * _weights() * (rank + 1)).sum().backward()
        gathered_ids = gather_no_grad(ids, pad=PAD_ID)
        from models.albef.distributed import batch_sizes
        torch.save({"y": y.detach(), "grad": x.grad, "ids": gathered_ids,
                    "sizes": batch_sizes(x.shape[0])}, Path(out) / f"{rank}.pt")
        dist.destroy_process_group()
    except BaseException:
        (Path(out) / f"{rank}.err").write_text(traceback.format_exc())
        raise


def _spawn(target, args_of, timeout: float, out: Path) -> None:
    """Run target(rank, *args_of(rank)) in one spawned process per worker; a hang or an error in
    any fails the test with that worker's traceback."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, *args_of(r))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    errors = "\n".join(f.read_text() for f in sorted(out.glob("*.err")))
    assert not hung, f"{len(hung)} worker(s) hung in a collective\n{errors}"
    assert all(p.exitcode == 0 for p in procs), errors or [p.exitcode for p in procs]


def test_gathers_with_unequal_rows_and_lengths(tmp_path):
    port = _free_port()
    _spawn(_gather_worker, lambda r: (port, str(tmp_path)), 90, tmp_path)
    got = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    longest = max(s[1] for s in SHAPES)
    xs = [_inputs(r)[0] for r in range(2)]
    ids = [_inputs(r)[1] for r in range(2)]
    want_y = torch.cat([torch.nn.functional.pad(x, (0, 0, 0, longest - x.shape[1])) for x in xs])
    want_ids = torch.cat([torch.nn.functional.pad(i, (0, longest - i.shape[1]), value=PAD_ID) for i in ids])
    w = _weights() * (1 + 2)  # the two workers' loss weights, summed
    start = 0
    for r, g in enumerate(got):
        assert g["sizes"] == [2, 3]
        assert torch.equal(g["y"], want_y)
        assert torch.equal(g["ids"], want_ids)
        n, length, _ = SHAPES[r]
        assert g["grad"].shape == xs[r].shape
        assert torch.allclose(g["grad"], w[start:start + n, :length])
        start += n


# ---- end to end: Ray Train on real-length captions ---------------------------------------------

FILLER = ["seen", "from", "far", "away", "in", "a", "small", "photo", "with", "soft", "light",
          "and", "grey", "wall", "behind", "it"]
N, SEED, PER_RANK = 48, 0, 4


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _layout() -> tuple[list[int], set[int]]:
    """For each sample, the worker that trains on it in the first steps (-1 for later ones), and
    the samples made corrupt: one in rank 0's half of the first global batch, so the two
    workers hold 3 and 4 samples there."""
    from models.albef.data import EpochSampler
    owner = [-1] * N
    batches = [list(EpochSampler(N, PER_RANK, r, 2, seed=SEED)) for r in range(2)]
    for r, rank_batches in enumerate(batches):
        for batch in rank_batches:
            for _, j in batch:
                owner[j] = r
    return owner, {batches[0][0][0][1]}


def _write_shards(out: Path) -> tuple[list[str], set[int], list[int]]:
    rng = torch.Generator().manual_seed(3)
    owner, corrupt = _layout()
    captions = []
    out.mkdir()
    with tarfile.open(out / "00000.tar", "w") as tf:
        for i in range(N):
            color = list(COLORS)[i % 4]
            pos = list(POS)[(i // 4) % 4]
            # Rank 1 trains on long captions of varying length, rank 0 on short ones.
            extra = int(torch.randint(6, 14, (1,), generator=rng)) if owner[i] == 1 else \
                int(torch.randint(0, 3, (1,), generator=rng))
            cap = " ".join([f"a {color} square on the {pos}", *FILLER[:extra]])
            captions.append(cap)
            buf = io.BytesIO()
            toy_sample(color, pos).save(buf, format="JPEG", quality=90)
            _add(tf, f"{i:08d}.jpg", b"not a jpeg" if i in corrupt else buf.getvalue())
            _add(tf, f"{i:08d}.txt", cap.encode())
    return captions, corrupt, owner


@pytest.mark.slow
def test_ray_train_on_unequal_captions_and_batches_matches_single_process(tmp_path):
    ray = pytest.importorskip("ray")
    from models.albef.config import load_config
    from models.albef.tokenizer import TextTokenizer
    from models.albef.train import train

    captions, corrupt, owner = _write_shards(tmp_path / "shards")
    TextTokenizer.train(captions * 3, vocab_size=200, min_frequency=1).save(tmp_path / "tok")
    tok = TextTokenizer.load(tmp_path / "tok")
    # The premise: in the first global batch the workers' padded lengths and sizes differ.
    from models.albef.data import EpochSampler
    first = [[j for _, j in next(iter(EpochSampler(N, PER_RANK, r, 2, seed=SEED)))] for r in range(2)]
    lengths = [tok([captions[j] for j in b if j not in corrupt], 32)[0].shape[1] for b in first]
    sizes = [sum(j not in corrupt for j in b) for b in first]
    assert lengths[0] < lengths[1] and sizes == [3, 4], (lengths, sizes)

    def cfg(batch: int):
        return load_config("tiny", tiny_overrides(**{"text.tokenizer": str(tmp_path / "tok"),
                                                     "text.max_len": 32, "train.batch_size": batch,
                                                     "train.seed": SEED}))

    single = train(cfg(2 * PER_RANK), tmp_path / "shards", tmp_path / "single", steps=3, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        multi = train(cfg(PER_RANK), tmp_path / "shards", tmp_path / "multi", steps=3,
                      num_workers=2, progress=False)
    finally:
        ray.shutdown()
    print("single", single["losses"], single["last"], "\nmulti ", multi["losses"], multi["last"])
    assert multi["step"] == single["step"] == 3
    assert multi["bad_samples"] + single["bad_samples"] > 0
    assert multi["losses"] == pytest.approx(single["losses"], rel=0.02)
    assert multi["last"]["itc"] == pytest.approx(single["last"]["itc"], rel=0.005)
    assert multi["last"]["mlm"] == pytest.approx(single["last"]["mlm"], rel=0.05)

"""Cross-worker gathers for ITC and ITM (ALBEF/BLIP gather features and embeddings across GPUs).

Workers may hold different batch sizes (a batch that lost corrupt samples) and different
sequence lengths (the tokenizer pads to the longest caption on each worker), while
`all_gather` needs equal shapes everywhere (NCCL hangs or errors otherwise). So each gather
first exchanges shapes, pads to the largest, gathers, and keeps each worker's own rows: the
result has sum(batch sizes) rows, and dims after the first are padded to the largest worker's
with `pad` (the padding carries no gradient).

Every function is a no-op returning its input when torch.distributed is not initialised, so the
same model code runs single-process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shapes(t: torch.Tensor, size: int) -> list[tuple[int, ...]]:
    mine = torch.tensor(t.shape, dtype=torch.long, device=t.device)
    every = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(every, mine)
    return [tuple(int(x) for x in s) for s in every]


def pad_to(t: torch.Tensor, shape: tuple[int, ...], value: float = 0) -> torch.Tensor:
    """Pad `t` at the end of every dim up to `shape` (no copy when it already has that shape)."""
    if tuple(t.shape) == tuple(shape):
        return t
    widths: list[int] = []
    for have, want in zip(reversed(t.shape), reversed(shape)):
        widths += [0, want - have]
    return F.pad(t, widths, value=value)


def _gather(t: torch.Tensor, size: int, pad: float) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    shapes = _shapes(t, size)
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"workers gather tensors of different ranks: {shapes}")
    big = tuple(max(s[d] for s in shapes) for d in range(t.dim()))
    out = [torch.empty(big, dtype=t.dtype, device=t.device) for _ in range(size)]
    dist.all_gather(out, pad_to(t, big, pad).contiguous())
    return torch.cat([o[:s[0]] for o, s in zip(out, shapes)], dim=0), shapes


def batch_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every worker's batch size, in rank order ([n] when not distributed)."""
    rank, size = world()
    if size == 1:
        return [n]
    return [s[0] for s in _shapes(torch.empty((n, 0), device=device), size)]


@torch.no_grad()
def gather_no_grad(t: torch.Tensor, pad: float = 0) -> torch.Tensor:
    """Concatenate `t` from every worker along dim 0 (no gradient); other dims padded with `pad`
    to the largest worker's."""
    rank, size = world()
    if size == 1:
        return t
    return _gather(t, size, pad)[0]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, size = world()
        out, shapes = _gather(t, size, 0)
        ctx.start = sum(s[0] for s in shapes[:rank])
        ctx.shape = tuple(t.shape)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every worker's loss touched our rows; sum their gradients (DDP later averages). All
        # workers hold the same padded shape here, so the reduction needs no exchange of sizes.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        mine = grad[ctx.start:ctx.start + ctx.shape[0]]
        return mine[(slice(None),) + tuple(slice(0, n) for n in ctx.shape[1:])]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every worker along dim 0, letting gradients flow back to each; other
    dims padded with zeros to the largest worker's."""
    if world()[1] == 1:
        return t
    return _GatherWithGrad.apply(t)

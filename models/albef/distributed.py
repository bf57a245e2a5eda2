"""Cross-worker gathers for ITC and ITM (ALBEF/BLIP gather features and embeddings across GPUs).

Every function is a no-op returning its input when torch.distributed is not initialised, so the
same model code runs single-process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every worker along dim 0 (no gradient)."""
    rank, size = world()
    if size == 1:
        return t
    out = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, size = world()
        out = [torch.empty_like(t) for _ in range(size)]
        dist.all_gather(out, t.contiguous())
        ctx.rank, ctx.n = rank, t.shape[0]
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every worker's loss touched our slice; sum their gradients (DDP later averages).
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every worker along dim 0, letting gradients flow back to each."""
    if world()[1] == 1:
        return t
    return _GatherWithGrad.apply(t)

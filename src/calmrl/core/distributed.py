"""``torch.distributed`` helpers (no-ops on a single process).

* :func:`gather_with_grad` -- all-gather a batch tensor along dim 0 so that contrastive
  terms see the global batch; the local slice keeps its autograd graph, the other ranks'
  slices are constants. If every rank computes the same global loss ``L`` and
  back-propagates ``world_size * L`` (see :func:`global_loss_scale`), DDP's gradient
  average equals the gradient of ``L`` on one process holding the global batch.
* :func:`all_reduce_stats` -- sums the calibrator's sufficient statistics over processes in
  one ``all_reduce`` so that the M-step equals the one on the global data.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .calibrator import SufficientStats

__all__ = ["is_distributed", "world_size", "rank", "gather_with_grad", "gather_nograd", "all_reduce_stats",
           "global_loss_scale"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather_nograd(x: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors from all ranks along dim 0 (no gradient)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_with_grad(x: Tensor) -> Tensor:
    """Like :func:`gather_nograd`, with the local slice differentiable (rank order kept)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts)


def global_loss_scale() -> int:
    """Factor to multiply a loss computed on the gathered global batch before ``backward``."""
    return world_size()


def all_reduce_stats(stats: SufficientStats) -> SufficientStats:
    """Sum statistics over all ranks (exact: the statistics are additive)."""
    if not is_distributed():
        return stats
    flat = stats.flatten().clone()
    dist.all_reduce(flat)
    return stats.unflatten_like(flat)

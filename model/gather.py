r"""Contrastive negatives across DDP ranks: gather every rank's latents and sentence embeddings.

Under DistributedDataParallel each rank holds B/K of the global batch B. Computed on its own rows only, the
contrastive losses of ``model/losses.py`` would see B/K - 1 negatives per positive and negative filtering would
never compare texts of different ranks. :class:`BatchGather` gathers the rows of every rank (in rank order: rank
0's rows first, then rank 1's, ...), so every rank computes the loss on the same (B, B) similarity matrix as one
process with the whole batch.

Gradients (the same idea as open_clip's ``gather_features`` without ``gather_with_grad``; our own code):
``torch.distributed.all_gather`` returns detached copies, so the gathered matrix has the rank's own rows put
back in their slot as the live tensor; the gradient reaches only the local rows. Every rank computes the same
loss ``L`` of the global batch, so rank r's backward gives ``J_r^T dL/dz_r`` (z_r: its rows, J_r: their
Jacobian), and the global-batch gradient is the *sum* over ranks of these. DDP averages gradients over the K
ranks, so the backward of the local slot multiplies its gradient by K: DDP's mean is then exactly the gradient
of one process with batch B (tests/test_gather.py checks loss and gradients for every negative-filtering mode).
Terms that stay per rank (the reconstruction loss: a mean over the rank's rows) are untouched: DDP's mean of
per-rank means with equal batch sizes is the global mean.
Ranks with different batch sizes are handled (rows are padded to the largest for the collective and trimmed).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 (variable row counts); backward: the local slot's gradient times ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: Sequence[int], rank: int, scale: float) -> torch.Tensor:  # noqa: D102
        n_max = max(sizes)
        pad = x.new_zeros((n_max - x.shape[0], *x.shape[1:]))
        local = torch.cat([x, pad]) if pad.shape[0] else x.contiguous()
        parts = [torch.empty_like(local) for _ in sizes]
        dist.all_gather(parts, local)
        parts = [p[:n] for p, n in zip(parts, sizes)]
        parts[rank] = x  # bit-identical to the gathered copy; kept for clarity
        ctx.offset, ctx.n, ctx.scale = sum(sizes[:rank]), x.shape[0], scale
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        g = grad[ctx.offset:ctx.offset + ctx.n]
        return (g * ctx.scale if ctx.scale != 1.0 else g), None, None, None


class BatchGather:
    """Gathers per-rank (n_r, ...) tensors into the global (sum n_r, ...) in rank order; the identity without a
    process group of more than one rank. Construction is collective (the row counts); then call it on each tensor
    in the same order on every rank: ``grad=True`` (latents) differentiable in the local rows, their gradient
    times ``world_size`` unless ``scale_grad=False``; ``grad=False`` (sentence embeddings) detached; ``None``
    passes through.
    """

    def __init__(self, n_local: int, device: torch.device | None = None, scale_grad: bool = True):
        self.rank, self.world_size = distributed_world()
        self.sizes = [int(n_local)]
        self.scale = float(self.world_size) if scale_grad else 1.0
        if self.enabled:
            t = torch.tensor([int(n_local)], dtype=torch.int64, device=device)
            out = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(out, t)
            self.sizes = torch.cat(out).tolist()  # one device-to-host copy, not one per rank

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def total(self) -> int:
        """Rows of the global batch."""
        return sum(self.sizes)

    def __call__(self, x: torch.Tensor | None, grad: bool = True) -> torch.Tensor | None:
        """(n_local, ...) -> (total, ...) float32 (float32 so the collective is the same on every backend)."""
        if x is None or not self.enabled:
            return x
        if x.shape[0] != self.sizes[self.rank]:
            raise ValueError(f"BatchGather was set up for {self.sizes[self.rank]} local rows, got {x.shape[0]}")
        x = x.float()
        if not grad:
            with torch.no_grad():
                return _GatherRows.apply(x.detach(), self.sizes, self.rank, 1.0)
        return _GatherRows.apply(x, self.sizes, self.rank, self.scale)


def batch_gather(enabled: bool, n_local: int, device: torch.device | None = None) -> BatchGather | None:
    """A :class:`BatchGather` when ``enabled`` and a process group of more than one rank is initialised, else
    ``None`` (the caller computes the losses on its own rows)."""
    if not enabled or distributed_world()[1] <= 1:
        return None
    return BatchGather(n_local, device)

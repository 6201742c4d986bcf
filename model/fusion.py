"""Motion-as-query fusion over the modality latents."""

from __future__ import annotations

import math

import torch
from torch import nn


class MotionQueryFusion(nn.Module):
    """Single-head attention across modalities with the motion latent as the query.

    For latents z_k (B, C) of K modalities (text, video, motion; or text, motion in the 2-modal variant) and the
    motion latent m::

        q = W_q m,  k_k = W_k z_k,  v_k = W_v z_k
        a_k = softmax_k(q . k_k / sqrt(C))          # (B, K), sums to 1 per sample
        fused = W_o sum_k a_k v_k                    # (B, C)

    ``forward(motion, latents)`` returns ``(fused (B, C), weights (B, K))`` in the order of ``latents``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, motion: torch.Tensor, latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.stack(latents, dim=1)  # (B, K, C)
        q = self.q(motion)[:, None, :]  # (B, 1, C)
        scores = (q * self.k(z)).sum(-1) * self.scale  # (B, K)
        weights = scores.softmax(dim=-1)
        fused = self.out((weights[..., None] * self.v(z)).sum(dim=1))
        return fused, weights

"""Motion encoder: a transformer over normalised HumanML3D features, pooled by a learned token."""

from __future__ import annotations

import torch
from torch import nn

from .config import LavimoConfig
from .layers import PooledTransformer


class MotionEncoder(nn.Module):
    """``forward(motion (B, T, feature_dim), mask (B, T) bool True = valid) -> (B, C)``: features (HumanML3D
    263-dim at 20 fps, Y-up, normalised with the shards' mean/std) embedded to C, a :class:`PooledTransformer` of
    ``cfg.motion_layers`` layers (padded frames never influence it) and a linear map.
    """

    def __init__(self, cfg: LavimoConfig):
        super().__init__()
        self.feature_dim = int(cfg.feature_dim)
        c = cfg.latent_dim
        self.proj_in = nn.Linear(self.feature_dim, c)
        self.temporal = PooledTransformer(c, cfg.motion_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout,
                                          cfg.activation, max_len=cfg.max_motion_len)
        self.head = nn.Linear(c, c)

    def forward(self, motion: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if motion.ndim != 3 or motion.shape[-1] != self.feature_dim:
            raise ValueError(f"motion must be (B, T, {self.feature_dim}); got {tuple(motion.shape)}")
        if mask is not None and not bool(mask.any(dim=1).all()):
            raise ValueError("every motion needs at least one valid frame (mask row all False)")
        x = self.proj_in(motion.to(self.proj_in.weight.dtype))
        return self.head(self.temporal(x, mask))

"""Motion decoder: reconstructs the motion features from one latent (the fused one, or the motion latent)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LavimoConfig
from .layers import sinusoidal_positions


class MotionDecoder(nn.Module):
    """``forward(latent (B, C), mask (B, T) bool True = valid) -> (B, T, feature_dim)``, ACTOR/TMR-style: T
    sinusoidal frame positions as queries, the latent as one memory token, ``cfg.decoder_layers`` pre-LN decoder
    layers and a linear map. Rows at padded frames are meaningless (the loss masks them).
    """

    def __init__(self, cfg: LavimoConfig):
        super().__init__()
        c = cfg.latent_dim
        self.max_len = int(cfg.max_motion_len)
        self.register_buffer("positions", sinusoidal_positions(self.max_len, c), persistent=False)
        layer = nn.TransformerDecoderLayer(c, cfg.num_heads, cfg.ff_dim, cfg.dropout, activation=cfg.activation,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers, norm=nn.LayerNorm(c))
        self.out = nn.Linear(c, int(cfg.feature_dim))

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t = mask.shape
        if t > self.max_len:
            raise ValueError(f"motion length {t} exceeds max_motion_len {self.max_len}")
        queries = self.positions[:t].to(latent.dtype)[None].expand(b, -1, -1)
        memory = latent[:, None, :]
        x = self.decoder(queries, memory, tgt_key_padding_mask=~mask.bool())
        return self.out(x)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta 1) of ``pred`` / ``target`` (B, T, D) averaged over the valid frames' values, ``mask``
    (B, T) bool True = valid: sum over valid (t, d) / (n_valid * D), a scalar."""
    per = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)  # (B, T, D)
    m = mask.to(per.dtype)[..., None]
    denom = (m.sum() * per.shape[-1]).clamp_min(1.0)
    return (per * m).sum() / denom

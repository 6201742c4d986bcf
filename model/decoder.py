"""Motion decoder: reconstructs the motion features from one latent (the fused one, or the motion latent)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LavimoConfig
from .layers import sinusoidal_positions


class MotionDecoder(nn.Module):
    """``forward(latent (B, C), mask (B, T) bool True = valid) -> (B, T, feature_dim)``.

    ACTOR/TMR-style: the queries are sinusoidal frame positions (T of them), the memory is the latent as one
    token; ``cfg.decoder_layers`` pre-LN transformer decoder layers (self-attention with the padding mask,
    cross-attention to the latent) and a linear map to the feature dimension give one feature row per frame.
    Output rows at padded frames are computed but meaningless (the loss masks them).
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
    """Smooth-L1 (beta 1) averaged over the valid frames' feature values: sum over valid (t, d) / (n_valid * D).

    ``pred``, ``target`` (B, T, D); ``mask`` (B, T) bool True = valid. Returns a scalar.
    """
    per = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)  # (B, T, D)
    m = mask.to(per.dtype)[..., None]
    denom = (m.sum() * per.shape[-1]).clamp_min(1.0)
    return (per * m).sum() / denom

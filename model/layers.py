"""Building blocks shared by the encoders and the decoder: sinusoidal positions and a pooled transformer."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) float32 sine/cosine position table (Vaswani et al.); ``dim`` even or odd."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table


def transformer_encoder(dim: int, layers: int, heads: int, ff_dim: int, dropout: float,
                        activation: str) -> nn.TransformerEncoder:
    """A pre-LayerNorm, batch-first ``nn.TransformerEncoder`` (nested-tensor fast path off, so masked and
    unmasked runs give the same numbers)."""
    layer = nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, activation=activation, batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class PooledTransformer(nn.Module):
    """Temporal transformer pooled by a learned summary token: ``x`` (B, L, dim), ``L <= max_len``, ``mask``
    (B, L) bool True = valid or ``None`` -> (B, dim). The token is prepended, sinusoidal positions added (token =
    position 0), a pre-LN encoder runs with the key padding mask; the token's output is the pooled vector.
    """

    def __init__(self, dim: int, layers: int, heads: int, ff_dim: int, dropout: float, activation: str,
                 max_len: int):
        super().__init__()
        self.max_len = int(max_len)
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.register_buffer("positions", sinusoidal_positions(self.max_len + 1, dim), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.encoder = transformer_encoder(dim, layers, heads, ff_dim, dropout, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, length, _ = x.shape
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds this encoder's max_len {self.max_len}")
        x = torch.cat([self.token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = self.dropout(x + self.positions[: length + 1].to(x.dtype))
        pad = None
        if mask is not None:
            if mask.shape != (b, length):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match sequence {(b, length)}")
            valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask.bool()], dim=1)
            pad = ~valid
        return self.encoder(x, src_key_padding_mask=pad)[:, 0]


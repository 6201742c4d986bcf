"""Text encoder: a Hugging Face encoder (DistilBERT in the paper) + a temporal transformer over its token
embeddings, pooled by a learned token to the latent (B, C)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .config import LavimoConfig
from .layers import PooledTransformer


class TextEncoder(nn.Module):
    """``forward(texts: list[str]) -> (B, C)``.

    The backbone's last hidden states (B, L, H) are projected to C, get sinusoidal positions and run through
    ``cfg.text_layers`` transformer layers with the tokenizer's padding mask; the learned token's output, after a
    linear map, is the latent. With ``freeze`` the backbone runs without gradients and stays in eval mode
    (``--freeze-text`` ablation).
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, cfg: LavimoConfig, freeze: bool = False):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        max_pos = int(getattr(backbone.config, "max_position_embeddings", cfg.text_max_length) or cfg.text_max_length)
        self.max_length = min(int(cfg.text_max_length), max_pos)
        hidden = int(backbone.config.hidden_size)
        c = cfg.latent_dim
        self.proj_in = nn.Linear(hidden, c)
        self.temporal = PooledTransformer(c, cfg.text_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout,
                                          cfg.activation, max_len=self.max_length)
        self.head = nn.Linear(c, c)
        self.frozen = bool(freeze)
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        # DistilBERT does not take token_type_ids; pass only what every encoder accepts.
        self._keys = ("input_ids", "attention_mask")

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def tokenize(self, texts: Sequence[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, (B, L) each, padded to the longest text, truncated to max_length."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text expects a list of strings")
        if len(texts) == 0:
            raise ValueError("encode_text got an empty list")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {k: enc[k].to(device) if device is not None else enc[k] for k in self._keys}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.proj_in.weight.device
        enc = self.tokenize(texts, device)
        if self.frozen:
            with torch.no_grad():
                hidden = self.backbone(**enc).last_hidden_state
        else:
            hidden = self.backbone(**enc).last_hidden_state
        x = self.proj_in(hidden.to(self.proj_in.weight.dtype))
        return self.head(self.temporal(x, enc["attention_mask"].bool()))

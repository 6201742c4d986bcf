"""Text encoder: a Hugging Face encoder (DistilBERT in the paper) + a temporal transformer over its token
embeddings, pooled by a learned token to the latent (B, C)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .config import LavimoConfig
from .layers import PooledTransformer


class TextEncoder(nn.Module):
    """``forward(texts: list[str]) -> (B, C)``: the backbone's last hidden states (B, L, H) projected to C through
    a :class:`PooledTransformer` of ``cfg.text_layers`` layers (the tokenizer's padding mask) and a linear map.
    With ``freeze`` (``--freeze-text``) the backbone runs without gradients in eval mode and its hidden states are
    memoised per text (:meth:`frozen_hidden`): each caption goes through it once.
    """

    #: texts whose frozen hidden states are kept (about 25 kB each for a 384-wide backbone and 16 tokens)
    cache_capacity = 65536

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
        self._cache: dict[str, torch.Tensor] = {}  # text -> (L_text, H) hidden states of the frozen backbone
        # loading weights (a checkpoint, a resume) may change the backbone: forget what it computed before
        self.register_load_state_dict_post_hook(lambda module, _keys: module.clear_cache())

    def clear_cache(self) -> None:
        """Forget the memoised hidden states of the frozen backbone."""
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): cached tensors follow on next use
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def tokenize(self, texts: Sequence[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, (B, L) each, padded to the longest text, truncated to max_length."""
        _check_texts(texts)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {k: enc[k].to(device) if device is not None else enc[k] for k in self._keys}

    @torch.no_grad()
    def frozen_hidden(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen backbone's last hidden states (B, L, H) and padding mask (B, L) bool (True = token),
        padded to the longest text; texts seen before are not run again (the output of a text does not depend
        on the others in its batch, up to float rounding)."""
        device = self.proj_in.weight.device
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh: dict[str, torch.Tensor] = {}
        if todo:
            enc = self.tokenize(todo, device)
            hidden = self.backbone(**enc).last_hidden_state
            for t, h, n in zip(todo, hidden, enc["attention_mask"].sum(dim=1).tolist()):
                fresh[t] = h[:n].clone()
            if len(self._cache) + len(fresh) <= self.cache_capacity:
                self._cache.update(fresh)
        rows = [fresh[t] if t in fresh else self._cache[t] for t in texts]
        lengths = torch.tensor([len(r) for r in rows], device=device)
        out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mask = torch.arange(out.shape[1], device=device)[None, :] < lengths[:, None]
        return out, mask

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if self.frozen:
            _check_texts(texts)
            hidden, mask = self.frozen_hidden(texts)
        else:
            enc = self.tokenize(texts, self.proj_in.weight.device)
            hidden, mask = self.backbone(**enc).last_hidden_state, enc["attention_mask"].bool()
        x = self.proj_in(hidden.to(self.proj_in.weight.dtype))
        return self.head(self.temporal(x, mask))


def _check_texts(texts: Sequence[str]) -> None:
    """``encode_text`` takes a non-empty list of strings."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("encode_text expects a list of strings")
    if len(texts) == 0:
        raise ValueError("encode_text got an empty list")

r"""Symmetric contrastive losses with four ways of handling false negatives.

For latents x, y (B, C) of two modalities where row i of x and row i of y come from the same clip, and the
sentence embeddings s (B, D) of the batch's texts:

* logits ``L_ij = <x_i/|x_i|, y_j/|y_j|> / tau``  (cosine similarity over the temperature tau);
* text similarity ``c_ij = <s_i/|s_i|, s_j/|s_j|>`` and TMR's score ``sigma_ij = (c_ij + 1) / 2`` in [0, 1];
* ``p^row_i = softmax_j L_ij`` (x -> y) and ``p^col_j = softmax_i L_ij`` (y -> x).

Every mode is the average of the x->y and y->x directions, each averaged over the batch:

``none``   (plain InfoNCE)::

    loss = 1/2 [ 1/B sum_i -log p^row_i(i) + 1/B sum_j -log p^col_j(j) ]

``tmr``    (TMR's filtering, Petrovich et al. 2023): off-diagonal pairs whose texts score above the threshold
eps are removed from the negatives by setting their logits to -inf, then ``none`` on the masked logits::

    L'_ij = -inf if (i != j and sigma_ij > eps) else L_ij

``soft``   (soft labels from the text similarities): targets ``Q_ij = softmax_j(c_ij / tau)`` (the same tau
as the logits; Q is symmetric in the sense that the y->x targets of column j are Q_j.), and the loss is the KL
divergence from the targets to the predictions::

    loss = 1/2 [ 1/B sum_i KL(Q_i. || p^row_i) + 1/B sum_j KL(Q_j. || p^col_j) ]
    KL(q || p) = sum_k q_k (log q_k - log p_k)   (0 log 0 = 0)

``lavimo`` (LAVIMO, default): texts above eps count as positives. The positive mask
``P_ij = 1 if (i == j or sigma_ij > eps) else 0`` is row-normalised, ``Q_ij = P_ij / sum_k P_ik``, and the loss
is the same symmetric KL as ``soft`` with this Q. P is symmetric, so the y->x targets of column j are Q_j.
Without near-duplicates Q is the identity and ``lavimo`` equals ``none`` (KL to a one-hot = cross-entropy).

``tmr``, ``soft`` and ``lavimo`` need ``sent_emb``; the threshold is unused by ``soft``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("lavimo", "tmr", "soft", "none")


def similarity_logits(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, B) cosine similarities of the rows of x and y divided by ``temperature``."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature


def text_similarity(sent_emb: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine similarity of the sentence embeddings (re-normalised, float32)."""
    s = F.normalize(sent_emb.float(), dim=-1)
    return s @ s.T


def positive_mask(sent_emb: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, B) bool: the diagonal, and pairs with TMR score (cos + 1) / 2 > ``threshold``."""
    score = (text_similarity(sent_emb) + 1.0) / 2.0
    eye = torch.eye(score.shape[0], dtype=torch.bool, device=score.device)
    return (score > threshold) | eye


def _symmetric_ce(logits: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _kl_rows(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """1/B sum_i KL(targets_i || softmax(logits_i))."""
    logp = F.log_softmax(logits, dim=-1)
    kl = torch.xlogy(targets, targets) - targets * logp
    return kl.sum(dim=-1).mean()


def _symmetric_kl(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    # targets are symmetric-structured (row i of Q is also the y->x target of column i)
    return 0.5 * (_kl_rows(targets, logits) + _kl_rows(targets, logits.T))


def contrastive_loss(x: torch.Tensor, y: torch.Tensor, sent_emb: torch.Tensor | None = None, mode: str = "lavimo",
                     threshold: float = 0.8, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric contrastive loss (scalar) between paired latents ``x`` and ``y`` (B, C), ``mode`` as in the module
    docstring; ``sent_emb`` (B, D) of the rows' texts (except for ``none``), ``threshold`` eps, ``temperature`` tau.
    """
    if mode not in MODES:
        raise ValueError(f"unknown negative-filtering mode {mode!r}; choose one of {MODES}")
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be (B, C); got {tuple(x.shape)} and {tuple(y.shape)}")
    logits = similarity_logits(x.float(), y.float(), temperature)
    if mode == "none":
        return _symmetric_ce(logits)
    if sent_emb is None:
        raise ValueError(f"mode {mode!r} needs sent_emb (the batch's sentence embeddings)")
    if sent_emb.shape[0] != x.shape[0]:
        raise ValueError(f"sent_emb has {sent_emb.shape[0]} rows for a batch of {x.shape[0]}")
    sent_emb = sent_emb.to(logits.device)
    if mode == "tmr":
        pos = positive_mask(sent_emb, threshold)
        eye = torch.eye(pos.shape[0], dtype=torch.bool, device=pos.device)
        return _symmetric_ce(logits.masked_fill(pos & ~eye, float("-inf")))
    if mode == "soft":
        targets = F.softmax(text_similarity(sent_emb) / temperature, dim=-1)
        return _symmetric_kl(targets, logits)
    pos = positive_mask(sent_emb, threshold).to(logits.dtype)
    targets = pos / pos.sum(dim=-1, keepdim=True)
    return _symmetric_kl(targets, logits)

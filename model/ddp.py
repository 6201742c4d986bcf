"""Which trainable parameters a training step never reaches (DistributedDataParallel's
``find_unused_parameters`` is needed only when there are some).

DDP all-reduces gradients bucket by bucket as they become ready; a trainable parameter that the loss never
reaches never becomes ready, and without ``find_unused_parameters=True`` its bucket is never reduced (the ranks'
gradients silently stay different) and the next step fails. ``find_unused_parameters=True`` costs a traversal
of the autograd graph every step, so train.py turns it on only when :func:`unused_parameter_names` is not empty.

The answer comes from the model's structure, not from a trial step: ``LavimoModel.compute_losses`` reaches every
parameter of the encoders, the fusion and the decoder it builds (``modalities``, ``fusion`` and ``recon_weight``
decide which exist at all, see ``LavimoModel.__init__``), and of the Hugging Face text backbone it uses only
``last_hidden_state``: a backbone with a pooling head (BERT, MiniLM: ``backbone.pooler``) leaves that head
unused unless the backbone is frozen. DistilBERT (the paper's text model) has no pooler, so the paper preset
needs no ``find_unused_parameters``. tests/test_ddp_params.py checks this list against the parameters without a
gradient after a real backward, for every configuration switch.
"""

from __future__ import annotations

from torch import nn


def unused_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the trainable parameters that
    ``model.compute_losses`` never reaches: today the text backbone's pooling head, when it has one."""
    text = getattr(model, "text", None)
    pooler = getattr(getattr(text, "backbone", None), "pooler", None)
    if not isinstance(pooler, nn.Module):
        return []
    ids = {id(p) for p in pooler.parameters() if p.requires_grad}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def needs_find_unused_parameters(model: nn.Module) -> bool:
    """True when DDP must be built with ``find_unused_parameters=True`` for ``model`` (a LavimoModel)."""
    return bool(unused_parameter_names(model))

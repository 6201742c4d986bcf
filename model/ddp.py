"""Which trainable parameters a training step never reaches: DDP needs ``find_unused_parameters=True`` (a graph
traversal every step) only when there are some, else their buckets are never reduced and the next step fails.

From the model's structure, not a trial step: ``LavimoModel.compute_losses`` reaches every parameter it builds,
but of the text backbone only ``last_hidden_state``, so a pooling head (BERT, MiniLM: ``backbone.pooler``) is
unused unless frozen; DistilBERT (the paper's) has none. tests/test_ddp_params.py checks this against a real
backward for every configuration switch.
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

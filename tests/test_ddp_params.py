"""model/ddp.py: the parameters it names as unused are exactly those without a gradient after a real training
step, for every configuration switch (so DDP gets find_unused_parameters only when a configuration needs it)."""

from __future__ import annotations

import pytest
import torch

DISTILBERT = {"model_type": "distilbert", "vocab_size": 30522, "dim": 32, "n_layers": 1, "n_heads": 2,
              "hidden_dim": 64, "max_position_embeddings": 64}
CONFIGS = [
    ({}, True),  # tiny: a BERT-shaped backbone with a pooler
    ({"modalities": "tm"}, True),
    ({"fusion": False}, True),
    ({"recon_weight": 0.0}, True),
    ({"modalities": "tm", "recon_weight": 0.0}, True),
    ({"freeze_text": True}, False),  # the frozen backbone (pooler included) is not trained
    ({"freeze_video": True}, True),
    ({"text_backbone_config": DISTILBERT}, False),  # the paper's text model: no pooler
    ({"text_backbone_config": DISTILBERT, "modalities": "tm", "fusion": False}, False),
]


def _batch(cfg, b: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"text": [f"a person walks {i}" for i in range(b)],
            "sent_emb": torch.nn.functional.normalize(torch.randn(b, 16, generator=g), dim=-1),
            "motion": torch.randn(b, 6, cfg.feature_dim, generator=g), "mask": torch.ones(b, 6, dtype=torch.bool),
            "video": torch.randn(b, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)}


@pytest.mark.parametrize("overrides,needs", CONFIGS)
def test_unused_parameters_match_a_real_step(overrides, needs):
    from lavimo.model import build_model, load_preset
    from lavimo.model.ddp import needs_find_unused_parameters, unused_parameter_names

    torch.set_num_threads(1)
    cfg = load_preset("tiny", **overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.compute_losses(_batch(cfg))["loss"].backward()
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert sorted(unused_parameter_names(model)) == no_grad
    assert needs_find_unused_parameters(model) is needs

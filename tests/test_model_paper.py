"""The paper preset builds without any download (random init) and runs one forward pass on a batch of 2."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_paper_preset_random_init_forward(tmp_path, monkeypatch):
    from lavimo.model import build_model, load_preset

    # no weights anywhere: DistilBERT falls back to DistilBertConfig() + the bundled (same-vocab) tokenizer
    monkeypatch.setenv("LAVIMO_WEIGHTS", str(tmp_path))
    torch.manual_seed(0)
    cfg = load_preset("paper", random_init=True)
    model = build_model(cfg).eval()
    assert type(model.text.backbone).__name__ == "DistilBertModel"
    assert model.video.visual.conv1.weight.shape == (768, 3, 32, 32)  # ViT-B/32
    n = sum(p.numel() for p in model.parameters())
    assert 150e6 < n < 250e6, n
    b, t = 2, 40
    batch = {
        "text": ["a person walks forward", "a man jumps up and down"],
        "sent_emb": torch.nn.functional.normalize(torch.randn(b, 384), dim=-1),
        "video": torch.randn(b, cfg.num_frames, 3, cfg.image_size, cfg.image_size),
        "motion": torch.randn(b, t, cfg.feature_dim),
        "mask": torch.arange(t)[None] < torch.tensor([[40], [25]]),
    }
    with torch.no_grad():
        out = model.compute_losses(batch)
    assert all(torch.isfinite(out[k]) for k in ("loss", "tm", "vm", "tv", "recon"))
    assert out["fusion_weights"].shape == (b, 3)
    assert torch.allclose(out["fusion_weights"].sum(1), torch.ones(b), atol=1e-6)


def test_paper_preset_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    from lavimo.model import MissingWeightsError, load_preset
    from lavimo.model.weights import build_video_backbone, resolve_clip_weights

    monkeypatch.setenv("LAVIMO_WEIGHTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = load_preset("paper")
    with pytest.raises(MissingWeightsError, match="ViT-B-32-kinetics400.pt"):
        resolve_clip_weights(cfg)
    with pytest.raises(MissingWeightsError, match="random_init"):
        build_video_backbone(cfg)

"""The tiny LAVIMO model on CPU: API, shapes, masks, fusion weights and every ablation switch."""

from __future__ import annotations

import pytest
import torch

from lavimo.model import LavimoConfig, build_model, list_presets, load_preset

B, T = 4, 24
TEXTS = ["a person walks forward", "a person walks forward slowly", "someone jumps twice", "a man waves"]


def make_batch(cfg: LavimoConfig, seed: int = 0, near_dup: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    sent = torch.randn(B, 16, generator=g)
    if near_dup:
        sent[1] = sent[0] + 0.01 * sent[1]
    lengths = torch.tensor([T, 17, 9, 20])
    return {
        "keyid": [f"{i:06d}" for i in range(B)],
        "text": list(TEXTS),
        "sent_emb": torch.nn.functional.normalize(sent, dim=-1),
        "motion": torch.randn(B, T, cfg.feature_dim, generator=g),
        "mask": torch.arange(T)[None] < lengths[:, None],
        "length": lengths,
        "video": torch.randn(B, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g),
    }


@pytest.fixture(scope="module")
def tiny_cfg() -> LavimoConfig:
    return load_preset("tiny")


def build(cfg: LavimoConfig, **over):
    torch.manual_seed(0)
    return build_model(cfg.replace(**over) if over else cfg)


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg):
    return build(tiny_cfg)


def val(t: torch.Tensor) -> float:
    return float(t.detach())


def grads_of(model, prefix: str) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()
            if n.startswith(prefix)]


# ---------------------------------------------------------------------------------------------- presets
def test_presets_load_and_paper_values():
    assert {"paper", "demo", "tiny"} <= set(list_presets())
    p = load_preset("paper")
    assert (p.latent_dim, p.threshold, p.recon_weight) == (512, 0.8, 0.1)
    assert p.text_layers == p.video_layers == p.motion_layers == p.decoder_layers == 6
    assert p.text_model == "distilbert-base-uncased" and p.video_backbone == "ViT-B-32"
    assert p.modalities == "tmv" and p.fusion and p.negative_filtering == "lavimo" and not p.freeze_text
    d = load_preset("demo")
    assert d.text_model == "minilm" and d.image_size < 224 and d.latent_dim == 256


def test_config_overrides_roundtrip_and_validation(tmp_path):
    cfg = load_preset("tiny", fusion="false", threshold="0.7", modalities="tm", text_backbone_config="none")
    assert cfg.fusion is False and cfg.threshold == 0.7 and cfg.modalities == "tm" and cfg.text_backbone_config is None
    assert LavimoConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "run_config.json"
    path.write_text('{"model": ' + cfg.to_json() + ', "trainer": {}}')
    assert load_preset(path) == cfg
    with pytest.raises(ValueError, match="unknown"):
        load_preset("tiny", no_such_field=1)
    with pytest.raises(ValueError, match="negative_filtering"):
        load_preset("tiny", negative_filtering="bogus")
    with pytest.raises(ValueError, match="modalities"):
        load_preset("tiny", modalities="tv")
    with pytest.raises(FileNotFoundError, match="presets"):
        load_preset("nope")
    with pytest.raises(ValueError, match="frame_crop"):
        load_preset("tiny", frame_crop="1.5")


# ---------------------------------------------------------------------------------------------- forward/backward
def test_tiny_forward_backward(tiny_cfg, tiny_model):
    model = tiny_model
    model.train()
    model.zero_grad()
    out = model.compute_losses(make_batch(tiny_cfg))
    for k in ("loss", "tm", "vm", "tv", "recon"):
        assert out[k].ndim == 0 and torch.isfinite(out[k]) and float(out[k].detach()) > 0, k
    total = out["tm"] + out["vm"] + out["tv"] + tiny_cfg.recon_weight * out["recon"]
    assert float(out["loss"].detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    w = out["fusion_weights"]
    assert w.shape == (B, 3) and (w >= 0).all()
    assert torch.allclose(w.sum(dim=1), torch.ones(B), atol=1e-6)
    out["loss"].backward()
    for prefix in ("text.backbone", "text.temporal", "video.visual", "video.temporal", "motion.", "fusion.",
                   "decoder."):
        g = grads_of(model, prefix)
        assert g and any(g), f"no gradient reached {prefix}"
    model.zero_grad()


def test_encoders_inference_mode_shapes(tiny_cfg, tiny_model):
    model = tiny_model.eval()
    batch = make_batch(tiny_cfg)
    with torch.inference_mode():
        t = model.encode_text(batch["text"])
        v = model.encode_video(batch["video"])
        m = model.encode_motion(batch["motion"], batch["mask"])
    c = tiny_cfg.latent_dim
    assert t.shape == v.shape == m.shape == (B, c)
    assert not t.requires_grad and torch.isfinite(t).all() and torch.isfinite(v).all() and torch.isfinite(m).all()


def test_motion_padding_does_not_change_encoding(tiny_cfg, tiny_model):
    model = tiny_model.eval()
    g = torch.Generator().manual_seed(1)
    motion = torch.randn(1, 10, tiny_cfg.feature_dim, generator=g)
    padded = torch.cat([motion, 100 * torch.randn(1, 7, tiny_cfg.feature_dim, generator=g)], dim=1)
    mask = torch.arange(17)[None] < 10
    with torch.inference_mode():
        a = model.encode_motion(motion, torch.ones(1, 10, dtype=torch.bool))
        b = model.encode_motion(padded, mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_text_batching_does_not_change_encoding(tiny_model):
    model = tiny_model.eval()
    with torch.inference_mode():
        alone = model.encode_text(["a man waves"])
        batched = model.encode_text(["a man waves", "a person walks forward in a circle then sits down"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_bad_inputs(tiny_cfg, tiny_model):
    with pytest.raises(ValueError, match="image_size|frames"):
        tiny_model.encode_video(torch.zeros(1, 8, 3, 16, 16))
    with pytest.raises(ValueError, match="motion"):
        tiny_model.encode_motion(torch.zeros(1, 5, 10))
    with pytest.raises(ValueError, match="max_len"):
        tiny_model.encode_motion(torch.zeros(1, tiny_cfg.max_motion_len + 1, tiny_cfg.feature_dim))
    with pytest.raises(TypeError):
        tiny_model.encode_text("not a list")


# ---------------------------------------------------------------------------------------------- ablations
def test_two_modal_variant(tiny_cfg):
    model = build(tiny_cfg, modalities="tm")
    assert model.video is None and not any(n.startswith("video.") for n, _ in model.named_parameters())
    batch = make_batch(tiny_cfg)
    del batch["video"]
    out = model.compute_losses(batch)
    assert val(out["vm"]) == 0.0 and val(out["tv"]) == 0.0 and val(out["tm"]) > 0
    w = out["fusion_weights"]
    assert torch.all(w[:, 1] == 0) and torch.allclose(w.sum(1), torch.ones(B), atol=1e-6)
    assert (w[:, 0] > 0).all() and (w[:, 2] > 0).all()
    with pytest.raises(RuntimeError, match="tm"):
        model.encode_video(torch.zeros(1, 8, 3, 32, 32))


def test_no_fusion_reconstructs_from_motion_only(tiny_cfg):
    batch = make_batch(tiny_cfg)
    fused = build(tiny_cfg)
    nofuse = build(tiny_cfg, fusion=False)
    assert nofuse.fusion is None and nofuse.decoder is not None
    assert not any(n.startswith("fusion.") for n, _ in nofuse.named_parameters())
    for model, text_gets_grad in ((fused, True), (nofuse, False)):
        model.train()
        out = model.compute_losses(batch)
        out["recon"].backward()  # the reconstruction term alone
        assert any(grads_of(model, "text.")) == text_gets_grad
        assert any(grads_of(model, "video.")) == text_gets_grad
        assert any(grads_of(model, "motion.")) and any(grads_of(model, "decoder."))
    w = nofuse.compute_losses(batch)["fusion_weights"]
    assert torch.equal(w, torch.tensor([[0.0, 0.0, 1.0]] * B))


def test_recon_weight_zero_drops_decoder(tiny_cfg):
    model = build(tiny_cfg, recon_weight=0.0)
    assert model.decoder is None and model.fusion is None
    out = model.compute_losses(make_batch(tiny_cfg))
    assert val(out["recon"]) == 0.0
    assert val(out["loss"]) == pytest.approx(val(out["tm"] + out["vm"] + out["tv"]), rel=1e-6)
    assert torch.allclose(out["fusion_weights"].sum(1), torch.ones(B))


def test_freeze_text(tiny_cfg):
    model = build(tiny_cfg, freeze_text=True)
    model.train()
    assert not model.text.backbone.training  # frozen backbone stays in eval mode (no dropout)
    assert all(not p.requires_grad for p in model.text.backbone.parameters())
    out = model.compute_losses(make_batch(tiny_cfg))
    out["loss"].backward()
    assert all(p.grad is None for p in model.text.backbone.parameters())
    assert any(grads_of(model, "text.temporal")) and any(grads_of(model, "video.visual"))
    trainable = {id(p) for g in model.parameter_groups(lr=1e-4, weight_decay=0.01) for p in g["params"]}
    assert not any(id(p) in trainable for p in model.text.backbone.parameters())


def test_frozen_text_backbone_outputs_are_memoised(tiny_cfg):
    model = build(tiny_cfg, freeze_text=True).eval()
    calls = []
    model.text.backbone.register_forward_hook(lambda mod, args, kwargs, out: calls.append(1), with_kwargs=True)
    with torch.no_grad():
        first = model.encode_text(TEXTS)
        assert len(calls) == 1 and len(model.text._cache) == len(TEXTS)
        # cached texts skip the backbone; a new text in the batch runs alone; order and padding do not matter
        again = model.encode_text(TEXTS[::-1] + ["a new sentence that is longer than the others were"])
        assert len(calls) == 2
        assert torch.allclose(again[:4].flip(0), first, atol=1e-5)
        # the same latents as the uncached path
        model.text.frozen = False
        plain = model.encode_text(TEXTS)
        model.text.frozen = True
        assert torch.allclose(plain, first, atol=1e-5)
    # hidden states cached during evaluation (inference_mode) still serve a training step with gradients
    model.text.clear_cache()
    with torch.inference_mode():
        model.encode_text(TEXTS)
    model.train()
    model.encode_text(TEXTS).sum().backward()
    assert model.text.proj_in.weight.grad is not None
    model.eval()
    # loading weights (a checkpoint) or moving the model forgets the cache
    model.load_state_dict(model.state_dict())
    assert len(model.text._cache) == 0
    model.encode_text(TEXTS[:2])
    model.to(torch.float32)
    assert len(model.text._cache) == 0
    with pytest.raises(TypeError):
        model.encode_text("one string")


def test_negative_filtering_modes_change_the_loss(tiny_cfg, tiny_model):
    # the mode only changes the loss, not the architecture: one model, the config's mode switched
    model = tiny_model.eval()
    base = model.cfg
    batch = make_batch(tiny_cfg, near_dup=True)
    dissimilar = dict(batch, sent_emb=torch.eye(B, 16))
    vals, same = {}, {}
    try:
        for mode in ("none", "tmr", "soft", "lavimo"):
            model.cfg = base.replace(negative_filtering=mode)
            with torch.no_grad():
                vals[mode] = float(model.compute_losses(batch)["tm"])
                same[mode] = float(model.compute_losses(dissimilar)["loss"])
    finally:
        model.cfg = base
    assert len({round(v, 6) for v in vals.values()}) == 4, vals
    # all-dissimilar sentence embeddings: tmr and lavimo fall back to plain InfoNCE
    assert same["none"] == pytest.approx(same["tmr"], rel=1e-6)
    assert same["none"] == pytest.approx(same["lavimo"], rel=1e-6)


def test_parameter_groups_scale_backbones(tiny_cfg, tiny_model):
    groups = tiny_model.parameter_groups(lr=1e-3, weight_decay=0.01, backbone_lr_scale=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone/decay"]["lr"] == pytest.approx(1e-4) and by_name["head/decay"]["lr"] == 1e-3
    assert by_name["head/no_decay"]["weight_decay"] == 0.0
    n_all = sum(p.numel() for p in tiny_model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == n_all

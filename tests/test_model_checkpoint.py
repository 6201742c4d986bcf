"""Checkpoint round trip: safetensors weights + config (+ text config and tokenizer) in the metadata."""

from __future__ import annotations

import json

import pytest
import torch

from dataset.errors import BadInputError
from model import build_model, load_checkpoint, load_preset, read_checkpoint_metadata, save_checkpoint


def _inputs(cfg):
    g = torch.Generator().manual_seed(3)
    texts = ["a person walks in a circle", "someone kicks with the left leg"]
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    motion = torch.randn(2, 12, cfg.feature_dim, generator=g)
    mask = torch.arange(12)[None] < torch.tensor([[12], [7]])
    return texts, video, motion, mask


@pytest.mark.parametrize("over", [{}, {"modalities": "tm", "freeze_text": True, "recon_weight": 0.0}],
                         ids=["tmv", "tm-frozen-norecon"])
def test_round_trip_gives_identical_encodings(tmp_path, over):
    torch.manual_seed(0)
    cfg = load_preset("tiny", **over)
    model = build_model(cfg)
    # perturb every weight so nothing could come from a fresh init by accident
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = tmp_path / "ckpt" / "epoch_0001.safetensors"
    save_checkpoint(model, path, extra={"epoch": 1, "metrics": {"R@1": 12.5}})
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))

    meta = read_checkpoint_metadata(path)
    assert meta["config"] == cfg and meta["extra"] == {"epoch": 1, "metrics": {"R@1": 12.5}}
    assert "config.json" in meta["text_assets"] and "tokenizer.json" in meta["text_assets"]

    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.cfg == cfg and loaded.checkpoint_extra["epoch"] == 1
    texts, video, motion, mask = _inputs(cfg)
    with torch.inference_mode():
        assert torch.equal(model.encode_text(texts), loaded.encode_text(texts))
        assert torch.equal(model.encode_motion(motion, mask), loaded.encode_motion(motion, mask))
        if cfg.modalities == "tmv":
            assert torch.equal(model.encode_video(video), loaded.encode_video(video))
    assert loaded.text.frozen == cfg.freeze_text
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_bad_checkpoints(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(BadInputError, match="not a LAVIMO checkpoint"):
        load_checkpoint(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(BadInputError):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.safetensors")
    # a checkpoint whose config does not match its weights
    cfg = load_preset("tiny")
    good = tmp_path / "good.safetensors"
    save_checkpoint(build_model(cfg), good)
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(good), framework="pt") as fh:
        meta = fh.metadata()
    conf = json.loads(meta["lavimo_config"])
    conf["latent_dim"] = 64
    meta["lavimo_config"] = json.dumps(conf)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    with pytest.raises(BadInputError, match="weights"):
        load_checkpoint(bad)

"""video_input="residual": the video encoder sees each frame minus the clip's mean frame."""

import pytest
import torch

from lavimo.model import build_model, load_preset


def test_residual_input_ignores_static_background():
    torch.manual_seed(0)
    cfg = load_preset("tiny", video_input="residual")
    m = build_model(cfg).eval()
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    static = torch.randn(1, 1, 3, cfg.image_size, cfg.image_size)  # same image added to every frame
    with torch.inference_mode():
        a = m.encode_video(video)
        b = m.encode_video(video + static)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_rgb_input_sees_static_background():
    torch.manual_seed(0)
    cfg = load_preset("tiny")
    assert cfg.video_input == "rgb"  # the paper's input
    m = build_model(cfg).eval()
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    with torch.inference_mode():
        a = m.encode_video(video)
        b = m.encode_video(video + 1.0)
    assert (a - b).abs().max() > 1e-3


def test_unknown_video_input_is_rejected():
    with pytest.raises(ValueError, match="video_input"):
        build_model(load_preset("tiny", video_input="flow"))

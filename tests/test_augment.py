"""Video augmentation: parity with torchvision for the operations re-implemented here, one draw per clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from lavimo.dataset.augment import (AugmentConfig, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
                             augment_clip, crop_resize, gaussian_blur, grayscale, names_a_side)


@pytest.fixture
def frames():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 40, 48, generator=g)


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_colour_ops_match_torchvision(frames, factor):
    tol = dict(atol=2e-6, rtol=0)
    torch.testing.assert_close(adjust_brightness(frames.clone(), factor), TF.adjust_brightness(frames, factor), **tol)
    torch.testing.assert_close(adjust_contrast(frames.clone(), factor), TF.adjust_contrast(frames, factor), **tol)
    torch.testing.assert_close(adjust_saturation(frames.clone(), factor), TF.adjust_saturation(frames, factor),
                               **tol)


def test_grayscale_and_hue_match_torchvision(frames):
    torch.testing.assert_close(grayscale(frames), TF.rgb_to_grayscale(frames), atol=2e-6, rtol=0)
    for shift in (-0.3, 0.1, 0.5):
        torch.testing.assert_close(adjust_hue(frames.clone(), shift), TF.adjust_hue(frames, shift))


@pytest.mark.parametrize("sigma", [0.5, 1.3, 2.0])
def test_blur_matches_torchvision(frames, sigma):
    import math
    r = math.ceil(3.0 * sigma)
    ref = TF.gaussian_blur(frames, kernel_size=[2 * r + 1, 2 * r + 1], sigma=[sigma, sigma])
    torch.testing.assert_close(gaussian_blur(frames, sigma), ref, atol=1e-5, rtol=0)


def test_crop_resize_matches_torchvision_resized_crop():
    u8 = torch.randint(0, 256, (2, 3, 60, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = crop_resize(u8, (5, 10, 48, 48), 24)
    ref = TF.resized_crop(u8, 5, 10, 48, 48, [24, 24], antialias=True).float() / 255
    assert (out - ref).abs().max() <= 1 / 255 + 1e-6


def test_names_a_side():
    assert names_a_side(["a person waves the LEFT hand"]) and names_a_side(["", "turns clockwise"])
    assert not names_a_side(["a person jumps", "the person walks forward"])
    assert not names_a_side(["leftover words: upright, bright"])


def _clip():
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    return x.expand(8, -1, -1, -1).contiguous()  # 8 identical frames


def test_randaugment_is_one_draw_per_clip_and_reproducible():
    cfg = AugmentConfig(randaugment_ops=2, randaugment_magnitude=9, jitter_p=0, grayscale_p=0, blur_p=0)
    outs = [augment_clip(_clip(), 24, cfg, np.random.default_rng(s)) for s in (5, 5, 6)]
    for out in outs:  # identical frames in -> identical frames out: the same ops for every frame
        assert torch.equal(out, out[:1].expand_as(out))
    assert torch.equal(outs[0], outs[1])
    plain = augment_clip(_clip(), 24, AugmentConfig(jitter_p=0, grayscale_p=0, blur_p=0), np.random.default_rng(5))
    assert not torch.equal(outs[0], plain)


def test_hflip_never_flips_sided_clips_unless_asked():
    x = torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32).expand(2, 3, 32, 32).contiguous()
    cfg = AugmentConfig(scale=(1.0, 1.0), jitter_p=0, grayscale_p=0, blur_p=0, hflip_p=1.0)
    flipped = augment_clip(x, 32, cfg, np.random.default_rng(0))
    kept = augment_clip(x, 32, cfg, np.random.default_rng(0), allow_flip=False)
    assert torch.equal(flipped, torch.flip(kept, dims=[-1])) and kept[0, 0, 0, 0] < kept[0, 0, 0, -1]
    sided = AugmentConfig(scale=(1.0, 1.0), jitter_p=0, grayscale_p=0, blur_p=0, hflip_p=1.0, hflip_sided=True)
    assert torch.equal(augment_clip(x, 32, sided, np.random.default_rng(0), allow_flip=False), flipped)

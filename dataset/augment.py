"""Clip-consistent video augmentation for training (the same random parameters for all frames of a clip).

The paper's recipe: random resize, then a 256x256 crop, colour jitter, random grayscale, Gaussian blur, then
resize to the video encoder's input size and CLIP normalisation. The resize + crop + final resize are done as
one crop-and-resize (cheaper, same geometry): a window of side ``short_side / s`` pixels of the stored frame,
with ``s`` drawn from ``scale``, is resized to ``image_size``.

Horizontal flips are OFF by default: a flip mirrors left and right, so "waves his left hand" would then show the
right hand while the text and the motion features still say left. Turn them on (``hflip_p``) only for data
whose texts do not name sides.

All functions take and return torch tensors (k, 3, H, W); uint8 in, float32 in [0, 1] out of ``crop_resize``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class AugmentConfig:
    """Training augmentation parameters (probabilities per clip; all frames share the draws).

    Attributes:
        scale: range of the random resize factor s: the short side is resized to 256*s and a 256x256 window
            is cropped (s = 1: the whole centred-or-shifted square; s = 1.25: 80% of the short side).
        brightness, contrast, saturation: jitter strengths (factor drawn from [1-x, 1+x]).
        hue: hue shift drawn from [-hue, hue] (fraction of the colour wheel, <= 0.5).
        jitter_p: probability of applying colour jitter to a clip.
        grayscale_p: probability of converting a clip to grayscale.
        blur_p: probability of a Gaussian blur; sigma drawn from ``blur_sigma`` (pixels at ``image_size``).
        hflip_p: probability of a horizontal flip (0 by default; see the module docstring).
    """

    scale: tuple[float, float] = (1.0, 1.25)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    hflip_p: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_any(cls, value) -> "AugmentConfig | None":
        """None/True -> defaults, False -> None (no augmentation), dict -> fields, AugmentConfig -> itself."""
        if value is None or value is True:
            return cls()
        if value is False:
            return None
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"augment must be None, a bool, a dict or AugmentConfig, got {type(value).__name__}")


def crop_resize(frames, box: tuple[int, int, int, int], image_size: int):
    """Crop ``box`` = (top, left, height, width) of uint8 (k, 3, H, W) frames and resize to image_size² ->
    float32 in [0, 1] (bilinear, antialiased when shrinking)."""
    import torch.nn.functional as F

    t, l, h, w = box
    x = frames[:, :, t:t + h, l:l + w].float().div_(255.0)
    if h != image_size or w != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=h > image_size,
                          align_corners=False)
    return x.clamp_(0.0, 1.0)


def center_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred square of a (height, width) frame."""
    s = min(height, width)
    return (height - s) // 2, (width - s) // 2, s, s


def random_box(height: int, width: int, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Random resize then a square crop, as a box in stored-frame pixels.

    Resizing the short side to ``256 * s`` and cropping 256x256 keeps a window of ``1/s`` of the short side,
    so the box side is ``short / s`` at the stored resolution, placed uniformly at random."""
    short = min(height, width)
    s = float(rng.uniform(*cfg.scale))
    side = max(8, min(short, int(round(short / s))))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return top, left, side, side


def augment_clip(frames, image_size: int, cfg: AugmentConfig, rng: np.random.Generator):
    """Training view of a clip: uint8 (k, 3, H, W) -> float32 (k, 3, image_size, image_size) in [0, 1]."""
    import torch
    import torchvision.transforms.v2.functional as TF

    _, _, h, w = frames.shape
    x = crop_resize(frames, random_box(h, w, cfg, rng), image_size)
    if cfg.jitter_p > 0 and rng.random() < cfg.jitter_p:
        ops = rng.permutation(4)
        b = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        c = rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        s = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        hu = rng.uniform(-cfg.hue, cfg.hue)
        for op in ops:
            if op == 0 and cfg.brightness > 0:
                x = TF.adjust_brightness(x, b)
            elif op == 1 and cfg.contrast > 0:
                x = TF.adjust_contrast(x, c)
            elif op == 2 and cfg.saturation > 0:
                x = TF.adjust_saturation(x, s)
            elif op == 3 and cfg.hue > 0:
                x = TF.adjust_hue(x, hu)
    if cfg.grayscale_p > 0 and rng.random() < cfg.grayscale_p:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        sigma = float(rng.uniform(*cfg.blur_sigma))
        k = 2 * math.ceil(3 * sigma) + 1
        x = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
    if cfg.hflip_p > 0 and rng.random() < cfg.hflip_p:
        x = torch.flip(x, dims=[-1])
    return x


def eval_view(frames, image_size: int):
    """Evaluation view: centre square, resized -> float32 (k, 3, image_size, image_size) in [0, 1]."""
    _, _, h, w = frames.shape
    return crop_resize(frames, center_box(h, w), image_size)


def clip_normalize(x):
    """CLIP's per-channel normalisation of float (…, 3, H, W) images in [0, 1] (in place)."""
    import torch

    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(3, 1, 1)
    return x.sub_(mean).div_(std)

"""Clip-consistent video augmentation for training (the same random parameters for all frames of a clip).

The paper's recipe: random resize, then a 256x256 crop, colour jitter, random grayscale, Gaussian blur, then
resize to the video encoder's input size and CLIP normalisation. The resize + crop + final resize are done as
one crop-and-resize (cheaper, same geometry): a window of side ``short_side / s`` pixels of the stored frame,
with ``s`` drawn from ``scale``, is resized to ``image_size``.

Horizontal flips (``hflip_p``) mirror left and right: "waves his left hand" would then show the right hand
while the text and the motion features still say left. So a flip is only drawn for clips whose captions name no
side (no "left"/"right"/"clockwise"/... word, see :func:`names_a_side`) unless ``hflip_sided`` is set; the
motion features are never flipped. The paper preset flips with p = 0.5 under that rule; the default here is 0.

RandAugment (``randaugment_ops`` > 0) is torchvision's, once per clip (:func:`rand_augment`). Colour operations
and the blur follow torchvision's definitions (re-implemented in place for speed, tested for parity; hue is
torchvision's own).

All functions take and return torch tensors (k, 3, H, W); uint8 in, float32 in [0, 1] out of ``crop_resize``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Sequence

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
        hflip_sided: also flip clips whose captions name a side (off: those are never flipped).
        randaugment_ops: number of RandAugment operations per clip (0 = off); randaugment_magnitude: their
            magnitude on torchvision's 0..30 scale (torchvision's defaults are 2 and 9).
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
    hflip_sided: bool = False
    randaugment_ops: int = 0
    randaugment_magnitude: int = 9

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
    float32 in [0, 1] (bilinear, antialiased when shrinking; resized in uint8, which is ~3x faster)."""
    import torch.nn.functional as F

    t, l, h, w = box
    x = frames[:, :, t:t + h, l:l + w]
    if h != image_size or w != image_size:
        x = F.interpolate(x.contiguous(), size=(image_size, image_size), mode="bilinear",
                          antialias=h > image_size, align_corners=False)
    return x.float().div_(255.0)


_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma with torchvision's rounding (rgb_to_grayscale)


def grayscale(x):
    """(k, 3, H, W) float -> (k, 1, H, W) luma."""
    return (x[:, 0:1] * _GRAY[0]).add_(x[:, 1:2], alpha=_GRAY[1]).add_(x[:, 2:3], alpha=_GRAY[2])


def adjust_brightness(x, factor: float):
    return x.mul_(factor).clamp_(0.0, 1.0)


def adjust_contrast(x, factor: float):
    """Blend with the mean grey level of each frame (torchvision's definition)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return x.mul_(factor).add_(mean * (1.0 - factor)).clamp_(0.0, 1.0)


def adjust_saturation(x, factor: float):
    """Blend with the frame's grayscale version (torchvision's definition)."""
    gray = grayscale(x)
    return x.mul_(factor).add_(gray * (1.0 - factor)).clamp_(0.0, 1.0)


def adjust_hue(x, shift: float):
    """Rotate the hue of (k, 3, H, W) float frames in [0, 1] by ``shift`` turns (-0.5..0.5): torchvision's
    exact RGB -> HSV -> RGB rotation."""
    from torchvision.transforms.v2 import functional as TF

    return TF.adjust_hue(x, float(shift))


def gaussian_blur(x, sigma: float):
    """Separable Gaussian blur of (k, 3, H, W) float frames: sigma in pixels, radius ceil(3 sigma), reflect
    padding (torchvision's result) as two depthwise 1-D convolutions in channels-last layout, which is several
    times faster on CPU than torchvision's 2-D kernel."""
    import torch
    import torch.nn.functional as F

    k, c, h, w = x.shape
    r = max(1, min(math.ceil(3.0 * sigma), h - 1, w - 1))
    offs = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-0.5 * (offs / sigma) ** 2)
    g = g / g.sum()
    y = F.pad(x, (r, r, r, r), mode="reflect").contiguous(memory_format=torch.channels_last)
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, 2 * r + 1).contiguous(), groups=c)
    y = F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, 2 * r + 1, 1).contiguous(), groups=c)
    return y.contiguous()


def center_box(height: int, width: int, fraction: float = 1.0) -> tuple[int, int, int, int]:
    """The centred square of a (height, width) frame whose side is ``fraction`` of the short side (1 = the
    largest), as (top, left, height, width)."""
    s = max(1, int(round(min(height, width) * fraction)))
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


_SIDE_WORDS = re.compile(r"\b(left|right|leftwards|rightwards|clockwise|counterclockwise|anticlockwise|"
                         r"counter-clockwise|anti-clockwise)\b", re.IGNORECASE)


def names_a_side(texts: Sequence[str]) -> bool:
    """Whether any caption names a side or a turning sense (then a horizontal flip would contradict it)."""
    return any(_SIDE_WORDS.search(t or "") for t in texts)


def rand_augment(x, cfg: AugmentConfig, rng: np.random.Generator):
    """torchvision's RandAugment on (k, 3, H, W) float frames in [0, 1], one draw for all k frames."""
    import torch
    from torchvision.transforms import v2

    op = v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
        return op(x).clamp_(0.0, 1.0)


def augment_clip(frames, image_size: int, cfg: AugmentConfig, rng: np.random.Generator, *,
                 allow_flip: bool = True):
    """Training view of a clip: uint8 (k, 3, H, W) -> float32 (k, 3, image_size, image_size) in [0, 1].

    ``allow_flip``: False for clips whose captions name a side (the caller checks :func:`names_a_side`), unless
    ``cfg.hflip_sided``."""
    import torch

    _, _, h, w = frames.shape
    x = crop_resize(frames, random_box(h, w, cfg, rng), image_size)
    if cfg.randaugment_ops > 0:
        x = rand_augment(x, cfg, rng)
    if cfg.jitter_p > 0 and rng.random() < cfg.jitter_p:
        b = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        c = rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        s = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        hu = rng.uniform(-cfg.hue, cfg.hue)
        for op in rng.permutation(4):  # random order, as torchvision's ColorJitter
            if op == 0 and cfg.brightness > 0:
                x = adjust_brightness(x, b)
            elif op == 1 and cfg.contrast > 0:
                x = adjust_contrast(x, c)
            elif op == 2 and cfg.saturation > 0:
                x = adjust_saturation(x, s)
            elif op == 3 and cfg.hue > 0:
                x = adjust_hue(x, hu)
    if cfg.grayscale_p > 0 and rng.random() < cfg.grayscale_p:
        x = grayscale(x).expand(-1, 3, -1, -1).contiguous()
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        x = gaussian_blur(x, float(rng.uniform(*cfg.blur_sigma)))
    if cfg.hflip_p > 0 and (allow_flip or cfg.hflip_sided) and rng.random() < cfg.hflip_p:
        x = torch.flip(x, dims=[-1])
    return x


def eval_view(frames, image_size: int):
    """Evaluation view: centre square, resized -> float32 (k, 3, image_size, image_size) in [0, 1]."""
    _, _, h, w = frames.shape
    return crop_resize(frames, center_box(h, w), image_size)


def clip_normalize(x):
    """CLIP's per-channel normalisation of float (…, 3, H, W) images in [0, 1] (in place)."""
    import torch

    scale = torch.tensor([1.0 / s for s in CLIP_STD], dtype=x.dtype).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)], dtype=x.dtype).view(3, 1, 1)
    return x.mul_(scale).add_(shift)

"""Video encoder: the open_clip image tower (CLIP ViT-B/32 in the paper) on every frame + a temporal
transformer over the frame embeddings, pooled by a learned token to the latent (B, C)."""

from __future__ import annotations

import torch
from torch import nn

from .config import LavimoConfig
from .layers import PooledTransformer


class VideoEncoder(nn.Module):
    """``forward(video (B, F, 3, H, W) float CLIP-normalised, F <= num_frames, H = W = image_size) -> (B, C)``:
    the image tower per frame ((B*F, E), E = 512 for ViT-B/32) projected to C, a :class:`PooledTransformer` of
    ``cfg.video_layers`` layers and a linear map. ``freeze``: the tower runs without gradients in eval mode.
    ``cfg.video_input == "residual"``: each frame minus the clip's mean frame first.
    """

    def __init__(self, visual: nn.Module, cfg: LavimoConfig, freeze: bool = False):
        super().__init__()
        self.visual = visual
        self.num_frames = int(cfg.num_frames)
        self.image_size = int(cfg.image_size)
        c = cfg.latent_dim
        self.proj_in = nn.Linear(int(visual.output_dim), c)
        self.temporal = PooledTransformer(c, cfg.video_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout,
                                          cfg.activation, max_len=self.num_frames)
        self.head = nn.Linear(c, c)
        self.frozen = bool(freeze)
        if cfg.video_input not in ("rgb", "residual"):
            raise ValueError(f"video_input must be 'rgb' or 'residual', got {cfg.video_input!r}")
        self.residual = cfg.video_input == "residual"
        if self.frozen:
            self.visual.requires_grad_(False)
            self.visual.eval()

    def train(self, mode: bool = True) -> "VideoEncoder":
        super().train(mode)
        if self.frozen:
            self.visual.eval()
        return self

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, F, 3, H, W); got {tuple(video.shape)}")
        b, f, _, h, w = video.shape
        if f > self.num_frames:
            raise ValueError(f"video has {f} frames; this model takes at most num_frames={self.num_frames}")
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"video frames are {h}x{w}; this model takes {self.image_size}x{self.image_size} "
                             f"(image_size)")
        if self.residual:
            video = video - video.mean(dim=1, keepdim=True)
        frames = video.reshape(b * f, 3, h, w).to(self.proj_in.weight.dtype)
        if self.frozen:
            with torch.no_grad():
                emb = self.visual(frames)
        else:
            emb = self.visual(frames)
        x = self.proj_in(emb).reshape(b, f, -1)
        return self.head(self.temporal(x))

"""The LAVIMO model: text, video and motion encoders into one latent space, motion-as-query fusion, a motion
reconstruction decoder, and the training losses."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch
from torch import nn

from .config import LavimoConfig
from .decoder import MotionDecoder, masked_smooth_l1
from .fusion import MotionQueryFusion
from .gather import batch_gather
from .losses import contrastive_loss
from .motion_encoder import MotionEncoder
from .text_encoder import TextEncoder
from .video_encoder import VideoEncoder
from .weights import build_video_backbone, load_text_backbone

log = logging.getLogger(__name__)

#: the unweighted loss terms :meth:`LavimoModel.compute_losses` returns (each a scalar, zero when the variant
#: lacks it): text-motion, video-motion, text-video contrastive and motion reconstruction
LOSS_TERMS = ("tm", "vm", "tv", "recon")
#: every scalar :meth:`LavimoModel.compute_losses` returns: the total ``loss`` first, then the terms
LOSS_KEYS = ("loss", *LOSS_TERMS)
#: the columns of the fusion weights (:meth:`LavimoModel.fuse`, ``fusion_weights``)
FUSION_NAMES = ("text", "video", "motion")


class LavimoModel(nn.Module):
    """Tri-modal (or text-motion) retrieval model. Build it with :func:`build_model`.

    Encoders return latents (B, C), not normalised; retrieval compares them by cosine similarity.
    ``video`` is ``None`` when ``cfg.modalities == "tm"``; ``fusion`` is ``None`` when ``cfg.fusion`` is off;
    ``decoder`` is ``None`` when ``cfg.recon_weight == 0``.
    """

    def __init__(self, cfg: LavimoConfig, text: TextEncoder, video: VideoEncoder | None):
        super().__init__()
        self.cfg = cfg
        self.text = text
        self.video = video
        self.motion = MotionEncoder(cfg)
        self.use_video = cfg.modalities == "tmv"
        self.fusion = MotionQueryFusion(cfg.latent_dim) if (cfg.fusion and cfg.recon_weight > 0) else None
        self.decoder = MotionDecoder(cfg) if cfg.recon_weight > 0 else None

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.motion.proj_in.weight.device

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    # ------------------------------------------------------------------ encoders
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, C) latents (tokenised here, on the model's device)."""
        return self.text(texts)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) float CLIP-normalised frames (F <= num_frames, H = W = image_size) -> (B, C)."""
        if self.video is None:
            raise RuntimeError("this model was built with modalities='tm' and has no video encoder")
        return self.video(video.to(self.device))

    def encode_motion(self, motion: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, feature_dim) normalised features, (B, T) bool mask (True = valid; None = all) -> (B, C)."""
        motion = motion.to(self.device)
        if mask is not None:
            mask = mask.to(self.device)
        return self.motion(motion, mask)

    # ------------------------------------------------------------------ fusion
    def fuse(self, text: torch.Tensor, video: torch.Tensor | None, motion: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent the decoder reconstructs from, and the (B, 3) modality weights (text, video, motion).

        With fusion: motion-as-query attention over (text, video, motion), or (text, motion) in the ``tm``
        variant (video weight 0). Without fusion (``--no-fusion``): the motion latent itself, weights (0, 0, 1).
        Every row of the weights sums to 1.
        """
        b = motion.shape[0]
        weights = motion.new_zeros(b, 3)
        if self.fusion is None:
            weights[:, 2] = 1.0
            return motion, weights
        if self.use_video:
            if video is None:
                raise ValueError("tri-modal fusion needs the video latents")
            fused, w = self.fusion(motion, [text, video, motion])
            return fused, w
        fused, w = self.fusion(motion, [text, motion])
        weights = torch.stack([w[:, 0], torch.zeros_like(w[:, 0]), w[:, 1]], dim=1)
        return fused, weights

    # ------------------------------------------------------------------ losses
    def compute_losses(self, batch: Mapping[str, Any], gather_negatives: bool = True) -> dict[str, torch.Tensor]:
        """Training losses for one loader batch: ``text`` list[str] (B), ``sent_emb`` (B, D) L2-normalised,
        ``motion`` (B, T, feature_dim) normalised, ``mask`` (B, T) bool True = valid, ``video`` (B, F, 3, H, W)
        (tri-modal only); other keys ignored.

        Returns ``loss`` = tm + vm + tv + recon_weight * recon and the unweighted terms :data:`LOSS_TERMS` (scalars,
        zero when the variant lacks one), and ``fusion_weights`` (B, 3) (text, video, motion; detached).
        ``gather_negatives`` (the run's setting): under DDP the contrastive terms run over every rank's rows
        (model/gather.py), as one process with the global batch.
        """
        cfg = self.cfg
        dev = self.device
        for key in ("text", "motion", "mask") + (("video",) if self.use_video else ()):
            if key not in batch:
                raise KeyError(f"batch is missing {key!r}")
        motion = batch["motion"].to(dev)
        mask = batch["mask"].to(dev).bool()
        sent = batch.get("sent_emb")
        if sent is None and cfg.negative_filtering != "none":
            raise KeyError(f"batch is missing 'sent_emb' (needed by negative_filtering={cfg.negative_filtering!r})")
        sent = sent.to(dev) if sent is not None else None

        t = self.encode_text(list(batch["text"]))
        m = self.encode_motion(motion, mask)
        v = self.encode_video(batch["video"]) if self.use_video else None

        # under DDP (gather_negatives): the contrastive terms over every rank's rows (model/gather.py)
        gather = batch_gather(gather_negatives, m.shape[0], dev)
        t_all, m_all, v_all, sent_all = t, m, v, sent
        if gather is not None:
            t_all, m_all, v_all, sent_all = gather(t), gather(m), gather(v), gather(sent, grad=False)

        def nce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return contrastive_loss(a, b, sent_all, mode=cfg.negative_filtering, threshold=cfg.threshold,
                                    temperature=cfg.temperature)

        zero = m.new_zeros(())
        out: dict[str, torch.Tensor] = {k: zero for k in LOSS_TERMS}
        out["tm"] = nce(t_all, m_all)
        if v is not None:
            out["vm"] = nce(v_all, m_all)
            out["tv"] = nce(t_all, v_all)
        if self.decoder is not None:
            latent, weights = self.fuse(t, v, m)
            recon = self.decoder(latent, mask)
            out["recon"] = masked_smooth_l1(recon, motion.to(recon.dtype), mask)
        else:
            weights = m.new_zeros(m.shape[0], 3)
            weights[:, 2] = 1.0
        out["loss"] = out["tm"] + out["vm"] + out["tv"] + cfg.recon_weight * out["recon"]
        out["fusion_weights"] = weights.detach()
        return out

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.compute_losses(batch)

    # ------------------------------------------------------------------ optimisation helpers
    def backbone_parameters(self) -> list[nn.Parameter]:
        """The pretrained backbones' parameters (HF text encoder, CLIP image tower)."""
        params = list(self.text.backbone.parameters())
        if self.video is not None:
            params += list(self.video.visual.parameters())
        return params

    def parameter_groups(self, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0
                         ) -> list[dict[str, Any]]:
        """THE AdamW parameter groups of this model (the optimiser of ``train.py`` uses them): :func:`param_groups`
        with the backbones of :meth:`backbone_parameters`; the values are the run's (lavimo.training.config.TrainConfig)."""
        return param_groups(self, lr=lr, weight_decay=weight_decay, backbone_lr_scale=backbone_lr_scale)


def _backbone_prefixes(model: nn.Module) -> list[str]:
    """Names of the top-most submodules that come from a pretrained-model library (Hugging Face
    ``transformers`` or ``open_clip``): the text model and the CLIP vision tower."""
    prefixes: list[str] = []
    for name, mod in model.named_modules():
        if not name:
            continue
        origin = type(mod).__module__
        if origin.startswith(("transformers.", "open_clip.")):
            if not any(name == p or name.startswith(p + ".") for p in prefixes):
                prefixes.append(name)
    return prefixes


def param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                 backbone_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups over the trainable parameters (``requires_grad``).

    * backbone (the pretrained text model and CLIP image tower: ``model.backbone_parameters()`` when the model
      has it, else the submodules from ``transformers`` / ``open_clip``): ``lr * backbone_lr_scale``;
      everything else: ``lr``;
    * weight decay on matrices and embeddings (``ndim >= 2``) only, none on biases, norms, scalars.

    Empty groups are dropped; every group carries a ``name`` for logs.
    """
    if hasattr(model, "backbone_parameters"):
        backbone_ids = {id(p) for p in model.backbone_parameters()}
    else:
        prefixes = _backbone_prefixes(model)
        backbone_ids = {id(p) for n, p in model.named_parameters()
                        if any(n == q or n.startswith(q + ".") for q in prefixes)}
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        buckets.setdefault((id(p) in backbone_ids, p.ndim >= 2), []).append(p)
    groups = []
    for (backbone, decay), params in sorted(buckets.items()):
        groups.append({
            "name": f"{'backbone' if backbone else 'head'}/{'decay' if decay else 'no_decay'}",
            "params": params,
            "lr": lr * (backbone_lr_scale if backbone else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
        })
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_model(cfg: LavimoConfig, *, pretrained: bool = True,
                text_assets_dir: str | os.PathLike | None = None) -> LavimoModel:
    """Build the model for ``cfg``; backbones pretrained from local files (``model/weights.py``, never downloaded)
    unless ``cfg.random_init``. Checkpoint loading passes ``pretrained=False`` (no CLIP weights) and
    ``text_assets_dir`` (the saved text config/tokenizer instead of ``cfg.text_model``)."""
    backbone, tokenizer = load_text_backbone(cfg, assets_dir=text_assets_dir)
    text = TextEncoder(backbone, tokenizer, cfg, freeze=cfg.freeze_text)
    video = None
    if cfg.modalities == "tmv":
        video = VideoEncoder(build_video_backbone(cfg, pretrained=pretrained), cfg, freeze=cfg.freeze_video)
    model = LavimoModel(cfg, text, video)
    n = sum(p.numel() for p in model.parameters())
    log.info("built LAVIMO (%s, modalities=%s, fusion=%s, recon_weight=%g): %.1fM parameters", cfg.name,
             cfg.modalities, cfg.fusion, cfg.recon_weight, n / 1e6)
    return model

"""The LAVIMO model's configuration (:class:`LavimoConfig`): architecture and training objective, saved in every
checkpoint. The run's settings (batch size, optimiser, schedule, augmentation, ...) are
:class:`lavimo.training.config.TrainConfig`, which the model never reads: a checkpoint fixes the model and nothing
about how it was trained. Presets (``paper``, ``demo``, ``tiny``): ``model/presets/*.json`` (:func:`load_preset`).

Defaults are the paper's values (Yin et al., arXiv 2403.00691) where it states them; fields marked "ours" are
choices the paper does not specify.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lavimo.core.jsonconfig import JsonConfig, read_config_json

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "presets"

#: the run settings a config of version 0.1.0 before the model / run split carried beside the model's fields
#: (now lavimo.training.config.TrainConfig's); :meth:`LavimoConfig.from_saved` drops them, so checkpoints and run
#: directories written before the split still load. A historical list: it never grows.
PRE_SPLIT_RUN_FIELDS = frozenset({
    "batch_size", "lr", "lr_min", "lr_decay_start_epoch", "epochs", "optimizer", "weight_decay", "betas",
    "backbone_lr_scale", "grad_clip", "warmup_steps", "seed", "num_workers", "epoch_batches", "eval_every",
    "checkpoint_every", "log_every", "amp", "gather_negatives", "extra", "hflip_p", "randaugment_ops",
    "randaugment_magnitude"})

MODALITIES = ("tmv", "tm")
#: the most layers of any encoder or backbone (the paper's have 6 to 12): a config read from a checkpoint or a run
#: directory cannot make the loader build millions of modules
MAX_LAYERS = 256


def too_many_layers(backbone_config: Any) -> str | None:
    """The first ``key=value`` of a backbone config dict whose key names layers and whose integer value is over
    :data:`MAX_LAYERS` (a crafted config that would build millions of modules), else None."""
    if not isinstance(backbone_config, dict):
        return None
    for k, v in backbone_config.items():
        if "layer" in str(k).lower() and isinstance(v, int) and not isinstance(v, bool) and v > MAX_LAYERS:
            return f"{k}={v}"
    return None
NEGATIVE_FILTERING = ("lavimo", "tmr", "soft", "none")


@dataclass
class LavimoConfig(JsonConfig):
    """The LAVIMO model: architecture, backbones and training objective (saved in every checkpoint).

    Shapes: latents are ``(B, latent_dim)``; motion features ``(B, T, feature_dim)`` with ``T <= max_motion_len``
    (HumanML3D 263-dim features at 20 fps, Y-up, normalised with the shards' ``stats.npz``); video
    ``(B, num_frames, 3, image_size, image_size)`` CLIP-normalised.
    """

    #: removed options (see JsonConfig.REMOVED_FIELDS): saved configs holding them still load, the value is ignored
    REMOVED_FIELDS: ClassVar[dict[str, str]] = {
        "trust_weights_pickle": "weights are only ever loaded as tensors (safetensors, or torch.load("
                                "weights_only=True)); no setting read from a file can enable code loading; convert "
                                "a pickled or TorchScript file to .safetensors on a machine you trust (docs/model.md)",
    }

    name: str = "custom"

    # --- ablation switches (the paper's Table rows) ---
    modalities: str = "tmv"  # "tmv" tri-modal; "tm" text-motion only (no video encoder, no vm/tv terms)
    fusion: bool = True  # False = --no-fusion: reconstruct from the motion latent alone (Row6)
    recon_weight: float = 0.1  # lambda_recon; 0 drops the decoder branch entirely (Row5)
    negative_filtering: str = "lavimo"  # "lavimo" | "tmr" | "soft" | "none" (see model/losses.py)
    threshold: float = 0.8  # epsilon on TMR's score scale (cos + 1) / 2
    # the sentence model whose scores (cos + 1) / 2 threshold / epsilon are defined on: TMR's and the paper's
    # all-mpnet-base-v2; shards embedded with another model give scores on another scale (train.py and evaluate.py
    # warn), see the README, "Reproducing the paper"
    sentence_model: str = "sentence-transformers/all-mpnet-base-v2"
    temperature: float = 0.1  # InfoNCE temperature (ours: TMR's value; the paper does not state it)
    freeze_text: bool = False  # True = --freeze-text: the HF text backbone gets no gradient
    freeze_video: bool = False  # True: the CLIP image tower gets no gradient (ours; not a paper row)
    # "rgb" (paper): CLIP-normalised frames as they are. "residual" (ours, for from-scratch image towers such
    # as the CPU demo's): each frame minus the clip's mean frame, so the static background and clothing cancel
    # and the tower sees the moving body; a randomly initialised tiny ViT otherwise maps every clip to nearly
    # the same embedding and the video losses never leave the uniform baseline.
    video_input: str = "rgb"

    # --- shapes ---
    latent_dim: int = 512  # C
    feature_dim: int = 263  # HumanML3D features (251 for KIT-ML)
    max_motion_len: int = 196  # feature rows (HumanML3D max 196 at 20 fps = 9.8 s)
    num_frames: int = 8  # video frames per clip
    image_size: int = 224  # video frame side in pixels
    # fraction of the stored frame's short side kept (a centred square) before augmentation and resizing to
    # image_size; < 1 zooms in on the person, whom the follow camera keeps centred (ours; 1 = the whole frame)
    frame_crop: float = 1.0

    # --- temporal transformers (text / video / motion encoders, motion decoder) ---
    text_layers: int = 6
    video_layers: int = 6
    motion_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    ff_dim: int = 1024  # ours (TMR uses 1024)
    dropout: float = 0.1
    activation: str = "gelu"

    # --- text backbone (Hugging Face encoder) ---
    text_model: str = "distilbert-base-uncased"  # local dir, HF repo id (cache only) or "minilm" (bundled)
    text_backbone_config: dict | None = None  # HF config kwargs (with model_type) -> random backbone of that shape
    text_max_length: int = 77  # tokenizer truncation (tokens incl. [CLS]/[SEP])

    # --- video backbone (open_clip image tower) ---
    video_backbone: str = "ViT-B-32"  # open_clip model name (its vision_cfg and embed_dim are used)
    video_backbone_config: dict | None = None  # custom open_clip vision_cfg (+ "embed_dim") instead of the name
    video_quick_gelu: bool = True  # OpenAI CLIP (and the Kinetics fine-tunes of it) use QuickGELU
    video_weights: str | None = None  # file path, or an open_clip pretrained tag ("openai") looked up in caches
    random_init: bool = False  # True: random backbones instead of pretrained weights (no files needed)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"LavimoConfig.{name}: {msg} (got {getattr(self, name)!r})")

        if self.modalities not in MODALITIES:
            bad("modalities", f"must be one of {MODALITIES}")
        if self.negative_filtering not in NEGATIVE_FILTERING:
            bad("negative_filtering", f"must be one of {NEGATIVE_FILTERING}")
        if not 0.0 <= self.threshold <= 1.0:
            bad("threshold", "must be in [0, 1] (TMR's score scale (cos + 1) / 2)")
        if self.temperature <= 0:
            bad("temperature", "must be > 0")
        if self.recon_weight < 0:
            bad("recon_weight", "must be >= 0")
        for name in ("latent_dim", "feature_dim", "max_motion_len", "num_frames", "image_size", "num_heads",
                     "ff_dim", "text_max_length"):
            if int(getattr(self, name)) <= 0:
                bad(name, "must be > 0")
        for name in ("text_layers", "video_layers", "motion_layers", "decoder_layers"):
            if not 1 <= int(getattr(self, name)) <= MAX_LAYERS:
                bad(name, f"must be in [1, {MAX_LAYERS}]")
        for name in ("text_backbone_config", "video_backbone_config"):
            over = too_many_layers(getattr(self, name))
            if over:
                bad(name, f"{over}: at most {MAX_LAYERS} layers")
        if self.latent_dim % self.num_heads:
            bad("latent_dim", f"must be divisible by num_heads={self.num_heads}")
        if not 0.0 < self.frame_crop <= 1.0:
            bad("frame_crop", "must be in (0, 1] (fraction of the frame's short side kept)")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if self.activation not in ("gelu", "relu"):
            bad("activation", "must be 'gelu' or 'relu'")

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "LavimoConfig":
        """:meth:`from_dict` for a saved config (a checkpoint's or a run's), which may come from before the model /
        run split and then also holds run settings (:data:`PRE_SPLIT_RUN_FIELDS`): those are dropped."""
        return cls.from_dict({k: v for k, v in d.items() if k not in PRE_SPLIT_RUN_FIELDS})

    def loader_kwargs(self) -> dict[str, Any]:
        """The fields ``lavimo.dataset.shards.stream.make_loader`` takes from the model: frame size and count, motion length,
        frame crop (training, validation and evaluation must read the shards the same way)."""
        return {"image_size": self.image_size, "num_frames": self.num_frames, "max_motion_len": self.max_motion_len,
                "frame_crop": self.frame_crop}


def list_presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str | os.PathLike, **overrides: Any) -> LavimoConfig:
    """The model of a bundled preset (``paper``, ``demo``, ``tiny``) or of a JSON file, with overrides, validated.

    A JSON file holds the fields at top level or under a ``"model"`` key (so a run's saved ``config.json`` can be
    passed; one from before the model / run split, whose ``"model"`` object also holds run settings, too).
    Overrides may be typed values or CLI strings (``fusion="false"``); unknown names raise ``ValueError``. The
    run's settings of a preset are :func:`lavimo.training.config.load_run_config`'s.
    """
    LavimoConfig.check_names(overrides)
    path, data = read_config_json(name_or_path, PRESET_DIR)
    if isinstance(data.get("model"), dict):
        data = {k: v for k, v in data["model"].items() if k not in PRE_SPLIT_RUN_FIELDS}
    data.update(overrides)
    cfg = LavimoConfig.from_dict(data)
    log.debug("loaded preset %s -> %s", path, cfg.name)
    return cfg

"""The LAVIMO configuration: one flat dataclass for the model, the losses and the optimisation.

Presets (``paper``, ``demo``, ``tiny``) are JSON files in ``model/presets/``; :func:`load_preset` reads one (or
any JSON file holding these fields, e.g. a run's saved config), applies keyword overrides, validates and returns
a :class:`LavimoConfig`. The resolved config is saved into every run and every checkpoint.

The dataclass defaults are the paper's values (Yin et al., arXiv 2403.00691) where the paper states them; the
fields marked "ours" are choices the paper does not specify.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "presets"

MODALITIES = ("tmv", "tm")
NEGATIVE_FILTERING = ("lavimo", "tmr", "soft", "none")


@dataclass
class LavimoConfig:
    """All settings of a LAVIMO run (model, losses, optimisation, training loop).

    Shapes: latents are ``(B, latent_dim)``; motion features ``(B, T, feature_dim)`` with ``T <= max_motion_len``
    (HumanML3D 263-dim features at 20 fps, Y-up, normalised with the shards' ``stats.npz``); video
    ``(B, num_frames, 3, image_size, image_size)`` CLIP-normalised.
    """

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

    # --- training augmentation of the video frames (dataset/augment.py; one draw per clip) ---
    hflip_p: float = 0.0  # horizontal flips; clips whose captions name a side are never flipped (see augment.py)
    randaugment_ops: int = 0  # torchvision RandAugment operations per clip (0 = off)
    randaugment_magnitude: int = 9  # RandAugment magnitude (torchvision's 0..30 scale)

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
    trust_weights_pickle: bool = False  # allow torch.load(weights_only=False) for checkpoints with pickled objects
    random_init: bool = False  # True: random backbones instead of pretrained weights (no files needed)

    # --- optimisation (paper: AdamW lr 1e-4, linear decay to 1e-5 after epoch 100, 400 epochs, batch 64) ---
    batch_size: int = 64
    lr: float = 1e-4
    lr_min: float = 1e-5
    lr_decay_start_epoch: int = 100
    epochs: int = 400
    optimizer: str = "adamw"
    weight_decay: float = 0.01  # ours (AdamW default)
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_scale: float = 1.0  # lr multiplier for the pretrained text/image backbones (ours)
    grad_clip: float = 1.0  # max global grad norm, 0 = off (ours)
    warmup_steps: int = 0

    # --- training loop ---
    seed: int = 0
    num_workers: int = 0
    epoch_batches: int | None = None  # batches per epoch for streaming loaders (None = one pass)
    eval_every: int = 10  # epochs between validation passes
    checkpoint_every: int = 10  # epochs between checkpoints
    log_every: int = 50  # steps between log lines
    amp: bool = False  # mixed precision on CUDA
    # DDP only: the contrastive losses and negative filtering over the global batch (every rank's latents and
    # sentence embeddings gathered, model/gather.py), as one process with batch_size x world_size; False = each
    # rank over its own batch_size rows (train.py --no-gather-negatives)
    gather_negatives: bool = True
    extra: dict = field(default_factory=dict)  # free-form settings for tools; not read by the model

    # ------------------------------------------------------------------
    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self.validate()

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
                     "ff_dim", "text_max_length", "batch_size", "epochs"):
            if int(getattr(self, name)) <= 0:
                bad(name, "must be > 0")
        for name in ("text_layers", "video_layers", "motion_layers", "decoder_layers"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if self.latent_dim % self.num_heads:
            bad("latent_dim", f"must be divisible by num_heads={self.num_heads}")
        if not 0.0 < self.frame_crop <= 1.0:
            bad("frame_crop", "must be in (0, 1] (fraction of the frame's short side kept)")
        if not 0.0 <= self.hflip_p <= 1.0:
            bad("hflip_p", "must be in [0, 1]")
        if self.randaugment_ops < 0 or not 0 <= self.randaugment_magnitude <= 30:
            bad("randaugment_ops", "randaugment_ops must be >= 0 and randaugment_magnitude in [0, 30]")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if self.lr <= 0 or self.lr_min < 0:
            bad("lr", "lr must be > 0 and lr_min >= 0")
        if self.grad_clip < 0:
            bad("grad_clip", "must be >= 0 (0 = off)")
        if self.activation not in ("gelu", "relu"):
            bad("activation", "must be 'gelu' or 'relu'")

    # ------------------------------------------------------------------
    def loader_kwargs(self) -> dict[str, Any]:
        """The fields ``dataset.stream.make_loader`` takes from the model: frame size and count, motion length,
        frame crop (training, validation and evaluation must read the shards the same way)."""
        return {"image_size": self.image_size, "num_frames": self.num_frames, "max_motion_len": self.max_motion_len,
                "frame_crop": self.frame_crop}

    def augment_kwargs(self) -> dict[str, Any]:
        """The training loader's augmentation settings (``make_loader(..., augment=...)``) held by the config;
        the other :class:`dataset.augment.AugmentConfig` fields keep their defaults."""
        return {"hflip_p": self.hflip_p, "randaugment_ops": self.randaugment_ops,
                "randaugment_magnitude": self.randaugment_magnitude}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LavimoConfig":
        """Build from a dict; missing fields take the defaults, unknown fields raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown LavimoConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**{k: _coerce(k, v) for k, v in d.items()})

    def replace(self, **overrides: Any) -> "LavimoConfig":
        """A copy with ``overrides`` applied (validated)."""
        d = self.to_dict()
        d.update(overrides)
        return LavimoConfig.from_dict(d)


_HINTS: dict[str, Any] | None = None


def _coerce(name: str, value: Any) -> Any:
    """Convert CLI-style strings ("0.1", "true", "none") to the field's declared type."""
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(LavimoConfig)
    hint = _HINTS.get(name)
    if not isinstance(value, str) or hint is None:
        return value
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if optional and value.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            return int(value)
        if base is float:
            return float(value)
        if typing.get_origin(base) is dict or base is dict:
            return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"LavimoConfig.{name}: cannot parse {value!r} as {base}") from exc
    return value


def list_presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str | os.PathLike, **overrides: Any) -> LavimoConfig:
    """Load a bundled preset (``paper``, ``demo``, ``tiny``) or a JSON file, apply overrides, validate.

    A JSON file may hold the fields at top level or under a ``"model"`` / ``"config"`` key (so a run's saved
    ``config.json`` can be passed). Overrides may be typed values or CLI strings (``fusion="false"``); unknown
    names raise ``ValueError``.
    """
    s = os.fspath(name_or_path)
    path = Path(s)
    if not path.suffix and (PRESET_DIR / f"{s}.json").is_file():
        path = PRESET_DIR / f"{s}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no preset or config file {s!r}; bundled presets: {list_presets()} (or pass a JSON file path)")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of LavimoConfig fields")
    for key in ("model", "config"):
        if key in data and isinstance(data[key], dict) and "latent_dim" in data[key]:
            data = data[key]
            break
    data = dict(data)
    data.pop("_comment", None)
    data.update(overrides)
    cfg = LavimoConfig.from_dict(data)
    log.debug("loaded preset %s -> %s", s, cfg.name)
    return cfg

"""The run's settings: how a LAVIMO model is trained (not what it is).

:class:`TrainConfig` holds the batch, the optimiser and its schedule, the epochs, the loop's periods, the
training loader's augmentation and the gathering of negatives across ranks. The model's architecture and
objective are :class:`lavimo.model.config.LavimoConfig`, saved in every checkpoint. A run (``RUN/config.json``) is
both: :class:`RunConfig`, ``{"model": ..., "train": ..., "trainer": ...}`` on disk.

Presets: ``training/presets/NAME.json`` holds the run's settings of the preset whose model is
``model/presets/NAME.json``; :func:`load_run_config` reads both (or a JSON file), routes each override to the
half that owns the field and validates.

Resume (``train.py --resume``): the model comes from the run (a flag that would change it is refused); the run's
settings are the saved ones with this command line's flags applied, every change logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavimo.core.errors import BadInputError, SetupError
from lavimo.core.jsonconfig import JsonConfig, read_config_json
from lavimo.model.config import PRESET_DIR as MODEL_PRESET_DIR
from lavimo.model.config import LavimoConfig

log = logging.getLogger(__name__)
run_log = logging.getLogger("train")  # train.py's log (the resume lines below are part of its story)

PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class TrainConfig(JsonConfig):
    """The settings of a training run. Defaults are the paper's (Yin et al., arXiv 2403.00691: AdamW, lr 1e-4
    with a linear decay to 1e-5 after epoch 100, 400 epochs, batch 64) where it states them, "ours" otherwise."""

    # --- optimisation ---
    batch_size: int = 64  # per rank (with global_batch_size set: derived, global_batch_size / ranks)
    # the global batch, the invariant of an elastic run (training/elastic.py): 0 = unset (batch_size per rank,
    # the shards split by rank); > 0 = batch_size follows the rank count and the sample order does not
    global_batch_size: int = 0
    loader_streams: int = 0  # elastic runs: loader streams of the global stream (0 = chosen at the start, saved)
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

    # --- training augmentation of the video frames (dataset/augment.py; one draw per clip) ---
    hflip_p: float = 0.0  # horizontal flips; clips whose captions name a side are never flipped (see augment.py)
    randaugment_ops: int = 0  # torchvision RandAugment operations per clip (0 = off)
    randaugment_magnitude: int = 9  # RandAugment magnitude (torchvision's 0..30 scale)

    # --- the loop ---
    seed: int = 0
    num_workers: int = 0  # loader worker processes per rank
    epoch_batches: int | None = None  # batches per epoch for streaming loaders (None or 0 = one pass)
    eval_every: int = 10  # epochs between validation passes
    checkpoint_every: int = 10  # epochs between checkpoints
    log_every: int = 50  # steps between log lines
    amp: bool = False  # mixed precision on CUDA (train.py --precision auto: bf16 when true)
    # DDP only: the contrastive losses and negative filtering over the global batch (every rank's latents and
    # sentence embeddings gathered, model/gather.py), as one process with batch_size x world_size; False = each
    # rank over its own batch_size rows (train.py --no-gather-negatives)
    gather_negatives: bool = True
    extra: dict = field(default_factory=dict)  # free-form settings for tools; not read by the trainer

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"TrainConfig.{name}: {msg} (got {getattr(self, name)!r})")

        for name in ("batch_size", "epochs"):
            if int(getattr(self, name)) <= 0:
                bad(name, "must be > 0")
        if self.lr <= 0 or self.lr_min < 0:
            bad("lr", "lr must be > 0 and lr_min >= 0")
        if self.grad_clip < 0:
            bad("grad_clip", "must be >= 0 (0 = off)")
        if str(self.optimizer).lower() != "adamw":
            bad("optimizer", "only 'adamw' (the paper's) is supported")
        if len(self.betas) != 2:
            bad("betas", "must be two numbers")
        if not 0.0 <= self.hflip_p <= 1.0:
            bad("hflip_p", "must be in [0, 1]")
        if self.randaugment_ops < 0 or not 0 <= self.randaugment_magnitude <= 30:
            bad("randaugment_ops", "randaugment_ops must be >= 0 and randaugment_magnitude in [0, 30]")
        if self.global_batch_size < 0 or self.loader_streams < 0:
            bad("global_batch_size", "global_batch_size and loader_streams must be >= 0 (0 = unset)")
        if self.loader_streams and self.global_batch_size and self.global_batch_size % self.loader_streams:
            bad("loader_streams", f"must divide global_batch_size {self.global_batch_size}")
        if self.epoch_batches is not None and self.epoch_batches < 0:
            bad("epoch_batches", "must be >= 0 (0 or None: one pass over the shards)")

    def augment_kwargs(self) -> dict[str, Any]:
        """The training loader's augmentation settings (``make_loader(..., augment=...)``); the other
        :class:`lavimo.dataset.augment.AugmentConfig` fields keep their defaults."""
        return {"hflip_p": self.hflip_p, "randaugment_ops": self.randaugment_ops,
                "randaugment_magnitude": self.randaugment_magnitude}


@dataclass
class RunConfig:
    """A training run's configuration: the model (saved in checkpoints) and the run's settings."""

    model: LavimoConfig
    train: TrainConfig

    @property
    def name(self) -> str:
        return self.model.name

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{"model": {...}, "train": {...}}`` (the shape of ``RUN/config.json`` without its ``trainer``)."""
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}

    def flat(self) -> dict[str, Any]:
        """Every field of both halves in one dict (their names never clash)."""
        return {**self.model.to_dict(), **self.train.to_dict()}

    def replace(self, **overrides: Any) -> "RunConfig":
        """A copy with ``overrides`` routed to the half that owns each field (unknown names raise ValueError)."""
        model_over, train_over = split_fields(overrides)
        return RunConfig(self.model.replace(**model_over), self.train.replace(**train_over))


def split_fields(values: dict[str, Any], saved: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` split into (model fields, run-setting fields); a name of neither raises ``ValueError``. With
    ``saved`` (values read from a file) a removed model field (``LavimoConfig.REMOVED_FIELDS``) goes to the model
    part, whose ``from_dict`` drops it; overrides never name one."""
    model_names, train_names = LavimoConfig.field_names(), TrainConfig.field_names()
    if saved:
        model_names = model_names | set(LavimoConfig.REMOVED_FIELDS)
    unknown = sorted(set(values) - model_names - train_names)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; model fields: {sorted(model_names)}; run settings: "
                         f"{sorted(train_names)}")
    return ({k: v for k, v in values.items() if k in model_names},
            {k: v for k, v in values.items() if k in train_names})


def load_run_config(name_or_path: str | os.PathLike, **overrides: Any) -> RunConfig:
    """A bundled preset (``paper``, ``demo``, ``tiny``: ``model/presets/NAME.json`` + ``training/presets/NAME.json``)
    or a JSON file, with ``overrides`` (typed values or CLI strings) routed to the model or the run's settings.

    A JSON file may be a run's ``config.json`` (``{"model": {...}, "train": {...}}``; also one written before the
    model / run split, whose ``"model"`` held both halves) or one flat object with fields of both. Raises
    ``FileNotFoundError`` (no such preset or file) or ``ValueError`` (bad JSON, unknown field, out-of-range value).
    """
    s = os.fspath(name_or_path)
    model_over, train_over = split_fields(overrides)
    if not Path(s).suffix and (PRESET_DIR / f"{s}.json").is_file():
        _, model_data = read_config_json(s, MODEL_PRESET_DIR)
        _, train_data = read_config_json(s, PRESET_DIR)
    else:
        path, data = read_config_json(s, PRESET_DIR)
        model_part = data.get("model")
        if isinstance(model_part, dict) and set(model_part) & TrainConfig.field_names():
            # a run's config.json from before the model / run split: "model" held both halves, "train" the
            # trainer's options (device, world size, ...), which are not settings
            model_data, train_data = split_fields(model_part, saved=True)
        elif isinstance(model_part, dict) or isinstance(data.get("train"), dict):
            model_data, train_data = dict(model_part or {}), dict(data.get("train") or {})
        else:
            try:
                model_data, train_data = split_fields(data, saved=True)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    return RunConfig(LavimoConfig.from_dict({**model_data, **model_over}),
                     TrainConfig.from_dict({**train_data, **train_over}))


def resolve_config(preset: str, overrides: dict[str, Any], run: Any, resume: bool) -> RunConfig:
    """Preset + flags (``overrides``) -> the run's :class:`RunConfig` (model + run settings); ``run`` a
    :class:`lavimo.training.run_dir.RunDir`.

    On resume the run's saved config is the base: the model is the checkpoint's (a flag that would change it
    is refused: that is another model, so another --out), the run's settings are the saved ones with this
    command line's flags applied, each change logged. Every problem is a :class:`SetupError`."""
    if not resume:
        return _load_config(preset, overrides)
    if not run.last_state.is_file():
        raise SetupError(f"--resume: no checkpoint to resume in {run.ckpt_dir}; start fresh without --resume")
    if not run.config.is_file():
        raise SetupError(f"--resume: {run.config} not found (nothing to resume in {run.root}); start fresh in "
                         "another --out without --resume")
    saved = _load_config(run.config, {})
    try:
        cfg = saved.replace(**overrides)
    except (ValueError, TypeError) as exc:
        raise SetupError(f"{run.config} (with the flags' overrides): {' '.join(str(exc).split())}") from exc
    model_changes = changes(saved.model.to_dict(), cfg.model.to_dict())
    if model_changes:
        raise SetupError(f"--resume cannot change the model of the saved run ({model_changes}): the checkpoint "
                         "holds that model; start a new --out instead")
    run_changes = changes(saved.train.to_dict(), cfg.train.to_dict())
    if run_changes:
        run_log.info("--resume with changed run settings: %s", run_changes)
    if cfg.train.epochs != saved.train.epochs:
        run_log.warning("--resume with epochs %d -> %d: the lr schedule is recomputed for the new length",
                        saved.train.epochs, cfg.train.epochs)
    return cfg


def changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """``"lr 0.0001 -> 5e-05, seed 0 -> 1"`` for the fields whose values differ ("" when none)."""
    return ", ".join(f"{k} {before[k]!r} -> {after[k]!r}" for k in sorted(after) if before.get(k) != after[k])


def _load_config(source: str | os.PathLike, overrides: dict[str, Any]) -> RunConfig:
    """load_run_config with its errors (missing file, bad JSON, unknown field, out-of-range value) as
    SetupError."""
    try:
        return load_run_config(source, **overrides)
    except (FileNotFoundError, BadInputError) as exc:  # BadInputError: not JSON, too big, too deep; names the file
        raise SetupError(str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise SetupError(f"{source} (with the flags' overrides): {' '.join(str(exc).split())}") from exc

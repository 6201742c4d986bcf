"""Self-contained safetensors checkpoints: weights + the resolved config + the text backbone's config and
tokenizer in the file's metadata, so ``load_checkpoint`` needs neither the training code nor the original
pretrained files."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dataset.atomic import atomic_path
from dataset.errors import BadInputError

from .config import LavimoConfig
from .lavimo import LavimoModel, build_model
from .weights import text_assets, write_text_assets

log = logging.getLogger(__name__)

FORMAT = "lavimo-checkpoint-v1"
META_FORMAT = "lavimo_format"
META_CONFIG = "lavimo_config"
META_TEXT = "lavimo_text_assets"
META_EXTRA = "lavimo_extra"


def _unwrap(model: nn.Module) -> LavimoModel:
    """The LavimoModel inside DDP / torch.compile wrappers."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
            model = getattr(model, attr)
    if not isinstance(model, LavimoModel):
        raise TypeError(f"save_checkpoint expects a LavimoModel, got {type(model).__name__}")
    return model


def save_checkpoint(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) atomically.

    Metadata: ``lavimo_format``, ``lavimo_config`` (the config JSON), ``lavimo_text_assets`` (the text backbone's
    config.json and tokenizer files as JSON {name: text}), ``lavimo_extra`` (``extra`` as JSON: epoch, step,
    metrics, ...). Tensors are saved in their current dtype from the CPU.
    """
    from safetensors.torch import save_model

    m = _unwrap(model)
    metadata = {
        META_FORMAT: FORMAT,
        META_CONFIG: json.dumps(m.cfg.to_dict(), sort_keys=True),
        META_TEXT: json.dumps(text_assets(m.text.backbone, m.text.tokenizer), sort_keys=True),
        META_EXTRA: json.dumps(extra or {}, sort_keys=True, default=str),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        # save_model drops duplicate names of tensors that share memory and makes tensors contiguous
        save_model(m, str(tmp), metadata=metadata, force_contiguous=True)
    log.info("saved checkpoint %s", path)
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``{"config": LavimoConfig, "extra": dict, "text_assets": dict}`` without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(path, "safetensors", f"not a readable safetensors file ({exc})") from exc
    if meta.get(META_FORMAT) != FORMAT or META_CONFIG not in meta:
        raise BadInputError(path, META_FORMAT, "not a LAVIMO checkpoint (no lavimo_config in the metadata)")
    try:
        cfg = LavimoConfig.from_dict(json.loads(meta[META_CONFIG]))
        assets = json.loads(meta.get(META_TEXT, "{}"))
        extra = json.loads(meta.get(META_EXTRA, "{}"))
    except (ValueError, TypeError) as exc:
        raise BadInputError(path, META_CONFIG, f"bad checkpoint metadata: {exc}") from exc
    return {"config": cfg, "extra": extra, "text_assets": assets}


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", **overrides: Any) -> LavimoModel:
    """Rebuild the model saved by :func:`save_checkpoint` and load its weights; returned in eval mode.

    No pretrained files are read: backbones are built from the saved config (and the saved text config and
    tokenizer) and overwritten by the checkpoint. ``overrides`` change non-architectural config fields (e.g.
    ``negative_filtering``, ``lr``). The ``extra`` dict is available as ``model.checkpoint_extra``.
    """
    from safetensors.torch import load_model

    info = read_checkpoint_metadata(path)
    cfg: LavimoConfig = info["config"]
    if overrides:
        cfg = cfg.replace(**overrides)
    with tempfile.TemporaryDirectory(prefix="lavimo-ckpt-") as tmp:
        assets_dir = write_text_assets(info["text_assets"], tmp) if info["text_assets"] else None
        model = build_model(cfg, pretrained=False, text_assets_dir=assets_dir)
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    except RuntimeError as exc:  # shape mismatches
        raise BadInputError(path, "weights", f"weights do not fit the saved config: {exc}") from exc
    if missing or unexpected:
        raise BadInputError(path, "weights", f"checkpoint does not match its config: missing {sorted(missing)[:5]}, "
                                             f"unexpected {sorted(unexpected)[:5]}")
    model.checkpoint_extra = info["extra"]
    return model.to(device).eval()


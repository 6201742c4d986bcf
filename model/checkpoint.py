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

from core.atomic import atomic_path
from core.errors import BadInputError

from .config import LavimoConfig
from .lavimo import LavimoModel, build_model
from .weights import text_assets, write_text_assets

PREPROCESS_VERSION = 1  # version of extra["preprocess"]
#: the fields of extra["preprocess"] (what :func:`preprocess_record` writes and ``search.model.load`` requires)
PREPROCESS_KEYS = ("version", "feature_mean", "feature_std", "feature_dim", "max_motion_len", "motion_crop",
                   "num_frames", "frame_sampling", "image_size", "frame_crop", "clip_mean", "clip_std",
                   "video_input", "text_model", "text_max_length")


def preprocess_record(cfg: LavimoConfig, mean: Any, std: Any) -> dict[str, Any]:
    """The ``extra["preprocess"]`` dict for a model config and the training shards' feature (mean, std).

    ``mean``/``std``: (D,) as ``dataset.stream.load_stats`` returns them (std already floored). Everything else
    comes from the config; the rule names describe the loader's evaluation path (``dataset/stream.py``).
    train.py writes it into every checkpoint; ``search.model.load`` reads it."""
    import numpy as np

    from dataset.augment import CLIP_MEAN, CLIP_STD

    return {
        "version": PREPROCESS_VERSION,
        "feature_mean": [float(x) for x in np.asarray(mean, np.float32)],
        "feature_std": [float(x) for x in np.asarray(std, np.float32)],
        "feature_dim": int(cfg.feature_dim),
        "max_motion_len": int(cfg.max_motion_len),
        "motion_crop": "first max_motion_len rows",
        "num_frames": int(cfg.num_frames),
        "frame_sampling": "segment centres (dataset.stream.SampleTransform.frame_indices, evaluation)",
        "image_size": int(cfg.image_size),
        "frame_crop": float(cfg.frame_crop),
        "clip_mean": list(CLIP_MEAN),
        "clip_std": list(CLIP_STD),
        "video_input": str(cfg.video_input),
        "text_model": str(cfg.text_model),
        "text_max_length": int(cfg.text_max_length),
    }


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


# text asset files a checkpoint may carry (the text backbone's config.json and tokenizer files)
_ASSET_SUFFIXES = (".json", ".txt", ".model")


def _json_object(meta: dict[str, str], key: str, path: Path, default: str | None = None) -> dict[str, Any]:
    """``meta[key]`` parsed as a JSON object, else BadInputError naming ``path`` and ``key``."""
    text = meta.get(key, default)
    if not isinstance(text, str):
        raise BadInputError(path, key, "missing from the safetensors metadata")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadInputError(path, key, f"not valid JSON ({' '.join(str(exc).split())[:120]})") from exc
    if not isinstance(value, dict):
        raise BadInputError(path, key, f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_text_assets(assets: dict[str, Any], path: Path) -> dict[str, str]:
    """The embedded text backbone files, refused unless they are plain data: plain file names with a
    .json/.txt/.model suffix, text contents, JSON files parse, a config.json with a string ``model_type``, and no
    ``auto_map`` (which would make transformers import code named by the file)."""
    for name, text in assets.items():
        if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name
                or "\x00" in name or not name.endswith(_ASSET_SUFFIXES)):
            raise BadInputError(path, META_TEXT, f"{str(name)[:80]!r} is not a plain text-asset file name "
                                                 f"({'/'.join(_ASSET_SUFFIXES)})")
        if not isinstance(text, str):
            raise BadInputError(path, META_TEXT, f"{name}: expected text, got {type(text).__name__}")
        if name.endswith(".json"):
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise BadInputError(path, META_TEXT, f"{name}: not valid JSON") from exc
            if isinstance(obj, dict) and "auto_map" in obj:
                raise BadInputError(path, META_TEXT, f"{name}: 'auto_map' (custom code) is not allowed in a "
                                                     "checkpoint")
            if name == "config.json" and not (isinstance(obj, dict) and isinstance(obj.get("model_type"), str)):
                raise BadInputError(path, META_TEXT, "config.json: expected a JSON object with a model_type")
    if "config.json" not in assets:  # without it the text backbone would be looked up by the config's name
        raise BadInputError(path, META_TEXT, "no config.json among the text assets (save_checkpoint embeds it)")
    return assets


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``{"config": LavimoConfig, "extra": dict, "text_assets": dict}`` without loading the weights.

    A checkpoint is third-party input: the safetensors header is parsed by ``safetensors`` (no pickle), the
    metadata fields must be JSON objects of the expected shape, the config must be a valid LavimoConfig; any
    other content raises :class:`BadInputError` naming the file and the field. ``FileNotFoundError`` when absent.
    """
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
    conf = _json_object(meta, META_CONFIG, path)
    try:
        cfg = LavimoConfig.from_saved(conf)  # a checkpoint from before the model / run split loads too
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
        raise BadInputError(path, META_CONFIG, f"bad checkpoint config: {' '.join(str(exc).split())[:300]}") from exc
    assets = _check_text_assets(_json_object(meta, META_TEXT, path), path)
    extra = _json_object(meta, META_EXTRA, path, "{}")
    return {"config": cfg, "extra": extra, "text_assets": assets}


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", **overrides: Any) -> LavimoModel:
    """Rebuild the model saved by :func:`save_checkpoint` and load its weights; returned in eval mode.

    No pretrained files are read: backbones are built from the saved config (and the saved text config and
    tokenizer) and overwritten by the checkpoint. ``overrides`` change non-architectural config fields (e.g.
    ``negative_filtering``, ``threshold``). The ``extra`` dict is available as ``model.checkpoint_extra``.
    """
    from safetensors.torch import load_model

    info = read_checkpoint_metadata(path)
    cfg: LavimoConfig = info["config"]
    if overrides:
        cfg = cfg.replace(**overrides)
    with tempfile.TemporaryDirectory(prefix="lavimo-ckpt-") as tmp:
        assets_dir = write_text_assets(info["text_assets"], tmp)
        try:
            model = build_model(cfg, pretrained=False, text_assets_dir=assets_dir)
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, OSError) as exc:
            raise BadInputError(path, f"{META_CONFIG}/{META_TEXT}", f"cannot build the model it describes: "
                                f"{' '.join(str(exc).split())[:300]}") from exc
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    except Exception as exc:  # noqa: BLE001 - shape/dtype mismatches, damaged tensor data (SafetensorError)
        raise BadInputError(path, "weights", f"weights do not fit the saved config: {exc}") from exc
    if missing or unexpected:
        raise BadInputError(path, "weights", f"checkpoint does not match its config: missing {sorted(missing)[:5]}, "
                                             f"unexpected {sorted(unexpected)[:5]}")
    model.checkpoint_extra = info["extra"]
    return model.to(device).eval()


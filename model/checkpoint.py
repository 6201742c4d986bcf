"""Self-contained safetensors checkpoints: weights + the resolved config + the text backbone's config and
tokenizer in the file's metadata, so ``load_checkpoint`` needs neither the training code nor the original
pretrained files.

Checkpoints are untrusted input (docs/security.md, "Checkpoints and training state"). Loading one costs at most
about what its tensors take: the header is checked before anything is allocated
(:func:`lavimo.model.safetensors_header.read_header`: length capped and inside the file, tensor extents matching their
shapes and the bytes present), the metadata JSON is size- and depth-capped, the text backbone's ``config.json``
may not declare more than :data:`MAX_LAYERS` layers, and the model the config describes is first built on the
``meta`` device (no memory) and compared with the file's tensors: a config that describes a bigger model than the
file holds, or tensors of other shapes, is refused before the real model is allocated."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lavimo.core.atomic import atomic_path
from lavimo.core.errors import BadInputError
from lavimo.core.jsonconfig import loads_bounded

from .config import MAX_LAYERS, LavimoConfig, too_many_layers
from .lavimo import LavimoModel, build_model
from .weights import TEXT_ASSET_SUFFIXES, text_assets, write_text_assets

PREPROCESS_VERSION = 1  # version of extra["preprocess"]
#: the fields of extra["preprocess"] (what :func:`preprocess_record` writes and ``lavimo.search.model.load`` requires)
PREPROCESS_KEYS = ("version", "feature_mean", "feature_std", "feature_dim", "max_motion_len", "motion_crop",
                   "num_frames", "frame_sampling", "image_size", "frame_crop", "clip_mean", "clip_std",
                   "video_input", "text_model", "text_max_length")


def preprocess_record(cfg: LavimoConfig, mean: Any, std: Any) -> dict[str, Any]:
    """The ``extra["preprocess"]`` dict for a model config and the training shards' feature (mean, std).

    ``mean``/``std``: (D,) as ``lavimo.dataset.shards.stream.load_stats`` returns them (std already floored). Everything else
    comes from the config; the rule names describe the loader's evaluation path (``dataset/shards/stream.py``).
    train.py writes it into every checkpoint; ``lavimo.search.model.load`` reads it."""
    import numpy as np

    from lavimo.dataset.augment import CLIP_MEAN, CLIP_STD

    return {
        "version": PREPROCESS_VERSION,
        "feature_mean": [float(x) for x in np.asarray(mean, np.float32)],
        "feature_std": [float(x) for x in np.asarray(std, np.float32)],
        "feature_dim": int(cfg.feature_dim),
        "max_motion_len": int(cfg.max_motion_len),
        "motion_crop": "first max_motion_len rows",
        "num_frames": int(cfg.num_frames),
        "frame_sampling": "segment centres (lavimo.dataset.shards.stream.SampleTransform.frame_indices, evaluation)",
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

#: the most bytes of one JSON metadata field: the config and extra are a few KB, the text assets (a tokenizer's
#: vocabulary and merges) up to a few MB; the whole header is capped by safetensors_header.MAX_HEADER_BYTES (32 MiB)
MAX_META_BYTES = {META_CONFIG: 1 * 2**20, META_EXTRA: 16 * 2**20, META_TEXT: 16 * 2**20}
#: the most elements of the buffers a checkpoint's config makes the model compute rather than load (position
#: tables: max_motion_len x latent_dim; the paper's are 0.1 M): 16 M elements, 64 MB of float32
MAX_UNSAVED_ELEMENTS = 2**24


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
        try:
            save_model(m, str(tmp), metadata=metadata, force_contiguous=True)
        except Exception as exc:  # noqa: BLE001 - safetensors reports I/O errors (a full disk) as SafetensorError
            raise _as_os_error(exc, path) from exc
    log.info("saved checkpoint %s", path)
    return path


def _as_os_error(exc: BaseException, path: Path) -> BaseException:
    """``exc`` as an OSError naming ``path`` when it is safetensors' report of an I/O error ("... (os error 28)",
    e.g. a full disk), so callers see the errno; ``exc`` itself otherwise."""
    m = re.search(r"\(os error (\d+)\)", str(exc))
    if isinstance(exc, OSError) or m is None:
        return exc
    code = int(m[1])
    return OSError(code, os.strerror(code), str(path))


def _json_object(meta: dict[str, str], key: str, path: Path, default: str | None = None) -> dict[str, Any]:
    """``meta[key]`` parsed as a JSON object (size capped by :data:`MAX_META_BYTES`, nesting by
    lavimo.core.jsonconfig.MAX_JSON_DEPTH), else BadInputError naming ``path`` and ``key``."""
    text = meta.get(key, default)
    if not isinstance(text, str):
        raise BadInputError(path, key, "missing from the safetensors metadata")
    value = loads_bounded(text, path, key, max_bytes=MAX_META_BYTES.get(key, 2**20))
    if not isinstance(value, dict):
        raise BadInputError(path, key, f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_text_assets(assets: dict[str, Any], path: Path) -> dict[str, str]:
    """The embedded text backbone files, refused unless they are plain data: plain file names with a
    .json/.txt/.model suffix, text contents, JSON files parse, a config.json with a string ``model_type``, and no
    ``auto_map`` (which would make transformers import code named by the file)."""
    for name, text in assets.items():
        if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name
                or "\x00" in name or not name.endswith(TEXT_ASSET_SUFFIXES)):
            raise BadInputError(path, META_TEXT, f"{str(name)[:80]!r} is not a plain text-asset file name "
                                                 f"({'/'.join(TEXT_ASSET_SUFFIXES)})")
        if not isinstance(text, str):
            raise BadInputError(path, META_TEXT, f"{name}: expected text, got {type(text).__name__}")
        if name.endswith(".json"):
            try:
                obj = loads_bounded(text, path, META_TEXT, max_bytes=MAX_META_BYTES[META_TEXT])
            except BadInputError as exc:
                raise BadInputError(path, META_TEXT, f"{name}: {exc.message}") from exc
            if isinstance(obj, dict) and "auto_map" in obj:
                raise BadInputError(path, META_TEXT, f"{name}: 'auto_map' (custom code) is not allowed in a "
                                                     "checkpoint")
            if name == "config.json" and not (isinstance(obj, dict) and isinstance(obj.get("model_type"), str)):
                raise BadInputError(path, META_TEXT, "config.json: expected a JSON object with a model_type")
            over = too_many_layers(obj) if name == "config.json" else None
            if over:
                raise BadInputError(path, META_TEXT, f"config.json: {over} layers, more than the "
                                                     f"{MAX_LAYERS} accepted")
    if "config.json" not in assets:  # without it the text backbone would be looked up by the config's name
        raise BadInputError(path, META_TEXT, "no config.json among the text assets (save_checkpoint embeds it)")
    return assets


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``{"config": LavimoConfig, "extra": dict, "text_assets": dict, "header": safetensors_header.Header}``
    without loading the weights: the header checked by :func:`lavimo.model.safetensors_header.read_header`, the
    metadata fields JSON objects of the expected shape, the config a valid LavimoConfig; else
    :class:`BadInputError` naming the file and the field. ``FileNotFoundError`` when absent.
    """
    from .safetensors_header import read_header

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    header = read_header(path)
    meta = header.metadata
    if meta.get(META_FORMAT) != FORMAT or META_CONFIG not in meta:
        raise BadInputError(path, META_FORMAT, "not a LAVIMO checkpoint (no lavimo_config in the metadata)")
    conf = _json_object(meta, META_CONFIG, path)
    try:
        cfg = LavimoConfig.from_saved(conf)  # a checkpoint from before the model / run split loads too
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
        raise BadInputError(path, META_CONFIG, f"bad checkpoint config: {' '.join(str(exc).split())[:300]}") from exc
    assets = _check_text_assets(_json_object(meta, META_TEXT, path), path)
    extra = _json_object(meta, META_EXTRA, path, "{}")
    return {"config": cfg, "extra": extra, "text_assets": assets, "header": header}


@contextlib.contextmanager
def _quiet(name: str):
    """Logger ``name`` (and its children) at WARNING for the block: the meta-device build's "built LAVIMO: N
    parameters" would describe a model that is never allocated."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_fits_file(skeleton: nn.Module, header: Any, path: Path) -> None:
    """Refuse (BadInputError naming ``path``) a model, built on the ``meta`` device from the checkpoint's config,
    that the file's tensors cannot fill: more elements than the file holds, or a tensor of another shape."""
    sd = skeleton.state_dict()
    for name, t in sd.items():
        found = header.tensors.get(name)
        if found is not None and tuple(found[1]) != tuple(t.shape):
            raise BadInputError(path, "weights", f"tensor {name!r} is {list(found[1])} in the file but the saved "
                                                 f"config describes {list(t.shape)}; refused before allocating the "
                                                 "model")
    saved = {id(t): t.numel() for t in sd.values()}
    need = sum(saved.values())
    have = sum(math.prod(shape) for _, shape in header.tensors.values())
    if need > have:
        raise BadInputError(path, f"{META_CONFIG}/{META_TEXT}", f"the saved config describes a model of {need} "
                            f"weights but the file holds {have}; refused before allocating it")
    # buffers the file does not hold (sinusoidal position tables sized by max_motion_len, ...)
    unsaved = sum(b.numel() for b in skeleton.buffers() if id(b) not in saved)
    if unsaved > MAX_UNSAVED_ELEMENTS:
        raise BadInputError(path, META_CONFIG, f"the saved config describes {unsaved} elements of buffers that are "
                            f"not in the file (more than {MAX_UNSAVED_ELEMENTS}; e.g. max_motion_len too large); "
                            "refused before allocating them")


def _build(cfg: LavimoConfig, assets_dir: Path, path: str | os.PathLike) -> LavimoModel:
    """``build_model`` from a checkpoint's config and text assets; BadInputError naming ``path`` when it fails."""
    try:
        return build_model(cfg, pretrained=False, text_assets_dir=assets_dir)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, OSError) as exc:
        raise BadInputError(path, f"{META_CONFIG}/{META_TEXT}", f"cannot build the model it describes: "
                            f"{' '.join(str(exc).split())[:300]}") from exc


def _check_fits(cfg: LavimoConfig, info: dict[str, Any], assets_dir: Path, path: Path) -> None:
    """Build ``cfg``'s model on the ``meta`` device (no memory) and refuse it unless the checkpoint's tensors
    (``info["header"]``) can fill it (:func:`_check_fits_file`)."""
    with torch.device("meta"), _quiet("model"):  # shapes only, no memory; checked before allocating
        skeleton = _build(cfg, assets_dir, path)
    _check_fits_file(skeleton, info["header"], path)


def check_checkpoint_fits(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_checkpoint_metadata` plus :func:`_check_fits` (no memory allocated); returns the metadata.
    ``train.py --resume`` calls it before building the run's model. :class:`BadInputError` naming the file."""
    info = read_checkpoint_metadata(path)
    with tempfile.TemporaryDirectory(prefix="lavimo-ckpt-") as tmp:
        _check_fits(info["config"], info, write_text_assets(info["text_assets"], tmp), Path(path))
    return info


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", **overrides: Any) -> LavimoModel:
    """Rebuild the model saved by :func:`save_checkpoint` from its saved config, text config and tokenizer (no
    pretrained files read) and load its weights; in eval mode, ``extra`` as ``model.checkpoint_extra``.
    ``overrides``: non-architectural config fields (e.g. ``negative_filtering``, ``threshold``)."""
    from safetensors.torch import load_model

    info = read_checkpoint_metadata(path)
    cfg: LavimoConfig = info["config"]
    if overrides:
        cfg = cfg.replace(**overrides)
    with tempfile.TemporaryDirectory(prefix="lavimo-ckpt-") as tmp:
        assets_dir = write_text_assets(info["text_assets"], tmp)
        _check_fits(cfg, info, assets_dir, Path(path))
        model = _build(cfg, assets_dir, path)
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    except Exception as exc:  # noqa: BLE001 - shape/dtype mismatches, damaged tensor data (SafetensorError)
        raise BadInputError(path, "weights", f"weights do not fit the saved config: {exc}") from exc
    if missing or unexpected:
        raise BadInputError(path, "weights", f"checkpoint does not match its config: missing {sorted(missing)[:5]}, "
                                             f"unexpected {sorted(unexpected)[:5]}")
    model.checkpoint_extra = info["extra"]
    return model.to(device).eval()


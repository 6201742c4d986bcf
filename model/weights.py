"""Pretrained backbones from local files only: the Hugging Face text encoder and the open_clip image tower.

Nothing here downloads. Weights are looked for as an absolute path or one relative to the current directory,
then under ``$LAVIMO_WEIGHTS`` (default ``<repo>/weights``, e.g. ``weights/distilbert-base-uncased/``,
``weights/clip/ViT-B-32-kinetics400.pt``), then in the Hugging Face hub cache (text models by repo id, CLIP by
open_clip pretrained tag, also the legacy ``~/.cache/clip``). Missing weights raise :class:`MissingWeightsError`
saying what to put where, unless ``random_init`` is set. A CLIP checkpoint may be any state dict that holds the
image tower under some prefix (OpenAI, open_clip, Kinetics-400 fine-tunes: :func:`extract_visual_state_dict`).

Weights files are untrusted input and are only ever read as tensors (docs/security.md, "Checkpoints and training
state"): ``.safetensors`` (header checked first by :func:`lavimo.model.safetensors_header.read_header`), anything else
with ``torch.load(weights_only=True)`` (tensors and plain containers; no object is unpickled). TorchScript
archives (a zip with a ``code/`` folder, e.g. OpenAI's ``ViT-B-32.pt``) hold code that loading them would run;
they are refused with one line saying how to convert them (:data:`CONVERT_HINT`). No option, and no setting
read from a file, switches any of this off.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from lavimo.core.errors import BadInputError
from lavimo.core.restricted_unpickle import torch_load_tensors
from lavimo.dataset.text_embed import bundled_model_path

from .config import LavimoConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: text asset files a checkpoint carries (the text backbone's config.json and tokenizer files)
TEXT_ASSET_SUFFIXES = (".json", ".txt", ".model")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights the config asks for are not on disk (and random_init is off)."""


def weights_root() -> Path:
    """``$LAVIMO_WEIGHTS`` or ``<repo>/weights``: where pretrained backbones are looked for."""
    return Path(os.environ.get("LAVIMO_WEIGHTS", REPO_ROOT / "weights"))


def _candidates(name: str) -> list[Path]:
    p = Path(os.path.expanduser(name))
    if p.is_absolute():
        return [p]
    return [Path.cwd() / p, weights_root() / p]


# -- Text backbone -------------------------------------------------------------------------------------------
def resolve_text_model(name: str) -> Path | None:
    """Directory of the Hugging Face text model ``name`` (``"minilm"``: the bundled all-MiniLM-L6-v2), or ``None``
    when it is nowhere on disk (see the module docstring; never the network)."""
    if name.lower() in ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"):
        return bundled_model_path()
    for cand in _candidates(name):
        if (cand / "config.json").is_file():
            return cand
    base = name.split("/")[-1]
    if base != name and (weights_root() / base / "config.json").is_file():
        return weights_root() / base
    if not Path(os.path.expanduser(name)).is_absolute():
        try:
            from huggingface_hub import try_to_load_from_cache

            for repo in (name, f"distilbert/{name}" if name.startswith("distilbert") else None):
                if repo is None:
                    continue
                hit = try_to_load_from_cache(repo, "config.json")
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit).parent
        except Exception as exc:  # noqa: BLE001 - a broken cache is the same as no cache
            log.debug("hub cache lookup for %s failed: %s", name, exc)
    return None


def _default_text_config(name: str):
    """The architecture of a known text model when its files are absent (random init only)."""
    from transformers import BertConfig, DistilBertConfig

    low = name.lower()
    if "distilbert" in low:
        return DistilBertConfig()  # distilbert-base-uncased: 6 layers, dim 768, vocab 30522
    if "minilm" in low:
        return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    if "bert" in low:
        return BertConfig()
    raise MissingWeightsError(
        f"text model {name!r} not found and its architecture is unknown; put the Hugging Face model directory at "
        f"{weights_root() / name} (or pass text_model=<dir>)")


def load_text_tokenizer(source: Path | None):
    """Tokenizer from ``source``; the bundled MiniLM tokenizer (bert-base-uncased WordPiece vocabulary, the
    same 30522 tokens as distilbert-base-uncased) when ``source`` is ``None``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source if source is not None else bundled_model_path()))


def load_text_backbone(cfg: LavimoConfig, assets_dir: str | os.PathLike | None = None) -> tuple[nn.Module, Any]:
    """The Hugging Face encoder and its tokenizer for ``cfg``: random weights from ``assets_dir``'s config
    (checkpoint loading) or from ``cfg.text_backbone_config`` (the ``tiny`` preset), else the pretrained model of
    :func:`resolve_text_model` (random, same architecture, with ``cfg.random_init``)."""
    from transformers import AutoConfig, AutoModel

    if assets_dir is not None:
        conf = AutoConfig.from_pretrained(str(assets_dir))
        return AutoModel.from_config(conf), load_text_tokenizer(Path(assets_dir))

    src = resolve_text_model(cfg.text_model)
    if cfg.text_backbone_config:
        kw = dict(cfg.text_backbone_config)
        model_type = kw.pop("model_type", "bert")
        conf = AutoConfig.for_model(model_type, **kw)
        if src is None:
            log.warning("tokenizer for %s not found; using the bundled MiniLM (bert-base-uncased) tokenizer",
                        cfg.text_model)
        tok = load_text_tokenizer(src)
        if conf.vocab_size < len(tok):
            raise ValueError(f"text_backbone_config.vocab_size={conf.vocab_size} < tokenizer size {len(tok)}")
        return AutoModel.from_config(conf), tok

    if src is None:
        if not cfg.random_init:
            raise MissingWeightsError(
                f"text model {cfg.text_model!r} not found. Put the Hugging Face model directory (config.json, "
                f"model.safetensors, tokenizer files) at {weights_root() / cfg.text_model} or set LAVIMO_WEIGHTS, "
                f"pass text_model=<dir>, have it in the Hugging Face cache, use text_model=minilm (bundled), or set "
                f"random_init=true for random weights. Nothing is downloaded.")
        conf = _default_text_config(cfg.text_model)
        log.warning("text model %s not on disk: random %s backbone, MiniLM (bert-base-uncased) tokenizer",
                    cfg.text_model, conf.model_type)
        return AutoModel.from_config(conf), load_text_tokenizer(None)

    tok = load_text_tokenizer(src)
    if cfg.random_init:
        log.info("random_init: random text backbone with the architecture of %s", src)
        return AutoModel.from_config(AutoConfig.from_pretrained(str(src))), tok
    log.info("loading text backbone from %s", src)
    return AutoModel.from_pretrained(str(src)), tok


def text_assets(backbone: nn.Module, tokenizer: Any) -> dict[str, str]:
    """The text backbone's ``config.json`` and tokenizer files as {file name: text}, to embed in checkpoints."""
    with tempfile.TemporaryDirectory(prefix="lavimo-text-") as tmp:
        backbone.config.to_json_file(os.path.join(tmp, "config.json"))
        tokenizer.save_pretrained(tmp)
        out = {}
        for p in sorted(Path(tmp).iterdir()):
            if p.is_file() and p.suffix in TEXT_ASSET_SUFFIXES:
                out[p.name] = p.read_text(encoding="utf-8")
    return out


def write_text_assets(assets: dict[str, str], folder: str | os.PathLike) -> Path:
    """Write :func:`text_assets` output into ``folder`` (for :func:`load_text_backbone`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in assets.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"bad text asset name {name!r}")
        (folder / name).write_text(text, encoding="utf-8")
    return folder


# -- Video backbone (open_clip image tower) ------------------------------------------------------------------
def vision_spec(cfg: LavimoConfig) -> tuple[dict, int, bool]:
    """(open_clip vision_cfg dict, embed_dim, quick_gelu) for ``cfg``'s video backbone: ``cfg.video_backbone_config``
    (a vision_cfg with an extra ``embed_dim``) wins over the model name (``-quickgelu`` suffix allowed);
    ``image_size`` is ``cfg.image_size`` (pretrained position embeddings are interpolated to it)."""
    quick = bool(cfg.video_quick_gelu)
    if cfg.video_backbone_config:
        vc = dict(cfg.video_backbone_config)
        embed_dim = int(vc.pop("embed_dim", cfg.latent_dim))
    else:
        from open_clip import get_model_config

        name = cfg.video_backbone
        mc = get_model_config(name)
        if mc is None:
            raise ValueError(f"unknown open_clip model {name!r} (video_backbone); or give video_backbone_config")
        quick = quick or bool(mc.get("quick_gelu", False)) or name.endswith("-quickgelu")
        vc = dict(mc["vision_cfg"])
        embed_dim = int(mc["embed_dim"])
    if vc.get("timm_model_name"):
        raise ValueError("timm image towers are not supported (they may download weights); use a ViT config")
    if isinstance(vc.get("layers"), (list, tuple)):
        raise ValueError("ResNet CLIP towers are not supported; use a ViT")
    vc["image_size"] = int(cfg.image_size)
    return vc, embed_dim, quick


def build_visual(cfg: LavimoConfig) -> nn.Module:
    """A randomly initialised open_clip ``VisionTransformer`` for ``cfg`` (output: (N, embed_dim))."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    vc, embed_dim, quick = vision_spec(cfg)
    visual = _build_vision_tower(embed_dim, CLIPVisionCfg(**vc), quick_gelu=quick)
    visual.output_dim = embed_dim
    return visual


def resolve_clip_weights(cfg: LavimoConfig) -> Path | None:
    """The CLIP checkpoint file for ``cfg.video_weights``, or ``None`` if none is configured; raises
    :class:`MissingWeightsError` when it is configured but not on disk."""
    spec = cfg.video_weights
    if not spec:
        return None
    for cand in _candidates(spec):
        if cand.is_file():
            return cand
    searched = [str(c) for c in _candidates(spec)]
    name = cfg.video_backbone
    try:
        from open_clip.pretrained import get_pretrained_cfg

        pcfg = get_pretrained_cfg(name.replace("-quickgelu", ""), spec) or get_pretrained_cfg(name, spec)
    except Exception:  # noqa: BLE001
        pcfg = {}
    if pcfg:
        hub = (pcfg.get("hf_hub") or "").strip("/")
        if hub:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                hit = try_to_load_from_cache(hub, fname)
                searched.append(f"hf cache {hub}/{fname}")
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
        url = pcfg.get("url") or ""
        if url:
            legacy = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
            searched.append(str(legacy))
            if legacy.is_file():
                return legacy
    raise MissingWeightsError(
        f"CLIP weights {spec!r} for {name} not found (looked in: {', '.join(searched)}). The paper starts from "
        f"CLIP {name} fine-tuned on Kinetics-400: put that checkpoint (a state dict (.safetensors or weights-only "
        f".pt), open_clip or a Kinetics fine-tune wrapping CLIP; TorchScript archives must be converted first) at "
        f"{weights_root() / 'clip' / 'ViT-B-32-kinetics400.pt'}, or pass "
        f"video_weights=<file> / video_weights=openai (if in your open_clip cache), or set random_init=true. "
        f"Nothing is downloaded.")


def missing_pretrained(cfg: LavimoConfig) -> list[str]:
    """One line per pretrained file or directory ``cfg`` needs that is nowhere on disk, saying what to put where
    (empty when all are there, or with ``random_init``), so a command reports them all at once (train.py: exit 2)."""
    if cfg.random_init:
        return []
    out = []
    if not cfg.text_backbone_config and resolve_text_model(cfg.text_model) is None:
        out.append(f"text backbone {cfg.text_model!r}: a Hugging Face model directory (config.json, "
                   f"model.safetensors or pytorch_model.bin, tokenizer files) at {weights_root() / cfg.text_model} "
                   f"(e.g. `huggingface-cli download distilbert-base-uncased --local-dir "
                   f"{weights_root() / cfg.text_model}` on a machine with network), or in the Hugging Face cache")
    if cfg.modalities == "tmv" and cfg.video_weights and not cfg.video_backbone_config:
        try:
            resolve_clip_weights(cfg)
        except MissingWeightsError:
            out.append(f"video backbone {cfg.video_backbone} weights {cfg.video_weights!r}: the paper's CLIP "
                       f"ViT-B/32 fine-tuned on Kinetics-400 (its reference [7]), or OpenAI's CLIP ViT-B/32 "
                       f"(`ViT-B-32.pt` converted to .safetensors: TorchScript archives are refused) or an "
                       f"open_clip checkpoint, as a file at "
                       f"{weights_root() / cfg.video_weights}; or video_weights=openai when open_clip's cache "
                       f"holds it")
    return out


#: how to turn a file LAVIMO refuses (TorchScript, pickled objects) into one it reads: on a machine you trust
CONVERT_HINT = ("convert it to .safetensors once, on a machine you trust (the one-line command is in docs/model.md, "
                "\"Converting weights\"), then pass the .safetensors file")


def _is_torchscript(path: Path) -> bool:
    """True for TorchScript archives (zip files with a ``code/`` folder or ``constants.pkl``), e.g. OpenAI's
    ``ViT-B-32.pt``. Only the zip's directory is read."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in f"/{n}" or n.endswith("/constants.pkl") or n == "constants.pkl"
                       for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _load_any(path: Path) -> Any:
    """The tensors (or plain containers of tensors) in a pretrained weights file; never runs code from it.

    ``.safetensors``: :func:`lavimo.model.safetensors_header.load_tensors` (header checked first); a TorchScript
    archive: refused; anything else: ``torch.load(weights_only=True)``. Every refusal is a :class:`BadInputError`
    naming the file and saying how to convert it."""
    from lavimo.model.safetensors_header import load_tensors

    if path.suffix.lower() == ".safetensors":
        return load_tensors(path)
    if _is_torchscript(path):
        raise BadInputError(path, None, f"a TorchScript archive (it holds code, which is never run: weights are "
                                        f"loaded as tensors only); {CONVERT_HINT}")
    try:
        return torch_load_tensors(path, mmap=zipfile.is_zipfile(path))
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a pickle the weights-only loader refuses, a damaged file
        detail = " ".join(str(exc).split())[:160]
        raise BadInputError(path, None, f"not a weights-only checkpoint ({type(exc).__name__}: {detail}); objects "
                                        f"other than tensors are never unpickled; {CONVERT_HINT}") from exc


def _find_state_dict(obj: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    """The first mapping (searching nested dicts) that holds an image tower's ``conv1.weight``."""
    if not isinstance(obj, dict) or depth > 3:
        return None
    if any(isinstance(k, str) and k.endswith("conv1.weight") for k in obj):
        return obj
    for key in ("state_dict", "model", "model_state_dict", "module", "network", "net"):
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found is not None:
                return found
    for v in obj.values():
        found = _find_state_dict(v, depth + 1)
        if found is not None:
            return found
    return None


def extract_visual_state_dict(obj: Any, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The image tower's weights (keys as in open_clip's ``VisionTransformer``, float32) from a loaded checkpoint.

    The tower's prefix is the one under which a 4-D ``conv1.weight`` (width, 3, patch, patch) sits next to a
    ``positional_embedding`` (e.g. ``visual.``, ``module.visual.``, ``model.image_encoder.``).
    """
    sd = _find_state_dict(obj)
    if sd is None:
        raise ValueError(f"{source}: no CLIP image tower found (no '*conv1.weight' key)")
    prefix = None
    for k, v in sd.items():
        if not (isinstance(k, str) and k.endswith("conv1.weight")) or not torch.is_tensor(v) or v.ndim != 4:
            continue
        if v.shape[1] != 3:
            continue
        pre = k[: -len("conv1.weight")]
        if f"{pre}positional_embedding" in sd and f"{pre}class_embedding" in sd:
            prefix = pre
            break
    if prefix is None:
        raise ValueError(f"{source}: found conv1.weight but no ViT image tower (class/positional embedding) beside it")
    out = {k[len(prefix):]: v.float() for k, v in sd.items()
           if isinstance(k, str) and k.startswith(prefix) and torch.is_tensor(v)}
    return out


def load_visual_weights(visual: nn.Module, path: str | os.PathLike) -> None:
    """Load a CLIP checkpoint's image tower into ``visual`` (open_clip ``VisionTransformer``), in place.

    Position embeddings are interpolated when the checkpoint's grid differs from ``visual``'s image size.
    Raises ``ValueError`` with the mismatching keys when the checkpoint is a different architecture, and
    :class:`BadInputError` (a ``ValueError``) naming the file when it is not a tensors-only file (TorchScript,
    pickled objects, a damaged or crafted safetensors header).
    """
    from open_clip.model import resize_pos_embed

    path = Path(path)
    sd = extract_visual_state_dict(_load_any(path), str(path))
    wrapped = {f"visual.{k}": v for k, v in sd.items()}
    resize_pos_embed(wrapped, SimpleNamespace(visual=visual))
    sd = {k[len("visual."):]: v for k, v in wrapped.items()}
    own = visual.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape_bad = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or shape_bad:
        raise ValueError(
            f"{path}: CLIP image tower does not match video_backbone (missing {missing[:5]}, shape mismatch "
            f"{[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in shape_bad[:5]]}); check video_backbone / "
            f"video_backbone_config against the checkpoint")
    if unexpected:
        log.info("%s: ignoring %d extra image-tower keys (e.g. %s)", path, len(unexpected), unexpected[:3])
    visual.load_state_dict({k: sd[k] for k in own}, strict=True)
    log.info("loaded CLIP image tower from %s (%d tensors)", path, len(own))


def build_video_backbone(cfg: LavimoConfig, pretrained: bool = True) -> nn.Module:
    """The open_clip image tower for ``cfg``; pretrained from :func:`resolve_clip_weights` unless
    ``cfg.random_init`` or ``pretrained=False`` (checkpoint loading)."""
    visual = build_visual(cfg)
    if not pretrained or cfg.random_init:
        return visual
    path = resolve_clip_weights(cfg)
    if path is None:
        level = logging.INFO if cfg.video_backbone_config else logging.WARNING
        log.log(level, "video_weights not set: the image tower (%s) starts from random weights",
                "custom config" if cfg.video_backbone_config else cfg.video_backbone)
        return visual
    load_visual_weights(visual, path)
    return visual

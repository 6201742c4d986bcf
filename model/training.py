"""Helpers of train.py: devices and precision, DDP set-up, parameter groups, RNG and training-state
checkpoints, the NaN/inf guard, and validation retrieval metrics.

Each helper has one job; the training loop itself lives in the root ``train.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dataset.atomic import atomic_path

log = logging.getLogger(__name__)

STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# devices, precision, distributed


@dataclass(frozen=True)
class DistInfo:
    """Process placement: ``rank`` of ``world_size`` processes, ``local_rank`` on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_rank_from_env() -> int:
    """The process's GPU index on its node: torchrun's ``LOCAL_RANK`` (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available else ``cpu``; ``cuda`` without CUDA is a
    ValueError (train.py and evaluate.py print it as an error, no traceback)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r} (auto|cpu|cuda)")


def resolve_precision(name: str | None, device: torch.device, amp: bool = True) -> str:
    """``None``/``auto`` -> ``bf16`` on a GPU that supports it when ``amp`` (the config's field; the paper
    preset sets it), else ``fp32``. ``fp16`` needs CUDA."""
    if name in (None, "auto"):
        if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"unknown precision {name!r} (bf16|fp16|fp32)")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs --device cuda (use bf16 or fp32 on CPU)")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``bf16``/``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def init_distributed(device: torch.device) -> DistInfo:
    """Initialise ``torch.distributed`` when launched by torchrun (``WORLD_SIZE`` > 1).

    ``device`` comes from :func:`resolve_device` (which already selected ``cuda:LOCAL_RANK``). Backend: ``nccl``
    on CUDA, ``gloo`` on CPU. Returns the placement (rank 0 of 1 otherwise).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = local_rank_from_env()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("DDP: rank %d/%d (local %d), backend %s", rank, world, local, backend)
    return DistInfo(rank, world, local)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class LossModule(nn.Module):
    """Wraps a LAVIMO model so that ``forward(batch)`` is ``model.compute_losses(batch)``.

    DistributedDataParallel only synchronises what runs through ``forward``; wrapping the loss computation
    this way lets DDP see the whole training step.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:  # noqa: D102
        return self.model.compute_losses(batch)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch dict to ``device`` (lists of strings stay as they are)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# optimiser


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


def make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the config's ``lr``, ``betas``, ``weight_decay`` and
    ``backbone_lr_scale`` (``cfg.optimizer`` must be ``adamw``, the paper's choice)."""
    if str(getattr(cfg, "optimizer", "adamw")).lower() != "adamw":
        raise ValueError(f"optimizer {cfg.optimizer!r} is not supported (adamw)")
    groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          backbone_lr_scale=cfg.backbone_lr_scale)
    for g in groups:
        log.info("param group %-18s %10d params  lr %.3g  wd %.3g", g["name"],
                 sum(p.numel() for p in g["params"]), g["lr"], g["weight_decay"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------------------------------------
# randomness and training state


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and all CUDA devices)."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy (global) and torch (CPU + CUDA) in a ``torch.load(weights_only=True)``-safe
    form (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation, loader construction) without perturbing the training RNG streams."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def gather_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (collective call in DDP)."""
    mine = rng_state()
    if not info.enabled:
        return [mine]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` the training state (see :func:`make_training_state`)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state written by :func:`save_training_state` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from (was the run saved at least once?)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training-state version {state.get('version')} != {STATE_VERSION}")
    return state


# ----------------------------------------------------------------------------------------------------------
# NaN / inf guard


class TrainingDiverged(RuntimeError):
    """Raised when the loss or gradients stay non-finite for too many consecutive steps."""


class NonFiniteGuard:
    """Counts skipped steps with a non-finite loss or gradient norm; raises :class:`TrainingDiverged`
    after ``max_consecutive`` skips in a row (0 = never)."""

    def __init__(self, max_consecutive: int = 20, total: int = 0, consecutive: int = 0):
        self.max_consecutive = max_consecutive
        self.total = total
        self.consecutive = consecutive

    def update(self, finite: bool, step: int) -> bool:
        """Record one step; returns True when the step must be skipped."""
        if finite:
            self.consecutive = 0
            return False
        self.total += 1
        self.consecutive += 1
        log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row, %d in total)",
                    step, self.consecutive, self.total)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"training diverged: {self.consecutive} consecutive steps with a non-finite loss or gradient "
                f"(last at step {step}, {self.total} skipped in total). Try a lower --lr, --precision fp32, "
                f"a smaller grad_clip, or check the shards for NaN/inf motion features.")
        return True

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}


# ----------------------------------------------------------------------------------------------------------
# one optimisation step

LOSS_TERMS = ("loss", "tm", "vm", "tv", "recon")
FUSION_NAMES = ("text", "video", "motion")


class Stepper:
    """One training step of ``net`` (a :class:`LossModule`, possibly DDP-wrapped / compiled).

    forward under autocast -> backward (through the GradScaler for fp16) -> unscale -> global grad-norm clip ->
    AdamW step -> zero grads. A step whose loss (on any rank) or gradient norm is not finite is skipped (no
    parameter update) and counted by ``guard``. The lr scheduler is *not* stepped here.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
                 device: torch.device, precision: str, grad_clip: float, guard: NonFiniteGuard,
                 dinfo: DistInfo = DistInfo()):
        self.net, self.optimizer, self.scaler = net, optimizer, scaler
        self.device, self.precision, self.guard, self.dinfo = device, precision, guard, dinfo
        self.clip = grad_clip if grad_clip > 0 else float("inf")
        self.trainable = [p for g in optimizer.param_groups for p in g["params"]]
        self.last_grad_norm = float("nan")

    def __call__(self, batch: Mapping[str, Any], step: int) -> dict[str, float] | None:
        """Run one step on ``batch`` (moved to the device here); returns the scalar loss terms and the mean
        fusion weights (``fusion_text`` / ``fusion_video`` / ``fusion_motion``), or None when skipped."""
        batch = to_device(batch, self.device)
        with autocast(self.device, self.precision):
            out = self.net(batch)
        loss = out["loss"]
        self.scaler.scale(loss).backward()  # always: DDP ranks must take part in the same all-reduces
        self.scaler.unscale_(self.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
        bad = ~torch.isfinite(loss.detach().float())
        if self.precision != "fp16":  # fp16 overflow is the GradScaler's job (it skips those steps itself)
            bad = bad | ~torch.isfinite(gnorm.float())
        bad = bad.float().reshape(1)
        if self.dinfo.enabled:  # every rank skips when any rank's loss is not finite
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        # everything the host needs in one device->host copy (one sync per step)
        names = [k for k in LOSS_TERMS if torch.is_tensor(out.get(k))]
        values = [bad, gnorm.detach().float().reshape(1)] + [out[k].detach().float().reshape(1) for k in names]
        fw = out.get("fusion_weights")
        if torch.is_tensor(fw) and fw.numel():
            names += [f"fusion_{n}" for n in FUSION_NAMES]
            values.append(fw.detach().float().mean(0).reshape(-1))
        host = torch.cat(values).tolist()
        self.last_grad_norm = host[1]
        if self.guard.update(host[0] == 0.0, step):
            self.optimizer.zero_grad(set_to_none=True)
            if self.precision == "fp16":
                self.scaler.update()
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return dict(zip(names, host[2:]))


# ----------------------------------------------------------------------------------------------------------
# running means of the loss terms


class RunningMeans:
    """Sums of scalar terms over steps (kept as python floats; state survives a resume)."""

    def __init__(self, state: Mapping[str, Any] | None = None):
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}
        self.count: int = int(state["count"]) if state else 0
        self.samples: int = int(state.get("samples", 0)) if state else 0
        self.seconds: float = float(state.get("seconds", 0.0)) if state else 0.0

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.count) for k, v in self.sums.items()}

    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count, "samples": self.samples, "seconds": self.seconds}


# ----------------------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def encode_split(model: nn.Module, batches: Iterable[Mapping[str, Any]], device: torch.device, precision: str,
                 with_video: bool = True) -> dict[str, Any]:
    """Encode a whole split: ``{"keyid": [N], "text": (N,C), "video": (N,C) | None, "motion": (N,C),
    "sent_emb": (N,D) | None}`` float32 on CPU (latents as the model returns them, not normalised)."""
    was_training = model.training
    model.eval()
    keyids: list[str] = []
    out: dict[str, list[torch.Tensor]] = {"text": [], "video": [], "motion": [], "sent_emb": []}
    try:
        for batch in batches:
            b = to_device(batch, device)
            with autocast(device, precision):
                out["text"].append(model.encode_text(list(b["text"])).float().cpu())
                if with_video:
                    out["video"].append(model.encode_video(b["video"]).float().cpu())
                out["motion"].append(model.encode_motion(b["motion"], b["mask"]).float().cpu())
            if torch.is_tensor(b.get("sent_emb")):
                out["sent_emb"].append(b["sent_emb"].float().cpu())
            keyids.extend(batch["keyid"])
    finally:
        model.train(was_training)
    cat = {k: (torch.cat(v) if v else None) for k, v in out.items()}
    return {"keyid": keyids, **cat}


def mean_over_ranks(values: Mapping[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar values over ranks (collective in DDP; every rank must pass the same keys)."""
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / info.world_size).tolist()))


def gather_embeddings(emb: dict[str, Any], info: DistInfo) -> dict[str, Any] | None:
    """Concatenate every rank's :func:`encode_split` output on rank 0 (others get None); collective in DDP."""
    if not info.enabled:
        return emb
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, emb)
    if not info.is_main:
        return None
    out: dict[str, Any] = {"keyid": [k for p in parts for k in p["keyid"]]}
    for key in ("text", "video", "motion", "sent_emb"):
        ts = [p[key] for p in parts if p[key] is not None]
        out[key] = torch.cat(ts) if ts else None
    if len(set(out["keyid"])) != len(out["keyid"]):
        log.warning("validation: %d duplicate keyids across ranks", len(out["keyid"]) - len(set(out["keyid"])))
    return out


def retrieval_scores(emb: Mapping[str, Any]) -> dict[str, float]:
    """Validation retrieval metrics t2m (text->motion) and, when video latents exist, v2m (video->motion),
    with ``model.metrics`` (same code as evaluate.py; standard protocol, no text-similarity threshold).

    Keys: ``t2m/R@1``, ``t2m/R@5``, ``t2m/R@10``, ``t2m/MedR`` (and ``v2m/...``), plus ``score``: the mean over
    the evaluated directions of (R@1 + R@5 + R@10) / 3 — the number that selects ``best.safetensors``.
    """
    from model.metrics import retrieval_metrics, similarity_matrix

    n = len(emb["keyid"])
    if n < 2:
        raise ValueError(f"validation needs at least 2 samples, got {n}")
    dirs = {"t2m": emb["text"]}
    if emb.get("video") is not None:
        dirs["v2m"] = emb["video"]
    res: dict[str, float] = {}
    scores = []
    for name, query in dirs.items():
        sims = similarity_matrix(query.numpy(), emb["motion"].numpy())
        m = retrieval_metrics(sims)
        for k in ("R@1", "R@5", "R@10", "MedR"):
            res[f"{name}/{k}"] = float(m[k])
        scores.append((m["R@1"] + m["R@5"] + m["R@10"]) / 3.0)
    res["score"] = float(np.mean(scores))
    res["n"] = float(n)
    return res

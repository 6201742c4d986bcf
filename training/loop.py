"""Helpers of the training loop: DDP set-up, the optimiser, RNG and training-state checkpoints, the skip budget
and NaN/inf guard, one optimisation step (:class:`Stepper`), and validation retrieval metrics.

Each helper has one job; the loop itself is :class:`lavimo.training.trainer.Trainer`. Devices and precision
are :mod:`lavimo.core.device`; the parameter groups are the model's
(:meth:`lavimo.model.lavimo.LavimoModel.parameter_groups`); validation encodes with
:func:`lavimo.evaluation.encode.encode_split` and scores with :mod:`lavimo.evaluation.metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lavimo.core.atomic import atomic_path
from lavimo.core.errors import BadInputError
from lavimo.core.device import autocast
from lavimo.core.keyids import is_keyid
from lavimo.evaluation.metrics import retrieval_metrics, similarity_matrix
from lavimo.evaluation.protocols import EncodedSplit
from lavimo.model.lavimo import FUSION_NAMES, LOSS_KEYS
from lavimo.training.tensor_tree import load_tree, tree_to_bytes

log = logging.getLogger(__name__)

#: the training state's format: 2 = a safetensors tensor tree (RUN/checkpoints/last.state.safetensors); 1 was a
#: torch pickle (last.state.pt), no longer read
STATE_VERSION = 2


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

    def __init__(self, model: nn.Module, gather_negatives: bool = True):
        super().__init__()
        self.model = model
        self.gather_negatives = gather_negatives  # the run's setting (TrainConfig.gather_negatives)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:  # noqa: D102
        return self.model.compute_losses(batch, gather_negatives=self.gather_negatives)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch dict to ``device`` (lists of strings stay as they are)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# optimiser


def make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW over the model's :meth:`~lavimo.model.lavimo.LavimoModel.parameter_groups` with the run's ``lr``,
    ``betas``, ``weight_decay`` and ``backbone_lr_scale`` (``cfg`` a :class:`lavimo.training.config.TrainConfig`;
    ``cfg.optimizer`` must be ``adamw``, the paper's choice)."""
    if str(getattr(cfg, "optimizer", "adamw")).lower() != "adamw":
        raise ValueError(f"optimizer {cfg.optimizer!r} is not supported (adamw)")
    groups = model.parameter_groups(lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    backbone_lr_scale=cfg.backbone_lr_scale)
    for g in groups:
        log.info("param group %-18s %10d params  lr %.3g  wd %.3g", g["name"],
                 sum(p.numel() for p in g["params"]), g["lr"], g["weight_decay"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


#: what a parameter group holds of the run's settings: its base lr (``lr`` x the backbone scale, the schedule's
#: starting point), weight decay and AdamW betas. A saved optimiser state brings back the saved values.
GROUP_SETTINGS = ("initial_lr", "weight_decay", "betas")


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Per parameter group, :data:`GROUP_SETTINGS` of a freshly built optimiser (the run's current settings)."""
    return [{k: g[k] for k in GROUP_SETTINGS} for g in optimizer.param_groups]


def apply_group_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                         settings: list[dict[str, Any]]) -> None:
    """After ``load_state_dict`` on resume: the run's current settings (from :func:`group_settings` of the fresh
    optimiser) replace the saved ones in every group, the scheduler's base lrs follow them, and each group's lr
    is recomputed for the current step with the current schedule (``base_lr x factor(step)``, exactly what the
    scheduler computes; unchanged settings give the very same numbers). Raises ``ValueError`` when the group
    count differs (another model)."""
    if len(settings) != len(optimizer.param_groups):
        raise ValueError(f"{len(optimizer.param_groups)} parameter groups in the saved optimiser state, "
                         f"{len(settings)} in this model")
    for group, values in zip(optimizer.param_groups, settings):
        group.update(values)
    scheduler.base_lrs = [values["initial_lr"] for values in settings]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# ----------------------------------------------------------------------------------------------------------
# randomness and training state


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and all CUDA devices)."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy (global) and torch (CPU + CUDA) in a form a tensor tree stores
    (:mod:`lavimo.training.tensor_tree`: tensors, ints, floats, strings, tuples)."""
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


def save_training_state(path: str | os.PathLike, state: dict[str, Any],
                        before_rename: Callable[[], Any] | None = None) -> None:
    """Atomically write the training state as a ``.safetensors`` tensor tree (:mod:`lavimo.training.tensor_tree`:
    tensors plus JSON, no pickle): written to a temp file in the same directory, fsynced and renamed, so a crash
    or a full disk mid-write leaves the previous file (or none) in place, never a truncated one. ``before_rename``
    runs after the temp file is complete and before the rename (train.py writes the matching weights there): when
    it raises, the previous state file stays. The state is stamped with :data:`STATE_VERSION`, which
    :func:`load_training_state` checks."""
    data = tree_to_bytes({**state, "version": STATE_VERSION})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
        if before_rename is not None:
            before_rename()


# field -> accepted types of a training state (see training/trainer.py, Trainer.save)
_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "batch_in_epoch": (int,), "step": (int,), "steps_per_epoch": (int,),
    "optimizer": (dict,), "scheduler": (dict,), "scaler": (dict,), "rng": (list, tuple),
    "best_score": (float, int, type(None)), "nonfinite": (dict,), "period": (dict,),
}


def load_training_state(path: str | os.PathLike, complete: bool = False) -> dict[str, Any]:
    """Load a training state written by :func:`save_training_state`.

    A tensor tree (:func:`lavimo.training.tensor_tree.load_tree`): safetensors and JSON, nothing is unpickled and
    no code runs. Raises ``FileNotFoundError`` when the file is absent and :class:`BadInputError` naming the file
    (and the field) when it is truncated, not a torch file, has another ``version``, or mistypes a field
    train.py reads; with ``complete`` (train.py --resume) every one of those fields must be present.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from (was the run saved at least once?)")
    try:
        state = load_tree(path)
    except BadInputError as exc:  # truncated, not safetensors (an older pickled state), a malformed tree
        raise BadInputError(path, exc.field, f"unreadable training state ({exc.message})") from exc
    if not isinstance(state, dict):
        raise BadInputError(path, None, f"not a training state (a {type(state).__name__}, expected a dict)")
    if state.get("version") != STATE_VERSION:
        raise BadInputError(path, "version", f"training-state version {state.get('version')!r} != {STATE_VERSION}")
    for name, types in _STATE_FIELDS.items():
        if name not in state:
            if complete:
                raise BadInputError(path, name, "missing from the training state")
            continue
        value = state[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise BadInputError(path, name, f"has type {type(value).__name__}")
        if isinstance(value, int) and name != "best_score" and value < 0:
            raise BadInputError(path, name, f"is negative ({value})")
    return state


class TrainingStalled(RuntimeError):
    """Training cannot make progress on this data: no usable batch, no optimiser step in an epoch, or more
    skipped samples than ``--max-skip-fraction`` allows. ``counts`` maps skip reason -> samples (train.py
    exits with status 1)."""

    def __init__(self, message: str, counts: Mapping[str, int] | None = None):
        super().__init__(message)
        self.counts = dict(counts or {})


def format_counts(counts: Mapping[str, int]) -> str:
    """``{"motion shape": 3, "video": 1}`` -> ``"motion shape: 3, video: 1"`` (largest first); ``"none"``."""
    items = sorted(((str(k), int(v)) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k}: {v}" for k, v in items) or "none"


def loader_skip_counts(loader: Any) -> dict[str, int]:
    """Samples the loader skipped so far by reason (``loader.skip_counts`` when the loader has it, else its
    total under ``"skipped"``)."""
    counts = getattr(loader, "skip_counts", None)
    if isinstance(counts, Mapping) and counts:
        return {str(k): int(v) for k, v in counts.items()}
    total = int(getattr(loader, "skipped", 0) or 0)
    return {"skipped": total} if total else {}


class SkipBudget:
    """Stops an epoch whose loader skips too much: more than ``max_fraction`` x ``epoch_samples`` samples
    (this rank's samples per epoch: steps_per_epoch x batch size) skipped within one epoch raises
    :class:`TrainingStalled` as soon as it happens. ``max_fraction`` = inf never stops."""

    def __init__(self, max_fraction: float, epoch_samples: int):
        if not max_fraction >= 0:  # also refuses NaN
            raise ValueError(f"--max-skip-fraction must be >= 0 (inf = never stop), got {max_fraction}")
        self.max_fraction, self.epoch_samples = float(max_fraction), int(epoch_samples)
        self.limit = self.max_fraction * self.epoch_samples
        self._base_total = 0
        self._base_counts: dict[str, int] = {}

    def start_epoch(self, loader: Any) -> None:
        """Remember the loader's counters at the start of an epoch."""
        self._base_total = int(getattr(loader, "skipped", 0) or 0)
        self._base_counts = loader_skip_counts(loader)

    def epoch_counts(self, loader: Any) -> dict[str, int]:
        """Skipped samples by reason since :meth:`start_epoch`."""
        now = loader_skip_counts(loader)
        return {k: v - self._base_counts.get(k, 0) for k, v in now.items() if v - self._base_counts.get(k, 0)}

    def epoch_skipped(self, loader: Any) -> int:
        return int(getattr(loader, "skipped", 0) or 0) - self._base_total

    def check(self, loader: Any, epoch: int, rank: int = 0) -> None:
        """Raise :class:`TrainingStalled` when this epoch's skipped samples exceed the limit."""
        n = self.epoch_skipped(loader)
        if n > self.limit:
            counts = self.epoch_counts(loader)
            raise TrainingStalled(
                f"epoch {epoch}: the loader skipped {n} samples on rank {rank}, more than --max-skip-fraction "
                f"{self.max_fraction:g} x {self.epoch_samples} samples per epoch (skipped by reason: "
                f"{format_counts(counts)}); check the shards (build-shards check SHARDS) or raise "
                f"--max-skip-fraction", counts)


def describe_keyids(keyids: Any, limit: int = 16) -> str:
    """The batch's keyids for a log line (at most ``limit``; values that are not keyids are quoted)."""
    if not isinstance(keyids, (list, tuple)):
        return "?"
    shown = [k if is_keyid(k) else repr(k)[:40] for k in keyids[:limit]]
    more = f" (+{len(keyids) - limit} more)" if len(keyids) > limit else ""
    return ",".join(shown) + more


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

    def update(self, finite: bool, step: int, keyids: Any = None, local: bool | None = None) -> bool:
        """Record one step; returns True when the step must be skipped. ``keyids`` (the batch's) are logged
        with a skipped step; ``local`` False says this rank's own loss was finite (another rank's was not)."""
        if finite:
            self.consecutive = 0
            return False
        self.total += 1
        self.consecutive += 1
        where = "" if local is None or local else " (on another rank; this rank's loss was finite)"
        log.warning("step %d: non-finite loss or gradient%s, step skipped (%d in a row, %d in total); batch "
                    "keyids: %s", step, where, self.consecutive, self.total, describe_keyids(keyids))
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
        local_bad = bad.clone()
        if self.dinfo.enabled:  # every rank skips when any rank's loss is not finite
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        # everything the host needs in one device->host copy (one sync per step)
        names = [k for k in LOSS_KEYS if torch.is_tensor(out.get(k))]
        values = [bad, local_bad, gnorm.detach().float().reshape(1)]
        values += [out[k].detach().float().reshape(1) for k in names]
        fw = out.get("fusion_weights")
        if torch.is_tensor(fw) and fw.numel():
            names += [f"fusion_{n}" for n in FUSION_NAMES]
            values.append(fw.detach().float().mean(0).reshape(-1))
        host = torch.cat(values).tolist()
        self.last_grad_norm = host[2]
        if self.guard.update(host[0] == 0.0, step, keyids=batch.get("keyid"), local=host[1] != 0.0):
            self.optimizer.zero_grad(set_to_none=True)
            if self.precision == "fp16":
                self.scaler.update()
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return dict(zip(names, host[3:]))


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


def mean_over_ranks(values: Mapping[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar values over ranks (collective in DDP; every rank must pass the same keys)."""
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / info.world_size).tolist()))


def gather_embeddings(split: EncodedSplit | None, info: DistInfo) -> dict[str, Any] | None:
    """The latents of a validation split, ``{"keyid": [N], "text": (N,C), "video": (N,C) | None,
    "motion": (N,C)}`` float32 numpy, from every rank's :func:`lavimo.evaluation.encode.encode_split` output (None on a
    rank that got no sample), concatenated on rank 0 (others get None); collective in DDP."""
    emb: dict[str, Any] = {"keyid": [], "text": None, "video": None, "motion": None}
    if split is not None:
        emb = {"keyid": list(split.keyids), "text": split.text, "video": split.video, "motion": split.motion}
    if not info.enabled:
        return emb
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, emb)
    if not info.is_main:
        return None
    out: dict[str, Any] = {"keyid": [k for p in parts for k in p["keyid"]]}
    for key in ("text", "video", "motion"):
        arrays = [p[key] for p in parts if p[key] is not None]
        out[key] = np.concatenate(arrays) if arrays else None
    if len(set(out["keyid"])) != len(out["keyid"]):
        log.warning("validation: %d duplicate keyids across ranks", len(out["keyid"]) - len(set(out["keyid"])))
    return out


def retrieval_scores(emb: Mapping[str, Any]) -> dict[str, float]:
    """Validation retrieval metrics t2m (text->motion) and, when video latents exist, v2m (video->motion),
    with ``lavimo.evaluation.metrics`` (same code as evaluate.py; standard protocol, no text-similarity threshold).

    Keys: ``t2m/R@1``, ``t2m/R@5``, ``t2m/R@10``, ``t2m/MedR`` (and ``v2m/...``), plus ``score``: the mean over
    the evaluated directions of (R@1 + R@5 + R@10) / 3 — the number that selects ``best.safetensors``.
    """
    n = len(emb["keyid"])
    if n < 2:
        raise ValueError(f"validation needs at least 2 samples, got {n}")
    dirs = {"t2m": emb["text"]}
    if emb.get("video") is not None:
        dirs["v2m"] = emb["video"]
    res: dict[str, float] = {}
    scores = []
    for name, query in dirs.items():
        sims = similarity_matrix(_numpy(query), _numpy(emb["motion"]))
        m = retrieval_metrics(sims)
        for k in ("R@1", "R@5", "R@10", "MedR"):
            res[f"{name}/{k}"] = float(m[k])
        scores.append((m["R@1"] + m["R@5"] + m["R@10"]) / 3.0)
    res["score"] = float(np.mean(scores))
    res["n"] = float(n)
    return res


def _numpy(x: Any) -> np.ndarray:
    """A CPU tensor or an array as a numpy array."""
    return x.numpy() if torch.is_tensor(x) else np.asarray(x)

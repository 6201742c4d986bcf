"""Elastic runs: the global batch is the invariant (``global_batch_size``, train.py ``--global-batch-size``).

The per-rank batch is ``global_batch_size / ranks`` (refused when it does not divide), the steps per epoch are
``train samples // global batch`` whatever the rank count, and the training loader is
:mod:`lavimo.dataset.shards.elastic`'s: ``loader_streams`` streams whose batches are a function of (seed, epoch,
step) only. A run resumed on another number of ranks thus continues the same epoch with the same samples in the
same order; :func:`resume_statement` says what is and is not exact (logged, and in run.json's session).
Without ``global_batch_size`` nothing changes: ``batch_size`` is per rank and the shards are split by rank.
"""

from __future__ import annotations

from typing import Any

from lavimo.core.errors import SetupError
from lavimo.training.config import RunConfig, TrainConfig
from lavimo.training.loop import DistInfo

#: the most loader streams chosen by default (each holds a shuffle buffer on the rank that reads it)
MAX_DEFAULT_STREAMS = 1024


def default_streams(global_batch: int, n_shards: int, world_size: int, num_workers: int) -> int:
    """The loader streams of a new elastic run: the largest divisor of ``global_batch`` not above the ranks x
    workers of this launch (the per-rank loader's parallelism), the train shards and
    :data:`MAX_DEFAULT_STREAMS`, preferring a multiple of the ranks (then no stream is read by two ranks)."""
    target = max(1, min(n_shards, world_size * max(1, num_workers), MAX_DEFAULT_STREAMS))
    divisors = [d for d in range(1, target + 1) if global_batch % d == 0]
    return max([d for d in divisors if d % world_size == 0] or divisors)


def apply_layout(run_cfg: RunConfig, dinfo: DistInfo, manifests: dict[str, dict], batch_flag: bool) -> RunConfig:
    """The run's settings for this launch: unchanged without ``global_batch_size``; else ``batch_size`` = the
    global batch / ranks and ``loader_streams`` chosen (:func:`default_streams`) when unset, both saved in
    config.json. ``batch_flag``: ``--batch-size`` was given (refused beside a global batch). SetupError (exit 2)
    when the global batch is not a multiple of the ranks or of the streams, or the shards are fewer than the
    streams."""
    tc = run_cfg.train
    g, w = int(tc.global_batch_size), dinfo.world_size
    if not g:
        return run_cfg
    if batch_flag:
        raise SetupError(f"--batch-size is per rank; this run sets the global batch ({g}): give one of "
                         "--batch-size / --global-batch-size")
    if g % w:
        raise SetupError(f"--global-batch-size {g} is not a multiple of the {w} ranks (per-rank batch = global / "
                         "ranks): choose a global batch or a rank count that divides it")
    n_shards = len(manifests["train"].get("shards") or [])
    streams = int(tc.loader_streams) or default_streams(g, n_shards, w, tc.num_workers)
    if n_shards and streams > n_shards:
        raise SetupError(f"loader_streams {streams} > the {n_shards} train shards: every loader stream needs a "
                         "shard (set loader_streams lower, or rebuild the shards with a smaller --samples-per-shard)")
    return RunConfig(run_cfg.model, tc.replace(batch_size=g // w, loader_streams=streams))


def elastic_train_loader(shards: Any, cfg: Any, tc: TrainConfig, epoch: int, steps: int, dinfo: DistInfo,
                         shuffle_buffer: int | None = None, verify: bool = False):
    """The training loader of one epoch of an elastic run (:func:`lavimo.dataset.shards.elastic
    .make_elastic_loader`): ``steps`` batches of ``tc.batch_size`` rows on this rank."""
    from lavimo.dataset.shards.elastic import make_elastic_loader

    kw = {} if shuffle_buffer is None else {"shuffle_buffer": shuffle_buffer}
    loader = make_elastic_loader(shards, "train", global_batch=tc.global_batch_size, streams=tc.loader_streams,
                                 epoch_batches=steps, rank=dinfo.rank, world_size=dinfo.world_size,
                                 num_workers=tc.num_workers, seed=tc.seed, augment=tc.augment_kwargs(),
                                 verify=verify, **cfg.loader_kwargs(), **kw)
    loader.set_epoch(epoch)
    return loader


def loader_layout(tc: TrainConfig) -> tuple[int, int]:
    """(global batch, loader streams) of a run's settings; (0, 0) without a global batch (the streams unused)."""
    g = int(tc.global_batch_size or 0)
    return (g, int(tc.loader_streams or 0)) if g else (0, 0)


def saved_loader_layout(state: dict[str, Any], fallback: tuple[int, int] | None) -> tuple[int, int] | None:
    """The loader layout a checkpoint was written with: the training state's ``loader_layout`` (two
    non-negative ints), else ``fallback`` (the saved config.json's, read before this session rewrote it)."""
    value = state.get("loader_layout")
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        return (value[0], value[1]) if value[0] else (0, 0)
    return fallback


def layout_change(saved: tuple[int, int] | None, tc: TrainConfig) -> str:
    """``"global batch 0 -> 64, loader streams 0 -> 8"`` when this launch's loader layout differs from the
    saved one (``saved``: :func:`saved_loader_layout`; None = unknown, taken as unchanged), else ""."""
    if saved is None:
        return ""
    now = loader_layout(tc)
    parts = [f"{name} {a} -> {b}" for name, a, b in (("global batch", saved[0], now[0]),
                                                      ("loader streams", saved[1], now[1])) if a != b]
    return ", ".join(parts)


def resume_statement(tc: TrainConfig, saved_world_size: int, world_size: int, *, changed_layout: str = "",
                     batch_in_epoch: int = 0) -> str:
    """One line: what a resume from a checkpoint written by ``saved_world_size`` ranks on ``world_size`` ranks
    keeps exactly and what it does not (docs/training.md, "Elastic resume"). ``changed_layout``: the loader
    layout change (:func:`layout_change`, "" when none); with it and a checkpoint inside an epoch
    (``batch_in_epoch`` > 0) the sample order is not the same: the interrupted epoch goes on with the new
    loader's batches."""
    counters = "step/epoch counters, optimiser, scheduler and lr schedule exact"
    if changed_layout:
        where = f"resume on {world_size} rank(s) of a checkpoint written by {saved_world_size}"
        if batch_in_epoch > 0:
            return (f"{where}: NOT the same sample order (loader layout changed: {changed_layout}; the interrupted "
                    f"epoch continues at batch {batch_in_epoch} with the new loader's batches: samples of it may "
                    f"repeat or be missed until it ends); {counters}; RNG streams "
                    f"{'restored' if saved_world_size == world_size else 'reseeded'}")
        changed_at_boundary = (f"; loader layout changed at an epoch boundary ({changed_layout}): the next epochs "
                               "follow the new layout's sample order")
    else:
        changed_at_boundary = ""
    return _statement(tc, saved_world_size, world_size, counters) + changed_at_boundary


def _statement(tc: TrainConfig, saved_world_size: int, world_size: int, counters: str) -> str:
    """:func:`resume_statement` when the loader layout is unchanged."""
    if saved_world_size == world_size:
        return (f"resume on the same {world_size} rank(s): exact ({counters}; sample order and every rank's RNG "
                "state restored; bit-identical weights on CPU)")
    where = f"resume on {world_size} rank(s) of a checkpoint written by {saved_world_size}"
    not_exact = (f"not exact: dropout and other model RNG (reseeded per rank); the reconstruction loss, a mean "
                 "over each rank's valid motion frames, averaged over ranks (it moves with the split when clip "
                 f"lengths differ); float reductions over {world_size} rank(s) instead of {saved_world_size} "
                 "(without dropout and reconstruction the weights agree to rounding, not bitwise)")
    if not tc.global_batch_size:
        return (f"{where}, per-rank batch {tc.batch_size} (no global batch set): NOT the same sample order (the "
                "shards are split among the ranks anew: samples of the interrupted epoch may repeat or be missed "
                f"until it ends); {counters}; {not_exact}")
    g, s = tc.global_batch_size, tc.loader_streams
    shared = "" if s % world_size == 0 else (
        f"; {s} streams on {world_size} ranks: some streams are read by more than one rank, each keeping its own "
        "rows (more reading, same samples)")
    return (f"{where}: global batch {g} kept ({g // world_size} per rank); same global sample order and "
            f"augmentation ({s} loader streams seeded by seed, epoch and stream; the interrupted epoch continues "
            f"at its next batch); {counters}; {not_exact}{shared}")

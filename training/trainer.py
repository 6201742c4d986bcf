"""The training loop: :class:`Trainer` (``fit`` -> ``train_one_epoch`` -> one step, ``validate``, ``save``,
``resume``), holding the run's state explicitly (epoch, batch in epoch, global step, optimiser steps, best score,
NaN/inf guard, running means). One step = one batch per rank (:class:`lavimo.training.loop.Stepper`), then the
per-step lr schedule. A checkpoint (``last.safetensors`` + ``last.state.safetensors``) holds everything a resume needs to
continue bit-identically (docs/training.md).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavimo.core.errors import BadInputError, SetupError
from lavimo.core.seeding import stable_seed
from lavimo.core.stop import StopSignals
from lavimo.dataset.shards.source import RemoteShards
from lavimo.dataset.shards.stream import NoUsableSamplesError
from lavimo.evaluation.encode import EmptySplitError, encode_split
from lavimo.model.ddp import needs_find_unused_parameters
from lavimo.model.lavimo import FUSION_NAMES, LOSS_KEYS
from lavimo.training.config import RunConfig, changes
from lavimo.training.data import train_loader, val_loader
from lavimo.training.elastic import layout_change, loader_layout, resume_statement, saved_loader_layout
from lavimo.training.loop import (
    DistInfo, LossModule, NonFiniteGuard, RunningMeans, SkipBudget, Stepper, TrainingStalled, apply_group_settings,
    barrier, format_counts, gather_embeddings, gather_rng_states, group_settings, load_training_state,
    loader_skip_counts, make_optimizer, mean_over_ranks, preserved_rng, retrieval_scores, save_training_state,
    seed_everything, set_rng_state,
)
from lavimo.training.preemption import EXIT_PREEMPTED, stop_requested
from lavimo.training.requeue import write_marker
from lavimo.training.run_dir import MetricsTable, RunDir, writing
from lavimo.training.schedule import paper_scheduler

log = logging.getLogger("train")


@dataclass(frozen=True)
class Options:
    """What the loop reads of train.py's runtime flags (``--val-every`` ... ``--compile``)."""

    val_every: int = 0  # validate every N steps (0: at the end of every eval_every-th epoch and the last)
    save_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    max_steps: int = 0  # stop (after saving) at this global step (0: never)
    max_nan_steps: int = 20  # consecutive non-finite steps before TrainingDiverged (0: never)
    max_skip_fraction: float = 0.5  # loader skips per epoch, as a fraction of its samples, before TrainingStalled
    shuffle_buffer: int | None = None  # samples per loader worker (None: the loader's default)
    log_keyids: bool = False  # RUN/debug/keyids-rank{R}.tsv
    progress: bool = True  # tqdm bars (rank 0)
    compile: bool = False  # torch.compile the training step
    verify_stream: bool = False  # the loaders hash each shard while streaming it (--verify-shards stream)


class Trainer:
    """Trains ``model`` (already on ``device``, seeded and built by train.py) in the run directory ``run``.

    ``steps_per_epoch`` batches per epoch on every rank; ``stop`` (train.py's SIGTERM / SIGUSR1 handler) is checked
    after every step (collectively under DDP). Call :meth:`resume` before :meth:`fit` to continue a saved run.
    """

    def __init__(self, model: torch.nn.Module, run: RunDir, config: RunConfig, *, shards: Path | RemoteShards,
                 device: torch.device, precision: str, dinfo: DistInfo, steps_per_epoch: int, options: Options,
                 stop: StopSignals | None = None):
        self.model, self.run, self.cfg, self.tc = model, run, config.model, config.train
        self.shards, self.device, self.precision, self.dinfo = shards, device, precision, dinfo
        self.steps_per_epoch, self.opts, self.stop = steps_per_epoch, options, stop
        tc = self.tc
        self.optimizer = make_optimizer(model, tc)
        self.scheduler = paper_scheduler(self.optimizer, steps_per_epoch=steps_per_epoch, epochs=tc.epochs,
                                         decay_start_epoch=tc.lr_decay_start_epoch, lr=tc.lr, lr_min=tc.lr_min,
                                         warmup_steps=tc.warmup_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        seed_everything(stable_seed(tc.seed, "train-rank", dinfo.rank))  # dropout etc. differ per rank
        # where the run stands (resume() brings back the saved values)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.updates, self.epoch_updates = 0, 0  # optimiser steps taken (in all, in the current epoch)
        self.best_score: float | None = None
        self.guard = NonFiniteGuard(options.max_nan_steps)
        self.period = RunningMeans()  # loss terms and throughput since the last validation
        self.pending_rng: dict | None = None  # this rank's saved RNG state, set once the loader is past it
        # opened by fit(): the wrapped network, its Stepper, the SkipBudget, metrics.csv, TensorBoard, the keyid log
        self.net = self.stepper = self.budget = self.metrics = self.tb = self.keyid_log = self.preprocess = None

    # ----------------------------------------------------------------------------------------------------------
    # resume

    def resume(self, saved_step: int | None, saved_layout: tuple[int, int] | None = None) -> str:
        """Continue the run of RUN/checkpoints/last.state.safetensors + last.safetensors: weights, optimiser (with this
        command line's lr, weight decay, betas), scheduler, scaler, guard, running means, counters and this rank's
        RNG state (restored once the loader has skipped what the interrupted run consumed). ``saved_step``: the
        step last.safetensors was saved at (:func:`check_resume_checkpoint`). Every problem with the files is a
        SetupError. ``saved_layout``: the saved config.json's (global batch, loader streams), used when the state
        does not record them. Returns (and logs) the line saying what of the saved run is kept exactly
        (:func:`lavimo.training.elastic.resume_statement`)."""
        run = self.run
        try:
            state = load_training_state(run.last_state, complete=True)
        except FileNotFoundError as exc:  # removed since resolve_config looked
            raise SetupError(f"--resume: no checkpoint to resume in {run.ckpt_dir}; start fresh without "
                             "--resume") from exc
        except BadInputError as exc:
            raise SetupError(f"{exc}; this run cannot be resumed from it: start a new --out (or remove "
                             f"{run.ckpt_dir} and start again without --resume)") from exc
        load_weights(self.model, run.last, state, saved_step)
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise SetupError(f"--resume: the run used {state['steps_per_epoch']} steps/epoch, now "
                             f"{self.steps_per_epoch} (batch size, rank count or shards changed; to change the "
                             "rank count keep the global batch: --global-batch-size, docs/training.md)")
        try:
            current = group_settings(self.optimizer)  # this command line's lr, weight decay, betas
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            apply_group_settings(self.optimizer, self.scheduler, current)  # the saved state brought the saved ones
            self.scaler.load_state_dict(state["scaler"])
            self.guard = NonFiniteGuard(self.opts.max_nan_steps, **state["nonfinite"])
            self.period = RunningMeans(state["period"])
            rngs = list(state["rng"])
            with preserved_rng():  # a malformed RNG state fails here, not in the middle of the loop
                for r in rngs:
                    set_rng_state({k: v for k, v in r.items() if k != "cuda"})
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            raise SetupError(f"{run.last_state}: does not fit this run's model and optimiser "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); start a new --out"
                             ) from exc
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best_score = state["best_score"]
        self.updates = _int_or(state.get("updates"), self.step - self.guard.total)  # older states lack them
        self.epoch_updates = _int_or(state.get("epoch_updates"), self.batch_in_epoch)
        if len(rngs) == self.dinfo.world_size:
            self.pending_rng = rngs[self.dinfo.rank]
        else:
            log.warning("--resume with %d rank(s) instead of %d: RNG streams are reseeded (not bit-exact)",
                        self.dinfo.world_size, len(rngs))
        log.info("resuming at epoch %d, batch %d (global step %d)", self.epoch, self.batch_in_epoch, self.step)
        changed = layout_change(saved_loader_layout(state, saved_layout), self.tc)
        note = resume_statement(self.tc, len(rngs), self.dinfo.world_size, changed_layout=changed,
                                batch_in_epoch=self.batch_in_epoch)
        (log.info if len(rngs) == self.dinfo.world_size and not changed else log.warning)("%s", note)
        return note

    # ----------------------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> int:
        """Train until ``epochs`` are done, ``max_steps`` is reached or a stop signal came (then a checkpoint is
        written first). Returns 0, or :data:`EXIT_PREEMPTED` when a signal stopped the run before its end;
        raises TrainingStalled when no optimiser step was possible."""
        self._open()
        tc, run = self.tc, self.run
        if self.epoch >= tc.epochs:
            log.info("the run already finished %d epochs; nothing to do", tc.epochs)
        self.net.train()
        stop = None
        while self.epoch < tc.epochs and stop is None:
            stop = self.train_one_epoch()
        if self.keyid_log is not None:
            self.keyid_log.close()
        if self.tb is not None:
            self.tb.close()
        if self.step > 0 and self.updates == 0:
            raise TrainingStalled(f"no optimiser step in {self.step} step(s): every batch had a non-finite loss or "
                                  f"gradient (their keyids are in the warnings above); {run.best} was not written")
        if stop == "signal" and self.epoch < tc.epochs:
            if self.dinfo.is_main:  # for a job script that cannot see the exit status (torchrun exits 1)
                write_marker(run.root, step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                             checkpoint=run.last, state=run.last_state, signal=self.stop.signal_name,
                             exit_status=EXIT_PREEMPTED)
            log.warning("stopped by a signal at global step %d (epoch %d, batch %d) after writing %s; relaunch "
                        "with --resume auto (or --resume) to continue; exit status %d", self.step, self.epoch,
                        self.batch_in_epoch, run.last_state, EXIT_PREEMPTED)
            return EXIT_PREEMPTED
        if self.dinfo.is_main:
            log.info("done: global step %d, epoch %d/%d, %d non-finite step(s) skipped, best val score %s; run dir "
                     "%s", self.step, self.epoch, tc.epochs, self.guard.total,
                     "n/a" if self.best_score is None else f"{self.best_score:.2f}", run.root)
        return 0

    def _open(self) -> None:
        """Before this session's first step: metrics.csv cut back to the current step (rank 0), the network
        (DDP-wrapped, compiled), TensorBoard, the keyid log, the stepper, the skip budget and the preprocess
        record every checkpoint carries."""
        from lavimo.dataset.shards.format import load_stats
        from lavimo.model.checkpoint import preprocess_record

        run, dinfo, device, tc, opts = self.run, self.dinfo, self.device, self.tc, self.opts
        self.metrics = MetricsTable(run.metrics) if dinfo.is_main else None
        if self.metrics is not None:
            with writing(run.metrics, run):
                self.metrics.truncate_after(self.step)
        net: torch.nn.Module = LossModule(self.model, tc.gather_negatives)
        if dinfo.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=needs_find_unused_parameters(self.model))  # model/ddp.py
        if opts.compile:
            net = torch.compile(net)
        self.net = net
        self.tb = _tensorboard(run) if dinfo.is_main else None
        if opts.log_keyids:
            with writing(run.debug, run):
                run.debug.mkdir(parents=True, exist_ok=True)
                self.keyid_log = open(run.debug / f"keyids-rank{dinfo.rank}.tsv", "a", encoding="utf-8")
        self.stepper = Stepper(net, self.optimizer, self.scaler, device=device, precision=self.precision,
                               grad_clip=tc.grad_clip, guard=self.guard, dinfo=dinfo)
        self.budget = SkipBudget(opts.max_skip_fraction, self.steps_per_epoch * tc.batch_size)
        self.preprocess = preprocess_record(self.cfg, *load_stats(self.shards))  # encoding raw inputs needs no shards

    def train_one_epoch(self) -> str | None:
        """The rest of the current epoch (``batch_in_epoch`` of its batches may be done already), with the
        validations and checkpoints due in it. Returns why it stopped early: ``"max-steps"``, ``"signal"`` (a
        checkpoint was written) or None."""
        tc, dinfo, opts = self.tc, self.dinfo, self.opts
        loader, batches = self._epoch_batches()
        bar = _progress(opts.progress and dinfo.is_main, self.epoch, tc.epochs, self.steps_per_epoch,
                        self.batch_in_epoch)
        epoch_end, stop = False, None
        while self.batch_in_epoch < self.steps_per_epoch:
            t0 = time.perf_counter()
            self._train_step(_next_batch(batches, self.batch_in_epoch, self.steps_per_epoch, self.epoch, dinfo.rank))
            self.period.samples += tc.batch_size * dinfo.world_size
            self.period.seconds += time.perf_counter() - t0
            if bar is not None:
                m = self.period.means()
                bar.set_postfix({k: f"{m[k]:.3f}" for k in LOSS_KEYS if k in m} |
                                {"samples/s": f"{self.period.samples_per_s():.1f}"}, refresh=False)
                bar.update(1)
            epoch_end = self.batch_in_epoch == self.steps_per_epoch
            if opts.max_steps and self.step >= opts.max_steps:
                stop = "max-steps"
            if self.stop is not None and stop_requested(self.stop, dinfo.enabled, self.device):  # every step
                stop = "signal"
            if opts.val_every and self.step % opts.val_every == 0 and not epoch_end:
                self.validate(self.epoch)
            if stop and not epoch_end:
                self.save(self.epoch, self.batch_in_epoch)
                break
            if opts.save_every and self.step % opts.save_every == 0 and not epoch_end:
                self.save(self.epoch, self.batch_in_epoch)
        if bar is not None:
            bar.close()
        skipped = self.budget.epoch_skipped(loader)
        if skipped:
            log.warning("epoch %d: the loader skipped %d samples on rank %d (%s)", self.epoch, skipped, dinfo.rank,
                        format_counts(self.budget.epoch_counts(loader)))
        if epoch_end:
            self._end_epoch(loader)
        return stop

    def _epoch_batches(self) -> tuple[Any, Any]:
        """The current epoch's loader and its batches, past the ``batch_in_epoch`` ones an interrupted run
        consumed; starting the loader (the DataLoader's base seed) does not move the training RNG, and a resumed
        run's RNG state is restored here."""
        tc, dinfo = self.tc, self.dinfo
        with preserved_rng():
            seed_everything(stable_seed(tc.seed, "loader-epoch", self.epoch, dinfo.rank))
            loader = train_loader(self.shards, self.cfg, tc, self.epoch, self.steps_per_epoch, dinfo,
                                  self.opts.shuffle_buffer, verify=self.opts.verify_stream)
            self.budget.start_epoch(loader)
            batches = _checked_batches(loader, self.budget, self.epoch, dinfo.rank, self.shards)
            first = next(batches, None)
        batches = itertools.chain([] if first is None else [first], batches)
        for i in range(self.batch_in_epoch):  # skip what the interrupted run already consumed
            _next_batch(batches, i, self.steps_per_epoch, self.epoch, dinfo.rank)
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None
        return loader, batches

    def _train_step(self, batch: dict) -> None:
        """One optimisation step on ``batch``, the lr schedule's step and the counters (a skipped, non-finite
        step still counts as a step)."""
        if self.keyid_log is not None:
            self.keyid_log.write(f"{self.epoch}\t{self.step}\t{','.join(batch['keyid'])}\n")
            self.keyid_log.flush()
        terms = self.stepper(batch, self.step)
        if terms is not None:
            self.updates += 1
            self.epoch_updates += 1
            self.period.add(terms)
            if self.tb is not None and self.step % max(1, self.tc.log_every) == 0:
                for k, v in terms.items():
                    self.tb.add_scalar(f"train/{k}", v, self.step)
                self.tb.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                self.tb.add_scalar("train/grad_norm", self.stepper.last_grad_norm, self.step)
        self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1

    def _end_epoch(self, loader: Any) -> None:
        """A finished epoch: refused without any optimiser step; validation when due; a checkpoint."""
        tc, opts = self.tc, self.opts
        if self.epoch_updates == 0:  # the same on every rank (the skip decision is all-reduced)
            raise TrainingStalled(
                f"epoch {self.epoch}: no optimiser step in {self.steps_per_epoch} batches: every batch had a "
                f"non-finite loss or gradient (their keyids are in the warnings above; loader skips this epoch: "
                f"{format_counts(self.budget.epoch_counts(loader))}); check the shards for NaN/inf values, or try "
                f"a lower --lr or --precision fp32", self.budget.epoch_counts(loader))
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_updates = 0
        last = self.epoch == tc.epochs
        if opts.val_every == 0 and (last or self.epoch % max(1, tc.eval_every) == 0):
            self.validate(self.epoch - 1)
        elif opts.val_every and (last or self.step % opts.val_every == 0):
            self.validate(self.epoch - 1)
        self.save(self.epoch, 0)

    # ----------------------------------------------------------------------------------------------------------
    # checkpoints

    def save(self, epoch: int, batch_in_epoch: int) -> None:
        """last.safetensors + last.state.safetensors (collective: every rank contributes its RNG state). The state goes
        to a temp file first, the weights are written (atomically) while it waits, then the state is renamed:
        a crash or a full disk in between leaves the previous pair (or none), never a truncated file."""
        run, tc = self.run, self.tc
        rngs = gather_rng_states(self.dinfo)
        if self.dinfo.is_main:
            extra = {"step": self.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch}
            with writing(run.last_state, run):
                save_training_state(run.last_state, {
                    "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": self.step, "epochs": tc.epochs,
                    "steps_per_epoch": self.steps_per_epoch, "world_size": self.dinfo.world_size,
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(), "rng": rngs, "best_score": self.best_score,
                    "nonfinite": self.guard.state_dict(), "period": self.period.state_dict(),
                    "updates": self.updates, "epoch_updates": self.epoch_updates,
                    "loader_layout": list(loader_layout(tc))},
                    before_rename=lambda: self._save_weights(run.last, extra))
            if tc.checkpoint_every and batch_in_epoch == 0 and epoch % tc.checkpoint_every == 0:
                self._save_weights(run.ckpt_dir / f"epoch-{epoch:04d}.safetensors", extra)
        barrier(self.dinfo)

    def _save_weights(self, path: Path, extra: dict) -> None:
        from lavimo.model import save_checkpoint

        with writing(path, self.run):
            save_checkpoint(self.model, path, extra={**extra, "preprocess": self.preprocess})

    # ----------------------------------------------------------------------------------------------------------
    # validation

    def validate(self, epoch: int) -> None:
        """Retrieval metrics on the whole val split (every rank encodes its shards, rank 0 gathers and scores),
        a metrics.csv row, TensorBoard scalars, the best checkpoint (never before the first optimiser step);
        the running means start again."""
        t0 = time.perf_counter()
        split, loader = self._encode_val()
        if getattr(loader, "skipped", 0):
            log.warning("validation: %d val samples skipped (%s)", loader.skipped,
                        format_counts(loader_skip_counts(loader)))
        emb = gather_embeddings(split, self.dinfo)
        means = mean_over_ranks(self.period.means(), self.dinfo, self.device)  # loss terms averaged over ranks
        if self.dinfo.is_main:
            try:
                res = retrieval_scores(emb)
            except ValueError as exc:  # fewer than 2 usable val samples
                raise TrainingStalled(f"validation: {exc} (val samples skipped: "
                                      f"{format_counts(loader_skip_counts(loader))})") from exc
            self._record(epoch, means, res, t0)
        self.period = RunningMeans()
        barrier(self.dinfo)

    def _encode_val(self) -> tuple[Any, Any]:
        """(this rank's encoded part of the val split or None when it is empty, the val loader); the training
        RNG does not move."""
        shards = self.shards
        with preserved_rng():
            loader = val_loader(shards, self.cfg, self.tc, self.dinfo, verify=self.opts.verify_stream)
            try:
                split = encode_split(self.model, loader, self.device, with_video=self.cfg.modalities == "tmv",
                                     progress=False, precision=self.precision, fusion=False)[0]
            except EmptySplitError:  # this rank's part of the val split is empty (gathered with the others')
                split = None
            except ValueError as exc:  # e.g. a keyid twice in the val shards (a crafted or damaged set)
                raise SetupError(f"validation: {exc} ({shards}); check the shards (build-shards check "
                                 f"{shards})") from exc
            except NoUsableSamplesError as exc:
                counts = dict(getattr(exc, "counts", None) or loader_skip_counts(loader))
                raise TrainingStalled(f"validation: no usable sample in the val split on rank {self.dinfo.rank} "
                                      f"({shards}); skipped by reason: {format_counts(counts)}; check the "
                                      f"shards (build-shards check {shards})", counts) from exc
        return split, loader

    def _record(self, epoch: int, means: dict[str, float], res: dict[str, float], t0: float) -> None:
        """Rank 0: the validation's metrics.csv row, the best checkpoint when the score improved, TensorBoard
        scalars and the log line."""
        run, step = self.run, self.step
        row: dict[str, Any] = {"epoch": epoch, "step": step, "lr": self.scheduler.get_last_lr()[0]}
        row.update({f"train_{k}": means.get(k, float("nan")) for k in LOSS_KEYS})
        row.update({f"fusion_{k}": means.get(f"fusion_{k}", float("nan")) for k in FUSION_NAMES})
        row["samples_per_s"] = self.period.samples_per_s()
        row["nonfinite_skipped"] = self.guard.total
        row.update({f"val_{d}_{k}": res.get(f"{d}/{k}", float("nan")) for d in ("t2m", "v2m")
                    for k in ("R@1", "R@5", "R@10", "MedR")})
        row["val_score"] = res["score"]
        row["val_samples"] = int(res["n"])
        improved = self.updates > 0 and (self.best_score is None or res["score"] > self.best_score)
        if self.updates == 0:
            log.warning("no optimiser step so far: %s is not written (the weights are untrained)", run.best)
        row["best"] = int(improved)
        if improved:
            self.best_score = res["score"]
            self._save_weights(run.best, {"step": step, "epoch": epoch, "val_score": res["score"]})
        with writing(run.metrics, run):
            self.metrics.append(row)
        if self.tb is not None:
            for k, v in res.items():
                self.tb.add_scalar(f"val/{k}", v, step)
            for k in FUSION_NAMES:
                self.tb.add_scalar(f"fusion/{k}", row[f"fusion_{k}"], step)
            self.tb.flush()
        log.info("validation at epoch %d step %d (%.1fs): t2m R@1 %.2f R@5 %.2f MedR %.1f | v2m R@1 %.2f "
                 "R@5 %.2f MedR %.1f | score %.2f%s", epoch, step, time.perf_counter() - t0,
                 row["val_t2m_R@1"], row["val_t2m_R@5"], row["val_t2m_MedR"], row["val_v2m_R@1"],
                 row["val_v2m_R@5"], row["val_v2m_MedR"], res["score"], " (best)" if improved else "")


# --------------------------------------------------------------------------------------------------------------
# resume checks


def check_resume_checkpoint(run: RunDir, cfg) -> int | None:
    """Refuse to resume unless RUN/checkpoints/last.safetensors passes
    ``lavimo.model.checkpoint.check_checkpoint_fits`` and its config is the model of RUN/config.json: the model
    train.py builds is then the one the file holds, so a run directory cannot make it allocate more than its own
    weights (a crafted config.json). Called before the model is built; returns the step the checkpoint was saved
    at (None when it does not say), for :meth:`Trainer.resume`."""
    from lavimo.model.checkpoint import check_checkpoint_fits

    if not run.last.is_file():
        raise SetupError(f"--resume: {run.last} not found (the run was interrupted before its first complete "
                         "checkpoint); start a new --out")
    try:
        info = check_checkpoint_fits(run.last)
    except BadInputError as exc:
        raise SetupError(f"--resume: {exc}; start a new --out") from exc
    differ = changes(info["config"].to_dict(), cfg.to_dict())
    if differ:
        raise SetupError(f"--resume: the model of {run.config} is not the one {run.last} holds ({differ[:300]}); "
                         "start a new --out")
    return info["extra"].get("step")


def load_weights(model: torch.nn.Module, path: Path, state: dict, step: int | None) -> None:
    """Load RUN/checkpoints/last.safetensors into ``model`` and check it belongs to the training state: ``step``
    is the one its metadata names (:func:`check_resume_checkpoint` read and checked it)."""
    from safetensors.torch import load_model

    if step is not None and step != state["step"]:
        raise SetupError(f"--resume: {path} is from step {step} but the training state is from step "
                         f"{state['step']} (the run was killed while saving); no consistent checkpoint to resume: "
                         "start a new --out")
    # load_model pairs with save_model (used by save_checkpoint): names of shared tensors are not reported missing
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # noqa: BLE001 - shape/dtype mismatch, damaged tensor data
        raise SetupError(f"--resume: {path}: weights unreadable or not of this model "
                         f"({' '.join(str(exc).split())[:200]}); start a new --out") from exc
    if unexpected or missing:
        raise SetupError(f"--resume: {path} does not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); start a new --out")


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else max(0, int(default))


def _checked_batches(loader, budget: SkipBudget, epoch: int, rank: int, shards: Path):
    """Iterate ``loader``; after every batch check the epoch's skip budget; a pass without any usable sample
    (the loader's NoUsableSamplesError) becomes TrainingStalled with the skip counts by reason."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except NoUsableSamplesError as exc:
            counts = dict(getattr(exc, "counts", None) or budget.epoch_counts(loader))
            raise TrainingStalled(f"epoch {epoch}: no usable training sample in a whole pass over the shards of "
                                  f"rank {rank} ({shards}); skipped by reason: {format_counts(counts)}; check the "
                                  f"shards (build-shards check {shards})", counts) from exc
        budget.check(loader, epoch, rank)
        yield batch


def _next_batch(batches, index: int, steps: int, epoch: int, rank: int) -> dict:
    try:
        return next(batches)
    except StopIteration:
        raise TrainingStalled(f"the loader gave only {index} of {steps} batches in epoch {epoch} on rank "
                              f"{rank}") from None


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed; no TensorBoard logs")
        return None
    return SummaryWriter(log_dir=str(run.tb))


def _progress(show: bool, epoch: int, epochs: int, total: int, initial: int):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="step", dynamic_ncols=True,
                leave=True)

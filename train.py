#!/usr/bin/env python
"""Train LAVIMO from WebDataset shards: one process (CPU or GPU) or several with torchrun (DDP).

    python train.py --shards SHARDS --preset tiny --epochs 3 --out runs/tiny --device cpu
    python train.py --shards SHARDS --out runs/tiny --resume           # continue exactly where it stopped
    torchrun --nproc_per_node=4 train.py --shards SHARDS --preset paper --out runs/paper

(also ``python -m lavimo.train``, ``torchrun -m lavimo.train`` and ``lavimo-train``). A run, top to bottom:
the flags (training/cli.py) -> the process (threads, Slurm, device, DDP) -> the run directory and its config
(preset + flags, or the saved run on --resume) -> the shards (manifests, sha256, steps per epoch) -> the model ->
the trainer (training/trainer.py), which trains, validates and checkpoints. The run directory, resume and DDP
are described in docs/training.md (several machines: docs/scaling.md). Exit status: 0 done, 1 no progress
possible, 2 usage or set-up error (one line on stderr), 75 stopped by a signal with a checkpoint written.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import torch

from lavimo.core.device import resolve_device, resolve_precision
from lavimo.core.errors import BadInputError, SetupError
from lavimo.core.slurm import SlurmEnvError, apply_srun_env
from lavimo.dataset.shards.source import shard_location
from lavimo.model.weights import missing_pretrained
from lavimo.training import data, elastic
from lavimo.training.cli import (EXIT_NO_PROGRESS, EXIT_SETUP, config_overrides, fail, os_error_line, parse_args,
                                 runtime_options, setup_logging, verify_mode)
from lavimo.training.config import load_run_config, resolve_config
from lavimo.training.loop import (DistInfo, TrainingDiverged, TrainingStalled, cleanup_distributed,
                                  init_distributed, local_rank_from_env, seed_everything)
from lavimo.training.preemption import preemption_signals, resolve_resume
from lavimo.training.requeue import clear_marker as clear_requeue_marker
from lavimo.training.run_dir import RunDir, note_session, start_run
from lavimo.training.trainer import Trainer, check_resume_checkpoint

log = logging.getLogger("train")


def main(argv: list[str] | None = None) -> int:
    """``train.py ARGV``; its exit status (0, 1, 2 or 75, see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        shards, device, dinfo = start_process(args)
        with preemption_signals().installed() as stop:  # SIGTERM / SIGUSR1: checkpoint after the step, exit 75
            return train(args, shards, device, dinfo, stop, command=[sys.executable, str(Path(__file__).resolve()),
                                                                      *argv])
    except TrainingStalled as exc:
        return fail(exc, EXIT_NO_PROGRESS)
    except (SetupError, BadInputError, TrainingDiverged) as exc:
        return fail(exc, EXIT_SETUP)
    except OSError as exc:  # missing pretrained weights (MissingWeightsError), unreadable / unwritable files
        return fail(os_error_line(exc), EXIT_SETUP)
    finally:
        cleanup_distributed()


def start_process(args: argparse.Namespace) -> tuple[object, torch.device, DistInfo]:
    """The shard set's location (a directory, an http(s) base URL or a pipe: command), torch's threads, Slurm's
    variables under srun, the device and DDP (under torchrun or srun)."""
    try:
        shards = shard_location(args.shards)
    except BadInputError as exc:
        raise SetupError(str(exc)) from exc
    if not args.max_skip_fraction >= 0:  # also NaN
        raise SetupError(f"--max-skip-fraction must be >= 0 (inf = never stop), got {args.max_skip_fraction}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:  # launched by srun (not torchrun): RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from Slurm's variables
        apply_srun_env()
    except SlurmEnvError as exc:
        raise SetupError(str(exc)) from exc
    try:
        device = resolve_device(args.device, local_rank_from_env())
    except ValueError as exc:  # --device cuda without CUDA
        raise SetupError(str(exc)) from exc
    return shards, device, init_distributed(device)


def train(args: argparse.Namespace, shards, device: torch.device, dinfo: DistInfo, stop, command: list[str]) -> int:
    from lavimo.model import build_model

    # the run directory and its config ------------------------------------------------------------------------
    run = RunDir(args.out or Path("runs") / Path(args.preset).stem)
    resume = resolve_resume(args.resume, run.last_state)
    if args.resume == "auto":
        log.info("--resume auto: %s", f"resuming from {run.last_state}" if resume else "no checkpoint, fresh start")
    if not resume and run.last_state.exists():
        raise SetupError(f"{run.root} already holds a run; pass --resume or choose another --out")
    run_cfg = resolve_config(args.preset, config_overrides(args), run, resume)
    # the saved run's loader layout, read before start_run rewrites config.json (older states do not record it)
    saved_layout = elastic.loader_layout(load_run_config(run.config).train) if resume else None
    cfg, tc = run_cfg.model, run_cfg.train  # the model (saved in checkpoints), the run's settings
    try:
        precision = resolve_precision(args.precision, device, amp=tc.amp)
    except ValueError as exc:  # fp16 without CUDA
        raise SetupError(str(exc)) from exc
    missing = missing_pretrained(cfg)
    if missing:  # before anything is written: every missing piece in one message
        raise SetupError(f"missing pretrained weights (nothing is downloaded; or pass --random-init): "
                         f"{'; '.join(missing)}")

    # the shards ---------------------------------------------------------------------------------------------
    manifests = data.check_training_manifests(shards, cfg)
    run_cfg = elastic.apply_layout(run_cfg, dinfo, manifests, batch_flag=args.batch_size is not None)
    tc = run_cfg.train  # with a global batch: this launch's per-rank batch and the loader streams
    steps_per_epoch = data.steps_per_epoch(shards, manifests, tc, dinfo)
    verify = verify_mode(args)
    verified = None
    if verify == "none":
        log.warning("--no-verify: the shard files are not checked against their manifests' sha256")
    elif verify == "full":
        verified = data.verify_shards(shards, manifests, dinfo)
    else:  # each shard's sha256 while training streams it; up front only the manifests' entries and file sizes
        data.check_shard_listing(shards, manifests)
    sentence_model = data.check_sentence_model(manifests["train"], cfg)
    max_skip = args.max_skip_fraction
    trainer_info = {"shards": str(shards), "sentence_model": sentence_model, "device": str(device),
                    "precision": precision, "world_size": dinfo.world_size, "steps_per_epoch": steps_per_epoch,
                    "total_steps": steps_per_epoch * tc.epochs, "compile": args.compile,
                    "val_every": args.val_every, "save_every": args.save_every, "max_nan_steps": args.max_nan_steps,
                    "max_skip_fraction": max_skip if math.isfinite(max_skip) else None,
                    "verify": {"none": "skipped", "full": "sha256", "stream": "sha256-stream"}[verify],
                    "global_batch": tc.batch_size * dinfo.world_size, "loader_streams": tc.loader_streams or None}
    if dinfo.is_main:
        clear_requeue_marker(run.root)  # a marker on disk is this session's (training/requeue.py)
        start_run(run, {**run_cfg.to_dict(), "trainer": trainer_info}, shards=shards, manifests=manifests,
                  verified=verified, streamed=verify == "stream",
                  extra={"command": command, "trainer": trainer_info, "resume": resume})
    log.info("run %s: preset %s, %d train samples, %d steps/epoch x %d epochs, batch %d x %d rank(s), %s %s",
             run.root, cfg.name, int(manifests["train"]["num_samples"]), steps_per_epoch, tc.epochs, tc.batch_size,
             dinfo.world_size, device, precision)

    # the model and the trainer ------------------------------------------------------------------------------
    if resume:  # before the run's model is built: the checkpoint must hold that model (bounded memory)
        saved_step = check_resume_checkpoint(run, cfg)
    seed_everything(tc.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    trainer = Trainer(model, run, run_cfg, shards=shards, device=device, precision=precision, dinfo=dinfo,
                      steps_per_epoch=steps_per_epoch, options=runtime_options(args), stop=stop)
    if resume:
        note = trainer.resume(saved_step, saved_layout)
        if dinfo.is_main:
            note_session(run, "resume_exactness", note)
    return trainer.fit()


if __name__ == "__main__":
    sys.exit(main())

"""``train.py``'s command: train LAVIMO from WebDataset shards, one process (CPU or GPU) or several with torchrun
(DDP). The top-level ``train.py`` only calls :func:`main`.

    python train.py --shards SHARDS --preset tiny --epochs 3 --out runs/tiny --device cpu
    python train.py --shards SHARDS --out runs/tiny --resume           # continue exactly where it stopped
    torchrun --nproc_per_node=4 train.py --shards SHARDS --preset paper --out runs/paper

Flags override the preset (its model, ``model/presets/NAME.json``, and its run settings,
``training/presets/NAME.json``); both are saved to RUN/config.json. One step = one batch per rank:
forward (model.compute_losses) under autocast, backward, gradient clipping, AdamW, per-step lr schedule
(training/schedule.py). Validation (retrieval t2m / v2m on the whole val split) at the end of every
``eval_every`` epochs (or every --val-every steps), logged to metrics.csv and TensorBoard. The layout of the run
directory, resume and DDP are described in docs/training.md (several machines: docs/scaling.md).

Reliability (docs/training.md, "Reliability"): the shard files are checked against their manifest's sha256 before
training (``--no-verify`` skips it); a run that cannot make progress (no usable batch, an epoch without an
optimiser step, more skipped samples than ``--max-skip-fraction``) stops with exit status 1 and the skip counts
by reason; usage and set-up errors (bad flags, shards, checkpoints, a full disk) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lavimo.core.atomic import write_json
from lavimo.core.device import resolve_device, resolve_precision
from lavimo.core.errors import BadInputError, is_disk_full, os_error_text, print_error
from lavimo.core.seeding import stable_seed
from lavimo.core.slurm import SlurmEnvError, apply_srun_env
from lavimo.dataset.shards.source import FetchError, RemoteShards, is_remote, shard_location
from lavimo.dataset.shards.stream import NoUsableSamplesError
from lavimo.dataset.text_embed import same_sentence_model
from lavimo.evaluation.encode import EmptySplitError, encode_split
from lavimo.model.lavimo import FUSION_NAMES, LOSS_KEYS
from lavimo.model.ddp import needs_find_unused_parameters
from lavimo.model.weights import missing_pretrained
from lavimo.training.loop import (
    DistInfo, LossModule, NonFiniteGuard, apply_group_settings, group_settings, RunningMeans, SkipBudget, Stepper, TrainingDiverged, TrainingStalled,
    barrier, cleanup_distributed, format_counts, gather_embeddings, gather_rng_states, init_distributed,
    load_training_state, loader_skip_counts, local_rank_from_env, make_optimizer, mean_over_ranks, preserved_rng,
    retrieval_scores, save_training_state, seed_everything, set_rng_state,
)
from lavimo.training.config import RunConfig, TrainConfig, load_run_config
from lavimo.training.run_dir import MetricsTable, RunDir, remove_stale_temp_files, write_run_info
from lavimo.training.preemption import EXIT_PREEMPTED, StopRequest, resolve_resume
from lavimo.training.schedule import paper_scheduler

log = logging.getLogger("train")

#: the script users run (recorded in run.json as the command)
TRAIN_PY = Path(__file__).resolve().parents[1] / "train.py"

# exit statuses (README, "Reliability")
EXIT_OK, EXIT_NO_PROGRESS, EXIT_SETUP = 0, 1, 2


class SetupError(Exception):
    """A usage or set-up problem (flags, run directory, checkpoint, disk): one line on stderr, exit status 2."""



# --------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train LAVIMO (text / video / motion retrieval) from shards.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", required=True,
                   help="shard set ({split}-NNNNNN.tar, {split}.json, stats.npz): a directory, an http(s) base URL "
                        "(http://host/shards: files at http://host/shards/NAME) or 'pipe:CMD' with {} for the "
                        "file name (e.g. 'pipe:aws s3 cp s3://bucket/shards/{} -'); see docs/scaling.md")
    p.add_argument("--preset", default="paper", help="paper | demo | tiny | path/to/config.json")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset name>)")
    p.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"], default=None,
                   help="continue the run in --out from its last checkpoint; '--resume auto': resume when --out holds "
                        "a checkpoint, else start fresh (one command line for the first launch and every requeue)")
    g = p.add_argument_group("preset overrides (default: the preset's value)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per-rank batch size")
    g.add_argument("--lr", type=float)
    g.add_argument("--workers", type=int, help="loader worker processes per rank (config num_workers)")
    g.add_argument("--seed", type=int)
    g.add_argument("--modalities", choices=["tmv", "tm"])
    g.add_argument("--negative-filtering", choices=["lavimo", "tmr", "soft", "none"])
    g.add_argument("--threshold", type=float, help="negative-filtering epsilon on (cos+1)/2")
    g.add_argument("--recon-weight", type=float, help="lambda_recon (0 drops the decoder)")
    g.add_argument("--no-fusion", action="store_true", help="reconstruct from the motion latent alone")
    g.add_argument("--freeze-text", action="store_true", help="no gradient into the text backbone")
    g.add_argument("--random-init", action="store_true",
                   help="random backbones instead of the pretrained DistilBERT / CLIP weights (no files needed)")
    g.add_argument("--hflip-p", type=float,
                   help="probability of a horizontal flip per training clip (never for captions naming a side)")
    g.add_argument("--no-gather-negatives", action="store_true",
                   help="DDP: contrastive losses over each rank's own batch instead of the global batch "
                        "(config gather_negatives; see docs/scaling.md)")
    g.add_argument("--randaugment", type=int, metavar="N",
                   help="torchvision RandAugment operations per training clip (0 = off)")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other config field, e.g. --set temperature=0.07 (repeatable)")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto = bf16 autocast on CUDA when the preset's amp is true (paper), else fp32")
    r.add_argument("--compile", action="store_true", help="torch.compile the training step")
    r.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (0 = torch's default; torchrun sets OMP_NUM_THREADS=1)")
    r.add_argument("--val-every", type=int, default=0,
                   help="validate every N steps (0 = at the end of every eval_every-th epoch and the last)")
    r.add_argument("--save-every", type=int, default=0,
                   help="also save last checkpoint + state every N steps (0 = at epoch ends only)")
    r.add_argument("--max-steps", type=int, default=0,
                   help="stop (after saving) once the global step reaches N; the schedule still follows --epochs")
    r.add_argument("--max-nan-steps", type=int, default=20,
                   help="stop when this many consecutive steps have a non-finite loss/gradient (0 = never)")
    r.add_argument("--max-skip-fraction", type=float, default=0.5,
                   help="stop (exit 1) when the loader skips more than this fraction of an epoch's samples "
                        "(steps/epoch x batch size) within one epoch; inf = never")
    r.add_argument("--no-verify", action="store_true",
                   help="do not check the shard files against their manifest's sha256 before training")
    r.add_argument("--shuffle-buffer", type=int, default=None,
                   help="samples in the loader's shuffle buffer per worker (default: the loader's; 1 = shard "
                        "order only)")
    r.add_argument("--log-keyids", action="store_true",
                   help="debug: write the keyids of every training batch to RUN/debug/keyids-rank{R}.tsv")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    r.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the flags set (only those given on the command line)."""
    o: dict[str, Any] = {}
    for flag, field in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                        ("workers", "num_workers"), ("seed", "seed"), ("modalities", "modalities"),
                        ("negative_filtering", "negative_filtering"), ("threshold", "threshold"),
                        ("recon_weight", "recon_weight"), ("hflip_p", "hflip_p"),
                        ("randaugment", "randaugment_ops")):
        if getattr(args, flag) is not None:
            o[field] = getattr(args, flag)
    if args.no_fusion:
        o["fusion"] = False
    if args.freeze_text:
        o["freeze_text"] = True
    if args.random_init:
        o["random_init"] = True
    if args.no_gather_negatives:
        o["gather_negatives"] = False
    for item in args.set:
        if "=" not in item:
            raise SetupError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        o[k.strip().replace("-", "_")] = v
    return o


def resolve_config(args: argparse.Namespace, run: RunDir) -> RunConfig:
    """Preset + flags -> the run's :class:`~lavimo.training.config.RunConfig` (model + run settings).

    On --resume the run's saved config is the base: the model is the checkpoint's (a flag that would change it
    is refused: that is another model, so another --out), the run's settings are the saved ones with this
    command line's flags applied, each change logged."""
    overrides = config_overrides(args)
    if not args.resume:
        return _load_config(args.preset, overrides)
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
    model_changes = _changes(saved.model.to_dict(), cfg.model.to_dict())
    if model_changes:
        raise SetupError(f"--resume cannot change the model of the saved run ({model_changes}): the checkpoint "
                         "holds that model; start a new --out instead")
    run_changes = _changes(saved.train.to_dict(), cfg.train.to_dict())
    if run_changes:
        log.info("--resume with changed run settings: %s", run_changes)
    if cfg.train.epochs != saved.train.epochs:
        log.warning("--resume with epochs %d -> %d: the lr schedule is recomputed for the new length",
                    saved.train.epochs, cfg.train.epochs)
    return cfg


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """``"lr 0.0001 -> 5e-05, seed 0 -> 1"`` for the fields whose values differ ("" when none)."""
    return ", ".join(f"{k} {before[k]!r} -> {after[k]!r}" for k in sorted(after) if before.get(k) != after[k])


def _load_config(source, overrides: dict[str, Any]) -> RunConfig:
    """load_run_config with its errors (missing file, bad JSON, unknown field, out-of-range value) as
    SetupError."""
    try:
        return load_run_config(source, **overrides)
    except FileNotFoundError as exc:
        raise SetupError(str(exc)) from exc
    except BadInputError as exc:  # not JSON, too big, nested too deep: names the file
        raise SetupError(str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise SetupError(f"{source} (with the flags' overrides): {' '.join(str(exc).split())}") from exc


# --------------------------------------------------------------------------------------------------------------
# shards


def check_training_manifests(shards: Path | RemoteShards, cfg) -> dict[str, dict]:
    """Read the train/val manifests (not the tars: see :func:`verify_shards`); clear errors (BadInputError naming the file and field) for a missing/empty
    directory, an unreadable manifest or a feature-dim mismatch. ``shards`` may be a remote set (an http(s) base
    URL or ``pipe:`` command, dataset/shards/source.py): a server or command that fails raises its FetchError
    (an OSError naming the URL)."""
    from lavimo.dataset.shards.format import manifest_path, read_manifest

    remote = is_remote(shards)
    if not remote and not shards.is_dir():
        raise BadInputError(shards, None, "shard directory not found (build it with build-shards)")
    manifests = {}
    for split in ("train", "val"):
        mpath = shards.url(f"{split}.json") if remote else manifest_path(shards, split)
        if not remote and not mpath.is_file() and not any(shards.glob(f"{split}-*.tar")):
            raise BadInputError(shards, split, f"no {split} shards ({split}.json + {split}-NNNNNN.tar); "
                                               "build them with build-shards")
        try:
            m = read_manifest(shards, split)
        except (BadInputError, FetchError):
            raise
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            if remote and isinstance(exc, FileNotFoundError):  # http 404 or a failing pipe: command
                raise BadInputError(mpath, split, f"no {split} manifest at this location ({exc}); check --shards "
                                                  "(build the shards with build-shards)") from exc
            raise BadInputError(mpath, None, f"unreadable manifest ({' '.join(str(exc).split())}); rebuild the "
                                             "shards with build-shards") from exc
        if not isinstance(m, dict):
            raise BadInputError(mpath, None, "not a shard manifest (a JSON object); rebuild it with build-shards")
        if not isinstance(m.get("shards", []), list):
            raise BadInputError(mpath, "shards", "not a list; rebuild the shards with build-shards")
        try:
            n = int(m.get("num_samples", 0) or 0)
            fdim = m.get("feature_dim")
            fdim = None if fdim is None else int(fdim)
        except (TypeError, ValueError) as exc:
            raise BadInputError(mpath, "num_samples/feature_dim", f"not an integer ({exc})") from exc
        if n <= 0:
            raise BadInputError(mpath, "num_samples", f"the {split} split is empty")
        if fdim is not None and fdim != int(cfg.feature_dim):
            raise BadInputError(
                mpath, "feature_dim",
                f"the shards hold {fdim}-dim motion features but preset {cfg.name!r} expects "
                f"feature_dim={cfg.feature_dim} (use a matching preset or --set feature_dim={fdim})")
        manifests[split] = m
    return manifests


def _verify_files(shards: Path | RemoteShards, manifests: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """``{split: {shard name: {"sha256", "bytes", "match": True}}}`` from dataset/shards/check.py verify_shards (every
    listed file read once, streamed through sha256; for a remote set every tar is downloaded once, nothing
    stored), against ``manifests`` (those training checked: never read twice); the first file that differs from its manifest entry (or is missing or unreadable) raises
    BadInputError naming it."""
    from lavimo.dataset.shards.check import verify_shards as verify_shard_files

    out: dict[str, dict[str, dict]] = {}
    for split in manifests:
        results = verify_shard_files(shards, [split], manifests=manifests)
        bad = [r for r in results if not r["ok"]]
        if bad:
            first = bad[0]
            problem = str(first["problem"] or "differs from the manifest")
            problem = problem.removeprefix(f"{first['file']}: ")
            more = f" (and {len(bad) - 1} more {split} shard file(s))" if len(bad) > 1 else ""
            raise BadInputError(first["file"], None, f"{problem}{more}; rebuild the shards with build-shards (or "
                                                     "pass --no-verify to train on them anyway)")
        out[split] = {r.get("name") or Path(r["file"]).name: {"sha256": r["sha256"], "bytes": r["size"],
                                                              "match": True}
                      for r in results}
    return out


def sentence_model_of(manifest: dict) -> str | None:
    """The sentence model a shard manifest records for its ``sent.npy`` embeddings (None when unrecorded)."""
    tm = manifest.get("text_model")
    return str(tm["name"]) if isinstance(tm, dict) and tm.get("name") else None


def verify_shards(shards: Path | RemoteShards, manifests: dict[str, dict], dinfo: DistInfo
                  ) -> dict[str, dict[str, dict]]:
    """Check every train/val shard file against its manifest's sha256 and size before training (one streamed
    read per file; a remote set's tars are each downloaded once more for this, see docs/scaling.md, "Shards from
    URLs"). Rank 0 reads; in DDP the outcome is broadcast so every rank stops on a mismatch. Returns
    ``{split: {name: {"sha256", "bytes", "match"}}}`` for run.json; raises BadInputError / SetupError (exit 2)
    naming the first file that differs."""
    result: Any = None
    error: str | None = None
    if dinfo.is_main:
        t0 = time.perf_counter()
        if is_remote(shards):
            log.info("verifying the remote shards %s: every train/val tar is read once over the network before "
                     "training (--no-verify skips it)", shards)
        try:
            result = _verify_files(shards, manifests)
        except BadInputError as exc:
            if not dinfo.enabled:
                raise
            error = str(exc)
        else:
            n = sum(len(v) for v in result.values())
            nbytes = sum(r["bytes"] for v in result.values() for r in v.values())
            log.info("verified %d shard files (%.1f MB) against their manifests' sha256 in %.1fs", n, nbytes / 1e6,
                     time.perf_counter() - t0)
    if dinfo.enabled:
        import torch.distributed as dist

        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        raise SetupError(error)
    return result


def train_loader(args, cfg, tc: TrainConfig, epoch: int, steps: int, dinfo: DistInfo):
    """The training loader of one epoch: shard order, shuffle buffer and augmentation seeded by (seed, epoch,
    rank, worker) inside the loader; ``steps`` batches on every rank; shards split by rank."""
    from lavimo.dataset.shards.stream import make_loader

    kw = {} if args.shuffle_buffer is None else {"shuffle_buffer": args.shuffle_buffer}
    loader = make_loader(args.shards, "train", batch_size=tc.batch_size, train=True,
                         num_workers=tc.num_workers, seed=tc.seed, epoch_batches=steps,
                         rank=dinfo.rank, world_size=dinfo.world_size, augment=tc.augment_kwargs(),
                         **cfg.loader_kwargs(), **kw)
    loader.set_epoch(epoch)
    return loader


def val_loader(args, cfg, tc: TrainConfig, dinfo: DistInfo):
    """Every val sample exactly once, split by rank (each rank encodes its shards; see validate())."""
    from lavimo.dataset.shards.stream import make_loader

    return make_loader(args.shards, "val", batch_size=tc.batch_size, train=False, num_workers=tc.num_workers,
                       seed=tc.seed, rank=dinfo.rank, world_size=dinfo.world_size, **cfg.loader_kwargs())


# --------------------------------------------------------------------------------------------------------------
# the run


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Exit status: 0 done; 1 training could not make progress (no usable batch, an
    epoch without an optimiser step, too many skipped samples); 2 usage or set-up error (one line on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.command = [sys.executable, str(TRAIN_PY), *argv]
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # a directory, an http(s) base URL or a pipe: command (dataset/shards/source.py)
        args.shards = shard_location(args.shards)
    except BadInputError as exc:
        return _fail(str(exc), EXIT_SETUP)
    if not args.max_skip_fraction >= 0:  # also NaN
        return _fail(f"--max-skip-fraction must be >= 0 (inf = never stop), got {args.max_skip_fraction}",
                     EXIT_SETUP)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:  # launched by srun (not torchrun): RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from Slurm's variables
        apply_srun_env()
    except SlurmEnvError as exc:
        return _fail(str(exc), EXIT_SETUP)
    try:
        device = resolve_device(args.device, local_rank_from_env())
    except ValueError as exc:  # --device cuda without CUDA
        return _fail(str(exc), EXIT_SETUP)
    dinfo = init_distributed(device)
    stop = StopRequest().install()  # SIGTERM / SIGUSR1: checkpoint after the current step, exit 75
    args.stop_request = stop
    try:
        return train(args, dinfo, device)
    except TrainingStalled as exc:
        return _fail(str(exc), EXIT_NO_PROGRESS)
    except (SetupError, BadInputError, TrainingDiverged) as exc:
        return _fail(str(exc), EXIT_SETUP)
    except OSError as exc:  # missing pretrained weights (MissingWeightsError), unreadable / unwritable files
        return _fail(_os_error_text(exc), EXIT_SETUP)
    finally:
        stop.uninstall()
        cleanup_distributed()


def train(args: argparse.Namespace, dinfo: DistInfo, device: torch.device) -> int:
    from lavimo.model import build_model, save_checkpoint

    run = RunDir(args.out or Path("runs") / Path(args.preset).stem)
    auto_resume = args.resume == "auto"
    args.resume = resolve_resume(args.resume, run.last_state)
    if auto_resume:
        log.info("--resume auto: %s", f"resuming from {run.last_state}" if args.resume else "no checkpoint, fresh start")
    if not args.resume and run.last_state.exists():
        raise SetupError(f"{run.root} already holds a run; pass --resume or choose another --out")
    run_cfg = resolve_config(args, run)
    cfg, tc = run_cfg.model, run_cfg.train  # the model (saved in checkpoints), the run's settings
    try:
        precision = resolve_precision(args.precision, device, amp=tc.amp)
    except ValueError as exc:  # fp16 without CUDA
        raise SetupError(str(exc)) from exc
    missing = missing_pretrained(cfg)
    if missing:  # before anything is written: every missing piece in one message
        raise SetupError(f"missing pretrained weights (nothing is downloaded; or pass --random-init): "
                         f"{'; '.join(missing)}")
    manifests = check_training_manifests(args.shards, cfg)
    n_train = int(manifests["train"]["num_samples"])
    steps_per_epoch = tc.epoch_batches or n_train // (tc.batch_size * dinfo.world_size)
    if steps_per_epoch < 1:
        raise BadInputError(args.shards / "train.json", "num_samples",
                            f"{n_train} training samples are fewer than one batch of {tc.batch_size} per rank "
                            f"x {dinfo.world_size} rank(s); lower --batch-size")
    if args.no_verify:
        verified = None
        log.warning("--no-verify: the shard files are not checked against their manifests' sha256")
    else:
        verified = verify_shards(args.shards, manifests, dinfo)
    max_skip = args.max_skip_fraction
    shard_sentence_model = sentence_model_of(manifests["train"])
    if cfg.negative_filtering != "none" and not same_sentence_model(shard_sentence_model, cfg.sentence_model):
        log.warning("the shards' sentence embeddings come from %s, but the threshold %.2f of %s negative filtering "
                    "is defined on %s scores (the config's sentence_model): the filtering is not the paper's; "
                    "rebuild the shards with build-shards --text-model DIR of that model, or set sentence_model",
                    shard_sentence_model or "an unrecorded model", cfg.threshold, cfg.negative_filtering,
                    cfg.sentence_model)
    trainer = {"shards": str(args.shards), "sentence_model": shard_sentence_model, "device": str(device), "precision": precision,
               "world_size": dinfo.world_size, "steps_per_epoch": steps_per_epoch,
               "total_steps": steps_per_epoch * tc.epochs, "compile": args.compile,
               "val_every": args.val_every, "save_every": args.save_every, "max_nan_steps": args.max_nan_steps,
               "max_skip_fraction": max_skip if math.isfinite(max_skip) else None,
               "verify": "skipped" if args.no_verify else "sha256",
               "global_batch": tc.batch_size * dinfo.world_size}
    if dinfo.is_main:
        with _writing(run.root, run):
            run.create()
            remove_stale_temp_files(run)  # what a killed run left half-written (never counted, never read)
        with _writing(run.config, run):
            write_json(run.config, {**run_cfg.to_dict(), "trainer": trainer})
        with _writing(run.info, run):
            write_run_info(run, shards=args.shards, manifests=manifests, verified=verified,
                           extra={"command": getattr(args, "command", sys.argv), "trainer": trainer,
                                  "resume": bool(args.resume)})
    log.info("run %s: preset %s, %d train samples, %d steps/epoch x %d epochs, batch %d x %d rank(s), %s %s",
             run.root, cfg.name, n_train, steps_per_epoch, tc.epochs, tc.batch_size, dinfo.world_size,
             device, precision)

    # model, optimiser, schedule -----------------------------------------------------------------------------
    if args.resume:  # before the run's model is built: the checkpoint must hold that model (bounded memory)
        _check_resume_checkpoint(run, cfg)
    seed_everything(tc.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, tc)
    scheduler = paper_scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=tc.epochs,
                                decay_start_epoch=tc.lr_decay_start_epoch, lr=tc.lr, lr_min=tc.lr_min,
                                warmup_steps=tc.warmup_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    seed_everything(stable_seed(tc.seed, "train-rank", dinfo.rank))  # dropout etc. differ per rank

    epoch, batch_in_epoch, step = 0, 0, 0
    updates, epoch_updates = 0, 0  # optimiser steps taken (in all, in the current epoch)
    best_score: float | None = None
    guard = NonFiniteGuard(args.max_nan_steps)
    period = RunningMeans()
    pending_rng: dict | None = None
    if args.resume:
        try:
            state = load_training_state(run.last_state, complete=True)
        except FileNotFoundError as exc:  # removed since resolve_config looked
            raise SetupError(f"--resume: no checkpoint to resume in {run.ckpt_dir}; start fresh without "
                             "--resume") from exc
        except BadInputError as exc:
            raise SetupError(f"{exc}; this run cannot be resumed from it: start a new --out (or remove "
                             f"{run.ckpt_dir} and start again without --resume)") from exc
        _load_weights(model, run.last, state)
        if state["steps_per_epoch"] != steps_per_epoch:
            raise SetupError(f"--resume: the run used {state['steps_per_epoch']} steps/epoch, now "
                             f"{steps_per_epoch} (batch size, rank count or shards changed)")
        try:
            current = group_settings(optimizer)  # this command line's lr, weight decay, betas
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            apply_group_settings(optimizer, scheduler, current)  # the saved state brought back the saved ones
            scaler.load_state_dict(state["scaler"])
            guard = NonFiniteGuard(args.max_nan_steps, **state["nonfinite"])
            period = RunningMeans(state["period"])
            rngs = list(state["rng"])
            with preserved_rng():  # a malformed RNG state fails here, not in the middle of the loop
                for r in rngs:
                    set_rng_state({k: v for k, v in r.items() if k != "cuda"})
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            raise SetupError(f"{run.last_state}: does not fit this run's model and optimiser "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); start a new --out"
                             ) from exc
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        best_score = state["best_score"]
        updates = _int_or(state.get("updates"), step - guard.total)  # states of older versions lack them
        epoch_updates = _int_or(state.get("epoch_updates"), batch_in_epoch)
        if len(rngs) == dinfo.world_size:
            pending_rng = rngs[dinfo.rank]
        else:
            log.warning("--resume with %d rank(s) instead of %d: RNG streams are reseeded (not bit-exact)",
                        dinfo.world_size, len(rngs))
        log.info("resuming at epoch %d, batch %d (global step %d)", epoch, batch_in_epoch, step)
    metrics = MetricsTable(run.metrics) if dinfo.is_main else None
    if metrics is not None:
        with _writing(run.metrics, run):
            metrics.truncate_after(step)

    net: torch.nn.Module = LossModule(model, tc.gather_negatives)
    if dinfo.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=needs_find_unused_parameters(model))  # model/ddp.py
    if args.compile:
        net = torch.compile(net)
    tb = _tensorboard(run) if dinfo.is_main else None
    keyid_log = None
    if args.log_keyids:
        with _writing(run.debug, run):
            run.debug.mkdir(parents=True, exist_ok=True)
            keyid_log = open(run.debug / f"keyids-rank{dinfo.rank}.tsv", "a", encoding="utf-8")
    stepper = Stepper(net, optimizer, scaler, device=device, precision=precision, grad_clip=tc.grad_clip,
                      guard=guard, dinfo=dinfo)
    budget = SkipBudget(max_skip, steps_per_epoch * tc.batch_size)

    from lavimo.dataset.shards.format import load_stats
    from lavimo.model.checkpoint import preprocess_record

    preprocess = preprocess_record(cfg, *load_stats(args.shards))  # encoding raw inputs needs no shard set

    def save_weights(path: Path, extra: dict) -> None:
        with _writing(path, run):
            save_checkpoint(model, path, extra={**extra, "preprocess": preprocess})

    def save(epoch_: int, batch_: int) -> None:
        """last.safetensors + last.state.pt (collective: every rank contributes its RNG state). The state goes
        to a temp file first, the weights are written (atomically) while it waits, then the state is renamed:
        a crash or a full disk in between leaves the previous pair (or none), never a truncated file."""
        rngs = gather_rng_states(dinfo)
        if dinfo.is_main:
            extra = {"step": step, "epoch": epoch_, "batch_in_epoch": batch_}
            with _writing(run.last_state, run):
                save_training_state(run.last_state, {
                    "epoch": epoch_, "batch_in_epoch": batch_, "step": step, "epochs": tc.epochs,
                    "steps_per_epoch": steps_per_epoch, "world_size": dinfo.world_size,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rngs, "best_score": best_score,
                    "nonfinite": guard.state_dict(), "period": period.state_dict(),
                    "updates": updates, "epoch_updates": epoch_updates},
                    before_rename=lambda: save_weights(run.last, extra))
            if tc.checkpoint_every and batch_ == 0 and epoch_ % tc.checkpoint_every == 0:
                save_weights(run.ckpt_dir / f"epoch-{epoch_:04d}.safetensors", extra)
        barrier(dinfo)

    def validate(epoch_: int) -> None:
        """Retrieval metrics on the whole val split (every rank encodes its shards, rank 0 gathers and scores),
        a metrics.csv row, TensorBoard scalars, the best checkpoint (never before the first optimiser step)."""
        nonlocal best_score, period
        t0 = time.perf_counter()
        with preserved_rng():
            loader = val_loader(args, cfg, tc, dinfo)
            try:
                split = encode_split(model, loader, device, with_video=cfg.modalities == "tmv", progress=False,
                                     precision=precision, fusion=False)[0]
            except EmptySplitError:  # this rank's part of the val split is empty (gathered with the others')
                split = None
            except ValueError as exc:  # e.g. a keyid twice in the val shards (a crafted or damaged set)
                raise SetupError(f"validation: {exc} ({args.shards}); check the shards (build-shards check "
                                 f"{args.shards})") from exc
            except NoUsableSamplesError as exc:
                counts = dict(getattr(exc, "counts", None) or loader_skip_counts(loader))
                raise TrainingStalled(f"validation: no usable sample in the val split on rank {dinfo.rank} "
                                      f"({args.shards}); skipped by reason: {format_counts(counts)}; check the "
                                      f"shards (build-shards check {args.shards})", counts) from exc
        if getattr(loader, "skipped", 0):
            log.warning("validation: %d val samples skipped (%s)", loader.skipped,
                        format_counts(loader_skip_counts(loader)))
        emb = gather_embeddings(split, dinfo)
        means = mean_over_ranks(period.means(), dinfo, device)  # loss terms averaged over ranks
        if dinfo.is_main:
            try:
                res = retrieval_scores(emb)
            except ValueError as exc:  # fewer than 2 usable val samples
                raise TrainingStalled(f"validation: {exc} (val samples skipped: "
                                      f"{format_counts(loader_skip_counts(loader))})") from exc
            row: dict[str, Any] = {"epoch": epoch_, "step": step, "lr": scheduler.get_last_lr()[0]}
            row.update({f"train_{k}": means.get(k, float("nan")) for k in LOSS_KEYS})
            row.update({f"fusion_{k}": means.get(f"fusion_{k}", float("nan")) for k in FUSION_NAMES})
            row["samples_per_s"] = period.samples_per_s()
            row["nonfinite_skipped"] = guard.total
            for d in ("t2m", "v2m"):
                for k in ("R@1", "R@5", "R@10", "MedR"):
                    row[f"val_{d}_{k}"] = res.get(f"{d}/{k}", float("nan"))
            row["val_score"] = res["score"]
            row["val_samples"] = int(res["n"])
            improved = updates > 0 and (best_score is None or res["score"] > best_score)
            if updates == 0:
                log.warning("no optimiser step so far: %s is not written (the weights are untrained)", run.best)
            row["best"] = int(improved)
            if improved:
                best_score = res["score"]
                save_weights(run.best, {"step": step, "epoch": epoch_, "val_score": res["score"]})
            with _writing(run.metrics, run):
                metrics.append(row)
            if tb is not None:
                for k, v in res.items():
                    tb.add_scalar(f"val/{k}", v, step)
                for k in FUSION_NAMES:
                    tb.add_scalar(f"fusion/{k}", row[f"fusion_{k}"], step)
                tb.flush()
            log.info("validation at epoch %d step %d (%.1fs): t2m R@1 %.2f R@5 %.2f MedR %.1f | v2m R@1 %.2f "
                     "R@5 %.2f MedR %.1f | score %.2f%s", epoch_, step, time.perf_counter() - t0,
                     row["val_t2m_R@1"], row["val_t2m_R@5"], row["val_t2m_MedR"], row["val_v2m_R@1"],
                     row["val_v2m_R@5"], row["val_v2m_MedR"], res["score"], " (best)" if improved else "")
        period = RunningMeans()
        barrier(dinfo)

    # the loop -----------------------------------------------------------------------------------------------
    if epoch >= tc.epochs:
        log.info("the run already finished %d epochs; nothing to do", tc.epochs)
    net.train()
    stopped = preempted = False
    stop_request = getattr(args, "stop_request", None)
    while epoch < tc.epochs and not stopped:
        with preserved_rng():  # starting the loader (DataLoader base seed) must not move the training RNG
            seed_everything(stable_seed(tc.seed, "loader-epoch", epoch, dinfo.rank))
            loader = train_loader(args, cfg, tc, epoch, steps_per_epoch, dinfo)
            budget.start_epoch(loader)
            batches = _checked_batches(loader, budget, epoch, dinfo.rank, args.shards)
            first = next(batches, None)
        batches = itertools.chain([] if first is None else [first], batches)
        for i in range(batch_in_epoch):  # skip what the interrupted run already consumed
            _next_batch(batches, i, steps_per_epoch, epoch, dinfo.rank)
        if pending_rng is not None:
            set_rng_state(pending_rng)
            pending_rng = None
        bar = _progress(args, dinfo, epoch, tc.epochs, steps_per_epoch, batch_in_epoch)
        epoch_end = False
        while batch_in_epoch < steps_per_epoch:
            t0 = time.perf_counter()
            batch = _next_batch(batches, batch_in_epoch, steps_per_epoch, epoch, dinfo.rank)
            if keyid_log is not None:
                keyid_log.write(f"{epoch}\t{step}\t{','.join(batch['keyid'])}\n")
                keyid_log.flush()
            terms = stepper(batch, step)
            if terms is not None:
                updates += 1
                epoch_updates += 1
                period.add(terms)
                if tb is not None and step % max(1, tc.log_every) == 0:
                    for k, v in terms.items():
                        tb.add_scalar(f"train/{k}", v, step)
                    tb.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    tb.add_scalar("train/grad_norm", stepper.last_grad_norm, step)
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            dt = time.perf_counter() - t0
            period.samples += tc.batch_size * dinfo.world_size
            period.seconds += dt
            if bar is not None:
                m = period.means()
                bar.set_postfix({k: f"{m[k]:.3f}" for k in LOSS_KEYS if k in m} |
                                {"samples/s": f"{period.samples_per_s():.1f}"}, refresh=False)
                bar.update(1)
            epoch_end = batch_in_epoch == steps_per_epoch
            if args.max_steps and step >= args.max_steps:
                stopped = True
            if stop_request is not None and stop_request.requested(dinfo.enabled, device):
                stopped = preempted = True
            if args.val_every and step % args.val_every == 0 and not epoch_end:
                validate(epoch)
            if stopped and not epoch_end:
                save(epoch, batch_in_epoch)
                break
            if args.save_every and step % args.save_every == 0 and not epoch_end:
                save(epoch, batch_in_epoch)
        if bar is not None:
            bar.close()
        skipped = budget.epoch_skipped(loader)
        if skipped:
            log.warning("epoch %d: the loader skipped %d samples on rank %d (%s)", epoch, skipped, dinfo.rank,
                        format_counts(budget.epoch_counts(loader)))
        if epoch_end:
            if epoch_updates == 0:  # the same on every rank (the skip decision is all-reduced)
                raise TrainingStalled(
                    f"epoch {epoch}: no optimiser step in {steps_per_epoch} batches: every batch had a non-finite "
                    f"loss or gradient (their keyids are in the warnings above; loader skips this epoch: "
                    f"{format_counts(budget.epoch_counts(loader))}); check the shards for NaN/inf values, or try "
                    f"a lower --lr or --precision fp32", budget.epoch_counts(loader))
            epoch += 1
            batch_in_epoch = 0
            epoch_updates = 0
            last = epoch == tc.epochs
            if args.val_every == 0 and (last or epoch % max(1, tc.eval_every) == 0):
                validate(epoch - 1)
            elif args.val_every and (last or step % args.val_every == 0):
                validate(epoch - 1)
            save(epoch, 0)
    if keyid_log is not None:
        keyid_log.close()
    if tb is not None:
        tb.close()
    if step > 0 and updates == 0:
        raise TrainingStalled(f"no optimiser step in {step} step(s): every batch had a non-finite loss or gradient "
                              f"(their keyids are in the warnings above); {run.best} was not written")
    if preempted and epoch < tc.epochs:
        log.warning("stopped by a signal at global step %d (epoch %d, batch %d) after writing %s; relaunch with "
                    "--resume auto (or --resume) to continue; exit status %d", step, epoch, batch_in_epoch,
                    run.last_state, EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    if dinfo.is_main:
        log.info("done: global step %d, epoch %d/%d, %d non-finite step(s) skipped, best val score %s; run dir %s",
                 step, epoch, tc.epochs, guard.total,
                 "n/a" if best_score is None else f"{best_score:.2f}", run.root)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# small helpers


#: the program name of train.py's error lines (``train.py: error: MESSAGE``, docs/design.md, "Errors")
PROG = "train.py"


def _fail(message: object, code: int) -> int:
    """Print ``train.py: error: message`` as one line on stderr; return the exit status ``code``."""
    return print_error(PROG, message, code)


def _os_error_text(exc: OSError) -> str:
    """One line for an OSError: the file, what happened, what to do (MissingWeightsError's message says what to
    put where)."""
    return os_error_text(exc, disk_full_hint="; free disk space (or choose another --out), then rerun (with "
                                             "--resume if RUN/checkpoints/last.state.pt exists)")


@contextlib.contextmanager
def _writing(path: Path, run: RunDir):
    """Turn an OSError while writing ``path`` into a SetupError naming it (a full disk says how to go on)."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            hint = (f"then rerun with --resume (the last complete checkpoint, {run.last_state}, is kept)"
                    if run.last_state.is_file() else
                    "then start again without --resume (no complete checkpoint was written)")
            raise SetupError(f"{path}: no space left on device while writing it; free disk space (or choose "
                             f"another --out), {hint}") from exc
        raise SetupError(f"{path}: cannot write it ({exc.strerror or exc}); check the run directory "
                         f"{run.root} (permissions, free space)") from exc


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


def _check_resume_checkpoint(run: RunDir, cfg) -> None:
    """Refuse to resume unless RUN/checkpoints/last.safetensors passes ``lavimo.model.checkpoint.check_checkpoint_fits``
    and its config is the model of RUN/config.json: the model train.py builds is then the one the file holds, so
    a run directory cannot make it allocate more than its own weights (a crafted config.json)."""
    from lavimo.model.checkpoint import check_checkpoint_fits

    if not run.last.is_file():
        raise SetupError(f"--resume: {run.last} not found (the run was interrupted before its first complete "
                         "checkpoint); start a new --out")
    try:
        saved = check_checkpoint_fits(run.last)["config"]
    except BadInputError as exc:
        raise SetupError(f"--resume: {exc}; start a new --out") from exc
    changes = _changes(saved.to_dict(), cfg.to_dict())
    if changes:
        raise SetupError(f"--resume: the model of {run.config} is not the one {run.last} holds ({changes[:300]}); "
                         "start a new --out")


def _load_weights(model: torch.nn.Module, path: Path, state: dict) -> None:
    """Load RUN/checkpoints/last.safetensors into ``model`` and check it belongs to the training state."""
    from safetensors.torch import load_model

    from lavimo.model.checkpoint import read_checkpoint_metadata

    if not path.is_file():
        raise SetupError(f"--resume: {path} not found (the run was interrupted before its first complete "
                         "checkpoint); start a new --out")
    try:
        step = read_checkpoint_metadata(path)["extra"].get("step")
    except BadInputError as exc:  # names the file and the field
        raise SetupError(f"--resume: {exc}; start a new --out") from exc
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


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed; no TensorBoard logs")
        return None
    return SummaryWriter(log_dir=str(run.tb))


def _progress(args, dinfo: DistInfo, epoch: int, epochs: int, total: int, initial: int):
    if not dinfo.is_main or args.no_progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="step", dynamic_ncols=True,
                leave=True)

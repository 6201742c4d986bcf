#!/usr/bin/env python
"""Train LAVIMO from WebDataset shards: one process (CPU or GPU) or several with torchrun (DDP).

    python train.py --shards SHARDS --preset tiny --epochs 3 --out runs/tiny --device cpu
    python train.py --shards SHARDS --out runs/tiny --resume           # continue exactly where it stopped
    torchrun --nproc_per_node=4 train.py --shards SHARDS --preset paper --out runs/paper

Flags override the preset; the resolved config is saved to RUN/config.json. One step = one batch per rank:
forward (model.compute_losses) under autocast, backward, gradient clipping, AdamW, per-step lr schedule
(model/schedule.py). Validation (retrieval t2m / v2m on the whole val split) at the end of every
``eval_every`` epochs (or every --val-every steps), logged to metrics.csv and TensorBoard. The layout of the run
directory, resume and DDP are described in the README.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dataset.atomic import write_json
from dataset.errors import BadInputError
from dataset.seeding import stable_seed
from model.run_dir import MetricsTable, RunDir, write_run_info
from model.schedule import paper_scheduler
from model.training import (
    FUSION_NAMES, LOSS_TERMS, DistInfo, LossModule, NonFiniteGuard, RunningMeans, Stepper, TrainingDiverged,
    barrier, cleanup_distributed, encode_split, gather_embeddings, gather_rng_states, init_distributed,
    load_training_state, local_rank_from_env, make_optimizer, mean_over_ranks, preserved_rng, resolve_device,
    resolve_precision, retrieval_scores, save_training_state, seed_everything, set_rng_state,
)

log = logging.getLogger("train")

# config fields a --resume may change without changing the optimisation
RESUME_MUTABLE = {"num_workers", "log_every", "eval_every", "checkpoint_every", "epochs", "extra"}


# --------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train LAVIMO (text / video / motion retrieval) from shards.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", required=True, help="shard directory ({split}-NNNNNN.tar, {split}.json, stats.npz)")
    p.add_argument("--preset", default="paper", help="paper | demo | tiny | path/to/config.json")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
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
                        ("recon_weight", "recon_weight")):
        if getattr(args, flag) is not None:
            o[field] = getattr(args, flag)
    if args.no_fusion:
        o["fusion"] = False
    if args.freeze_text:
        o["freeze_text"] = True
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"error: --set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        o[k.strip().replace("-", "_")] = v
    return o


def resolve_config(args: argparse.Namespace, run: RunDir):
    """Preset + flags -> LavimoConfig. On --resume the run's saved config is the base, and flags may only
    change the fields in RESUME_MUTABLE."""
    from model import load_preset

    overrides = config_overrides(args)
    if not args.resume:
        return load_preset(args.preset, **overrides)
    if not run.config.is_file():
        raise SystemExit(f"error: --resume: {run.config} not found (nothing to resume in {run.root})")
    saved = load_preset(run.config)
    cfg = load_preset(run.config, **overrides)
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if saved.to_dict()[k] != v and k not in RESUME_MUTABLE)
    if changed:
        raise SystemExit(f"error: --resume cannot change {changed} of the saved run; start a new --out instead")
    if cfg.epochs != saved.epochs:
        log.warning("--resume with epochs %d -> %d: the lr schedule is recomputed for the new length",
                    saved.epochs, cfg.epochs)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# shards


def check_shards(shards: Path, cfg) -> dict[str, dict]:
    """Read the train/val manifests; clear errors for a missing/empty directory or a feature-dim mismatch."""
    from dataset.stream import read_manifest

    if not shards.is_dir():
        raise BadInputError(shards, None, "shard directory not found (build it with build-shards)")
    manifests = {}
    for split in ("train", "val"):
        if not (shards / f"{split}.json").is_file() and not any(shards.glob(f"{split}-*.tar")):
            raise BadInputError(shards, split, f"no {split} shards ({split}.json + {split}-NNNNNN.tar); "
                                               "build them with build-shards")
        m = read_manifest(shards, split)
        n = int(m.get("num_samples", 0) or 0)
        if n <= 0:
            raise BadInputError(shards / f"{split}.json", "num_samples", f"the {split} split is empty")
        fdim = m.get("feature_dim")
        if fdim is not None and int(fdim) != int(cfg.feature_dim):
            raise BadInputError(
                shards / f"{split}.json", "feature_dim",
                f"the shards hold {fdim}-dim motion features but preset {cfg.name!r} expects "
                f"feature_dim={cfg.feature_dim} (use a matching preset or --set feature_dim={fdim})")
        manifests[split] = m
    return manifests


def train_loader(args, cfg, epoch: int, steps: int, dinfo: DistInfo):
    """The training loader of one epoch: shard order, shuffle buffer and augmentation seeded by (seed, epoch,
    rank, worker) inside the loader; ``steps`` batches on every rank; shards split by rank."""
    from dataset.stream import make_loader

    kw = {} if args.shuffle_buffer is None else {"shuffle_buffer": args.shuffle_buffer}
    loader = make_loader(args.shards, "train", batch_size=cfg.batch_size, train=True,
                         num_workers=cfg.num_workers, seed=cfg.seed, epoch_batches=steps,
                         rank=dinfo.rank, world_size=dinfo.world_size, **cfg.loader_kwargs(), **kw)
    loader.set_epoch(epoch)
    return loader


def val_loader(args, cfg, dinfo: DistInfo):
    """Every val sample exactly once, split by rank (each rank encodes its shards; see validate())."""
    from dataset.stream import make_loader

    return make_loader(args.shards, "val", batch_size=cfg.batch_size, train=False, num_workers=cfg.num_workers,
                       seed=cfg.seed, rank=dinfo.rank, world_size=dinfo.world_size, **cfg.loader_kwargs())


# --------------------------------------------------------------------------------------------------------------
# the run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.command = [sys.executable, str(Path(__file__).resolve()), *argv]
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.shards = Path(args.shards)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device, local_rank_from_env())
    except ValueError as exc:  # --device cuda without CUDA
        log.error("%s", exc)
        return 2
    dinfo = init_distributed(device)
    try:
        return train(args, dinfo, device)
    except (BadInputError, TrainingDiverged) as exc:
        log.error("%s", exc)
        return 2
    finally:
        cleanup_distributed()


def train(args: argparse.Namespace, dinfo: DistInfo, device: torch.device) -> int:
    from model import build_model, save_checkpoint

    run = RunDir(args.out or Path("runs") / Path(args.preset).stem)
    if not args.resume and run.last_state.exists():
        raise SystemExit(f"error: {run.root} already holds a run; pass --resume or choose another --out")
    cfg = resolve_config(args, run)
    precision = resolve_precision(args.precision, device, amp=cfg.amp)
    manifests = check_shards(args.shards, cfg)
    n_train = int(manifests["train"]["num_samples"])
    steps_per_epoch = cfg.epoch_batches or n_train // (cfg.batch_size * dinfo.world_size)
    if steps_per_epoch < 1:
        raise BadInputError(args.shards / "train.json", "num_samples",
                            f"{n_train} training samples are fewer than one batch of {cfg.batch_size} per rank "
                            f"x {dinfo.world_size} rank(s); lower --batch-size")
    trainer = {"shards": str(args.shards), "device": str(device), "precision": precision,
               "world_size": dinfo.world_size, "steps_per_epoch": steps_per_epoch,
               "total_steps": steps_per_epoch * cfg.epochs, "compile": args.compile,
               "val_every": args.val_every, "save_every": args.save_every, "max_nan_steps": args.max_nan_steps,
               "global_batch": cfg.batch_size * dinfo.world_size}
    if dinfo.is_main:
        run.create()
        write_json(run.config, {"model": cfg.to_dict(), "train": trainer})
        write_run_info(run, shards=args.shards, manifests=manifests,
                       extra={"command": getattr(args, "command", sys.argv), "trainer": trainer,
                              "resume": bool(args.resume)})
    log.info("run %s: preset %s, %d train samples, %d steps/epoch x %d epochs, batch %d x %d rank(s), %s %s",
             run.root, cfg.name, n_train, steps_per_epoch, cfg.epochs, cfg.batch_size, dinfo.world_size,
             device, precision)

    # model, optimiser, schedule -----------------------------------------------------------------------------
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = paper_scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                                decay_start_epoch=cfg.lr_decay_start_epoch, lr=cfg.lr, lr_min=cfg.lr_min,
                                warmup_steps=cfg.warmup_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    seed_everything(stable_seed(cfg.seed, "train-rank", dinfo.rank))  # dropout etc. differ per rank

    epoch, batch_in_epoch, step = 0, 0, 0
    best_score: float | None = None
    guard = NonFiniteGuard(args.max_nan_steps)
    period = RunningMeans()
    pending_rng: dict | None = None
    if args.resume:
        state = load_training_state(run.last_state)
        _load_weights(model, run.last, state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if state["steps_per_epoch"] != steps_per_epoch:
            raise SystemExit(f"error: --resume: the run used {state['steps_per_epoch']} steps/epoch, now "
                             f"{steps_per_epoch} (batch size, rank count or shards changed)")
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        best_score = state["best_score"]
        guard = NonFiniteGuard(args.max_nan_steps, **state["nonfinite"])
        period = RunningMeans(state["period"])
        rngs = state["rng"]
        if len(rngs) == dinfo.world_size:
            pending_rng = rngs[dinfo.rank]
        else:
            log.warning("--resume with %d rank(s) instead of %d: RNG streams are reseeded (not bit-exact)",
                        dinfo.world_size, len(rngs))
        log.info("resuming at epoch %d, batch %d (global step %d)", epoch, batch_in_epoch, step)
    metrics = MetricsTable(run.metrics) if dinfo.is_main else None
    if metrics is not None:
        metrics.truncate_after(step)

    net: torch.nn.Module = LossModule(model)
    if dinfo.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    if args.compile:
        net = torch.compile(net)
    tb = _tensorboard(run) if dinfo.is_main else None
    keyid_log = None
    if args.log_keyids:
        run.debug.mkdir(parents=True, exist_ok=True)
        keyid_log = open(run.debug / f"keyids-rank{dinfo.rank}.tsv", "a", encoding="utf-8")
    stepper = Stepper(net, optimizer, scaler, device=device, precision=precision, grad_clip=cfg.grad_clip,
                      guard=guard, dinfo=dinfo)

    def save(epoch_: int, batch_: int) -> None:
        """last.safetensors + last.state.pt (collective: every rank contributes its RNG state)."""
        rngs = gather_rng_states(dinfo)
        if dinfo.is_main:
            extra = {"step": step, "epoch": epoch_, "batch_in_epoch": batch_}
            save_checkpoint(model, run.last, extra=extra)
            if cfg.checkpoint_every and batch_ == 0 and epoch_ % cfg.checkpoint_every == 0:
                save_checkpoint(model, run.ckpt_dir / f"epoch-{epoch_:04d}.safetensors", extra=extra)
            save_training_state(run.last_state, {
                "version": 1, "epoch": epoch_, "batch_in_epoch": batch_, "step": step, "epochs": cfg.epochs,
                "steps_per_epoch": steps_per_epoch, "world_size": dinfo.world_size,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rngs, "best_score": best_score,
                "nonfinite": guard.state_dict(), "period": period.state_dict()})
        barrier(dinfo)

    def validate(epoch_: int) -> None:
        """Retrieval metrics on the whole val split (every rank encodes its shards, rank 0 gathers and scores),
        a metrics.csv row, TensorBoard scalars, the best checkpoint."""
        nonlocal best_score, period
        t0 = time.perf_counter()
        with preserved_rng():
            emb = encode_split(model, val_loader(args, cfg, dinfo), device, precision,
                               with_video=cfg.modalities == "tmv")
        emb = gather_embeddings(emb, dinfo)
        means = mean_over_ranks(period.means(), dinfo, device)  # loss terms averaged over ranks
        if dinfo.is_main:
            res = retrieval_scores(emb)
            row: dict[str, Any] = {"epoch": epoch_, "step": step, "lr": scheduler.get_last_lr()[0]}
            row.update({f"train_{k}": means.get(k, float("nan")) for k in LOSS_TERMS})
            row.update({f"fusion_{k}": means.get(f"fusion_{k}", float("nan")) for k in FUSION_NAMES})
            row["samples_per_s"] = period.samples_per_s()
            row["nonfinite_skipped"] = guard.total
            for d in ("t2m", "v2m"):
                for k in ("R@1", "R@5", "R@10", "MedR"):
                    row[f"val_{d}_{k}"] = res.get(f"{d}/{k}", float("nan"))
            row["val_score"] = res["score"]
            row["val_samples"] = int(res["n"])
            improved = best_score is None or res["score"] > best_score
            row["best"] = int(improved)
            if improved:
                best_score = res["score"]
                save_checkpoint(model, run.best, extra={"step": step, "epoch": epoch_, "val_score": res["score"]})
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
    if epoch >= cfg.epochs:
        log.info("the run already finished %d epochs; nothing to do", cfg.epochs)
    net.train()
    stopped = False
    while epoch < cfg.epochs and not stopped:
        with preserved_rng():  # starting the loader (DataLoader base seed) must not move the training RNG
            seed_everything(stable_seed(cfg.seed, "loader-epoch", epoch, dinfo.rank))
            batches = iter(train_loader(args, cfg, epoch, steps_per_epoch, dinfo))
            first = next(batches, None)
        batches = itertools.chain([] if first is None else [first], batches)
        for _ in range(batch_in_epoch):  # skip what the interrupted run already consumed
            next(batches)
        if pending_rng is not None:
            set_rng_state(pending_rng)
            pending_rng = None
        bar = _progress(args, dinfo, epoch, cfg.epochs, steps_per_epoch, batch_in_epoch)
        epoch_end = False
        while batch_in_epoch < steps_per_epoch:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(f"the loader gave only {batch_in_epoch} of {steps_per_epoch} batches in epoch "
                                   f"{epoch} on rank {dinfo.rank}") from None
            if keyid_log is not None:
                keyid_log.write(f"{epoch}\t{step}\t{','.join(batch['keyid'])}\n")
                keyid_log.flush()
            terms = stepper(batch, step)
            if terms is not None:
                period.add(terms)
                if tb is not None and step % max(1, cfg.log_every) == 0:
                    for k, v in terms.items():
                        tb.add_scalar(f"train/{k}", v, step)
                    tb.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    tb.add_scalar("train/grad_norm", stepper.last_grad_norm, step)
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            dt = time.perf_counter() - t0
            period.samples += cfg.batch_size * dinfo.world_size
            period.seconds += dt
            if bar is not None:
                m = period.means()
                bar.set_postfix({k: f"{m[k]:.3f}" for k in LOSS_TERMS if k in m} |
                                {"samples/s": f"{period.samples_per_s():.1f}"}, refresh=False)
                bar.update(1)
            epoch_end = batch_in_epoch == steps_per_epoch
            if args.max_steps and step >= args.max_steps:
                stopped = True
            if args.val_every and step % args.val_every == 0 and not epoch_end:
                validate(epoch)
            if stopped and not epoch_end:
                save(epoch, batch_in_epoch)
                break
            if args.save_every and step % args.save_every == 0 and not epoch_end:
                save(epoch, batch_in_epoch)
        if bar is not None:
            bar.close()
        if epoch_end:
            epoch += 1
            batch_in_epoch = 0
            last = epoch == cfg.epochs
            if args.val_every == 0 and (last or epoch % max(1, cfg.eval_every) == 0):
                validate(epoch - 1)
            elif args.val_every and (last or step % args.val_every == 0):
                validate(epoch - 1)
            save(epoch, 0)
    if keyid_log is not None:
        keyid_log.close()
    if tb is not None:
        tb.close()
    if dinfo.is_main:
        log.info("done: global step %d, epoch %d/%d, %d non-finite step(s) skipped, best val score %s; run dir %s",
                 step, epoch, cfg.epochs, guard.total,
                 "n/a" if best_score is None else f"{best_score:.2f}", run.root)
    return 0


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _load_weights(model: torch.nn.Module, path: Path, state: dict) -> None:
    """Load RUN/checkpoints/last.safetensors into ``model`` and check it belongs to the training state."""
    from safetensors.torch import load_model

    from model.checkpoint import read_checkpoint_metadata

    if not path.is_file():
        raise SystemExit(f"error: --resume: {path} not found")
    step = read_checkpoint_metadata(path)["extra"].get("step")
    if step is not None and step != state["step"]:
        raise SystemExit(f"error: --resume: {path} is from step {step} but the training state is from step "
                         f"{state['step']} (the run was killed while saving); no consistent checkpoint to resume")
    # load_model pairs with save_model (used by save_checkpoint): names of shared tensors are not reported missing
    missing, unexpected = load_model(model, str(path), strict=False)
    if unexpected or missing:
        raise SystemExit(f"error: --resume: {path} does not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")


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


if __name__ == "__main__":
    sys.exit(main())

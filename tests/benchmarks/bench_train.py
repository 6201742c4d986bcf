#!/usr/bin/env python
"""Training throughput: full train.py steps fed by the streaming loader from real shards, versus the same steps
on an in-memory batch (the naive baseline: no data loading at all). The ratio says whether the loader keeps up.

    .venv/bin/python tests/benchmarks/bench_train.py                       # demo preset, this CPU
    .venv/bin/python tests/benchmarks/bench_train.py --quick               # a few steps (smoke test)
    .venv/bin/python tests/benchmarks/bench_train.py --preset paper --device cuda --random-init --workers 8

One step = what train.py does per batch (model/training.Stepper: forward under autocast, backward, grad clip,
AdamW). Real path: time from asking the loader for the batch to the end of the step (loader waits included).
Baseline: the first real batch kept in memory and reused. Reported: median seconds per step, samples/s
(batch / median) and overall samples/s (all timed steps / their total time), the ratio real / in-memory, peak
memory (CUDA: max allocated; CPU: peak RSS of this process) and the projected wall time of ``--epochs`` epochs
over ``--train-samples`` samples at the real overall rate.

Without ``--shards`` a synthetic shard set is written to a temp dir with the real shard writer
(tests/fixtures/tiny_shards.py: per-frame JPEGs stored at ``--frame-size`` px, clips of 60-120 frames); the training
loader loops over it endlessly, so a few shards feed any number of steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HUMANML3D_TRAIN = 23384  # clips in HumanML3D's train split (with the mirrored copies)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo")
    p.add_argument("--shards", default=None, help="existing shard set (default: build a synthetic one)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per path")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the preset's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--random-init", action="store_true", help="random backbones (no pretrained files needed)")
    p.add_argument("--frame-size", type=int, default=256, help="stored JPEG side of the synthetic shards")
    p.add_argument("--train-samples", type=int, default=HUMANML3D_TRAIN, help="for the projection")
    p.add_argument("--epochs", type=int, default=None, help="for the projection (default: the preset's)")
    p.add_argument("--quick", action="store_true",
                   help="3 timed steps, 1 warm-up, batch 8 (unless given), small synthetic shards")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from lavimo.dataset.shards.stream import make_loader
    from lavimo.training.config import load_run_config
    from lavimo.core.device import resolve_device, resolve_precision
    from lavimo.training.loop import LossModule, NonFiniteGuard, Stepper, make_optimizer, seed_everything

    if args.quick:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
        args.frame_size = min(args.frame_size, 64)
        args.batch_size = args.batch_size or 8
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    over = {}
    if args.batch_size:
        over["batch_size"] = args.batch_size
    if args.workers is not None:
        over["num_workers"] = args.workers
    if args.random_init:
        over["random_init"] = True
    from lavimo.model import build_model

    run_cfg = load_run_config(args.preset, **over)
    cfg, tc = run_cfg.model, run_cfg.train  # the model, the run's settings
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, amp=tc.amp)
    b = tc.batch_size

    tmp = None
    shards = args.shards
    if shards is None:
        from tests.fixtures.tiny_shards import make_tiny_shards

        tmp = tempfile.TemporaryDirectory(prefix="bench-train-")
        n = max(2 * b, 16)
        t0 = time.perf_counter()
        shards = make_tiny_shards(Path(tmp.name) / "shards", n_train=n, n_val=0, n_classes=8,
                                  samples_per_shard=max(1, n // 4), size=args.frame_size,
                                  frames=(20, 40) if args.quick else (60, 120), feature_dim=cfg.feature_dim)
        print(f"built synthetic shards: {n} clips, {args.frame_size}px JPEG frames ({time.perf_counter() - t0:.0f}s)")

    seed_everything(tc.seed)
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, tc)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    net = LossModule(model, tc.gather_negatives)
    if args.compile:
        net = torch.compile(net)
    step = Stepper(net, optimizer, scaler, device=device, precision=precision, grad_clip=tc.grad_clip,
                   guard=NonFiniteGuard(0))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loader = make_loader(shards, "train", batch_size=b, train=True, num_workers=tc.num_workers, seed=tc.seed,
                         epoch_batches=2 * (args.warmup + args.steps) + 1, **cfg.loader_kwargs())
    it = iter(loader)
    batch0 = next(it)

    # baseline: the same step on an in-memory batch
    mem_times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        step(batch0, i)
        sync()
        if i >= args.warmup:
            mem_times.append(time.perf_counter() - t0)
    # real: the loader feeds every step
    real_times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        batch = next(it)
        step(batch, i)
        sync()
        if i >= args.warmup:
            real_times.append(time.perf_counter() - t0)

    def report(name, times):
        med = statistics.median(times)
        overall = b * len(times) / sum(times)
        print(f"{name:<26} median {med * 1000:8.1f} ms/step  {b / med:8.1f} samples/s (median)  "
              f"{overall:8.1f} samples/s (overall)")
        return b / med, overall

    print(f"preset {cfg.name}: batch {b}, image {cfg.image_size}px x {cfg.num_frames} frames, latent "
          f"{cfg.latent_dim}, workers {tc.num_workers}, device {device}, precision {precision}, "
          f"threads {torch.get_num_threads()}, {args.steps} timed steps after {args.warmup} warm-up")
    real_med, real_all = report("real shards (loader)", real_times)
    mem_med, mem_all = report("in-memory batch (baseline)", mem_times)
    print(f"ratio real / in-memory: {real_med / mem_med:.2f} (median), {real_all / mem_all:.2f} (overall)")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (max allocated), "
              f"{torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB reserved")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    epochs = args.epochs or tc.epochs
    hours = epochs * args.train_samples / real_all / 3600
    print(f"projected: {epochs} epochs x {args.train_samples} samples at {real_all:.1f} samples/s = {hours:.1f} h")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

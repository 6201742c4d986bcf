#!/usr/bin/env python
"""Cost of the gathered contrastive negatives (model/gather.py): DDP step time at 2 ranks with and without
gathering, and the share of the step spent in the gathers (the collectives of BatchGather, forward only: the
backward of a gather is a slice, no communication).

    .venv/bin/python tests/benchmarks/bench_gather.py                        # tiny preset, gloo, CPU
    .venv/bin/python tests/benchmarks/bench_gather.py --quick                # the smoke test's few steps
    .venv/bin/python tests/benchmarks/bench_gather.py --preset demo --batch-size 32 --random-init
    .venv/bin/python tests/benchmarks/bench_gather.py --device cuda --preset paper --random-init  # 2 GPUs, nccl

One step = model/training.Stepper's work on an in-memory batch (forward, backward with DDP's all-reduce, clip,
AdamW); median over ``--steps`` timed steps after ``--warmup``. Rank 0 prints one line per setting, then the
ratio of the two medians against the baseline measured in the same run (the step without gathering):
``ratio gather / no-gather: X.XXx`` beside the gathers' share. ``--quick`` (the smoke test): 5 steps after 2
warm-up, still 2 gloo ranks and the tiny preset unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _batch(cfg, b: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    t = min(cfg.max_motion_len, 60)
    return {"text": [f"a person walks {i % 7} steps and turns {seed}" for i in range(b)],
            "sent_emb": torch.nn.functional.normalize(torch.randn(b, 384, generator=g), dim=-1),
            "motion": torch.randn(b, t, cfg.feature_dim, generator=g), "mask": torch.ones(b, t, dtype=torch.bool),
            "video": torch.randn(b, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g),
            "keyid": [f"k{i}" for i in range(b)]}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import lavimo.model.gather as gather_mod
    from lavimo.model import build_model
    from lavimo.training.config import load_run_config
    from lavimo.model.ddp import needs_find_unused_parameters
    from lavimo.training.loop import DistInfo, LossModule, NonFiniteGuard, Stepper, make_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)

    spent = [0.0]  # seconds inside BatchGather's collectives (forward)
    orig_init, orig_call = gather_mod.BatchGather.__init__, gather_mod.BatchGather.__call__

    def _sync():
        if cuda:
            torch.cuda.synchronize()

    def timed_init(self, *a, **k):
        _sync()
        t0 = time.perf_counter()
        orig_init(self, *a, **k)
        _sync()
        spent[0] += time.perf_counter() - t0

    def timed_call(self, *a, **k):
        _sync()
        t0 = time.perf_counter()
        out = orig_call(self, *a, **k)
        _sync()
        spent[0] += time.perf_counter() - t0
        return out

    gather_mod.BatchGather.__init__, gather_mod.BatchGather.__call__ = timed_init, timed_call
    try:
        medians, share_of = {}, {}  # per setting: median step (s), median share of the gathers
        for gather in (False, True):
            over = {"gather_negatives": gather, "batch_size": args.batch_size}
            if args.random_init:
                over["random_init"] = True
            run_cfg = load_run_config(args.preset, **over)
            cfg, tc = run_cfg.model, run_cfg.train
            torch.manual_seed(0)
            model = build_model(cfg).to(device)
            net = torch.nn.parallel.DistributedDataParallel(
                LossModule(model, tc.gather_negatives), device_ids=[rank] if cuda else None,
                find_unused_parameters=needs_find_unused_parameters(model))
            opt = make_optimizer(model, tc)
            precision = "bf16" if cuda else "fp32"
            step = Stepper(net, opt, torch.amp.GradScaler(device.type, enabled=False), device=device,
                           precision=precision, grad_clip=tc.grad_clip, guard=NonFiniteGuard(0),
                           dinfo=DistInfo(rank, world, rank))
            batches = [_batch(cfg, args.batch_size, rank * 1000 + i) for i in range(4)]
            times, shares = [], []
            for i in range(args.warmup + args.steps):
                _sync()
                spent[0] = 0.0
                t0 = time.perf_counter()
                step(batches[i % 4], i)
                _sync()
                dt = time.perf_counter() - t0
                if i >= args.warmup:
                    times.append(dt)
                    shares.append(spent[0] / dt)
            med = statistics.median(times)
            medians[gather], share_of[gather] = med, statistics.median(shares)
            if rank == 0:
                print(f"{args.preset} {args.device} {world} ranks x batch {args.batch_size} "
                      f"(global {world * args.batch_size}), gather_negatives={gather}: median step {med * 1000:.1f} ms"
                      f", {world * args.batch_size / med:.1f} samples/s, gather share "
                      f"{statistics.median(shares) * 100:.2f}% of the step", flush=True)
        if rank == 0:  # against the baseline of the same run: the same steps without gathering
            print(f"{args.preset} {args.device} {world} ranks x batch {args.batch_size}: ratio gather / no-gather: "
                  f"{medians[True] / medians[False]:.2f}x (median step {medians[True] * 1000:.1f} / "
                  f"{medians[False] * 1000:.1f} ms over {args.steps} steps), gather share "
                  f"{share_of[True] * 100:.2f}% of the step", flush=True)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as mp

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="few steps (smoke test): still 2 ranks, tiny preset")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--random-init", action="store_true")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if args.quick else 20
    if args.warmup is None:
        args.warmup = 2 if args.quick else 3
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(args.ranks, port, args), nprocs=args.ranks, join=True, start_method="spawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())

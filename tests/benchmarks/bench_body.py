"""Benchmark: posing AMASS poses with the procedural body, frames per second on CPU.

Measures ``Body.pose`` (the real path: body shaped once per call, the skinning of the shaped rest vertices
as one matrix product per chunk) against ``Body.pose_smplx`` (the baseline: smplx's own ``forward`` in the
same chunks, which re-shapes the body and multiplies the pose blend shapes for every frame), on the same
frames, and checks that both give the same vertices. Threads: ``--threads`` (default 1).

Frames: the real AMASS sample from ../shared/data/amass (601 frames, tiled to ``--frames``), or random
poses without ../shared.

    .venv/bin/python tests/benchmarks/bench_body.py [--quick] [--frames N] [--repeats R] [--threads K]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lavimo.body.model import load_body  # noqa: E402


def _frames(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    shared = Path(os.environ.get("LAVIMO_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = shared / "amass" / "amass_sample.npz"
    if path.is_file():
        z = np.load(path)
        reps = -(-n // len(z["poses"]))
        return (np.tile(z["poses"], (reps, 1))[:n], np.tile(z["trans"], (reps, 1))[:n], z["betas"],
                f"AMASS sample {path.name}")
    rng = np.random.default_rng(0)
    return rng.normal(0, 0.3, (n, 156)), rng.normal(0, 0.5, (n, 3)), np.zeros(10), "random poses"


def _median_fps(fn, frames: int, repeats: int) -> tuple[float, float]:
    """(frames/s of wall time, frames/s of this process's CPU time), medians over ``repeats`` calls.
    On a shared machine the CPU-time figure is what one uncontended core would do (with --threads 1)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return frames / statistics.median(wall), frames / statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few frames and repeats (smoke test)")
    ap.add_argument("--frames", type=int, default=2048, help="frames posed per call (default 2048)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per method (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--chunk", type=int, default=128, help="frames per batch for both methods")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = 256, 2
    torch.set_num_threads(args.threads)
    body = load_body()
    poses, trans, betas, desc = _frames(args.frames)
    print(f"body: {body.kind}, V={body.num_vertices}, J={body.num_joints}; {args.frames} frames ({desc}); "
          f"threads={args.threads}, chunk={args.chunk}")
    fast = body.pose(poses, trans, betas, chunk=args.chunk)
    ref = body.pose_smplx(poses, trans, betas, chunk=args.chunk)
    err = float(np.abs(fast.vertices - ref.vertices).max())
    print(f"max |vertices(pose) - vertices(smplx forward)| = {err:.2e} m")
    if err > 1e-4:
        print("MISMATCH between the real path and the baseline")
        return 1
    fast_wall, fast_cpu = _median_fps(lambda: body.pose(poses, trans, betas, chunk=args.chunk), args.frames,
                                      args.repeats)
    ref_wall, ref_cpu = _median_fps(lambda: body.pose_smplx(poses, trans, betas, chunk=args.chunk),
                                    args.frames, args.repeats)
    print(f"Body.pose        : {fast_wall:10.1f} frames/s wall, {fast_cpu:10.1f} frames/s per CPU-second "
          f"(medians of {args.repeats})")
    print(f"smplx forward    : {ref_wall:10.1f} frames/s wall, {ref_cpu:10.1f} frames/s per CPU-second")
    print(f"ratio pose/smplx: {fast_wall / ref_wall:.2f}x wall, {fast_cpu / ref_cpu:.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())

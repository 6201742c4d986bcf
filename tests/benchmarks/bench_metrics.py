#!/usr/bin/env python
"""Benchmark the metric core: lavimo.evaluation.metrics.gt_ranks (counting, O(N^2)) vs a sort-based baseline (O(N^2 log N)).

The baseline is how TMR's evaluation finds ranks: sort every row, locate the positions equal to the ground-truth
score, average them. Both must give identical ranks (checked on every run). Matrix sizes: HumanML3D's test split
(N = 4384) and, with --quick, N = 512. Prints medians over the repeats and the speed-up.

    .venv/bin/python tests/benchmarks/bench_metrics.py [--quick] [--n N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lavimo.evaluation.metrics import gt_ranks, similar_text_mask  # noqa: E402


def sort_baseline(sims: np.ndarray, correct: np.ndarray | None = None) -> np.ndarray:
    """Ranks by sorting each row (decreasing score) and averaging the positions tied with the GT score."""
    dists = -sims
    sorted_d = np.sort(dists, axis=1)
    if correct is None:
        gt = np.diagonal(dists)[:, None]
    else:
        gt = np.where(correct, dists, np.inf).min(axis=1)[:, None]
    rows, cols = np.nonzero(sorted_d == gt)
    sums = np.bincount(rows, weights=cols, minlength=sims.shape[0])
    counts = np.bincount(rows, minlength=sims.shape[0])
    return sums / counts


def timeit(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small matrix, 2 repeats (smoke test)")
    p.add_argument("--n", type=int, default=None, help="matrix size N (default 4384, or 512 with --quick)")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    n = args.n or (512 if args.quick else 4384)
    repeats = args.repeats or (2 if args.quick else 5)
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(n, 64)).astype(np.float32)
    latent /= np.linalg.norm(latent, axis=1, keepdims=True)
    sims = (latent + 0.5 * rng.normal(size=latent.shape).astype(np.float32)) @ latent.T
    sims = np.round(sims, 3).astype(np.float32)  # realistic-ish ties
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    correct = similar_text_mask(emb @ emb.T, 0.8) | np.eye(n, dtype=bool)

    for name, mask in (("diagonal", None), ("threshold", correct)):
        ours = gt_ranks(sims, mask)
        base = sort_baseline(sims, mask)
        if not np.array_equal(ours, base):
            print(f"MISMATCH ({name}): {int((ours != base).sum())} rows differ", file=sys.stderr)
            return 1
        t_ours = statistics.median(timeit(lambda: gt_ranks(sims, mask), repeats))
        t_base = statistics.median(timeit(lambda: sort_baseline(sims, mask), repeats))
        print(f"{name:>9} N={n}: gt_ranks median {t_ours * 1e3:8.1f} ms | sort baseline median "
              f"{t_base * 1e3:8.1f} ms | speed-up x{t_base / t_ours:.2f} (identical ranks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke tests: every benchmark in tests/benchmarks runs end to end with --quick (so none rots) and prints
its figures and its ratio against the naive baseline measured in the same run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tests" / "benchmarks"

# script, extra arguments, lines its output must contain
CASES = [
    ("bench_body.py", [], ["ratio pose/smplx:"]),
    ("bench_features.py", [], ["ratio features:", "ratio amass->features:"]),
    ("bench_loader.py", [], ["naive baseline, 1 proc", "loader jpgs, 1 proc", "bytes/sample",
                             "ratio loader jpgs / naive baseline"]),
    ("bench_shards.py", [], ["ratio build_shards / naive"]),
    ("bench_metrics.py", [], ["identical ranks"]),
    ("bench_search.py", [], ["text query over", "ratio naive / search", "video query auto", "video query naive",
                             "naive / auto", "seek / auto", "ratio build / naive", "ratio parallel / serial build",
                             "memory of a", "start-up to first result", "batch of",
                             "ratio save / plain", "ratio load / plain"]),
    ("bench_search_scale.py", [], ["baseline exact numpy", "index exact:", "index ivfpq:", "ratio baseline / exact",
                                   "ratio baseline / ivfpq", "recall@10"]),
    ("bench_search_scale.py", ["--kinds", "ivfpq", "--text-e2e"], ["index ivfpq:", "text end to end",
                                                                 "encode median", "search median"]),
    ("bench_gather.py", [], ["gather_negatives=False", "gather_negatives=True", "ratio gather / no-gather:"]),
    ("bench_render.py", [], ["pipeline", "naive", "raster limit", "ratio pipeline / naive",
                             "ratio pipeline / raster limit"]),
    ("bench_launch.py", [], ["launch-to-first-step, median of 1", "ratio full/stream",
                             "up-front shard check alone"]),
    ("bench_train.py", ["--preset", "tiny", "--threads", "1", "--device", "cpu"],
     ["real shards (loader)", "in-memory batch (baseline)", "ratio real / in-memory", "projected:"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("script,args,needles", CASES,
                         ids=[c[0] + (" --text-e2e" if "--text-e2e" in c[1] else "") for c in CASES])
def test_benchmark_runs_quick(script: str, args: list[str], needles: list[str]):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for needle in needles:
        assert needle in proc.stdout, f"{script}: {needle!r} missing from its output"
    if script == "bench_metrics.py":  # both cases (plain and threshold) must agree with the baseline
        assert proc.stdout.count("identical ranks") == 2

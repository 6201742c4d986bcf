"""Smoke test: tests/benchmarks/bench_train.py --quick runs end to end (tiny preset) and prints its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_train_quick():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "benchmarks" / "bench_train.py"), "--quick",
                           "--preset", "tiny", "--threads", "1", "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for needle in ("real shards (loader)", "in-memory batch (baseline)", "ratio real / in-memory", "projected:"):
        assert needle in proc.stdout

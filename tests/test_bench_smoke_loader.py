"""Smoke tests: the loader and shard-build benchmarks run end to end with --quick (so they do not rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "benchmarks"


def _run(script: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=BENCH.parents[1])
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.slow
def test_bench_loader_quick():
    text = _run("bench_loader.py")
    assert "naive baseline, 1 proc" in text and "loader jpgs, 1 proc" in text and "bytes/sample" in text
    assert "ratio loader jpgs / naive baseline" in text


@pytest.mark.slow
def test_bench_shards_quick():
    text = _run("bench_shards.py")
    assert "ratio build_shards / naive" in text

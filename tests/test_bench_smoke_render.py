"""Smoke test: the rendering benchmark runs (--quick) and prints every figure and both ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_render_quick():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "benchmarks" / "bench_render.py"), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for needle in ("pipeline", "naive", "raster limit", "ratio pipeline / naive", "ratio pipeline / raster limit"):
        assert needle in proc.stdout, needle

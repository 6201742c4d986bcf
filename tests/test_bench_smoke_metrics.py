"""Smoke test: the metric-core benchmark runs (--quick) and its two implementations agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_metrics_quick():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "benchmarks" / "bench_metrics.py"), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("identical ranks") == 2

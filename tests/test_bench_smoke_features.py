"""Smoke test: the features benchmark runs (--quick) and its loop baseline matches the real path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_features_quick():
    pytest.importorskip("render.body", reason="render/body.py not available")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "benchmarks" / "bench_features.py"), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio features:" in proc.stdout and "ratio amass->features:" in proc.stdout

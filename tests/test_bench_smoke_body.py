"""Smoke test: the body-posing benchmark runs (--quick) and its baseline agrees with the real path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_body_quick():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "benchmarks" / "bench_body.py"), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio pose/smplx:" in proc.stdout

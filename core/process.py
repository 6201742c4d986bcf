"""Child processes that never outlive their parent (render-amass and build-shards workers), and commands run as
stoppable stages (scripts/reproduce.py, scripts/paper_ablations.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: ask the kernel to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``
    through ctypes). Returns False where that is unavailable (other systems, no libc symbol); callers then
    need a watchdog of their own."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc / no prctl symbol
        return False


def run_stoppable(cmd: Sequence[str], stop: Callable[[], bool], *, kill_after_s: float | None = None,
                  **popen_kw: Any) -> int:
    """Run ``cmd`` to its end and return its exit status. It runs in its own session, so a terminal's SIGINT
    reaches only the caller; once ``stop()`` is true (a :class:`lavimo.core.stop.StopSignals` that only records)
    the command gets exactly one SIGTERM and is waited for, so it ends at its own safe point; with
    ``kill_after_s`` it is killed if still running that many seconds later."""
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, start_new_session=True, **popen_kw)
    sent_at: float | None = None
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if sent_at is None and stop():
                proc.terminate()
                sent_at = time.monotonic()
            elif sent_at is not None and kill_after_s is not None and time.monotonic() - sent_at > kill_after_s:
                proc.kill()
                return proc.wait()

"""Child processes that never outlive their parent (render-amass and build-shards workers)."""

from __future__ import annotations

import signal
import sys

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

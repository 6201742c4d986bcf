"""The one worker pool of the batch commands (build-shards' clips, render-amass' clips).

Worker processes are forked from the parent on first use (a no-op re-run never forks), die with the parent
(``prctl(PR_SET_PDEATHSIG)`` on Linux, else a watchdog thread), leave SIGINT to the parent (which stops the pool)
and use one torch thread each. With one worker nothing is forked: the work runs in the calling process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from lavimo.core.process import set_parent_death_signal


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> str:
    """Make this (child) process exit when ``parent_pid`` dies; returns the mechanism used.

    On Linux: ``prctl(PR_SET_PDEATHSIG, sig)`` through ctypes ("prctl"). Elsewhere, or when prctl is not
    available: a daemon thread that polls ``os.getppid()`` every 0.5 s and calls ``os._exit(1)`` once the
    parent is gone ("poll")."""
    if set_parent_death_signal(sig):
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
        return "prctl"

    def watch() -> None:
        import time

        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
    return "poll"


def worker_init(parent_pid: int | None = None) -> None:
    """Pool worker set-up: die with the parent, leave SIGINT to the parent (which stops the pool), one
    torch thread."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


class WorkerPool:
    """``workers`` forked processes, created on first use; with one worker the work runs in this process.

    :meth:`ordered` maps a function over items in order with a bounded window; :meth:`close` waits for the
    workers, :meth:`terminate` stops them at once (an interrupt: queued items are dropped)."""

    def __init__(self, workers: int):
        self.workers, self.pool = workers, None

    def get(self):
        """The multiprocessing pool (None for one worker)."""
        if self.pool is None and self.workers > 1:
            import multiprocessing as mp

            self.pool = mp.get_context("fork").Pool(self.workers, initializer=worker_init, initargs=(os.getpid(),))
        return self.pool

    def ordered(self, fn: Callable[[Any], Any], items: Iterable, window: int) -> Iterator:
        """``fn(item)`` for each item, in order, at most ``window`` submitted ahead (bounded memory)."""
        pool = self.get()
        if pool is None:
            yield from map(fn, items)
            return
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

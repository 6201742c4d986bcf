"""The one worker-process module of the batch commands (build-shards' clips, render-amass' clips).

:class:`WorkerPool` (build-shards): processes forked from the parent on first use (a no-op re-run never forks),
dying with the parent (``prctl(PR_SET_PDEATHSIG)`` on Linux, else a watchdog thread), leaving SIGINT to the parent
(which stops the pool), one torch thread each; with one worker the work runs in the calling process.

:class:`WorkerProcesses` (render-amass): long-lived processes, each running one job (its own EGL context and share
of the clips), started from a fork server that imported the heavy modules once, reporting through one events queue,
stopped by SIGTERM (finish the current item, report) with a grace period, and leaving when the parent is gone
(:func:`worker_setup`: parent-death signal and a pipe watchdog).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from lavimo.core.process import set_parent_death_signal

log = logging.getLogger(__name__)


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


#: exit status of a :class:`WorkerProcesses` worker whose parent is gone
PARENT_GONE_EXIT = 3


def _watch_parent(conn) -> None:
    """Watchdog thread: ``conn`` is the read end of a pipe whose only write end the parent holds; end of file means
    the parent exited or was killed, so this worker leaves at once."""
    try:
        while True:
            conn.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(PARENT_GONE_EXIT)


def worker_setup(parent_conn=None) -> None:
    """First call of a :class:`WorkerProcesses` worker: die with the fork server (the parent-death signal; Linux)
    and with the command (a watchdog thread on ``parent_conn``, the pipe the workers were started with)."""
    set_parent_death_signal()
    if parent_conn is not None:
        threading.Thread(target=_watch_parent, args=(parent_conn,), name="parent-watchdog", daemon=True).start()


def fork_server_context(preload: list[str], start: bool = False):
    """multiprocessing context for :class:`WorkerProcesses`: forkserver with ``preload`` imported once (instead of
    once per spawned worker) where available, else spawn. ``start``: start the fork server now, so its imports
    overlap the parent's own set-up."""
    import multiprocessing as mp

    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # no fork on this platform
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(preload)
    if start:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    return ctx


def stop_fork_server() -> None:
    """Stop (and reap) the fork server after the workers ended, so no idle process holding the preloaded modules
    stays around and its CPU time (the workers' included) is accounted to this process's children."""
    try:
        from multiprocessing import forkserver

        forkserver._forkserver._stop()  # private in CPython 3.8-3.13; harmless to skip
    except Exception:  # noqa: BLE001
        log.debug("could not stop the fork server", exc_info=True)


class WorkerProcesses:
    """One process per job, each running ``target(index, *job, events, parent_conn)`` once.

    The target calls :func:`worker_setup` ``(parent_conn)`` first, puts its events (tuples) on ``events`` and ends
    with ``("exit", index)``. :meth:`run` passes every other event to ``on_event`` until each worker has exited or
    died (a death with a non-zero status is logged unless stopping). Once ``should_stop()`` is true, each worker
    gets SIGTERM (it finishes its current item and reports) and ``grace_s`` seconds before it is killed."""

    def __init__(self, target: Callable, jobs: list[tuple], preload: list[str], grace_s: float = 15.0):
        self.target, self.jobs, self.preload, self.grace_s = target, jobs, preload, grace_s

    def run(self, on_event: Callable[[tuple], None], should_stop: Callable[[], bool]) -> bool:
        """Start the workers and handle their events until they end; returns whether they were stopped."""
        ctx = fork_server_context(self.preload)
        events = ctx.Queue()
        parent_r, parent_w = ctx.Pipe(duplex=False)  # the workers' watchdog: EOF when this process is gone
        procs: list = []
        stopping_since: float | None = None
        try:
            for i, job in enumerate(self.jobs):
                pr = ctx.Process(target=self.target, args=(i, *job, events, parent_r), daemon=True)
                pr.start()
                procs.append(pr)
            parent_r.close()
            alive = set(range(len(procs)))
            while alive:
                if stopping_since is None and should_stop():
                    stopping_since = time.monotonic()
                    for i in alive:
                        procs[i].terminate()  # SIGTERM: the worker stops after its current item and reports
                if stopping_since is not None and time.monotonic() - stopping_since > self.grace_s:
                    log.warning("worker(s) %s did not stop within %g s; killing them", sorted(alive), self.grace_s)
                    break
                try:
                    ev = events.get(timeout=0.2)
                except queue.Empty:
                    for i in list(alive):
                        if not procs[i].is_alive() and procs[i].exitcode not in (0, None):
                            if stopping_since is None:
                                log.error("worker %d died (exit code %s)", i, procs[i].exitcode)
                            alive.discard(i)
                    continue
                if ev[0] == "exit":
                    alive.discard(ev[1])
                else:
                    on_event(ev)
            for pr in procs:
                pr.join(timeout=10 if stopping_since is None else 1)
        finally:
            for pr in procs:
                if pr.is_alive():
                    pr.kill()
                    pr.join(timeout=5)
            parent_w.close()
            stop_fork_server()
        return stopping_since is not None

"""The one stop-signal handler of every long command (render-amass, build-shards, train.py).

A signal only *records* a stop request; the command checks it at its own safe points (after a frame, between
shards, after an optimisation step) and ends cleanly there, writing its report or checkpoint. The handler never
raises into arbitrary code unless asked to (``raise_as``, for a main thread that may be blocked waiting on a
pool), and then never inside a :meth:`StopSignals.deferred` block (a shard being written is finished first).
Once :meth:`StopSignals.decide` was called (the report is being written), later signals are ignored, so the report
and the exit status always agree (docs/design.md, "Stopping").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

#: the signals an interactive or batch command stops on
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Records the first of ``signals``; ``stop()`` (call the object) says whether one came.

    Args:
        signals: the signals handled while :meth:`installed`.
        prog: the command's name for its stderr lines; None prints nothing (a worker process).
        on_first: what the first signal's stderr line says will happen (e.g. "stopping after the current frame").
        on_repeat: "exit" ends the process at once (``os._exit(1)``, no report) on a second signal; "log" only
            logs it (the step and the checkpoint finish first); "ignore" does nothing.
        raise_as: an exception type raised from the handler (with the signal's name) outside :meth:`deferred`
            blocks; inside one it is raised when the outermost block ends.
    """

    def __init__(self, signals: Iterable[int] = INTERRUPT_SIGNALS, prog: str | None = None, on_first: str = "",
                 on_repeat: str = "ignore", raise_as: Callable[[str], BaseException] | None = None):
        if on_repeat not in ("exit", "log", "ignore"):
            raise ValueError(f"on_repeat must be exit, log or ignore, not {on_repeat!r}")
        self.signals = tuple(signals)
        self.prog, self.on_first, self.on_repeat, self.raise_as = prog, on_first, on_repeat, raise_as
        self.signal_name: str | None = None
        self.decided = False
        self._depth = 0
        self._pending = False

    def __call__(self) -> bool:
        return self.signal_name is not None

    def decide(self) -> str | None:
        """The signal that stopped the run (or None), fixed from now on: later signals are ignored."""
        self.decided = True
        return self.signal_name

    def request(self, name: str) -> None:
        """Record a stop as if signal ``name`` had come (e.g. another DDP rank got one)."""
        if self.signal_name is None:
            self.signal_name = name

    def handle(self, signum: int, frame=None) -> None:  # noqa: ARG002 - the signal module's handler signature
        name = signal.Signals(signum).name
        if self.decided:
            return
        if self.signal_name is not None:
            if self.on_repeat == "exit":
                self._say(f"{name} again: exiting now, without a report")
                os._exit(1)
            if self.on_repeat == "log":
                log.warning("received %s again: still finishing %s", name, self.on_first or "the current work")
            return
        self.signal_name = name
        if self.on_first:
            self._say(f"{name}: {self.on_first}")
        if self.raise_as is not None:
            if self._depth:
                self._pending = True
            else:
                self.decided = True
                raise self.raise_as(name)

    def _say(self, text: str) -> None:
        if self.prog is not None:
            sys.stderr.write(f"\n{self.prog}: {text}\n")
            sys.stderr.flush()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a ``raise_as`` signal does not interrupt; the exception comes when the outermost block
        ends (a shard, its state and the counters are written together)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending and not self.decided:
            self._pending, self.decided = False, True
            raise self.raise_as(self.signal_name)  # type: ignore[misc]

    def install(self) -> "StopSignals":
        """Handle ``signals`` from now on (main thread only; elsewhere nothing is installed)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self.handle) for s in self.signals}
        return self

    def uninstall(self, then_ignore: bool = False) -> None:
        """Put the previous handlers back, or with ``then_ignore`` (the process is about to exit) ignore the
        signals from now on: with the default action back, a signal during the interpreter's exit would kill a
        process whose report says it ended normally."""
        for s, h in getattr(self, "_previous", {}).items():
            signal.signal(s, signal.SIG_IGN if then_ignore else h if h is not None else signal.SIG_DFL)
        self._previous = {}

    @contextlib.contextmanager
    def installed(self, then_ignore: bool = False) -> Iterator["StopSignals"]:
        """:meth:`install` while inside, :meth:`uninstall` on leaving."""
        self.install()
        try:
            yield self
        finally:
            self.uninstall(then_ignore)

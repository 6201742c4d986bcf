"""Preemption-safe training: SIGTERM / SIGUSR1 ask train.py to stop after the current step.

A cluster that preempts a job (Slurm: ``PreemptMode=REQUEUE``, a time limit with ``--signal``) sends SIGTERM or
a chosen signal a while before it kills the processes. :class:`StopRequest` turns those signals into a flag;
train.py checks it after every optimisation step, and once set (on any rank: the flag is all-reduced, so every
rank stops after the same step) it finishes that step, writes a complete checkpoint (``last.safetensors`` +
``last.state.pt``, exactly as a periodic save) and exits with :data:`EXIT_PREEMPTED`. Relaunching the same
command line with ``--resume auto`` continues bit-identically (see :func:`resolve_resume`).

Exit status :data:`EXIT_PREEMPTED` = 75 (``EX_TEMPFAIL`` of sysexits.h, "try again later") is what a requeue
script tests (``scripts/slurm/train.sbatch``): 0 = finished, 1 = no progress possible, 2 = usage / set-up
error, 75 = stopped by a signal with a checkpoint written, relaunch to continue.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Iterable

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Records the stop signals; :meth:`requested` says (collectively under DDP) whether to stop now.

    ``install()`` replaces the handlers of ``signals`` (main thread only) and ``uninstall()`` restores them. A
    second signal while stopping is only logged: the step and the checkpoint finish first (a cluster's final
    SIGKILL still ends the process).
    """

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.signum is None:
            log.warning("received %s: finishing the current step, then writing a checkpoint and exiting with "
                        "status %d", signal.Signals(signum).name, EXIT_PREEMPTED)
        else:
            log.warning("received %s again: still finishing the step and the checkpoint",
                        signal.Signals(signum).name)
        self.signum = signum if self.signum is None else self.signum

    def install(self) -> "StopRequest":
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)
        return self

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> "StopRequest":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    @property
    def local(self) -> bool:
        """This process received a stop signal."""
        return self.signum is not None

    def requested(self, distributed: bool = False, device: torch.device | None = None) -> bool:
        """True when this process (or, with ``distributed``, any rank) got a stop signal. With
        ``distributed`` it is a collective call (one 1-element all_reduce): every rank must call it after every
        step, and every rank gets the same answer."""
        if not distributed:
            return self.local
        flag = torch.tensor([1.0 if self.local else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = flag.item() > 0  # one device-to-host copy
        if stop and self.signum is None:
            self.signum = int(signal.SIGTERM)  # another rank got it
        return stop


def resolve_resume(value: str | bool | None, last_state: str | os.PathLike) -> bool:
    """train.py's ``--resume`` value -> whether to resume: absent -> False; bare ``--resume`` -> True (the run
    must hold a checkpoint); ``auto`` -> True when ``last_state`` (RUN/checkpoints/last.state.pt) exists, False
    (a fresh start) otherwise — so one command line serves the first launch and every requeue."""
    if value in (None, False):
        return False
    if value == "auto":
        return Path(last_state).is_file()
    return True

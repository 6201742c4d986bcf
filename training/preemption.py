"""Preemption-safe training: SIGTERM / SIGUSR1 ask train.py to stop after the current step.

A cluster that preempts a job (Slurm: ``PreemptMode=REQUEUE``, a time limit with ``--signal``) sends SIGTERM or
a chosen signal a while before it kills the processes. :func:`preemption_signals` records them
(:class:`lavimo.core.stop.StopSignals`); the trainer asks :func:`stop_requested` after every step (all-reduced:
every rank stops after the same step), writes a complete checkpoint and exits with :data:`EXIT_PREEMPTED` = 75
(``EX_TEMPFAIL``, what ``scripts/slurm/train.sbatch`` tests to requeue). A second signal is only logged. The same
command line with ``--resume auto`` continues bit-identically (:func:`resolve_resume`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from lavimo.core.errors import SetupError
from lavimo.core.stop import StopSignals

EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def preemption_signals() -> StopSignals:
    """train.py's handler of :data:`STOP_SIGNALS` (install it with ``installed()``)."""
    return StopSignals(STOP_SIGNALS, prog="train.py", on_repeat="log",
                       on_first=f"the current step and its checkpoint first, then exit status {EXIT_PREEMPTED}")


def stop_requested(stop: StopSignals, distributed: bool = False, device: torch.device | None = None) -> bool:
    """True when this process (or, with ``distributed``, any rank) got a stop signal. With ``distributed`` it is
    a collective call (one 1-element all_reduce): every rank must call it after every step, and every rank gets
    the same answer (a rank that got none records SIGTERM)."""
    if not distributed:
        return stop()
    flag = torch.tensor([1.0 if stop() else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    requested = flag.item() > 0  # one device-to-host copy
    if requested:
        stop.request(signal.SIGTERM.name)  # another rank got it (keeps a signal of its own)
    return requested


#: the training state's file name before format 2 (training/loop.py, STATE_VERSION)
LEGACY_STATE_NAME = "last.state.pt"


def resolve_resume(value: str | bool | None, last_state: str | os.PathLike) -> bool:
    """train.py's ``--resume`` value -> whether to resume: absent -> False; bare ``--resume`` -> True (the run
    must hold a checkpoint); ``auto`` -> True when ``last_state`` (RUN/checkpoints/last.state.safetensors) exists, False
    (a fresh start) otherwise — so one command line serves the first launch and every requeue. A run directory
    that holds only a training state of format 1 (``last.state.pt``, a torch pickle, no longer read) is a
    SetupError whatever the value: neither resumed nor overwritten."""
    legacy = Path(last_state).with_name(LEGACY_STATE_NAME)
    if not Path(last_state).is_file() and legacy.is_file():
        raise SetupError(f"{legacy}: a training state of an earlier lavimo (a torch pickle; training states are "
                         f"safetensors now) is not read; finish this run with the lavimo that wrote it, or start "
                         f"a new --out")
    if value in (None, False):
        return False
    if value == "auto":
        return Path(last_state).is_file()
    return True

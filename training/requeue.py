"""The requeue marker: ``RUN/requeue.json`` says "a resumable checkpoint was written at step N after a stop
signal", so that a job script can tell "checkpointed, requeue me" from a crash even where the exit status is
lost (torchrun's agent exits 1 with a traceback when its workers exit 75; docs/scaling.md, "The requeue marker").

The trainer's rank 0 writes it atomically (:func:`write_marker`) after the checkpoint that a SIGTERM / SIGUSR1
stop wrote, just before train.py exits 75; every session start removes an old one (:func:`clear_marker`), so a
marker on disk always belongs to the latest session. Its fields::

    {"step": 11, "epoch": 1, "batch_in_epoch": 3, "checkpoint": "checkpoints/last.safetensors",
     "state": "checkpoints/last.state.safetensors", "signal": "SIGUSR1", "exit_status": 75,
     "time": "2026-12-05T01:02:03+0000", "time_unix": 1796432523.4}

``python -m lavimo.training.requeue RUN --since UNIX_TIME`` (what scripts/slurm/train.sbatch runs) exits 0
and prints one line when RUN holds a marker written at or after ``UNIX_TIME`` (the job's start) whose
checkpoint files exist, else exits 1 saying why (none, older, unreadable); 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from lavimo.core.atomic import write_text
from lavimo.core.errors import BadInputError, print_error
from lavimo.core.jsonconfig import read_json_file

#: the marker's file name in the run directory
MARKER = "requeue.json"
#: the largest marker read (it is a few hundred bytes)
_MAX_BYTES = 1 << 16


def marker_path(run_root: str | Path) -> Path:
    """``RUN/requeue.json``."""
    return Path(run_root) / MARKER


def write_marker(run_root: str | Path, *, step: int, epoch: int, batch_in_epoch: int, checkpoint: Path,
                 state: Path, signal: str | None, exit_status: int) -> Path:
    """Write the marker (atomically) after the checkpoint ``checkpoint`` / ``state`` (paths inside the run
    directory, recorded relative to it) was written at global ``step``; returns its path."""
    root = Path(run_root)
    now = time.time()
    record: dict[str, Any] = {
        "step": int(step), "epoch": int(epoch), "batch_in_epoch": int(batch_in_epoch),
        "checkpoint": Path(checkpoint).relative_to(root).as_posix(), "state": Path(state).relative_to(root).as_posix(),
        "signal": signal, "exit_status": int(exit_status),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "time_unix": now,
    }
    path = marker_path(root)
    write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def clear_marker(run_root: str | Path) -> None:
    """Remove the marker of an earlier session (a session start: from now on a marker means this session)."""
    marker_path(run_root).unlink(missing_ok=True)


def read_marker(run_root: str | Path, since: float | None = None) -> tuple[dict | None, str]:
    """(the marker, a one-line description) when RUN holds a marker written at or after ``since`` (unix seconds)
    whose checkpoint and state files exist; else (None, why not)."""
    root = Path(run_root)
    path = marker_path(root)
    try:
        record = read_json_file(path, max_bytes=_MAX_BYTES)
    except FileNotFoundError:
        return None, f"{path}: no requeue marker (no checkpoint after a stop signal in this session)"
    except OSError as exc:
        return None, f"{path}: unreadable ({exc.strerror or exc})"
    except BadInputError as exc:
        return None, f"{path}: not a requeue marker ({exc.reason})"
    try:
        step, written = record["step"], record["time_unix"]
        files = [record["checkpoint"], record["state"]]
        if (not isinstance(step, int) or isinstance(step, bool) or not isinstance(written, (int, float))
                or not math.isfinite(written) or not all(isinstance(f, str) for f in files)):
            raise ValueError("step / time_unix / checkpoint / state of the wrong type")
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"{path}: not a requeue marker ({exc})"
    if since is not None and written < since:
        return None, (f"{path}: written at {written:.0f}, before this job started ({since:.0f}): an earlier "
                      "job's marker")
    for rel in files:  # names inside the run directory only
        p = (root / rel)
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not p.is_file():
            return None, f"{path}: its checkpoint file {rel!r} is not in {root}"
    return record, (f"{path}: resumable checkpoint at step {step} ({record['checkpoint']}, after "
                    f"{record.get('signal') or 'a stop signal'})")


def main(argv: list[str] | None = None) -> int:
    """``python -m lavimo.training.requeue RUN [--since UNIX_TIME]``: exit 0 when a job script should requeue
    (module docstring), 1 when not, 2 for a usage error."""
    p = argparse.ArgumentParser(prog="python -m lavimo.training.requeue",
                                description="Exit 0 when RUN holds a requeue marker (a resumable checkpoint "
                                            "written after a stop signal), else 1.")
    p.add_argument("run", help="the run directory (train.py --out)")
    p.add_argument("--since", type=float, default=None,
                   help="unix time of the job's start: an older marker does not count")
    args = p.parse_args(argv)
    if args.since is not None and not math.isfinite(args.since):
        return print_error(p.prog, f"--since must be a finite unix time, got {args.since}")
    record, line = read_marker(args.run, args.since)
    print(line)
    return 0 if record is not None else 1


if __name__ == "__main__":
    sys.exit(main())

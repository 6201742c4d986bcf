"""Slurm's environment variables -> what the commands need: the ``--part K/N`` of a job-array task
(render-amass, build-shards), the rank / world size / local rank / master address of a training process
that ``srun`` launched (train.py; torchrun's variables win when present), and the c10d rendezvous of one
torchrun agent per node (:func:`torchrun_rendezvous`; ``python -m lavimo.core.slurm rendezvous`` prints its
torchrun flags for scripts/slurm/train_torchrun.sbatch).

Nothing here talks to Slurm: the functions read an environment mapping (``os.environ`` by default), so they are
tested with crafted environments (tests/test_slurm_env.py). See docs/scaling.md.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Mapping, MutableMapping

log = logging.getLogger(__name__)

DEFAULT_PORT_BASE = 20000  # MASTER_PORT = base + SLURM_JOB_ID % 20000 when MASTER_PORT is unset


class SlurmEnvError(ValueError):
    """Slurm's variables are present but unusable (the message names the variable)."""


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SlurmEnvError(f"${name}={value!r} is not an integer") from None


def array_part(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(K, N)`` (1-based part K of N) of the job-array task, or None outside a job array.

    With ``$LAVIMO_PARTS`` = N (the size the job script declares, e.g. scripts/slurm/render_array.sbatch's
    ``PARTS``): task id ``i`` is part ``i + 1`` of N whatever the submitted array holds, so a task submitted
    again on its own (``sbatch --array=5``) is still part 6 of N; ids outside 0..N-1 or an array of more than N
    tasks: SlurmEnvError. Without it: ``K = (TASK_ID - TASK_MIN) / TASK_STEP + 1``, ``N = TASK_COUNT``
    (``--array=0-7``, ``1-8``, ``0-14:2``: parts 1..8 of 8); ids that are not one evenly stepped range
    (``--array=1,4,9``): SlurmEnvError (pass --part then).
    """
    env = os.environ if env is None else env
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    declared = _int(env, "LAVIMO_PARTS")
    if declared is not None:
        count = _int(env, "SLURM_ARRAY_TASK_COUNT")
        if declared < 1 or not 0 <= task < declared or (count is not None and count > declared):
            raise SlurmEnvError(f"$SLURM_ARRAY_TASK_ID={task} (array of {count or '?'} tasks) does not fit "
                                f"$LAVIMO_PARTS={declared}: array task i renders part i+1 of N, so submit ids "
                                f"within 0-{declared - 1} (e.g. --array=0-{declared - 1}, or one id again) or "
                                "set PARTS to the array's size")
        return task + 1, declared
    lo = _int(env, "SLURM_ARRAY_TASK_MIN")
    hi = _int(env, "SLURM_ARRAY_TASK_MAX")
    step = _int(env, "SLURM_ARRAY_TASK_STEP") or 1
    count = _int(env, "SLURM_ARRAY_TASK_COUNT")
    if lo is None:
        raise SlurmEnvError("$SLURM_ARRAY_TASK_ID is set but $SLURM_ARRAY_TASK_MIN is not; pass --part K/N")
    if count is None:
        if hi is None:
            raise SlurmEnvError("neither $SLURM_ARRAY_TASK_COUNT nor $SLURM_ARRAY_TASK_MAX is set; pass --part K/N")
        count = (hi - lo) // step + 1
    if step <= 0 or count <= 0:
        raise SlurmEnvError(f"job array step {step} / count {count} must be positive; pass --part K/N")
    offset = task - lo
    k = offset // step + 1
    if offset < 0 or offset % step or k > count or (hi is not None and (hi - lo) // step + 1 != count):
        raise SlurmEnvError(f"$SLURM_ARRAY_TASK_ID={task} (min {lo}, max {hi}, step {step}, count {count}) is not "
                            "one of an evenly stepped range of ids; submit --array=0-(N-1) or pass --part K/N")
    return k, count


def part_argument(given: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The ``--part`` value to use: ``given`` when the user passed one, else ``"K/N"`` from the job array, else
    None (everything)."""
    if given is not None:
        return given
    part = array_part(env)
    if part is None:
        return None
    log.info("--part %d/%d from the Slurm job array (SLURM_ARRAY_TASK_ID)", *part)
    return f"{part[0]}/{part[1]}"


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N; ValueError naming the value otherwise."""
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--part expects K/N (e.g. 1/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--part K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist expression: ``"gpu[03-05,9],cpu1"`` -> ``"gpu03"``,
    ``"rack[1-2]-n[4-5]"`` -> ``"rack1-n4"``, ``"a,b"`` -> ``"a"``."""
    out: list[str] = []
    i = 0
    while i < len(nodelist):
        c = nodelist[i]
        if c == ",":
            break
        if c == "[":
            j = nodelist.find("]", i)
            if j < 0:
                raise SlurmEnvError(f"unbalanced '[' in the node list {nodelist!r}")
            first = nodelist[i + 1:j].split(",")[0].split("-")[0]
            out.append(first)
            i = j + 1
            continue
        out.append(c)
        i += 1
    host = "".join(out).strip()
    if not host:
        raise SlurmEnvError(f"no host in the node list {nodelist!r}")
    return host


def srun_process_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables of a process ``srun`` started: ``RANK`` = SLURM_PROCID, ``WORLD_SIZE`` =
    SLURM_STEP_NUM_TASKS, ``LOCAL_RANK`` = SLURM_LOCALID, ``MASTER_ADDR`` = the first host of the step's (or job's)
    node list, ``MASTER_PORT`` = base + SLURM_JOB_ID % 20000; MASTER_ADDR / MASTER_PORT already set are kept.
    Empty under torchrun (``WORLD_SIZE`` / ``RANK`` set) or outside srun (e.g. python straight in an sbatch
    script, which must stay a single process)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env or "RANK" in env:
        return {}
    rank = _int(env, "SLURM_PROCID")
    world = _int(env, "SLURM_STEP_NUM_TASKS")
    if rank is None or world is None:
        return {}
    local = _int(env, "SLURM_LOCALID") or 0
    if not 0 <= rank < world:
        raise SlurmEnvError(f"$SLURM_PROCID={rank} is outside 0..$SLURM_STEP_NUM_TASKS-1={world - 1}")
    out = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local)}
    if world > 1:
        if "MASTER_ADDR" not in env:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodes:
                raise SlurmEnvError("srun started several tasks but $SLURM_STEP_NODELIST / $SLURM_JOB_NODELIST "
                                    "is unset; export MASTER_ADDR")
            out["MASTER_ADDR"] = first_host(nodes)
        if "MASTER_PORT" not in env:
            job = _int(env, "SLURM_JOB_ID") or 0
            out["MASTER_PORT"] = str(DEFAULT_PORT_BASE + job % 20000)
    return out


def apply_srun_env(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :func:`srun_process_env`'s variables in ``env`` (``os.environ``) so that ``torch.distributed``'s
    ``env://`` initialisation and train.py's rank handling work under plain ``srun``; returns what was set."""
    env = os.environ if env is None else env
    new = srun_process_env(env)
    env.update(new)
    if new:
        log.info("srun task: rank %s of %s (local %s), master %s:%s", new["RANK"], new["WORLD_SIZE"],
                 new["LOCAL_RANK"], env.get("MASTER_ADDR", "-"), env.get("MASTER_PORT", "-"))
    return new


@dataclass(frozen=True)
class Rendezvous:
    """torchrun's multi-node settings: ``nnodes`` agents of ``nproc_per_node`` ranks each meet at ``endpoint``
    (``host:port``) under the run id ``rdzv_id`` with the c10d backend (the first agent to arrive hosts the
    store)."""

    nnodes: int
    nproc_per_node: int
    endpoint: str
    rdzv_id: str
    backend: str = "c10d"

    def torchrun_args(self) -> list[str]:
        """The torchrun flags (``--nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint h:p
        --rdzv-id 42``)."""
        return ["--nnodes", str(self.nnodes), "--nproc-per-node", str(self.nproc_per_node), "--rdzv-backend",
                self.backend, "--rdzv-endpoint", self.endpoint, "--rdzv-id", self.rdzv_id]


def _gpus_on_node(env: Mapping[str, str]) -> int | None:
    """GPUs Slurm gave this node: ``SLURM_GPUS_ON_NODE``, else the count of ``SLURM_GPUS_PER_NODE`` (``4``,
    ``a100:4``)."""
    n = _int(env, "SLURM_GPUS_ON_NODE")
    if n is not None:
        return n
    per_node = env.get("SLURM_GPUS_PER_NODE")
    if not per_node:
        return None
    count = per_node.split(",")[0].split("(")[0].rsplit(":", 1)[-1]
    try:
        return int(count)
    except ValueError:
        raise SlurmEnvError(f"$SLURM_GPUS_PER_NODE={per_node!r}: no GPU count in it; pass --nproc-per-node") from None


def torchrun_rendezvous(env: Mapping[str, str] | None = None, nproc_per_node: int | None = None) -> Rendezvous:
    """The rendezvous of one torchrun agent per node of this job: ``nnodes`` = SLURM_JOB_NUM_NODES (or
    SLURM_NNODES), ``nproc_per_node`` = the argument, else the node's GPUs (:func:`_gpus_on_node`), else 1;
    the endpoint is the host and port the srun launch uses (:func:`srun_process_env`: MASTER_ADDR or the first
    host of the job's node list; MASTER_PORT or 20000 + SLURM_JOB_ID % 20000); the id is SLURM_JOB_ID (a
    requeued job keeps it). Every agent computes the same values from the same job. SlurmEnvError (naming the
    variable) outside a Slurm job or on unusable values."""
    env = os.environ if env is None else env
    nnodes = _int(env, "SLURM_JOB_NUM_NODES")
    if nnodes is None:
        nnodes = _int(env, "SLURM_NNODES")
    job = _int(env, "SLURM_JOB_ID")
    if nnodes is None or job is None:
        raise SlurmEnvError("not inside a Slurm job: $SLURM_JOB_NUM_NODES / $SLURM_JOB_ID are unset")
    nproc = nproc_per_node if nproc_per_node is not None else (_gpus_on_node(env) or 1)
    if nnodes < 1 or nproc < 1:
        raise SlurmEnvError(f"{nnodes} node(s) x {nproc} process(es) per node: both must be >= 1")
    host = env.get("MASTER_ADDR")
    if not host:
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise SlurmEnvError("$SLURM_JOB_NODELIST is unset; export MASTER_ADDR")
        host = first_host(nodes)
    port = _int(env, "MASTER_PORT")
    if port is None:
        port = DEFAULT_PORT_BASE + job % 20000
    if not 0 < port < 65536:
        raise SlurmEnvError(f"$MASTER_PORT={port} is not a TCP port")
    return Rendezvous(nnodes, nproc, f"{host}:{port}", str(job))


def main(argv: list[str] | None = None) -> int:
    """``python -m lavimo.core.slurm rendezvous [--nproc-per-node N]``: print :func:`torchrun_rendezvous`'s
    torchrun flags on one line (exit 0), or one error line (exit 2)."""
    import argparse
    import shlex

    from lavimo.core.errors import print_error

    p = argparse.ArgumentParser(prog="python -m lavimo.core.slurm",
                                description="Print the torchrun flags of this Slurm job's c10d rendezvous.")
    p.add_argument("what", choices=["rendezvous"])
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="ranks per node (default: the node's GPUs from Slurm, else 1)")
    args = p.parse_args(argv)
    try:
        rdzv = torchrun_rendezvous(nproc_per_node=args.nproc_per_node)
    except SlurmEnvError as exc:
        return print_error(p.prog, exc, 2)
    print(shlex.join(rdzv.torchrun_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

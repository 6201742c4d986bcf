"""Multi-node for real, on one machine: two torchrun agents (``--nnodes 2 --nproc-per-node 1``) meeting by c10d
rendezvous on 127.0.0.1 train a tiny run (gloo, CPU) to the same weights as one agent with ``--nproc-per-node 2``;
the rendezvous flags come from :func:`lavimo.core.slurm.torchrun_rendezvous` given a crafted 2-node Slurm
environment, the same function scripts/slurm/train_torchrun.sbatch calls (checked here with a stand-in srun)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lavimo.core.slurm import Rendezvous, SlurmEnvError, srun_process_env, torchrun_rendezvous
from tests.fixtures.runs import TINY_FLAGS, assert_same_last_weights, train_shards

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "RANK", "WORLD_SIZE"))}
    return dict(env, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)


def test_rendezvous_from_a_crafted_two_node_job():
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_GPUS_ON_NODE": "4"}
    r = torchrun_rendezvous(env)
    assert r == Rendezvous(2, 4, "gpu07:24242", "4242")
    assert r.torchrun_args() == ["--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
                                 "--rdzv-endpoint", "gpu07:24242", "--rdzv-id", "4242"]
    # the same host and port as the srun-per-GPU launch (train.sbatch) of the same job
    srun = srun_process_env({**env, "SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
                             "SLURM_STEP_NODELIST": "gpu[07-08]"})
    assert r.endpoint == f"{srun['MASTER_ADDR']}:{srun['MASTER_PORT']}"
    assert torchrun_rendezvous({**env, "SLURM_GPUS_ON_NODE": "", "SLURM_GPUS_PER_NODE": "h100:8"}).nproc_per_node == 8
    assert torchrun_rendezvous({**env, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}).endpoint == "10.0.0.1:29400"
    assert torchrun_rendezvous(env, nproc_per_node=1).nproc_per_node == 1
    for bad, match in (({}, "not inside a Slurm job"), ({**env, "SLURM_JOB_NODELIST": ""}, "NODELIST"),
                       ({**env, "SLURM_GPUS_ON_NODE": "x"}, "SLURM_GPUS_ON_NODE"),
                       ({**env, "MASTER_PORT": "70000"}, "not a TCP port")):
        with pytest.raises(SlurmEnvError, match=match):
            torchrun_rendezvous(bad)


def test_print_rendezvous_and_the_sbatch_script(tmp_path):
    env = _env(SLURM_JOB_NUM_NODES="3", SLURM_JOB_ID="77", SLURM_JOB_NODELIST="n[1-3]", SLURM_GPUS_ON_NODE="2")
    proc = subprocess.run([sys.executable, "-m", "lavimo.core.slurm", "rendezvous"], env=env, capture_output=True,
                          text=True, timeout=60)
    flags = "--nnodes 3 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint n1:20077 --rdzv-id 77"
    assert proc.returncode == 0 and proc.stdout.strip() == flags
    bad = subprocess.run([sys.executable, "-m", "lavimo.core.slurm", "rendezvous"], env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "python -m lavimo.core.slurm: error: not inside a Slurm job: $SLURM_JOB_NUM_NODES / $SLURM_JOB_ID are unset"]
    # the script passes the same flags to every node's torchrun (a stand-in srun records its arguments)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # with FAKE_MARK set the stand-in srun writes a fresh requeue marker, as train.py does before exiting 75
    # (torchrun itself then exits 1)
    mark = (f'[ -n "$FAKE_MARK" ] && {sys.executable} -c \'import sys; from pathlib import Path; '
            'from lavimo.training.requeue import write_marker as w; p = Path(sys.argv[1]); w(p, step=5, epoch=0, '
            'batch_in_epoch=5, checkpoint=p / "checkpoints/last.safetensors", state=p / "checkpoints/last.state.safetensors", '
            'signal="SIGTERM", exit_status=75)\' "$FAKE_MARK"\n')
    for name, rc in (("srun", "${FAKE_RC:-0}"), ("scontrol", "0")):
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> "$CALLS"\n'
                                    f'{mark if name == "srun" else ""}exit {rc}\n')
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.txt"
    out = tmp_path / "o"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("last.safetensors", "last.state.safetensors"):
        (out / "checkpoints" / name).write_bytes(b"x")
    for fake_rc, marker, job_rc, requeued in (("0", False, 0, False), ("75", False, 0, True), ("1", True, 0, True),
                                              ("1", False, 1, False)):
        calls.unlink(missing_ok=True)
        (out / "requeue.json").unlink(missing_ok=True)
        run = subprocess.run(["bash", str(SLURM / "train_torchrun.sbatch"), "--epochs", "3"], cwd=REPO, timeout=120,
                             env={**env, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                                  "CALLS": str(calls), "SHARDS": "/s", "OUT": str(out), "FAKE_RC": fake_rc,
                                  "FAKE_MARK": str(out) if marker else ""},
                             capture_output=True, text=True)
        lines = calls.read_text().splitlines()
        assert run.returncode == job_rc, run.stderr
        assert lines[0] == (f"srun --kill-on-bad-exit=0 python -m torch.distributed.run {flags} -m lavimo.train "
                            f"--shards /s --out {out} --preset paper --global-batch-size 64 --workers 4 "
                            "--no-progress --resume auto --epochs 3")
        assert (lines[1:] == ["scontrol requeue 77"]) is requeued


@pytest.mark.slow
def test_two_torchrun_agents_equal_one(request, tmp_path):
    shards = train_shards(request)
    args = [str(REPO / "train.py"), "--shards", str(shards), *TINY_FLAGS, "--epochs", "1", "--log-keyids"]
    port = _free_port()
    rdzv = torchrun_rendezvous({"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "127.0.0.1",
                                "MASTER_PORT": str(port)}, nproc_per_node=1)
    two = tmp_path / "two-agents"
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *rdzv.torchrun_args(), *args,
                                "--out", str(two)], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = []
    for a in agents:
        try:
            outs.append(a.communicate(timeout=300)[0])
        finally:
            if a.poll() is None:
                a.kill()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outs)
    one = tmp_path / "one-agent"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args, "--out", str(one)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # rank r of either launch reads the same shards and batches, seeds dropout from r, and the gloo all-reduce of
    # two ranks adds the same two numbers: the same weights; compared to rounding anyway, since a launch's
    # reduction order is gloo's to choose (bitwise equality is not a promise across launches)
    for r in (0, 1):
        assert (two / "debug" / f"keyids-rank{r}.tsv").read_text() == (one / "debug" / f"keyids-rank{r}.tsv").read_text()
    assert_same_last_weights(two, one, atol=1e-6, rtol=1e-5)

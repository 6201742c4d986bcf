"""core/slurm.py: --part from a Slurm job array, torch.distributed variables of srun tasks (crafted
environments; no Slurm needed), render-amass taking its part from the array, and train.py run as 2 srun-style
processes (no torchrun) forming one DDP job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lavimo.core.slurm import SlurmEnvError, apply_srun_env, array_part, first_host, part_argument, srun_process_env

REPO = Path(__file__).resolve().parents[1]


def _array(task, lo, hi, count=None, step=None) -> dict:
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(lo), "SLURM_ARRAY_TASK_MAX": str(hi)}
    if count is not None:
        env["SLURM_ARRAY_TASK_COUNT"] = str(count)
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


@pytest.mark.parametrize("env,part", [
    (_array(0, 0, 7, 8), (1, 8)), (_array(7, 0, 7, 8), (8, 8)),  # --array=0-7
    (_array(1, 1, 8, 8), (1, 8)), (_array(8, 1, 8, 8), (8, 8)),  # --array=1-8
    (_array(6, 0, 14, 8, 2), (4, 8)),  # --array=0-14:2
    (_array(3, 0, 3), (4, 4)),  # no TASK_COUNT (older Slurm): from MIN/MAX
    ({}, None),  # not an array task
])
def test_array_part(env, part):
    assert array_part(env) == part


@pytest.mark.parametrize("env", [
    _array(4, 1, 9, 3),  # --array=1,4,9: not one stepped range
    _array(3, 0, 14, 8, 2),  # odd id in a :2 array
    {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"},
    {"SLURM_ARRAY_TASK_ID": "1"},  # no MIN
])
def test_array_part_refuses_what_it_cannot_map(env):
    with pytest.raises(SlurmEnvError, match="SLURM|--part"):
        array_part(env)


@pytest.mark.parametrize("env,part", [
    ({**_array(5, 0, 31, 32), "LAVIMO_PARTS": "32"}, (6, 32)),  # the whole array
    ({**_array(1, 1, 1, 1), "LAVIMO_PARTS": "32"}, (2, 32)),  # sbatch --array=1 again: still part 2 of 32
    ({**_array(7, 3, 9, 3, 3), "LAVIMO_PARTS": "10"}, (8, 10)),  # --array=3-9:3 re-submitted: ids are parts
    ({"SLURM_ARRAY_TASK_ID": "0", "LAVIMO_PARTS": "4"}, (1, 4)),  # MIN/MAX/COUNT not needed
    ({"LAVIMO_PARTS": "4"}, None),  # not an array task
])
def test_array_part_from_the_declared_size(env, part):
    assert array_part(env) == part


@pytest.mark.parametrize("env", [
    {**_array(32, 0, 32, 33), "LAVIMO_PARTS": "32"},  # id past the declared parts
    {**_array(3, 0, 63, 64), "LAVIMO_PARTS": "32"},  # a larger array than declared
    {**_array(0, 0, 0, 1), "LAVIMO_PARTS": "0"},
    {**_array(0, 0, 0, 1), "LAVIMO_PARTS": "many"},
])
def test_declared_size_refuses_what_does_not_fit(env):
    with pytest.raises(SlurmEnvError, match="LAVIMO_PARTS"):
        array_part(env)


def test_part_argument_prefers_the_flag():
    env = _array(2, 0, 3, 4)
    assert part_argument("1/2", env) == "1/2"
    assert part_argument(None, env) == "3/4"
    assert part_argument(None, {}) is None


@pytest.mark.parametrize("nodes,host", [("gpu[03-05,9],cpu1", "gpu03"), ("rack[1-2]-n[4-5]", "rack1-n4"),
                                        ("a,b", "a"), ("node7", "node7")])
def test_first_host(nodes, host):
    assert first_host(nodes) == host


def _srun(rank, world, local=0, **extra) -> dict:
    return {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": str(world), "SLURM_LOCALID": str(local),
            "SLURM_STEP_NODELIST": "gpu[12-13]", "SLURM_JOB_ID": "123456", **extra}


def test_srun_process_env():
    assert srun_process_env(_srun(5, 8, 1)) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                                "MASTER_ADDR": "gpu12", "MASTER_PORT": str(20000 + 123456 % 20000)}
    # user-set MASTER_ADDR / MASTER_PORT are kept
    assert "MASTER_PORT" not in srun_process_env(_srun(0, 2, MASTER_PORT="1234", MASTER_ADDR="h"))
    # torchrun's variables win; python straight in an sbatch script (no srun step) stays one process
    assert srun_process_env({**_srun(0, 2), "WORLD_SIZE": "2", "RANK": "0"}) == {}
    assert srun_process_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}) == {}
    with pytest.raises(SlurmEnvError, match="SLURM_PROCID"):
        srun_process_env(_srun(3, 2))
    env = dict(_srun(1, 2))
    assert apply_srun_env(env)["RANK"] == "1" and env["WORLD_SIZE"] == "2"


def test_render_amass_takes_its_part_from_the_array(monkeypatch, capsys):
    import lavimo.render.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run", lambda args, stop=None: seen.setdefault("part", args.part) and 0)
    for k, v in _array(2, 0, 3, 4).items():
        monkeypatch.setenv(k, v)
    argv = ["--amass", "x", "--annotations", "y", "--out", "z"]
    assert cli.main(argv) == 0 and seen["part"] == "3/4"
    seen.clear()
    assert cli.main(argv + ["--part", "1/2"]) == 0 and seen["part"] == "1/2"  # the flag wins
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    assert cli.main(argv) == 2
    assert "SLURM_ARRAY" in capsys.readouterr().err


@pytest.mark.slow
def test_train_py_as_two_srun_tasks(request, tmp_path):
    """Two plain `python train.py` processes with srun's variables (what srun --ntasks=2 sets) form one gloo
    DDP job: world size 2, and both ranks finish."""
    from tests.fixtures.runs import train_shards

    shards = train_shards(request)
    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    base.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MASTER_PORT=str(port))
    cmd = [sys.executable, str(REPO / "train.py"), "--shards", str(shards), "--preset", "tiny", "--device", "cpu",
           "--epochs", "1", "--max-steps", "1", "--out", str(out), "--no-progress", "--threads", "1",
           "--shuffle-buffer", "1"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**base, **_srun(r, 2, r, SLURM_STEP_NODELIST="localhost")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trainer"]["world_size"] == 2 and cfg["trainer"]["global_batch"] == 8

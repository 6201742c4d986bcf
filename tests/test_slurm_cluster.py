"""scripts/slurm/*.sbatch on a real single-node Slurm cluster started on localhost (tests/fixtures/slurm_cluster.py:
munged + slurmctld + slurmd, no cgroups): the render job array renders exactly what one local render-amass run
renders (byte-identical videos and sidecars, merged report counts), and train.sbatch's ``srun`` starts 2 plain
``python train.py`` tasks (rank / world size / master address from Slurm's variables, core/slurm.py; no torchrun)
that train the same weights as ``torchrun --nproc_per_node=2``. Skipped, with the reason, where the cluster cannot
start (not root, slurm-wlm / munge not installed: ``make sysdeps`` installs them)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from render.cli import main as render_main
from tests.fixtures import slurm_cluster as sc
from tests.fixtures.slurm_cluster import ClusterUnavailable, single_node_cluster

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"
NUM_CLIPS = 4  # x2 with the script's --mirror
SIZE = 64
# the scripts ask for GPUs, 8+ CPUs and 32 GB; a job on the 2-core test node overrides that on the command line
SMALL_JOB = ["--gpus=0", "--cpus-per-task=1", "--mem=256M", "--time=10"]


@pytest.fixture(scope="module")
def cluster():
    cm = single_node_cluster()
    try:
        c = cm.__enter__()
    except ClusterUnavailable as exc:
        pytest.skip(f"no single-node Slurm cluster: {exc}")
    try:
        yield c
    finally:
        cm.__exit__(None, None, None)


def _job_env(cluster, **extra: str) -> dict[str, str]:
    """What the jobs see (sbatch exports the submitting environment): this checkout's code first (the console
    scripts of an editable install elsewhere would import another checkout), the venv's commands on PATH."""
    env = dict(cluster.env)
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _sbatch_wait(cluster, args: list[str], env: dict[str, str], log_glob: str, timeout: float) -> str:
    """``sbatch --wait ...`` -> the job's output; fails with the job log and the daemon logs on a non-zero exit."""
    proc = cluster.run(["sbatch", "--wait", "--chdir", str(REPO), *args], env=env, timeout=timeout)
    logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                     for p in sorted((cluster.root / "log").glob(log_glob)))
    assert proc.returncode == 0, (f"sbatch exited {proc.returncode}: {proc.stdout}{proc.stderr}\n{logs}\n"
                                  f"--- cluster ---\n{cluster.logs()}")
    return logs


def _write_corpus(root: Path) -> Path:
    from tests.test_render_cli import _write_npz

    ann = {}
    for i in range(NUM_CLIPS):
        rel = f"Synth/s{i % 2}/m{i}_poses"
        _write_npz(root / "amass" / f"{rel}.npz", seconds=0.4 + 0.05 * i, fps=60.0, phase=i)
        ann[f"{i:05d}"] = {"path": rel, "duration": 0.4 + 0.05 * i,
                           "annotations": [{"seg_id": f"{i:05d}_0", "text": f"a person waves {i}", "start": 0.0,
                                            "end": 0.4 + 0.05 * i}]}
    (root / "annotations.json").write_text(json.dumps(ann))
    return root


@pytest.mark.slow
def test_render_array_equals_a_local_run(cluster, tmp_path):
    corpus = _write_corpus(tmp_path / "corpus")
    common = dict(AMASS=str(corpus / "amass"), ANN=str(corpus / "annotations.json"), WORKERS="1")
    array_out, local_out = tmp_path / "array", tmp_path / "local"

    logs = _sbatch_wait(cluster, [*SMALL_JOB, "--array=0-1", f"--output={cluster.root}/log/render-%A_%a.out",
                                  str(SLURM / "render_array.sbatch"), "--size", str(SIZE)],
                        _job_env(cluster, OUT=str(array_out), **common), "render-*.out", timeout=180)
    parts = [json.loads((array_out / f"render-report-part-{k}-of-2.json").read_text()) for k in (1, 2)]
    assert all(p["rendered"] > 0 and p["failed"] == {} for p in parts), logs  # each task rendered its own part
    assert render_main(["merge-reports", str(array_out)]) == 0

    # the same script run locally (no job array: no --part), one render-amass over the whole corpus
    local_env = {k: v for k, v in _job_env(cluster, OUT=str(local_out), **common).items() if k != "SLURM_CONF"}
    local = subprocess.run(["bash", str(SLURM / "render_array.sbatch"), "--size", str(SIZE)], cwd=REPO,
                           env=local_env, capture_output=True, text=True, timeout=180)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-3000:]

    def outputs(d: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith("render-report")}

    got, want = outputs(array_out), outputs(local_out)
    keyids = [f"{i:05d}" for i in range(NUM_CLIPS)] + [f"M{i:05d}" for i in range(NUM_CLIPS)]
    assert sorted(want) == sorted(f"{k}.{ext}" for k in keyids for ext in ("json", "mp4"))
    assert sorted(got) == sorted(want)
    different = [name for name in want if got[name] != want[name]]
    assert not different, f"array and local outputs differ: {different}"
    merged = json.loads((array_out / "render-report.json").read_text())
    full = json.loads((local_out / "render-report.json").read_text())
    for key in ("clips", "rendered", "skipped", "num_failed", "frames_rendered", "num_not_attempted", "failed"):
        assert merged[key] == full[key], key
    assert full["rendered"] == 2 * NUM_CLIPS and merged["missing_parts"] == [] and sorted(merged["parts"]) == [
        "1/2", "2/2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(run: Path) -> list[dict[str, float]]:
    """metrics.csv's rows as numbers, without the throughput."""
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items() if k != "samples_per_s" and v != ""} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_srun_training_equals_torchrun(cluster, request, tmp_path):
    from tests.fixtures.runs import assert_same_last_weights, train_shards

    shards = train_shards(request)
    # appended to train.sbatch's own flags (the last of a repeated flag wins): the tiny preset on CPU
    extra = ["--preset", "tiny", "--device", "cpu", "--epochs", "1", "--workers", "0", "--threads", "1",
             "--shuffle-buffer", "1"]
    srun_out, torchrun_out = tmp_path / "srun", tmp_path / "torchrun"
    logs = _sbatch_wait(cluster, ["--gpus-per-node=0", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                                  "--mem=512M", "--time=10", f"--output={cluster.root}/log/train-%j.out",
                                  str(SLURM / "train.sbatch"), *extra],
                        _job_env(cluster, SHARDS=str(shards), OUT=str(srun_out), BATCH_PER_GPU="4",
                                 MASTER_PORT=str(_free_port())), "train-*.out", timeout=300)
    # both ranks were srun tasks whose rank / world size / master address came from Slurm (core/slurm.py)
    for rank in (0, 1):
        assert f"srun task: rank {rank} of 2 (local {rank}), master {cluster.node}:" in logs, logs[-3000:]

    env = {k: v for k, v in _job_env(cluster).items() if k != "SLURM_CONF"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--shards", str(shards), "--out", str(torchrun_out), "--batch-size", "4",
           "--no-progress", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    for run in (srun_out, torchrun_out):
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["trainer"]["world_size"] == 2 and cfg["trainer"]["global_batch"] == 8
    got, want = _metrics(srun_out), _metrics(torchrun_out)
    assert len(got) == len(want) >= 1 and [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-6)
    assert_same_last_weights(srun_out, torchrun_out, rtol=1e-5, atol=1e-6)


def _running_with(text: str) -> list[str]:
    """Command lines of live processes that mention ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if d.name.isdigit() and text in cmd:
            found.append(cmd)
    return found


def test_cluster_unavailable_says_why(monkeypatch, tmp_path):
    """Missing packages, no root, a daemon that dies at start: ClusterUnavailable naming the cause (the
    fixture's skip reason), promptly, with nothing left running and the cluster's directory removed."""
    tools = sc.DAEMONS + sc.CLIENTS + ("munge", "unmunge")
    real = {b: shutil.which(b) for b in tools}
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterUnavailable, match="munged.*not found.*make sysdeps"):
        sc.check_prerequisites()
    monkeypatch.undo()
    if None in real.values() or os.geteuid() != 0:
        pytest.skip("the rest needs root and slurm-wlm + munge")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="needs root"):
        sc.check_prerequisites()
    monkeypatch.undo()

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for b, path in real.items():
        (bin_dir / b).symlink_to(path)
    (bin_dir / "slurmctld").unlink()
    (bin_dir / "slurmctld").write_text("#!/bin/sh\necho 'fatal: no such plugin (stand-in)' >&2\nexit 1\n")
    (bin_dir / "slurmctld").chmod(0o755)
    root = tmp_path / "cluster"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(sc.tempfile, "mkdtemp", lambda prefix="": (root.mkdir(), str(root))[1])
    with pytest.raises(ClusterUnavailable, match=r"`slurmctld -D .*` exited 1: fatal: no such plugin \(stand-in\)"):
        with single_node_cluster(start_timeout=20):
            pass
    assert not root.exists() and not _running_with(str(root))

"""scripts/slurm/*.sbatch run with stand-ins for srun / scontrol / render-amass on PATH: the training job
requeues itself exactly when train.py exits 75 (checkpointed after a signal), passes --resume auto, and the
render array leaves --part to the array task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol", "render-amass", "build-shards"):
        f = bin_dir / name
        f.write_text(f'#!/bin/bash\necho "{name} $*${{SLURM_ARRAY_TASK_ID:+ [array task $SLURM_ARRAY_TASK_ID]}}" '
                     f'>> "$CALLS"\n'
                     f'[ "{name}" = srun ] && exit "${{FAKE_RC:-0}}"\nexit 0\n')
        f.chmod(0o755)
    return bin_dir


def _run(tmp_path: Path, script: str, **env) -> tuple[int, list[str]]:
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    bin_dir = tmp_path / "bin" if (tmp_path / "bin").is_dir() else _fake_bin(tmp_path)
    # the stand-ins first, then this interpreter's bin (its `python` imports lavimo), then the rest
    full = dict(os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", CALLS=str(calls),
                **env)
    proc = subprocess.run(["bash", str(SLURM / script)], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=180)
    return proc.returncode, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("train_rc,job_rc,requeued", [(75, 0, True), (0, 0, False), (2, 2, False), (1, 1, False)])
def test_train_job_requeues_on_exit_75(tmp_path, train_rc, job_rc, requeued):
    rc, calls = _run(tmp_path, "train.sbatch", SHARDS="/s", OUT="/o", SLURM_JOB_ID="42", FAKE_RC=str(train_rc))
    assert rc == job_rc
    assert calls[0].startswith("srun ") and "python -m lavimo.train --shards /s --out /o" in calls[0]
    assert "--resume auto" in calls[0]
    assert (calls[1:] == ["scontrol requeue 42"]) is requeued


@pytest.mark.parametrize("marker,requeued", [("fresh", True), ("old", False), (None, False)])
def test_train_job_requeues_on_a_fresh_marker(tmp_path, marker, requeued):
    """Under a launcher that loses the exit status (torchrun exits 1 after its workers exit 75) the marker
    OUT/requeue.json written after the job started decides: requeue; an older one or none: a crash."""
    from lavimo.training.requeue import write_marker

    out = tmp_path / "o"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("last.safetensors", "last.state.safetensors"):
        (out / "checkpoints" / name).write_bytes(b"x")
    bin_dir = _fake_bin(tmp_path)
    if marker == "fresh":  # written while the job runs: by the stand-in srun
        srun = bin_dir / "srun"
        srun.write_text(srun.read_text().replace(
            "[ \"srun\" = srun ]", f"{sys.executable} -c 'import sys; from lavimo.training.requeue import "
            f"write_marker as w; from pathlib import Path; p = Path(sys.argv[1]); w(p, step=5, epoch=0, "
            f"batch_in_epoch=5, checkpoint=p / \"checkpoints/last.safetensors\", state=p / "
            f"\"checkpoints/last.state.safetensors\", signal=\"SIGUSR1\", exit_status=75)' {out}\n[ \"srun\" = srun ]"))
    elif marker == "old":
        path = write_marker(out, step=5, epoch=0, batch_in_epoch=5, checkpoint=out / "checkpoints/last.safetensors",
                            state=out / "checkpoints/last.state.safetensors", signal="SIGUSR1", exit_status=75)
        path.write_text(path.read_text().replace('"time_unix": ', '"time_unix": 1000, "was": '))
    rc, calls = _run(tmp_path, "train.sbatch", SHARDS="/s", OUT=str(out), SLURM_JOB_ID="42", FAKE_RC="1")
    assert rc == (0 if requeued else 1)
    assert (calls[1:] == ["scontrol requeue 42"]) is requeued, calls


def test_render_array_leaves_part_to_the_task(tmp_path):
    rc, calls = _run(tmp_path, "render_array.sbatch", AMASS="/a", ANN="/h", OUT="/v")
    assert rc == 0 and calls[0].startswith("render-amass --amass /a --annotations /h --out /v --avatars ")
    assert "--part" not in calls[0]
    assert (Path(calls[0].split("--avatars ")[1].split()[0]) / "avatars").is_dir()  # the installed assets
    rc, calls = _run(tmp_path, "render_array.sbatch", AMASS="/a", ANN="/h", OUT="/v", AVATARS="mine/")
    assert rc == 0 and "--avatars mine/ --lights 4" in calls[0]


def test_shard_array_and_merge(tmp_path):
    env = dict(ANN="/h", AMASS="/a", VIDEOS="/v", OUT="/o", SLURM_ARRAY_TASK_ID="3")
    rc, calls = _run(tmp_path, "build_shards.sbatch", **env)
    assert rc == 0 and calls == ["build-shards --annotations /h --amass /a --videos /v --out /o --workers 8 --quiet "
                                 "[array task 3]"]
    rc, calls = _run(tmp_path, "build_shards.sbatch", MERGE="1", **env)  # the merge does not see the array
    assert rc == 0 and calls == ["build-shards --annotations /h --amass /a --videos /v --out /o --workers 8 --quiet",
                                 "build-shards check /o --quick"]


def test_scripts_refuse_missing_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SHARDS", "OUT")}
    proc = subprocess.run(["bash", str(SLURM / "train.sbatch")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode != 0 and "SHARDS" in proc.stderr

"""Preemption (training/preemption.py, train.py): SIGUSR1 / SIGTERM mid-epoch -> the step finishes, a complete
checkpoint is written and train.py exits 75; the same command line (--resume auto) then ends with weights
bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lavimo.train as train_script
from lavimo.core.errors import SetupError
import lavimo.training.trainer
from lavimo.training.preemption import EXIT_PREEMPTED, preemption_signals, resolve_resume, stop_requested
from lavimo.training.loop import load_training_state
from lavimo.training.requeue import MARKER, main as requeue_main, read_marker, write_marker
from tests.fixtures.processes import sigterm_when
from tests.fixtures.runs import assert_same_last_weights

REPO = Path(__file__).resolve().parents[1]
BASE = ["--preset", "tiny", "--device", "cpu", "--no-progress", "--threads", "1", "--set", "dropout=0.1",
        "--epochs", "2", "--resume", "auto"]


def _argv(shards: Path, out: Path) -> list[str]:
    return ["--shards", str(shards), "--out", str(out), *BASE]


def test_resolve_resume(tmp_path):
    state = tmp_path / "last.state.safetensors"
    assert resolve_resume(None, state) is False
    assert resolve_resume("auto", state) is False  # nothing to resume: a fresh start
    assert resolve_resume("yes", state) is True  # bare --resume: the run must hold a checkpoint
    state.write_bytes(b"x")
    assert resolve_resume("auto", state) is True
    # a run of an earlier lavimo (a pickled state, no longer read) is neither resumed nor overwritten
    old = tmp_path / "old" / "last.state.safetensors"
    old.parent.mkdir()
    (old.parent / "last.state.pt").write_bytes(b"x")
    for value in (None, "auto", "yes"):
        with pytest.raises(SetupError, match="last.state.pt: a training state of an earlier lavimo"):
            resolve_resume(value, old)


def test_stop_request_records_the_signal():
    with preemption_signals().installed() as stop:
        assert not stop_requested(stop)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop_requested(stop) and stop.signal_name == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal is only logged
        assert stop.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored


@pytest.mark.slow
def test_signal_mid_epoch_then_same_command_is_bit_identical(shards, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert train_script.main(_argv(shards, full)) == 0

    class SignalAtStep5(lavimo.training.trainer.Stepper):  # the cluster's SIGUSR1 arrives while step 5 runs
        def __call__(self, batch, step):
            if step == 5:
                os.kill(os.getpid(), signal.SIGUSR1)
            return super().__call__(batch, step)

    out = tmp_path / "preempted"
    with monkeypatch.context() as m:
        m.setattr(lavimo.training.trainer, "Stepper", SignalAtStep5)
        assert train_script.main(_argv(shards, out)) == EXIT_PREEMPTED
    state = load_training_state(out / "checkpoints" / "last.state.safetensors", complete=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 6, 6)  # step 5 finished, then saved
    marker, line = read_marker(out)  # what a job script reads where the exit status is lost (torchrun)
    assert marker is not None and "step 6" in line, line
    assert {k: marker[k] for k in ("step", "epoch", "batch_in_epoch", "signal", "exit_status", "checkpoint",
                                   "state")} == {
        "step": 6, "epoch": 0, "batch_in_epoch": 6, "signal": "SIGUSR1", "exit_status": EXIT_PREEMPTED,
        "checkpoint": "checkpoints/last.safetensors", "state": "checkpoints/last.state.safetensors"}
    assert not full.joinpath(MARKER).exists()  # a run that finishes writes none
    assert train_script.main(_argv(shards, out)) == 0  # the very same command line
    assert_same_last_weights(full, out)
    assert not out.joinpath(MARKER).exists()  # the resumed session removed the old marker and finished


@pytest.mark.slow
def test_sigterm_to_the_process_exits_75_with_a_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(REPO / "train.py"), *_argv(shards, out), "--log-keyids", "--epochs", "50"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    keyids = out / "debug" / "keyids-rank0.tsv"
    rc, err = sigterm_when(proc, lambda: keyids.is_file() and keyids.read_text().count("\n") >= 2)
    assert rc == EXIT_PREEMPTED, err[-3000:]
    assert "relaunch with --resume auto" in err
    state = load_training_state(out / "checkpoints" / "last.state.safetensors", complete=True)
    assert 2 <= state["step"] < 400
    marker, _ = read_marker(out)
    assert marker is not None and marker["step"] == state["step"] and marker["signal"] == "SIGTERM"


def test_requeue_marker_check(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert requeue_main([str(run)]) == 1 and "no requeue marker" in capsys.readouterr().out
    for name in ("last.safetensors", "last.state.safetensors"):
        (run / "checkpoints" / name).write_bytes(b"x")
    path = write_marker(run, step=7, epoch=1, batch_in_epoch=2, checkpoint=run / "checkpoints" / "last.safetensors",
                        state=run / "checkpoints" / "last.state.safetensors", signal="SIGUSR1", exit_status=EXIT_PREEMPTED)
    assert path == run / MARKER
    written = read_marker(run)[0]["time_unix"]
    assert requeue_main([str(run), "--since", str(written - 60)]) == 0
    assert "resumable checkpoint at step 7" in capsys.readouterr().out
    assert requeue_main([str(run), "--since", str(written + 60)]) == 1  # an earlier job's marker
    assert "before this job started" in capsys.readouterr().out
    (run / "checkpoints" / "last.state.safetensors").unlink()
    assert requeue_main([str(run)]) == 1 and "not in" in capsys.readouterr().out
    for bad in ('{"step": 1}', "[]", "not json", '{"step": 1, "time_unix": 1, "checkpoint": "../x", "state": "y"}'):
        path.write_text(bad)
        assert requeue_main([str(run)]) == 1
        assert capsys.readouterr().out.startswith(f"{path}: ")

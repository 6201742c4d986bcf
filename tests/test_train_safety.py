"""train.py on untrusted input: crafted shard sets, damaged run directories, a full disk.

Each test writes its own bad input: shard sets patched member by member (motion of the wrong width, NaN motion,
a flipped byte), truncated or malicious training states, a checkpoint writer that fails with ENOSPC. Expected:
exit status 1 when training cannot make progress (with the skip counts by reason), 2 with one line naming the
file for set-up errors, never a hang, never untrained weights saved as ``best``.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lavimo.core.errors import BadInputError
from lavimo.core.hashing import sha256_file
from lavimo.training.loop import (
    STATE_VERSION, NonFiniteGuard, SkipBudget, TrainingStalled, load_training_state,
)
from lavimo.training.tensor_tree import tree_to_bytes
from test_train import BASE

from tests.fixtures.runs import TRAIN_SET, run_train

REPO = Path(__file__).resolve().parents[1]


_run = run_train


def patch_shards(src: Path, dst: Path, change, splits=("train",)) -> Path:
    """Copy shard set ``src`` to ``dst`` and rewrite every member of the ``splits``' tars with
    ``change(key, member, data) -> data``; the manifests get the new sha256 and size, so the set is
    consistently built, only its content is bad."""
    shutil.copytree(src, dst)
    for split in splits:
        mpath = dst / f"{split}.json"
        manifest = json.loads(mpath.read_text())
        for entry in manifest["shards"]:
            path = dst / entry["name"]
            with tarfile.open(path) as tf:
                members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
                for name, data in members:
                    key, _, member = name.partition(".")
                    data = change(key, member, data)
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            entry["sha256"], entry["bytes"] = sha256_file(path)
        mpath.write_text(json.dumps(manifest, indent=2))
    return dst


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def motion_change(new_motion, keys=None):
    """A ``change`` that replaces ``motion.npy`` (of the keys in ``keys``, default all) by ``new_motion(old)``."""
    def change(key, member, data):
        if member != "motion.npy" or (keys is not None and key not in keys):
            return data
        old = np.load(io.BytesIO(data), allow_pickle=False)
        return _npy(new_motion(old))
    return change


def _counts_in(message: str) -> dict[str, int]:
    """The ``reason: n`` pairs after "skipped by reason:" in an error line."""
    tail = message.split("skipped by reason:", 1)[1].split(";")[0].split(")")[0]
    out = {}
    for part in tail.split(","):
        reason, _, n = part.rpartition(":")
        out[reason.strip()] = int(n)
    return out


# ---------------------------------------------------------------------------------------------------------
# 1. training that cannot progress stops, with counts, within seconds


@pytest.mark.slow
def test_wrong_width_motion_everywhere_exits_1_with_counts(shards, tmp_path):
    bad = patch_shards(shards, tmp_path / "bad", motion_change(lambda m: np.zeros((len(m), 10), np.float32)),
                       splits=("train", "val"))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, str(REPO / "train.py"), "--shards", str(bad), "--out", str(out), "--epochs", "1",
           *BASE]
    # the timeout only ends a hung run: a loaded 1-core machine needs far more than a quiet one's few seconds
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: epoch 0: no usable training sample"), last
    counts = _counts_in(last)
    assert sum(counts.values()) >= 8, last  # at least one whole shard's samples, by reason
    assert "Traceback" not in proc.stderr
    assert not (out / "checkpoints" / "best.safetensors").exists()


@pytest.mark.slow
def test_skip_fraction_over_threshold_exits_1(shards, tmp_path, capsys):
    # 3 of every 4 training samples have 10-dim motion: each epoch would skip 3x the samples it trains on
    train_keys = {f"{i:06d}" for i in range(TRAIN_SET["n_train"]) if i % 4}
    bad = patch_shards(shards, tmp_path / "bad", motion_change(lambda m: np.zeros((len(m), 10), np.float32),
                                                               keys=train_keys))
    assert _run(["--shards", bad, "--out", tmp_path / "r1", "--epochs", 1, *BASE]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "more than --max-skip-fraction 0.5 x 32 samples per epoch" in err, err
    assert sum(_counts_in(err).values()) > 16
    assert not (tmp_path / "r1" / "checkpoints" / "best.safetensors").exists()
    # the threshold is a flag: inf never stops (two batches per pass are still usable)
    assert _run(["--shards", bad, "--out", tmp_path / "r2", "--epochs", 1, "--max-steps", 3,
                 "--max-skip-fraction", "inf", *BASE]) == 0
    assert _run(["--shards", bad, "--out", tmp_path / "r3", "--max-skip-fraction", "-1", *BASE]) == 2
    assert "--max-skip-fraction must be >= 0" in capsys.readouterr().err


def test_skip_budget_unit():
    class Loader:
        skipped = 0
        skip_counts: dict = {}

    loader = Loader()
    budget = SkipBudget(0.5, 8)
    budget.start_epoch(loader)
    loader.skipped, loader.skip_counts = 4, {"motion shape": 4}
    budget.check(loader, 0)  # 4 <= 0.5 x 8
    loader.skipped, loader.skip_counts = 5, {"motion shape": 4, "video": 1}
    with pytest.raises(TrainingStalled, match="video: 1") as err:
        budget.check(loader, 0)
    assert err.value.counts == {"motion shape": 4, "video": 1}
    budget.start_epoch(loader)  # a new epoch starts from zero
    budget.check(loader, 1)
    with pytest.raises(ValueError):
        SkipBudget(float("nan"), 8)


# ---------------------------------------------------------------------------------------------------------
# 2. non-finite data: no best before an optimiser step, a non-zero exit, skipped batches logged with keyids


def test_all_nan_motion_exits_nonzero_without_best(shards, tmp_path, capsys):
    bad = patch_shards(shards, tmp_path / "bad", motion_change(lambda m: np.full_like(m, np.nan)))
    out = tmp_path / "run"
    rc = _run(["--shards", bad, "--out", out, "--epochs", 1, *BASE])
    err = capsys.readouterr().err
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    # the loader drops non-finite samples (no usable sample), or the loss is NaN on every batch (no step)
    assert "no usable training sample" in last or "no optimiser step" in last, last
    assert not (out / "checkpoints" / "best.safetensors").exists()


def _nan_losses(monkeypatch):
    from lavimo.model.lavimo import LavimoModel

    real = LavimoModel.compute_losses

    def nan_losses(self, batch, gather_negatives=True):
        out = real(self, batch, gather_negatives)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(LavimoModel, "compute_losses", nan_losses)


def test_nan_loss_everywhere_never_writes_best(shards, tmp_path, capsys, caplog, monkeypatch):
    _nan_losses(monkeypatch)
    out = tmp_path / "run"
    # validations after steps 1 and 2 (no optimiser step yet), then --max-steps stops the run at step 2
    rc = _run(["--shards", shards, "--out", out, "--epochs", 1, "--val-every", 1, "--max-steps", 2, *BASE])
    assert rc == 1
    assert "no optimiser step in 2 step(s)" in capsys.readouterr().err
    assert not (out / "checkpoints" / "best.safetensors").exists()
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["best"]) for r in rows] == [("1", "0"), ("2", "0")]
    skipped = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(skipped) == 2 and all("batch keyids: " in m for m in skipped)
    keyids = skipped[0].split("batch keyids: ")[1].split(",")
    assert len(keyids) == 4 and all(k.isdigit() and len(k) == 6 for k in keyids)
    # a whole epoch without a step (8 batches < --max-nan-steps 20) is also an exit 1, not a finished run
    assert _run(["--shards", shards, "--out", tmp_path / "run2", "--epochs", 1, *BASE]) == 1
    assert "epoch 0: no optimiser step in 8 batches" in capsys.readouterr().err
    assert not (tmp_path / "run2" / "checkpoints" / "best.safetensors").exists()


def test_guard_logs_keyids(caplog):
    g = NonFiniteGuard(5)
    g.update(False, 7, keyids=["000001", "000002", "bad\nline"], local=True)
    msg = caplog.records[-1].getMessage()
    assert "step 7" in msg and "000001,000002,'bad\\nline'" in msg and "\n" not in msg
    g.update(False, 8, keyids=["000003"], local=False)
    assert "on another rank" in caplog.records[-1].getMessage()


# ---------------------------------------------------------------------------------------------------------
# 3. shard bytes verified against the manifest before training


def test_flipped_byte_exits_2_naming_the_file(shards, tmp_path, capsys):
    bad = tmp_path / "flipped"
    shutil.copytree(shards, bad)
    victim = bad / json.loads((bad / "train.json").read_text())["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01  # in the tar's end-of-archive padding: the tar still reads, only the hash tells
    victim.write_bytes(bytes(data))
    out = tmp_path / "run"
    # checked while streamed (the default): found when training reads the shard's end
    assert _run(["--shards", bad, "--out", out, *BASE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(victim) in err[0] and "sha256" in err[0] and "--no-verify" in err[0], err
    info = json.loads((out / "run.json").read_text())
    assert info["shards"]["splits"]["train"]["verify"] == "sha256-stream"
    assert not (out / "checkpoints" / "last.safetensors").exists()  # stopped in the first epoch
    shutil.rmtree(out)
    # --verify-shards full: every tar read before training
    assert _run(["--shards", bad, "--out", out, "--verify-shards", "full", *BASE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(victim) in err[0] and "sha256" in err[0] and "--no-verify" in err[0], err
    assert not out.exists()  # nothing written before the shards are verified
    # --no-verify trains on it and says so in run.json
    assert _run(["--shards", bad, "--out", out, "--max-steps", 1, "--no-verify", *BASE]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["shards"]["splits"]["train"]["verify"] == "skipped"
    assert set(info["shards"]["splits"]["train"]["shards"][victim.name]) == {"manifest_sha256"}


def test_manifest_naming_a_file_outside_is_refused(shards, tmp_path, capsys):
    bad = tmp_path / "escape"
    shutil.copytree(shards, bad)
    m = json.loads((bad / "val.json").read_text())
    m["shards"][0]["name"] = "../" + m["shards"][0]["name"]
    (bad / "val.json").write_text(json.dumps(m))
    assert _run(["--shards", bad, "--out", tmp_path / "run", *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(bad / "val.json") in line and "not a plain" in line


# ---------------------------------------------------------------------------------------------------------
# 4. set-up errors: exit 2, one line naming the file and what to do


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py: error:")]
    assert len(err) == 1, err
    return err[0]


def test_disk_full_while_checkpointing(shards, tmp_path, capsys, monkeypatch):
    from lavimo import model
    real = model.save_checkpoint
    calls = []

    def full_disk_after(n):
        def save(m, path, extra=None):
            calls.append(Path(path).name)
            if len(calls) > n:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(m, path, extra=extra)
        return save

    # the very first checkpoint fails: exit 2, nothing half-written, and --resume says to start fresh
    out = tmp_path / "run"
    monkeypatch.setattr(model, "save_checkpoint", full_disk_after(0))
    assert _run(["--shards", shards, "--out", out, "--max-steps", 1, *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(out / "checkpoints" / "last.safetensors") in line and "no space left on device" in line
    assert "start again without --resume" in line
    assert not (out / "checkpoints" / "last.state.safetensors").exists()
    assert not list((out / "checkpoints").glob(".*")), "temp files left behind"
    monkeypatch.setattr(model, "save_checkpoint", real)
    assert _run(["--shards", shards, "--out", out, "--resume", *BASE]) == 2
    assert _one_error_line(capsys) == (f"train.py: error: --resume: no checkpoint to resume in {out / 'checkpoints'}; "
                                       "start fresh without --resume")
    # a later checkpoint fails: the previous weights + state pair stays and resumes
    out2 = tmp_path / "run2"
    calls.clear()
    monkeypatch.setattr(model, "save_checkpoint", full_disk_after(1))
    assert _run(["--shards", shards, "--out", out2, "--save-every", 1, "--max-steps", 3, *BASE]) == 2
    assert "rerun with --resume" in _one_error_line(capsys)
    assert load_training_state(out2 / "checkpoints" / "last.state.safetensors")["step"] == 1
    assert not list((out2 / "checkpoints").glob(".*"))
    monkeypatch.setattr(model, "save_checkpoint", real)
    assert _run(["--shards", shards, "--out", out2, "--resume", "--max-steps", 2, *BASE]) == 0
    assert load_training_state(out2 / "checkpoints" / "last.state.safetensors")["step"] == 2


@pytest.fixture(scope="module")
def saved_run(shards, tmp_path_factory):
    """A run stopped after one step, with its last.state.safetensors."""
    out = tmp_path_factory.mktemp("saved") / "run"
    assert _run(["--shards", shards, "--out", out, "--max-steps", 1, *BASE]) == 0
    return out


def _copy_run(saved_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(saved_run, dst)
    return dst


def test_truncated_state_exits_2(saved_run, shards, tmp_path, capsys):
    run = _copy_run(saved_run, tmp_path)
    state = run / "checkpoints" / "last.state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    assert _run(["--shards", shards, "--out", run, "--resume", *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(state) in line and "unreadable training state" in line and "start a new --out" in line


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_state_with_pickled_code_is_never_run(saved_run, shards, tmp_path, capsys):
    run = _copy_run(saved_run, tmp_path)
    marker = tmp_path / "pwned"
    state = run / "checkpoints" / "last.state.safetensors"
    good = load_training_state(state)
    torch.save({**good, "period": _Evil(marker)}, state)  # a pickle under the state's name: never unpickled
    assert _run(["--shards", shards, "--out", run, "--resume", *BASE]) == 2
    assert str(state) in _one_error_line(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("field,value", [("step", "7"), ("optimizer", []), ("epoch", -1), ("version", 9)])
def test_malformed_state_fields_are_named(tmp_path, field, value):
    path = tmp_path / "s.safetensors"
    # a crafted file (save_training_state would stamp the right version)
    path.write_bytes(tree_to_bytes({"version": STATE_VERSION, "epoch": 0, "batch_in_epoch": 0, "step": 0, "steps_per_epoch": 1, "optimizer": {},
                "scheduler": {}, "scaler": {}, "rng": [], "best_score": None, "nonfinite": {}, "period": {},
                field: value}))
    with pytest.raises(BadInputError) as err:
        load_training_state(path, complete=True)
    assert err.value.path == str(path) and err.value.field == field


def test_resume_without_state(shards, tmp_path, capsys):
    empty = tmp_path / "empty"
    assert _run(["--shards", shards, "--out", empty, "--resume", *BASE]) == 2
    assert _one_error_line(capsys) == (f"train.py: error: --resume: no checkpoint to resume in {empty / 'checkpoints'}; "
                                       "start fresh without --resume")


def test_usage_errors_exit_2_from_the_command_line(tmp_path):
    assert "SystemExit" not in (REPO / "train.py").read_text()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--shards", str(tmp_path), "--set", "oops"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "train.py: error: --set expects FIELD=VALUE, got 'oops'"


def test_missing_pretrained_weights_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAVIMO_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    out = tmp_path / "run"
    assert _run(["--shards", tmp_path / "nope", "--out", out, "--preset", "paper", "--device", "cpu",
                 "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert "missing pretrained weights" in line and str(tmp_path / "weights" / "distilbert-base-uncased") in line
    assert not out.exists()


def test_bad_config_values_exit_2(tmp_path, capsys):
    assert _run(["--shards", tmp_path, "--out", tmp_path / "r", *BASE, "--set", "no_such_field=1"]) == 2
    assert "unknown config field(s) ['no_such_field']" in _one_error_line(capsys)
    cfg = tmp_path / "preset.json"
    cfg.write_text("{not json")
    assert _run(["--shards", tmp_path, "--out", tmp_path / "r", "--preset", cfg, "--device", "cpu"]) == 2
    assert str(cfg) in _one_error_line(capsys)


def test_damaged_last_weights_exit_2(saved_run, shards, tmp_path, capsys):
    run = _copy_run(saved_run, tmp_path)
    weights = run / "checkpoints" / "last.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}junk")
    assert _run(["--shards", shards, "--out", run, "--resume", *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(weights) in line and "start a new --out" in line


# ---------------------------------------------------------------------------------------------------------
# 5. issue 24: no code from a downloaded run directory, bounded JSON, a killed run's temp files, a full disk in
#    the real writers


def test_downloaded_run_cannot_switch_pickle_loading_on(saved_run, shards, tmp_path, capsys, caplog):
    # the attack: a run directory's config.json sets trust_weights_pickle and points video_weights at a pickle;
    # train.py --resume on it must not unpickle it (no option read from a file enables code loading)
    run = _copy_run(saved_run, tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "clip.pt"
    torch.save({"visual.conv1.weight": torch.zeros(4, 3, 16, 16), "hook": _Evil(marker)}, evil)
    conf = json.loads((run / "config.json").read_text())
    conf["model"].update(trust_weights_pickle=True, random_init=False, video_weights=str(evil))
    (run / "config.json").write_text(json.dumps(conf))
    # the attacker controls the whole directory: last.safetensors' saved config says the same
    _set_checkpoint_config(run / "checkpoints" / "last.safetensors", conf["model"])
    assert _run(["--shards", shards, "--out", run, "--resume", *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(evil) in line and "weights-only" in line and ".safetensors" in line, line
    assert not marker.exists()
    assert "trust_weights_pickle=True is ignored" in caplog.text


def _set_checkpoint_config(path: Path, model_config: dict) -> None:
    """Rewrite the ``lavimo_config`` in safetensors file ``path``'s header (the tensors are kept)."""
    import struct

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["lavimo_config"] = json.dumps(model_config)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


@pytest.mark.parametrize("where", ["config.json", "both"])
def test_resume_of_a_crafted_huge_model_is_refused_before_allocating(saved_run, shards, tmp_path, where):
    # a run directory whose config.json (and, in "both", last.safetensors' saved config too) describes a model of
    # billions of weights: refused before train.py allocates it (before: 13 GiB and more)
    from tests.fixtures.untrusted import assert_clean_refusal, run_measured

    run = _copy_run(saved_run, tmp_path)
    conf = json.loads((run / "config.json").read_text())
    conf["model"].update(latent_dim=16384, ff_dim=65536, num_heads=2)
    (run / "config.json").write_text(json.dumps(conf))
    last = run / "checkpoints" / "last.safetensors"
    if where == "both":
        _set_checkpoint_config(last, conf["model"])
    m = run_measured([sys.executable, str(REPO / "train.py"), "--shards", str(shards), "--out", str(run),
                      "--resume", *map(str, BASE)], cwd=REPO, timeout=120)
    assert_clean_refusal(m, last, codes=(2,), max_rss_mib=1600)
    print(f"refused: exit {m.returncode}, peak RSS {m.peak_rss_mib:.0f} MiB, {m.seconds:.1f} s")
    assert ("refused before allocating" if where == "both" else "is not the one") in m.stderr, m.stderr


def test_trust_option_cannot_be_set_on_the_command_line(tmp_path, capsys):
    assert _run(["--shards", tmp_path, "--out", tmp_path / "r", *BASE, "--set", "trust_weights_pickle=true"]) == 2
    assert "unknown config field(s) ['trust_weights_pickle']" in _one_error_line(capsys)


def test_deeply_nested_run_json_files(saved_run, shards, tmp_path, capsys, caplog):
    nested = "[" * 100000 + "]" * 100000
    # config.json: the run cannot be resumed from it, one line naming it
    run = _copy_run(saved_run, tmp_path)
    (run / "config.json").write_text('{"model": ' + nested + "}")
    assert _run(["--shards", shards, "--out", run, "--resume", *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(run / "config.json") in line and "nested deeper" in line, line
    # run.json (provenance only): a warning, a new session list, training goes on
    run2 = tmp_path / "run2"
    shutil.copytree(saved_run, run2)
    (run2 / "run.json").write_text(nested)
    assert _run(["--shards", shards, "--out", run2, "--resume", "--max-steps", 2, *BASE]) == 0
    assert "run.json unreadable" in caplog.text
    assert len(json.loads((run2 / "run.json").read_text())["sessions"]) == 1


def test_resume_removes_a_killed_runs_temp_files_and_nothing_else(saved_run, shards, tmp_path):
    run = _copy_run(saved_run, tmp_path)
    ck = run / "checkpoints"
    # what atomic_path leaves when the process is killed mid-write: .{final}.{random}.tmp{ext}
    stale = [ck / ".last.safetensors.k1ll3d.tmp.safetensors", ck / ".last.state.safetensors.ab_12x.tmp.safetensors",
             ck / ".epoch-0001.safetensors.q9q9q9.tmp.safetensors", run / ".metrics.csv.zz00zz.tmp.csv"]
    kept = [ck / ".notes.abc.tmp", ck / "mine.txt", run / ".last.safetensors.abc.tmp.safetensors",
            run / "tb" / ".run.json.abc.tmp.json", ck / ".other.bin.abc.tmp.bin"]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    link = ck / ".best.safetensors.lnk000.tmp.safetensors"
    link.symlink_to(run / "keep-me")
    (run / "keep-me").write_text("x")
    assert _run(["--shards", shards, "--out", run, "--resume", "--max-steps", 2, *BASE]) == 0
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept) and link.is_symlink() and (run / "keep-me").exists()
    assert not [p for p in ck.glob(".*.tmp*") if p not in kept and p != link]


def test_disk_full_in_the_real_writers_exits_2_with_one_line(shards, tmp_path, capsys, monkeypatch):
    """The writers themselves on a full disk: the training state written into /dev/full (the OS answers ENOSPC to
    every write), and safetensors' save_file failing as it does on a full file system (its SafetensorError, measured on a
    64 KiB tmpfs: "Error while serializing: I/O error: No space left on device (os error 28)")."""
    import builtins

    import lavimo.training.loop

    import stat

    if not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)):
        pytest.skip("no /dev/full device on this system")

    def open_full(path, mode="r", *a, **kw):  # the state's temporary file is a device that is always full
        if ".last.state.safetensors." in str(path) and "w" in mode:
            return builtins.open("/dev/full", mode, *a, **kw)
        return builtins.open(path, mode, *a, **kw)

    monkeypatch.setattr(lavimo.training.loop, "open", open_full, raising=False)
    out = tmp_path / "run"
    assert _run(["--shards", shards, "--out", out, "--max-steps", 1, *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(out / "checkpoints" / "last.state.safetensors") in line and "no space left on device" in line, line
    assert not list((out / "checkpoints").iterdir()), "partial files left behind"
    monkeypatch.undo()

    import safetensors.torch
    from safetensors import SafetensorError

    def full_disk(*a, **kw):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out2 = tmp_path / "run2"
    assert _run(["--shards", shards, "--out", out2, "--max-steps", 1, *BASE]) == 2
    line = _one_error_line(capsys)
    assert str(out2 / "checkpoints" / "last.safetensors") in line and "no space left on device" in line, line
    assert not list((out2 / "checkpoints").iterdir()), "partial files left behind"


def test_damaged_metrics_table_exits_2_naming_it(saved_run, shards, tmp_path, capsys):
    run = _copy_run(saved_run, tmp_path)
    for text in ("epoch,step\n0,abc\n", "epoch,step\n0," + "9" * 200_000 + "\n"):
        (run / "metrics.csv").write_text(text)
        assert _run(["--shards", shards, "--out", run, "--resume", *BASE]) == 2
        line = _one_error_line(capsys)
        assert str(run / "metrics.csv") in line and "move it out of the run directory" in line, line

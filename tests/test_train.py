"""train.py and its helpers (training/schedule.py, training/run_dir.py, training/loop.py, training/cli.py,
training/trainer.py).

Unit tests for the parts that stand alone (schedule, run dir, training state, NaN guard, flags) plus the
end-to-end runs on a tiny synthetic shard set (marked slow): loss goes down, metrics.csv per epoch, exact resume,
ablation flags reaching the model and the saved config, clear errors for bad shards.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lavimo.core.device import resolve_precision
from lavimo.core.hashing import sha256_file
from lavimo.model.lavimo import param_groups
from lavimo.training.loop import (
    NonFiniteGuard, RunningMeans, TrainingDiverged, load_training_state, preserved_rng, retrieval_scores, rng_state,
    save_training_state, set_rng_state,
)
from lavimo.training.run_dir import MetricsTable, RunDir
from lavimo.training.schedule import lr_factor, paper_scheduler

import lavimo.training.cli as train_script
from lavimo.training.config import resolve_config
from tests.fixtures.runs import TINY_FLAGS, assert_same_last_weights, metrics_rows, run_train, train_tiny


# ---------------------------------------------------------------------------------------------------------
# schedule


def test_schedule_paper_shape():
    kw = dict(steps_per_epoch=10, epochs=400, decay_start_epoch=100, lr=1e-4, lr_min=1e-5)
    assert lr_factor(0, **kw) == 1.0
    assert lr_factor(999, **kw) == 1.0  # last step of epoch 99
    assert lr_factor(1000, **kw) == 1.0  # first step of epoch 100: decay starts from lr
    assert lr_factor(3999, **kw) == pytest.approx(0.1)  # last step: lr_min / lr
    mid = lr_factor(1000 + (3999 - 1000) // 2, **kw)
    assert 0.1 < mid < 1.0
    vals = [lr_factor(s, **kw) for s in range(1000, 4000)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone linear decay
    assert np.allclose(np.diff(vals), np.diff(vals)[0])


def test_schedule_constant_when_decay_after_end_and_warmup():
    kw = dict(steps_per_epoch=5, epochs=3, decay_start_epoch=100, lr=1e-3, lr_min=1e-5)
    assert all(lr_factor(s, **kw) == 1.0 for s in range(15))
    assert lr_factor(0, warmup_steps=4, **kw) == pytest.approx(0.25)
    assert lr_factor(3, warmup_steps=4, **kw) == pytest.approx(1.0)


def test_scheduler_scales_every_group():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-4}, {"params": [b], "lr": 1e-5}], lr=1e-4)
    sched = paper_scheduler(opt, steps_per_epoch=2, epochs=3, decay_start_epoch=1, lr=1e-4, lr_min=1e-5)
    lrs = []
    for _ in range(6):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([1e-4, 1e-5]) and lrs[2] == pytest.approx([1e-4, 1e-5])
    assert lrs[5] == pytest.approx([1e-5, 1e-6])  # backbone group keeps its ratio


# ---------------------------------------------------------------------------------------------------------
# helpers


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_decay_and_frozen():
    m = _Tiny()
    groups = param_groups(m, lr=1e-3, weight_decay=0.05, backbone_lr_scale=0.1)
    by = {g["name"]: g for g in groups}
    assert set(by) == {"head/decay", "head/no_decay"}
    assert by["head/decay"]["weight_decay"] == 0.05 and by["head/no_decay"]["weight_decay"] == 0.0
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_param_groups_backbone_scale():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16)
    m = torch.nn.Module()
    m.text = torch.nn.Module()
    m.text.backbone = transformers.BertModel(cfg)
    m.proj = torch.nn.Linear(8, 4)
    groups = {g["name"]: g for g in param_groups(m, lr=1e-4, weight_decay=0.0, backbone_lr_scale=0.1)}
    assert groups["backbone/decay"]["lr"] == pytest.approx(1e-5)
    assert groups["head/decay"]["lr"] == pytest.approx(1e-4)


def test_rng_state_roundtrip_and_preserved(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    st = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    set_rng_state(st)
    with preserved_rng():
        torch.rand(100)
        np.random.rand(10)
        random.random()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    # the state file loads with weights_only=True and restores the streams
    set_rng_state(st)
    p = tmp_path / "s.pt"
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    save_training_state(p, {"version": 1, "rng": [rng_state()], "optimizer": opt.state_dict(), "step": 3})
    loaded = load_training_state(p)
    set_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert not list(tmp_path.glob(".*tmp*"))


def test_nonfinite_guard():
    g = NonFiniteGuard(max_consecutive=3)
    assert g.update(True, 0) is False
    assert g.update(False, 1) is True
    assert g.update(False, 2) is True
    assert g.update(True, 3) is False
    assert g.total == 2 and g.consecutive == 0
    g.update(False, 4)
    g.update(False, 5)
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        g.update(False, 6)


def test_running_means_state():
    r = RunningMeans()
    r.add({"loss": 2.0})
    r.add({"loss": 4.0})
    r.samples, r.seconds = 10, 2.0
    r2 = RunningMeans(r.state_dict())
    assert r2.means() == {"loss": 3.0} and r2.samples_per_s() == 5.0


def test_metrics_table_truncate(tmp_path):
    t = MetricsTable(tmp_path / "metrics.csv")
    for s in (10, 20, 30):
        t.append({"epoch": s // 10, "step": s, "val": s / 10})
    t2 = MetricsTable(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in t2.rows] == [10, 20, 30]
    t2.truncate_after(20)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["step"] for r in rows] == ["10", "20"]


def test_retrieval_scores_perfect():
    e = torch.eye(5)
    res = retrieval_scores({"keyid": list("abcde"), "text": e, "video": e, "motion": e})
    assert res["t2m/R@1"] == 100.0 and res["v2m/MedR"] == 1.0 and res["score"] == 100.0
    res = retrieval_scores({"keyid": list("abcde"), "text": e, "video": None, "motion": e})
    assert "v2m/R@1" not in res


def test_precision_rules():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", cpu, amp=False) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)


def test_flags_to_overrides():
    args = train_script.parse_args(["--shards", "x", "--modalities", "tm", "--negative-filtering", "soft",
                                    "--threshold", "0.7", "--recon-weight", "0", "--no-fusion", "--freeze-text",
                                    "--batch-size", "8", "--lr", "3e-4", "--epochs", "2", "--workers", "1",
                                    "--seed", "5", "--set", "temperature=0.05"])
    o = train_script.config_overrides(args)
    assert o == {"modalities": "tm", "negative_filtering": "soft", "threshold": 0.7, "recon_weight": 0.0,
                 "fusion": False, "freeze_text": True, "batch_size": 8, "lr": 3e-4, "epochs": 2,
                 "num_workers": 1, "seed": 5, "temperature": "0.05"}
    assert train_script.config_overrides(train_script.parse_args(["--shards", "x"])) == {}


def test_run_dir_layout(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert run.ckpt_dir.is_dir() and run.tb.is_dir()
    assert run.last.name == "last.safetensors" and run.best.parent == run.ckpt_dir
    import lavimo.training.run_dir
    assert lavimo.training.run_dir.sha256_file is sha256_file  # one sha256 helper: lavimo.core.hashing's


class _NaNModel(torch.nn.Module):
    """A stand-in with LAVIMO's compute_losses contract whose loss is NaN on chosen calls (Stepper test)."""

    def __init__(self, nan_calls):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.nan_calls, self.calls = set(nan_calls), 0

    def compute_losses(self, batch, gather_negatives=True):
        loss = (self.w * batch["x"]).sum() ** 2
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        self.calls += 1
        return {"loss": loss, "tm": loss.detach(), "fusion_weights": torch.tensor([[0.2, 0.3, 0.5]])}


def test_stepper_skips_nonfinite_steps():
    from lavimo.training.loop import LossModule, Stepper

    m = _NaNModel(nan_calls={1})
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    guard = NonFiniteGuard(max_consecutive=2)
    st = Stepper(LossModule(m), opt, torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"),
                 precision="fp32", grad_clip=1.0, guard=guard)
    batch = {"x": torch.tensor([1.0, 2.0, 3.0])}
    terms = st(batch, 0)
    assert terms["loss"] > 0 and terms["fusion_motion"] == pytest.approx(0.5)
    before = m.w.detach().clone()
    assert st(batch, 1) is None  # NaN: skipped, weights untouched, grads cleared
    assert torch.equal(m.w, before) and m.w.grad is None and guard.total == 1
    assert st(batch, 2) is not None and guard.consecutive == 0
    m.nan_calls = {3, 4}
    st(batch, 3)
    with pytest.raises(TrainingDiverged):
        st(batch, 4)


# ---------------------------------------------------------------------------------------------------------
# end to end on a tiny synthetic shard set

REPO = Path(__file__).resolve().parents[1]




_run, BASE = run_train, TINY_FLAGS


@pytest.fixture(scope="module")
def full_run(shards, tmp_path_factory):
    """An uninterrupted 3-epoch tiny run (dropout on, so the RNG streams matter for resume), its shards verified
    before training as before --verify-shards stream became the default: the runs compared with it (checked
    while streamed) show that checking does not change training."""
    return train_tiny(shards, tmp_path_factory.mktemp("full") / "run", 3, "--verify-shards", "full")




@pytest.mark.slow
def test_train_lowers_loss_and_logs_validation(full_run, shards):
    rows = metrics_rows(full_run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [int(r["step"]) for r in rows] == [8, 16, 24]  # 32 samples / batch 4
    for r in rows:
        for k in ("val_t2m_R@1", "val_t2m_R@5", "val_t2m_MedR", "val_v2m_R@1", "val_v2m_MedR", "samples_per_s",
                  "lr", "fusion_text", "fusion_video", "fusion_motion"):
            assert math.isfinite(float(r[k])), k
        w = [float(r[f"fusion_{k}"]) for k in ("text", "video", "motion")]
        assert sum(w) == pytest.approx(1.0, abs=1e-4)
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    assert float(rows[-1]["lr"]) == pytest.approx(1e-4)  # tiny: lr_min reached at the last step
    cfg = json.loads((full_run / "config.json").read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["dropout"] == 0.1
    assert cfg["trainer"]["steps_per_epoch"] == 8
    info = json.loads((full_run / "run.json").read_text())
    train_info = info["shards"]["splits"]["train"]
    assert train_info["manifest_sha256"] == sha256_file(shards / "train.json")[0]
    assert train_info["verify"] == "sha256" and len(train_info["shards"]) == 4
    for name, rec in train_info["shards"].items():  # what was computed, not just what the manifest says
        assert rec["sha256"] == rec["manifest_sha256"] == sha256_file(shards / name)[0] and rec["match"] is True
        assert rec["bytes"] == (shards / name).stat().st_size
    assert "torch" in info["packages"] and "commit" in info["git"]
    assert list((full_run / "tb").glob("events.out.tfevents.*"))
    for name in ("best.safetensors", "last.safetensors", "last.state.safetensors"):
        assert (full_run / "checkpoints" / name).is_file()
    from lavimo.model import load_checkpoint

    best = load_checkpoint(full_run / "checkpoints" / "best.safetensors")
    assert best.checkpoint_extra["val_score"] == pytest.approx(max(float(r["val_score"]) for r in rows))


@pytest.mark.slow
def test_resume_mid_epoch_is_exact(full_run, shards, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    # "killed" after a save in the middle of epoch 2: --save-every saves at step 10, --max-steps stops at 11
    # after saving; simulate losing step 11 by resuming from the step-10 files
    assert _run(["--shards", shards, "--out", out, "--epochs", 3, "--save-every", 5, "--max-steps", 10, *BASE]) == 0
    state = load_training_state(out / "checkpoints" / "last.state.safetensors")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 2, 10)
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    assert _run(["--shards", shards, "--out", out, "--resume", *BASE]) == 0
    assert_same_last_weights(full_run, out)
    ra, rb = metrics_rows(full_run), metrics_rows(out)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    for x, y in zip(ra, rb):
        for k in ("train_loss", "val_t2m_R@1", "val_v2m_R@1", "lr"):
            assert float(x[k]) == pytest.approx(float(y[k]), abs=1e-5), k
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [("--resume" in s["command"]) for s in sessions] == [False, True]
    # resuming a finished run is a no-op; a fresh start on an existing run is refused
    assert _run(["--shards", shards, "--out", out, "--resume", *BASE]) == 0
    capsys.readouterr()
    assert _run(["--shards", shards, "--out", out, *BASE]) == 2  # usage errors exit 2 with one line
    err = capsys.readouterr().err
    assert "already holds a run; pass --resume" in err and "Traceback" not in err
    # the checkpoint fixes the model: a flag that changes it is refused, naming the field
    assert _run(["--shards", shards, "--out", out, "--resume", "--no-fusion", *BASE]) == 2
    assert "cannot change the model of the saved run (fusion True -> False)" in capsys.readouterr().err
    # the run's settings are the command line's (no list of mutable fields): a finished run with another lr
    # has nothing left to do, and the change is logged
    with caplog.at_level(logging.INFO, logger="train"):
        assert _run(["--shards", shards, "--out", out, "--resume", "--lr", "0.5", *BASE]) == 0
    assert "changed run settings: lr 0.001 -> 0.5" in caplog.text
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.5
    # ... and they take effect mid-run: the saved optimiser state does not bring the old lr back
    assert _run(["--shards", shards, "--out", changed, "--resume", "--lr", "0.002", *BASE]) == 0
    resumed = [r for r in metrics_rows(changed) if int(r["step"]) > 10]
    assert [int(r["step"]) for r in resumed] == [16, 24]
    for r in resumed:
        want = 0.002 * lr_factor(int(r["step"]), steps_per_epoch=8, epochs=3, decay_start_epoch=1, lr=0.002,
                                 lr_min=1e-4)
        assert float(r["lr"]) == pytest.approx(want, rel=1e-6)


ABLATIONS = [
    (["--modalities", "tm"], {"modalities": "tm"}),
    (["--negative-filtering", "soft"], {"negative_filtering": "soft"}),
    (["--negative-filtering", "tmr", "--threshold", "0.7"], {"negative_filtering": "tmr", "threshold": 0.7}),
    (["--recon-weight", "0"], {"recon_weight": 0.0}),
    (["--no-fusion"], {"fusion": False}),
    (["--freeze-text"], {"freeze_text": True}),
]


def _batch(b=4, t=10, size=32, d=263):
    g = torch.Generator().manual_seed(0)
    return {"keyid": [f"{i:06d}" for i in range(b)], "video": torch.randn(b, 8, 3, size, size, generator=g),
            "text": ["a person walks", "someone jumps", "a man waves", "a person sits"][:b],
            "sent_emb": torch.nn.functional.normalize(torch.randn(b, 384, generator=g), dim=-1),
            "motion": torch.randn(b, t, d, generator=g), "mask": torch.ones(b, t, dtype=torch.bool)}


@pytest.mark.parametrize("flags,expect", ABLATIONS, ids=[" ".join(f) for f, _ in ABLATIONS])
def test_ablation_flag_reaches_model_and_loss(flags, expect, monkeypatch, tmp_path):
    import lavimo.model.lavimo as lavimo
    from lavimo.model import build_model

    args = train_script.parse_args(["--shards", "x", "--preset", "tiny", *flags])
    cfg = resolve_config(args.preset, train_script.config_overrides(args), RunDir(tmp_path / "r"), False).model
    for k, v in expect.items():
        assert getattr(cfg, k) == v
    calls = []
    real = lavimo.contrastive_loss

    def spy(x, y, sent_emb=None, **kw):
        calls.append(kw)
        return real(x, y, sent_emb, **kw)

    monkeypatch.setattr(lavimo, "contrastive_loss", spy)
    torch.manual_seed(0)
    m = build_model(cfg)
    out = m.compute_losses(_batch())
    assert all(c["mode"] == cfg.negative_filtering and c["threshold"] == cfg.threshold for c in calls)
    if cfg.modalities == "tm":
        assert m.video is None and len(calls) == 1 and float(out["vm"]) == 0.0
    else:
        assert len(calls) == 3
    if cfg.recon_weight == 0:
        assert m.decoder is None and float(out["recon"]) == 0.0
    if not cfg.fusion:
        assert m.fusion is None and torch.equal(out["fusion_weights"][:, 2], torch.ones(4))
    groups = param_groups(m, lr=1e-3, weight_decay=0.01)
    in_opt = {id(p) for g in groups for p in g["params"]}
    text_in_opt = any(id(p) in in_opt for p in m.text.backbone.parameters())
    assert text_in_opt is (not cfg.freeze_text)


@pytest.mark.slow
def test_ablation_flags_saved_config_and_checkpoint(shards, tmp_path):
    from lavimo.model import read_checkpoint_metadata

    out = tmp_path / "run"
    flags = ["--modalities", "tm", "--negative-filtering", "soft", "--threshold", "0.7", "--recon-weight", "0",
             "--no-fusion", "--freeze-text"]
    assert _run(["--shards", shards, "--out", out, "--epochs", 1, "--max-steps", 2, "--val-every", 1,
                 *BASE, *flags]) == 0
    rows = metrics_rows(out)  # --val-every 1: a validation after each of the 2 steps, t2m only (no video)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isnan(float(r["val_v2m_R@1"])) and math.isfinite(float(r["val_t2m_R@1"])) for r in rows)
    assert float(rows[0]["fusion_motion"]) == 1.0  # no fusion: the decoder reads the motion latent alone
    saved = json.loads((out / "config.json").read_text())["model"]
    meta = read_checkpoint_metadata(out / "checkpoints" / "last.safetensors")["config"].to_dict()
    for d in (saved, meta):
        assert (d["modalities"], d["negative_filtering"], d["threshold"], d["recon_weight"], d["fusion"],
                d["freeze_text"]) == ("tm", "soft", 0.7, 0.0, False, True)


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _run(["--shards", tmp_path, "--out", tmp_path / "run", *BASE, "--device", "cuda"]) == 2
    assert "--device cuda was asked for but torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written before the device was resolved


def test_bad_shards_give_clear_errors(shards, tmp_path, capsys):
    import shutil

    assert _run(["--shards", tmp_path / "nope", "--out", tmp_path / "r0", *BASE]) == 2
    assert "shard directory not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(["--shards", empty, "--out", tmp_path / "r1", *BASE]) == 2
    assert "no train shards" in capsys.readouterr().err
    zero = tmp_path / "zero"
    shutil.copytree(shards, zero)
    m = json.loads((zero / "train.json").read_text())
    m["num_samples"], m["shards"] = 0, []
    (zero / "train.json").write_text(json.dumps(m))
    assert _run(["--shards", zero, "--out", tmp_path / "r2", *BASE]) == 2
    assert "the train split is empty" in capsys.readouterr().err
    assert _run(["--shards", shards, "--out", tmp_path / "r3", *BASE, "--set", "feature_dim=251"]) == 2
    assert "263-dim motion features but preset 'tiny' expects feature_dim=251" in capsys.readouterr().err


def test_augmentation_and_random_init_flags_reach_the_config_and_the_loader(monkeypatch):
    import lavimo.training.cli as T
    from lavimo.training.config import load_run_config

    args = T.parse_args(["--shards", "x", "--hflip-p", "0.5", "--randaugment", "2", "--random-init"])
    o = T.config_overrides(args)
    assert o == {"hflip_p": 0.5, "randaugment_ops": 2, "random_init": True}
    rc = load_run_config("paper", **o)
    from lavimo.model.weights import missing_pretrained
    assert missing_pretrained(rc.model) == []
    seen = {}
    import lavimo.dataset.shards.stream as S
    loader = type("Loader", (), {"set_epoch": lambda self, epoch: None})
    monkeypatch.setattr(S, "make_loader", lambda *a, **kw: seen.update(kw) or loader())
    from lavimo.training.loop import DistInfo
    from lavimo.training.data import train_loader
    train_loader(args.shards, rc.model, rc.train, 0, 1, DistInfo(), args.shuffle_buffer)
    assert seen["augment"] == {"hflip_p": 0.5, "randaugment_ops": 2, "randaugment_magnitude": 9}


def test_the_command_is_lavimo_train_and_training_cli_points_to_it():
    """``python -m lavimo.train`` is the command (``train.py``; ``main(argv)``); ``python -m lavimo.training.cli``
    only parses flags: one line pointing to ``python -m lavimo.train``, exit status 2."""
    import subprocess
    import sys

    import lavimo.train

    assert callable(lavimo.train.main)
    help_ = subprocess.run([sys.executable, "-m", "lavimo.train", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--shards" in help_.stdout
    proc = subprocess.run([sys.executable, "-m", "lavimo.training.cli"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "python -m lavimo.train" in proc.stderr
    stale = subprocess.run([sys.executable, "-m", "lavimo.training.cli", "--help"], capture_output=True, text=True)
    assert stale.returncode == 0 and "--shards" in stale.stdout  # an install whose lavimo-train points here

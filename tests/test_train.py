"""train.py and its helpers (model/schedule.py, model/run_dir.py, model/training.py).

Unit tests for the parts that stand alone (schedule, run dir, training state, NaN guard, flags) plus the
end-to-end runs on a tiny synthetic shard set (marked slow): loss goes down, metrics.csv per epoch, exact resume,
ablation flags reaching the model and the saved config, clear errors for bad shards.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from model.run_dir import MetricsTable, RunDir, sha256_file
from model.schedule import lr_factor, paper_scheduler
from model.training import (
    NonFiniteGuard, RunningMeans, TrainingDiverged, load_training_state, param_groups, preserved_rng,
    resolve_precision, retrieval_scores, rng_state, save_training_state, set_rng_state,
)

import train as train_script


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
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f").startswith("ba7816bf")

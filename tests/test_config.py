"""The configuration split: the model (lavimo.model.config.LavimoConfig, saved in checkpoints) apart from the run's
settings (lavimo.training.config.TrainConfig); presets of both halves, overrides routed by field name, a run's
config.json read back, and checkpoints carrying the model only."""

from __future__ import annotations

import json

import pytest

from lavimo.model.config import LavimoConfig, list_presets, load_preset
from lavimo.training.config import PRESET_DIR as RUN_PRESET_DIR
from lavimo.training.config import RunConfig, TrainConfig, load_run_config, split_fields


def test_the_two_halves_share_no_field_and_every_preset_has_both():
    assert not LavimoConfig.field_names() & TrainConfig.field_names()
    assert set(list_presets()) == {p.stem for p in RUN_PRESET_DIR.glob("*.json")} >= {"paper", "demo", "tiny"}
    for name in list_presets():
        rc = load_run_config(name)
        assert rc.model == load_preset(name) and rc.name == name


def test_paper_run_settings():
    t = load_run_config("paper").train
    assert (t.batch_size, t.lr, t.lr_min, t.lr_decay_start_epoch, t.epochs) == (64, 1e-4, 1e-5, 100, 400)
    assert (t.hflip_p, t.randaugment_ops, t.randaugment_magnitude, t.amp) == (0.5, 2, 9, True)
    assert t.betas == (0.9, 0.999) and t.gather_negatives


def test_overrides_are_routed_and_converted():
    rc = load_run_config("tiny", lr="0.5", fusion="false", epoch_batches="none", betas="[0.8, 0.9]")
    assert rc.train.lr == 0.5 and rc.model.fusion is False and rc.train.epoch_batches is None
    assert rc.train.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="unknown config field.*no_such"):
        load_run_config("tiny", no_such=1)
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        load_run_config("tiny", batch_size=0)
    with pytest.raises(ValueError, match="LavimoConfig.threshold"):
        load_run_config("tiny", threshold=2)
    with pytest.raises(ValueError, match="unknown LavimoConfig field"):
        load_preset("tiny", lr=0.1)  # the model's loader knows only the model's fields
    assert split_fields({"lr": 1, "latent_dim": 2}) == ({"latent_dim": 2}, {"lr": 1})
    assert rc.replace(seed=3, dropout=0.2).flat() == {**rc.flat(), "seed": 3, "dropout": 0.2}


def test_run_config_json_and_flat_files_read_back(tmp_path):
    rc = load_run_config("demo", lr=3e-4)
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({**rc.to_dict(), "trainer": {"world_size": 2}}))
    assert load_run_config(saved) == rc
    assert load_preset(saved) == rc.model  # the model half alone (evaluation, search)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"_comment": "one object with fields of both", **rc.flat()}))
    assert load_run_config(flat) == rc
    flat.write_text(json.dumps({**rc.flat(), "bogus": 1}))
    with pytest.raises(ValueError, match="flat.json.*bogus"):
        load_run_config(flat)
    with pytest.raises(FileNotFoundError, match="bundled presets"):
        load_run_config("nope")


def test_checkpoints_carry_the_model_only(tmp_path):
    import torch

    from lavimo.model import build_model, read_checkpoint_metadata, save_checkpoint

    torch.manual_seed(0)
    cfg = load_preset("tiny")
    save_checkpoint(build_model(cfg), tmp_path / "m.safetensors")
    assert read_checkpoint_metadata(tmp_path / "m.safetensors")["config"] == cfg
    assert isinstance(load_run_config("tiny"), RunConfig) and TrainConfig().epochs == 400


def test_resumed_optimiser_takes_the_runs_current_settings():
    """A saved optimiser / scheduler state brings back the saved lr, weight decay and betas; apply_group_settings
    puts this run's back (base lrs, the lr of the current step), and changes nothing when they are the same."""
    import torch

    from lavimo.model import build_model
    from lavimo.training.loop import apply_group_settings, group_settings, make_optimizer
    from lavimo.training.schedule import lr_factor, paper_scheduler

    torch.manual_seed(0)
    rc = load_run_config("tiny", backbone_lr_scale=0.1)
    model = build_model(rc.model)

    def built(tc: TrainConfig):
        opt = make_optimizer(model, tc)
        return opt, paper_scheduler(opt, steps_per_epoch=4, epochs=tc.epochs, decay_start_epoch=tc.lr_decay_start_epoch,
                                    lr=tc.lr, lr_min=tc.lr_min)

    old_opt, old_sched = built(rc.train)
    for _ in range(5):
        old_opt.step()
        old_sched.step()
    saved = old_opt.state_dict(), old_sched.state_dict()
    same_lrs = [g["lr"] for g in old_opt.param_groups]

    new = rc.train.replace(lr=0.5, weight_decay=0.3, betas=(0.8, 0.9))
    opt, sched = built(new)
    current = group_settings(opt)
    opt.load_state_dict(saved[0])
    sched.load_state_dict(saved[1])
    assert opt.param_groups[0]["weight_decay"] in (0.0, 0.01)  # the saved value came back ...
    apply_group_settings(opt, sched, current)  # ... and is replaced
    factor = lr_factor(5, steps_per_epoch=4, epochs=new.epochs, decay_start_epoch=new.lr_decay_start_epoch,
                       lr=0.5, lr_min=new.lr_min)
    for g in opt.param_groups:
        scale = 0.1 if g["name"].startswith("backbone") else 1.0
        assert g["initial_lr"] == pytest.approx(0.5 * scale) and g["lr"] == pytest.approx(0.5 * scale * factor)
        assert g["weight_decay"] in (0.0, 0.3) and g["betas"] == (0.8, 0.9)
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]

    opt, sched = built(rc.train)  # unchanged settings: the very same numbers as the saved state
    current = group_settings(opt)
    opt.load_state_dict(saved[0])
    sched.load_state_dict(saved[1])
    apply_group_settings(opt, sched, current)
    assert [g["lr"] for g in opt.param_groups] == same_lrs


def test_configs_from_before_the_split_still_load(tmp_path):
    """Checkpoints and run directories written before the model / run split held both halves in one object."""
    import torch

    from lavimo.model import build_model, read_checkpoint_metadata, save_checkpoint
    from lavimo.model.config import PRE_SPLIT_RUN_FIELDS

    assert PRE_SPLIT_RUN_FIELDS <= TrainConfig.field_names()
    rc = load_run_config("tiny", lr=3e-4)
    # the run settings a pre-split file held (fields added since, e.g. global_batch_size, were never in one)
    old_run = {k: v for k, v in rc.train.to_dict().items() if k in PRE_SPLIT_RUN_FIELDS}
    old = {"model": {**rc.model.to_dict(), **old_run}, "train": {"device": "cpu", "world_size": 1,
                                                                 "steps_per_epoch": 8}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    assert load_run_config(path) == rc and load_preset(path) == rc.model
    torch.manual_seed(0)
    ckpt = tmp_path / "old.safetensors"
    save_checkpoint(build_model(rc.model), ckpt)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(ckpt), framework="pt") as fh:
        meta = dict(fh.metadata())
    conf = json.loads(meta["lavimo_config"])
    meta["lavimo_config"] = json.dumps({**conf, **old_run})  # as a pre-split checkpoint held it
    save_file(load_file(str(ckpt)), str(ckpt), metadata=meta)
    assert read_checkpoint_metadata(ckpt)["config"] == rc.model

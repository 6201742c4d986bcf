"""The configuration split: the model (model.config.LavimoConfig, saved in checkpoints) apart from the run's
settings (training.config.TrainConfig); presets of both halves, overrides routed by field name, a run's
config.json read back, and checkpoints carrying the model only."""

from __future__ import annotations

import json

import pytest

from model.config import LavimoConfig, list_presets, load_preset
from training.config import RunConfig, TrainConfig, list_presets as run_presets, load_run_config, split_fields


def test_the_two_halves_share_no_field_and_every_preset_has_both():
    assert not LavimoConfig.field_names() & TrainConfig.field_names()
    assert set(list_presets()) == set(run_presets()) >= {"paper", "demo", "tiny"}
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

    from model import build_model, read_checkpoint_metadata, save_checkpoint

    torch.manual_seed(0)
    cfg = load_preset("tiny")
    save_checkpoint(build_model(cfg), tmp_path / "m.safetensors")
    assert read_checkpoint_metadata(tmp_path / "m.safetensors")["config"] == cfg
    assert isinstance(load_run_config("tiny"), RunConfig) and TrainConfig().epochs == 400

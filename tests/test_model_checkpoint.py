"""Checkpoint round trip: safetensors weights + config (+ text config and tokenizer) in the metadata."""

from __future__ import annotations

import json

import pytest
import torch

from lavimo.core.errors import BadInputError
from lavimo.model import build_model, load_checkpoint, load_preset, read_checkpoint_metadata, save_checkpoint


def _inputs(cfg):
    g = torch.Generator().manual_seed(3)
    texts = ["a person walks in a circle", "someone kicks with the left leg"]
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    motion = torch.randn(2, 12, cfg.feature_dim, generator=g)
    mask = torch.arange(12)[None] < torch.tensor([[12], [7]])
    return texts, video, motion, mask


@pytest.mark.parametrize("over", [{}, {"modalities": "tm", "freeze_text": True, "recon_weight": 0.0}],
                         ids=["tmv", "tm-frozen-norecon"])
def test_round_trip_gives_identical_encodings(tmp_path, over):
    torch.manual_seed(0)
    cfg = load_preset("tiny", **over)
    model = build_model(cfg)
    # perturb every weight so nothing could come from a fresh init by accident
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = tmp_path / "ckpt" / "epoch_0001.safetensors"
    save_checkpoint(model, path, extra={"epoch": 1, "metrics": {"R@1": 12.5}})
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))

    meta = read_checkpoint_metadata(path)
    assert meta["config"] == cfg and meta["extra"] == {"epoch": 1, "metrics": {"R@1": 12.5}}
    assert "config.json" in meta["text_assets"] and "tokenizer.json" in meta["text_assets"]

    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.cfg == cfg and loaded.checkpoint_extra["epoch"] == 1
    texts, video, motion, mask = _inputs(cfg)
    with torch.inference_mode():
        assert torch.equal(model.encode_text(texts), loaded.encode_text(texts))
        assert torch.equal(model.encode_motion(motion, mask), loaded.encode_motion(motion, mask))
        if cfg.modalities == "tmv":
            assert torch.equal(model.encode_video(video), loaded.encode_video(video))
    assert loaded.text.frozen == cfg.freeze_text
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_bad_checkpoints(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(BadInputError, match="not a LAVIMO checkpoint"):
        load_checkpoint(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(BadInputError):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.safetensors")
    # a checkpoint whose config does not match its weights
    cfg = load_preset("tiny")
    good = tmp_path / "good.safetensors"
    save_checkpoint(build_model(cfg), good)
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(good), framework="pt") as fh:
        meta = fh.metadata()
    conf = json.loads(meta["lavimo_config"])
    conf["latent_dim"] = 64
    meta["lavimo_config"] = json.dumps(conf)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    with pytest.raises(BadInputError, match="weights"):
        load_checkpoint(bad)


# ---------------------------------------------------------------------------------------------------------
# checkpoints are third-party input: malformed metadata is refused with the file and field, nothing runs


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    save_checkpoint(build_model(load_preset("tiny")), path, extra={"step": 3})
    return path


def _with_metadata(src, dst, **changes):
    """Copy checkpoint ``src`` to ``dst`` with metadata fields replaced (None removes one)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v if isinstance(v, str) else json.dumps(v)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


BAD_META = [
    ("lavimo_config", "{not json", "not valid JSON"),
    ("lavimo_config", [1, 2], "expected a JSON object"),
    ("lavimo_config", "[" * 100000 + "]" * 100000, "lavimo_config"),
    ("lavimo_config", {"latent_dim": 32, "no_such_field": 1}, "unknown LavimoConfig field"),
    ("lavimo_config", {"latent_dim": [32]}, "bad checkpoint config"),
    ("lavimo_config", {"latent_dim": "many"}, "bad checkpoint config"),
    ("lavimo_config", {"latent_dim": 30, "num_heads": 4}, "divisible"),
    ("lavimo_extra", "[1]", "expected a JSON object"),
    ("lavimo_extra", "{", "not valid JSON"),
    ("lavimo_text_assets", "nope", "not valid JSON"),
    ("lavimo_text_assets", {}, "no config.json"),
    ("lavimo_text_assets", None, "missing"),
]


@pytest.mark.parametrize("field,value,message", BAD_META, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_META)])
def test_malformed_metadata_is_refused(good_checkpoint, tmp_path, field, value, message):
    bad = _with_metadata(good_checkpoint, tmp_path / "bad.safetensors", **{field: value})
    for call in (read_checkpoint_metadata, load_checkpoint):
        with pytest.raises(BadInputError, match=message) as err:
            call(bad)
        assert err.value.path == str(bad) and err.value.field.startswith(field)


def test_text_assets_cannot_run_code_or_escape(good_checkpoint, tmp_path, monkeypatch):
    from safetensors import safe_open

    with safe_open(str(good_checkpoint), framework="pt") as fh:
        assets = json.loads(fh.metadata()["lavimo_text_assets"])
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('x')\n"
    conf = json.loads(assets["config.json"])
    attempts = {
        # transformers would import evil.py (trust_remote_code) when config.json names it in auto_map
        "auto_map": {**assets, "config.json": json.dumps({**conf, "auto_map": {"AutoConfig": "evil.Evil",
                                                                               "AutoModel": "evil.Evil"}}),
                     "evil.py": code},
        "python file": {**assets, "evil.py": code},
        "traversal": {**assets, "../../escaped.json": "{}"},
        "hidden": {**assets, ".evil.json": "{}"},
        "tokenizer auto_map": {**assets, "tokenizer_config.json": json.dumps({"auto_map": {
            "AutoTokenizer": ["evil.Evil", None]}})},
        "no model_type": {**assets, "config.json": json.dumps({"hidden_size": 8})},
        "not text": {**assets, "vocab.txt": 7},
    }
    monkeypatch.chdir(tmp_path)
    for name, value in attempts.items():
        bad = _with_metadata(good_checkpoint, tmp_path / "bad.safetensors", lavimo_text_assets=value)
        with pytest.raises(BadInputError) as err:
            load_checkpoint(bad)
        assert err.value.path == str(bad) and err.value.field == "lavimo_text_assets", name
        assert not marker.exists(), name
        assert not (tmp_path.parent / "escaped.json").exists() and not list(tmp_path.rglob("escaped.json")), name


def test_load_checkpoint_never_unpickles(good_checkpoint, monkeypatch):
    def no_torch_load(*a, **kw):
        raise AssertionError("torch.load called on a checkpoint")

    monkeypatch.setattr(torch, "load", no_torch_load)
    model = load_checkpoint(good_checkpoint)
    assert model.checkpoint_extra == {"step": 3}


def test_damaged_tensor_data_is_refused(good_checkpoint, tmp_path):
    data = good_checkpoint.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])  # header intact, tensor bytes short
    with pytest.raises(BadInputError) as err:
        load_checkpoint(cut)
    assert err.value.path == str(cut)

"""Pretrained-weight loading from files the test writes itself (tiny random checkpoints): OpenAI-format CLIP
state dicts (plain, fp16; TorchScript archives and pickles refused without running them), open_clip training checkpoints, Kinetics-style wrappers, a Hugging Face
DistilBERT directory; and clear errors when weights are missing."""

from __future__ import annotations

import pytest
import torch

from lavimo.core.errors import BadInputError
from lavimo.model import MissingWeightsError, build_model, load_preset
from lavimo.model.weights import extract_visual_state_dict, resolve_text_model

VISION = {"embed_dim": 32, "image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16,
          "mlp_ratio": 2.0}


def tiny_openai_clip(image_size: int = 32):
    """A tiny open_clip CLIP; its state dict uses OpenAI's key layout (visual.*, transformer.*, ...)."""
    from open_clip.model import CLIP

    torch.manual_seed(123)
    vision = dict(VISION, image_size=image_size)
    vision.pop("embed_dim")
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    return CLIP(32, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def cfg_with_weights(path, **over):
    return load_preset("tiny", random_init=False, video_weights=str(path), video_backbone_config=VISION,
                       video_quick_gelu=True, **over)


def assert_visual_equal(model, reference_visual):
    ref = reference_visual.state_dict()
    got = model.video.visual.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert torch.allclose(got[k], ref[k].float(), atol=1e-3 if ref[k].dtype == torch.float16 else 0), k


def test_openai_state_dict_loads(tmp_path):
    clip = tiny_openai_clip()
    sd = clip.state_dict()
    assert "visual.conv1.weight" in sd and "text_projection" in sd  # OpenAI layout
    path = tmp_path / "ViT-tiny.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, path)  # OpenAI ships fp16
    model = build_model(cfg_with_weights(path))
    assert_visual_equal(model, clip.visual.half())
    assert model.video.visual.conv1.weight.dtype == torch.float32


class _MarkerOnUnpickle:
    """A pickled object whose loading creates ``marker`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_archive_is_refused_without_loading_it(tmp_path, monkeypatch):
    # OpenAI's ViT-B-32.pt is a traced CLIP: a zip with a code/ folder that torch.jit.load would compile and run
    clip = tiny_openai_clip().eval()
    for kind, archive in (("traced", torch.jit.trace(_Holder(clip.visual), torch.zeros(1, 3, 32, 32),
                                                     check_trace=False)),
                          ("scripted", torch.jit.script(_Scripted()))):
        path = tmp_path / f"ViT-tiny-{kind}.pt"
        torch.jit.save(archive, str(path))

        def no_jit(*a, **kw):
            raise AssertionError("torch.jit.load called on a weights file")

        monkeypatch.setattr(torch.jit, "load", no_jit)
        with pytest.raises(BadInputError) as err:
            build_model(cfg_with_weights(path))
        assert err.value.path == str(path)
        msg = str(err.value)
        assert "TorchScript" in msg and ".safetensors" in msg and "\n" not in msg, msg
        monkeypatch.undo()


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x + self.w


def test_pickled_weights_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    clip = tiny_openai_clip()
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": clip.state_dict(), "hook": _MarkerOnUnpickle(marker)}, path)
    with pytest.raises(BadInputError) as err:
        build_model(cfg_with_weights(path))
    assert err.value.path == str(path) and "weights-only" in str(err.value)
    assert not marker.exists()


def test_trust_weights_pickle_is_gone(tmp_path, caplog):
    from lavimo.model.config import LavimoConfig

    assert "trust_weights_pickle" not in LavimoConfig.field_names()
    # saved configs that hold it still load: false silently, true with a warning that it is ignored
    caplog.clear()
    base = load_preset("tiny").to_dict()
    assert LavimoConfig.from_saved({**base, "trust_weights_pickle": False}) == load_preset("tiny")
    assert "trust_weights_pickle" not in caplog.text
    assert LavimoConfig.from_saved({**base, "trust_weights_pickle": True}) == load_preset("tiny")
    assert "trust_weights_pickle=True is ignored" in caplog.text
    preset = tmp_path / "old.json"
    preset.write_text(__import__("json").dumps({**base, "trust_weights_pickle": True}))
    assert load_preset(str(preset)) == load_preset("tiny")
    # an override (the command line, the API) cannot name it
    with pytest.raises(ValueError, match="unknown LavimoConfig field"):
        load_preset("tiny", trust_weights_pickle=True)
    with pytest.raises(ValueError, match="unknown LavimoConfig field"):
        load_preset("tiny").replace(trust_weights_pickle=True)


class _Holder(torch.nn.Module):
    def __init__(self, visual):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        return self.visual(x)


def test_open_clip_and_kinetics_wrapped_checkpoints(tmp_path):
    clip = tiny_openai_clip()
    sd = clip.state_dict()
    oc = tmp_path / "open_clip_epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, oc)
    assert_visual_equal(build_model(cfg_with_weights(oc)), clip.visual)
    k400 = tmp_path / "k400_finetune.safetensors"
    from safetensors.torch import save_file

    wrapped = {f"image_encoder.{k[len('visual.'):]}": v.contiguous() for k, v in sd.items() if k.startswith("visual.")}
    wrapped["prompt_learner.ctx"] = torch.zeros(4, 32)
    save_file(wrapped, str(k400))
    assert_visual_equal(build_model(cfg_with_weights(k400)), clip.visual)
    nested = {"model": {f"module.model.visual.{k[7:]}": v for k, v in sd.items() if k.startswith("visual.")}}
    assert set(extract_visual_state_dict(nested)) == set(clip.visual.state_dict())


def test_position_embeddings_are_resized(tmp_path):
    clip = tiny_openai_clip(image_size=32)  # 2x2 grid
    path = tmp_path / "clip32.pt"
    torch.save(clip.state_dict(), path)
    model = build_model(cfg_with_weights(path, image_size=48))  # 3x3 grid
    assert model.video.visual.positional_embedding.shape == (10, 32)
    assert torch.equal(model.video.visual.conv1.weight, clip.visual.conv1.weight)
    out = model.encode_video(torch.randn(1, 8, 3, 48, 48))
    assert out.shape == (1, 32)


def test_architecture_mismatch_and_missing_weights(tmp_path):
    clip = tiny_openai_clip()
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    wider = dict(VISION, width=64)
    with pytest.raises(ValueError, match="does not match"):
        build_model(load_preset("tiny", random_init=False, video_weights=str(path), video_backbone_config=wider))
    with pytest.raises(MissingWeightsError, match="Kinetics-400"):
        build_model(load_preset("tiny", random_init=False, video_weights=str(tmp_path / "absent.pt")))
    # random_init ignores the missing file
    assert build_model(load_preset("tiny", random_init=True, video_weights=str(tmp_path / "absent.pt")))


def test_distilbert_directory_loads(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from lavimo.dataset.text_embed import bundled_model_path

    torch.manual_seed(7)
    conf = DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                            max_position_embeddings=64)
    ref = DistilBertModel(conf).eval()
    folder = tmp_path / "weights" / "distilbert-base-uncased"
    ref.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(bundled_model_path())).save_pretrained(folder)  # same uncased WordPiece vocab

    monkeypatch.setenv("LAVIMO_WEIGHTS", str(tmp_path / "weights"))
    assert resolve_text_model("distilbert-base-uncased") == folder
    cfg = load_preset("tiny", text_model="distilbert-base-uncased", text_backbone_config=None, random_init=False)
    model = build_model(cfg)
    bb = model.text.backbone
    assert type(bb).__name__ == "DistilBertModel" and not cfg.freeze_text
    for k, v in ref.state_dict().items():
        assert torch.equal(bb.state_dict()[k], v), k
    model.train()
    batch_texts = ["a person walks", "a person runs in a circle"]
    out = model.encode_text(batch_texts)
    out.sum().backward()
    assert bb.transformer.layer[0].attention.q_lin.weight.grad is not None  # fine-tuned (unfrozen) by default

    # the same directory passed by path; random_init keeps the architecture but not the weights
    model2 = build_model(load_preset("tiny", text_model=str(folder), text_backbone_config=None, random_init=True))
    w2 = model2.text.backbone.embeddings.word_embeddings.weight
    assert w2.shape == ref.embeddings.word_embeddings.weight.shape
    assert not torch.equal(w2, ref.embeddings.word_embeddings.weight)


def test_missing_text_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVIMO_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="random_init"):
        build_model(load_preset("tiny", text_model="no-such-model-anywhere", text_backbone_config=None,
                                random_init=False))


@pytest.mark.slow
def test_demo_preset_loads_the_bundled_minilm():
    from safetensors.torch import load_file

    from lavimo.dataset.text_embed import bundled_model_path

    model = build_model(load_preset("demo"))
    ref = load_file(str(bundled_model_path() / "model.safetensors"))
    key = next(k for k in ref if k.endswith("embeddings.word_embeddings.weight"))
    got = model.text.backbone.embeddings.word_embeddings.weight
    assert torch.equal(got, ref[key].to(got.dtype))
    assert model.video.visual.conv1.weight.shape == (128, 3, 16, 16)
    with torch.inference_mode():
        out = model.eval().encode_video(torch.zeros(2, 8, 3, 64, 64))
    assert out.shape == (2, 256)


def test_missing_pretrained_lists_every_missing_piece(tmp_path, monkeypatch):
    from lavimo.model.weights import missing_pretrained

    monkeypatch.setenv("LAVIMO_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    cfg = load_preset("paper")
    lines = missing_pretrained(cfg)
    assert len(lines) == 2
    assert "distilbert-base-uncased" in lines[0] and str(tmp_path / "distilbert-base-uncased") in lines[0]
    assert "Kinetics-400" in lines[1] and str(tmp_path / "clip" / "ViT-B-32-kinetics400.pt") in lines[1]
    assert missing_pretrained(cfg.replace(random_init=True)) == []
    assert missing_pretrained(load_preset("tiny")) == []


@pytest.mark.parametrize("version, refused", [("2.5.1+cu124", True), ("2.3.0", True), ("2.6.0", False),
                                              ("2.14.1+cu130", False)])
def test_pickled_torch_files_need_a_torch_whose_weights_only_loader_is_safe(tmp_path, monkeypatch, version, refused):
    """torch <= 2.5.1's weights-only loader can be made to run code (CVE-2025-32434): the one reader of pickled
    torch files (pretrained weights that come only as .pt / .bin) refuses before torch.load is called on such a
    torch. The training state is never a pickle: its reader refuses the same file without calling torch.load."""
    from lavimo.core.errors import BadInputError
    from lavimo.model.weights import _load_any
    from lavimo.training.loop import load_training_state

    pt = tmp_path / "w.pt"
    torch.save({"conv1.weight": torch.zeros(2)}, pt)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    if refused:
        with pytest.raises(BadInputError, match="CVE-2025-32434") as exc:
            _load_any(pt)
        assert str(pt) in str(exc.value)
    else:
        assert torch.equal(_load_any(pt)["conv1.weight"], torch.zeros(2))
    with pytest.raises(BadInputError) as exc:
        load_training_state(pt)
    assert str(pt) in str(exc.value) and "CVE" not in str(exc.value)
    assert calls == ([] if refused else [dict(map_location="cpu", weights_only=True, mmap=True)])

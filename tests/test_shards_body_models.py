"""build-shards --body-models DIR: motion features computed from AMASS pose the real SMPL-H body of DIR, gendered
per AMASS file; the manifests record sources.body_models; a bad directory, a missing model file for a gender the
clips need or a malformed model file is one line, exit 2; --humanml3d-vecs still reads the vectors as they are.

Every test writes its own inputs: AMASS files (one male, one female), TMR-style annotations, tiny videos with
render-amass sidecars and SMPL-H model files built from the procedural body but scaled (so the real body's
features differ from the procedural body's).
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.fixtures.shard_fixtures import FakeEmbedder, write_clip_video  # noqa: E402

from lavimo.dataset.annotations import load_clips  # noqa: E402
from lavimo.dataset.features import clip_features  # noqa: E402
from lavimo.dataset.shards.format import read_manifests  # noqa: E402
from lavimo.dataset.shards.cli import BODY_MODELS_UNUSED, amass_features_fn  # noqa: E402
from lavimo.dataset.shards.cli import main as cli_main  # noqa: E402
from lavimo.body.model import load_body  # noqa: E402
from tests.test_smpl_pickle import _smpl_dict  # noqa: E402

#: keyid -> (AMASS file, gender, split)
CLIPS = {"000000": ("S1/walk_male_poses", "male", "train"), "000001": ("S2/wave_female_poses", "female", "train"),
         "000002": ("S2/wave_female_poses", "female", "val")}
FPS = 60.0
SCALE = {"male": 1.3, "female": 0.8}  # the crafted models' size relative to the procedural body


def write_amass(path: Path, gender: str, seed: int, frames: int = 90) -> None:
    """A smooth (T, 156) SMPL-H motion at 60 fps, walking forward along +Y (AMASS's Z-up world)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / FPS
    poses = np.zeros((frames, 156))
    poses[:, 0] = np.pi / 2  # SMPL's Y-up rest frame turned to Z-up
    amp = rng.uniform(0.2, 0.5, 63)
    poses[:, 3:66] = amp * np.sin(2 * np.pi * 1.2 * t[:, None] + rng.uniform(0, np.pi, 63)) * 0.5
    trans = np.stack([0.05 * np.sin(t), 1.1 * t, 0.9 + 0.02 * np.sin(4 * t)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, poses=poses, trans=trans, betas=np.zeros(16), gender=np.array(gender),
             mocap_framerate=np.array(FPS), dmpls=np.zeros((frames, 8)))


def write_model(path: Path, scale: float) -> Path:
    """A valid SMPL-H model file (52 joints) whose body is the procedural one scaled by ``scale``."""
    model = _smpl_dict(52)
    model["J_regressor"] = model["J_regressor"].toarray()
    model["v_template"] = model["v_template"] * scale
    model["J"] = model["J"] * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **model)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("body-models")
    amass = root / "amass"
    for seed, (keyid, (rel, gender, _)) in enumerate(CLIPS.items()):
        if not (amass / f"{rel}.npz").exists():
            write_amass(amass / f"{rel}.npz", gender, seed)
    ann = root / "ann"
    (ann / "splits").mkdir(parents=True)
    entries = {k: {"path": rel, "duration": 1.0, "annotations": [
        {"seg_id": f"{k}_0", "text": f"a person moves, clip {k}", "start": 0.1 * i, "end": 0.1 * i + 0.8}]}
        for i, (k, (rel, _, _)) in enumerate(CLIPS.items())}
    (ann / "annotations.json").write_text(json.dumps(entries))
    for split in ("train", "val", "test"):
        (ann / "splits" / f"{split}.txt").write_text("".join(f"{k}\n" for k, v in CLIPS.items() if v[2] == split))
    clips = load_clips(ann / "annotations.json", amass)
    assert len(clips) == len(CLIPS)
    videos = root / "videos"
    videos.mkdir()
    for c in clips:
        write_clip_video(videos, c, 16)
    models = root / "models"
    for gender, scale in SCALE.items():
        write_model(models / "smplh" / f"SMPLH_{gender.upper()}.npz", scale)
    return SimpleNamespace(root=root, amass=amass, ann=ann / "annotations.json", videos=videos, models=models,
                           clips={c.keyid: c for c in clips})


@pytest.fixture(autouse=True)
def fake_text_model(monkeypatch):
    import lavimo.dataset.text_embed
    monkeypatch.setattr(lavimo.dataset.text_embed, "SentenceEmbedder", lambda *a, **k: FakeEmbedder())


def _args(inputs, out: Path, *extra) -> list[str]:
    return ["--annotations", str(inputs.ann), "--amass", str(inputs.amass), "--videos", str(inputs.videos),
            "--out", str(out), "--splits", "train,val", "--samples-per-shard", "2", "--quiet", *map(str, extra)]


def _motions(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".motion.npy"):
                    found[m.name.split(".")[0]] = np.load(io.BytesIO(tf.extractfile(m).read()), allow_pickle=False)
    return found


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_real_body_features_are_recorded_gendered_and_differ_from_procedural(inputs, tmp_path, capsys):
    out = tmp_path / "shards"
    assert cli_main(_args(inputs, out, "--body-models", inputs.models, "--workers", 2)) == 0, capsys.readouterr()
    manifests = read_manifests(out)
    assert set(manifests) == {"train", "val"}
    assert all(m["sources"]["body_models"] == str(inputs.models) for m in manifests.values())
    motions = _motions(out)
    assert sorted(motions) == sorted(CLIPS)
    female = load_body(inputs.models, "smplh", "female")
    for keyid, got in motions.items():
        clip = inputs.clips[keyid]
        real = clip_features(clip, inputs.amass, body=inputs.models)
        np.testing.assert_allclose(got, real, atol=1e-5, rtol=0)    # the workers computed what clip_features does
        procedural = clip_features(clip, inputs.amass)
        assert got.shape == procedural.shape
        assert np.abs(got - procedural).max() > 1e-2, keyid       # not the procedural body's features
        if CLIPS[keyid][1] == "male":                               # gendered per AMASS file
            assert np.abs(got - clip_features(clip, inputs.amass, body=female)).max() > 1e-2


def test_features_fn_pickles_for_the_workers(inputs):
    fn = amass_features_fn(inputs.amass, inputs.models)
    again = pickle.loads(pickle.dumps(fn))
    clip = inputs.clips["000001"]
    np.testing.assert_array_equal(again(clip), clip_features(clip, inputs.amass, body=inputs.models))


def test_procedural_by_default_and_no_mixing_bodies_in_one_set(inputs, tmp_path, capsys):
    out = tmp_path / "shards"
    assert cli_main(_args(inputs, out, "--workers", 1)) == 0
    assert {m["sources"]["body_models"] for m in read_manifests(out).values()} == {"procedural"}
    procedural = _motions(out)
    np.testing.assert_allclose(procedural["000000"], clip_features(inputs.clips["000000"], inputs.amass), atol=1e-5)
    capsys.readouterr()
    # the kept shards hold the procedural body's features: another body needs --overwrite (or another --out)
    assert cli_main(_args(inputs, out, "--body-models", inputs.models, "--workers", 1)) == 2
    line = _one_error_line(capsys)
    assert "body_models=procedural" in line and str(inputs.models) in line and "--overwrite" in line
    assert _motions(out).keys() == procedural.keys()                 # nothing was rewritten
    assert cli_main(_args(inputs, out, "--body-models", inputs.models, "--workers", 1, "--overwrite")) == 0
    assert {m["sources"]["body_models"] for m in read_manifests(out).values()} == {str(inputs.models)}
    assert np.abs(_motions(out)["000000"] - procedural["000000"]).max() > 1e-2
    # the same directory spelled otherwise is the same body: a no-op rerun, exit 0
    rel = Path(str(inputs.models) + "/smplh/..")
    assert cli_main(_args(inputs, out, "--body-models", rel, "--workers", 1)) == 0


@pytest.mark.parametrize("case", ["missing", "file"])
def test_body_models_not_a_directory_exits_2(inputs, tmp_path, capsys, case):
    bad = tmp_path / "nope"
    if case == "file":
        bad.write_text("not a directory")
    assert cli_main(_args(inputs, tmp_path / "out", "--body-models", bad)) == 2
    line = _one_error_line(capsys)
    assert f"--body-models {bad}: not a directory" in line and "procedural" in line
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("present, expected", [("FEMALE", "SMPLH_MALE"), ("MALE", "SMPLH_FEMALE")])
def test_missing_model_file_for_a_needed_gender_exits_2_naming_it(inputs, tmp_path, capsys, present, expected):
    models = tmp_path / "models"
    write_model(models / "smplh" / f"SMPLH_{present}.npz", 1.1)
    out = tmp_path / "out"
    assert cli_main(_args(inputs, out, "--body-models", models)) == 2
    line = _one_error_line(capsys)
    assert line.startswith("build-shards: error: --body-models:") and f"smplh/{expected}.npz" in line, line
    assert not list(out.glob("*.tar")) and not read_manifests(out)  # nothing built


def test_only_the_genders_the_clips_need_are_required(inputs, tmp_path, capsys):
    models = tmp_path / "models"
    write_model(models / "smplh" / "SMPLH_FEMALE.npz", 1.1)   # the val clip's file is female
    args = _args(inputs, tmp_path / "out", "--body-models", models)
    args[args.index("--splits") + 1] = "val"
    assert cli_main(args) == 0, capsys.readouterr()


def test_malformed_model_file_exits_2_naming_it(inputs, tmp_path, capsys):
    models = tmp_path / "models"
    write_model(models / "smplh" / "SMPLH_FEMALE.npz", 1.1)
    bad = models / "smplh" / "SMPLH_MALE.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert cli_main(_args(inputs, tmp_path / "out", "--body-models", models)) == 2
    line = _one_error_line(capsys)
    assert str(bad) in line and line.startswith("build-shards: error: --body-models:"), line


def test_humanml3d_vecs_are_used_as_before(inputs, tmp_path, capsys):
    vecs = tmp_path / "vecs"
    vecs.mkdir()
    for keyid, clip in inputs.clips.items():
        np.save(vecs / f"{keyid}.npy", np.full((clip.num_frames - 1, 263), int(keyid) + 0.5, np.float32))
    out = tmp_path / "out"
    args = _args(inputs, out, "--humanml3d-vecs", vecs, "--body-models", inputs.models, "--workers", 1)
    assert cli_main(args) == 0, capsys.readouterr()
    m = read_manifests(out)["train"]
    assert m["sources"]["body_models"] == BODY_MODELS_UNUSED and m["sources"]["humanml3d_vecs"] == str(vecs)
    motions = _motions(out)
    assert set(motions) == set(CLIPS), sorted(motions)   # --splits train,val: every clip
    for keyid, got in motions.items():
        np.testing.assert_array_equal(got, np.load(vecs / f"{keyid}.npy"))


def test_help_says_what_body_models_does(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--body-models DIR" in text and "SMPLH_MALE.npz" in text and "procedural body" in text
    assert "Not used with --humanml3d-vecs" in text

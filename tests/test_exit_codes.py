"""One exit-code rule for every command: 0 all done; 1 some items failed (after finishing the rest) or the run was
stopped (interrupt, training that cannot progress); 2 usage or set-up error, printed as one line (no traceback).

Per command, one parametrised test over the codes it can give, each case on small crafted inputs and an in-process
``main()`` call: synth-amass, render-amass, build-shards, build-shards check, ``python train.py`` and
``python evaluate.py``.
"""

from __future__ import annotations

import errno
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch._dynamo  # noqa: F401  # loads triton's LLVM now: loaded after mesa's (EGL rendering), it segfaults

from tests.fixtures.shard_fixtures import FakeEmbedder, fake_features, make_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_check_writable_dir_creates_and_leaves_nothing(tmp_path):
    from lavimo.core.atomic import check_writable_dir

    out = check_writable_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []  # the probe is an unnamed file: nothing to clean up
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        check_writable_dir(tmp_path / "file" / "sub")


def _stderr_line(capsys) -> str:
    """The one line a usage or set-up error prints on stderr (argparse's own errors add a usage block first)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO ", "WARNING "))]
    lines = [line for line in lines if "error" in line or "interrupted" in line]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------------- synth-amass
SYNTH = ["--motions", "4", "--subjects", "2", "--nsim-size", "0"]


@pytest.mark.parametrize("code, case", [
    (0, "done"), (1, "interrupted"),
    (2, "motions 0"), (2, "subjects 0"), (2, "nsim-size -1"), (2, "fractions"), (2, "unknown action"),
    (2, "not an int"), (2, "out is a file"), (2, "out under a file"), (2, "disk full"),
])
def test_synth_amass(code, case, tmp_path, capsys, monkeypatch):
    import lavimo.dataset.synth.corpus as synth

    out = tmp_path / "corpus"
    args = ["--out", str(out), *SYNTH]
    expect = {"motions 0": "--motions", "subjects 0": "--subjects", "nsim-size -1": "--nsim-size",
              "fractions": "--test-fraction", "unknown action": "moonwalk", "not an int": "--motions",
              "out is a file": str(out), "out under a file": str(out), "disk full": "o space left on device",
              "interrupted": "interrupted"}.get(case)
    if case == "motions 0":
        args += ["--motions", "0"]
    elif case == "subjects 0":
        args += ["--subjects", "0"]
    elif case == "nsim-size -1":
        args += ["--nsim-size", "-1"]
    elif case == "fractions":
        args += ["--test-fraction", "0.6", "--val-fraction", "0.5"]
    elif case == "unknown action":
        args += ["--actions", "walk,moonwalk"]
    elif case == "not an int":
        args += ["--motions", "four"]
    elif case == "out is a file":
        out.write_text("a file")
    elif case == "out under a file":
        out.write_text("a file")
        args[1] = str(out / "sub")
    elif case in ("disk full", "interrupted"):
        real, calls = synth.write_npz, []

        def write_npz(path, arrays):
            calls.append(path)
            if len(calls) == 2:
                if case == "interrupted":
                    raise KeyboardInterrupt
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real(path, arrays)

        monkeypatch.setattr(synth, "write_npz", write_npz)
    if case == "not an int":
        with pytest.raises(SystemExit) as e:
            synth.main(args)
        rc = e.value.code
    else:
        rc = synth.main(args)
    assert rc == code
    if code == 0:
        assert len(list((out / "amass").rglob("*.npz"))) == 4 and (out / "synth.json").is_file()
        return
    line = _stderr_line(capsys)
    assert expect in line, line
    if case not in ("disk full", "interrupted"):  # refused before anything was written
        assert not (out / "amass").exists() and not (out / "sub").exists()


# ------------------------------------------------------------------------------------------------ render-amass
def _render_inputs(root: Path, bad: bool = False) -> tuple[Path, Path]:
    """A 0.2 s AMASS clip (and with ``bad`` a second clip whose file is not an npz) + TMR annotations."""
    t = np.arange(12) / 60.0
    poses = np.zeros((12, 156))
    poses[:, 0] = np.pi / 2
    amass = root / "amass"
    (amass / "S").mkdir(parents=True)
    np.savez(amass / "S" / "a_poses.npz", poses=poses, trans=np.stack([0.4 * t, 0 * t, 0.95 + 0 * t], 1),
             betas=np.zeros(16), gender=np.array("neutral"), mocap_framerate=np.array(60.0), dmpls=np.zeros((12, 8)))
    ann = {"00000": {"path": "S/a_poses", "duration": 0.2,
                     "annotations": [{"seg_id": "a", "text": "a person stands", "start": 0.0, "end": 0.2}]}}
    if bad:
        (amass / "S" / "b_poses.npz").write_bytes(b"PK\x03\x04 truncated")
        ann["00001"] = {"path": "S/b_poses", "duration": 0.2,
                        "annotations": [{"seg_id": "b", "text": "a person sits", "start": 0.0, "end": 0.2}]}
    (root / "annotations.json").write_text(json.dumps(ann))
    return amass, root / "annotations.json"


@pytest.mark.parametrize("code, case", [
    (0, "done"), (1, "one clip failed"),
    (2, "amass not a dir"), (2, "odd size"), (2, "bad part"), (2, "body-models not a dir"),
    (2, "body model missing"), (2, "out under a file"), (2, "unknown flag"),
])
def test_render_amass(code, case, tmp_path, capsys):
    from lavimo.render.cli import main

    amass, ann = _render_inputs(tmp_path, bad=case == "one clip failed")
    out = tmp_path / "videos"
    args = ["--amass", str(amass), "--annotations", str(ann), "--out", str(out), "--size", "32", "--workers", "1"]
    expect = {"amass not a dir": "--amass", "odd size": "--size", "bad part": "--part",
              "body-models not a dir": "--body-models", "body model missing": "smplh/SMPLH_",
              "out under a file": "not writable", "unknown flag": "--colour"}.get(case)
    if case == "amass not a dir":
        args[1] = str(tmp_path / "nope")
    elif case == "odd size":
        args[args.index("--size") + 1] = "33"
    elif case == "bad part":
        args += ["--part", "3/2"]
    elif case == "body-models not a dir":
        args += ["--body-models", str(tmp_path / "nope")]
    elif case == "body model missing":
        (tmp_path / "models" / "smplh").mkdir(parents=True)
        args += ["--body-models", str(tmp_path / "models")]
    elif case == "out under a file":
        out.write_text("a file")
        args[args.index("--out") + 1] = str(out / "sub")
    elif case == "unknown flag":
        args += ["--colour", "red"]
    if case == "unknown flag":
        with pytest.raises(SystemExit) as e:
            main(args)
        rc = e.value.code
    else:
        rc = main(args)
    assert rc == code
    if code == 0:
        assert (out / "00000.mp4").is_file() and (out / "00000.json").is_file()
    elif code == 1:  # the other clip was rendered; the failure is reported
        report = json.loads((out / "render-report.json").read_text())
        assert report["rendered"] == 1 and set(report["failed"]) == {"00001"}
    else:
        assert expect in _stderr_line(capsys)


# ------------------------------------------------------------------------------------- build-shards (and check)
COUNTS = {"train": 3, "val": 2}


@pytest.fixture(scope="module")
def shard_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit-codes-corpus")
    clips, videos = make_corpus(root, COUNTS, size=16, frames=(6, 9))
    return clips, videos


@pytest.fixture
def shards_cli(shard_corpus, tmp_path, monkeypatch):
    """build-shards' main with the corpus' clips, fake features and a fake text model; returns (main, args)."""
    import shutil

    import lavimo.dataset.annotations

    import lavimo.dataset.shards.build
    import lavimo.dataset.text_embed
    from lavimo.dataset.shards.cli import main

    clips, videos = shard_corpus
    vids = tmp_path / "videos"
    shutil.copytree(videos, vids)
    (tmp_path / "amass").mkdir()
    ann = tmp_path / "annotations.json"
    ann.write_text("{}")
    monkeypatch.setattr(lavimo.dataset.annotations, "load_clips", lambda *a, **k: list(clips))
    monkeypatch.setattr(lavimo.dataset.text_embed, "SentenceEmbedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setattr(lavimo.dataset.shards.build, "default_features", lambda clip, *a, **k: fake_features(clip))
    args = ["--annotations", str(ann), "--amass", str(tmp_path / "amass"), "--videos", str(vids), "--out",
            str(tmp_path / "shards"), "--splits", "train,val", "--workers", "1", "--samples-per-shard", "2",
            "--quiet"]
    return main, args


def _call(main, args) -> int:
    try:
        return main(args)
    except SystemExit as e:  # argparse's own usage errors
        return e.code


@pytest.mark.parametrize("code, case", [
    (0, "done"), (1, "one video unreadable"), (1, "one video missing"),
    (2, "videos not a dir"), (2, "annotations missing"), (2, "out is a file"), (2, "samples-per-shard 0"),
    (2, "workers 0"),
    (2, "kit skeleton without vecs"), (2, "body-models not a dir"), (2, "missing --videos"), (2, "disk full"),
])
def test_build_shards(code, case, shards_cli, tmp_path, capsys, monkeypatch):
    main, args = shards_cli
    out = tmp_path / "shards"
    expect = {"videos not a dir": "--videos", "annotations missing": "--annotations", "out is a file": "--out",
              "samples-per-shard 0": "--samples-per-shard must be >= 1", "workers 0": "--workers", "kit skeleton without vecs": "--skeleton kit",
              "body-models not a dir": "--body-models", "missing --videos": "--videos",
              "disk full": "o space left on device"}.get(case)
    vids = Path(args[args.index("--videos") + 1])
    if case == "one video unreadable":
        (vids / "000001.mp4").write_bytes(b"not a video")
    elif case == "one video missing":
        (vids / "000001.mp4").unlink()
    elif case == "videos not a dir":
        args[args.index("--videos") + 1] = str(tmp_path / "nope")
    elif case == "annotations missing":
        args[args.index("--annotations") + 1] = str(tmp_path / "nope.json")
    elif case == "out is a file":
        out.write_text("a file")
    elif case == "samples-per-shard 0":
        args[args.index("--samples-per-shard") + 1] = "0"
    elif case == "workers 0":
        args[args.index("--workers") + 1] = "0"
    elif case == "kit skeleton without vecs":
        args += ["--skeleton", "kit"]
    elif case == "body-models not a dir":
        args += ["--body-models", str(tmp_path / "nope")]
    elif case == "missing --videos":
        i = args.index("--videos")
        del args[i:i + 2]
    elif case == "disk full":
        def full(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    assert _call(main, args) == code
    printed = capsys.readouterr() if code != 2 else None
    if code == 0:
        assert "done 5" in printed.out
    elif code == 1:  # the other clips are written
        from lavimo.dataset.shards.format import read_manifests

        assert "1 clips not written" in printed.out
        assert sum(m["num_samples"] for m in read_manifests(out).values()) == sum(COUNTS.values()) - 1
    else:
        assert expect in _stderr_line(capsys)


@pytest.mark.parametrize("code, case", [(0, "ok"), (1, "truncated shard"), (2, "not a directory"),
                                        (2, "no directory given")])
def test_build_shards_check(code, case, shards_cli, tmp_path, capsys):
    main, args = shards_cli
    out = tmp_path / "shards"
    assert main(args) == 0
    capsys.readouterr()
    target = str(out)
    if case == "truncated shard":
        tar = sorted(out.glob("train-*.tar"))[0]
        tar.write_bytes(tar.read_bytes()[:-700])
    elif case == "not a directory":
        target = str(tmp_path / "nope")
    argv = ["check"] if case == "no directory given" else ["check", target]
    assert _call(main, argv) == code
    if code == 1:
        assert "PROBLEM" in capsys.readouterr().out
    elif code == 2:
        assert ("nope" if case == "not a directory" else "shards") in _stderr_line(capsys)
    # the --dry-run spelling gives the same code
    if case in ("ok", "truncated shard"):
        assert main(["--out", target, "--dry-run"]) == code


# ------------------------------------------------------------------------------------ train.py and evaluate.py
TINY = dict(n_train=16, n_val=8, n_classes=4, samples_per_shard=8, size=32, frames=(10, 14))
TRAIN = ["--preset", "tiny", "--device", "cpu", "--no-progress", "--threads", "1", "--random-init",
         "--batch-size", "4", "--epochs", "1"]


@pytest.fixture(scope="module")
def tiny_shards(request):
    import torch

    from tests.fixtures.tiny_shards import cached_tiny_shards

    torch.set_num_threads(1)
    return cached_tiny_shards(request, "exit-codes", **TINY)


@pytest.fixture(scope="module")
def bad_motion_shards(tiny_shards, tmp_path_factory):
    """The tiny set with wrong-width motion in every train and val sample (a consistent set: hashes match)."""
    from tests.test_train_safety import motion_change, patch_shards

    return patch_shards(tiny_shards, tmp_path_factory.mktemp("bad") / "shards",
                        motion_change(lambda m: np.zeros((len(m), 10), np.float32)), splits=("train", "val"))


@pytest.fixture(scope="module")
def trained_run(tiny_shards, tmp_path_factory):
    """(exit status, run directory) of a tiny two-step training run."""
    import lavimo.train as train

    out = tmp_path_factory.mktemp("train") / "run"
    rc = train.main([*map(str, ["--shards", tiny_shards, "--out", out, "--max-steps", 2, *TRAIN])])
    return rc, out


@pytest.mark.parametrize("code, case", [
    (0, "done"), (1, "no usable training sample"),
    (2, "shards missing"), (2, "run exists without --resume"), (2, "--max-skip-fraction -1"),
    (2, "unknown preset"), (2, "not an int"),
])
def test_train_py(code, case, tiny_shards, bad_motion_shards, trained_run, tmp_path, capsys):
    import lavimo.train as train

    out = tmp_path / "run"
    args = ["--shards", tiny_shards, "--out", out, "--max-steps", 2, *TRAIN]
    expect = {"shards missing": "nope", "run exists without --resume": "--resume",
              "--max-skip-fraction -1": "--max-skip-fraction", "unknown preset": "no-such-preset",
              "not an int": "--epochs"}.get(case)
    if case == "done":
        rc, out = trained_run
        assert rc == 0 and (out / "checkpoints" / "last.safetensors").is_file()
        return
    if case == "no usable training sample":
        args[1] = bad_motion_shards
    elif case == "shards missing":
        args[1] = tmp_path / "nope"
    elif case == "run exists without --resume":
        args[3] = trained_run[1]
    elif case == "--max-skip-fraction -1":
        args += ["--max-skip-fraction", -1]
    elif case == "unknown preset":
        args += ["--preset", "no-such-preset"]
    elif case == "not an int":
        args += ["--epochs", "one"]
    assert _call(train.main, [str(a) for a in args]) == code
    line = _stderr_line(capsys)
    if code == 1:
        assert "no usable training sample" in line and "motion" in line, line
        assert not (out / "checkpoints" / "best.safetensors").exists()
    else:
        assert expect in line, line


def _identity_sims(path: Path) -> Path:
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 0.5, (12, 12))
    np.fill_diagonal(sims, 1.0)
    np.savez(path, sims=sims)
    return path


@pytest.mark.parametrize("code, case", [
    (0, "from-sims"), (1, "no usable sample in the split"),
    (2, "from-sims with --run"), (2, "nothing to evaluate"), (2, "sims file missing"), (2, "not an npz"),
    (2, "sims not square"), (2, "unknown protocol"),
])
def test_evaluate_py(code, case, trained_run, bad_motion_shards, tmp_path, capsys):
    import lavimo.evaluation.cli as evaluate

    sims = _identity_sims(tmp_path / "sims.npz")
    args = ["--from-sims", sims, "--out", tmp_path / "metrics.json"]
    expect = {"from-sims with --run": "--from-sims", "nothing to evaluate": "--run", "sims file missing": "nope",
              "not an npz": "sims.npz", "sims not square": "sims", "unknown protocol": "--protocol"}.get(case)
    if case == "no usable sample in the split":
        args = ["--run", trained_run[1], "--shards", bad_motion_shards, "--split", "val", "--device", "cpu",
                "--out", tmp_path / "eval"]
    elif case == "from-sims with --run":
        args += ["--run", trained_run[1]]
    elif case == "nothing to evaluate":
        args = []
    elif case == "sims file missing":
        args[1] = tmp_path / "nope.npz"
    elif case == "not an npz":
        sims.write_bytes(b"not an npz")
    elif case == "sims not square":
        np.savez(sims, sims=np.zeros((3, 4)))
    elif case == "unknown protocol":
        args += ["--protocol", "sideways"]
    assert _call(evaluate.main, [str(a) for a in args]) == code
    if code == 0:
        assert json.loads((tmp_path / "metrics.json").read_text())["all"]["t2m"]["R@1"] == 100.0
    else:
        line = _stderr_line(capsys)
        assert expect in line if code == 2 else "motion" in line, line

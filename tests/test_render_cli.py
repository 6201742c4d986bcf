"""``render-amass`` end to end on a tiny synthetic AMASS corpus: all rendered, resume, parts, failures, set-up errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lavimo.render.cli import main
from lavimo.core.mp4 import read_video

pytestmark = pytest.mark.slow
SIZE = 64
NUM_CLIPS = 5


def _write_npz(path: Path, seconds: float, fps: float, phase: float) -> None:
    """An AMASS SMPL-H file: a standing body swinging its arms and stepping sideways (Z-up world)."""
    t = np.arange(int(round(seconds * fps))) / fps
    poses = np.zeros((len(t), 156))
    poses[:, 0] = np.pi / 2  # SMPL Y-up -> AMASS Z-up
    swing = 0.6 * np.sin(2 * np.pi * t + phase)
    poses[:, 3 * 16 + 2] = -1.1 + swing  # left shoulder
    poses[:, 3 * 17 + 2] = 1.1 + swing   # right shoulder
    poses[:, 3 * 1 + 0] = -0.3 * np.sin(2 * np.pi * t)  # left hip
    trans = np.stack([0.4 * t, np.zeros_like(t), np.full_like(t, 0.95)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, poses=poses, trans=trans, betas=np.zeros(16), gender=np.array("neutral"),
             mocap_framerate=np.array(fps), dmpls=np.zeros((len(t), 8)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("render_corpus")
    amass = root / "amass"
    ann = {}
    for i in range(NUM_CLIPS):
        rel = f"Synth/s{i % 2}/m{i}_poses"
        _write_npz(amass / f"{rel}.npz", seconds=0.4 + 0.05 * i, fps=60.0, phase=i)
        ann[f"{i:05d}"] = {"path": rel, "duration": 0.4 + 0.05 * i,
                           "annotations": [{"seg_id": f"{i:05d}_0", "text": f"a person waves {i}", "start": 0.0,
                                            "end": 0.4 + 0.05 * i}]}
    (root / "annotations.json").write_text(json.dumps(ann))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _run(corpus: Path, out: Path, *extra: str) -> int:
    return main(["--amass", str(corpus / "amass"), "--annotations", str(corpus / "annotations.json"),
                 "--out", str(out), "--size", str(SIZE), *extra])


def _report(out: Path, name: str = "render-report.json") -> dict:
    return json.loads((out / name).read_text())


def test_renders_every_clip_then_skips_them_all(corpus, tmp_path):
    out = tmp_path / "videos"
    assert _run(corpus, out) == 0
    rep = _report(out)
    assert rep["rendered"] == NUM_CLIPS and rep["skipped"] == 0 and rep["failed"] == {}
    for i in range(NUM_CLIPS):
        k = f"{i:05d}"
        meta = json.loads((out / f"{k}.json").read_text())
        frames, info = read_video(out / f"{k}.mp4")
        assert len(frames) == meta["num_frames"] == len(meta["frames"]) == int((0.4 + 0.05 * i) * 20 + 1e-6)
        assert frames.shape[1:] == (SIZE, SIZE, 3) and info["fps"] == pytest.approx(20.0)
        for key in ("keyid", "avatar", "light", "fps", "amass_path", "frames", "num_frames", "size", "camera",
                    "body_model", "mirrored", "trajectory", "version", "video_size", "video_sha256"):
            assert key in meta, key
        assert meta["video_size"] == (out / f"{k}.mp4").stat().st_size
        assert meta["amass_path"] == f"Synth/s{i % 2}/m{i}_poses.npz" and meta["frames"][1] == 3  # 60 -> 20 fps
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert _run(corpus, out) == 0
    rep = _report(out)
    assert rep["rendered"] == 0 and rep["skipped"] == NUM_CLIPS and rep["skipped_unverified"] == 0
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}


def test_parts_together_render_exactly_the_full_set(corpus, tmp_path):
    out = tmp_path / "parts"
    assert _run(corpus, out, "--part", "1/2") == 0
    first = {p.stem for p in out.glob("*.mp4")}
    assert _run(corpus, out, "--part", "2/2") == 0
    both = {p.stem for p in out.glob("*.mp4")}
    assert both == {f"{i:05d}" for i in range(NUM_CLIPS)} and 0 < len(first) < NUM_CLIPS
    r1, r2 = _report(out, "render-report-part-1-of-2.json"), _report(out, "render-report-part-2-of-2.json")
    assert r1["rendered"] + r2["rendered"] == NUM_CLIPS and r2["skipped"] == 0


def _array_task(monkeypatch, task: int, lo: int, hi: int, parts: int | None) -> None:
    for k, v in {"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_MIN": lo, "SLURM_ARRAY_TASK_MAX": hi,
                 "SLURM_ARRAY_TASK_COUNT": hi - lo + 1, "LAVIMO_PARTS": parts}.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, str(v))


def test_parts_submitted_one_by_one_merge(corpus, tmp_path, monkeypatch, capsys):
    """render_array.sbatch's tasks: the array 0-2 of PARTS=3 loses task 1, which is submitted again on its own
    (sbatch --array=1: MIN = MAX = 1, COUNT 1): it is still part 2 of 3 and merge-reports takes all three."""
    out = tmp_path / "array"
    for task in (0, 2):
        _array_task(monkeypatch, task, 0, 2, 3)
        assert _run(corpus, out) == 0
    assert main(["merge-reports", str(out)]) == 1 and "missing parts: 2/3" in capsys.readouterr().out
    _array_task(monkeypatch, 1, 1, 1, 3)
    assert _run(corpus, out) == 0
    assert (out / "render-report-part-2-of-3.json").is_file()
    assert main(["merge-reports", str(out)]) == 0
    rep = _report(out)
    assert rep["rendered"] == NUM_CLIPS and rep["missing_parts"] == [] and sorted(rep["parts"]) == [
        "1/3", "2/3", "3/3"]
    _array_task(monkeypatch, 1, 1, 1, None)  # without the declared size the lone task is part 1 of 1
    assert _run(corpus, tmp_path / "lone") == 0 and (tmp_path / "lone" / "render-report-part-1-of-1.json").is_file()


@pytest.mark.parametrize("workers", [1, 2])
def test_egl_device_from_the_jobs_gpu_variables(corpus, tmp_path, monkeypatch, capsys, workers):
    """SLURM_JOB_GPUS (no CUDA_VISIBLE_DEVICES, no --egl-devices) chooses the EGL device of the processes that
    render: device 0 exists here (Mesa) and renders; device 7 does not, and the renderer refuses it by name."""
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "EGL_DEVICE_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    out = tmp_path / "gpu0"
    assert _run(corpus, out, "--workers", str(workers), "--limit", "2") == 0
    rep = _report(out)
    assert rep["rendered"] == 2 and rep["egl_devices"] == "0"
    monkeypatch.setenv("SLURM_JOB_GPUS", "7")
    assert _run(corpus, tmp_path / "gpu7", "--workers", str(workers), "--limit", "2") == 2
    err = capsys.readouterr().err
    assert "7" in err and "EGL" in err, err
    monkeypatch.setenv("SLURM_JOB_GPUS", "7")  # --egl-devices overrides the job's GPUs
    assert _run(corpus, tmp_path / "flag", "--workers", str(workers), "--limit", "1", "--egl-devices", "0") == 0


def test_corrupt_npz_is_one_failure_and_the_rest_render(corpus, tmp_path):
    bad = tmp_path / "corpus"
    shutil.copytree(corpus, bad)
    victim = bad / "amass" / "Synth" / "s0" / "m2_poses.npz"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated zip
    out = tmp_path / "videos"
    assert _run(bad, out, "--limit", "4", "--workers", "2") == 1
    rep = _report(out)
    assert set(rep["failed"]) == {"00002"} and rep["workers"] == 2
    assert "m2_poses.npz" in rep["failed"]["00002"]
    assert rep["rendered"] + len(rep["failed"]) == rep["clips"] == 4
    assert not (out / "00002.mp4").exists() and not (out / "00002.json").exists()
    assert len(list(out.glob("*.mp4"))) == rep["rendered"]


def test_mirror_flag_and_keyids(corpus, tmp_path):
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("00001\nM00001\n")
    out = tmp_path / "m"
    assert _run(corpus, out, "--mirror", "--keyids", str(keyfile)) == 0
    a, b = (json.loads((out / f"{k}.json").read_text()) for k in ("00001", "M00001"))
    assert b["mirrored"] and not a["mirrored"] and a["avatar"]["name"] == b["avatar"]["name"]
    assert a["frames"] == b["frames"]
    np.testing.assert_allclose(np.array(b["trajectory"]["target_xy_m"])[:, 0],
                               -np.array(a["trajectory"]["target_xy_m"])[:, 0], atol=2e-3)


def test_setup_errors_stop_with_a_message(corpus, tmp_path, capsys):
    assert _run(corpus, tmp_path / "o", "--avatars", str(tmp_path / "nope")) == 2
    assert "avatars directory not found" in capsys.readouterr().err
    avatars = tmp_path / "avatars"
    avatars.mkdir()
    (avatars / "bad.json").write_text('{"name": "x", "appearance": {}}')
    assert _run(corpus, tmp_path / "o", "--avatars", str(avatars)) == 2
    assert "bad.json" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _run(corpus, blocker / "sub") == 2
    assert "not writable" in capsys.readouterr().err
    assert _run(corpus, tmp_path / "o", "--part", "3/2") == 2


def test_failure_while_posing_frames_fails_the_clip_without_hanging(corpus, tmp_path, monkeypatch):
    from lavimo.render.scene import VertexNormals

    calls = {"n": 0}
    original = VertexNormals.__call__

    def flaky(self, vertices):
        calls["n"] += 1
        if calls["n"] == 1:
            raise FloatingPointError("boom")
        return original(self, vertices)

    monkeypatch.setattr(VertexNormals, "__call__", flaky)
    out = tmp_path / "v"
    assert _run(corpus, out, "--limit", "2") == 1
    rep = _report(out)
    assert rep["rendered"] == 1 and list(rep["failed"].values()) == ["FloatingPointError: boom"]
    assert len(list(out.glob("*.mp4"))) == 1


def test_the_papers_command_line_verbatim(corpus, tmp_path):
    """`render-amass --avatars assets/ --lights 4` as users copy it: assets/ is the root holding avatars/ and
    lights.json; the clips get the same avatars and lights as with --avatars assets/avatars."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("render-amass")
    cmd = [str(exe), "--amass", str(corpus / "amass"), "--annotations", str(corpus / "annotations.json"),
           "--avatars", "assets/", "--lights", "4", "--out", str(tmp_path / "verbatim")]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _report(tmp_path / "verbatim")["rendered"] == NUM_CLIPS
    assert _run(corpus, tmp_path / "explicit", "--avatars", str(repo / "assets" / "avatars"), "--lights", "4") == 0
    for i in range(NUM_CLIPS):
        a = json.loads((tmp_path / "verbatim" / f"{i:05d}.json").read_text())
        b = json.loads((tmp_path / "explicit" / f"{i:05d}.json").read_text())
        assert (a["avatar"], a["light"], list(a["size"])) == (b["avatar"], b["light"], [512, 512])

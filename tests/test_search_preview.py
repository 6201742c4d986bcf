"""Skeleton previews rendered on demand (lavimo.search.preview): through the headless renderer (lavimo.render.scene on EGL),
cached by a hash of the joints and the settings, features or joints in, a numpy stick figure only without EGL.

Keep this file free of transformers / triton imports: importing them after an EGL context in the same process
has crashed pytest before."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lavimo.body.skeleton import rest_joints
from lavimo.core.errors import BadInputError
from lavimo.core.mp4 import read_video
from lavimo.dataset.features import joints_to_features

import lavimo.search.preview as preview

REPO = Path(__file__).resolve().parents[1]
SIZE = 128


def walking(t: int = 20, fps: float = 20.0, speed: float = 1.2) -> np.ndarray:
    """(t, 22, 3) float32 HumanML3D joints (Y up, metres, facing +Z): the rest skeleton on the floor walking
    forward at ``speed`` m/s with legs swinging about the hips."""
    rest = rest_joints()[:22].copy()
    rest[:, 1] -= rest[:, 1].min() - 0.05
    out = np.repeat(rest[None], t, axis=0)
    for k in range(t):
        a = 0.5 * np.sin(2 * np.pi * 1.5 * k / t)
        for hip, leg, sgn in ((1, [4, 7, 10], 1.0), (2, [5, 8, 11], -1.0)):
            c, s = np.cos(sgn * a), np.sin(sgn * a)
            rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
            out[k, leg] = (rest[leg] - rest[hip]) @ rot.T + rest[hip]
        out[k, :, 2] += speed * k / fps
    return out.astype(np.float32)


def _skeleton_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels of the red (right) and blue (left) bones: saturated colours the sky and grey floor never have."""
    f = frame.astype(np.int16)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return ((r - np.maximum(g, b)) > 60) | ((b - np.maximum(r, g)) > 60)


@pytest.fixture()
def counter(monkeypatch):
    """Counts calls of the EGL frame renderer."""
    calls = []
    real = preview.render_frames

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(preview, "render_frames", counted)
    return calls


def test_walking_preview_through_the_renderer_is_cached(tmp_path, counter):
    joints = walking()
    out = tmp_path / "p" / "walk.mp4"
    got = preview.render_preview(joints, out, size=SIZE, renderer="egl")
    assert got == out and len(counter) == 1
    frames, meta = read_video(out)
    assert frames.shape == (len(joints), SIZE, SIZE, 3) and meta["fps"] == pytest.approx(20.0)
    first, last = _skeleton_mask(frames[0]), _skeleton_mask(frames[-1])
    assert first.sum() > 40 and last.sum() > 40                      # the bones are drawn
    bg = frames[0][~first].reshape(-1, 3).mean(axis=0)
    assert np.abs(frames[0][first].reshape(-1, 3).mean(axis=0) - bg).max() > 40  # and differ from the background
    assert (first ^ last).sum() > 0.3 * first.sum()                 # the legs moved
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 1.0
    # second call: same key -> nothing rendered, same bytes, same file
    data, mtime = out.read_bytes(), out.stat().st_mtime_ns
    assert preview.render_preview(joints, out, size=SIZE, renderer="egl") == out
    assert len(counter) == 1 and out.read_bytes() == data and out.stat().st_mtime_ns == mtime
    # other settings, other joints or force -> rendered again
    preview.render_preview(joints, out, size=SIZE, renderer="egl", light=2)
    assert len(counter) == 2
    preview.render_preview(joints[:-2], out, size=SIZE, renderer="egl", light=2)
    assert len(counter) == 3 and len(read_video(out)[0]) == len(joints) - 2
    preview.render_preview(joints[:-2], out, size=SIZE, renderer="egl", light=2, force=True)
    assert len(counter) == 4
    assert sorted(p.name for p in out.parent.iterdir()) == [".walk.mp4.key", "walk.mp4"]  # no temp files left


def test_features_file_input(tmp_path, counter):
    joints = walking(16)
    feats = joints_to_features(joints)
    assert feats.shape == (15, 263)
    src = tmp_path / "m.npy"
    np.save(src, feats.astype(np.float32))
    out = preview.render_preview(src, tmp_path / "m.mp4", size=SIZE, fps=10, renderer="egl")
    frames, meta = read_video(out)
    assert frames.shape == (15, SIZE, SIZE, 3) and meta["fps"] == pytest.approx(10.0)
    assert _skeleton_mask(frames[0]).sum() > 40
    preview.render_preview(src, tmp_path / "m.mp4", size=SIZE, fps=10, renderer="egl")
    assert len(counter) == 1


def test_numpy_fallback_without_egl(tmp_path, monkeypatch, caplog, counter):
    monkeypatch.setattr(preview, "egl_available", lambda: False)
    out = tmp_path / "f.mp4"
    with caplog.at_level(logging.WARNING, logger="lavimo.search.preview"):
        preview.render_preview(walking(8), out, size=64)
    assert "no EGL" in caplog.text and len(counter) == 0
    frames, _ = read_video(out)
    assert frames.shape == (8, 64, 64, 3)
    assert _skeleton_mask(frames[0]).sum() > 10


def test_preview_frames_are_capped_keeping_the_duration(tmp_path, monkeypatch):
    j = walking(25)
    same, fps = preview.cap_frames(j, 20.0, 25)
    assert same is j and fps == 20.0 and preview.cap_frames(j, 20.0, None)[0] is j
    capped, fps = preview.cap_frames(j, 20.0, 10)  # stride 3: frames 0, 3, ..., 24 at 20/3 fps
    np.testing.assert_array_equal(capped, j[::3])
    assert len(capped) == 9 and fps == pytest.approx(20.0 / 3)
    assert preview.MAX_PREVIEW_FRAMES == 600
    monkeypatch.setattr(preview, "egl_available", lambda: False)
    out = preview.skeleton_preview(j, tmp_path, "M00001", size=64, max_frames=10)
    frames, _ = read_video(out)
    assert frames.shape == (9, 64, 64, 3)
    whole = preview.render_preview(j, tmp_path / "whole.mp4", size=64)  # the CLI's default: every frame
    assert read_video(whole)[0].shape[0] == 25


def test_write_mp4_is_atomic_once(tmp_path, monkeypatch):
    """write_mp4 relies on lavimo.core.mp4's own atomic write (one temporary file, renamed), not a second one around it."""
    import lavimo.core.mp4
    import lavimo.search.preview as sp

    entered = []
    real = lavimo.core.mp4.atomic_path

    def counted(path, *a, **kw):
        entered.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(lavimo.core.mp4, "atomic_path", counted)
    monkeypatch.setattr(sp, "atomic_path", counted)
    out = preview.write_mp4(tmp_path / "s.mp4", np.zeros((3, 17, 33, 3), np.uint8), 10.0)
    assert entered == [out] and read_video(out)[0].shape == (3, 16, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mp4"]


def test_bad_motion_and_settings(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="evil.npy"):
        preview.render_preview(evil, tmp_path / "e.mp4", size=SIZE)
    assert not marker.exists() and not (tmp_path / "e.mp4").exists()
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 21, 3), np.float32))
    with pytest.raises(BadInputError, match="bad.npy"):
        preview.render_preview(bad, tmp_path / "b.mp4", size=SIZE)
    nan = walking(4)
    nan[2, 3, 1] = np.nan
    with pytest.raises(BadInputError, match="finite"):
        preview.render_preview(nan, tmp_path / "n.mp4", size=SIZE)
    for kw in ({"size": 33}, {"size": 0}, {"size": 10 ** 6}, {"fps": 0}, {"renderer": "vulkan"}):
        with pytest.raises(ValueError):
            preview.render_preview(walking(4), tmp_path / "s.mp4", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "evil.npy"]


@pytest.mark.slow
def test_cli_preview(tmp_path):
    src = tmp_path / "w.npy"
    np.save(src, walking(6))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYOPENGL_PLATFORM="egl", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    run = lambda *a: subprocess.run([sys.executable, "-m", "lavimo.search.cli", "preview", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    res = run(src, "--out", tmp_path / "o" / "w.mp4", "--size", 64)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "o" / "w.mp4")
    assert read_video(tmp_path / "o" / "w.mp4")[0].shape == (6, 64, 64, 3)
    res = run(src, "--out", tmp_path / "x.mp4", "--size", 63)
    assert res.returncode == 2 and "--size" in res.stderr and "Traceback" not in res.stderr
    res = run(tmp_path / "missing.npy", "--out", tmp_path / "x.mp4")
    assert res.returncode == 2 and "missing.npy" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.slow
def test_model_imports_after_a_preview_do_not_crash(tmp_path):
    """A preview first, then torch._dynamo / triton (what loading a model does): no segfault (the renderer loads
    triton's native library before Mesa's EGL driver)."""
    code = ("import numpy as np, lavimo.search.preview as p\n"
            f"p.render_preview(np.load({str(tmp_path / 'w.npy')!r}), {str(tmp_path / 'w.mp4')!r}, size=32, "
            "renderer='egl')\n"
            "import torch._dynamo\nprint('ok')\n")
    np.save(tmp_path / "w.npy", walking(3))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYOPENGL_PLATFORM="egl")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]

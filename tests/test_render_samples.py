"""Rendering the two real AMASS samples (../shared) with the procedural body: frames, framing, lights, mirror."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lavimo.dataset.clip import Clip, FrameSpec
from lavimo.render.lights import load_lights
from lavimo.render.pipeline import RenderConfig, render_clips
from lavimo.render.scene import CameraRig, SceneRenderer
from lavimo.core.mp4 import read_video

pytestmark = pytest.mark.slow
SIZE = 96
WINDOW = (0.5, 0.9)  # seconds -> 8 frames at 20 fps


def _clip(keyid: str, npz: str, mirrored: bool = False) -> Clip:
    return Clip(keyid=keyid, amass_path=npz, frame_spec=FrameSpec("time", WINDOW[0], WINDOW[1], 20.0), fps=20.0,
                mirrored=mirrored, dataset="shared")


def _single_light_files(tmp: Path) -> list[Path]:
    doc = json.loads((Path(__file__).resolve().parents[1] / "assets" / "lights.json").read_text())
    out = []
    for i, s in enumerate(doc["setups"]):
        p = tmp / f"light{i + 1}.json"
        p.write_text(json.dumps(dict(doc, setups=[s])))
        out.append(p)
    return out


_RENDERER: list = []


def _backdrops(meta: dict, lights_file: Path) -> np.ndarray:
    """The frames the video would show without the avatar (sky + floor for each camera target)."""
    r = _RENDERER[0]
    r.set_lights(load_lights(lights_file)[0])
    empty = np.zeros((meta["size"][1], meta["size"][0], 4), np.uint8)
    return np.stack([r.compose(empty, np.asarray(t)) for t in meta["trajectory"]["target_xy_m"]])


def _silhouettes(frames: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    return np.abs(frames.astype(np.int16) - backdrop.astype(np.int16)).max(-1) > 30


@pytest.fixture(scope="module")
def rendered(shared_data, tmp_path_factory):
    """Both samples (+ a mirrored copy of the first) under each of the 4 lighting setups."""
    tmp = tmp_path_factory.mktemp("render_samples")
    amass = shared_data / "amass"
    out = {}
    renderer = SceneRenderer(SIZE, CameraRig())
    _RENDERER[:] = [renderer]
    for i, lf in enumerate(_single_light_files(tmp)):
        clips = [_clip("s1", "amass_sample.npz")]
        if i == 0:
            clips += [_clip("s2", "dmpl_sample.npz"), _clip("Ms1", "amass_sample.npz", mirrored=True)]
        d = tmp / f"out{i + 1}"
        cfg = RenderConfig(amass_root=str(amass), out_dir=str(d), size=SIZE, lights_path=str(lf), num_lights=1)
        res = render_clips(clips, cfg, renderer=renderer)
        assert [r.status for r in res] == ["rendered"] * len(clips), res
        out[i] = (d, lf)
    yield out
    renderer.close()
    _RENDERER.clear()
    shutil.rmtree(tmp, ignore_errors=True)


def test_frame_count_size_and_avatar_inside_every_frame(rendered):
    d, lf = rendered[0]
    for k in ("s1", "s2"):
        frames, info = read_video(d / f"{k}.mp4")
        meta = json.loads((d / f"{k}.json").read_text())
        assert meta["num_frames"] == len(meta["frames"]) == 8 == len(frames)
        assert frames.shape[1:] == (SIZE, SIZE, 3) and info["fps"] == pytest.approx(20.0)
        assert info["codec"] == "h264" and "yuv420p" in info.get("pix_fmt", "yuv420p")
        assert meta["frames"] == sorted(meta["frames"]) and meta["body_model"]["kind"] == "procedural"
        sil = _silhouettes(frames, _backdrops(meta, lf))
        for i, s in enumerate(sil):
            area = s.mean()
            assert 0.01 < area < 0.5, (k, i, area)  # visible, not the whole frame
            ys, xs = np.nonzero(s)
            assert ys.min() > 0 and xs.min() > 0 and ys.max() < SIZE - 1 and xs.max() < SIZE - 1, (k, i)


def test_lighting_setups_give_different_brightness(rendered):
    means = []
    for i in range(4):
        d, lf = rendered[i]
        frames, _ = read_video(d / "s1.mp4")
        meta = json.loads((d / "s1.json").read_text())
        assert meta["light"]["lights"][0]["position"] == json.loads(lf.read_text())["setups"][0]["lights"][0]["position"]
        sil = _silhouettes(frames, _backdrops(meta, lf))
        means.append(float(frames.mean(-1)[sil].mean()))
    gaps = [abs(a - b) for i, a in enumerate(means) for b in means[i + 1:]]
    assert min(gaps) > 1.0, means


def test_mirrored_video_is_the_horizontal_reflection(rendered):
    d, lf = rendered[0]
    a, _ = read_video(d / "s1.mp4")
    b, _ = read_video(d / "Ms1.mp4")
    ma, mb = (json.loads((d / f"{k}.json").read_text()) for k in ("s1", "Ms1"))
    assert mb["mirrored"] and mb["avatar"]["name"] == ma["avatar"]["name"]
    sa, sb = _silhouettes(a, _backdrops(ma, lf)), _silhouettes(b, _backdrops(mb, lf))[:, :, ::-1]
    for i in range(len(sa)):
        iou = (sa[i] & sb[i]).sum() / max((sa[i] | sb[i]).sum(), 1)
        assert iou > 0.85, (i, iou)

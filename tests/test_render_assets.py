"""Fast tests of the rendering building blocks: lights, avatars, regions, seeding, trajectory, floor, video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lavimo.dataset.clip import Clip, FrameSpec
from lavimo.core.errors import BadInputError
from lavimo.render.avatars import REGIONS, load_avatar, load_avatars, region_labels, vertex_colors
from lavimo.render.cli import add_mirrored, parse_part, select_part, SetupError
from lavimo.render.lights import load_lights
from lavimo.render.pipeline import base_keyid, choose_avatar_light
from lavimo.render.trajectory import follow_trajectory

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- lights
def test_lights_are_the_papers_numbers_and_map_to_the_camera_frame():
    setups = load_lights()
    assert len(setups) == 4
    raw = [[(l.position, l.color) for l in s.lights] for s in setups]
    assert raw[0] == [((0, 0, -300), (1, 1, 1))]
    assert raw[1] == [((-300, -300, -300), (0.8, 0.8, 0.8)), ((300, -300, -300), (0.8, 0.8, 0.8))]
    assert raw[2] == [((0, 0, -300), (1, 1, 1)), ((-300, 0, -300), (0.4, 0.4, 0.4))]
    assert raw[3] == [((300, 0, -300), (0.4, 0.4, 0.4)), ((-300, 0, -300), (1, 1, 1))]
    # OpenCV camera frame (y down, z forward), centimetres -> OpenGL camera frame, metres.
    assert setups[0].lights[0].position_gl == pytest.approx((0, 0, 3.0))  # behind the camera: lights the front
    assert setups[1].lights[0].position_gl == pytest.approx((-3.0, 3.0, 3.0))  # above-left
    target = np.array([0.0, 0.0, -5.0])
    i = setups[0].pyrender_intensity(setups[0].lights[0], target)
    assert i == pytest.approx(setups[0].radiance_scale * 8.0 ** 2)
    assert setups[1].pyrender_intensity(setups[1].lights[0], target) == pytest.approx(i)  # one intensity, 1/d^2


def test_malformed_lights_file_names_the_file(tmp_path):
    p = tmp_path / "lights.json"
    p.write_text(json.dumps({"setups": [{"lights": [{"position": [0, 0], "color": [1, 1, 1]}]}]}))
    with pytest.raises(BadInputError) as e:
        load_lights(p)
    assert str(p) in str(e.value) and "position" in str(e.value)


# --------------------------------------------------------------------------------------------- avatars
def test_thirteen_distinct_avatars():
    avatars = load_avatars()
    assert len(avatars) == 13
    assert len({a.name for a in avatars}) == 13
    looks = np.array([np.concatenate([np.ravel([a.colors[r] for r in REGIONS])]) for a in avatars])
    d = np.abs(looks[:, None] - looks[None]).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 0.5, "two avatars look almost the same"
    assert {a.gender for a in avatars} >= {"male", "female"}
    assert len({tuple(np.round(a.betas, 3)) for a in avatars}) == 13


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("appearance"), "appearance"),
    (lambda d: d["appearance"].pop("shoes"), "appearance"),
    (lambda d: d["appearance"].__setitem__("top", "#12345"), "appearance.top"),
    (lambda d: d.__setitem__("gender", "robot"), "gender"),
    (lambda d: d.__setitem__("betas", ["a"]), "betas"),
    (lambda d: d.__setitem__("style", {"sleeves": "medium"}), "style.sleeves"),
])
def test_malformed_avatar_spec_is_an_error_naming_the_file(tmp_path, mutate, field):
    src = sorted((REPO / "assets" / "avatars").glob("*.json"))[0]
    d = json.loads(src.read_text())
    mutate(d)
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(BadInputError) as e:
        load_avatars(tmp_path)
    assert e.value.path == str(bad) and e.value.field == field


def test_avatars_dir_problems(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_avatars(tmp_path / "missing")
    with pytest.raises(BadInputError, match="no avatar specs"):
        load_avatars(tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(BadInputError) as e:
        load_avatars(tmp_path)
    assert e.value.path.endswith("x.json")


def test_regions_on_the_procedural_body():
    from lavimo.body.model import load_body

    body = load_body()
    a = load_avatar(REPO / "assets" / "avatars" / "a01-red-tee.json")
    rest = body.rest(a.betas)
    v, j = rest.vertices[0], rest.joints[0]
    lab = region_labels(v, j, a.style)
    assert lab.shape == (body.num_vertices,)
    counts = np.bincount(lab, minlength=5)
    assert (counts > 20).all(), dict(zip(REGIONS, counts))
    up = v[:, 1]  # SMPL rest frame: Y up
    mean_h = {r: up[lab == i].mean() for i, r in enumerate(REGIONS)}
    assert mean_h["shoes"] < mean_h["bottom"] < mean_h["top"] < mean_h["hair"]
    shorts = region_labels(v, j, dict(a.style, legs="shorts", sleeves="none"))
    assert (shorts == 0).sum() > counts[0] * 1.3  # more skin
    rgba = vertex_colors(lab, a)
    assert rgba.shape == (len(v), 4) and rgba.dtype == np.float32 and (rgba[:, 3] == 1).all()


# --------------------------------------------------------------------------------- choices and parts
def _clip(k: str, mirrored: bool = False) -> Clip:
    return Clip(keyid=k, amass_path="a/b.npz", frame_spec=FrameSpec("time", 0.0, None), fps=20.0, mirrored=mirrored)


def test_choices_are_stable_and_mirrored_copies_keep_avatar_and_light():
    picks = [choose_avatar_light(_clip(f"{i:06d}"), 0, 13, 4) for i in range(400)]
    assert picks == [choose_avatar_light(_clip(f"{i:06d}"), 0, 13, 4) for i in range(400)]
    assert {a for a, _ in picks} == set(range(13)) and {l for _, l in picks} == set(range(4))
    assert choose_avatar_light(_clip("M000123", True), 0, 13, 4) == choose_avatar_light(_clip("000123"), 0, 13, 4)
    assert base_keyid(_clip("M1", False)) == "M1"  # only mirrored clips drop the prefix
    assert choose_avatar_light(_clip("000123"), 1, 13, 4) != choose_avatar_light(_clip("000123"), 0, 13, 4) or \
        choose_avatar_light(_clip("000124"), 1, 13, 4) != choose_avatar_light(_clip("000124"), 0, 13, 4)
    # --lights N draws from the first N only
    assert {choose_avatar_light(_clip(f"{i}"), 0, 13, 2)[1] for i in range(100)} == {0, 1}


def test_parts_are_disjoint_and_cover_everything():
    clips = [_clip(f"{i:05d}") for i in range(23)]
    parts = [select_part(list(reversed(clips)), (k, 3)) for k in (1, 2, 3)]
    keys = [c.keyid for p in parts for c in p]
    assert sorted(keys) == [c.keyid for c in clips] and len(set(keys)) == 23
    assert parse_part("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "x", "1/"):
        with pytest.raises(SetupError):
            parse_part(bad)
    m = add_mirrored([_clip("1"), _clip("2"), _clip("M2", True)])
    assert sorted(c.keyid for c in m) == ["1", "2", "M1", "M2"]


# ------------------------------------------------------------------------------------------ trajectory
def test_trajectory_follows_constant_velocity_without_lag_and_clamps():
    t = np.arange(100) / 20.0
    root = np.stack([1.5 * t, 0.2 * t, np.full_like(t, 0.9)], 1)
    tr = follow_trajectory(root, np.zeros(100), fps=20.0)
    np.testing.assert_allclose(tr.target_xy, root[:, :2], atol=1e-6)
    jump = root.copy()
    jump[50:, 0] += 3.0  # teleport: offset clamped to the limit
    tr = follow_trajectory(jump, np.full(100, -0.1), fps=20.0)
    off = jump[:, :2] - tr.target_xy
    assert np.all(np.abs(off[:, 0]) <= tr.max_offset_m[0] + 1e-9)
    assert np.all(np.abs(off[:, 1]) <= tr.max_offset_m[1] + 1e-9)
    assert tr.floor_z == pytest.approx(-0.1)
    d = tr.to_dict()
    assert d["method"] == "follow_camera" and len(d["target_xy_m"]) == 100
    # mirroring x mirrors the path
    mir = jump * [-1, 1, 1]
    np.testing.assert_allclose(follow_trajectory(mir, 0.0, 20.0).target_xy, tr.target_xy * [-1, 1], atol=1e-9)


# ------------------------------------------------------------------------------------- scene pieces
def test_vertex_normals_of_a_sphere_point_outwards():
    import trimesh

    from lavimo.render.scene import VertexNormals

    s = trimesh.creation.icosphere(3)
    v = np.asarray(s.vertices, dtype=np.float32)
    n = VertexNormals(s.faces, len(v))(np.stack([v, v * 2]))
    assert n.shape == (2, len(v), 3)
    np.testing.assert_allclose(n[0], v / np.linalg.norm(v, axis=1, keepdims=True), atol=0.02)
    np.testing.assert_allclose(n[1], n[0], atol=1e-5)


def test_floor_pattern_is_fixed_in_the_world_and_antialiased():
    from lavimo.render.scene import Backdrop, CameraRig

    b = Backdrop(64, CameraRig(), 0.5, (0.6, 0.5))
    assert 10 < b.row0 < 40  # horizon inside the frame
    p0 = b.pattern(np.array([0.3, -0.2]))
    assert p0.shape == (64 - b.row0, 64) and p0.min() >= 0.5 - 1e-6 and p0.max() <= 0.6 + 1e-6
    full = b.full_pattern(np.array([0.3, -0.2]))
    assert (full[:b.row0] == 1).all() and np.array_equal(full[b.row0:], p0)
    np.testing.assert_allclose(b.pattern(np.array([0.3 + 1.0, -0.2 - 3.0])), p0, atol=1e-5)  # period 2 tiles
    assert not np.allclose(b.pattern(np.array([0.8, -0.2])), p0)  # half a period shifts the checker
    mid = p0[p0.shape[0] // 2:]
    assert ((mid > 0.505) & (mid < 0.595)).any()  # filtered edges, not a hard 0/1 pattern


# ------------------------------------------------------------------------------------------------ video
def test_video_writer_roundtrip_and_abort(tmp_path):
    from lavimo.core.mp4 import VideoWriter, read_video

    frames = [np.full((32, 48, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    with VideoWriter(tmp_path / "a.mp4", (48, 32), fps=20.0) as w:
        for f in frames[:4]:
            w.write(f)
        w.write(lambda: frames[4])
    got, meta = read_video(tmp_path / "a.mp4")
    assert got.shape == (5, 32, 48, 3) and meta["fps"] == pytest.approx(20.0) and meta["codec"] == "h264"
    assert abs(int(got[3].mean()) - 120) <= 3
    w = VideoWriter(tmp_path / "b.mp4", (48, 32), fps=20.0)
    w.write(frames[0])
    w.abort()
    assert not (tmp_path / "b.mp4").exists() and list(tmp_path.iterdir()) == [tmp_path / "a.mp4"]
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "c.mp4", (33, 32), fps=20.0)


# ------------------------------------------------------------------------------------------- textures
def test_uv_textured_body_renders_the_texture(tmp_path):
    """A UV layout (OBJ v/vt, seams split) + texture image on a stand-in mesh: the texture shows up."""
    import trimesh

    from lavimo.render.avatars import load_uv_layout
    from lavimo.render.lights import load_lights
    from lavimo.render.scene import SceneRenderer, VertexNormals

    box = trimesh.creation.box(extents=(0.6, 0.4, 1.7))
    box.apply_translation((0, 0, 0.85))
    v, f = np.asarray(box.vertices, np.float32), np.asarray(box.faces)
    # per-corner UVs: left half of the texture for faces with x < 0 centre, right half otherwise
    lines = [f"v {a:.4f} {b:.4f} {c:.4f}" for a, b, c in v] + ["vt 0.25 0.5", "vt 0.75 0.5"]
    for tri in f:
        t = 1 if v[tri, 0].mean() < 0 else 2
        lines.append("f " + " ".join(f"{i + 1}/{t}" for i in tri))
    obj = tmp_path / "layout.obj"
    obj.write_text("\n".join(lines) + "\n")
    layout = load_uv_layout(obj)
    assert layout.num_body_vertices == len(v) and layout.faces.shape == f.shape
    assert len(layout.vmap) > len(v) - 1  # split at the seam between the two halves
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = (255, 0, 0)
    image[:, 4:] = (0, 0, 255)
    r = SceneRenderer(64)
    try:
        r.set_lights(load_lights()[0])
        n = VertexNormals(f, len(v))(v)
        r.set_body(f, None, v, n, layout, image)
        r.render_layer(v, n, np.zeros(2), 0.0)
        moved = v + np.array([0.3, 0, 0], np.float32)  # in-place update through the vertex map
        layer = r.render_layer(moved, n, np.zeros(2), 0.0)
    finally:
        r.close()
    fg = layer[..., 3] > 250
    assert fg.sum() > 50
    rgb = layer[..., :3][fg].astype(int)
    assert (rgb[:, 0] > rgb[:, 2] + 40).any() and (rgb[:, 2] > rgb[:, 0] + 40).any()  # both halves textured
    cols = np.nonzero(fg.any(0))[0]
    assert cols.mean() > 32  # moved right (image right = AMASS +x)
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nf 1 1 1\n")
    with pytest.raises(BadInputError):
        load_uv_layout(bad)


def test_no_egl_is_a_setup_error_saying_what_to_install(tmp_path, monkeypatch, capsys):
    import pyrender

    from lavimo.render.cli import main

    def broken(*a, **k):
        raise RuntimeError("eglInitialize failed")

    monkeypatch.setattr(pyrender, "OffscreenRenderer", broken)
    rc = main(["--amass", str(tmp_path), "--annotations", str(tmp_path / "a.json"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "EGL" in err and "libegl" in err and "eglInitialize failed" in err

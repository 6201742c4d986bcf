"""Level of detail (render/lod.py): simplified faces over the original vertices, auto targets, rendering with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lavimo.render.lod import (AUTO_FULL_SIZE, body_lod, full_detail, parse_lod, simplify, skinning_groups,
                        target_faces)


@pytest.fixture(scope="module")
def body():
    from lavimo.body.model import load_body

    return load_body()


@pytest.fixture(scope="module")
def lod3k(body):
    return body_lod(body, 3000, 112)


def _check_faces(lod, num_vertices: int, rest: np.ndarray) -> None:
    f = lod.faces
    assert f.ndim == 2 and f.shape[1] == 3 and f.dtype == np.int64
    assert f.min() >= 0 and f.max() < num_vertices                       # original vertex ids
    assert np.array_equal(lod.used, np.unique(f))
    assert np.array_equal(lod.used[lod.local_faces], f)
    assert (f[:, 0] != f[:, 1]).all() and (f[:, 1] != f[:, 2]).all() and (f[:, 0] != f[:, 2]).all()
    area = np.linalg.norm(np.cross(rest[f[:, 1]] - rest[f[:, 0]], rest[f[:, 2]] - rest[f[:, 0]]), axis=1)
    assert area.min() > 0                                                 # no degenerate triangles
    assert len(np.unique(np.sort(f, axis=1), axis=0)) == len(f)           # no duplicates


def test_body_lod_indexes_original_vertices_near_target_without_degenerates(body, lod3k):
    rest = np.asarray(body.rest().vertices[0], dtype=np.float64)
    assert abs(lod3k.num_faces - 3000) <= 0.05 * 3000
    assert lod3k.full_faces == len(body.faces) and lod3k.cell_m > 0 and not lod3k.is_full
    _check_faces(lod3k, body.num_vertices, rest)
    # the faces keep their orientation: the simplified surface still encloses a volume like the original
    def volume(f):
        a, b, c = rest[f[:, 0]], rest[f[:, 1]], rest[f[:, 2]]
        return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)
    assert volume(lod3k.faces) == pytest.approx(volume(np.asarray(body.faces, np.int64)), rel=0.15)
    d = lod3k.to_dict()
    assert d["faces"] == lod3k.num_faces and d["target_faces"] == 3000 and d["vertices"] == len(lod3k.used)


def test_simplification_is_deterministic(body, lod3k):
    again = body_lod(body, 3000, 112)
    assert np.array_equal(again.faces, lod3k.faces) and again.cell_m == lod3k.cell_m


def test_simplify_generic_mesh_and_groups():
    trimesh = pytest.importorskip("trimesh")
    m = trimesh.creation.icosphere(subdivisions=4)                        # 5120 faces
    v, f = np.asarray(m.vertices), np.asarray(m.faces)
    lod = simplify(v, f, 1200)
    assert abs(lod.num_faces - 1200) <= 60
    _check_faces(lod, len(v), v)
    # two groups (x < 0, x >= 0) never share a representative: every cluster stays on its side
    groups = (v[:, 0] >= 0).astype(int)
    lod_g = simplify(v, f, 1200, groups=groups)
    _check_faces(lod_g, len(v), v)
    assert simplify(v, f, 10_000).is_full and np.array_equal(simplify(v, f, 10_000).faces, f)


def test_skinning_groups_fold_hands_into_wrists(body):
    g = skinning_groups(body.vertex_joint, body.parents)
    assert g.max() < 22 and set(np.unique(g)) <= set(range(22))
    hand = np.asarray(body.vertex_joint) == 22                          # procedural left hand -> left wrist
    assert (g[hand] == 20).all()


def test_lod_options_and_auto_targets():
    assert parse_lod("auto") == "auto" and parse_lod("FULL") == "full" and parse_lod("2500") == 2500
    for bad in ("lots", "100", "-3"):
        with pytest.raises(ValueError):
            parse_lod(bad)
    full = 14688
    assert target_faces("auto", 512, full) is None and target_faces("auto", AUTO_FULL_SIZE, full) is None
    assert target_faces("full", 64, full) is None
    small = [target_faces("auto", s, full) for s in (64, 96, 112, 128, 192)]
    assert small == sorted(small) and 2500 <= small[2] <= 4000 and small[3] == 3500
    assert target_faces(20_000, 112, full) is None and target_faces(2000, 512, full) == 2000
    assert full_detail(np.array([[0, 1, 2], [2, 1, 3]])).is_full


@pytest.mark.slow
def test_render_with_auto_lod_shows_avatar_and_sidecar_records_it(tmp_path):
    """96-px render of a synthetic clip through render_clips: the reduced body is in frame, the sidecar says so;
    the lean per-frame redraw gives pyrender's own pixels (both shadings) and vertex shading ~ pixel shading."""
    from lavimo.dataset.clip import Clip, FrameSpec
    from lavimo.body.model import load_body
    from lavimo.render.lights import load_lights
    from lavimo.render.pipeline import RenderConfig, render_clips
    from lavimo.render.scene import SceneRenderer, VertexNormals
    from lavimo.core.mp4 import read_video
    from tests.test_render_cli import _write_npz

    size = 96
    _write_npz(tmp_path / "amass" / "s" / "m_poses.npz", seconds=0.6, fps=60.0, phase=0.3)
    clip = Clip(keyid="k1", amass_path="s/m_poses.npz", frame_spec=FrameSpec("time", 0.0, 0.6, 20.0), fps=20.0)
    renderer = SceneRenderer(size)
    try:
        cfg = RenderConfig(amass_root=str(tmp_path / "amass"), out_dir=str(tmp_path / "out"), size=size)
        res = render_clips([clip], cfg, renderer=renderer)
        assert [r.status for r in res] == ["rendered"]
        meta = json.loads((tmp_path / "out" / "k1.json").read_text())
        frames, _ = read_video(tmp_path / "out" / "k1.mp4")
        lod = meta["lod"]
        assert meta["shading"] == "vertex"                                  # auto below 384 px
        assert lod["mode"] == "auto" and lod["target_faces"] == target_faces("auto", size, lod["full_faces"])
        assert abs(lod["faces"] - lod["target_faces"]) <= 0.05 * lod["target_faces"] < lod["full_faces"]
        renderer.set_lights(load_lights()[meta["light"]["index"]])
        empty = np.zeros((size, size, 4), np.uint8)
        for i, frame in enumerate(frames):
            bg = renderer.compose(empty, np.asarray(meta["trajectory"]["target_xy_m"][i]))
            sil = np.abs(frame.astype(np.int16) - bg.astype(np.int16)).max(-1) > 30
            ys, xs = np.nonzero(sil)
            assert 0.01 < sil.mean() < 0.5, (i, sil.mean())
            assert ys.min() > 0 and xs.min() > 0 and ys.max() < size - 1 and xs.max() < size - 1, i
            assert ys.max() - ys.min() > 0.4 * size                     # a standing person, not a blob

        # lean redraw == pyrender's render, frame after frame
        body = load_body()
        d = body_lod(body, "auto", size)
        t = np.linspace(0, 1, 6)
        poses = np.zeros((6, 156))
        poses[:, 0] = np.pi / 2
        poses[:, 3 * 16 + 2] = -1.1 + 0.8 * t
        verts = body.pose(poses, np.stack([0.3 * t, 0.1 * t, np.full(6, 0.95)], 1)).vertices[:, d.used]
        normals = VertexNormals(d.local_faces, len(d.used))(verts)
        colors = np.tile(np.array([[0.6, 0.3, 0.2, 1.0]], np.float32), (len(d.used), 1))
        layers = {}
        for shading in ("pixel", "vertex"):
            for lean in (True, False):
                renderer.lean_redraw = lean
                renderer._lean_verified.clear()
                renderer.set_body(d.local_faces, colors, verts[0], normals[0], shading=shading)
                layers[shading, lean] = [
                    renderer.render_layer(verts[i], normals[i], np.array([0.3 * t[i], 0.0]), 0.0).copy()
                    for i in range(6)]
                assert bool(renderer._lean_verified) == lean and renderer.lean_redraw == lean
            for a, b in zip(layers[shading, True], layers[shading, False]):
                assert np.array_equal(a, b)
        px = np.stack(layers["pixel", True]).astype(int)
        vx = np.stack(layers["vertex", True]).astype(int)
        inside = (px[..., 3] == 255) & (vx[..., 3] == 255)
        assert inside.sum() > 200 and np.array_equal(px[..., 3] > 0, vx[..., 3] > 0)   # same silhouette
        assert np.abs(px[..., :3] - vx[..., :3])[inside].mean() < 4.0                 # same lighting model
    finally:
        renderer.close()


@pytest.mark.slow
def test_cli_lod_flag(tmp_path):
    from lavimo.render.cli import main
    from tests.test_render_cli import _write_npz

    _write_npz(tmp_path / "amass" / "s" / "m_poses.npz", seconds=0.3, fps=60.0, phase=0.0)
    (tmp_path / "a.json").write_text(json.dumps({"00000": {"path": "s/m_poses", "duration": 0.3, "annotations": [
        {"seg_id": "00000_0", "text": "a person waves", "start": 0.0, "end": 0.3}]}}))
    base = ["--amass", str(tmp_path / "amass"), "--annotations", str(tmp_path / "a.json"), "--size", "64"]
    assert main(base + ["--out", str(tmp_path / "o1"), "--lod", "2000"]) == 0
    meta = json.loads((tmp_path / "o1" / "00000.json").read_text())
    assert meta["lod"]["mode"] == 2000 and abs(meta["lod"]["faces"] - 2000) <= 100 and meta["shading"] == "vertex"
    assert meta["body_model"]["num_vertices"] > meta["lod"]["vertices"]
    assert main(base + ["--out", str(tmp_path / "o2"), "--lod", "full", "--shading", "pixel"]) == 0
    meta = json.loads((tmp_path / "o2" / "00000.json").read_text())
    assert meta["lod"]["faces"] == meta["lod"]["full_faces"] and meta["lod"]["target_faces"] is None
    assert meta["shading"] == "pixel"
    assert main(base + ["--out", str(tmp_path / "o3"), "--lod", "12"]) == 2


@pytest.mark.slow
def test_cli_worker_that_cannot_start_its_renderer_is_a_setup_error(tmp_path, capsys):
    """--workers 2: each worker creates its own EGL context; one that cannot (no such EGL device) stops the run
    with exit status 2 and the install help, like the single-process run."""
    from lavimo.render.cli import main
    from tests.test_render_cli import _write_npz

    ann = {}
    for i in range(2):
        _write_npz(tmp_path / "amass" / "s" / f"m{i}_poses.npz", seconds=0.3, fps=60.0, phase=0.0)
        ann[f"0000{i}"] = {"path": f"s/m{i}_poses", "duration": 0.3,
                           "annotations": [{"seg_id": f"0000{i}_0", "text": "a person waves", "start": 0.0, "end": 0.3}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    rc = main(["--amass", str(tmp_path / "amass"), "--annotations", str(tmp_path / "a.json"), "--size", "64",
               "--out", str(tmp_path / "o"), "--workers", "2", "--egl-devices", "97,98"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "EGL" in err and "libegl" in err and "Invalid device ID" in err

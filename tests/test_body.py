"""Body models: the procedural SMPL-compatible body, posing AMASS poses, mirroring."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from lavimo.core.errors import BadInputError
from lavimo.body import procedural as pb
from lavimo.body import skeleton
from lavimo.body.model import Body, load_body, mirror_amass
from lavimo.body.skeleton import mirror_permutation
from lavimo.render.avatars import PART_NAMES, vertex_parts

FLIP = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def data() -> dict:
    return pb.load_procedural_body()


@pytest.fixture(scope="module")
def body() -> Body:
    return load_body()


@pytest.fixture(scope="module")
def amass(shared_data):
    z = np.load(shared_data / "amass" / "amass_sample.npz")
    sl = slice(200, 320)
    return z["poses"][sl].astype(np.float64), z["trans"][sl].astype(np.float64), z["betas"].astype(np.float64)


def _random_poses(n: int, width: int = 156, scale: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (n, width)), rng.normal(0, 0.5, (n, 3))


# -- the procedural mesh -------------------------------------------------------------------------------
def test_mesh_is_closed_and_large_enough(data):
    v, f = data["v_template"], data["f"]
    assert v.shape[0] >= 6890 and v.shape[1] == 3
    assert f.dtype == np.int32 and f.min() >= 0 and f.max() < len(v)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0.04                          # outward faces; ~57 litres
    assert mesh.euler_number == 2                      # one closed genus-0 surface
    assert len(mesh.split(only_watertight=False)) == 1
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.6 < height < 1.8


def test_rest_pose_is_symmetric(data):
    v, mirror = data["v_template"], data["mirror_vertices"]
    np.testing.assert_allclose(v[mirror] * FLIP, v, atol=1e-9)
    j = data["joints"]
    np.testing.assert_allclose(j[skeleton.MIRROR_JOINTS] * FLIP, j, atol=0)


def test_weights_and_regressor(data):
    w = data["weights"]
    assert w.shape == (len(data["v_template"]), 24)
    assert (w >= 0).all() and ((w > 0).sum(axis=1) <= 4).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    reg = data["J_regressor"]
    assert reg.shape == (24, len(data["v_template"]))
    np.testing.assert_allclose(reg.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(reg @ data["v_template"], skeleton.rest_joints(), atol=1e-7)
    assert (data["kintree_table"][0, 1:] == skeleton.PARENTS[1:]).all()
    # every joint drives some vertices (argmax)
    assert set(np.unique(w.argmax(axis=1))) == set(range(24))


@pytest.mark.slow
def test_generation_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVIMO_CACHE", str(tmp_path))
    first = pb.load_procedural_body()                 # generates and caches
    assert pb.cache_path().is_file() and pb.cache_path().parent == tmp_path
    second = pb.build_procedural_body()               # a fresh generation
    cached = pb.load_procedural_body()                # read back from the cache
    assert pb.body_digest(first) == pb.body_digest(second) == pb.body_digest(cached)
    pb.cache_path().write_bytes(b"not an npz")        # a damaged cache is regenerated
    assert pb.body_digest(pb.load_procedural_body()) == pb.body_digest(first)
    np.savez(pb.cache_path(), **dict(first, fingerprint=np.array("made by older code")))
    assert pb.body_digest(pb.load_procedural_body()) == pb.body_digest(first)   # a stale cache too


def test_body_api(body):
    assert body.kind == "procedural" and body.gender == "neutral"
    assert body.num_vertices >= 6890 and body.faces.shape[1] == 3 and body.faces.dtype == np.int32
    assert list(body.parents) == list(skeleton.PARENTS)
    parts = vertex_parts(body)
    assert parts.shape == (body.num_vertices,) and parts.dtype == np.uint8
    assert set(np.unique(parts)) == set(range(len(PART_NAMES)))
    rest = body.rest().vertices[0]
    y = rest[:, 1]
    assert y[parts == 4].min() > y[parts == 1].max() - 0.05        # hair above the top
    assert y[parts == 3].max() < y[parts == 2].mean()             # shoes below the trousers
    assert y[parts == 1].mean() > y[parts == 2].mean()


# -- shape directions ----------------------------------------------------------------------------------
def _rest(body, k, value):
    betas = np.zeros(10)
    betas[k] = value
    out = body.rest(betas)
    return out.vertices[0], out.joints[0]


def test_betas_change_the_body_as_named(body):
    v0, j0 = _rest(body, 0, 0.0)
    # 0 height
    vt, jt = _rest(body, 0, 2.0)
    vs, _ = _rest(body, 0, -2.0)
    h = lambda v: v[:, 1].max() - v[:, 1].min()  # noqa: E731
    assert h(vt) > h(v0) + 0.1 > h(vs) + 0.2
    # 1 girth: waist width and depth
    vg, jg = _rest(body, 1, 2.0)
    waist = np.abs(v0[:, 1] - j0[3, 1]) < 0.02

    def extent(v, axis):
        return v[waist, axis].max() - v[waist, axis].min()

    assert extent(vg, 0) > extent(v0, 0) * 1.1 and extent(vg, 2) > extent(v0, 2) * 1.1
    assert abs(h(vg) - h(v0)) < 0.02
    # 2 limb length: shoulder-wrist and hip-ankle distances grow, torso does not
    _, jl = _rest(body, 2, 2.0)
    arm = lambda j: np.linalg.norm(j[20] - j[16])  # noqa: E731
    leg = lambda j: np.linalg.norm(j[7] - j[1])    # noqa: E731
    assert arm(jl) > arm(j0) * 1.05 and leg(jl) > leg(j0) * 1.05
    assert abs(np.linalg.norm(jl[12] - jl[0]) - np.linalg.norm(j0[12] - j0[0])) < 1e-3
    # 3 shoulder width: the shoulder joints move apart, the hips do not
    _, js = _rest(body, 3, 2.0)
    assert js[16, 0] - js[17, 0] > j0[16, 0] - j0[17, 0] + 0.04
    assert abs((js[1, 0] - js[2, 0]) - (j0[1, 0] - j0[2, 0])) < 1e-3
    # joints follow the shape: the head rises with height
    assert jt[15, 1] > j0[15, 1] + 0.02


# -- posing --------------------------------------------------------------------------------------------
def test_fast_path_equals_smplx_forward(body):
    poses, trans = _random_poses(40)
    betas = np.linspace(-1.5, 1.5, 10)
    fast, ref = body.pose(poses, trans, betas, chunk=16), body.pose_smplx(poses, trans, betas)
    np.testing.assert_allclose(fast.vertices, ref.vertices, atol=2e-5)
    np.testing.assert_allclose(fast.joints, ref.joints, atol=2e-5)
    assert fast.vertices.dtype == np.float32 and fast.joints.shape == (40, 24, 3)


def test_translation_is_applied(body):
    poses, trans = _random_poses(5)
    a = body.pose(poses, trans)
    b = body.pose(poses, trans + np.array([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(b.vertices - a.vertices, np.broadcast_to([1.0, -2.0, 0.5], a.vertices.shape),
                               atol=1e-5)


def test_amass_sample_pose_height(body, amass):
    poses, trans, betas = amass
    out = body.pose(poses, trans, betas)
    assert out.vertices.shape == (len(poses), body.num_vertices, 3)
    assert np.isfinite(out.joints).all() and np.isfinite(out.vertices).all()
    # AMASS is Z-up: head above pelvis above feet (the sample is a person perched on a high seat)
    j = out.joints
    assert (j[:, 15, 2] > j[:, 0, 2] + 0.4).all() and (j[:, 0, 2] > j[:, 10, 2] + 0.6).all()
    vz = out.vertices[..., 2]
    assert 1.45 < np.median(vz.max(axis=1) - vz.min(axis=1)) < 1.95
    # the pelvis follows the translation
    assert np.abs(j[:, 0, :2] - trans[:, :2]).max() < 0.3


def test_smplx_165_layout(body, amass):
    poses, trans, betas = amass
    rng = np.random.default_rng(1)
    p165 = np.concatenate([poses[:, :66], rng.normal(0, 0.3, (len(poses), 9)), poses[:, 66:156]], axis=1)
    a, b = body.pose(poses, trans, betas), body.pose(p165, trans, betas)
    np.testing.assert_allclose(a.joints, b.joints, atol=1e-6)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)


def test_mirror_reflects_posed_joints(body, amass):
    poses, trans, betas = amass
    out = body.pose(poses, trans, betas)
    mp, mt = mirror_amass(poses, trans)
    mir = body.pose(mp, mt, betas)
    perm = mirror_permutation(24)
    np.testing.assert_allclose(mir.joints, out.joints[:, perm] * FLIP, atol=1e-4)
    # and the surface: vertex i of the mirror is the reflected mirror vertex
    mv = pb.load_procedural_body()["mirror_vertices"]
    np.testing.assert_allclose(mir.vertices, out.vertices[:, mv] * FLIP, atol=1e-4)
    # mirroring twice is the identity; hands and eyes swap in the 156/165 layouts
    p2, t2 = mirror_amass(mp, mt)
    np.testing.assert_allclose(p2, poses, atol=0)
    np.testing.assert_allclose(t2, trans, atol=0)
    assert (mirror_permutation(52)[22:37] == np.arange(37, 52)).all()
    assert list(mirror_permutation(55)[22:25]) == [22, 24, 23]


def test_mirror_random_poses_165(body):
    poses, trans = _random_poses(20, width=165, scale=0.6, seed=3)
    out, mir = body.pose(poses, trans), body.pose(*mirror_amass(poses, trans))
    np.testing.assert_allclose(mir.joints, out.joints[:, mirror_permutation(24)] * FLIP, atol=1e-4)


# -- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [63, 72, 150, 168])
def test_wrong_pose_width_is_bad_input(body, width):
    with pytest.raises(BadInputError) as e:
        body.pose(np.zeros((4, width)), np.zeros((4, 3)))
    assert e.value.field == "poses"


def test_other_bad_inputs(body, tmp_path):
    with pytest.raises(BadInputError):
        body.pose(np.zeros((4, 156)), np.zeros((3, 3)))
    bad = np.zeros((4, 156))
    bad[1, 5] = np.nan
    with pytest.raises(BadInputError):
        body.pose(bad, np.zeros((4, 3)))
    with pytest.raises(BadInputError):
        body.pose(np.zeros((4, 156)), np.zeros((4, 3)), betas=[np.inf])
    with pytest.raises(BadInputError):
        mirror_amass(np.zeros((4, 150)), np.zeros((4, 3)))
    with pytest.raises(BadInputError) as e:
        load_body(gender="robot")
    assert e.value.field == "gender"
    with pytest.raises(BadInputError):
        load_body(tmp_path, model_type="mano")


def test_missing_real_model_names_the_file(tmp_path):
    (tmp_path / "smplh").mkdir()
    with pytest.raises(FileNotFoundError, match="SMPLH_FEMALE"):
        load_body(tmp_path, "smplh", "female")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_body(tmp_path / "nope", "smplx", "male")

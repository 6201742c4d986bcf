"""Motion features: HumanML3D reference checks, invariances, KIT variant, stats, AMASS -> joints."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lavimo.core.errors import BadInputError
from lavimo.dataset.features import (AMASS_TO_HUMANML3D, amass_to_joints, clip_features, feature_stats,
                              features_to_joints, joints_to_features, mirror_joints, process_joints)
from lavimo.dataset.motion import HUMANML3D, KIT, get_skeleton


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def synthetic_joints(skeleton: str = "humanml3d", frames: int = 60, seed: int = 0) -> np.ndarray:
    """A smooth, plausible joint sequence for a skeleton: the target skeleton's rest pose with every
    bone swinging by a smooth random rotation (< ~35 degrees), a turning, walking root, Y up."""
    skel = get_skeleton(skeleton)
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 20.0
    par = skel.parents
    out = np.zeros((frames, skel.num_joints, 3))
    height = 0.95 if skel.unit == "m" else 950.0
    speed = 1.0 if skel.unit == "m" else 1000.0
    yaw = 0.4 * np.sin(0.7 * t) + rng.uniform(-np.pi, np.pi)
    out[:, 0] = np.stack([speed * 0.8 * t, height + 0.03 * height * np.sin(5 * t), speed * 0.3 * t], -1)
    order = [c for chain in skel.chains for c in chain[1:]]
    for j in order:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        ang = 0.6 * np.sin(rng.uniform(1, 4) * t + rng.uniform(0, 2 * np.pi))
        rot = Rotation.from_rotvec(axis[None] * ang[:, None]) * Rotation.from_euler("y", yaw[:, None])
        bone = rot.apply(skel.target_offsets[j])
        out[:, j] = out[:, par[j]] + bone
    return out


def rotate_y(joints: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return joints @ r.T


@pytest.fixture(scope="module")
def ref(shared_data: Path):
    vecs = np.load(shared_data / "humanml3d" / "new_joint_vecs" / "012314.npy")
    joints = np.load(shared_data / "humanml3d" / "new_joints" / "012314.npy")
    return vecs, joints


# ------------------------------------------------------------------------------------------------
# reference checks (HumanML3D motion 012314)
# ------------------------------------------------------------------------------------------------

def test_features_to_joints_reproduces_reference_joints(ref):
    vecs, joints = ref
    rec = features_to_joints(vecs)
    assert rec.shape == (170, 22, 3) and rec.dtype == np.float32
    assert np.abs(rec - joints).max() < 1e-5


def test_features_to_joints_batched(ref):
    vecs, joints = ref
    rec = features_to_joints(np.stack([vecs, vecs]))
    assert rec.shape == (2, 170, 22, 3)
    assert np.abs(rec[1] - joints).max() < 1e-5


def test_joints_to_features_reproduces_reference_features(ref):
    vecs, joints = ref
    feats = joints_to_features(joints)
    assert feats.shape == (169, 263) and feats.dtype == np.float32
    assert np.abs(feats[:169] - vecs[:169]).mean() < 1e-3
    # away from the end (where the facing direction's smoothing window reaches the one frame the
    # reconstruction lost) the agreement is frame-exact
    assert np.abs(feats[:100] - vecs[:100]).max() < 5e-5
    # the foot contacts agree everywhere
    assert np.array_equal(feats[:, -4:], vecs[:169, -4:])


def test_features_invariant_to_yaw_translation_scale(ref):
    _, joints = ref
    base = joints_to_features(joints)
    moved = rotate_y(joints.astype(np.float64), 1.1) + np.array([2.5, 0.0, -1.75])
    assert np.abs(joints_to_features(moved) - base).max() < 1e-4
    assert np.abs(joints_to_features(joints * 1.37) - base).max() < 1e-4
    assert np.abs(joints_to_features(rotate_y(joints * 0.8, -2.0) + [0.3, 0.4, 0.5]) - base).max() < 1e-4


def test_mirror_twice_is_identity_and_mirrored_features_differ(ref):
    _, joints = ref
    m = mirror_joints(joints)
    assert m.dtype == joints.dtype
    assert np.array_equal(mirror_joints(m), joints)
    assert np.abs(m - joints).max() > 0.05
    diff = np.abs(joints_to_features(m) - joints_to_features(joints))
    assert diff.mean() > 1e-2
    # left and right swap roles: the mirrored left-hip ric is the reflected right-hip ric
    assert np.allclose(m[:, 1, 0], -joints[:, 2, 0]) and np.allclose(m[:, 1, 1:], joints[:, 2, 1:])


# ------------------------------------------------------------------------------------------------
# synthetic motions (no ../shared needed)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("skeleton,dim,joints_num", [("humanml3d", 263, 22), ("kit", 251, 21)])
def test_round_trip_to_processed_joints(skeleton, dim, joints_num):
    joints = synthetic_joints(skeleton, 80, seed=3)
    feats = joints_to_features(joints, skeleton)
    assert feats.shape == (79, dim) and feats.dtype == np.float32
    assert np.all(np.isfinite(feats))
    processed = process_joints(joints, skeleton)
    rec = features_to_joints(feats, skeleton)
    assert rec.shape == (79, joints_num, 3)
    unit = 1.0 if skeleton == "humanml3d" else 1000.0
    assert np.abs(rec - processed[:-1]).max() < 1e-4 * unit


@pytest.mark.parametrize("skeleton", ["humanml3d", "kit"])
def test_processed_joints_are_canonical(skeleton):
    skel = get_skeleton(skeleton)
    joints = synthetic_joints(skeleton, 40, seed=5) * 1.3
    pos = process_joints(joints, skeleton)
    assert abs(pos[..., 1].min()) < 1e-9                       # on the floor
    assert np.allclose(pos[0, 0, [0, 2]], 0.0, atol=1e-9)      # root at the origin in XZ
    r_hip, l_hip, r_sh, l_sh = skel.face_joints
    across = pos[0, r_hip] - pos[0, l_hip] + pos[0, r_sh] - pos[0, l_sh]
    forward = np.cross([0.0, 1.0, 0.0], across)
    assert abs(forward[0]) < 1e-9 and forward[2] > 0           # faces +Z
    # retargeted: bone lengths are the reference skeleton's
    par = skel.parents
    lengths = np.linalg.norm(pos[:, 1:] - pos[:, par[1:]], axis=-1)
    assert np.allclose(lengths, skel.target_lengths[1:][None], rtol=1e-9)


def test_kit_invariance_and_mirror():
    joints = synthetic_joints("kit", 50, seed=1)
    base = joints_to_features(joints, "kit")
    moved = rotate_y(joints, 0.9) * 0.7 + np.array([500.0, 0.0, 300.0])
    assert np.abs(joints_to_features(moved, "kit") - base).max() < 1e-3   # mm units
    m = mirror_joints(joints, "kit")
    assert np.array_equal(mirror_joints(m, "kit"), joints)
    assert np.abs(joints_to_features(m, "kit") - base).mean() > 1e-2


def test_feature_layout_and_contacts():
    assert HUMANML3D.feature_dim == 263 and KIT.feature_dim == 251
    sl = HUMANML3D.feature_slices()
    assert sl["ric"] == slice(4, 67) and sl["rot"] == slice(67, 193)
    assert sl["local_velocity"] == slice(193, 259) and sl["foot_contact"] == slice(259, 263)
    # a motionless body: every foot in contact, zero velocities, root height constant
    still = np.repeat(synthetic_joints("humanml3d", 1, seed=2), 10, axis=0)
    f = joints_to_features(still)
    assert np.all(f[:, 259:] == 1.0)
    assert np.abs(f[:, 1:3]).max() < 1e-7 and np.abs(f[:, 193:259]).max() < 1e-7
    assert np.abs(f[1:, 0]).max() < 1e-7
    # (row 0's root rotation velocity is the reference's jump from the identity frame-0 root rotation
    # to the smoothed facing estimate of frame 1; it is non-zero even for a motionless body)
    # a fast-moving body: no contacts (0.3 m per frame >> sqrt(0.002))
    fast = still + (np.arange(10)[:, None, None] * np.array([0.3, 0.0, 0.0]))
    assert np.all(joints_to_features(fast)[:, 259:] == 0.0)


def test_bad_joints_raise_bad_input():
    with pytest.raises(BadInputError):
        joints_to_features(np.zeros((10, 21, 3)))                  # wrong joint count
    with pytest.raises(BadInputError):
        joints_to_features(synthetic_joints("humanml3d", 1))       # one frame -> no rows
    j = synthetic_joints("humanml3d", 5)
    j[2, 4, 1] = np.nan
    with pytest.raises(BadInputError):
        joints_to_features(j)
    with pytest.raises(BadInputError):
        features_to_joints(np.zeros((5, 251)))                     # kit width for humanml3d
    with pytest.raises(ValueError):
        get_skeleton("smplx-hands")


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------

def test_feature_stats_convention():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 263)) * rng.uniform(0.1, 3.0, size=263) + 2.0 for n in (5, 17, 40)]
    mean, std = feature_stats(arrays)
    assert mean.dtype == np.float32 and std.shape == (263,)
    cat = np.concatenate(arrays)
    assert np.allclose(mean, cat.mean(0), atol=1e-5)
    raw_std = cat.std(0)
    for name, sl in HUMANML3D.feature_slices().items():
        assert np.allclose(std[sl], raw_std[sl].mean(), rtol=1e-5), name
    _, std5 = feature_stats(arrays, feat_bias=5.0)
    assert np.allclose(std5[:4], std[:4] / 5) and np.allclose(std5[259:], std[259:] / 5)
    assert np.allclose(std5[4:259], std[4:259])
    # NaN arrays are skipped, as in the reference
    bad = np.full((3, 263), np.nan)
    mean2, std2 = feature_stats(arrays + [bad])
    assert np.allclose(mean2, mean) and np.allclose(std2, std)
    # constant groups never give a zero std
    _, std_c = feature_stats([np.ones((4, 251))], skeleton="kit")
    assert np.all(std_c == 1.0)
    with pytest.raises(BadInputError):
        feature_stats([np.zeros((3, 10))])


# ------------------------------------------------------------------------------------------------
# AMASS -> joints
# ------------------------------------------------------------------------------------------------

class _RecordingBody:
    """A test double for lavimo.body.model.Body: joints = given array, records the call."""

    def __init__(self, joints):
        self.joints = joints
        self.calls = []

    def pose(self, poses, trans, betas):
        self.calls.append((poses, trans, betas))
        return SimpleNamespace(vertices=None, joints=self.joints[: len(poses)])


def test_amass_axes_are_humanml3d_convention():
    # (x, y, z) AMASS Z-up -> (-x, z, y): a proper rotation
    assert np.isclose(np.linalg.det(AMASS_TO_HUMANML3D), 1.0)
    amass_joints = np.random.default_rng(0).normal(size=(4, 24, 3)).astype(np.float32)
    motion = SimpleNamespace(path="x.npz", num_frames=10, poses=np.arange(10 * 156.0).reshape(10, 156),
                             trans=np.zeros((10, 3)), betas=np.arange(16.0), gender="male")
    body = _RecordingBody(amass_joints)
    out = amass_to_joints(motion, [1, 3, 5, 7], body)
    assert out.shape == (4, 22, 3) and out.dtype == np.float32
    a = amass_joints[:, :22]
    assert np.allclose(out, np.stack([-a[..., 0], a[..., 2], a[..., 1]], -1))
    poses, _, betas = body.calls[0]
    assert np.array_equal(poses[:, 0], motion.poses[[1, 3, 5, 7], 0]) and betas.shape == (10,)
    with pytest.raises(BadInputError):
        amass_to_joints(motion, [0, 10], body)


@pytest.fixture(scope="module")
def procedural_body():
    from lavimo.body.model import load_body

    return load_body(None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["amass_sample.npz", "dmpl_sample.npz"])
def test_real_amass_with_procedural_body(shared_data, procedural_body, name):
    from lavimo.dataset.amass import load_amass
    from lavimo.dataset.frames import time_frame_indices

    motion = load_amass(shared_data / "amass" / name)
    frames = time_frame_indices(motion.num_frames, motion.fps, 20.0)
    joints = amass_to_joints(motion, frames, procedural_body)
    assert joints.shape == (len(frames), 22, 3) and np.all(np.isfinite(joints))
    assert np.all(joints[:, 15, 1] > joints[:, 0, 1])           # Y up: head above pelvis
    pos = process_joints(joints)
    feet = pos[:, [7, 8, 10, 11], 1]
    assert abs(feet.min()) < 0.02                                # the feet touch the floor
    feats = joints_to_features(joints)
    assert feats.shape == (len(frames) - 1, 263)
    rec = features_to_joints(feats)
    assert np.abs(rec - pos[:-1]).max() < 1e-4


# ------------------------------------------------------------------------------------------------
# one call per clip
# ------------------------------------------------------------------------------------------------

def _clip(keyid="012314", amass_path="x/y.npz", frames=None, mirrored=False):
    from lavimo.dataset.clip import Clip, FrameSpec

    return Clip(keyid=keyid, amass_path=amass_path, frame_spec=FrameSpec("time", 0.0, None, 20.0),
                fps=20.0, mirrored=mirrored, frames=frames)


def test_clip_features_from_vecs_dir(shared_data, tmp_path):
    src = shared_data / "humanml3d" / "new_joint_vecs" / "012314.npy"
    shutil.copy(src, tmp_path / "012314.npy")
    f = clip_features(_clip(), amass_root=None, humanml3d_vecs=tmp_path)
    assert f.dtype == np.float32 and np.array_equal(f, np.load(src))
    with pytest.raises(BadInputError) as e:
        clip_features(_clip("000001"), amass_root=None, humanml3d_vecs=tmp_path)
    assert "000001.npy" in str(e.value)
    np.save(tmp_path / "000002.npy", np.zeros((5, 251), np.float32))
    with pytest.raises(BadInputError) as e:
        clip_features(_clip("000002"), amass_root=None, humanml3d_vecs=tmp_path)
    assert e.value.field == "features"


def test_kit_features_need_a_vecs_dir(tmp_path):
    with pytest.raises(ValueError):
        clip_features(_clip(), amass_root=tmp_path, skeleton="kit")


def test_antiparallel_bone_is_finite():
    # a bone pointing exactly against its rest direction (the reference would give NaN here)
    joints = synthetic_joints("humanml3d", 6, seed=4)
    joints[:, 18] = joints[:, 16] + np.array([0.0, 1.0, 0.0]) * HUMANML3D.target_lengths[18]
    joints[:, 20] = joints[:, 18] + np.array([0.0, 1.0, 0.0]) * HUMANML3D.target_lengths[20]
    f = joints_to_features(joints)
    assert np.all(np.isfinite(f))
    rec = features_to_joints(f)
    assert np.abs(rec - process_joints(joints)[:-1]).max() < 1e-6


def test_clip_features_bad_amass(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "y.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError) as e:
        clip_features(_clip(), amass_root=tmp_path, body=_RecordingBody(np.zeros((1, 22, 3))))
    assert "y.npz" in str(e.value)
    with pytest.raises(BadInputError):
        clip_features(_clip(amass_path="missing.npz"), amass_root=tmp_path,
                      body=_RecordingBody(np.zeros((1, 22, 3))))


@pytest.mark.slow
def test_clip_features_from_amass(shared_data, procedural_body, tmp_path):
    root = shared_data / "amass"
    clip = _clip("M000001", amass_path="amass_sample.npz", mirrored=True)
    f_m = clip_features(clip, root, body=procedural_body)
    f = clip_features(_clip("000001", amass_path="amass_sample.npz"), root, body=procedural_body)
    assert f.shape == f_m.shape and f.shape[1] == 263 and f.shape[0] > 50
    assert np.abs(f - f_m).mean() > 1e-3

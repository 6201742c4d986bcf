"""HumanML3D's motion representation: AMASS bodies -> joints -> 263-dim features (and back).

This re-implements, vectorised over frames and joints with numpy (float64 inside, float32 out), the
reference pipeline of HumanML3D (Guo et al., 2022: ``raw_pose_processing``, ``motion_representation``
``process_file`` / ``recover_from_ric``, ``cal_mean_variance``), including its quirks, so that our
numbers are the dataset's numbers.

Axes and units (see also :mod:`lavimo.dataset.motion`):

* AMASS / body model output: **Z up**, metres (:func:`amass_to_joints` input side).
* Joints and features: HumanML3D's convention, **Y up**, metres (KIT: millimetres); AMASS joints are converted
  by :data:`AMASS_TO_HUMANML3D`, ``(x, y, z) -> (-x, z, y)``, a proper rotation.
* After :func:`joints_to_features`' canonicalisation the feet touch the floor (min height 0), the root
  starts at the origin in XZ and the body initially faces +Z.

Feature layout per row t (J joints; 263 for J=22, 251 for J=21):

====================  =========  ========================================================
root_rot_velocity     1          half the root's Y rotation from frame t to t+1 (radians)
root_linear_velocity  2          root XZ displacement t -> t+1, in the root frame of t+1
root_y                1          root height at t
ric                   (J-1)*3    joints at t relative to the root's XZ, rotated to face +Z
rot                   (J-1)*6    local joint rotations at t, continuous 6D (two matrix columns)
local_velocity        J*3        joint displacement t -> t+1, in the root frame of t
foot_contact          4          left (2 joints) then right (2 joints), 1.0 = in contact
====================  =========  ========================================================

A motion of T frames gives T-1 feature rows; :func:`features_to_joints` of N rows gives N frames
(the first N processed frames).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lavimo.core.errors import BadInputError
from lavimo.core.keyids import check_keyid, child_path
from lavimo.core.restricted_unpickle import read_npy_file
from lavimo.dataset.motion import HUMANML3D, Skeleton, get_skeleton

if TYPE_CHECKING:  # pragma: no cover
    from lavimo.dataset.amass import AmassMotion
    from lavimo.dataset.clip import Clip

log = logging.getLogger(__name__)

__all__ = [
    "AMASS_TO_HUMANML3D", "amass_to_joints", "process_joints", "joints_to_features",
    "features_to_joints", "mirror_joints", "feature_stats", "clip_features",
]

# AMASS (Z up) -> HumanML3D (Y up): raw_pose_processing's trans_matrix [[1,0,0],[0,0,1],[0,1,0]] (swap Y and Z,
# a reflection), then its cropping step's data[..., 0] *= -1; together a proper rotation (det +1).
# Row vectors: joints_h = joints_amass @ AMASS_TO_HUMANML3D, i.e. (x, y, z) -> (-x, z, y).
AMASS_TO_HUMANML3D = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]) @ np.diag([-1.0, 1.0, 1.0])

_SMOOTH_SIGMA = 20.0   # gaussian smoothing (frames) of the facing direction for the rotation features
_NUM_BETAS = 10        # HumanML3D uses the first 10 shape coefficients


# -- quaternions (w, x, y, z), batched over any leading dims, float64 ----------------------------------------

def _qmul(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hamilton product q * r."""
    w1, x1, y1, z1 = np.moveaxis(q, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(r, -1, 0)
    return np.stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], axis=-1)


def _qinv(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def _qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4) (broadcasting)."""
    qv = q[..., 1:]
    uv = np.cross(qv, v)
    uuv = np.cross(qv, uv)
    return v + 2.0 * (q[..., :1] * uv + uuv)


def _qbetween(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """Shortest-arc unit quaternion rotating v0 onto v1 (..., 3) -> (..., 4).

    Same formula as the reference; the antiparallel case (where the reference returns NaN) gets a
    half turn about an axis perpendicular to v0.
    """
    v0, v1 = np.broadcast_arrays(v0, v1)
    cross = np.cross(v0, v1)
    n0 = np.sum(v0 * v0, axis=-1, keepdims=True)
    n1 = np.sum(v1 * v1, axis=-1, keepdims=True)
    w = np.sqrt(n0 * n1) + np.sum(v0 * v1, axis=-1, keepdims=True)
    q = np.concatenate([w, cross], axis=-1)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    bad = norm[..., 0] <= 1e-12 * np.maximum(np.sqrt(n0 * n1)[..., 0], 1e-300)
    if np.any(bad):
        a = v0[bad]
        axis = np.cross(a, np.array([1.0, 0.0, 0.0]))
        small = np.linalg.norm(axis, axis=-1) < 1e-6 * np.linalg.norm(a, axis=-1)
        axis[small] = np.cross(a[small], np.array([0.0, 1.0, 0.0]))
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        q[bad] = np.concatenate([np.zeros(axis.shape[:-1] + (1,)), axis], axis=-1)
        norm[bad] = 1.0
    return q / norm


def _quat_to_cont6d(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) -> continuous 6D: first and second rotation-matrix columns."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    two_s = 2.0 / np.sum(q * q, axis=-1)
    col0 = np.stack([1 - two_s * (y * y + z * z), two_s * (x * y + z * w), two_s * (x * z - y * w)], -1)
    col1 = np.stack([two_s * (x * y - z * w), 1 - two_s * (x * x + z * z), two_s * (y * z + x * w)], -1)
    return np.concatenate([col0, col1], axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# -- the reference algorithm ---------------------------------------------------------------------------------

def _check_joints(joints: Any, skel: Skeleton, field: str = "joints", min_frames: int = 2) -> np.ndarray:
    a = np.asarray(joints, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (skel.num_joints, 3):
        raise BadInputError(None, field, f"expected shape (T, {skel.num_joints}, 3) for skeleton "
                                         f"{skel.name!r}, got {a.shape}")
    if a.shape[0] < min_frames:
        raise BadInputError(None, field, f"needs at least {min_frames} frames, got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise BadInputError(None, field, "contains NaN/inf")
    return a


def _chain_order(skel: Skeleton) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(children, parents, parent-rotation index) for every non-root joint, in chain order.

    The parent-rotation index is the position (in ``children``) of the bone whose world rotation
    the child's local rotation is relative to, or -1 for the root rotation (first bone of a chain).
    """
    children, parents, prot = [], [], []
    pos: dict[int, int] = {}
    for chain in skel.chains:
        for k in range(1, len(chain)):
            pos[chain[k]] = len(children)
            children.append(chain[k])
            parents.append(chain[k - 1])
            prot.append(-1 if k == 1 else pos[chain[k - 1]])
    return np.array(children), np.array(parents), np.array(prot)


def _retarget(joints: np.ndarray, skel: Skeleton) -> np.ndarray:
    """HumanML3D's ``uniform_skeleton``: keep every bone's direction, set its length to the target
    skeleton's, scale the root trajectory by the leg-length ratio (target / this motion's frame 0)."""
    children, parents, _ = _chain_order(skel)
    bone0 = np.linalg.norm(joints[0, children] - joints[0, parents], axis=-1)
    src_len = np.zeros(skel.num_joints)
    src_len[children] = bone0
    src_off = np.abs(skel.raw_offsets * src_len[:, None])
    tgt_off = np.abs(skel.target_offsets)
    l1, l2 = skel.leg_joints
    src_leg = src_off[l1].max() + src_off[l2].max()
    if not src_leg > 0:
        raise BadInputError(None, "joints", "zero leg length in the first frame")
    scale = (tgt_off[l1].max() + tgt_off[l2].max()) / src_leg
    bones = joints[:, children] - joints[:, parents]
    lengths = np.linalg.norm(bones, axis=-1)
    if np.any(lengths <= 0):
        raise BadInputError(None, "joints", "zero-length bone (coincident joints)")
    dirs = bones / lengths[..., None] * skel.target_lengths[children][None, :, None]
    out = np.empty_like(joints)
    out[:, 0] = joints[:, 0] * scale
    for k, (c, p) in enumerate(zip(children, parents)):   # J-1 steps, each over all frames
        out[:, c] = out[:, p] + dirs[:, k]
    return out


def _facing_quat(joints: np.ndarray, skel: Skeleton, *, ik_order: bool, smooth: bool) -> np.ndarray:
    """(T, 4) rotation about Y taking the body's forward direction to +Z.

    ``ik_order`` reproduces the reference IK's unpacking of the face joints, which reverses the hip
    vector (across = (l_hip - r_hip) + (r_sh - l_sh)); the initial-facing step uses the consistent
    (r_hip - l_hip) + (r_sh - l_sh). ``smooth`` applies the reference's gaussian (sigma 20 frames,
    'nearest' borders) to the forward vectors.
    """
    r_hip, l_hip, r_sh, l_sh = skel.face_joints
    if ik_order:
        r_hip, l_hip = l_hip, r_hip
    across = (joints[:, r_hip] - joints[:, l_hip]) + (joints[:, r_sh] - joints[:, l_sh])
    across = _unit(across)
    forward = np.cross(np.array([0.0, 1.0, 0.0]), across)
    if smooth:
        forward = gaussian_filter1d(forward, _SMOOTH_SIGMA, axis=0, mode="nearest")
    forward = _unit(forward)
    return _qbetween(forward, np.array([0.0, 0.0, 1.0]))


def process_joints(joints: np.ndarray, skeleton: str | Skeleton = "humanml3d") -> np.ndarray:
    """Canonicalise (T, J, 3) Y-up joints (metres for humanml3d, mm for kit) as HumanML3D does: retarget to the
    reference skeleton (:func:`_retarget`), feet on the floor (global min height -> 0), frame-0 root at the XZ
    origin, facing +Z in frame 0. Returns (T, J, 3) float64 (the reference's "global positions")."""
    skel = get_skeleton(skeleton)
    pos = _retarget(_check_joints(joints, skel, min_frames=1), skel)
    pos[..., 1] -= pos[..., 1].min()
    pos -= pos[0, 0] * np.array([1.0, 0.0, 1.0])
    q0 = _facing_quat(pos[:1], skel, ik_order=False, smooth=False)
    return _qrot(q0[:, None], pos)


def _features_from_processed(pos: np.ndarray, skel: Skeleton) -> np.ndarray:
    """The feature rows (T-1, D) of processed joints (T, J, 3) (float64)."""
    t, j = pos.shape[:2]
    # foot contacts: squared displacement per frame below the threshold
    thr = skel.contact_threshold
    disp = np.sum((pos[1:] - pos[:-1]) ** 2, axis=-1)                       # (T-1, J)
    feet_l = (disp[:, list(skel.feet_left)] < thr).astype(np.float64)
    feet_r = (disp[:, list(skel.feet_right)] < thr).astype(np.float64)

    # inverse kinematics with the smoothed facing direction; as in the code that produced the
    # released HumanML3D files, frame 0's root rotation is the identity (it faces +Z by construction)
    root_q = _facing_quat(pos, skel, ik_order=True, smooth=True)             # (T, 4)
    root_q[0] = (1.0, 0.0, 0.0, 0.0)
    children, parents, prot = _chain_order(skel)
    raw = skel.raw_offsets[children]                                         # (J-1, 3)
    bone_dirs = _unit(pos[:, children] - pos[:, parents])                    # (T, J-1, 3)
    world = _qbetween(np.broadcast_to(raw, bone_dirs.shape), bone_dirs)      # (T, J-1, 4)
    parent_world = np.where((prot < 0)[None, :, None], root_q[:, None, :], world[:, np.maximum(prot, 0)])
    local = np.empty((t, j, 4))
    local[:, 0] = root_q
    local[:, children] = _qmul(_qinv(parent_world), world)
    cont6d = _quat_to_cont6d(local)                                          # (T, J, 6)

    # root velocities in the root frame
    velocity = _qrot(root_q[1:], pos[1:, 0] - pos[:-1, 0])                   # (T-1, 3)
    r_vel = _qmul(root_q[1:], _qinv(root_q[:-1]))
    r_ang = np.arcsin(np.clip(r_vel[:, 2:3], -1.0, 1.0))

    # rotation-invariant positions: relative to root XZ, facing +Z
    ric = pos.copy()
    ric[..., 0] -= pos[:, 0:1, 0]
    ric[..., 2] -= pos[:, 0:1, 2]
    ric = _qrot(root_q[:, None], ric)

    local_vel = _qrot(root_q[:-1, None], pos[1:] - pos[:-1])                  # (T-1, J, 3)

    return np.concatenate([
        r_ang, velocity[:, [0, 2]], ric[:-1, 0, 1:2],
        ric[:-1, 1:].reshape(t - 1, -1),
        cont6d[:-1, 1:].reshape(t - 1, -1),
        local_vel.reshape(t - 1, -1),
        feet_l, feet_r,
    ], axis=-1)


def joints_to_features(joints: np.ndarray, skeleton: str | Skeleton = "humanml3d") -> np.ndarray:
    """HumanML3D features (the reference ``process_file``) of (T, J, 3) joints, T >= 2, in HumanML3D axes (Y up;
    metres for "humanml3d", J=22 SMPL joints; millimetres for "kit", J=21 MMM joints) -> (T-1, 263 | 251) float32.
    Invariant to rotation about Y, horizontal translation and uniform scale. Raises BadInputError: wrong shape,
    fewer than 2 frames, NaN/inf, zero-length bones.
    """
    skel = get_skeleton(skeleton)
    pos = process_joints(_check_joints(joints, skel, min_frames=2), skel)
    feats = _features_from_processed(pos, skel)
    if not np.all(np.isfinite(feats)):
        raise BadInputError(None, "joints", "degenerate pose (features are not finite)")
    return feats.astype(np.float32)


def features_to_joints(features: np.ndarray, skeleton: str | Skeleton = "humanml3d") -> np.ndarray:
    """HumanML3D's ``recover_from_ric``: unnormalised (..., N, 263 | 251) features -> (..., N, 22 | 21, 3) float32
    joints, Y up (metres for humanml3d): root velocities integrated from the origin facing +Z, root height, and
    the rotation-invariant positions placed around the root."""
    skel = get_skeleton(skeleton)
    f = np.asarray(features, dtype=np.float64)
    if f.ndim < 2 or f.shape[-1] != skel.feature_dim:
        raise BadInputError(None, "features", f"expected shape (..., N, {skel.feature_dim}) for "
                                              f"skeleton {skel.name!r}, got {f.shape}")
    j = skel.num_joints
    ang = np.zeros(f.shape[:-1])
    ang[..., 1:] = f[..., :-1, 0]
    ang = np.cumsum(ang, axis=-1)
    q = np.zeros(f.shape[:-1] + (4,))
    q[..., 0] = np.cos(ang)
    q[..., 2] = np.sin(ang)
    qi = _qinv(q)
    step = np.zeros(f.shape[:-1] + (3,))
    step[..., 1:, 0] = f[..., :-1, 1]
    step[..., 1:, 2] = f[..., :-1, 2]
    r_pos = np.cumsum(_qrot(qi, step), axis=-2)
    r_pos[..., 1] = f[..., 3]
    ric = f[..., 4:4 + (j - 1) * 3].reshape(f.shape[:-1] + (j - 1, 3))
    ric = _qrot(qi[..., None, :], ric)
    ric[..., 0] += r_pos[..., None, 0]
    ric[..., 2] += r_pos[..., None, 2]
    return np.concatenate([r_pos[..., None, :], ric], axis=-2).astype(np.float32)


def mirror_joints(joints: np.ndarray, skeleton: str | Skeleton = "humanml3d") -> np.ndarray:
    """HumanML3D's ``swap_left_right`` (its ``M`` ids) of (..., J, 3) joints in HumanML3D axes: x (lateral)
    negated, left and right joints swapped. Same shape and dtype; mirroring twice gives the input back."""
    skel = get_skeleton(skeleton)
    a = np.array(joints, copy=True)
    if a.ndim < 2 or a.shape[-2:] != (skel.num_joints, 3):
        raise BadInputError(None, "joints", f"expected shape (..., {skel.num_joints}, 3), got {a.shape}")
    a[..., 0] *= -1
    right, left = list(skel.mirror_right), list(skel.mirror_left)
    tmp = a[..., right, :].copy()
    a[..., right, :] = a[..., left, :]
    a[..., left, :] = tmp
    return a


def feature_stats(arrays: Iterable[np.ndarray], skeleton: str | Skeleton = "humanml3d", *,
                  feat_bias: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation statistics in HumanML3D's convention (``cal_mean_variance``).

    ``arrays`` (N_i, D), D = 263 (humanml3d) or 251 (kit) -> (mean, std), each (D,) float32: the per-dimension
    mean over all rows, and the population std replaced inside each feature group by the group's average (1.0
    for a group with zero spread). ``feat_bias`` (HumanML3D's released ``Std.npy``: 1.0, the default;
    text-to-motion's training ``opt.feat_bias = 5``) divides the std of the root values and foot contacts.
    Arrays containing NaN are skipped with a warning, as the reference does.
    """
    skel = get_skeleton(skeleton)
    d = skel.feature_dim
    n_tot, mean, m2 = 0, np.zeros(d), np.zeros(d)
    for i, arr in enumerate(arrays):
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != d:
            raise BadInputError(None, f"arrays[{i}]", f"expected shape (N, {d}), got {a.shape}")
        if not np.all(np.isfinite(a)):
            log.warning("feature_stats: skipping array %d (contains NaN/inf)", i)
            continue
        n = a.shape[0]
        if n == 0:
            continue
        m = a.mean(axis=0)
        s = ((a - m) ** 2).sum(axis=0)
        delta = m - mean
        tot = n_tot + n
        mean = mean + delta * (n / tot)
        m2 = m2 + s + delta ** 2 * (n_tot * n / tot)
        n_tot = tot
    if n_tot == 0:
        raise BadInputError(None, "arrays", "no (finite) feature rows")
    std = np.sqrt(m2 / n_tot)
    out = np.empty(d)
    bias_groups = {"root_rot_velocity", "root_linear_velocity", "root_y", "foot_contact"}
    for name, sl in skel.feature_slices().items():
        g = std[sl].mean()
        if not g > 0:
            g = 1.0
        out[sl] = g / (feat_bias if name in bias_groups else 1.0)
    return mean.astype(np.float32), out.astype(np.float32)


# -- AMASS -> joints, and one call per clip ------------------------------------------------------------------

def amass_to_joints(motion: "AmassMotion", frames: Sequence[int] | np.ndarray, body: Any) -> np.ndarray:
    """SMPL-H forward kinematics on AMASS ``frames`` (indices, e.g. ``clip.frames``) of ``motion`` with ``body``
    (a ``lavimo.body.model.Body``), as HumanML3D's ``raw_pose_processing``: root orientation, body and hand pose,
    translation and the first 10 betas; the first 22 joints, mapped to Y up by :data:`AMASS_TO_HUMANML3D`.

    Returns (T, 22, 3) float32 joints, metres, Y up. Raises BadInputError: no frames, or indices out of range.
    """
    idx = np.asarray(frames, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise BadInputError(motion.path, "frames", "no frames selected")
    if idx.min() < 0 or idx.max() >= motion.num_frames:
        raise BadInputError(motion.path, "frames", f"frame indices must lie in [0, {motion.num_frames}), "
                                                   f"got [{idx.min()}, {idx.max()}]")
    out = body.pose(motion.poses[idx], motion.trans[idx], motion.betas[:_NUM_BETAS])
    joints = np.asarray(out.joints, dtype=np.float64)[:, :22]
    if joints.shape != (idx.size, 22, 3):
        raise BadInputError(motion.path, "poses", f"body returned joints of shape {joints.shape}")
    return (joints @ AMASS_TO_HUMANML3D).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _cached_body(model_dir: str | None, model_type: str, gender: str) -> Any:
    from lavimo.body.model import load_body  # the body-model code shared with rendering

    return load_body(model_dir, model_type=model_type, gender=gender, num_betas=_NUM_BETAS)


def _body_for(motion: "AmassMotion", body: Any) -> Any:
    """A body to pose ``motion`` with: procedural (None), a body-model directory in smplx's layout (the motion's
    model type, SMPL-H for 156-dim poses, gendered as HumanML3D: male for "male", female otherwise), or a ready
    ``Body``."""
    if body is not None and hasattr(body, "pose"):
        return body
    if body is None:
        return _cached_body(None, "smplh", "neutral")
    gender = "male" if motion.gender == "male" else "female"
    return _cached_body(os.fspath(body), motion.model_type, gender)


def _read_vecs(path: Path, skel: Skeleton) -> np.ndarray:
    if not path.is_file():
        raise BadInputError(path, None, "file not found")
    try:
        a = read_npy_file(path, "features")  # header checked against the file's size before allocating
    except OSError as e:
        raise BadInputError(path, None, f"unreadable .npy ({e})") from e
    if a.ndim != 2 or a.shape[1] != skel.feature_dim or a.shape[0] < 1:
        raise BadInputError(path, "features", f"expected shape (N, {skel.feature_dim}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise BadInputError(path, "features", "contains NaN/inf")
    return a.astype(np.float32)


def clip_features(clip: "Clip", amass_root: str | os.PathLike | None, body: Any = None,
                  humanml3d_vecs: str | os.PathLike | None = None,
                  skeleton: str | Skeleton = "humanml3d") -> np.ndarray:
    """The (T-1, 263 | 251) float32 feature rows of one clip (one call per clip, for build-shards).

    With ``humanml3d_vecs`` (a HumanML3D/KIT-ML ``new_joint_vecs`` directory) it reads ``<keyid>.npy`` there as
    is (``M`` keyids are HumanML3D's mirrored files); otherwise ``load_amass(amass_root / clip.amass_path)``, the
    clip's frames (``clip.frames``, or resolved against the file), :func:`amass_to_joints`, :func:`mirror_joints`
    when ``clip.mirrored``, :func:`joints_to_features`. ``body``: see :func:`_body_for` (loaded once, cached).
    ``skeleton`` "kit" (251) only from ``humanml3d_vecs`` (AMASS bodies give SMPL joints).
    Raises BadInputError naming the file and field (missing/bad AMASS or features file, bad frames).
    """
    skel = get_skeleton(skeleton)
    if humanml3d_vecs is not None:
        return _read_vecs(child_path(humanml3d_vecs, f"{check_keyid(clip.keyid)}.npy"), skel)
    if skel.name != HUMANML3D.name:
        raise ValueError(f"skeleton {skel.name!r} features can only be read from a new_joint_vecs "
                         "directory (AMASS bodies give the 22-joint humanml3d skeleton)")
    if amass_root is None:
        raise ValueError("clip_features needs amass_root (or humanml3d_vecs)")
    from lavimo.dataset.amass import load_amass

    path = Path(amass_root) / clip.amass_path
    motion = load_amass(path)
    frames = clip.frames if clip.frames is not None else clip.resolve(motion.num_frames, motion.fps).frames
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size < 2:
        raise BadInputError(path, "frames", f"clip {clip.keyid} has {frames.size} frame(s); needs >= 2")
    joints = amass_to_joints(motion, frames, _body_for(motion, body))
    if clip.mirrored:
        joints = mirror_joints(joints, skel)
    try:
        return joints_to_features(joints, skel)
    except BadInputError as e:
        raise BadInputError(path, e.field, f"clip {clip.keyid}: {e.message}") from e

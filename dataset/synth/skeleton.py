"""Forward kinematics on an approximate SMPL rest skeleton, for the synthetic corpus.

The joint tree and rest joints are :mod:`lavimo.body.skeleton`'s generator table (:data:`REST_JOINTS`, metres,
SMPL's rest frame: **Y-up**, facing +Z, left at +X, exactly symmetric; a real SMPL-H body is within a few cm).

AMASS convention reproduced here: a body's world joints are
``trans + J0 + R_root @ (J_k - J0)`` chained down the tree, where ``J0`` (the pelvis rest location) is
**not** rotated by the root orientation, and the world frame is **Z-up** (so an upright body's root
orientation contains a +90 degree rotation about X).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from lavimo.body.skeleton import JOINT_NAMES, PARENTS, SYNTH_REST_JOINTS

#: the generator's rest skeleton (see lavimo.body.skeleton's docstring for why it is not THE rest joints)
REST_JOINTS = SYNTH_REST_JOINTS
OFFSETS = np.concatenate([REST_JOINTS[:1], REST_JOINTS[1:] - REST_JOINTS[PARENTS[1:]]])

# Points of the soles that touch the floor, as (joint, offset in that joint's rest frame):
# heels under/behind the ankles, toe tips in front of the foot joints. At rest all lie at y = -1.185.
SOLE_POINTS = ((7, (0.0, -0.075, -0.045)), (8, (0.0, -0.075, -0.045)),
               (10, (0.0, -0.025, 0.060)), (11, (0.0, -0.025, 0.060)))
REST_FLOOR_Y = -1.185

# Rough per-joint limits on the rotation angle relative to the parent (degrees), for checks.
JOINT_LIMIT_DEG = {
    1: 130, 2: 130, 3: 50, 4: 150, 5: 150, 6: 40, 7: 60, 8: 60, 9: 40, 10: 75, 11: 75, 12: 50,
    13: 35, 14: 35, 15: 60, 16: 175, 17: 175, 18: 150, 19: 150, 20: 80, 21: 80,
}

Z_UP = Rotation.from_euler("x", 90, degrees=True).as_matrix()  # SMPL Y-up body -> AMASS Z-up world


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues)."""
    rv = np.asarray(rv, dtype=np.float64)
    a = np.linalg.norm(rv, axis=-1)[..., None, None]
    x, y, z = rv[..., 0], rv[..., 1], rv[..., 2]
    o = np.zeros_like(x)
    K = np.stack([np.stack([o, -z, y], -1), np.stack([z, o, -x], -1), np.stack([-y, x, o], -1)], -2)
    small = a < 1e-8
    a_safe = np.where(small, 1.0, a)
    s1 = np.where(small, 1.0, np.sin(a_safe) / a_safe)
    s2 = np.where(small, 0.5, (1 - np.cos(a_safe)) / a_safe ** 2)
    return np.eye(3) + s1 * K + s2 * (K @ K)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3) with angle in [0, pi] (via quaternions)."""
    R = np.asarray(R, dtype=np.float64)
    m = R.reshape(-1, 3, 3)
    tr = np.trace(m, axis1=1, axis2=2)
    diag = np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)
    choice = np.argmax(np.concatenate([diag, tr[:, None]], -1), axis=-1)
    q = np.empty((len(m), 4))  # x, y, z, w
    i = choice == 3
    q[i, 3] = 1 + tr[i]
    q[i, 0] = m[i, 2, 1] - m[i, 1, 2]
    q[i, 1] = m[i, 0, 2] - m[i, 2, 0]
    q[i, 2] = m[i, 1, 0] - m[i, 0, 1]
    for k in range(3):
        i = choice == k
        if not i.any():
            continue
        k1, k2 = (k + 1) % 3, (k + 2) % 3
        q[i, k] = 1 - tr[i] + 2 * m[i, k, k]
        q[i, k1] = m[i, k1, k] + m[i, k, k1]
        q[i, k2] = m[i, k2, k] + m[i, k, k2]
        q[i, 3] = m[i, k2, k1] - m[i, k1, k2]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= np.where(q[:, 3:] < 0, -1.0, 1.0)
    vn = np.linalg.norm(q[:, :3], axis=-1)
    ang = 2 * np.arctan2(vn, q[:, 3])
    scale = np.where(vn < 1e-12, 2.0, ang / np.maximum(vn, 1e-300))
    return (q[:, :3] * scale[:, None]).reshape(*R.shape[:-2], 3)


def forward_kinematics(poses: np.ndarray, trans: np.ndarray | None = None,
                       extra_points: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """World joints of AMASS poses (T, >=66) axis-angle radians (root + 21 body joints first) with ``trans``
    (T, 3) metres (None = zeros) on the approximate rest skeleton -> joints (T, 22, 3) and, with
    ``extra_points``, the sole points (T, 4, 3) [left heel, right heel, left toe, right toe] (else (T, 0, 3)),
    metres in the AMASS world frame (Z-up), translation applied."""
    poses = np.asarray(poses, dtype=np.float64)
    T = poses.shape[0]
    rots = rotvec_to_matrix(poses[:, :66].reshape(T, 22, 3))
    glob = np.empty((T, 22, 3, 3))
    pos = np.empty((T, 22, 3))
    glob[:, 0] = rots[:, 0]
    pos[:, 0] = REST_JOINTS[0]
    for j in range(1, 22):
        p = PARENTS[j]
        glob[:, j] = glob[:, p] @ rots[:, j]
        pos[:, j] = pos[:, p] + glob[:, p] @ OFFSETS[j]
    if trans is not None:
        pos = pos + np.asarray(trans, dtype=np.float64)[:, None, :]
    if not extra_points:
        return pos, np.zeros((T, 0, 3))
    soles = np.stack([pos[:, j] + glob[:, j] @ np.asarray(off) for j, off in SOLE_POINTS], axis=1)
    return pos, soles


def joint_angles_deg(poses: np.ndarray) -> np.ndarray:
    """(T, 21) rotation angle of each body joint 1..21 relative to its parent, degrees."""
    body = np.asarray(poses)[:, 3:66].reshape(len(poses), 21, 3)
    return np.degrees(np.linalg.norm(body, axis=-1))


def limit_violations(poses: np.ndarray, margin_deg: float = 0.0) -> dict[str, float]:
    """{joint name: worst angle} for joints exceeding :data:`JOINT_LIMIT_DEG` (+ margin); {} if none.

    Also flags hyper-extended knees/elbows (bending the wrong way by more than 10 degrees).
    """
    ang = joint_angles_deg(poses)
    bad = {}
    for j, lim in JOINT_LIMIT_DEG.items():
        worst = float(ang[:, j - 1].max())
        if worst > lim + margin_deg:
            bad[JOINT_NAMES[j]] = worst
    body = np.asarray(poses)[:, 3:66].reshape(len(poses), 21, 3)
    for j in (4, 5):  # knees flex about +X
        if np.degrees(body[:, j - 1, 0].min()) < -10:
            bad[JOINT_NAMES[j] + " (hyperextended)"] = float(np.degrees(body[:, j - 1, 0].min()))
    for j, sign in ((18, -1), (19, 1)):  # elbows flex about -Y (left) / +Y (right)
        if np.degrees((sign * body[:, j - 1, 1]).min()) < -10:
            bad[JOINT_NAMES[j] + " (hyperextended)"] = float(np.degrees((sign * body[:, j - 1, 1]).min()))
    return bad

"""Turning joint-angle channels into AMASS poses and a grounded, foot-locked root translation.

A :class:`Rig` holds per-frame channels in **degrees** in SMPL's rest frame (Y-up, facing +Z, left = +X),
authored for the left limb and mirrored for the right one:

* root: ``yaw`` (turn left/counterclockwise seen from above = +), ``pitch`` (lean forward +), ``roll``
  (lean to the body's left +);
* spine: ``spine_flex`` (bend forward +), ``spine_side`` (bend to the left +), ``spine_twist`` (turn the
  chest left +), ``neck_flex``, ``neck_twist``;
* per side ``l_``/``r_``: ``hip_flex`` (thigh forward +), ``hip_abd`` (thigh outward +), ``hip_twist``,
  ``knee`` (flex +), ``ankle`` (plantar flexion +), ``toe`` (toes up +), ``collar_up``, ``sh_flex`` (arm
  forward/up +), ``sh_abd`` (arm sideways/up +, 0 = hanging), ``sh_ext`` (external rotation +), ``elbow``
  (flex +), ``wrist``, ``curl`` (finger curl, 0 = flat .. 1 = fist);
* optional arm IK: ``rig.arm_ik[side] = (targets, poles)``, wrist targets (T, 3) in metres relative to the
  spine3 joint in the chest frame (left-arm convention; mirrored for the right arm);
* ``lift`` (T,) metres above the floor (airborne phases), ``contact`` (T,) 1 = feet on the floor,
  ``flight_v`` (T, 2) m/s in the heading frame (forward, left) used while not in contact
  (``auto_flight`` = continue at the average stance speed); ``support`` (T, 2) optional planned stance
  weights of the left/right foot, used instead of "the lowest foot" for the foot lock; ``lock_window``
  (seconds) smooths the foot-locked motion; ``travel`` (forward, left) is a gait's direction of travel
  in the heading frame: the foot lock never moves the body against it (a landing foot slips instead).

:func:`assemble` converts a rig to ``poses`` (T, 156) and ``trans`` (T, 3) (AMASS, Z-up): the lowest sole
point is put on the floor (z = 0) plus ``lift``, and the horizontal root motion is integrated so the
supporting foot does not slide (walking translates the body consistently with its steps).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.ndimage import uniform_filter1d

from lavimo.dataset.synth.skeleton import OFFSETS, REST_JOINTS, Z_UP, forward_kinematics, matrix_to_rotvec

_MIRROR = np.diag([-1.0, 1.0, 1.0])
FLOOR_TOLERANCE = 0.01  # metres a sole may dip below the floor where the grounding is smoothed
_L1 = float(np.linalg.norm(OFFSETS[18]))
_L2 = float(np.linalg.norm(OFFSETS[20]))


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 for x <= 0, 1 for x >= 1, C1-smooth in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def bump(u: np.ndarray) -> np.ndarray:
    """sin^2 bump on u in [0, 1] (0 outside), zero value and slope at both ends."""
    inside = (u > 0) & (u < 1)
    return np.where(inside, np.sin(np.pi * np.clip(u, 0, 1)) ** 2, 0.0)


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _d(x):
    return np.radians(x)


class Rig:
    """Channels of one motion: ``T`` frames at ``fps`` (see the module docstring for the channels)."""

    def __init__(self, num_frames: int, fps: float):
        self.T = int(num_frames)
        self.fps = float(fps)
        self.t = np.arange(self.T) / self.fps
        self.ch: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(self.T))
        self.arm_ik: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.lift = np.zeros(self.T)
        self.contact = np.ones(self.T)
        self.flight_v = np.zeros((self.T, 2))
        self.auto_flight = False
        self.support: np.ndarray | None = None  # (T, 2) planned stance weights of the left/right foot
        self.lock_window = 0.0  # seconds; > 0 averages the foot-lock motion over it
        self.travel: tuple[float, float] | None = None  # heading-frame travel direction of a gait

    def __getitem__(self, k: str) -> np.ndarray:
        return self.ch[k]

    def __setitem__(self, k: str, v) -> None:
        self.ch[k] = np.broadcast_to(np.asarray(v, dtype=np.float64), (self.T,)).copy()

    def add(self, k: str, v) -> None:
        self.ch[k] = self.ch[k] + v

    def sides(self, side: str) -> tuple[str, str]:
        """("l", "r") prefixes ordered (active, other) for side "left"/"right"."""
        return ("l", "r") if side == "left" else ("r", "l")

    def window(self, start: float, length: float) -> np.ndarray:
        """Progress in [0, 1] over [start, start + length] seconds (clipped)."""
        return np.clip((self.t - start) / max(length, 1e-6), 0.0, 1.0)

    def reps(self, start: float, period: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(u, k): progress u in [0, 1) inside the current repetition and its index k (-1 outside)."""
        x = (self.t - start) / period
        k = np.floor(x).astype(int)
        inside = (x >= 0) & (k < n)
        u = np.where(inside, x - k, 0.0)
        return u, np.where(inside, k, -1)


def standing(rig: Rig, rng: np.random.Generator) -> None:
    """Relaxed standing posture (with small per-motion variation)."""
    for s in ("l", "r"):
        rig.add(f"{s}_sh_abd", 8 + rng.uniform(-2, 4))
        rig.add(f"{s}_sh_flex", rng.uniform(-2, 4))
        rig.add(f"{s}_elbow", 10 + rng.uniform(0, 8))
        knee = 2 + rng.uniform(0, 3)
        rig.add(f"{s}_knee", knee)
        rig.add(f"{s}_ankle", -knee)  # keep the sole flat
        rig.add(f"{s}_curl", 0.25 + rng.uniform(0, 0.1))
    rig.add("neck_flex", rng.uniform(-3, 5))


def _arm_ik(targets: np.ndarray, poles: np.ndarray, collar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-arm two-bone IK: wrist targets (T,3) relative to spine3 -> (shoulder R (T,3,3), elbow rad)."""
    shoulder = (REST_JOINTS[16] - REST_JOINTS[13])
    base = REST_JOINTS[13] - REST_JOINTS[9]
    v = targets - (base + np.einsum("tij,j->ti", collar, shoulder))
    v = np.einsum("tji,tj->ti", collar, v)  # into the collar frame
    pol = np.einsum("tji,tj->ti", collar, poles)
    d = np.clip(np.linalg.norm(v, axis=-1), abs(_L1 - _L2) + 0.05, _L1 + _L2 - 1e-3)
    th = v / np.linalg.norm(v, axis=-1, keepdims=True)
    q = pol - np.sum(pol * th, -1, keepdims=True) * th
    q /= np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-9)
    cos_a = np.clip((_L1 ** 2 + d ** 2 - _L2 ** 2) / (2 * _L1 * d), -1, 1)
    sin_a = np.sqrt(1 - cos_a ** 2)
    u = cos_a[:, None] * th + sin_a[:, None] * q
    w = sin_a[:, None] * th - cos_a[:, None] * q
    R = np.stack([u, np.cross(w, u), w], axis=-1)  # columns: local x, y, z
    interior = np.arccos(np.clip((_L1 ** 2 + _L2 ** 2 - d ** 2) / (2 * _L1 * _L2), -1, 1))
    return R, np.pi - interior


def _side_rots(rig: Rig, s: str) -> dict[int, np.ndarray]:
    """Local rotations (left convention) of one side's joints, keyed by the LEFT joint index."""
    c = rig.ch
    out = {
        1: _rz(_d(c[f"{s}_hip_abd"])) @ _rx(_d(-c[f"{s}_hip_flex"])) @ _ry(_d(c[f"{s}_hip_twist"])),
        4: _rx(_d(c[f"{s}_knee"])),
        7: _rx(_d(c[f"{s}_ankle"])),
        10: _rx(_d(-c[f"{s}_toe"])),
        13: _rz(_d(c[f"{s}_collar_up"])),
        18: _ry(_d(-c[f"{s}_elbow"])),
        20: _rz(_d(-c[f"{s}_wrist"])),
    }
    if s in rig.arm_ik:
        targets, poles = rig.arm_ik[s]  # left-arm convention for both sides (the right arm is mirrored)
        R, e = _arm_ik(np.asarray(targets, float), np.asarray(poles, float), out[13])
        out[16], out[18] = R, _ry(-e)
    else:
        out[16] = (_rx(_d(-c[f"{s}_sh_flex"])) @ _rz(_d(c[f"{s}_sh_abd"] - 90.0))
                   @ _rx(_d(-c[f"{s}_sh_ext"])))
    return out


def rig_to_poses(rig: Rig) -> np.ndarray:
    """Channels -> AMASS SMPL-H poses (T, 156) axis-angle (root orientation includes the Z-up turn)."""
    T, c = rig.T, rig.ch
    R = np.empty((T, 22, 3, 3))
    R[:, 0] = Z_UP @ _ry(_d(c["yaw"])) @ _rx(_d(c["pitch"])) @ _rz(_d(-c["roll"]))
    for j, w in ((3, 0.4), (6, 0.35), (9, 0.25)):
        R[:, j] = _rx(_d(w * c["spine_flex"])) @ _rz(_d(-w * c["spine_side"])) @ _ry(_d(w * c["spine_twist"]))
    R[:, 12] = _rx(_d(0.5 * c["neck_flex"])) @ _ry(_d(0.4 * c["neck_twist"]))
    R[:, 15] = _rx(_d(0.5 * c["neck_flex"])) @ _ry(_d(0.6 * c["neck_twist"]))
    hands = np.zeros((T, 30, 3))
    for s, off in (("l", 0), ("r", 1)):
        for j, rot in _side_rots(rig, s).items():
            R[:, j + off] = rot if s == "l" else _MIRROR @ rot @ _MIRROR
        # fingers: SMPL-H hand joints (15 per hand: 4 fingers x 3 segments, then the thumb x 3).
        # Single-axis rotations, so their axis-angle is written directly (mirrored: y, z negated).
        curl = np.clip(c[f"{s}_curl"], 0.0, 1.2)
        sign = 1.0 if s == "l" else -1.0
        for f in range(12):
            hands[:, 15 * off + f, 2] = sign * _d(-(60.0 if f % 3 == 0 else 75.0) * curl)
        thumb = matrix_to_rotvec(_ry(_d(-25.0 * curl)) @ _rz(_d(-10.0 * curl)))
        hands[:, 15 * off + 12: 15 * off + 15] = (thumb * [1.0, sign, sign])[:, None, :]
    rv = matrix_to_rotvec(R)
    rv[:, 0] = _unwrap_rotvec(rv[:, 0])
    return np.concatenate([rv.reshape(T, 66), hands.reshape(T, 90)], axis=1)


def _unwrap_rotvec(rv: np.ndarray) -> np.ndarray:
    """Make a rotation-vector sequence continuous: consistent axis orientation, angle unwrapped by 2*pi.

    (r and axis * (|r| - 2*pi) are the same rotation; AMASS files themselves may jump between them.)
    """
    ang = np.linalg.norm(rv, axis=-1)
    if len(rv) < 2 or np.any(ang < 1e-6):
        return rv
    axis = rv / ang[:, None]
    flips = np.sign(np.sum(axis[1:] * axis[:-1], axis=-1))
    flips[flips == 0] = 1.0
    sign = np.concatenate([[1.0], np.cumprod(flips)])
    ang = np.unwrap(ang * sign)
    return axis * sign[:, None] * ang[:, None]


def heading_vectors(yaw_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (AMASS, Z-up) unit forward and left vectors (T, 2) of a body with that yaw."""
    y = _d(yaw_deg)
    fwd = np.stack([np.sin(y), -np.cos(y)], -1)
    left = np.stack([np.cos(y), np.sin(y)], -1)
    return fwd, left


def _flight_z0(z0: np.ndarray, contact: np.ndarray) -> np.ndarray:
    """Pelvis grounding offset with flight phases bridged linearly (the body, not the feet, flies).

    Never lower than the pose's own grounding, so the soles stay above the floor.
    """
    out = z0.copy()
    air = contact < 0.5
    t, T = 0, len(z0)
    while t < T:
        if not air[t]:
            t += 1
            continue
        e = t
        while e < T and air[e]:
            e += 1
        a = z0[t - 1] if t > 0 else z0[min(e, T - 1)]
        b = z0[e] if e < T else a
        x = (np.arange(t, e) - (t - 1)) / (e - t + 1)
        out[t:e] = np.maximum(a + (b - a) * x, z0[t:e])
        t = e
    return out


def assemble(rig: Rig, softness: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """Rig -> (poses (T, 156), trans (T, 3)) with the feet on the floor and foot-locked root motion.

    The lowest of the four sole points is at z = 0 (+ ``rig.lift``), within :data:`FLOOR_TOLERANCE`
    where the grounding is smoothed over 0.1 s. While in contact, the root moves
    horizontally so the sole points keep their place, weighted towards the lowest ones
    (softmin with ``softness`` metres); in flight it moves with ``rig.flight_v``.
    The horizontal path is centred on the origin (midpoint of its extent).
    """
    poses = rig_to_poses(rig)
    _, soles = forward_kinematics(poses, None)
    z0 = -soles[..., 2].min(axis=1)
    # soften the kinks where the lowest point changes foot (landings) by <= FLOOR_TOLERANCE metres
    win = max(1, int(round(0.1 * rig.fps)))
    z0 = np.maximum(uniform_filter1d(z0, win, mode="nearest"), z0 - FLOOR_TOLERANCE)
    h = soles[..., 2] + z0[:, None]
    w = np.exp(-(h - h.min(axis=1, keepdims=True)) / softness)
    if rig.support is not None:  # planned stance foot (gaits): heel/toe of each foot by height, feet by plan
        w = w + 1e-12
        for f, cols in ((0, [0, 2]), (1, [1, 3])):
            w[:, cols] = w[:, cols] / w[:, cols].sum(axis=1, keepdims=True) * rig.support[:, f:f + 1]
    w /= w.sum(axis=1, keepdims=True)
    wm = 0.5 * (w[1:] + w[:-1])
    d_lock = -np.sum(wm[..., None] * (soles[1:, :, :2] - soles[:-1, :, :2]), axis=1)  # (T-1, 2) per frame
    if rig.travel is not None:  # a gait never pushes the body against its travel direction
        fwd, left = heading_vectors(rig.ch["yaw"])
        dirw = fwd * rig.travel[0] + left * rig.travel[1]
        dirw = 0.5 * (dirw[1:] + dirw[:-1])
        comp = np.sum(d_lock * dirw, axis=1, keepdims=True)
        d_lock = d_lock - np.minimum(comp, 0.0) * dirw
    if rig.lock_window > 0:  # steady travel at the stepping's average speed (feet may slip a little)
        d_lock = uniform_filter1d(d_lock, max(1, int(round(rig.lock_window * rig.fps))), axis=0, mode="nearest")
    c = np.clip(0.5 * (rig.contact[1:] + rig.contact[:-1]), 0, 1)[:, None]
    if rig.auto_flight:
        win = max(3, int(round(0.8 * rig.fps)))
        num = uniform_filter1d(d_lock * c, win, axis=0, mode="nearest")
        den = uniform_filter1d(np.repeat(c, 2, axis=1), win, axis=0, mode="nearest")
        d_fly = num / np.maximum(den, 1e-6)
    else:
        fwd, left = heading_vectors(rig.ch["yaw"])
        v = fwd * rig.flight_v[:, :1] + left * rig.flight_v[:, 1:]
        d_fly = 0.5 * (v[1:] + v[:-1]) / rig.fps
    step = c * d_lock + (1 - c) * d_fly
    xy = np.concatenate([np.zeros((1, 2)), np.cumsum(step, axis=0)])
    xy -= 0.5 * (xy.min(axis=0) + xy.max(axis=0))
    trans = np.concatenate([xy, (_flight_z0(z0, rig.contact) + rig.lift)[:, None]], axis=1)
    return poses, trans

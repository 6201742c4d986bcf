"""Skeleton definitions for the motion features: joint chains, raw offsets, reference bone lengths.

Two skeletons, as in HumanML3D (Guo et al., 2022) and its KIT-ML variant:

* ``"humanml3d"``: the first 22 SMPL body joints (pelvis, hips, spine, knees, ..., wrists), joints in
  **metres**, HumanML3D axes (**Y up**, the body initially faces **+Z**; SMPL's left side is +X).
  Feature vector: 4 + 21*3 + 21*6 + 22*3 + 4 = 263 values per frame.
* ``"kit"``: the 21 MMM joints of KIT-ML (pelvis, torso, neck, head, arms, legs with two foot joints),
  joints in **millimetres** (KIT-ML's unit), Y up. Feature vector: 4 + 20*3 + 20*6 + 21*3 + 4 = 251.

The algorithm in :mod:`lavimo.dataset.features` is the same for both; only these numbers differ.
Joint indices (humanml3d / SMPL): 0 pelvis, 1 l_hip, 2 r_hip, 3 spine1, 4 l_knee, 5 r_knee, 6 spine2,
7 l_ankle, 8 r_ankle, 9 spine3, 10 l_foot, 11 r_foot, 12 neck, 13 l_collar, 14 r_collar, 15 head,
16 l_shoulder, 17 r_shoulder, 18 l_elbow, 19 r_elbow, 20 l_wrist, 21 r_wrist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Skeleton", "HUMANML3D", "KIT", "SKELETONS", "get_skeleton"]


@dataclass(frozen=True)
class Skeleton:
    """A skeleton for the HumanML3D-style motion representation.

    Attributes:
        name: "humanml3d" or "kit".
        chains: kinematic chains (joint indices, each starting at its parent joint). As in the
            reference, the first bone of every chain is expressed relative to the *root* rotation,
            even for chains that start at a non-root joint (the arm chains start at spine3/neck).
        raw_offsets: (J, 3) unit rest-pose bone directions (the bone ending at joint j), Y up.
        target_lengths: (J,) bone lengths of the reference skeleton that every motion is retargeted
            to (length of the bone ending at joint j; 0 for the root), in the skeleton's unit.
        leg_joints: the two joints whose bone lengths give the leg length (retargeting scale).
        feet_left, feet_right: joints used for the foot-contact flags.
        face_joints: (r_hip, l_hip, r_shoulder, l_shoulder), used to find the facing direction.
        contact_threshold: squared per-frame foot displacement below which a foot is in contact,
            in the skeleton's unit squared (0.002 m^2 for humanml3d, 0.05 mm^2 for kit).
        mirror_right, mirror_left: joints swapped by :func:`lavimo.dataset.features.mirror_joints`.
        unit: "m" or "mm".
    """

    name: str
    chains: tuple[tuple[int, ...], ...]
    raw_offsets: np.ndarray = field(repr=False)
    target_lengths: np.ndarray = field(repr=False)
    leg_joints: tuple[int, int]
    feet_left: tuple[int, int]
    feet_right: tuple[int, int]
    face_joints: tuple[int, int, int, int]
    contact_threshold: float
    mirror_right: tuple[int, ...]
    mirror_left: tuple[int, ...]
    unit: str

    @property
    def num_joints(self) -> int:
        return int(self.raw_offsets.shape[0])

    @property
    def feature_dim(self) -> int:
        """Values per feature row: 4 root + (J-1)*3 ric + (J-1)*6 rot + J*3 velocity + 4 contacts."""
        j = self.num_joints
        return 4 + (j - 1) * 9 + j * 3 + 4

    @property
    def parents(self) -> np.ndarray:
        """(J,) int parent index of every joint (-1 for the root)."""
        par = np.full(self.num_joints, -1, dtype=np.int64)
        for chain in self.chains:
            for a, b in zip(chain[:-1], chain[1:]):
                par[b] = a
        return par

    @property
    def target_offsets(self) -> np.ndarray:
        """(J, 3) reference skeleton offsets: raw unit offsets times the target bone lengths."""
        return self.raw_offsets * self.target_lengths[:, None]

    def feature_slices(self) -> dict[str, slice]:
        """Column ranges of the feature groups, in order (HumanML3D's layout)."""
        j = self.num_joints
        bounds = [("root_rot_velocity", 1), ("root_linear_velocity", 2), ("root_y", 1),
                  ("ric", (j - 1) * 3), ("rot", (j - 1) * 6), ("local_velocity", j * 3),
                  ("foot_contact", 4)]
        out, start = {}, 0
        for name, width in bounds:
            out[name] = slice(start, start + width)
            start += width
        return out


def _offsets(rows: list[tuple[int, int, int]]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    a.setflags(write=False)
    return a


def _lengths(values: list[float]) -> np.ndarray:
    a = np.asarray([0.0, *values], dtype=np.float64)
    a.setflags(write=False)
    return a


# Reference bone lengths (metres) of HumanML3D's target skeleton (first frame of motion 000021), for
# joints 1..21. Derived once, offline, from HumanML3D's new_joints/012314.npy: that file
# holds joints already retargeted to the reference skeleton, so every frame has exactly its bone
# lengths (per-bone spread across the 170 frames < 2e-6 m, float32 noise); the values are the mean
# over frames of ||joint - parent|| in float64, rounded to 1e-7 m.
_HUMANML3D_LENGTHS = [
    0.1030740, 0.1098834, 0.1315682, 0.3936232, 0.3901882, 0.1431902, 0.4324330, 0.4256434,
    0.0573647, 0.1433818, 0.1494191, 0.2193600, 0.1374868, 0.1433828, 0.1030392, 0.1316140,
    0.1229844, 0.2568399, 0.2630919, 0.2660118, 0.2698763,
]

HUMANML3D = Skeleton(
    name="humanml3d",
    chains=((0, 2, 5, 8, 11), (0, 1, 4, 7, 10), (0, 3, 6, 9, 12, 15), (9, 14, 17, 19, 21),
            (9, 13, 16, 18, 20)),
    raw_offsets=_offsets([
        (0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0), (0, 1, 0), (0, -1, 0),
        (0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1),
        (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0),
    ]),
    target_lengths=_lengths(_HUMANML3D_LENGTHS),
    leg_joints=(5, 8),            # right knee, right ankle: thigh + shin length
    feet_left=(7, 10),            # left ankle, left foot
    feet_right=(8, 11),           # right ankle, right foot
    face_joints=(2, 1, 17, 16),   # r_hip, l_hip, r_shoulder, l_shoulder
    contact_threshold=0.002,
    mirror_right=(2, 5, 8, 11, 14, 17, 19, 21),
    mirror_left=(1, 4, 7, 10, 13, 16, 18, 20),
    unit="m",
)

# KIT-ML (MMM) skeleton, millimetres. Chains, raw offsets, leg/feet/face joints and the contact
# threshold (0.05) are those of the reference KIT-ML processing. Its target skeleton is the first frame
# of KIT motion 03950, which is not available here, so the bone lengths below are an APPROXIMATION
# from Winter's body-segment proportions of the body height H ("Biomechanics and Motor Control of Human
# Movement", Fig. 4.1; the basis of the MMM reference model) for H = 1750 mm:
#   pelvis->torso 0.100H, torso->lower neck 0.168H, lower->upper neck 0.052H, neck->head 0.066H,
#   neck->shoulder 0.1295H (half shoulder width 0.259H), upper arm 0.186H, forearm 0.146H,
#   pelvis->hip 0.050H, thigh 0.245H, shank 0.246H, ankle->ball 0.090H, ball->toe 0.035H.
# KIT features computed here therefore follow the reference algorithm exactly but are not
# numerically identical to KIT-ML's released new_joint_vecs (different target bone lengths).
_H_KIT = 1750.0
_KIT_FRACTIONS = [
    0.100, 0.168, 0.052, 0.066,          # 1 torso, 2 lower neck, 3 upper neck, 4 head
    0.1295, 0.186, 0.146,                # 5 r_shoulder, 6 r_elbow, 7 r_wrist (chain from 3)
    0.1295, 0.186, 0.146,                # 8 l_shoulder, 9 l_elbow, 10 l_wrist
    0.050, 0.245, 0.246, 0.090, 0.035,   # 11 r_hip, 12 r_knee, 13 r_ankle, 14 r_ball, 15 r_toe
    0.050, 0.245, 0.246, 0.090, 0.035,   # 16 l_hip, 17 l_knee, 18 l_ankle, 19 l_ball, 20 l_toe
]

KIT = Skeleton(
    name="kit",
    chains=((0, 11, 12, 13, 14, 15), (0, 16, 17, 18, 19, 20), (0, 1, 2, 3, 4), (3, 5, 6, 7),
            (3, 8, 9, 10)),
    raw_offsets=_offsets([
        (0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0),
        (-1, 0, 0), (0, -1, 0), (0, -1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1),
        (0, 0, 1), (-1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1),
    ]),
    target_lengths=_lengths([f * _H_KIT for f in _KIT_FRACTIONS]),
    leg_joints=(17, 18),
    feet_left=(19, 20),
    feet_right=(14, 15),
    face_joints=(11, 16, 5, 8),
    contact_threshold=0.05,
    mirror_right=(11, 12, 13, 14, 15, 5, 6, 7),
    mirror_left=(16, 17, 18, 19, 20, 8, 9, 10),
    unit="mm",
)

SKELETONS: dict[str, Skeleton] = {"humanml3d": HUMANML3D, "kit": KIT}


def get_skeleton(skeleton: str | Skeleton) -> Skeleton:
    """The :class:`Skeleton` for a name ("humanml3d" | "kit"; "t2m", "smpl", "kitml" are aliases)."""
    if isinstance(skeleton, Skeleton):
        return skeleton
    key = str(skeleton).strip().lower()
    key = {"t2m": "humanml3d", "smpl": "humanml3d", "hml3d": "humanml3d", "kitml": "kit",
           "kit-ml": "kit", "mmm": "kit"}.get(key, key)
    if key not in SKELETONS:
        raise ValueError(f"unknown skeleton {skeleton!r} (expected 'humanml3d' or 'kit')")
    return SKELETONS[key]

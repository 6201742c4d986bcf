"""SMPL's skeleton, defined once: joint names, kinematic tree, left/right mirror map and rest joints.

Every body kind shares SMPL's first 22 joints (pelvis ... wrists) in this order; SMPL and the procedural body
add the two hand joints (24), SMPL-H the finger joints (52), SMPL-X jaw, eyes and fingers (55)
(:func:`mirror_permutation` covers all three).

Frame of the rest joints: SMPL's own (metres, **Y up**, the body faces **+Z**, its left side is at **+X**),
exactly left/right symmetric (each table lists the centre joints as (y, z) and the LEFT side joints as
(x, y, z); the right side is the mirror image).

Two rest-joint tables, on purpose (the same skeleton within about 3 cm): :func:`rest_joints` is THE table
(approximate joints of SMPL's neutral template; the procedural body is built around it), :data:`SYNTH_REST_JOINTS`
the synthetic-motion generator's (:mod:`lavimo.dataset.synth.skeleton`), from which every ``synth-amass`` corpus
is computed: replacing it by THE table would change every corpus written for a given seed.
"""

from __future__ import annotations

import numpy as np

NUM_JOINTS = 24
#: SMPL's joint names, in SMPL's joint order.
JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
#: joint name -> index
JOINT = {name: i for i, name in enumerate(JOINT_NAMES)}
#: SMPL's kinematic tree: parent of each joint (root -1).
PARENTS = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21],
                   dtype=np.int64)
#: index of the mirror (left <-> right) joint for each of the 24 SMPL joints.
MIRROR_JOINTS = np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22],
                         dtype=np.int64)
#: SMPL's body joints shared by every body kind (the first 22).
NUM_BODY_JOINTS = 22

# THE rest joints: approximate SMPL neutral rest joints, left/right symmetrised.
# Centre joints: (y, z); side joints: the LEFT joint (x, y, z), the right one is its mirror.
REST_CENTRE = {0: (-0.223, 0.028), 3: (-0.110, 0.017), 6: (0.030, 0.028), 9: (0.085, 0.027),
               12: (0.288, -0.010), 15: (0.355, 0.045)}
REST_LEFT = {1: (0.068, -0.314, 0.022), 4: (0.104, -0.700, 0.016), 7: (0.088, -1.104, -0.020),
             10: (0.119, -1.157, 0.103), 13: (0.081, 0.194, -0.004), 16: (0.176, 0.227, -0.020),
             18: (0.434, 0.215, -0.043), 20: (0.687, 0.222, -0.041), 22: (0.773, 0.213, -0.057)}

# The synthetic-motion generator's rest joints (see the module docstring for why they differ): same layout.
SYNTH_CENTRE = {0: (-0.223, 0.028), 3: (-0.107, 0.002), 6: (0.025, 0.029), 9: (0.076, 0.034),
                12: (0.297, 0.016), 15: (0.381, 0.057)}
SYNTH_LEFT = {1: (0.069, -0.314, 0.022), 4: (0.104, -0.700, 0.033), 7: (0.088, -1.110, -0.010),
              10: (0.119, -1.160, 0.125), 13: (0.080, 0.207, 0.012), 16: (0.173, 0.238, 0.017),
              18: (0.430, 0.227, -0.011), 20: (0.688, 0.236, -0.009), 22: (0.772, 0.229, -0.019)}


def symmetric_joints(centre: dict[int, tuple[float, float]],
                     left: dict[int, tuple[float, float, float]]) -> np.ndarray:
    """(24, 3) float64 joints from a table of centre joints (y, z) and LEFT joints (x, y, z), the right side
    mirrored (x -> -x); exactly left/right symmetric."""
    j = np.zeros((NUM_JOINTS, 3))
    for k, (y, z) in centre.items():
        j[k] = (0.0, y, z)
    for k, (x, y, z) in left.items():
        j[k] = (x, y, z)
        j[MIRROR_JOINTS[k]] = (-x, y, z)
    return j


def rest_joints() -> np.ndarray:
    """(24, 3) float64 THE rest joints in SMPL's frame (metres, Y up, faces +Z, left at +X), exactly symmetric
    (a new array on every call)."""
    return symmetric_joints(REST_CENTRE, REST_LEFT)


#: (24, 3) the synthetic-motion generator's rest joints (SMPL's frame, metres); see the module docstring.
SYNTH_REST_JOINTS = symmetric_joints(SYNTH_CENTRE, SYNTH_LEFT)

#: left/right joint pairs among the first 22 (the hands 22/23 and the finger blocks are in mirror_permutation)
BODY_PAIRS = tuple((int(a), int(b)) for a, b in enumerate(MIRROR_JOINTS[:NUM_BODY_JOINTS]) if a < b)


def mirror_permutation(num_joints: int) -> np.ndarray:
    """Index of the left/right mirror of each joint for 24 (SMPL), 52 (SMPL-H) or 55 (SMPL-X) joints."""
    perm = np.arange(num_joints)
    for a, b in BODY_PAIRS:
        perm[a], perm[b] = b, a
    if num_joints == 24:
        perm[22], perm[23] = 23, 22
    elif num_joints == 52:                       # 22-36 left hand, 37-51 right hand
        perm[22:37], perm[37:52] = np.arange(37, 52), np.arange(22, 37)
    elif num_joints == 55:                       # 22 jaw, 23/24 eyes, 25-39 left hand, 40-54 right hand
        perm[23], perm[24] = 24, 23
        perm[25:40], perm[40:55] = np.arange(40, 55), np.arange(25, 40)
    else:
        raise ValueError(f"no mirror map for {num_joints} joints (expected 24, 52 or 55)")
    return perm

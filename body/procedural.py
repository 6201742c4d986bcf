"""A deterministic, procedural SMPL-compatible body (used when no real SMPL-family model is given).

The body has SMPL's 24-joint kinematic tree (SMPL's joint order and parents) at approximately SMPL's
neutral rest joint positions, in SMPL's rest frame: **Y up, the body faces +Z, its left side is at +X**,
metres, T-pose, feet at y ~= -1.18, top of the head at y ~= 0.53. The surface is a smooth union of
capsules and ellipsoids (a signed distance field) meshed by marching cubes, smoothed (Taubin) and made
exactly left/right symmetric, so it is closed (watertight) and has more than 6,890 vertices (smplx's
default vertex-based extra joints therefore index valid vertices; we also supply our own ``vertex_ids``).

It carries everything ``smplx.SMPL`` reads from a model file (``build_procedural_body`` returns a dict):

- ``v_template`` (V, 3) rest vertices; ``f`` (F, 3) int32 faces, outward-facing.
- ``weights`` (V, 24) linear-blend-skinning weights (non-negative, rows sum to 1, at most 4 non-zero).
- ``J_regressor`` (24, V) dense, rows sum to 1, ``J_regressor @ v_template == joints`` (to ~1e-7).
- ``shapedirs`` (V, 3, 10) shape directions per unit beta (metres): 0 height (uniform scale about the
  pelvis, +4 %/unit), 1 girth (radial growth about the bones, torso +10 %/unit), 2 limb length (arms and
  legs +5 %/unit), 3 shoulder width (+2 cm per side per unit), 4 belly, 5 hip width, 6-9 zero.
- ``kintree_table`` (2, 24) (row 0: parents, row 0's root entry is -1 as in smplx after loading).
- ``joints`` (24, 3) the rest joints; ``vertex_ids_names`` / ``vertex_ids_values`` smplx extra-joint vertices.

posedirs are all zero (no pose-corrective blend shapes); :func:`procedural_posedirs` makes them.

Generation takes about a second; the result is cached atomically (:func:`cache_path`) and regenerated when it was
made by a different generator (:func:`generator_fingerprint`). The only embedded numbers are the rest joints
(:func:`lavimo.body.skeleton.rest_joints`) and the primitive sizes below.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from lavimo.body.skeleton import MIRROR_JOINTS, NUM_JOINTS, PARENTS, rest_joints
from lavimo.core.atomic import atomic_path

log = logging.getLogger(__name__)

VERSION = 1
NUM_BETAS = 10


# Surface primitives. ("cap", joint, a, b, r_a, r_b) is a tapered capsule from a to b; ("ell", joint,
# centre, radii) an axis-aligned ellipsoid. ``joint`` is the SMPL joint whose rotation moves that part
# (it sets the skinning weights). Side primitives are given for the LEFT side and mirrored.
def _primitives(j: np.ndarray) -> list[tuple]:
    left = [
        ("cap", 13, (0.045, 0.222, -0.014), j[16] + (0.005, 0.0, 0.0), 0.058, 0.056),   # collar / trapezius
        ("cap", 16, j[16], j[18], 0.053, 0.041),                                     # upper arm
        ("cap", 18, j[18], j[20], 0.040, 0.029),                                     # forearm
        ("ell", 20, (0.728, 0.219, -0.045), (0.050, 0.021, 0.043)),                  # palm
        ("ell", 22, (0.805, 0.214, -0.050), (0.058, 0.016, 0.040)),                  # fingers
        ("cap", 1, j[1] + (0.006, 0.0, 0.0), j[4], 0.082, 0.056),                    # thigh
        ("cap", 4, j[4], j[7], 0.053, 0.036),                                        # shin
        ("ell", 4, (0.100, -0.850, -0.020), (0.045, 0.110, 0.048)),                  # calf
        ("cap", 7, (0.090, -1.142, -0.045), (0.114, -1.150, 0.095), 0.040, 0.036),   # heel to ball
        ("cap", 10, (0.114, -1.152, 0.095), (0.122, -1.155, 0.150), 0.034, 0.027),   # toes
    ]
    centre = [
        ("ell", 0, (0.0, -0.255, 0.010), (0.160, 0.115, 0.110)),                     # hips / pelvis
        ("ell", 3, (0.0, -0.100, 0.020), (0.132, 0.150, 0.098)),                     # belly
        ("ell", 6, (0.0, 0.040, 0.015), (0.148, 0.140, 0.105)),                      # lower chest
        ("ell", 9, (0.0, 0.150, 0.005), (0.165, 0.105, 0.100)),                      # upper chest
        ("cap", 12, (0.0, 0.230, -0.015), (0.0, 0.360, 0.005), 0.055, 0.052),        # neck
        ("ell", 15, (0.0, 0.428, 0.030), (0.078, 0.100, 0.094)),                     # head
        ("ell", 15, (0.0, 0.382, 0.070), (0.052, 0.042, 0.052)),                     # jaw / chin
    ]
    prims = list(centre)
    for p in left:
        prims.append(p)
        prims.append(_mirror_primitive(p))
    return prims


def _mirror_primitive(p: tuple) -> tuple:
    def m(v):
        v = np.asarray(v, dtype=np.float64)
        return np.array([-v[0], v[1], v[2]])

    joint = int(MIRROR_JOINTS[p[1]])
    if p[0] == "cap":
        return ("cap", joint, m(p[2]), m(p[3]), p[4], p[5])
    return ("ell", joint, m(p[2]), np.asarray(p[3], dtype=np.float64))


def _primitive_sdf(p: tuple, pts: np.ndarray) -> np.ndarray:
    """Approximate signed distance (metres, negative inside) of one primitive at points (N, 3)."""
    if p[0] == "cap":
        closest, t = _closest_on_segment(pts, np.asarray(p[2], float), np.asarray(p[3], float))
        return np.linalg.norm(pts - closest, axis=1) - (p[4] + t * (p[5] - p[4]))
    c, r = np.asarray(p[2], float), np.asarray(p[3], float)
    q = pts - c
    k0 = np.linalg.norm(q / r, axis=1)
    k1 = np.linalg.norm(q / (r * r), axis=1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


_GRID_STEP = 0.0175      # metres between SDF samples
_BLEND = 0.022           # smooth-union radius (metres)
_BOUNDS = ((0.0, 0.93), (-1.24, 0.58), (-0.15, 0.23))   # x >= 0 half; mirrored to x < 0


_TORSO_BLEND = 0.05     # wider blend between the torso parts (pelvis, belly, chest, neck)


def _sdf(prims: list[tuple], pts: np.ndarray) -> np.ndarray:
    d = _primitive_sdf(prims[0], pts)
    for p in prims[1:]:
        k = _TORSO_BLEND if p[1] in (0, 3, 6, 9) else _BLEND
        d = _smooth_min(d, _primitive_sdf(p, pts), k)
    return d


def _mesh(prims: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the SDF on a grid symmetric about x = 0 (values exactly mirrored)."""
    from skimage.measure import marching_cubes

    h = _GRID_STEP
    nxh = int(np.ceil(_BOUNDS[0][1] / h)) + 1
    xs_half = np.arange(nxh) * h
    ys = _BOUNDS[1][0] + np.arange(int(np.ceil((_BOUNDS[1][1] - _BOUNDS[1][0]) / h)) + 1) * h
    zs = _BOUNDS[2][0] + np.arange(int(np.ceil((_BOUNDS[2][1] - _BOUNDS[2][0]) / h)) + 1) * h
    gx, gy, gz = np.meshgrid(xs_half, ys, zs, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
    half = _sdf(prims, pts).reshape(gx.shape)
    vol = np.concatenate([half[:0:-1], half], axis=0)        # x from -x_max to +x_max, x=0 once
    vol = np.pad(vol, 1, constant_values=1.0)                # make sure the surface is closed
    verts, faces, _, _ = marching_cubes(-vol, level=0.0, spacing=(h, h, h), method="lewiner")
    faces = faces[:, ::-1]                                   # outward (positive volume)
    origin = np.array([-(nxh - 1) * h - h, ys[0] - h, zs[0] - h])
    return verts.astype(np.float64) + origin, faces.astype(np.int64)


def _mirror_map(v: np.ndarray) -> np.ndarray:
    """Index of each vertex's mirror image (x -> -x) among the vertices."""
    from scipy.spatial import cKDTree

    mv = v * np.array([-1.0, 1.0, 1.0])
    dist, idx = cKDTree(v).query(mv)
    if dist.max() > 1e-6 or not np.array_equal(idx[idx], np.arange(len(v))):
        raise RuntimeError(f"procedural body: mesh is not mirror symmetric (max error {dist.max():.2e} m)")
    return idx


def _neighbour_mean(faces: np.ndarray, n: int):
    """(n, n) sparse operator: the mean over each vertex's mesh neighbours (uniform / umbrella weights)."""
    import scipy.sparse as sp

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    adj = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    adj.data[:] = 1.0
    return sp.diags(1.0 / np.asarray(adj.sum(axis=1)).ravel()) @ adj


def _taubin(v: np.ndarray, faces: np.ndarray, iterations: int = 12, lamb: float = 0.5,
            mu: float = -0.53) -> np.ndarray:
    """Taubin smoothing with uniform (umbrella) weights; keeps volume, removes marching-cubes terraces."""
    avg = _neighbour_mean(faces, len(v))
    for _ in range(iterations):
        v = v + lamb * (avg @ v - v)
        v = v + mu * (avg @ v - v)
    return v


def _closest_on_segment(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(closest points on the segment a-b, their parameter t in [0, 1]) for points (N, 3)."""
    ab = b - a
    t = np.clip(((pts - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return a + t[:, None] * ab, t


def _skinning_weights(v: np.ndarray, faces: np.ndarray, prims: list[tuple], mirror: np.ndarray,
                      tau: float = 0.012, smooth_iters: int = 6, keep: int = 4) -> np.ndarray:
    """(V, 24) weights: softmax of -primitive distance / tau per joint, mesh-smoothed, top-``keep``."""
    d = np.stack([_primitive_sdf(p, v) for p in prims], axis=1)          # (V, P)
    logits = -(d - d.min(axis=1, keepdims=True)) / tau
    wp = np.exp(logits)
    w = np.zeros((len(v), NUM_JOINTS))
    for i, p in enumerate(prims):
        w[:, p[1]] += wp[:, i]
    w /= w.sum(axis=1, keepdims=True)
    avg = _neighbour_mean(faces, len(v))
    for _ in range(smooth_iters):
        w = 0.5 * w + 0.5 * (avg @ w)
    w = 0.5 * (w + w[mirror][:, MIRROR_JOINTS])
    # keep the largest ``keep`` influences, chosen so that the result stays exactly mirror symmetric:
    # decide on the left half (and the centre), copy to the right half
    order = np.argsort(-w, axis=1, kind="stable")
    mask = np.zeros_like(w, dtype=bool)
    np.put_along_axis(mask, order[:, :keep], True, axis=1)
    centre = mirror == np.arange(len(v))
    mask[centre] &= mask[centre][:, MIRROR_JOINTS]         # a centre vertex keeps mirror pairs whole
    mask &= w >= 1e-4
    w = np.where(mask, w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    right = v[:, 0] < 0
    w[right] = w[mirror[right]][:, MIRROR_JOINTS]
    return w


def _joint_regressor(v: np.ndarray, joints: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """(24, V) rows summing to 1 with ``J @ v == joints``: a Gaussian-weighted ring of vertices around
    each joint, minimally corrected so its weighted mean is exactly the joint."""
    reg = np.zeros((NUM_JOINTS, len(v)))
    for j in range(NUM_JOINTS):
        if MIRROR_JOINTS[j] < j:          # right joints: mirror of the left row
            reg[j, mirror] = reg[MIRROR_JOINTS[j]]
            continue
        dist = np.linalg.norm(v - joints[j], axis=1)
        radius = max(np.sort(dist)[40] * 1.6, 0.03)
        sel = np.flatnonzero(dist < radius)
        w0 = np.exp(-(dist[sel] / (0.6 * radius)) ** 2)
        w0 /= w0.sum()
        a = np.vstack([v[sel].T, np.ones(len(sel))])                 # (4, n)
        b = np.append(joints[j], 1.0)
        corr = a.T @ np.linalg.solve(a @ a.T, b - a @ w0)
        reg[j, sel] = w0 + corr
        if MIRROR_JOINTS[j] == j:
            reg[j] = 0.5 * (reg[j] + reg[j, mirror])
    return reg


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _shapedirs(v: np.ndarray, w: np.ndarray, joints: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """(V, 3, 10) displacement per unit beta (metres)."""
    sd = np.zeros((len(v), 3, NUM_BETAS))
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    sx = np.sign(x)
    # 0 height: uniform scale about the pelvis joint
    sd[:, :, 0] = 0.04 * (v - joints[0])
    # 1 girth: grow away from each vertex's bones (torso about a vertical spine axis)
    bone_end = {0: 3, 3: 6, 6: 9, 9: 12, 12: 15, 13: 16, 14: 17, 16: 18, 17: 19, 18: 20, 19: 21,
                1: 4, 2: 5, 4: 7, 5: 8}
    gain = {0: 0.09, 3: 0.10, 6: 0.10, 9: 0.09, 12: 0.05, 13: 0.06, 14: 0.06, 16: 0.07, 17: 0.07,
            18: 0.06, 19: 0.06, 1: 0.08, 2: 0.08, 4: 0.06, 5: 0.06}
    spine_a = np.array([0.0, joints[0, 1] - 0.2, 0.02])
    spine_b = np.array([0.0, joints[12, 1], 0.02])
    girth = np.zeros_like(v)
    for j, end in bone_end.items():
        if j in (0, 3, 6, 9):
            c = _closest_on_segment(v, spine_a, spine_b)[0]
        else:
            c = _closest_on_segment(v, joints[j], joints[end])[0]
        girth += w[:, [j]] * gain[j] * (v - c)
    sd[:, :, 1] = girth
    # 2 limb length: arms beyond the shoulders (along x), legs below the hips (along -y)
    shoulder_x, hip_y = joints[16, 0], joints[1, 1]
    ax = np.maximum(np.abs(x) - shoulder_x, 0.0)
    sd[:, 0, 2] = sx * 0.05 * ax
    sd[:, 1, 2] = 0.05 * np.minimum(y - hip_y, 0.0)
    # 3 shoulder width: upper torso and arms move outwards, head and neck do not
    headneck = w[:, 15] + w[:, 12]
    sd[:, 0, 3] = sx * 0.02 * _ramp(np.abs(x), 0.02, 0.17) * _ramp(y, -0.02, 0.16) * (1.0 - headneck)
    # 4 belly: the front of the abdomen moves forward
    front = _ramp(z, -0.01, 0.06)
    sd[:, 2, 4] = 0.03 * np.exp(-((y + 0.08) / 0.12) ** 2 - (x / 0.12) ** 2) * front
    # 5 hip width
    sd[:, 0, 5] = sx * 0.015 * np.exp(-((y + 0.29) / 0.10) ** 2) * _ramp(np.abs(x), 0.02, 0.15)
    flip = np.array([-1.0, 1.0, 1.0])[None, :, None]
    return 0.5 * (sd + flip * sd[mirror])


_VERTEX_ID_TARGETS = {
    "nose": (0.0, 0.43, 0.2), "leye": (0.035, 0.45, 0.2), "reye": (-0.035, 0.45, 0.2),
    "lear": (0.2, 0.43, 0.03), "rear": (-0.2, 0.43, 0.03),
    "LBigToe": (0.1, -1.16, 0.25), "LSmallToe": (0.16, -1.16, 0.2), "LHeel": (0.09, -1.17, -0.15),
    "RBigToe": (-0.1, -1.16, 0.25), "RSmallToe": (-0.16, -1.16, 0.2), "RHeel": (-0.09, -1.17, -0.15),
}
for _side, _s in (("l", 1.0), ("r", -1.0)):
    for _k, _name in enumerate(("thumb", "index", "middle", "ring", "pinky")):
        _VERTEX_ID_TARGETS[_side + _name] = (_s * 0.95, 0.21, 0.02 - 0.03 * _k if _k else 0.06)


def _vertex_ids(v: np.ndarray) -> dict[str, int]:
    return {name: int(np.argmin(np.linalg.norm(v - np.asarray(t), axis=1)))
            for name, t in _VERTEX_ID_TARGETS.items()}


def build_procedural_body() -> dict[str, np.ndarray]:
    """Generate the procedural body (deterministic; about a second). See the module docstring for keys."""
    joints = rest_joints()
    prims = _primitives(joints)
    v, f = _mesh(prims)
    mirror = _mirror_map(v)
    v = _taubin(v, f)
    flip = np.array([-1.0, 1.0, 1.0])
    v = 0.5 * (v + v[mirror] * flip)                      # exact symmetry after smoothing
    w = _skinning_weights(v, f, prims, mirror)
    reg = _joint_regressor(v, joints, mirror)
    sd = _shapedirs(v, w, joints, mirror)
    kintree = np.stack([PARENTS, np.arange(NUM_JOINTS)]).astype(np.int64)
    ids = _vertex_ids(v)
    return {
        "version": np.array(VERSION),
        "fingerprint": np.array(generator_fingerprint()),
        "v_template": v,
        "f": f.astype(np.int32),
        "weights": w,
        "J_regressor": reg,
        "shapedirs": sd,
        "kintree_table": kintree,
        "joints": joints,
        "mirror_vertices": mirror.astype(np.int64),
        "vertex_ids_names": np.array(list(ids.keys())),
        "vertex_ids_values": np.array(list(ids.values()), dtype=np.int64),
    }


def procedural_posedirs(num_vertices: int) -> np.ndarray:
    """(V, 3, 207) zeros: the procedural body has no pose-corrective blend shapes."""
    return np.zeros((num_vertices, 3, 9 * (NUM_JOINTS - 1)), dtype=np.float32)


def cache_dir() -> Path:
    """``$LAVIMO_CACHE`` if set, else ``~/.cache/lavimo``."""
    env = os.environ.get("LAVIMO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lavimo"


def cache_path() -> Path:
    return cache_dir() / f"procedural_body_v{VERSION}.npz"


def generator_fingerprint() -> str:
    """SHA-256 of this generator's source (this file and :mod:`lavimo.body.skeleton`, whose rest joints it is built
    around) and the marching-cubes library version: a cached body made by other code is regenerated, so editing
    the generator can never leave a stale cache behind."""
    import skimage

    from lavimo.body import skeleton

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(Path(skeleton.__file__).read_bytes())
    h.update(f"skimage {skimage.__version__} numpy {np.__version__.split('.')[0]}".encode())
    return h.hexdigest()


_KEYS = ("version", "fingerprint", "v_template", "f", "weights", "J_regressor", "shapedirs", "kintree_table", "joints",
         "mirror_vertices", "vertex_ids_names", "vertex_ids_values")


def load_procedural_body(cache: bool = True) -> dict[str, np.ndarray]:
    """The procedural body, from the cache when present and valid, else generated (and cached)."""
    path = cache_path()
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in _KEYS}
            if int(data["version"]) == VERSION and str(data["fingerprint"]) == generator_fingerprint():
                return data
            log.info("procedural body cache %s was made by another generator version; regenerating", path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is regenerated
            log.warning("procedural body cache %s unreadable (%s); regenerating", path, exc)
    data = build_procedural_body()
    if cache:
        try:
            with atomic_path(path) as tmp:
                np.savez(tmp, **data)
            log.info("procedural body cached at %s", path)
        except OSError as exc:
            log.warning("could not cache the procedural body at %s: %s", path, exc)
    return data


def body_digest(data: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays (for determinism checks)."""
    h = hashlib.sha256()
    for k in _KEYS:
        a = np.ascontiguousarray(data[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()

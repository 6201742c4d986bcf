"""Level of detail for the body mesh: fewer triangles over the ORIGINAL vertices (posing is untouched).

On a CPU rasteriser (Mesa llvmpipe) the cost of a small frame is dominated by per-triangle set-up, so a
112-pixel frame of a ~15k-face body costs about as much as a 512-pixel one. :func:`simplify` reduces the
face count by *vertex clustering* on the rest mesh and keeps the original vertex ids:

1. the rest vertices are snapped to a cubic grid of cell size ``h`` (metres), centred on the mesh's
   bounding box (a left/right-symmetric body gives a symmetric grid);
2. a cluster is (grid cell, skinning group, normal direction): vertices of different body parts (the
   dominant skinning joint, hands/fingers folded into the wrist) or facing different ways (6 axis
   buckets of the rest normal) never merge, so opposite sides of a thin limb and touching parts (thighs,
   arm and torso) stay apart and every cluster moves rigidly enough when posed;
3. each cluster is represented by its ORIGINAL vertex closest to the cluster mean (ties: lowest id);
4. faces are remapped to the representatives; faces that become degenerate (repeated vertex, or zero
   area at rest), duplicated (same vertex set) or flipped against their original normal are dropped;
5. ``h`` is found by bisection (on log h) so the face count is as close as possible to the target.

The result (:class:`LevelOfDetail`) indexes the original vertices: the renderer draws
``vertices[..., used, :]`` with ``local_faces`` (indices into ``used``) and takes the representatives'
vertex colours. Deterministic: the same mesh, groups and target give the same faces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: ``--lod auto``: frames at least this wide render the full mesh.
AUTO_FULL_SIZE = 384
#: ``--lod auto``: target faces at ``AUTO_REF_SIZE`` pixels, scaled with the pixel area (constant triangles
#: per pixel: 2,680 at 112 px, 1,970 at 96 px), never below ``AUTO_MIN_FACES``.
AUTO_REF_FACES = 3500
AUTO_REF_SIZE = 128
AUTO_MIN_FACES = 1500
#: an explicit ``--lod N`` must be at least this (a recognisable person needs a few hundred triangles per limb).
MIN_TARGET_FACES = 500
METHOD = "vertex clustering on the rest mesh (grid cell x skinning group x normal bucket), original vertices"


@dataclass(frozen=True)
class LevelOfDetail:
    """A simplified triangle list over the original vertices.

    Attributes:
        faces: (F', 3) int64 triangles indexing the ORIGINAL vertices (outward facing as the originals).
        used: (U,) int64 sorted original vertex ids the faces reference.
        local_faces: (F', 3) int64 the same triangles indexing ``used`` (``used[local_faces] == faces``).
        full_faces: F of the original mesh. cell_m: grid cell size in metres (0 for the full mesh).
        target_faces: the requested face count (None for the full mesh).
    """

    faces: np.ndarray
    used: np.ndarray
    local_faces: np.ndarray
    full_faces: int
    cell_m: float = 0.0
    target_faces: int | None = None

    @property
    def num_faces(self) -> int:
        return int(len(self.faces))

    @property
    def is_full(self) -> bool:
        return self.target_faces is None

    def to_dict(self) -> dict:
        """Sidecar record: faces drawn, vertices drawn, the full mesh's faces, target, cell size, method."""
        return {"faces": self.num_faces, "vertices": int(len(self.used)), "full_faces": int(self.full_faces),
                "target_faces": self.target_faces, "cell_m": round(float(self.cell_m), 6),
                "method": "full mesh" if self.is_full else METHOD}


def full_detail(faces: np.ndarray) -> LevelOfDetail:
    """The unsimplified mesh as a :class:`LevelOfDetail` (``used`` = every referenced vertex)."""
    f = np.asarray(faces, dtype=np.int64)
    used, local = np.unique(f, return_inverse=True)
    return LevelOfDetail(faces=f, used=used, local_faces=local.reshape(f.shape), full_faces=len(f))


def parse_lod(text: str | int | None) -> str | int:
    """``"auto"`` | ``"full"`` | a positive face count (``"3500"`` -> 3500). Raises ValueError otherwise."""
    if text is None:
        return "auto"
    if isinstance(text, (int, np.integer)):
        n = int(text)
    else:
        s = str(text).strip().lower()
        if s in ("auto", "full"):
            return s
        try:
            n = int(s)
        except ValueError:
            raise ValueError(f"--lod expects auto, full or a face count, got {text!r}") from None
    if n < MIN_TARGET_FACES:
        raise ValueError(f"--lod face count must be >= {MIN_TARGET_FACES}, got {n}")
    return n


def target_faces(lod: str | int, size: int, full_faces: int) -> int | None:
    """Target face count for a frame ``size`` pixels wide, or None for the full mesh.

    ``auto``: full mesh from :data:`AUTO_FULL_SIZE` px; below, :data:`AUTO_REF_FACES` x
    (size / :data:`AUTO_REF_SIZE`)² (constant triangles per pixel, at least :data:`AUTO_MIN_FACES`), full
    once that reaches the mesh's own count. ``full``: None. An int: that many (None when >= full).
    On llvmpipe the raster time grows with faces x size, so fewer faces for smaller frames pay off twice.
    """
    lod = parse_lod(lod)
    if lod == "full":
        return None
    if lod == "auto":
        if size >= AUTO_FULL_SIZE:
            return None
        n = max(AUTO_MIN_FACES, int(round(AUTO_REF_FACES * (size / AUTO_REF_SIZE) ** 2)))
    else:
        n = int(lod)
    return None if n >= full_faces else n


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals of a triangle mesh (zero for unreferenced vertices)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def _normal_bucket(normals: np.ndarray) -> np.ndarray:
    """(V,) 0..5: the dominant axis of each normal and its sign."""
    ax = np.abs(normals).argmax(axis=1)
    sign = normals[np.arange(len(normals)), ax] < 0
    return (ax * 2 + sign).astype(np.int64)


class _Clusterer:
    """Vertex clustering of one mesh at any cell size (the per-mesh constants computed once)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, groups: np.ndarray | None):
        self.v = np.asarray(vertices, dtype=np.float64)
        self.f = np.asarray(faces, dtype=np.int64)
        lo, hi = self.v.min(axis=0), self.v.max(axis=0)
        self.centre = 0.5 * (lo + hi)
        self.extent = float((hi - lo).max())
        n = vertex_normals(self.v, self.f)
        g = np.zeros(len(self.v), np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        if g.shape != (len(self.v),):
            raise ValueError(f"groups must have shape ({len(self.v)},), got {g.shape}")
        _, g = np.unique(g, return_inverse=True)
        self.tag = g.reshape(-1) * 6 + _normal_bucket(n)
        fn = np.cross(self.v[self.f[:, 1]] - self.v[self.f[:, 0]], self.v[self.f[:, 2]] - self.v[self.f[:, 0]])
        self.face_normal = fn

    def representatives(self, cell: float) -> np.ndarray:
        """(V,) representative original vertex id of every vertex at grid cell size ``cell`` (metres)."""
        q = np.floor((self.v - self.centre) / cell).astype(np.int64)
        q -= q.min(axis=0)
        dims = q.max(axis=0) + 1
        key = ((q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]) * (int(self.tag.max()) + 1) + self.tag
        _, cl = np.unique(key, return_inverse=True)
        cl = cl.reshape(-1)
        k = int(cl.max()) + 1
        count = np.bincount(cl, minlength=k).astype(np.float64)
        mean = np.stack([np.bincount(cl, weights=self.v[:, d], minlength=k) for d in range(3)], 1) / count[:, None]
        dist = np.linalg.norm(self.v - mean[cl], axis=1)
        order = np.lexsort((np.arange(len(self.v)), dist, cl))       # per cluster: closest first, then lowest id
        first = np.ones(len(order), bool)
        first[1:] = cl[order[1:]] != cl[order[:-1]]
        rep_of_cluster = np.empty(k, np.int64)
        rep_of_cluster[cl[order[first]]] = order[first]
        return rep_of_cluster[cl]

    def faces_at(self, cell: float) -> np.ndarray:
        """Simplified (F', 3) faces over original vertex ids at grid cell size ``cell``."""
        rep = self.representatives(cell)
        f = rep[self.f]
        ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
        v = self.v
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        area2 = np.linalg.norm(fn, axis=1)
        ok &= area2 > 1e-12                                          # no zero-area triangles at rest
        ok &= (fn * self.face_normal).sum(axis=1) > 0                # no triangles folded over
        idx = np.flatnonzero(ok)
        _, first = np.unique(np.sort(f[idx], axis=1), axis=0, return_index=True)
        return f[idx[np.sort(first)]]                                # duplicates: keep the first, original order


def simplify(rest_vertices: np.ndarray, faces: np.ndarray, target: int, groups: np.ndarray | None = None,
             iterations: int = 30) -> LevelOfDetail:
    """Simplify a mesh to about ``target`` faces by vertex clustering (see the module docstring).

    Args:
        rest_vertices: (V, 3) rest-pose positions (metres, any frame).
        faces: (F, 3) triangles (outward facing).
        target: wanted face count (>= 1); the result is the closest count found by bisection on the cell
            size (within a few percent for a body mesh).
        groups: optional (V,) labels that must not share a cluster (e.g. the dominant skinning joint).
        iterations: bisection steps.

    Returns:
        :class:`LevelOfDetail` whose faces index the original vertices (the full mesh when ``target`` >= F).
    """
    f = np.asarray(faces, dtype=np.int64)
    if target >= len(f):
        return full_detail(f)
    if target < 1:
        raise ValueError(f"target face count must be >= 1, got {target}")
    c = _Clusterer(rest_vertices, f, groups)
    lo, hi = np.log(c.extent * 1e-4), np.log(c.extent)
    best: tuple[int, float, np.ndarray] | None = None
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        cell = float(np.exp(mid))
        got = c.faces_at(cell)
        err = abs(len(got) - target)
        if best is None or err < best[0]:
            best = (err, cell, got)
        if len(got) > target:
            lo = mid
        elif len(got) < target:
            hi = mid
        else:
            break
    _, cell, got = best  # type: ignore[misc]
    used, local = np.unique(got, return_inverse=True)
    log.debug("lod: %d -> %d faces (target %d), %d vertices, cell %.4f m", len(f), len(got), target, len(used), cell)
    return LevelOfDetail(faces=got, used=used, local_faces=local.reshape(got.shape), full_faces=len(f),
                         cell_m=cell, target_faces=int(target))


def skinning_groups(vertex_joint: np.ndarray, parents: np.ndarray, keep: int = 22) -> np.ndarray:
    """(V,) group per vertex: its dominant joint, with joints from ``keep`` on (hands, fingers, jaw, eyes)
    replaced by their nearest ancestor below ``keep`` (so hands simplify as one part with the wrist)."""
    parents = np.asarray(parents, dtype=np.int64)
    up = np.arange(len(parents))
    for j in range(len(parents)):
        a = j
        while a >= keep and parents[a] >= 0:
            a = int(parents[a])
        up[j] = a
    return up[np.asarray(vertex_joint, dtype=np.int64)]


def body_lod(body, lod: str | int, size: int) -> LevelOfDetail:
    """The level of detail of a :class:`lavimo.body.model.Body` for frames ``size`` pixels wide (rest pose, zero
    betas; groups from the dominant skinning joint)."""
    faces = np.asarray(body.faces, dtype=np.int64)
    n = target_faces(lod, size, len(faces))
    if n is None:
        return full_detail(faces)
    rest = np.asarray(body.rest().vertices[0])
    groups = skinning_groups(body.vertex_joint, body.parents)
    return simplify(rest, faces, n, groups)

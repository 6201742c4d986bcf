"""Avatar specs (``assets/avatars/*.json``) and per-vertex colours for any SMPL-compatible body.

A spec is a small JSON file::

    {"name": "a01-...", "gender": "female", "betas": [10 numbers],
     "appearance": {"skin": "#e0ac8a", "top": "#2f5fb3", "bottom": "#2b2b2b", "shoes": "#f2f2f2",
                    "hair": "#3b2414"},
     "style": {"sleeves": "short|long|none", "legs": "long|shorts", "hair": "short|long|none"},
     "texture": {"image": "file.png", "uv": "file.obj"}}          # optional

Colours are sRGB, as ``"#rrggbb"`` or three numbers in [0, 1]. Regions (skin, top, bottom, shoes,
hair) are assigned from the body's rest geometry, so the same spec dresses the procedural body and the
real SMPL / SMPL-H / SMPL-X models alike: every vertex goes to its nearest bone of the 22-joint SMPL
body tree (the first 22 joints of every body kind), and the bone plus the position along it picks the
region (sleeve and trouser lengths from ``style``; hair from the position relative to the head joint).
``texture`` (optional) names a UV texture image and a UV layout (OBJ with ``vt`` and ``f v/vt``) for real
SMPL models; it is used only when the layout's vertex count matches the body (else region colours).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lavimo import assets
from lavimo.body.skeleton import JOINT as _J
from lavimo.body.skeleton import NUM_BODY_JOINTS, PARENTS
from lavimo.core.errors import BadInputError

log = logging.getLogger(__name__)

DEFAULT_AVATARS = assets.AVATARS  # installed with the package (assets/__init__.py)
REGIONS = ("skin", "top", "bottom", "shoes", "hair")
SKIN, TOP, BOTTOM, SHOES, HAIR = range(len(REGIONS))
_STYLE_CHOICES = {"sleeves": ("short", "long", "none"), "legs": ("long", "shorts"), "hair": ("short", "long", "none")}
_STYLE_DEFAULT = {"sleeves": "short", "legs": "long", "hair": "short"}
_GENDERS = ("male", "female", "neutral")



@dataclass(frozen=True)
class Texture:
    """A UV texture for real SMPL models: image (H, W, 3) uint8 sRGB and the OBJ UV layout path."""

    image_path: str
    uv_path: str


@dataclass(frozen=True)
class Avatar:
    """One avatar.

    Attributes:
        name: unique name (the spec's ``name``; file stem by default).
        gender: "male" | "female" | "neutral" (selects gendered real body models).
        betas: (10,) float32 shape coefficients.
        colors: region -> sRGB (3,) floats in [0, 1].
        style: sleeves / legs / hair lengths.
        texture: optional UV texture for real SMPL models.
        path: the spec file.
    """

    name: str
    gender: str
    betas: np.ndarray = field(repr=False)
    colors: dict
    style: dict
    texture: Texture | None = None
    path: str = ""

    def to_dict(self) -> dict:
        """JSON-ready description for sidecars."""
        return {"name": self.name, "gender": self.gender, "betas": [round(float(b), 4) for b in self.betas],
                "spec": os.path.basename(self.path), "style": dict(self.style),
                "colors": {k: "#%02x%02x%02x" % tuple(int(round(c * 255)) for c in v) for k, v in self.colors.items()},
                "texture": None if self.texture is None else os.path.basename(self.texture.image_path)}


def _parse_color(path: str, fld: str, value: object) -> tuple[float, float, float]:
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) != 6:
            raise BadInputError(path, fld, f"expected '#rrggbb', got {value!r}")
        try:
            return tuple(int(s[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
        except ValueError as e:
            raise BadInputError(path, fld, f"expected '#rrggbb', got {value!r}") from e
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadInputError(path, fld, f"expected '#rrggbb' or 3 numbers in [0, 1], got {value!r}") from e
    if a.shape != (3,) or not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise BadInputError(path, fld, f"expected '#rrggbb' or 3 numbers in [0, 1], got {value!r}")
    return tuple(float(v) for v in a)  # type: ignore[return-value]


def load_avatar(path: str | os.PathLike) -> Avatar:
    """Read and validate one avatar spec. Raises BadInputError naming the file and field."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(path, None, f"unreadable avatar spec ({e})") from e
    if not isinstance(doc, dict):
        raise BadInputError(path, None, "expected a JSON object")
    name = doc.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise BadInputError(path, "name", "expected a non-empty string")
    gender = doc.get("gender", "neutral")
    if gender not in _GENDERS:
        raise BadInputError(path, "gender", f"expected one of {_GENDERS}, got {gender!r}")
    try:
        betas = np.asarray(doc.get("betas", [0.0] * 10), dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as e:
        raise BadInputError(path, "betas", f"expected a list of numbers ({e})") from e
    if betas.size == 0 or betas.size > 300 or not np.all(np.isfinite(betas)):
        raise BadInputError(path, "betas", f"expected 1..300 finite numbers, got {betas.size}")
    if np.abs(betas).max(initial=0.0) > 5:
        raise BadInputError(path, "betas", "values beyond +-5 give implausible bodies")
    app = doc.get("appearance")
    if not isinstance(app, dict):
        raise BadInputError(path, "appearance", "expected an object with colours for " + ", ".join(REGIONS))
    missing = [r for r in REGIONS if r not in app]
    if missing:
        raise BadInputError(path, "appearance", f"missing region colour(s): {', '.join(missing)}")
    unknown = sorted(set(app) - set(REGIONS))
    if unknown:
        raise BadInputError(path, "appearance", f"unknown region(s): {', '.join(unknown)}")
    colors = {r: _parse_color(path, f"appearance.{r}", app[r]) for r in REGIONS}
    style = dict(_STYLE_DEFAULT)
    st = doc.get("style", {})
    if not isinstance(st, dict):
        raise BadInputError(path, "style", "expected an object")
    for k, v in st.items():
        if k not in _STYLE_CHOICES:
            raise BadInputError(path, f"style.{k}", f"unknown style key (expected {sorted(_STYLE_CHOICES)})")
        if v not in _STYLE_CHOICES[k]:
            raise BadInputError(path, f"style.{k}", f"expected one of {_STYLE_CHOICES[k]}, got {v!r}")
        style[k] = v
    texture = None
    if doc.get("texture") is not None:
        t = doc["texture"]
        if not isinstance(t, dict) or not isinstance(t.get("image"), str) or not isinstance(t.get("uv"), str):
            raise BadInputError(path, "texture", "expected {\"image\": file, \"uv\": OBJ file}")
        base = Path(path).parent
        img, uv = base / t["image"], base / t["uv"]
        for f, p in (("texture.image", img), ("texture.uv", uv)):
            if not p.is_file():
                raise BadInputError(path, f, f"file not found: {p}")
        texture = Texture(image_path=str(img), uv_path=str(uv))
    return Avatar(name=name, gender=gender, betas=betas, colors=colors, style=style, texture=texture, path=path)


def load_avatars(directory: str | os.PathLike | None = None) -> list[Avatar]:
    """Every ``*.json`` spec in ``directory`` (default ``assets/avatars``), sorted by file name.

    Raises:
        BadInputError: the directory is missing or has no specs, a spec is malformed (naming the file),
            or two specs share a name.
    """
    d = Path(directory or DEFAULT_AVATARS)
    if not d.is_dir():
        raise BadInputError(d, None, "avatars directory not found (expected *.json avatar specs, e.g. assets/avatars)")
    files = sorted(d.glob("*.json"))
    if not files:
        raise BadInputError(d, None, "no avatar specs (*.json) in the avatars directory")
    avatars = [load_avatar(f) for f in files]
    seen: dict[str, str] = {}
    for a in avatars:
        if a.name in seen:
            raise BadInputError(a.path, "name", f"duplicate avatar name {a.name!r} (also in {seen[a.name]})")
        seen[a.name] = a.path
    return avatars


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB [0, 1] -> linear [0, 1] (pyrender multiplies vertex colours in linear space)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (V,B) from points p (V,3) to segments a->b (B,3) and the parameter t (V,B) in [0, 1]."""
    ab = b - a
    denom = np.maximum((ab * ab).sum(-1), 1e-12)
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / denom, 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - closest, axis=-1), t


def region_labels(rest_vertices: np.ndarray, rest_joints: np.ndarray, style: dict | None = None) -> np.ndarray:
    """Per-vertex region index into :data:`REGIONS` for a body in its rest pose.

    Args:
        rest_vertices: (V, 3) metres, zero pose (any orientation; axes are taken from the joints).
        rest_joints: (J >= 22, 3) metres, the first 22 in SMPL body order.
        style: sleeves / legs / hair lengths (defaults: short sleeves, long trousers, short hair).

    Returns:
        (V,) int8 region indices.
    """
    st = dict(_STYLE_DEFAULT, **(style or {}))
    v = np.asarray(rest_vertices, dtype=np.float64)
    j = np.asarray(rest_joints, dtype=np.float64)[:NUM_BODY_JOINTS]
    up = j[_J["head"]] - j[_J["pelvis"]]
    up /= np.linalg.norm(up)
    left = j[_J["left_shoulder"]] - j[_J["right_shoulder"]]
    left -= up * (left @ up)
    left /= np.linalg.norm(left)
    fwd = np.cross(left, up)
    height = lambda x: x @ up  # noqa: E731
    # Bones: (parent, child) of the tree, plus hand, head-top and toe extensions.
    a, b, child = [], [], []
    for c, p in enumerate(PARENTS[:NUM_BODY_JOINTS].tolist()):
        if p >= 0:
            a.append(j[p]); b.append(j[c]); child.append(c)
    for w, e, tag in ((_J["left_wrist"], _J["left_elbow"], 100), (_J["right_wrist"], _J["right_elbow"], 101)):
        a.append(j[w]); b.append(j[w] + 0.45 * (j[w] - j[e])); child.append(tag)
    a.append(j[_J["head"]]); b.append(j[_J["head"]] + 0.12 * up); child.append(102)
    for f, tag in ((_J["left_foot"], 103), (_J["right_foot"], 104)):
        a.append(j[f]); b.append(j[f] + 0.06 * fwd); child.append(tag)
    a, b, child = np.asarray(a), np.asarray(b), np.asarray(child)
    dist, t = _segment_distance(v, a, b)
    k = dist.argmin(1)
    bone, tb = child[k], t[np.arange(len(v)), k]

    lab = np.full(len(v), TOP, dtype=np.int8)
    h = height(v)
    waist = height(j[_J["pelvis"]]) + 0.55 * (height(j[_J["spine1"]]) - height(j[_J["pelvis"]])) + 0.04
    torso = np.isin(bone, (_J["left_hip"], _J["right_hip"], _J["spine1"], _J["spine2"], _J["spine3"],
                           _J["left_collar"], _J["right_collar"], _J["neck"]))
    lab[torso & (h < waist)] = BOTTOM
    lab[np.isin(bone, (_J["left_hip"], _J["right_hip"]))] = BOTTOM
    thigh = np.isin(bone, (_J["left_knee"], _J["right_knee"]))
    shin = np.isin(bone, (_J["left_ankle"], _J["right_ankle"]))
    lab[thigh | shin] = BOTTOM
    if st["legs"] == "shorts":
        lab[shin | (thigh & (tb > 0.55))] = SKIN
    upper_arm = np.isin(bone, (_J["left_elbow"], _J["right_elbow"]))
    forearm = np.isin(bone, (_J["left_wrist"], _J["right_wrist"]))
    hands = np.isin(bone, (100, 101))
    sleeves = st["sleeves"]
    if sleeves == "none":
        lab[upper_arm | forearm] = SKIN
    elif sleeves == "short":
        lab[forearm | (upper_arm & (tb > 0.45))] = SKIN
    else:
        lab[forearm & (tb > 0.9)] = SKIN
    lab[hands] = SKIN
    neck_bone = bone == _J["head"]  # the neck -> head segment
    head = np.isin(bone, (102,)) | (neck_bone & (tb > 0.35))
    lab[neck_bone] = SKIN
    lab[head] = SKIN
    feet = np.isin(bone, (_J["left_foot"], _J["right_foot"], 103, 104))
    ankle_h = 0.5 * (height(j[_J["left_ankle"]]) + height(j[_J["right_ankle"]])) + 0.03
    lab[feet | ((shin | feet) & (h < ankle_h))] = SHOES
    if st["hair"] != "none":
        rel = v - j[_J["head"]]
        rh, rf = rel @ up, rel @ fwd
        near_head = np.linalg.norm(rel, axis=1) < 0.2
        hair = near_head & ((rh > 0.085) | ((rh > 0.0) & (rf < -0.02)))
        if st["hair"] == "long":
            hair |= near_head & (rf < -0.035) & (rh > -0.12) | (neck_bone & (rf < -0.03) & (rh > -0.16))
        lab[hair & (head | neck_bone)] = HAIR
    return lab


def vertex_colors(labels: np.ndarray, avatar: Avatar) -> np.ndarray:
    """(V, 4) float32 linear RGBA vertex colours (alpha 1) from region labels and the avatar's sRGB colours."""
    table = srgb_to_linear(np.array([avatar.colors[r] for r in REGIONS]))
    rgba = np.ones((len(labels), 4), dtype=np.float32)
    rgba[:, :3] = table[np.asarray(labels, dtype=np.int64)]
    return rgba


#: region names of :func:`vertex_parts` (value = index into this tuple): the avatar regions.
PART_NAMES = REGIONS
# SMPL body joints (first 22 of every kind) grouped by the clothing region they carry (compute_vertex_parts).
_JOINT_PART = {_J["pelvis"]: BOTTOM, _J["left_hip"]: BOTTOM, _J["right_hip"]: BOTTOM, _J["left_knee"]: BOTTOM,
               _J["right_knee"]: BOTTOM, _J["spine1"]: TOP, _J["spine2"]: TOP, _J["spine3"]: TOP,
               _J["left_collar"]: TOP, _J["right_collar"]: TOP, _J["left_shoulder"]: TOP, _J["right_shoulder"]: TOP,
               _J["left_ankle"]: SHOES, _J["right_ankle"]: SHOES, _J["left_foot"]: SHOES, _J["right_foot"]: SHOES}


def compute_vertex_parts(weights: np.ndarray, v_template: np.ndarray) -> np.ndarray:
    """(V,) uint8 clothing region per vertex (:data:`PART_NAMES`), from the skinning weights' argmax joint.

    top: torso above the pelvis and upper arms (spine1-3, collars, shoulders); bottom: pelvis, thighs, shins;
    shoes: ankles and feet; hair: the upper and back part of the head (SMPL's rest frame, +Z forward);
    skin: everything else (face, neck, forearms, hands, and any joint beyond the 24 SMPL joints).
    (Rendering colours bodies by :func:`region_labels`; this coarser rule needs no joints.)
    """
    joint = np.asarray(weights).argmax(axis=1)
    parts = np.full(len(joint), SKIN, dtype=np.uint8)
    for j, p in _JOINT_PART.items():
        parts[joint == j] = p
    head = joint == _J["head"]
    if head.any():
        hv = np.asarray(v_template)[head]
        lo, hi = hv.min(axis=0), hv.max(axis=0)
        yn = (hv[:, 1] - lo[1]) / max(hi[1] - lo[1], 1e-9)
        zn = (hv[:, 2] - lo[2]) / max(hi[2] - lo[2], 1e-9)
        hair = (yn > 0.68 - 0.25 * np.clip((0.5 - zn) / 0.5, 0, 1)) | ((zn < 0.32) & (yn > 0.3))
        idx = np.flatnonzero(head)
        parts[idx[hair]] = HAIR
    return parts


def vertex_parts(body: Any) -> np.ndarray:
    """(V,) uint8 :func:`compute_vertex_parts` of a :class:`lavimo.body.model.Body` (from its skinning weights and rest
    vertices): 0 skin, 1 top, 2 bottom, 3 shoes, 4 hair."""
    model = body.model
    return compute_vertex_parts(model.lbs_weights.detach().cpu().numpy(), model.v_template.detach().cpu().numpy())


@dataclass(frozen=True)
class UVLayout:
    """A UV layout split at seams: render vertex k is body vertex ``vmap[k]`` with texture coordinate ``uv[k]``.

    Attributes:
        vmap: (N,) int64 body-vertex index per render vertex; uv: (N, 2) float32 in [0, 1] (OpenGL, v up);
        faces: (F, 3) int64 triangles over render vertices; num_body_vertices: V of the layout's mesh.
    """

    vmap: np.ndarray
    uv: np.ndarray
    faces: np.ndarray
    num_body_vertices: int


def load_uv_layout(path: str | os.PathLike) -> UVLayout:
    """Read an OBJ's ``v`` count, ``vt`` and ``f v/vt`` lines (triangles or polygons, fanned) into a :class:`UVLayout`.

    Raises:
        BadInputError: unreadable file, no ``vt``/faces, faces without texture indices, indices out of range.
    """
    path = os.fspath(path)
    nv, vts, faces = 0, [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for ln, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "v":
                    nv += 1
                elif parts[0] == "vt":
                    vts.append((float(parts[1]), float(parts[2])))
                elif parts[0] == "f":
                    corners = []
                    for c in parts[1:]:
                        idx = c.split("/")
                        if len(idx) < 2 or not idx[1]:
                            raise BadInputError(path, f"line {ln}", "face corner without a texture index (v/vt)")
                        corners.append((int(idx[0]), int(idx[1])))
                    for k in range(1, len(corners) - 1):
                        faces.append((corners[0], corners[k], corners[k + 1]))
    except (OSError, ValueError, IndexError) as e:
        raise BadInputError(path, None, f"unreadable OBJ UV layout ({e})") from e
    if not vts or not faces:
        raise BadInputError(path, None, "no texture coordinates (vt) or faces (f v/vt) in the UV layout")
    corners = np.asarray(faces, dtype=np.int64).reshape(-1, 2)
    corners = np.where(corners < 0, corners + np.array([nv, len(vts)]) + 1, corners) - 1  # 1-based, negatives
    if corners[:, 0].min() < 0 or corners[:, 0].max() >= nv or corners[:, 1].min() < 0 or corners[:, 1].max() >= len(vts):
        raise BadInputError(path, "f", "vertex or texture index out of range")
    pairs, inverse = np.unique(corners, axis=0, return_inverse=True)
    return UVLayout(vmap=pairs[:, 0], uv=np.asarray(vts, dtype=np.float32)[pairs[:, 1]],
                    faces=inverse.reshape(-1, 3), num_body_vertices=nv)


def load_texture_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 sRGB texture image (alpha dropped). Raises BadInputError when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise BadInputError(path, None, f"unreadable texture image ({e})") from e

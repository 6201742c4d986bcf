"""SMPL-family body models: AMASS poses -> posed vertices and joints (shared by features and rendering).

:func:`load_body` gives the procedural body or a real model; both are smplx model classes, so posing is one code.
Model files are untrusted input: read by :mod:`lavimo.body.smpl_files` (allow-list unpickler, plain ``.npy``
reads), checked (:func:`model_arrays`) and handed to smplx as plain arrays only (``data_struct``; SMPL-X through
:func:`_smplx_from_arrays`): smplx never opens a model file.

Frames: AMASS root orientations map SMPL's body frame (Y up, facing +Z, left at +X) to the AMASS world
(**Z up**, metres), so :meth:`Body.pose` returns vertices and joints in the AMASS world frame with the
translation applied, exactly as AMASS's own body model does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lavimo.body.skeleton import mirror_permutation
from lavimo.core.errors import BadInputError

log = logging.getLogger(__name__)

MODEL_TYPES = ("smplh", "smplx", "smpl")
GENDERS = ("neutral", "male", "female")
POSE_WIDTHS = (156, 165)

@dataclass(frozen=True)
class BodyOutput:
    """Posed body, AMASS world frame (Z up, metres), translation applied.

    vertices: (T, V, 3) float32.  joints: (T, J, 3) float32, the model's kinematic joints (J = 24 for the
    procedural/SMPL body, 52 for SMPL-H, 55 for SMPL-X); the first 22 are SMPL's body joints for every kind.
    """

    vertices: np.ndarray
    joints: np.ndarray


def mirror_amass(poses: np.ndarray, trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an AMASS motion across the sagittal plane: left/right swapped, x -> -x.

    poses: (T, 156 | 165 | 72) axis-angle; trans: (T, 3) metres, AMASS world (Z up). Every rotation R (root
    included; AMASS's world x is reflected by the same M) becomes M R M, M = diag(-1, 1, 1): axis-angle
    (x, y, z) -> (x, -y, -z); left/right joints (hand blocks, SMPL-X's eyes) swap; trans x is negated. Exact for
    a left/right symmetric rest pose (the procedural body; real models' pelvis is ~2 mm off x = 0). New arrays
    of the input dtype.
    """
    poses = np.asarray(poses)
    trans = np.asarray(trans)
    if poses.ndim != 2 or poses.shape[1] % 3 or poses.shape[1] // 3 not in (24, 52, 55):
        raise BadInputError(None, "poses", f"expected (T, 72|156|165) axis-angle poses, got {poses.shape}")
    if trans.shape != (poses.shape[0], 3):
        raise BadInputError(None, "trans", f"expected ({poses.shape[0]}, 3), got {trans.shape}")
    n = poses.shape[1] // 3
    aa = poses.reshape(len(poses), n, 3)[:, mirror_permutation(n)] * np.array([1, -1, -1], dtype=poses.dtype)
    return aa.reshape(poses.shape).copy(), trans * np.array([-1, 1, 1], dtype=trans.dtype)


class Body:
    """A posable body model (procedural or real SMPL / SMPL-H / SMPL-X through smplx).

    Attributes:
        kind: "procedural" | "smpl" | "smplh" | "smplx".
        gender: the model's gender ("neutral" for the procedural body).
        faces: (F, 3) int32 triangle indices (outward facing).
        num_vertices: V.
        parents: (J,) int64 kinematic parents (root -1); J = 24 / 52 / 55.
        num_betas: shape coefficients the model uses (betas given to :meth:`pose` are cut/zero-padded).
        vertex_joint: (V,) int16 the joint with the largest skinning weight per vertex.
        source: the model file, or the procedural cache path.
    """

    def __init__(self, model: torch.nn.Module, kind: str, gender: str, source: str) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.kind = kind
        self.gender = gender
        self.source = source
        self.faces = np.asarray(model.faces, dtype=np.int32)
        self.parents = model.parents.detach().cpu().numpy().astype(np.int64)
        self.num_joints = len(self.parents)
        self.num_betas = int(model.num_betas)
        weights = model.lbs_weights.detach().cpu().numpy()
        v_template = model.v_template.detach().cpu().numpy()
        self.num_vertices = int(v_template.shape[0])
        self.vertex_joint = weights.argmax(axis=1).astype(np.int16)
        self._has_posedirs = bool(torch.count_nonzero(model.posedirs).item() > 0)

    def __repr__(self) -> str:
        return (f"Body(kind={self.kind!r}, gender={self.gender!r}, V={self.num_vertices}, "
                f"J={self.num_joints}, betas={self.num_betas})")

    # -- inputs ---------------------------------------------------------------------------------------
    def _betas(self, betas: Any) -> torch.Tensor:
        b = np.zeros(self.num_betas, dtype=np.float32)
        if betas is not None:
            arr = np.asarray(betas, dtype=np.float64).ravel()
            if not np.all(np.isfinite(arr)):
                raise BadInputError(None, "betas", "contains NaN/inf")
            k = min(len(arr), self.num_betas)
            b[:k] = arr[:k]
        return torch.from_numpy(b)[None]

    def _split(self, poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map (B, 156|165) AMASS poses onto the model's forward() arguments."""
        width = poses.shape[1]
        out = {"global_orient": poses[:, :3]}
        body = poses[:, 3:66]
        if width == 156:
            hands = poses[:, 66:156]
            jaw = eyes = None
        else:
            jaw, eyes, hands = poses[:, 66:69], poses[:, 69:75], poses[:, 75:165]
        if self.kind in ("procedural", "smpl"):
            out["body_pose"] = torch.cat([body, poses.new_zeros(len(poses), 6)], dim=1)
            return out
        out["body_pose"] = body
        out["left_hand_pose"] = hands[:, :45]
        out["right_hand_pose"] = hands[:, 45:]
        if self.kind == "smplx":
            zeros3 = poses.new_zeros(len(poses), 3)
            out["jaw_pose"] = jaw if jaw is not None else zeros3
            out["leye_pose"] = eyes[:, :3] if eyes is not None else zeros3
            out["reye_pose"] = eyes[:, 3:] if eyes is not None else zeros3
            out["expression"] = poses.new_zeros(len(poses), self.model.num_expression_coeffs)
        return out

    # -- posing ---------------------------------------------------------------------------------------
    def _full_pose(self, p: torch.Tensor) -> torch.Tensor:
        """(B, 156|165) AMASS poses -> (B, 3*J) full pose in the model's joint order (+ its pose mean)."""
        a = self._split(p)
        if self.kind in ("procedural", "smpl"):
            parts = [a["global_orient"], a["body_pose"]]
        elif self.kind == "smplh":
            parts = [a["global_orient"], a["body_pose"], a["left_hand_pose"], a["right_hand_pose"]]
        else:
            parts = [a["global_orient"], a["body_pose"], a["jaw_pose"], a["leye_pose"], a["reye_pose"],
                     a["left_hand_pose"], a["right_hand_pose"]]
        full = torch.cat(parts, dim=1)
        mean = getattr(self.model, "pose_mean", None)
        return full + mean if mean is not None else full

    def _check(self, poses: np.ndarray, trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        poses = np.asarray(poses)
        trans = np.asarray(trans)
        if poses.ndim != 2 or poses.shape[1] not in POSE_WIDTHS:
            raise BadInputError(None, "poses", f"expected (T, 156) SMPL-H or (T, 165) SMPL-X axis-angle poses, "
                                               f"got shape {poses.shape}")
        if trans.shape != (poses.shape[0], 3):
            raise BadInputError(None, "trans", f"expected shape ({poses.shape[0]}, 3), got {trans.shape}")
        if not (np.all(np.isfinite(poses)) and np.all(np.isfinite(trans))):
            raise BadInputError(None, "poses", "poses or trans contain NaN/inf")
        return poses, trans

    def pose(self, poses: np.ndarray, trans: np.ndarray, betas: np.ndarray | None = None,
             chunk: int = 128) -> BodyOutput:
        """Pose the body: AMASS axis-angle ``poses`` (T, 156 | 165) radians, ``trans`` (T, 3) metres and
        ``betas`` (n,) -> :class:`BodyOutput` in the AMASS world frame (Z up, metres), float32.

        Procedural / SMPL: root (3) and body (63) only (SMPL's hand joints 22/23 get zero rotation); SMPL-H also
        the 90 hand values, SMPL-X also jaw and eyes (zero for 156-dim input). Equals smplx's ``forward``
        (:meth:`pose_smplx`, to float32 rounding) with smplx's own building blocks, but shapes the body once per
        call, skips all-zero pose blend shapes and skins as one matrix product per ``chunk`` frames (CPU, no_grad).
        Raises :class:`BadInputError` for a wrong pose width, mismatched lengths or non-finite values.
        """
        from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints

        poses, trans = self._check(poses, trans)
        t, nv, nj = len(poses), self.num_vertices, self.num_joints
        verts = np.empty((t, nv, 3), dtype=np.float32)
        joints = np.empty((t, nj, 3), dtype=np.float32)
        m = self.model
        with torch.no_grad():
            beta = self._betas(betas)
            v_shaped = m.v_template[None] + blend_shapes(beta, m.shapedirs)          # (1, V, 3)
            j_rest = vertices2joints(m.J_regressor, v_shaped)                         # (1, J, 3)
            weights = m.lbs_weights                                                   # (V, J)
            # vertex-weight products K[v, 4j+c] = w[v, j] * (v_shaped, 1)[v, c]: with fixed rest vertices the
            # whole skinning is one product (B*3, 4J) @ (4J, V)
            vh = torch.cat([v_shaped[0], torch.ones(nv, 1)], dim=1)                   # (V, 4)
            k_t = (weights[:, :, None] * vh[:, None, :]).reshape(nv, nj * 4).T.contiguous()
            p_all = torch.from_numpy(np.ascontiguousarray(poses, dtype=np.float32))
            t_all = torch.from_numpy(np.ascontiguousarray(trans, dtype=np.float32))
            eye = torch.eye(3)
            for s in range(0, t, chunk):
                p = p_all[s:s + chunk]
                b = len(p)
                tr = t_all[s:s + b]
                rot = batch_rodrigues(self._full_pose(p).reshape(-1, 3)).view(b, -1, 3, 3)
                j_posed, rel = batch_rigid_transform(rot, j_rest.expand(b, -1, -1), m.parents)
                rel = rel[:, :, :3, :].clone()                                        # (B, J, 3, 4)
                rel[..., 3] += tr[:, None]              # weights sum to 1: translation rides along
                out = (rel.permute(0, 2, 1, 3).reshape(b * 3, nj * 4) @ k_t).view(b, 3, nv)
                out = out.transpose(1, 2)                                             # (B, V, 3)
                if self._has_posedirs:
                    # pose blend shapes: offsets d (B, V, 3) rotate with the blended rotations
                    feat = (rot[:, 1:] - eye).reshape(b, -1)
                    d = torch.matmul(feat, m.posedirs).view(b, nv, 3).transpose(0, 1)  # (V, B, 3)
                    rb = (weights @ rel[..., :3].permute(1, 0, 2, 3).reshape(nj, b * 9)).view(nv, b, 3, 3)
                    out = out + (rb[..., 0] * d[..., :1] + rb[..., 1] * d[..., 1:2]
                                 + rb[..., 2] * d[..., 2:3]).transpose(0, 1)
                verts[s:s + b] = out.numpy()
                joints[s:s + b] = (j_posed + tr[:, None]).numpy()
        return BodyOutput(vertices=verts, joints=joints)

    def pose_smplx(self, poses: np.ndarray, trans: np.ndarray, betas: np.ndarray | None = None,
                   chunk: int = 128) -> BodyOutput:
        """Same as :meth:`pose` through smplx's own ``forward`` (the reference; slower: it re-shapes the body
        and multiplies the pose blend shapes for every frame)."""
        poses, trans = self._check(poses, trans)
        t = len(poses)
        verts = np.empty((t, self.num_vertices, 3), dtype=np.float32)
        joints = np.empty((t, self.num_joints, 3), dtype=np.float32)
        beta = self._betas(betas)
        p_all = torch.from_numpy(np.ascontiguousarray(poses, dtype=np.float32))
        t_all = torch.from_numpy(np.ascontiguousarray(trans, dtype=np.float32))
        with torch.no_grad():
            for s in range(0, t, chunk):
                p = p_all[s:s + chunk]
                out = self.model(betas=beta.expand(len(p), -1), transl=t_all[s:s + chunk], return_verts=True,
                                 **self._split(p))
                verts[s:s + len(p)] = out.vertices.numpy()
                joints[s:s + len(p)] = out.joints[:, :self.num_joints].numpy()
        return BodyOutput(vertices=verts, joints=joints)

    def rest(self, betas: np.ndarray | None = None) -> BodyOutput:
        """The rest (zero) pose in SMPL's own frame (Y up, facing +Z, left at +X): vertices (1, V, 3),
        joints (1, J, 3) float32. (Not the AMASS world frame: no root rotation is applied.)"""
        width = 165 if self.kind == "smplx" else 156
        return self.pose(np.zeros((1, width)), np.zeros((1, 3)), betas)


# -- loading ------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """scipy.sparse -> dense ndarray; everything else unchanged."""
    if hasattr(value, "toarray") and "scipy.sparse" in type(value).__module__:
        return np.asarray(value.toarray())
    return value


@contextlib.contextmanager
def _quiet_smplx():
    """smplx prints warnings with print(); route them to our log instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("smplx: %s", line.strip())


def _check_gender(gender: str) -> str:
    g = str(gender).strip().lower()
    if g not in GENDERS:
        raise BadInputError(None, "gender", f"unknown gender {gender!r} (expected one of {', '.join(GENDERS)})")
    return g


def model_file_candidates(model_dir: str | os.PathLike, model_type: str, gender: str) -> list[Path]:
    """Where a model file is looked for, in order (smplx's layout first, then AMASS's)."""
    d = Path(model_dir)
    stem = f"{model_type.upper()}_{gender.upper()}"
    out = []
    for base in (d / model_type, d):
        out += [base / f"{stem}.npz", base / f"{stem}.pkl"]
    out.append(d / model_type / gender / "model.npz")
    return out


def find_model_file(model_dir: str | os.PathLike, model_type: str, gender: str) -> Path:
    """The model file for (type, gender) under ``model_dir``; FileNotFoundError naming what was expected."""
    cands = model_file_candidates(model_dir, model_type, gender)
    for c in cands:
        if c.is_file():
            return c
    for c in cands:   # the official downloads spell some names in lower case (SMPLH_male.pkl)
        if c.parent.is_dir():
            for f in sorted(c.parent.iterdir()):
                if f.name.lower() == c.name.lower() and f.is_file():
                    return f
    raise FileNotFoundError(
        f"no {model_type.upper()} {gender} body model under {model_dir}: expected "
        f"{cands[0].relative_to(model_dir)} (or {cands[1].relative_to(model_dir)}) in smplx's layout "
        f"(e.g. {Path(model_dir) / model_type / (model_type.upper() + '_' + gender.upper() + '.npz')}); "
        f"download it from the SMPL-family website, or omit --body-models to use the procedural body")


#: joints per real model kind (SMPL-H / SMPL-X as smplx builds them)
_NUM_JOINTS = {"smpl": 24, "smplh": 52, "smplx": 55}
#: fewest shape columns per kind (SMPL-X's first 10 of >= 20 are shape, the next 10 expression)
_MIN_SHAPE_COLS = {"smpl": 10, "smplh": 10, "smplx": 20}


def _read_model_data(path: Path) -> dict[str, Any]:
    """Every member of a model file, read by the restricted loaders of :mod:`lavimo.body.smpl_files`
    (``.pkl``: allow-list unpickler; ``.npz``: plain ``.npy`` reads, object members through the same
    allow-list). scipy.sparse values are made dense. Never ``np.load`` / ``pickle.load``."""
    from lavimo.body.smpl_files import load_npz_restricted, load_smpl_pickle

    if path.suffix.lower() == ".pkl":
        data = load_smpl_pickle(path)
    elif path.suffix.lower() == ".npz":
        data = load_npz_restricted(path)
    else:
        raise BadInputError(path, None, "a body model file must be an .npz or a .pkl")
    return {k: _plain(v) for k, v in data.items()}


def _array(path: Path, data: dict[str, Any], key: str, kinds: str, ndim: tuple[int, ...]) -> np.ndarray:
    if key not in data:
        raise BadInputError(path, key, "model file lacks this member")
    a = data[key]
    if not isinstance(a, np.ndarray) or a.dtype.kind not in kinds:
        what = f"dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise BadInputError(path, key, f"expected an array of {'integers' if kinds == 'iu' else 'numbers'}, "
                                       f"got {what}")
    if a.ndim not in ndim:
        raise BadInputError(path, key, f"expected {' or '.join(map(str, ndim))} dimensions, got shape {a.shape}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise BadInputError(path, key, "contains NaN/inf")
    return a


def model_arrays(path: str | os.PathLike, data: dict[str, Any], model_type: str) -> dict[str, np.ndarray]:
    """The plain arrays smplx needs for ``model_type`` from the members ``data`` of model file ``path``, checked
    for dtype (numbers, no objects), shape and consistency. V vertices, F faces, J joints (24 / 52 / 55), K shape
    columns (>= 10; >= 20 for SMPL-X, whose columns 10:20 (or 300:310 with >= 400) are expression directions),
    P = 9 (J - 1) pose-blend columns:
    ``v_template`` (V, 3), ``f`` (F, 3) ints in [0, V), ``shapedirs`` (V, 3, K), ``posedirs`` (V, 3, P) or
    (3V, P), ``J_regressor`` (J, V), ``kintree_table`` (2, J) with parents before children, ``weights``
    (V, J); SMPL-H/SMPL-X also ``hands_components{l,r}`` (n, 45) and ``hands_mean{l,r}`` (45,) (identity /
    zeros when absent); SMPL-X also ``lmk_faces_idx`` (L,) ints in [0, F) and ``lmk_bary_coords`` (L, 3).
    Other members are dropped. Raises BadInputError(path, member) naming the first bad member.
    """
    from smplx.vertex_ids import vertex_ids

    path = Path(path)
    f = _array(path, data, "f", "iu", (2,))
    v = _array(path, data, "v_template", "f", (2,))
    nv = v.shape[0]
    if v.shape[1] != 3:
        raise BadInputError(path, "v_template", f"expected (V, 3), got {v.shape}")
    need_v = max(vertex_ids["smplx" if model_type == "smplx" else "smplh"].values()) + 1
    if nv < need_v:
        raise BadInputError(path, "v_template", f"{model_type.upper()} needs at least {need_v} vertices, "
                                                f"got {nv}")
    if f.shape[1] != 3 or f.shape[0] == 0 or f.min() < 0 or f.max() >= nv:
        raise BadInputError(path, "f", f"expected (F, 3) vertex indices in [0, {nv}), got shape {f.shape}")
    kintree = _array(path, data, "kintree_table", "iu", (2,))
    nj = _NUM_JOINTS[model_type]
    if kintree.shape != (2, nj):
        raise BadInputError(path, "kintree_table", f"{model_type.upper()} has {nj} joints: expected (2, {nj}), "
                                                   f"got {kintree.shape}")
    parents = kintree[0].astype(np.int64)
    if not all(0 <= parents[j] < j for j in range(1, nj)):
        raise BadInputError(path, "kintree_table", "every joint's parent must be an earlier joint")
    out: dict[str, np.ndarray] = {"f": f, "v_template": v, "kintree_table": kintree}
    weights = _array(path, data, "weights", "f", (2,))
    if weights.shape != (nv, nj):
        raise BadInputError(path, "weights", f"expected ({nv}, {nj}), got {weights.shape}")
    reg = _array(path, data, "J_regressor", "f", (2,))
    if reg.shape != (nj, nv):
        raise BadInputError(path, "J_regressor", f"expected ({nj}, {nv}), got {reg.shape}")
    sd = _array(path, data, "shapedirs", "f", (3,))
    if sd.shape[:2] != (nv, 3) or sd.shape[2] < _MIN_SHAPE_COLS[model_type]:
        raise BadInputError(path, "shapedirs", f"expected ({nv}, 3, >= {_MIN_SHAPE_COLS[model_type]}), got "
                                               f"{sd.shape}")
    pd = _array(path, data, "posedirs", "f", (2, 3))
    npose = 9 * (nj - 1)
    if pd.shape not in ((nv, 3, npose), (3 * nv, npose)):
        raise BadInputError(path, "posedirs", f"expected ({nv}, 3, {npose}), got {pd.shape}")
    out.update(weights=weights, J_regressor=reg, shapedirs=sd, posedirs=pd)
    if model_type in ("smplh", "smplx"):
        for side in ("l", "r"):
            comp, mean = f"hands_components{side}", f"hands_mean{side}"
            out[comp] = (_array(path, data, comp, "f", (2,)) if comp in data else np.eye(45))
            out[mean] = (_array(path, data, mean, "f", (1,)) if mean in data else np.zeros(45))
            if out[comp].shape[1:] != (45,) or out[mean].shape != (45,):
                bad = comp if out[comp].shape[1:] != (45,) else mean
                raise BadInputError(path, bad, f"expected 45 hand-pose values, got shape {out[bad].shape}")
    if model_type == "smplx":
        idx = _array(path, data, "lmk_faces_idx", "iu", (1,))
        bary = _array(path, data, "lmk_bary_coords", "f", (2,))
        if len(idx) and (idx.min() < 0 or idx.max() >= len(f)):
            raise BadInputError(path, "lmk_faces_idx", f"face indices outside [0, {len(f)})")
        if bary.shape != (len(idx), 3):
            raise BadInputError(path, "lmk_bary_coords", f"expected ({len(idx)}, 3), got {bary.shape}")
        out.update(lmk_faces_idx=idx, lmk_bary_coords=bary)
    return out


def _smplx_from_arrays(path: Path, arrays: dict[str, np.ndarray], gender: str, num_betas: int,
                       num_expression_coeffs: int = 10) -> torch.nn.Module:
    """An ``smplx.SMPLX`` built from arrays we read ourselves, without ``SMPLX.__init__`` (which always reads the
    file with a pickle-enabled loader): ``SMPLX.__new__``, the SMPL-H part by ``SMPLH.__init__`` with
    ``data_struct`` (no file; SMPL-X's vertex ids, flat hand mean, no PCA), the SMPL-X additions registered as
    smplx 0.1.28 does (no face contour). tests/test_untrusted_pickle.py checks it equals smplx's own loading.
    """
    import smplx
    from smplx.vertex_ids import vertex_ids

    dtype = torch.float32
    model = smplx.SMPLX.__new__(smplx.SMPLX)
    smplx.SMPLH.__init__(model, model_path=str(path), data_struct=SimpleNamespace(**arrays), num_betas=num_betas,
                         gender=gender, use_pca=False, flat_hand_mean=True, vertex_ids=vertex_ids["smplx"],
                         dtype=dtype, batch_size=1, ext="npz")
    model.register_buffer("lmk_faces_idx", torch.tensor(arrays["lmk_faces_idx"].astype(np.int64)))
    model.register_buffer("lmk_bary_coords", torch.tensor(arrays["lmk_bary_coords"], dtype=dtype))
    model.use_face_contour = False
    for name in ("jaw_pose", "leye_pose", "reye_pose"):
        model.register_parameter(name, torch.nn.Parameter(torch.zeros(1, 3, dtype=dtype), requires_grad=True))
    shapedirs = arrays["shapedirs"]
    full = smplx.SMPLX.SHAPE_SPACE_DIM + smplx.SMPLX.EXPRESSION_SPACE_DIM
    if shapedirs.shape[-1] < full:
        start, n = 10, min(num_expression_coeffs, 10)
    else:
        start, n = smplx.SMPLX.SHAPE_SPACE_DIM, min(num_expression_coeffs, smplx.SMPLX.EXPRESSION_SPACE_DIM)
    model._num_expression_coeffs = n
    model.register_buffer("expr_dirs", torch.tensor(np.asarray(shapedirs[:, :, start:start + n]), dtype=dtype))
    model.register_parameter("expression", torch.nn.Parameter(torch.zeros(1, n, dtype=dtype), requires_grad=True))
    return model


def _load_real(model_dir: str | os.PathLike, model_type: str, gender: str, num_betas: int) -> Body:
    import smplx

    path = find_model_file(model_dir, model_type, gender)
    arrays = model_arrays(path, _read_model_data(path), model_type)
    log.info("loading %s %s body model from %s", model_type.upper(), gender, path)
    # smplx is only handed plain arrays (data_struct / _smplx_from_arrays): it never opens the file itself
    with _quiet_smplx():
        if model_type == "smpl":
            model = smplx.SMPL(model_path=str(path), data_struct=SimpleNamespace(**arrays), num_betas=num_betas,
                               gender=gender)
        elif model_type == "smplh":
            model = smplx.SMPLH(model_path=str(path), data_struct=SimpleNamespace(**arrays), num_betas=num_betas,
                                gender=gender, use_pca=False, flat_hand_mean=True)
        else:
            model = _smplx_from_arrays(path, arrays, gender, num_betas)
    return Body(model, model_type, gender, str(path))


_PROCEDURAL: dict[int, Body] = {}


def _load_procedural(num_betas: int) -> Body:
    import smplx

    from lavimo.body.procedural import cache_path, load_procedural_body, procedural_posedirs

    if num_betas in _PROCEDURAL:
        return _PROCEDURAL[num_betas]
    d = load_procedural_body()
    struct = SimpleNamespace(f=d["f"].astype(np.int64), v_template=d["v_template"], shapedirs=d["shapedirs"],
                     posedirs=procedural_posedirs(len(d["v_template"])), J_regressor=d["J_regressor"],
                     kintree_table=d["kintree_table"], weights=d["weights"])
    vertex_ids = {str(k): int(v) for k, v in zip(d["vertex_ids_names"], d["vertex_ids_values"])}
    with _quiet_smplx():
        model = smplx.SMPL(model_path=str(cache_path()), data_struct=struct, num_betas=num_betas,
                           vertex_ids=vertex_ids)
    body = Body(model, "procedural", "neutral", str(cache_path()))
    _PROCEDURAL[num_betas] = body
    return body


def load_body(model_dir: str | os.PathLike | None = None, model_type: str = "smplh", gender: str = "neutral",
              num_betas: int = 10) -> Body:
    """Load a body model.

    model_dir None -> the one neutral procedural SMPL-compatible body (:mod:`lavimo.body.procedural`; kind
    "procedural", ``model_type`` / ``gender`` ignored; cached per process and on disk). Otherwise a real model
    from ``model_dir`` in smplx's layout (``smplh/SMPLH_MALE.pkl`` or ``.npz``, ``smplx/SMPLX_FEMALE.npz``, ...;
    AMASS's ``smplh/male/model.npz`` too): ``model_type`` "smplh" (156-dim AMASS poses), "smplx" (165-dim) or
    "smpl"; ``gender`` "neutral" | "male" | "female". Raises BadInputError for an unknown gender/model type or a
    malformed model file, FileNotFoundError (naming the expected file) when the file is missing.
    """
    g = _check_gender(gender)
    if model_dir is None:
        return _load_procedural(int(num_betas))
    mt = str(model_type).strip().lower()
    if mt not in MODEL_TYPES:
        raise BadInputError(None, "model_type", f"unknown body model type {model_type!r} (expected "
                                                f"{', '.join(MODEL_TYPES)})")
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"--body-models directory {model_dir} does not exist")
    return _load_real(model_dir, mt, g, int(num_betas))

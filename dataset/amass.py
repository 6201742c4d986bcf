"""Reading AMASS motion files (``*_poses.npz`` / ``*_stageii.npz``).

AMASS stores SMPL-H (156 = 3 root + 63 body + 90 hand) or SMPL-X (165 = 3 root + 63 body + 3 jaw
+ 6 eyes + 90 hand) axis-angle poses per mocap frame, root translation in metres in a **Z-up**
world frame, shape coefficients and the gender of the body model used for fitting.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lavimo.core.errors import BadInputError

POSE_WIDTHS = {156: "smplh", 165: "smplx"}
_FPS_KEYS = ("mocap_framerate", "mocap_frame_rate")


@dataclass(frozen=True)
class AmassMotion:
    """One AMASS sequence.

    Attributes:
        path: the file it was read from.
        poses: (T, 156) SMPL-H or (T, 165) SMPL-X axis-angle, radians, float64.
        trans: (T, 3) root translation, metres, AMASS world frame (Z-up).
        betas: (10,) or (16,) shape coefficients (SMPL-X files may hold more; kept as stored).
        gender: "male" | "female" | "neutral".
        fps: mocap frame rate in frames per second (> 0).
        model_type: "smplh" (156-dim poses) or "smplx" (165-dim poses).
    """

    path: str
    poses: np.ndarray
    trans: np.ndarray
    betas: np.ndarray
    gender: str
    fps: float
    model_type: str

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.fps


def normalise_gender(value: object, path: str | os.PathLike = "<input>") -> str:
    """Gender as stored in AMASS (str, bytes, 0-d array) -> "male" | "female" | "neutral"."""
    v = value
    if isinstance(v, np.ndarray):
        if v.ndim != 0 and v.size != 1:
            raise BadInputError(path, "gender", f"expected a scalar, got shape {v.shape}")
        v = v.reshape(()).item()
    if isinstance(v, (bytes, np.bytes_)):
        v = bytes(v).decode("utf-8", errors="replace")
    if not isinstance(v, str):
        raise BadInputError(path, "gender", f"expected a string, got {type(v).__name__}")
    g = v.strip().lower()
    if g in ("male", "m"):
        return "male"
    if g in ("female", "f"):
        return "female"
    if g in ("neutral", "n", ""):
        return "neutral"
    raise BadInputError(path, "gender", f"unknown gender {v!r} (expected male, female or neutral)")


def _finite(path: str, field: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise BadInputError(path, field, f"contains NaN/inf (first at index {tuple(int(i) for i in bad)})")


_NUMERIC_KINDS = "iuf"
#: an object (pickled) AMASS member is unpickled only up to this size (``gender`` is a few bytes)
_MAX_OBJECT_MEMBER_BYTES = 1 << 16
#: largest AMASS array read (bytes): 256 MiB, 2.7x the poses of a 10-minute take at 120 fps (72000 x 165
#: float64, 95 MB); a compressed member that inflates past it is refused before it is read
MAX_AMASS_ARRAY_BYTES = 1 << 28


def _open_npz(path: str) -> zipfile.ZipFile:
    from lavimo.core.restricted_unpickle import open_npz

    if not Path(path).is_file():
        raise BadInputError(path, None, "file not found")
    return open_npz(path)  # the checked reader's opener: BadInputError(path, "archive") for a damaged file


def _unpickle_plain(raw: bytes, path: str, key: str) -> np.ndarray:
    """An object ``.npy`` member (a pickle of the array) -> object array of plain values: unpickled by
    :class:`lavimo.core.restricted_unpickle.NumpyUnpickler` (numpy's checked array reconstruction and ``_codecs.encode``
    to latin-1, no other global), elements then checked by :func:`lavimo.core.restricted_unpickle.check_plain`
    (builtin str/bytes/numbers/None, lists/tuples/dicts of them). Anything else -> BadInputError(path, key).
    """
    from lavimo.core.restricted_unpickle import NumpyUnpickler, check_plain, restricted_load

    if len(raw) > _MAX_OBJECT_MEMBER_BYTES:
        raise BadInputError(path, key, f"object array larger than {_MAX_OBJECT_MEMBER_BYTES} bytes")
    obj = restricted_load(io.BytesIO(raw), Path(path), key, NumpyUnpickler)
    if not isinstance(obj, np.ndarray) or obj.dtype != np.dtype(object):
        raise BadInputError(path, key, f"object member holds a {type(obj).__name__}, not an object array")
    arr = obj.view(np.ndarray)
    try:
        for v in arr.reshape(-1):
            check_plain(v)
    except (ValueError, RecursionError) as e:
        raise BadInputError(path, key, f"object array element {e}") from e
    out = np.empty(arr.shape, dtype=object)
    out.reshape(-1)[:] = list(arr.reshape(-1))
    return out


def _read(zf: zipfile.ZipFile, path: str, key: str, numeric: bool = True) -> np.ndarray:
    """Member ``key`` through :func:`lavimo.core.restricted_unpickle.read_npz_member` (at most
    :data:`MAX_AMASS_ARRAY_BYTES`): ``numeric`` a non-object array of booleans/integers/floats, else BadInputError;
    otherwise (``gender``) a str/bytes array, or an object array through :func:`_unpickle_plain`."""
    from lavimo.core.restricted_unpickle import read_npz_member

    if numeric:
        arr = read_npz_member(zf, path, key, max_bytes=MAX_AMASS_ARRAY_BYTES)
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise BadInputError(path, key, f"expected numbers, got dtype {arr.dtype}")
        return arr
    return read_npz_member(zf, path, key, object_loader=lambda raw: _unpickle_plain(raw, path, key),
                           max_bytes=MAX_AMASS_ARRAY_BYTES)


def amass_file(amass_root: str | os.PathLike, amass_path: str) -> tuple[str, Path]:
    """(the relative path used, the file) for ``amass_path`` under ``amass_root``: ``ROOT/amass_path``, falling
    back from ``*_poses.npz`` to ``*_stageii.npz`` (AMASS's newer release) when only that one exists. The file
    need not exist (the caller reports it)."""
    p = Path(amass_root) / amass_path
    if not p.is_file() and amass_path.endswith("_poses.npz"):
        alt = amass_path[: -len("_poses.npz")] + "_stageii.npz"
        if (Path(amass_root) / alt).is_file():
            return alt, Path(amass_root) / alt
    return amass_path, p


def read_amass_header(path: str | os.PathLike) -> tuple[int, float]:
    """(number of frames, fps) of an AMASS file from the array headers and the fps member only (no pose data,
    nothing unpickled, no NaN scan): the shape, dtype and fps checks of :func:`load_amass`, same BadInputErrors."""
    from lavimo.core.restricted_unpickle import read_npz_header

    path = os.fspath(path)
    with _open_npz(path) as zf:

        def shape_of(key: str) -> tuple[int, ...]:
            shape, _, dtype = read_npz_header(zf, path, key, MAX_AMASS_ARRAY_BYTES)
            if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS:
                raise BadInputError(path, key, f"expected numbers, got dtype {dtype}")
            return shape

        pshape = shape_of("poses")
        if len(pshape) != 2 or pshape[1] not in POSE_WIDTHS:
            raise BadInputError(path, "poses", f"expected shape (T, 156) or (T, 165), got {pshape}")
        if pshape[0] == 0:
            raise BadInputError(path, "poses", "zero frames")
        tshape = shape_of("trans")
        if tshape != (pshape[0], 3):
            raise BadInputError(path, "trans", f"expected shape ({pshape[0]}, 3), got {tshape}")
        fps_key, fps = _fps(zf, path)
    return pshape[0], fps


def _fps(zf: zipfile.ZipFile, path: str) -> tuple[str, float]:
    names = set(zf.namelist())
    fps_key = next((k for k in _FPS_KEYS if f"{k}.npy" in names), None)
    if fps_key is None:
        raise BadInputError(path, "mocap_framerate", "missing key (nor mocap_frame_rate)")
    arr = _read(zf, path, fps_key)
    if arr.size != 1:
        raise BadInputError(path, fps_key, f"expected a number, got shape {arr.shape}")
    fps = float(arr.reshape(()))
    if not np.isfinite(fps) or fps <= 0:
        raise BadInputError(path, fps_key, f"must be a positive number, got {fps}")
    return fps_key, fps


def load_amass(path: str | os.PathLike) -> AmassMotion:
    """Read and validate one AMASS npz file (untrusted input: member by member, never ``np.load`` or numpy's
    pickle path). ``poses``, ``trans``, ``betas`` and the frame rate must be plain numeric arrays; ``gender`` may
    be a str/bytes array or an object array (some AMASS releases; :func:`_unpickle_plain`). Other members are
    not read. Raises BadInputError naming the file and the field: missing/unreadable/truncated file, missing
    key, wrong shape or dtype, an object member that is not plain data, NaN/inf, zero frames, fps <= 0.
    """
    path = os.fspath(path)
    with _open_npz(path) as zf:
        poses = np.asarray(_read(zf, path, "poses"), dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] not in POSE_WIDTHS:
            raise BadInputError(path, "poses", f"expected shape (T, 156) or (T, 165), got {poses.shape}")
        if poses.shape[0] == 0:
            raise BadInputError(path, "poses", "zero frames")
        trans = np.asarray(_read(zf, path, "trans"), dtype=np.float64)
        if trans.shape != (poses.shape[0], 3):
            raise BadInputError(path, "trans", f"expected shape ({poses.shape[0]}, 3), got {trans.shape}")
        betas = np.asarray(_read(zf, path, "betas"), dtype=np.float64).reshape(-1)
        if betas.size < 10:
            raise BadInputError(path, "betas", f"expected at least 10 values, got {betas.size}")
        has_gender = "gender.npy" in zf.namelist()
        gender = normalise_gender(_read(zf, path, "gender", numeric=False), path) if has_gender else "neutral"
        _, fps = _fps(zf, path)
    _finite(path, "poses", poses)
    _finite(path, "trans", trans)
    _finite(path, "betas", betas)
    return AmassMotion(path=path, poses=poses, trans=trans, betas=betas, gender=gender, fps=fps,
                       model_type=POSE_WIDTHS[poses.shape[1]])

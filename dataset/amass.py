"""Reading AMASS motion files (``*_poses.npz`` / ``*_stageii.npz``).

AMASS stores SMPL-H (156 = 3 root + 63 body + 90 hand) or SMPL-X (165 = 3 root + 63 body + 3 jaw
+ 6 eyes + 90 hand) axis-angle poses per mocap frame, root translation in metres in a **Z-up**
world frame, shape coefficients and the gender of the body model used for fitting.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.errors import BadInputError

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


def read_amass_header(path: str | os.PathLike) -> tuple[int, float]:
    """(number of frames, fps) of an AMASS file, reading only array headers and the fps member.

    Much faster than :func:`load_amass` (no pose data is read). Checks that ``poses`` is (T, 156|165)
    with T > 0, that ``trans`` is (T, 3) and that the fps is positive; it does not scan for NaN.

    Raises:
        BadInputError: naming the file and the field (missing/unreadable/truncated file, missing key,
            wrong shape, zero frames, bad fps).
    """
    path = os.fspath(path)
    if not Path(path).is_file():
        raise BadInputError(path, None, "file not found")
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise BadInputError(path, "archive", f"unreadable or truncated npz ({e})") from e
    with zf:
        names = set(zf.namelist())

        def shape_of(key: str) -> tuple[int, ...]:
            if f"{key}.npy" not in names:
                raise BadInputError(path, key, "missing key")
            try:
                with zf.open(f"{key}.npy") as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(fh)
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
                raise BadInputError(path, key, f"unreadable or truncated ({e})") from e
            return tuple(int(s) for s in shape)

        pshape = shape_of("poses")
        if len(pshape) != 2 or pshape[1] not in POSE_WIDTHS:
            raise BadInputError(path, "poses", f"expected shape (T, 156) or (T, 165), got {pshape}")
        if pshape[0] == 0:
            raise BadInputError(path, "poses", "zero frames")
        tshape = shape_of("trans")
        if tshape != (pshape[0], 3):
            raise BadInputError(path, "trans", f"expected shape ({pshape[0]}, 3), got {tshape}")
        fps_key = next((k for k in _FPS_KEYS if f"{k}.npy" in names), None)
        if fps_key is None:
            raise BadInputError(path, "mocap_framerate", "missing key (nor mocap_frame_rate)")
        try:
            with zf.open(f"{fps_key}.npy") as fh:
                fps = float(np.lib.format.read_array(fh, allow_pickle=False).reshape(()))
        except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as e:
            raise BadInputError(path, fps_key, f"unreadable or not a number ({e})") from e
    if not np.isfinite(fps) or fps <= 0:
        raise BadInputError(path, fps_key, f"must be a positive number, got {fps}")
    return pshape[0], fps


def load_amass(path: str | os.PathLike) -> AmassMotion:
    """Read and validate one AMASS npz file.

    Raises:
        BadInputError: naming the file and the field for a missing/unreadable/truncated file, a
            missing key, a wrong shape, NaN/inf values, zero frames or a non-positive fps.
    """
    path = os.fspath(path)
    if not Path(path).is_file():
        raise BadInputError(path, None, "file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise BadInputError(path, "archive", f"unreadable or truncated npz ({e})") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise BadInputError(path, "archive", "not an npz archive")

    def get(key: str) -> np.ndarray:
        if key not in data.files:
            raise BadInputError(path, key, "missing key")
        try:
            return data[key]
        except ValueError as e:  # object arrays need pickle
            try:
                return np.load(path, allow_pickle=True)[key]
            except Exception as e2:  # noqa: BLE001
                raise BadInputError(path, key, f"unreadable ({e2})") from e
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise BadInputError(path, key, f"unreadable or truncated ({e})") from e

    with data:
        poses = np.asarray(get("poses"), dtype=np.float64) if "poses" in data.files else None
        if poses is None:
            raise BadInputError(path, "poses", "missing key")
        if poses.ndim != 2 or poses.shape[1] not in POSE_WIDTHS:
            raise BadInputError(path, "poses", f"expected shape (T, 156) or (T, 165), got {poses.shape}")
        if poses.shape[0] == 0:
            raise BadInputError(path, "poses", "zero frames")
        trans = np.asarray(get("trans"), dtype=np.float64)
        if trans.shape != (poses.shape[0], 3):
            raise BadInputError(path, "trans", f"expected shape ({poses.shape[0]}, 3), got {trans.shape}")
        betas = np.asarray(get("betas"), dtype=np.float64).reshape(-1)
        if betas.size < 10:
            raise BadInputError(path, "betas", f"expected at least 10 values, got {betas.size}")
        gender = normalise_gender(get("gender"), path) if "gender" in data.files else "neutral"
        fps_key = next((k for k in _FPS_KEYS if k in data.files), None)
        if fps_key is None:
            raise BadInputError(path, "mocap_framerate", "missing key (nor mocap_frame_rate)")
        fps_arr = np.asarray(get(fps_key))
        try:
            fps = float(fps_arr.reshape(()))
        except (TypeError, ValueError) as e:
            raise BadInputError(path, fps_key, f"expected a number, got {fps_arr!r}") from e
    if not np.isfinite(fps) or fps <= 0:
        raise BadInputError(path, fps_key, f"must be a positive number, got {fps}")
    _finite(path, "poses", poses)
    _finite(path, "trans", trans)
    _finite(path, "betas", betas)
    return AmassMotion(path=path, poses=poses, trans=trans, betas=betas, gender=gender, fps=fps,
                       model_type=POSE_WIDTHS[poses.shape[1]])

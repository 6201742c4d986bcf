"""Which AMASS frames make up a clip: the HumanML3D rule and the time rule.

Both return **AMASS frame indices** (int64, one per motion frame), so frame i of the clip's motion
(and of its video) is AMASS frame ``indices[i]``.
"""

from __future__ import annotations

import math

import numpy as np

HUMANML3D_FPS = 20.0

# Leading seconds HumanML3D drops per AMASS sub-dataset (its cropping script), counted in 20-fps frames.
HUMANML3D_TRIM_SECONDS: dict[str, float] = {
    "Eyes_Japan_Dataset": 3.0,
    "MPI_HDM05": 3.0,
    "TotalCapture": 1.0,
    "MPI_Limits": 1.0,
    "Transitions_mocap": 0.5,
}


def humanml3d_trim_frames(amass_path: str, fps: float = HUMANML3D_FPS) -> int:
    """Number of leading 20-fps frames HumanML3D drops for the sub-dataset named in ``amass_path``."""
    for name, seconds in HUMANML3D_TRIM_SECONDS.items():
        if name in amass_path:
            return int(seconds * fps)
    return 0


def humanml3d_frame_indices(amass_path: str, num_frames: int, fps: float,
                            start_frame: int, end_frame: int) -> np.ndarray:
    """AMASS frame indices of a HumanML3D clip (frame-exact with HumanML3D's motion files).

    HumanML3D keeps every ``int(fps / 20)``-th AMASS frame starting at 0, drops the leading seconds
    of some sub-datasets (:data:`HUMANML3D_TRIM_SECONDS`, in 20-fps frames), then slices
    ``[start_frame:end_frame]`` as given in ``index.csv``; ``end_frame == -1`` means to the end
    (only HumanAct12 rows use it in the released index, and those are not AMASS motions). ``amass_path``: as in
    index.csv (only the sub-dataset name matters); ``num_frames`` / ``fps``: the AMASS sequence's.
    """
    stride = int(fps / HUMANML3D_FPS)
    if stride < 1:
        raise ValueError(f"{amass_path}: fps {fps} is below 20; HumanML3D's rule needs >= 20 fps")
    sub = np.arange(0, num_frames, stride, dtype=np.int64)
    sub = sub[humanml3d_trim_frames(amass_path):]
    end = None if end_frame == -1 else int(end_frame)
    return sub[int(start_frame):end]


def time_frame_indices(num_frames: int, fps: float, target_fps: float = HUMANML3D_FPS,
                       start: float = 0.0, end: float | None = None) -> np.ndarray:
    """AMASS frame indices resampling ``[start, end)`` seconds (``end`` None or < 0: to the end) to ``target_fps``:
    frame i is the nearest AMASS frame to ``start + i / target_fps`` (``round(t * fps)``, clipped), for
    ``floor((end - start) * target_fps + 1e-6)`` frames."""
    duration = num_frames / fps
    if end is None or end < 0 or end > duration:
        end = duration
    start = max(0.0, float(start))
    n = int(math.floor((end - start) * target_fps + 1e-6))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    t = start + np.arange(n, dtype=np.float64) / target_fps
    return np.clip(np.rint(t * fps).astype(np.int64), 0, num_frames - 1)

"""Trajectory adjustment: a follow camera that keeps the avatar in frame for any clip.

Method ("follow_camera"): the camera (and the lights, which live in the camera frame) translates in the
ground plane along a **smoothed root trajectory**; its height and orientation never change. This is the
same image as subtracting the smoothed root trajectory from the body, except that the floor stays fixed
in the world, so walking still reads as walking. The root's ground-plane path (AMASS x, y; Z is up) is
smoothed with a Gaussian of ``sigma_s`` seconds (ends extended by point reflection, so constant-velocity
motion is followed without lag), then the body's offset from the camera target is clamped to
``max_offset_m`` per axis so fast motion cannot leave the frame. Vertical motion is never followed.
The floor height is the clip's lowest vertex (a jump leaves the floor; a crawl touches it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d


@dataclass(frozen=True)
class Trajectory:
    """Per-frame camera target and the floor of one clip.

    Attributes:
        target_xy: (T, 2) float64 camera look-at point in the ground plane, metres (AMASS x, y).
        floor_z: floor height, metres (AMASS z).
        sigma_s, max_offset_m: the parameters used.
    """

    target_xy: np.ndarray
    floor_z: float
    sigma_s: float
    max_offset_m: tuple[float, float]

    def to_dict(self, decimals: int = 3) -> dict:
        """JSON-ready record for the sidecar (target path rounded to millimetres)."""
        return {
            "method": "follow_camera",
            "description": "camera translates in the ground plane along the Gaussian-smoothed root (pelvis) "
                           "x,y path, offsets clamped; height and orientation fixed; floor fixed in the world",
            "sigma_s": self.sigma_s,
            "max_offset_m": list(self.max_offset_m),
            "floor_z_m": round(float(self.floor_z), decimals),
            "target_xy_m": np.round(self.target_xy, decimals).tolist(),
        }


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with point-reflected ends (keeps linear trends exact)."""
    n = len(x)
    if n < 2 or sigma <= 0:
        return x.copy()
    pad = min(n - 1, int(np.ceil(4 * sigma)))
    head = 2 * x[0] - x[pad:0:-1]
    tail = 2 * x[-1] - x[-2:-pad - 2:-1]
    y = gaussian_filter1d(np.concatenate([head, x, tail]), sigma, axis=0, mode="nearest")
    return y[pad:pad + n]


def follow_trajectory(root: np.ndarray, vertices_min_z: np.ndarray | float, fps: float,
                      sigma_s: float = 0.5, max_offset_m: tuple[float, float] = (0.35, 0.5)) -> Trajectory:
    """Camera path for one clip.

    Args:
        root: (T, 3) root (pelvis) positions, metres, AMASS world frame (Z-up).
        vertices_min_z: (T,) lowest vertex height per frame (or a scalar), metres.
        fps: frames per second of the clip.
        sigma_s: smoothing width in seconds.
        max_offset_m: the largest |root - target| allowed along AMASS x (image horizontal) and y (depth).
    """
    root = np.asarray(root, dtype=np.float64)
    xy = root[:, :2]
    target = _smooth(xy, sigma_s * float(fps))
    lim = np.asarray(max_offset_m, dtype=np.float64)
    off = np.clip(xy - target, -lim, lim)
    target = xy - off
    floor = float(np.min(vertices_min_z))
    return Trajectory(target_xy=target, floor_z=floor, sigma_s=float(sigma_s),
                      max_offset_m=(float(lim[0]), float(lim[1])))

"""Stick-figure preview videos of a motion (features or joints -> mp4), for databases without rendered videos.

A plain numpy rasteriser (no OpenGL): the 22 SMPL joints of HumanML3D's skeleton, drawn as its five kinematic
chains (``dataset.motion.HUMANML3D.chains``; left side blue, right side red, spine grey) in an orthographic view
30 degrees off the front, the camera following the root horizontally, the ground as a line. Features are turned
into joints with ``dataset.features.features_to_joints`` (HumanML3D's ``recover_from_ric``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._project import BadInputError, atomic_path

# chain colours (RGB) in the order of HUMANML3D.chains: right leg, left leg, spine, right arm, left arm
_COLOURS = ((214, 60, 60), (60, 110, 214), (90, 90, 90), (214, 60, 60), (60, 110, 214))


def to_joints(motion: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
    """(T, 263) features or (T, 22, 3) joints -> (T, 22, 3) joints (metres, Y up). BadInputError otherwise."""
    from ._project import features

    a = np.asarray(motion)
    if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
        raise BadInputError(source, "motion", "expected a finite numeric array")
    if a.ndim == 3 and a.shape[1:] == (22, 3) and len(a) >= 1:
        return a.astype(np.float32)
    if a.ndim == 2 and a.shape[1] == 263 and len(a) >= 1:
        return features().features_to_joints(a)
    raise BadInputError(source, "motion", f"shape {a.shape}: expected features (T, 263) or joints (T, 22, 3)")


def _line(img: np.ndarray, p0, p1, colour, width: int) -> None:
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    xs = np.linspace(p0[0], p1[0], n).round().astype(int)
    ys = np.linspace(p0[1], p1[1], n).round().astype(int)
    h, w = img.shape[:2]
    r = width // 2
    for dx in range(-r, r + 1):
        for dy in range(-r, r + 1):
            x, y = xs + dx, ys + dy
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            img[y[ok], x[ok]] = colour


def draw(joints: np.ndarray, size: int = 256, angle_deg: float = 30.0) -> np.ndarray:
    """(T, 22, 3) joints -> (T, size, size, 3) uint8 frames (white background)."""
    from ._project import features

    chains = features().get_skeleton("humanml3d").chains
    a = np.deg2rad(angle_deg)
    t = len(joints)
    frames = np.full((t, size, size, 3), 255, np.uint8)
    scale = size / 2.4  # 2.4 m of world across the frame
    floor = float(joints[..., 1].min())
    width = max(2, size // 80)
    for i in range(t):
        j = joints[i]
        x = (j[:, 0] - j[0, 0]) * np.cos(a) + (j[:, 2] - j[0, 2]) * np.sin(a)
        y = j[:, 1] - floor
        px = size / 2 + x * scale
        py = size * 0.92 - y * scale
        frames[i, int(size * 0.92):int(size * 0.92) + 1] = 200
        for chain, colour in zip(chains, _COLOURS):
            for p, c in zip(chain[:-1], chain[1:]):
                _line(frames[i], (px[p], py[p]), (px[c], py[c]), colour, width)
        hx, hy = int(round(px[15])), int(round(py[15]))
        rr = max(3, size // 30)
        yy, xx = np.ogrid[:size, :size]
        frames[i][(xx - hx) ** 2 + (yy - hy) ** 2 <= rr * rr] = (90, 90, 90)
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """(T, H, W, 3) uint8 -> H.264 mp4 at ``path``, atomically (even sizes; browsers play it)."""
    from ._project import video_frames

    f = np.asarray(frames, np.uint8)
    f = f[:, : f.shape[1] // 2 * 2, : f.shape[2] // 2 * 2]
    path = Path(path)
    with atomic_path(path) as tmp:
        video_frames().write_video(tmp, f, fps=fps)
    return path


def render_preview(motion: np.ndarray | str | os.PathLike, out: str | os.PathLike, fps: float = 20.0,
                   size: int = 256, force: bool = False) -> Path:
    """Features/joints (array or ``.npy`` path, read without pickle) -> stick-figure mp4 at ``out``; an existing
    ``out`` newer than the source is kept (cache) unless ``force``."""
    out = Path(out)
    src = None
    if isinstance(motion, (str, os.PathLike)):
        src = Path(motion)
        if not src.is_file():
            raise BadInputError(src, "motion", "file not found")
        if out.is_file() and not force and out.stat().st_mtime >= src.stat().st_mtime:
            return out
        try:
            motion = np.load(src, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise BadInputError(src, "motion", f"not a readable .npy array ({exc})") from exc
    elif out.is_file() and not force:
        return out
    joints = to_joints(motion, src)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(out, draw(joints, size), fps)

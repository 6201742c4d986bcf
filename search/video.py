"""Reading a user's video file for a video query: exactly the frames and the view the model was trained on
(any container and codec the bundled ffmpeg reads, any size, aspect ratio and fps; docs/search.md).

1. **Probe** (``lavimo.core.mp4.probe_video``: header only, the file untrusted, docs/security.md "Videos and
   images"): duration, frame rate, frame size after rotation. A header without duration or frame rate (a
   browser's MediaRecorder webm) has its packets counted. Unreadable, no video stream, or fewer than 2 frames in
   the window: BadInputError naming the file.
2. **Window** ``[start, end)`` seconds (default the whole file): frames ``0..n-1``, ``n = floor((end - start) *
   fps)``, frame ``i`` shown at ``start + i / fps``.
3. **Frame choice**: the loader's evaluation rule (``lavimo.dataset.shards.stream.SampleTransform.frame_indices``): the
   centre frame of each of ``num_frames`` equal segments, as training videos were sampled over a whole clip.
4. **Decoding only those frames**, scaled by ffmpeg to the size the model needs (:func:`decode_size`):
   ``mode="select"`` one ffmpeg pass over the window with a ``select`` filter, ``mode="seek"`` one ffmpeg per
   frame with ``-ss T`` before ``-i`` (``T = start + (i - 0.25) / fps``, two at a time); ``"auto"``: select up to
   :data:`SELECT_MAX_FRAMES` frames, else seek, and seek when a select pass returns too few frames (a
   variable frame rate). Rotation is applied (autorotate); non-square pixels are not corrected.
5. **Crop**: a square: the centred one of ``frame_crop`` x the short side (``lavimo.dataset.augment.center_box``,
   as the loader does with the renderer's follow camera), or ``crop=(x, y, size)`` in source pixels after
   rotation (checked before decoding; it must lie inside the frame).
6. **Resize and normalise**: ``lavimo.dataset.augment.eval_view`` (bilinear, antialiased, to ``image_size``) and
   ``clip_normalize`` -> (num_frames, 3, S, S) float32, the loader's evaluation view.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lavimo.core import mp4
from lavimo.core.errors import BadInputError
from lavimo.dataset.augment import center_box, clip_normalize, eval_view
from lavimo.dataset.shards.stream import SampleTransform

SELECT_MAX_FRAMES = 900   # "auto": a select pass over at most this many frames (30 s at 30 fps), else seeks
DECODE_TIMEOUT_S = 120


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg."""
    return mp4.ffmpeg_exe()


def probe(path: str | os.PathLike):
    """Read the header of a video file (``lavimo.core.mp4.probe_video``: restricted to real video containers, nothing
    decoded) -> ``lavimo.core.mp4.MediaInfo`` (``duration``, ``fps``, ``width``, ``height`` after rotation,
    ``frames_in(start, end)``). Raises BadInputError naming the file."""
    return mp4.probe_video(path)


def frame_numbers(n: int, num_frames: int) -> np.ndarray:
    """The loader's evaluation choice of ``num_frames`` frame numbers out of ``n`` (segment centres)."""
    t = SampleTransform(False, 8, int(num_frames), 1, np.zeros(1, np.float32), np.ones(1, np.float32), None, 1.0, 1)
    return t.frame_indices(int(n), None)


def decode_size(width: int, height: int, image_size: int | None, frame_crop: float = 1.0,
                crop: tuple[int, int, int] | None = None) -> tuple[int, int]:
    """The (width, height) to decode a ``width`` x ``height`` video at for a model of ``image_size``: unchanged
    when the square the model sees (``crop``'s side, else ``frame_crop`` x the short side) is at most twice
    ``image_size``; else scaled down (aspect kept, even sides) so that square is twice ``image_size`` (the
    antialiased resize to ``image_size`` then sees the same detail; the loader's JPEG frames are decoded at a
    reduced scale by the same rule)."""
    if image_size is None:
        return width, height
    short = min(width, height)
    side = crop[2] if crop is not None else frame_crop * short
    target = math.ceil(2 * int(image_size) * short / max(side, 1))
    if short < 2 * target:  # only when it saves at least half of each side
        return width, height
    return mp4.scaled_size(width, height, target)


def scale_crop(crop: tuple[int, int, int] | None, source: tuple[int, int], decoded: tuple[int, int]
               ) -> tuple[int, int, int] | None:
    """A crop square (x, y, size) in source pixels -> the same square in pixels of frames decoded at ``decoded``
    (width, height), kept inside the frame."""
    if crop is None or tuple(source) == tuple(decoded):
        return crop
    f = min(decoded[0] / source[0], decoded[1] / source[1])
    x, y = int(round(crop[0] * f)), int(round(crop[1] * f))
    side = max(2, min(int(round(crop[2] * f)), decoded[0] - x, decoded[1] - y))
    return x, y, side


def check_crop(crop: tuple[int, int, int] | None, width: int, height: int, source=None) -> None:
    """BadInputError unless ``crop`` (x, y, size) is a square of side >= 2 inside a ``width`` x ``height`` frame."""
    if crop is None:
        return
    cx, cy, side = (int(v) for v in crop)
    if side < 2 or cx < 0 or cy < 0 or cx + side > width or cy + side > height:
        raise BadInputError(source, "crop", f"square x={cx} y={cy} size={side} does not lie inside the "
                                            f"{width}x{height} frame")


def _seek(info, size: tuple[int, int], times: Sequence[float]) -> list[np.ndarray | None]:
    def one(t: float) -> np.ndarray | None:
        got, _ = mp4.decode(info, size, 1, before_input=["-ss", f"{max(0.0, t):.6f}"], timeout=DECODE_TIMEOUT_S)
        return got[0] if len(got) else None

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, times))


def _select(info, size: tuple[int, int], start: float, end: float | None, numbers: Sequence[int]) -> np.ndarray:
    uniq = sorted(set(int(i) for i in numbers))
    before = []
    if start > 0:
        before += ["-ss", f"{start:.6f}"]
    if end is not None:
        before += ["-t", f"{max(0.0, end - start):.6f}"]
    return mp4.decode(info, size, len(uniq), before_input=before, filters=[mp4.select_filter(uniq)],
                        timeout=DECODE_TIMEOUT_S)[0]


def read_frames(path: str | os.PathLike, num_frames: int, start: float | None = None, end: float | None = None,
                mode: str = "auto", size: tuple[int, int] | None = None, info=None) -> np.ndarray:
    """The ``num_frames`` frames a video query uses (module docstring, steps 1-4) -> (num_frames, H, W, 3) uint8.

    ``start``/``end``: the window in seconds (None = the file's start / end). ``mode``: "auto", "seek", "select".
    ``size``: (width, height) to decode at (None = the frame size after rotation). ``info``: the probe, if done.
    Raises BadInputError naming the file: unreadable, refused, no video stream, a bad window, fewer than 2 frames.
    """
    path = Path(path)
    if mode not in ("auto", "seek", "select"):
        raise ValueError(f"mode must be auto, seek or select, got {mode!r}")
    info = probe(path) if info is None else info
    size = (info.width, info.height) if size is None else (int(size[0]), int(size[1]))
    s = 0.0 if start is None else float(start)
    if not np.isfinite(s) or s < 0 or (end is not None and not (np.isfinite(end) and end > s)):
        raise BadInputError(path, "window", f"start {start} / end {end}: need 0 <= start < end (seconds)")
    if s >= info.duration > 0:
        raise BadInputError(path, "window", f"start {s:g} s is past the end of the video ({info.duration:.2f} s)")
    n = info.frames_in(s, end)
    if n < 2:
        raise BadInputError(path, "video", f"{n} frame(s) in the window (duration {info.duration:.2f} s at "
                                           f"{info.fps:g} fps): a video query needs at least 2 frames")
    numbers = frame_numbers(n, num_frames)
    if mode == "auto":
        mode = "select" if n <= SELECT_MAX_FRAMES else "seek"
    if mode == "select":
        got = _select(info, size, s, end, numbers)
        uniq = sorted(set(int(i) for i in numbers))
        if len(got) == len(uniq):
            pos = {v: j for j, v in enumerate(uniq)}
            return np.stack([got[pos[int(i)]] for i in numbers])
        # fewer frames than the header promised (variable frame rate, a damaged tail): seek each one
    frames = _seek(info, size, [s + (int(i) - 0.25) / info.fps for i in numbers])
    have = [f for f in frames if f is not None]
    if len(have) < 2:
        raise BadInputError(path, "video", f"only {len(have)} frame(s) could be decoded: a video query needs at "
                                           "least 2")
    out, last = [], have[0]
    for f in frames:  # a frame past a truncated end: the last one that exists
        last = f if f is not None else last
        out.append(last)
    return np.stack(out)


def query_frames(path: str | os.PathLike, num_frames: int, image_size: int, frame_crop: float = 1.0,
                 crop: tuple[int, int, int] | None = None, start: float | None = None, end: float | None = None,
                 mode: str = "auto") -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """A video query's frames decoded at the size the model needs (:func:`decode_size`) -> (frames (num_frames,
    H, W, 3) uint8, ``crop`` in pixels of those frames). ``crop`` (source pixels) is checked before decoding."""
    info = probe(path)
    check_crop(crop, info.width, info.height, path)
    size = decode_size(info.width, info.height, image_size, frame_crop, crop)
    frames = read_frames(path, num_frames, start, end, mode, size=size, info=info)
    return frames, scale_crop(crop, (info.width, info.height), size)


def model_view(frames: np.ndarray, image_size: int, frame_crop: float = 1.0,
               crop: tuple[int, int, int] | None = None, source: str | os.PathLike | None = None):
    """(k, H, W, 3) uint8 frames -> (k, 3, S, S) float32 CLIP-normalised (module docstring, steps 5-6).

    ``crop``: (x, y, size) pixels, a square inside the frame; None = the centred square of ``frame_crop`` x the
    short side."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or len(a) == 0:
        raise BadInputError(source, "frames", f"expected (T, H, W, 3) uint8 frames, got {a.dtype} {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if crop is None:
        top, left, ch, cw = center_box(h, w, fraction=frame_crop)
    else:
        check_crop(crop, w, h, source)
        cx, cy, side = (int(v) for v in crop)
        top, left, ch, cw = cy, cx, side, side
    x = x[:, :, top:top + ch, left:left + cw]
    return clip_normalize(eval_view(x, image_size))

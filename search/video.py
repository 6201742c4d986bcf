"""Reading a user's video file for a video query: exactly the frames and the view the model was trained on.

Preprocessing of a real video (any container and codec the bundled ffmpeg reads, any size, aspect ratio, fps):

1. **Probe** (``ffmpeg -i FILE``, header only): duration, frame rate, frame size, rotation. A file ffmpeg cannot
   open, without a video stream, or with fewer than 2 frames in the window is refused (BadInputError naming it).
2. **Window**: ``[start, end)`` seconds (default the whole file). Its frames are numbered ``0..n-1`` with
   ``n = floor((end - start) * fps)``, frame ``i`` being the one shown at ``start + i / fps``.
3. **Frame choice**: the loader's evaluation rule (``dataset.stream.SampleTransform.frame_indices``): the
   ``n`` frames are cut into ``num_frames`` equal segments and the centre frame of each is taken. Training
   videos were sampled the same way over a whole clip, so a window that frames the action as tightly as a
   database clip gives the closest view.
4. **Decoding only those frames**: ``mode="seek"`` runs one ffmpeg per frame with ``-ss T`` *before* ``-i``
   (a fast seek to the keyframe before ``T`` then an accurate decode up to ``T``; ``T = start + (i - 0.25) /
   fps`` so rounding never lands on the previous frame), two at a time; ``mode="select"`` runs one ffmpeg over
   the window with a ``select`` filter keeping the chosen frame numbers (decodes every frame of the window once,
   converts only the kept ones). ``"auto"`` (default) uses ``select`` for windows up to :data:`SELECT_MAX_FRAMES`
   frames and ``seek`` for longer ones (tests/benchmarks/bench_search.py measures both). A variable-frame-rate
   file whose ``select`` pass returns fewer frames than asked is re-read with ``seek``. Rotation metadata is
   applied (ffmpeg's autorotate); non-square pixels are not corrected.
5. **Crop**: a square. By default the centred square of side ``frame_crop x`` the short side (the model's
   ``frame_crop``, 1 = the largest centred square: ``dataset.augment.center_box``), as the loader does with the
   renderer's follow camera, which keeps the person centred. ``crop=(x, y, size)`` (pixels of the decoded
   frame, top-left corner and side) picks another square, e.g. where the person is in a phone video; it must lie
   inside the frame.
6. **Resize and normalise**: ``dataset.augment.eval_view`` (bilinear, antialiased, to ``image_size``) and
   ``clip_normalize`` (CLIP mean/std) -> (num_frames, 3, S, S) float32, the loader's evaluation view.
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ._project import BadInputError

SELECT_MAX_FRAMES = 900   # "auto": a select pass over at most this many frames (30 s at 30 fps), else seeks
PROBE_TIMEOUT_S = 30
DECODE_TIMEOUT_S = 120


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass
class VideoInfo:
    """What the container header says: ``duration`` s, ``fps``, decoded ``width`` x ``height`` (after rotation)."""

    duration: float
    fps: float
    width: int
    height: int

    def frames_in(self, start: float, end: float | None) -> int:
        """Frames shown in ``[start, end)`` seconds (end None = the end of the file)."""
        stop = self.duration if end is None else min(end, self.duration)
        return max(0, int(np.floor((stop - start) * self.fps + 1e-6)))


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: (.*)")
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:fps|tbr)\b")
_ROTATE = re.compile(r"(?:rotate\s*:\s*|rotation of\s*)(-?\d+(?:\.\d+)?)")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the header of a video file with ffmpeg (nothing decoded). Raises BadInputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "video", "file not found")
    try:
        res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True,
                             timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BadInputError(path, "video", f"ffmpeg did not read the header within {PROBE_TIMEOUT_S} s") from exc
    text = res.stderr.decode("utf-8", "replace")
    vid = _VIDEO.search(text)
    if vid is None:
        last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1:] or ["no output"]
        raise BadInputError(path, "video", f"not a video ffmpeg can read ({last[0][-160:]})")
    line = vid.group(1)
    size = _SIZE.search(line)
    fps = _FPS.search(line)
    dur = _DURATION.search(text)
    if size is None or fps is None or float(fps.group(1)) <= 0:
        raise BadInputError(path, "video", f"no frame size or frame rate in the stream header ({line[:120]})")
    w, h = int(size.group(1)), int(size.group(2))
    rot = _ROTATE.search(text)
    if rot is not None and round(abs(float(rot.group(1)))) % 180 == 90:
        w, h = h, w
    duration = 3600.0 * int(dur.group(1)) + 60.0 * int(dur.group(2)) + float(dur.group(3)) if dur else 0.0
    return VideoInfo(duration=duration, fps=float(fps.group(1)), width=w, height=h)


def frame_numbers(n: int, num_frames: int) -> np.ndarray:
    """The loader's evaluation choice of ``num_frames`` frame numbers out of ``n`` (segment centres)."""
    from ._project import stream

    t = stream().SampleTransform(False, 8, int(num_frames), 1, np.zeros(1, np.float32), np.ones(1, np.float32),
                                 None, 1.0, 1)
    return t.frame_indices(int(n), None)


def _raw(cmd: list[str], path: Path, w: int, h: int) -> np.ndarray:
    """Run ffmpeg writing rgb24 frames to stdout -> (k, h, w, 3) uint8."""
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=DECODE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BadInputError(path, "video", f"decoding took more than {DECODE_TIMEOUT_S} s") from exc
    if res.returncode != 0:
        msg = [ln for ln in res.stderr.decode("utf-8", "replace").splitlines() if ln.strip()][-1:] or ["?"]
        raise BadInputError(path, "video", f"ffmpeg could not decode it ({msg[0][-160:]})")
    k = len(res.stdout) // (w * h * 3)
    return np.frombuffer(res.stdout[:k * w * h * 3], dtype=np.uint8).reshape(k, h, w, 3)


def _seek(path: Path, info: VideoInfo, times: Sequence[float]) -> list[np.ndarray | None]:
    def one(t: float) -> np.ndarray | None:
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-ss", f"{max(0.0, t):.6f}", "-i", str(path),
               "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        got = _raw(cmd, path, info.width, info.height)
        return got[0] if len(got) else None

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, times))


def _select(path: Path, info: VideoInfo, start: float, end: float | None, numbers: Sequence[int]) -> np.ndarray:
    expr = "+".join(f"eq(n\\,{int(i)})" for i in sorted(set(int(i) for i in numbers)))
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error"]
    if start > 0:
        cmd += ["-ss", f"{start:.6f}"]
    if end is not None:
        cmd += ["-t", f"{max(0.0, end - start):.6f}"]
    cmd += ["-i", str(path), "-vf", f"select='{expr}'", "-fps_mode", "passthrough", "-f", "rawvideo",
            "-pix_fmt", "rgb24", "-"]
    return _raw(cmd, path, info.width, info.height)


def read_frames(path: str | os.PathLike, num_frames: int, start: float | None = None, end: float | None = None,
                mode: str = "auto") -> np.ndarray:
    """The ``num_frames`` frames a video query uses (module docstring, steps 1-4) -> (num_frames, H, W, 3) uint8.

    ``start``/``end``: the window in seconds (None = the file's start / end). ``mode``: "auto", "seek", "select".
    Raises BadInputError naming the file: unreadable, no video stream, a bad window, fewer than 2 frames.
    """
    path = Path(path)
    if mode not in ("auto", "seek", "select"):
        raise ValueError(f"mode must be auto, seek or select, got {mode!r}")
    info = probe(path)
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
        got = _select(path, info, s, end, numbers)
        uniq = sorted(set(int(i) for i in numbers))
        if len(got) == len(uniq):
            pos = {v: j for j, v in enumerate(uniq)}
            return np.stack([got[pos[int(i)]] for i in numbers])
        # fewer frames than the header promised (variable frame rate, a damaged tail): seek each one
    frames = _seek(path, info, [s + (int(i) - 0.25) / info.fps for i in numbers])
    have = [f for f in frames if f is not None]
    if len(have) < 2:
        raise BadInputError(path, "video", f"only {len(have)} frame(s) could be decoded: a video query needs at "
                                           "least 2")
    out, last = [], have[0]
    for f in frames:  # a frame past a truncated end: the last one that exists
        last = f if f is not None else last
        out.append(last)
    return np.stack(out)


def model_view(frames: np.ndarray, image_size: int, frame_crop: float = 1.0,
               crop: tuple[int, int, int] | None = None, source: str | os.PathLike | None = None):
    """(k, H, W, 3) uint8 frames -> (k, 3, S, S) float32 CLIP-normalised (module docstring, steps 5-6).

    ``crop``: (x, y, size) pixels, a square inside the frame; None = the centred square of ``frame_crop`` x the
    short side."""
    import torch

    from ._project import center_box, clip_normalize, eval_view

    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or len(a) == 0:
        raise BadInputError(source, "frames", f"expected (T, H, W, 3) uint8 frames, got {a.dtype} {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if crop is None:
        top, left, ch, cw = center_box(h, w, fraction=frame_crop)
    else:
        cx, cy, side = (int(v) for v in crop)
        if side < 2 or cx < 0 or cy < 0 or cx + side > w or cy + side > h:
            raise BadInputError(source, "crop", f"square x={cx} y={cy} size={side} does not lie inside the "
                                                f"{w}x{h} frame")
        top, left, ch, cw = cy, cx, side, side
    x = x[:, :, top:top + ch, left:left + cw]
    return clip_normalize(eval_view(x, image_size))


def parse_crop(text: str | None) -> tuple[int, int, int] | None:
    """``"x,y,size"`` -> (x, y, size) ints (None passes through). ValueError on anything else."""
    if text is None or text == "":
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"crop must be x,y,size (non-negative integers, pixels), got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]

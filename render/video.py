"""MP4 writing: H.264 / yuv420p through imageio-ffmpeg's bundled ffmpeg, on a background thread.

Frames are handed to :meth:`VideoWriter.write` (non-blocking up to ``queue_frames``); a thread pipes them to
an ffmpeg subprocess, so encoding overlaps rasterisation. The file is written to a temporary name in the
target directory and renamed on :meth:`close` (atomic, via ``dataset.atomic``); :meth:`abort` removes it.
``+faststart`` puts the index first so browsers can start playback before the download ends.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Callable

import imageio_ffmpeg
import numpy as np

from dataset.atomic import atomic_path

log = logging.getLogger(__name__)

DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"


class VideoWriter:
    """Write RGB uint8 frames (H, W, 3) to an H.264 mp4 at ``fps``.

    Args:
        path: final .mp4 path (appears only after a successful :meth:`close`).
        size: (width, height) in pixels, both even (yuv420p).
        fps: frames per second written into the stream (may be fractional).
        crf, preset: x264 quality / speed.
        threads: x264 threads (1 per worker keeps several workers from oversubscribing the CPU; 0 = auto).
        queue_frames: frames buffered before :meth:`write` blocks.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: float, crf: int = DEFAULT_CRF,
                 preset: str = DEFAULT_PRESET, threads: int = 1, queue_frames: int = 16):
        w, h = int(size[0]), int(size[1])
        if w % 2 or h % 2:
            raise ValueError(f"video size must be even for yuv420p, got {w}x{h}")
        self.path = Path(path)
        self.size = (w, h)
        self.fps = float(fps)
        self.frames_written = 0
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        params = ["-preset", preset, "-crf", str(int(crf)), "-movflags", "+faststart"]
        if threads:
            params += ["-threads", str(int(threads))]
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp), (w, h), fps=self.fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=1, quality=None, output_params=params, ffmpeg_log_level="error")
        self._gen.send(None)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_frames)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"encode-{self.path.name}", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._error is not None:
                continue
            try:
                if callable(frame):
                    frame = self._check(frame())
                self._gen.send(frame)
            except BaseException as e:  # noqa: BLE001 - surfaced in close()
                self._error = e

    def _check(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape != (self.size[1], self.size[0], 3) or frame.dtype != np.uint8:
            raise ValueError(f"expected ({self.size[1]}, {self.size[0]}, 3) uint8, got {frame.shape} {frame.dtype}")
        return np.ascontiguousarray(frame)

    def write(self, frame: np.ndarray | Callable[[], np.ndarray]) -> None:
        """Queue one (H, W, 3) uint8 RGB frame, or a function producing it (called on the encoder thread,
        e.g. compositing, so that work overlaps rasterisation)."""
        if self._error is not None:
            raise RuntimeError(f"ffmpeg failed writing {self.path}: {self._error}")
        self._queue.put(frame if callable(frame) else self._check(frame))
        self.frames_written += 1

    def close(self) -> None:
        """Flush, finish the file and move it into place. Raises when ffmpeg failed."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        err = self._error
        try:
            if err is None:
                self._gen.close()
        except BaseException as e:  # noqa: BLE001
            err = e
        if err is not None:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise RuntimeError(f"ffmpeg failed writing {self.path}: {err}") from err
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Stop and remove the partial file (the target path is left untouched)."""
        if self._closed:
            return
        self._closed = True
        self._error = self._error or RuntimeError("aborted")
        self._queue.put(None)
        self._thread.join()
        try:
            self._gen.close()
        except BaseException:  # noqa: BLE001
            pass
        err = RuntimeError("aborted")
        try:
            self._ctx.__exit__(RuntimeError, err, None)
        except RuntimeError:
            pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Decode an mp4 -> (frames (N, H, W, 3) uint8, ffmpeg metadata with ``fps`` and ``codec``). For tests/tools."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in reader]
    return (np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)), meta

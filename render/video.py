"""MP4 writing: H.264 / yuv420p through imageio-ffmpeg's bundled ffmpeg, on a background thread.

Frames are handed to :meth:`VideoWriter.write` (non-blocking up to ``queue_frames``); a thread pipes them to
an ffmpeg subprocess, so encoding overlaps rasterisation. The file is written to a temporary name in the
target directory and renamed on :meth:`close` (atomic, via ``core.atomic``); :meth:`abort` removes it.
``+faststart`` puts the index first so browsers can start playback before the download ends.

A file is only moved into place when ffmpeg exited with status 0 and :func:`probe_mp4` finds a complete
container; a failure while the disk is full is raised as ``OSError(errno.ENOSPC, ...)`` naming the file, so
callers can stop a batch instead of failing every remaining clip.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import struct
import threading
from pathlib import Path
from typing import Callable

import imageio_ffmpeg
import numpy as np

from core.atomic import atomic_path

log = logging.getLogger(__name__)


class _NoEmptyVideoWarning(logging.Filter):
    """imageio-ffmpeg warns "No frames have been written" when a writer is aborted before its first frame (an
    interrupted run); :meth:`VideoWriter.close` checks the file itself, so the warning is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No frames have been written" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_NoEmptyVideoWarning())

DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"
#: errno values that mean "the output file system is full": the run stops (see :func:`is_disk_full`).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT} if hasattr(errno, "EDQUOT") else {errno.ENOSPC})
#: below this many free bytes a failed write is taken to be a full disk (ffmpeg's own errno is not visible).
LOW_SPACE_BYTES = 1 << 20


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from is an OSError for a full disk / quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _low_on_space(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < LOW_SPACE_BYTES
    except OSError:
        return False


MAX_TOP_LEVEL_BOXES = 1000


def probe_mp4(path: str | os.PathLike) -> str | None:
    """Cheap structural check of an mp4 (reads only the top-level box headers, no decoding).

    Returns None when the file starts with an ``ftyp`` box, holds ``moov`` and ``mdat``, and its top-level
    boxes tile the file exactly (so a file cut short anywhere after the header fails); else a short reason.
    """
    try:
        size = os.path.getsize(path)
        seen: list[bytes] = []
        pos = 0
        with open(path, "rb") as fh:
            while pos < size:
                fh.seek(pos)
                head = fh.read(16)
                if len(head) < 8:
                    return f"truncated box header at byte {pos}"
                box_len, kind = struct.unpack(">I4s", head[:8])
                if pos == 0 and kind != b"ftyp":
                    return "no ftyp box at the start (not an mp4)"
                if box_len == 1:
                    if len(head) < 16:
                        return f"truncated box header at byte {pos}"
                    box_len = struct.unpack(">Q", head[8:16])[0]
                elif box_len == 0:  # "to the end of the file"
                    box_len = size - pos
                if box_len < 8:
                    return f"bad box size {box_len} at byte {pos}"
                seen.append(kind)
                if len(seen) > MAX_TOP_LEVEL_BOXES:
                    return f"more than {MAX_TOP_LEVEL_BOXES} top-level boxes (not a video this tool wrote)"
                pos += box_len
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if pos != size:
        return f"box {seen[-1].decode('latin-1')!r} ends at byte {pos}, the file has {size} (truncated)"
    if not seen:
        return "empty file"
    for need in (b"moov", b"mdat"):
        if need not in seen:
            return f"no {need.decode()} box (incomplete file)"
    return None


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
        try:
            self._gen = imageio_ffmpeg.write_frames(
                str(self._tmp), (w, h), fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", macro_block_size=1, quality=None, output_params=params,
                ffmpeg_log_level="error")
            self._gen.send(None)
        except BaseException as e:
            self._ctx.__exit__(type(e), e, e.__traceback__)  # removes the temporary file
            raise
        # the ffmpeg process, to check its exit status on close (imageio-ffmpeg does not); None if not exposed
        frame = getattr(self._gen, "gi_frame", None)
        self._proc = frame.f_locals.get("p") if frame is not None else None
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
            raise self._failure(self._error)
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
            self._gen.close()  # ends ffmpeg's input and waits for it to exit
            if err is None:
                code = self._proc.poll() if self._proc is not None else 0
                if code:
                    err = RuntimeError(f"ffmpeg exited with status {code}")
                else:
                    bad = probe_mp4(self._tmp)
                    if bad is not None:
                        err = RuntimeError(f"ffmpeg wrote an incomplete file: {bad}")
        except BaseException as e:  # noqa: BLE001
            err = err or e
        if err is not None:
            failure = self._failure(err)
            self._ctx.__exit__(type(failure), failure, failure.__traceback__)  # removes the temporary file
            raise failure from err
        self._ctx.__exit__(None, None, None)

    def _failure(self, err: BaseException) -> Exception:
        """The exception to raise for an encoder failure: ``OSError(ENOSPC)`` naming the file when the disk is
        full (by errno, or by the free space left, since ffmpeg's own errno does not reach us), else
        RuntimeError."""
        if is_disk_full(err) or _low_on_space(self.path.parent):
            return OSError(errno.ENOSPC, f"no space left on device (ffmpeg: {err})", str(self.path))
        return RuntimeError(f"ffmpeg failed writing {self.path}: {err}")

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

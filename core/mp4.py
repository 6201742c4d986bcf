"""THE mp4 reader and writer: H.264 / yuv420p through imageio-ffmpeg's bundled ffmpeg.

Writing: :class:`VideoWriter` (rendering; frames are handed to :meth:`VideoWriter.write`, non-blocking up to
``queue_frames``, and a thread pipes them to an ffmpeg subprocess, so encoding overlaps rasterisation) and
:func:`write_video` (a whole clip in one call: tests, benchmarks, the evaluation gallery). The file is written
to a temporary name in the target directory and renamed on :meth:`VideoWriter.close` (atomic, via
``core.atomic``); :meth:`VideoWriter.abort` removes it. The x264 settings are parameters: ``crf``, ``preset``,
``threads`` and ``faststart`` (``+faststart`` puts the index first so browsers can start playback before the
download ends); the renderer's defaults are :data:`DEFAULT_CRF` / :data:`DEFAULT_PRESET`, one x264 thread and
faststart, :func:`write_video`'s are CRF 23, ``veryfast``, x264's own thread count and no faststart.

Reading: :func:`read_video` (every frame, optionally scaled down while decoding), :func:`read_frames` (selected
frames of a file) and :func:`mp4_frames` (selected frames of an mp4 held in memory).

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
import tempfile
import threading
from pathlib import Path
from typing import Callable, Sequence

import imageio_ffmpeg
import numpy as np

from core.atomic import atomic_path
from core.errors import BadInputError, is_disk_full

log = logging.getLogger(__name__)


class _NoEmptyVideoWarning(logging.Filter):
    """imageio-ffmpeg warns "No frames have been written" when a writer is aborted before its first frame (an
    interrupted run); :meth:`VideoWriter.close` checks the file itself, so the warning is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No frames have been written" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_NoEmptyVideoWarning())

DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"
#: below this many free bytes a failed write is taken to be a full disk (ffmpeg's own errno is not visible).
LOW_SPACE_BYTES = 1 << 20


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
        threads: x264 threads (1 per worker keeps several workers from oversubscribing the CPU; 0 = x264's own
            choice, no ``-threads`` flag).
        queue_frames: frames buffered before :meth:`write` blocks.
        faststart: move the index to the front (``-movflags +faststart``).
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: float, crf: int = DEFAULT_CRF,
                 preset: str = DEFAULT_PRESET, threads: int = 1, queue_frames: int = 16, faststart: bool = True):
        w, h = int(size[0]), int(size[1])
        if w % 2 or h % 2:
            raise ValueError(f"video size must be even for yuv420p, got {w}x{h}")
        self.path = Path(path)
        self.size = (w, h)
        self.fps = float(fps)
        self.frames_written = 0
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        params = ["-preset", preset, "-crf", str(int(crf))]
        if faststart:
            params += ["-movflags", "+faststart"]
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


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 23, preset: str = "veryfast",
                threads: int = 0, faststart: bool = False) -> None:
    """Write (T, H, W, 3) uint8 frames (H and W even) as an H.264 yuv420p mp4 in one call, atomically, through
    :class:`VideoWriter` with these settings (tests, benchmarks, the evaluation gallery)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    with VideoWriter(path, (w, h), fps, crf=crf, preset=preset, threads=threads, faststart=faststart) as writer:
        for f in frames:
            writer.write(f)


def read_video(path: str | os.PathLike, short_side: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode every frame of a video file -> (frames (T, H, W, 3) uint8 RGB, ffmpeg's metadata: ``fps``,
    ``codec``, ``size`` and ``source_size`` (width, height) before scaling).

    With ``short_side``, ffmpeg scales frames down (area averaging, aspect kept) so the short side is at most
    ``short_side`` pixels while decoding, which is much cheaper than resizing afterwards.
    Raises BadInputError(path, "video") when the file is missing, cannot be decoded or holds no frames."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "video", "file not found")
    out_params = None
    if short_side is not None:
        s = int(short_side)
        out_params = ["-vf", f"scale=w='if(lte(iw,ih),min({s},iw),-2)':h='if(lte(iw,ih),-2,min({s},ih))'"
                              ":flags=area"]
    quiet = logging.getLogger("imageio_ffmpeg")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns whenever the output size differs from the source
    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=out_params)
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in gen]
    except (RuntimeError, OSError, StopIteration, ValueError, IndexError, AttributeError) as exc:
        raise BadInputError(path, "video", f"cannot decode: {exc}") from exc
    finally:
        quiet.setLevel(level)
    if not frames:
        raise BadInputError(path, "video", "no frames decoded")
    meta = dict(meta)
    meta["source_size"] = tuple(meta.get("source_size", (w, h)))
    return np.stack(frames), meta


def read_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` of a video file -> (k, H, W, 3) uint8, decoding only up to the last one wanted.
    Raises ValueError when the file has fewer frames."""
    want = [int(i) for i in indices]
    last = max(want)
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(gen)
    w, h = meta["size"]
    got: dict[int, np.ndarray] = {}
    try:
        for i, f in enumerate(gen):
            if i in want and i not in got:
                got[i] = np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3)
            if i >= last:
                break
    finally:
        gen.close()
    missing = [i for i in want if i not in got]
    if missing:
        raise ValueError(f"mp4 has fewer frames than requested (missing {missing[:3]})")
    return np.stack([got[i] for i in want])


def mp4_frames(data: bytes, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode an mp4 held in memory and return frames ``indices`` (all when None) -> (k, H, W, 3) uint8.

    H.264 needs the stream decoded from the start, so this decodes up to the last wanted frame (through a
    temporary file, because mp4 files written without ``faststart`` cannot be read from a pipe)."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        tmp.write(data)
        tmp.flush()
        frames = read_video(tmp.name)[0] if indices is None else read_frames(tmp.name, indices)
    return frames

"""THE mp4 reader and writer: H.264 / yuv420p through imageio-ffmpeg's bundled ffmpeg.

Writing: :class:`VideoWriter` (rendering; frames are handed to :meth:`VideoWriter.write`, non-blocking up to
``queue_frames``, and a thread pipes them to an ffmpeg subprocess, so encoding overlaps rasterisation) and
:func:`write_video` (a whole clip in one call: tests, benchmarks, the evaluation gallery). The file is written
to a temporary name in the target directory and renamed on :meth:`VideoWriter.close` (atomic, via
``lavimo.core.atomic``); :meth:`VideoWriter.abort` removes it. The x264 settings are parameters: ``crf``, ``preset``,
``threads`` and ``faststart`` (``+faststart`` puts the index first so browsers can start playback before the
download ends); the renderer's defaults are :data:`DEFAULT_CRF` / :data:`DEFAULT_PRESET`, one x264 thread and
faststart, :func:`write_video`'s are CRF 23, ``veryfast``, x264's own thread count and no faststart.

Reading: :func:`read_video` (every frame, optionally scaled down while decoding), :func:`read_frames` (selected
frames of a file) and :func:`mp4_frames` (selected frames of an mp4 held in memory). Every read treats the file
as untrusted: :func:`probe_video` first (a text file is refused; ffmpeg may use only the file protocol and the
demuxers of :data:`ALLOWED_DEMUXERS`; a frame above :data:`MAX_FRAME_PIXELS` is refused), then :func:`decode`
with ``-f`` the probed demuxer, frames scaled by ffmpeg to a fixed size and at most a stated number of them
(docs/security.md, "Videos and images").

A file is only moved into place when ffmpeg exited with status 0 and :func:`probe_mp4` finds a complete
container; a failure while the disk is full is raised as ``OSError(errno.ENOSPC, ...)`` naming the file, so
callers can stop a batch instead of failing every remaining clip.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import re
import shutil
import struct
import tempfile
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import imageio_ffmpeg
import numpy as np

from lavimo.core.atomic import atomic_path
from lavimo.core.errors import BadInputError, is_disk_full

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


# ------------------------------------------------------------------------------------------------ reading
# Every ffmpeg run on a file this tool did not write goes through probe_video (the container, frame size and rate
# from the header, with ffmpeg restricted to ALLOWED_DEMUXERS and the file protocol) and decode (the same
# restrictions plus ``-f <probed demuxer>``): see docs/security.md, "Videos and images".

#: the demuxers (ffmpeg's names) a file we did not write may be read with: real video containers only (mp4 / mov /
#: m4v, mkv / webm, avi, MPEG program and transport streams, ogg / ogv). concat / ffconcat lists, HLS / DASH
#: playlists, SDP, image2 patterns and single images, lavfi, tty and every other demuxer are refused by ffmpeg
#: itself (``-format_whitelist``) before it opens anything but the file.
ALLOWED_DEMUXERS = ("mov", "matroska", "avi", "mpeg", "mpegts", "ogg")
#: largest source frame decoded, in pixels (8K UHD, 7680 x 4320): a header saying more is refused before decoding,
#: and ffmpeg's decoder is given ``-max_pixels`` so a stream that changes size later cannot decode a larger frame
#: either (the file is then refused).
MAX_FRAME_PIXELS = 7680 * 4320
#: most frames one :func:`read_video` returns (or :func:`count_frames` counts); more is refused.
MAX_FRAMES = 20_000
#: most bytes of decoded (scaled) frames one :func:`read_video` returns; more is refused. The array starts at
#: the size the header announces (duration x fps + 1 frames) and grows by half when the stream holds more, so
#: a short video never reserves the budget.
MAX_DECODED_BYTES = 2 << 30
#: most frames :func:`iter_frames` streams (an hour at 30 fps) unless told otherwise; it holds one chunk of
#: frames at a time (:data:`STREAM_CHUNK_FRAMES`), whatever the clip's length.
MAX_STREAM_FRAMES = 3600 * 30
STREAM_CHUNK_FRAMES = 64
#: ffmpeg's ``-max_alloc``: no single allocation of the decoder or demuxer above this (bytes).
MAX_ALLOC_BYTES = 512 << 20
#: the text sniff reads this many bytes: a file whose start is UTF-8 text without NUL bytes is not a video.
SNIFF_BYTES = 4096
PROBE_TIMEOUT_S = 30
DECODE_TIMEOUT_S = 300

_INPUT = re.compile(r"^Input #0, (.+?), from '", re.M)
_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #0:\S+.*?: Video: (.*)")
_SIZE = re.compile(r",\s*(\d{1,5})x(\d{1,5})\b")
_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:fps|tbr)\b")
_ROTATE = re.compile(r"(?:rotate\s*:\s*|rotation of\s*)(-?\d+(?:\.\d+)?)")


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class MediaInfo:
    """What a video file's header says (:func:`probe_video`): ``demuxer`` (one of :data:`ALLOWED_DEMUXERS`),
    ``codec``, decoded ``width`` x ``height`` in pixels after rotation, ``fps`` (frames / s), ``duration`` in
    seconds (0.0 when the header has none, e.g. a browser's MediaRecorder webm: then :func:`count_frames` fills
    it), ``source_size`` (width, height) as stored (before rotation)."""

    path: Path
    demuxer: str
    codec: str
    width: int
    height: int
    fps: float
    duration: float
    source_size: tuple[int, int]

    def frames_in(self, start: float, end: float | None) -> int:
        """Frames shown in ``[start, end)`` seconds (end None = the end of the file)."""
        stop = self.duration if end is None else min(end, self.duration)
        return max(0, int(np.floor((stop - start) * self.fps + 1e-6)))


def input_args(path: str | os.PathLike, demuxer: str | None = None) -> list[str]:
    """ffmpeg's input options for a file we did not write, ending in ``-i``: the file protocol only
    (``file:`` + the absolute path, so no name is read as a protocol, a pattern or an option), the demuxer
    allow-list, ``-f demuxer`` when the probe chose it, :data:`MAX_ALLOC_BYTES` and the decoder's
    ``-max_pixels`` :data:`MAX_FRAME_PIXELS` (no frame above it is decoded, even when the stream changes size
    after its first header)."""
    args = ["-max_alloc", str(MAX_ALLOC_BYTES), "-max_pixels", str(MAX_FRAME_PIXELS), "-protocol_whitelist", "file",
            "-format_whitelist", ",".join(ALLOWED_DEMUXERS)]
    if demuxer is not None:
        if demuxer not in ALLOWED_DEMUXERS:
            raise ValueError(f"demuxer {demuxer!r} is not one of {ALLOWED_DEMUXERS}")
        args += ["-f", demuxer]
    return args + ["-i", "file:" + os.path.abspath(os.fspath(path))]


def _refuse_text(path: Path) -> None:
    """BadInputError when ``path`` is empty or starts as a text file (a concat list, playlist, SDP, a list of
    paths): no video container starts with :data:`SNIFF_BYTES` of NUL-free UTF-8."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise BadInputError(path, "video", f"unreadable ({exc.strerror or type(exc).__name__})") from None
    if not head:
        raise BadInputError(path, "video", "empty file")
    if b"\0" in head:
        return
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # binary (a multi-byte character cut at the end of the sniff is text)
            return
    raise BadInputError(path, "video", "a text file, not a video (playlists, concat lists and other text "
                                           "inputs are refused)")


def probe_video(path: str | os.PathLike) -> MediaInfo:
    """Read a video file's header with ffmpeg restricted to :data:`ALLOWED_DEMUXERS` and the file protocol
    (nothing decoded). Raises BadInputError(path, "video") for a missing, empty or text file, a container that is
    not allowed, no video stream, no frame size or rate, a frame above :data:`MAX_FRAME_PIXELS`. Messages never
    quote ffmpeg's output (it could name other files)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "video", "file not found")
    _refuse_text(path)
    try:
        res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *input_args(path)], capture_output=True,
                             timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BadInputError(path, "video", f"ffmpeg did not read the header within {PROBE_TIMEOUT_S} s") from exc
    text = res.stderr.decode("utf-8", "replace")
    allowed = "mp4/mov, mkv/webm, avi, mpeg, mpegts, ogg"
    if "not on whitelist" in text:
        raise BadInputError(path, "video", f"not a video container this tool reads ({allowed})")
    got = _INPUT.search(text)
    demuxer = got.group(1).split(",")[0] if got else None
    if demuxer not in ALLOWED_DEMUXERS:
        raise BadInputError(path, "video", f"not a video ffmpeg can read (containers: {allowed})")
    vid = _VIDEO.search(text)
    if vid is None:
        raise BadInputError(path, "video", "no video stream")
    line = vid.group(1)
    size = _SIZE.search(line)
    fps = _FPS.search(line)
    if size is None:
        raise BadInputError(path, "video", "no frame size in the stream header")
    sw, sh = int(size.group(1)), int(size.group(2))
    if sw < 1 or sh < 1 or sw * sh > MAX_FRAME_PIXELS:
        raise BadInputError(path, "video", f"frame size {sw}x{sh} outside 1..{MAX_FRAME_PIXELS} pixels "
                                           f"({MAX_FRAME_PIXELS / 1e6:.1f} MP)")
    w, h = sw, sh
    rot = _ROTATE.search(text)
    if rot is not None and round(abs(float(rot.group(1)))) % 180 == 90:
        w, h = h, w
    dur = _DURATION.search(text)
    duration = 3600.0 * int(dur.group(1)) + 60.0 * int(dur.group(2)) + float(dur.group(3)) if dur else 0.0
    rate = float(fps.group(1)) if fps is not None else 0.0
    codec = line.split(",")[0].split()[0] if line.split() else "?"
    info = MediaInfo(path, demuxer, codec, w, h, rate, duration, (sw, sh))
    if duration <= 0 or not 0 < rate <= 1000:
        info = count_frames(info)
    return info


def _count_packets(info: MediaInfo, max_frames: int) -> tuple[int, float]:
    """(packets of the first video stream, where the last one ends in seconds), read without decoding (``-c
    copy``). Raises BadInputError past :data:`DECODE_TIMEOUT_S` or for more than ``max_frames`` packets."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", *input_args(info.path, info.demuxer), "-map", "0:v:0",
           "-c", "copy", "-frames:v", str(max_frames + 1), "-f", "null", "-progress", "pipe:1", "-nostats", "-"]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=DECODE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BadInputError(info.path, "video", f"counting its frames took more than {DECODE_TIMEOUT_S} s") from exc
    frames = re.findall(rb"^frame=(\d+)", res.stdout, re.M)
    times = re.findall(rb"^out_time_us=(\d+)", res.stdout, re.M)
    n = int(frames[-1]) if frames else 0
    if n > max_frames:
        raise BadInputError(info.path, "video", f"more than {max_frames} frames")
    return n, (int(times[-1]) / 1e6 if times else 0.0)


def frame_count(path: str | os.PathLike, max_frames: int = MAX_STREAM_FRAMES) -> tuple[int, MediaInfo]:
    """(number of frames, :func:`probe_video`'s info) of a video file, counted from its packets without
    decoding any (one packet per frame, as in the H.264 mp4 files render-amass writes). Raises
    BadInputError(path, "video") for a refused file, no frame, or more than ``max_frames`` frames."""
    info = probe_video(path)
    n, _ = _count_packets(info, max_frames)
    if n < 1:
        raise BadInputError(info.path, "video", "no frames")
    return n, info


def count_frames(info: MediaInfo) -> MediaInfo:
    """``info`` with ``duration`` and ``fps`` measured by reading the packets of the video stream (no decoding):
    for files whose header has no duration or frame rate (a browser's MediaRecorder webm says ``1k tbr`` and no
    duration). Stops after :data:`MAX_FRAMES` packets (refused). Raises BadInputError."""
    n, end = _count_packets(info, MAX_FRAMES)  # end: where the last packet ends
    if 0 < info.fps <= 1000 and n >= 1:  # a frame rate but no duration
        return dataclasses.replace(info, duration=n / info.fps)
    if n < 2 or end <= 0:
        raise BadInputError(info.path, "video", f"no frame rate or duration in the header and {n} frame(s) found")
    return dataclasses.replace(info, fps=n / end, duration=end)


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down (never up) so the short side is at most ``short_side``, the other side
    keeping the aspect ratio rounded to an even number (ffmpeg's ``-2``)."""
    if short_side is None or min(width, height) <= int(short_side):
        return width, height
    s = int(short_side)
    if width <= height:
        return s, max(2, _even(s * height, width))
    return max(2, _even(s * width, height)), s


def _even(num: int, den: int) -> int:
    """``num / den`` rounded to the nearest even integer, halves away from zero (ffmpeg's av_rescale * 2)."""
    return (num + den) // (2 * den) * 2


#: what ffmpeg says when a frame is above ``-max_pixels`` (then the file is refused, not read in part)
_OVER_MAX_PIXELS = b"exceeds specified max pixel count"


def _decoded_chunks(info: MediaInfo, size: tuple[int, int], max_frames: int, chunk: int, *,
                    before_input: Sequence[str] = (), filters: Sequence[str] = (), timeout: float = DECODE_TIMEOUT_S,
                    per_chunk: bool = False) -> Iterator[np.ndarray | None]:
    """The frames of :func:`decode` as they come: arrays (k <= ``chunk``, H, W, 3) uint8 (a new one each time),
    then ``None`` when a frame beyond ``max_frames`` exists (ffmpeg is then stopped). ``timeout``: for the
    whole decoding, or for each chunk when ``per_chunk`` (a stall guard while the consumer works on each chunk).
    Abandoning the generator stops ffmpeg. Raises BadInputError(path, "video")."""
    w, h = int(size[0]), int(size[1])
    frame_bytes = w * h * 3
    vf = ",".join([*filters, f"scale={w}:{h}:flags=area"])
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-threads", "2", *before_input,
           *input_args(info.path, info.demuxer), "-map", "0:v:0", "-vf", vf, "-fps_mode", "passthrough",
           "-frames:v", str(max_frames + 1), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    k, more, finished, fired = 0, False, False, []
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)

        def expire() -> None:
            fired.append(True)
            proc.kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            while k < max_frames:
                buf = np.empty((min(chunk, max_frames - k), h, w, 3), np.uint8)
                got_frames = 0
                for j in range(len(buf)):
                    got = proc.stdout.readinto(memoryview(buf[j]).cast("B"))
                    if got < frame_bytes:
                        break
                    got_frames += 1
                k += got_frames
                if got_frames:
                    if per_chunk:
                        timer.cancel()
                    yield buf[:got_frames]
                    if per_chunk:
                        timer = threading.Timer(timeout, expire)
                        timer.start()
                if got_frames < len(buf):
                    break
            if k == max_frames:
                more = len(proc.stdout.read(frame_bytes)) == frame_bytes
            finished = True
        finally:  # also when the consumer abandons the generator: ffmpeg is stopped
            proc.stdout.close()
            if more or not finished:
                proc.kill()
            code = proc.wait()
            timer.cancel()
        if fired and code != 0 and not more:
            raise BadInputError(info.path, "video", f"decoding took more than {timeout:g} s")
        err.seek(0)
        said = err.read(1 << 16)
        if _OVER_MAX_PIXELS in said:
            raise BadInputError(info.path, "video", f"a frame above {MAX_FRAME_PIXELS} pixels (the stream changes "
                                                    "size after its header)")
        if code != 0 and not more and k == 0:
            log.debug("ffmpeg on %s: %s", info.path, said[:4096].decode("utf-8", "replace"))
            raise BadInputError(info.path, "video", "ffmpeg could not decode it (a damaged or unsupported stream)")
    if more:
        yield None


def decode(info: MediaInfo, size: tuple[int, int], max_frames: int, *, before_input: Sequence[str] = (),
           filters: Sequence[str] = (), timeout: float = DECODE_TIMEOUT_S, expect: int | None = None
           ) -> tuple[np.ndarray, bool]:
    """Decode the first video stream of ``info.path`` -> (frames (k, H, W, 3) uint8 RGB with (W, H) = ``size``,
    whether a frame beyond ``max_frames`` existed).

    ``before_input``: input options (``-ss``, ``-t``); ``filters``: ``-vf`` filters applied before the final
    ``scale`` to ``size`` (so every frame has that size whatever the stream does later). ffmpeg runs restricted
    (:func:`input_args` with ``-f info.demuxer``, ``-max_pixels``). The frames go into one array of ``expect``
    frames (default: ``max_frames``, at most 64), grown by half whenever it is full, never past ``max_frames``:
    memory follows the frames that exist, not the cap. ffmpeg's messages are not passed on (they could name
    other files). Raises BadInputError(path, "video")."""
    w, h = int(size[0]), int(size[1])
    frame_bytes = w * h * 3
    if max_frames < 1 or max_frames * frame_bytes > MAX_DECODED_BYTES:
        raise BadInputError(info.path, "video", f"{max_frames} frames of {w}x{h} exceed the decoding budget of "
                                                f"{MAX_DECODED_BYTES >> 20} MiB")
    cap = max(1, min(max_frames, 64 if expect is None else int(expect)))
    out = np.empty((cap, h, w, 3), np.uint8)
    k, more = 0, False
    for part in _decoded_chunks(info, (w, h), max_frames, 64, before_input=before_input, filters=filters,
                                timeout=timeout):
        if part is None:
            more = True
            break
        if k + len(part) > len(out):
            grown = np.empty((min(max_frames, max(k + len(part), len(out) * 3 // 2)), h, w, 3), np.uint8)
            grown[:k] = out[:k]
            out = grown
        out[k:k + len(part)] = part
        k += len(part)
    return out[:k], more


def iter_frames(path: str | os.PathLike, short_side: int | None = None, *, max_frames: int = MAX_STREAM_FRAMES,
                chunk: int = STREAM_CHUNK_FRAMES, timeout: float = DECODE_TIMEOUT_S
                ) -> tuple[MediaInfo, tuple[int, int], Iterator[np.ndarray]]:
    """(info, (W, H), chunks): every frame of a video file as consecutive (k <= ``chunk``, H, W, 3) uint8 RGB
    arrays, scaled as in :func:`read_video`, for a consumer that handles a clip chunk by chunk (build-shards'
    JPEG frames): memory is one chunk, whatever the length. The file is probed first (:func:`probe_video`);
    iterating raises BadInputError(path, "video") when it cannot be decoded, holds no frame or more than
    ``max_frames`` (:data:`MAX_STREAM_FRAMES`, an hour at 30 fps), or a chunk takes longer than ``timeout``."""
    info = probe_video(path)
    w, h = scaled_size(info.width, info.height, short_side)

    def chunks() -> Iterator[np.ndarray]:
        n = 0
        for part in _decoded_chunks(info, (w, h), max_frames, chunk, timeout=timeout, per_chunk=True):
            if part is None:
                raise BadInputError(info.path, "video", f"more than {max_frames} frames")
            n += len(part)
            yield part
        if n == 0:
            raise BadInputError(info.path, "video", "no frames decoded")

    return info, (w, h), chunks()


def read_video(path: str | os.PathLike, short_side: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode every frame of a video file -> (frames (T, H, W, 3) uint8 RGB, ``fps``, ``codec``, ``size`` and
    ``source_size`` (width, height) before scaling and rotation, ``demuxer``).

    With ``short_side``, ffmpeg scales frames down (area averaging, aspect kept, even sizes) so the short side is
    at most ``short_side`` pixels while decoding, which is much cheaper than resizing afterwards. The file is
    read as an untrusted one (:func:`probe_video`); at most :data:`MAX_FRAMES` frames and
    :data:`MAX_DECODED_BYTES` bytes of frames, held in an array sized from the header's duration x fps and grown
    when the stream holds more (:func:`decode`). Raises BadInputError(path, "video") when the file is missing,
    refused, cannot be decoded, holds no frames or more than the caps."""
    info = probe_video(path)
    w, h = scaled_size(info.width, info.height, short_side)
    cap = min(MAX_FRAMES, MAX_DECODED_BYTES // (w * h * 3))
    frames, more = decode(info, (w, h), cap, expect=int(info.duration * info.fps) + 1)
    if more:
        raise BadInputError(path, "video", f"more than {cap} frames of {w}x{h} (the decoding budget: "
                                           f"{MAX_FRAMES} frames, {MAX_DECODED_BYTES >> 20} MiB)")
    if not len(frames):
        raise BadInputError(path, "video", "no frames decoded")
    meta = {"fps": info.fps, "codec": info.codec, "size": (w, h), "source_size": info.source_size,
            "demuxer": info.demuxer, "duration": info.duration}
    return frames, meta


def select_filter(numbers: Sequence[int]) -> str:
    """The ``-vf`` filter keeping frames ``numbers`` (decode order, each once): ``select='eq(n\\,3)+eq(n\\,9)'``."""
    return "select='" + "+".join(f"eq(n\\,{int(i)})" for i in numbers) + "'"


def read_frames(path: str | os.PathLike, indices: Sequence[int], short_side: int | None = None) -> np.ndarray:
    """Frames ``indices`` (decode order) of a video file -> (k, H, W, 3) uint8, decoding only up to the last one
    wanted and keeping only the wanted ones (``select``), scaled as in :func:`read_video`. Raises
    BadInputError(path, "video") when the file is refused or has fewer frames."""
    want = [int(i) for i in indices]
    if not want or min(want) < 0:
        raise ValueError(f"frame indices must be >= 0, got {want[:5]}")
    info = probe_video(path)
    uniq = sorted(set(want))
    w, h = scaled_size(info.width, info.height, short_side)
    got, _ = decode(info, (w, h), len(uniq), filters=[select_filter(uniq)])
    if len(got) < len(uniq):
        missing = uniq[len(got):]
        raise BadInputError(path, "video", f"fewer frames than requested (missing {missing[:3]})")
    pos = {v: j for j, v in enumerate(uniq)}
    return np.stack([got[pos[i]] for i in want])


def mp4_frames(data: bytes, indices: Sequence[int] | None = None, short_side: int | None = None) -> np.ndarray:
    """Decode a video held in memory (a shard's ``video.mp4`` member) and return frames ``indices`` (all when
    None) -> (k, H, W, 3) uint8, scaled down to ``short_side`` as :func:`read_video` does.

    Through a temporary file (mp4 files written without ``faststart`` cannot be read from a pipe), read as an
    untrusted file (:func:`probe_video`: allowed containers, frame size cap). H.264 needs the stream decoded
    from the start, so this decodes up to the last wanted frame."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            if indices is None:
                return read_video(tmp.name, short_side)[0]
            return read_frames(tmp.name, indices, short_side)
        except BadInputError as exc:  # the temporary name means nothing to the caller
            raise BadInputError("video.mp4", exc.field, exc.message) from None

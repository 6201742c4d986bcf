"""Video helpers for shards: render sidecars, pack/unpack per-frame JPEGs, decode selected frames.

Reading and writing mp4 files is :mod:`lavimo.core.mp4`'s (``read_video``, ``mp4_frames``, ``write_video``).

Two shard video members are supported (see the README for the measured trade-off):

- ``video.mp4``: the rendered H.264 file as is. Reading any frame means decoding the stream from its start.
- ``video.jpgs``: every frame resized to the training resolution and JPEG-compressed, packed into one member so
  the loader decodes only the frames it samples. Layout (all integers little-endian)::

      b"LVJPGS1\\0"            8-byte magic
      uint32 n                 number of frames
      uint32 width, height     frame size in pixels
      uint64 offsets[n + 1]    byte offsets of each JPEG, relative to the start of the data block
      data                     the n JPEG files back to back (frame i = data[offsets[i]:offsets[i+1]])

Frames are RGB, uint8, (H, W, 3) in numpy and (3, H, W) in torch.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from lavimo.core.errors import BadInputError

JPGS_MAGIC = b"LVJPGS1\x00"
_HEADER = struct.Struct("<8sIII")


def read_sidecar(path: str | os.PathLike) -> dict:
    """Read a render sidecar ``<keyid>.json``. Raises BadInputError when missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "sidecar", "file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(path, "sidecar", f"not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInputError(path, "sidecar", "expected a JSON object")
    return data


class JpgsEncoder:
    """Build a ``video.jpgs`` member frame by frame (layout above): :meth:`add` JPEG-encodes a chunk of (k, H, W,
    3) uint8 frames at once, so a long clip costs one chunk of decoded frames plus its compressed JPEGs;
    :meth:`finish` returns the member. ``max_bytes``: the largest member accepted (ValueError as soon as the
    JPEGs pass it)."""

    def __init__(self, quality: int = 90, max_bytes: int | None = None):
        self.quality, self.max_bytes = int(quality), max_bytes
        self.size: tuple[int, int] | None = None
        self._blobs: list[bytes] = []
        self._bytes = 0

    def add(self, frames: np.ndarray) -> None:
        from PIL import Image

        frames = np.asarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape}")
        size = (int(frames.shape[2]), int(frames.shape[1]))
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise ValueError(f"frames of {size[0]}x{size[1]} after frames of {self.size[0]}x{self.size[1]}")
        for f in frames:
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=self.quality, subsampling=2, optimize=False)
            self._blobs.append(buf.getvalue())
            self._bytes += len(self._blobs[-1])
            if self.max_bytes is not None and self._bytes + 8 * len(self._blobs) > self.max_bytes:
                raise ValueError(f"video.jpgs: more than {self.max_bytes} bytes of JPEG frames after "
                                 f"{len(self._blobs)} frames")

    def __len__(self) -> int:
        return len(self._blobs)

    def finish(self) -> bytes:
        if self.size is None:
            raise ValueError("video.jpgs: no frames")
        t, (w, h) = len(self._blobs), self.size
        offsets = np.zeros(t + 1, dtype="<u8")
        offsets[1:] = np.cumsum([len(b) for b in self._blobs])
        return _HEADER.pack(JPGS_MAGIC, t, w, h) + offsets.tobytes() + b"".join(self._blobs)


def encode_jpgs(frames: np.ndarray, quality: int = 90) -> bytes:
    """Pack (T, H, W, 3) uint8 frames as per-frame JPEGs into one ``video.jpgs`` member (layout above;
    :class:`JpgsEncoder` builds one chunk by chunk).

    Encoding is deterministic for a given libjpeg (4:2:0 subsampling, no optimisation passes that vary)."""
    enc = JpgsEncoder(quality)
    enc.add(frames)
    return enc.finish()


MAX_FRAME_SIDE = 8192  # pixels; larger stored frames are refused (decompression-bomb guard)
#: most bytes of decoded frames one :func:`decode_jpgs` call returns (frames x decoded size x 3); more is refused
#: before any frame is decoded.
MAX_DECODED_BYTES = 512 << 20


def jpgs_info(data: bytes) -> tuple[int, int, int, np.ndarray, int]:
    """Parse a ``video.jpgs`` header -> (num_frames, width, height, offsets (n+1,), data_start).

    Raises ValueError for anything that is not a well-formed member (bad magic, truncated table, frame size
    0 or above :data:`MAX_FRAME_SIDE`, offsets that do not start at 0, increase and end at the data size)."""
    if len(data) < _HEADER.size:
        raise ValueError("video.jpgs: truncated header")
    magic, n, w, h = _HEADER.unpack_from(data, 0)
    if magic != JPGS_MAGIC:
        raise ValueError("video.jpgs: bad magic")
    if not (1 <= w <= MAX_FRAME_SIDE and 1 <= h <= MAX_FRAME_SIDE):
        raise ValueError(f"video.jpgs: frame size {w}x{h} outside 1..{MAX_FRAME_SIDE}")
    start = _HEADER.size + 8 * (n + 1)
    if n == 0 or len(data) < start:
        raise ValueError("video.jpgs: truncated offset table or no frames")
    offsets = np.frombuffer(data, dtype="<u8", count=n + 1, offset=_HEADER.size)
    if (offsets[0] != 0 or int(offsets[-1]) + start != len(data)
            or np.any(np.diff(offsets.astype(np.int64)) <= 0)):
        raise ValueError("video.jpgs: offsets do not match the data size")
    return int(n), int(w), int(h), offsets, start


def decode_jpgs(data: bytes, indices: Iterable[int] | None = None, min_size: int | None = None):
    """Decode frames ``indices`` (all when None) of a ``video.jpgs`` member -> torch uint8 (k, 3, H, W).

    With ``min_size``, JPEG DCT scaling (PIL's draft mode) decodes frames stored much larger than needed at
    1/2, 1/4 or 1/8 size, keeping the short side >= ``min_size``. The decoded frames may take at most
    :data:`MAX_DECODED_BYTES` (checked from the header before decoding; each frame's JPEG header must say the
    member's size, also checked before its pixels are decoded). Uses PIL (libjpeg-turbo), not torchvision,
    so loader workers do not import torchvision."""
    import torch
    from PIL import Image

    n, w, h, offsets, start = jpgs_info(data)
    idx = range(n) if indices is None else [int(i) for i in indices]
    scale = 1  # the DCT scale draft mode will use (1, 2, 4 or 8)
    if min_size is not None and min(w, h) >= 2 * min_size:
        while scale < 8 and min(w, h) // (2 * scale) >= min_size:
            scale *= 2
    need = len(idx) * (-(-w // scale)) * (-(-h // scale)) * 3
    if need > MAX_DECODED_BYTES:
        raise ValueError(f"video.jpgs: {len(idx)} frames of {w}x{h} would decode to {need >> 20} MiB, above the "
                         f"budget of {MAX_DECODED_BYTES >> 20} MiB")
    view = memoryview(data)
    arr = None  # (k, H, W, 3), allocated at the first frame's decoded size (the same for every frame)
    for j, i in enumerate(idx):
        if not 0 <= i < n:
            raise IndexError(f"video.jpgs: frame {i} out of range 0..{n - 1}")
        try:
            im = Image.open(io.BytesIO(view[start + int(offsets[i]):start + int(offsets[i + 1])]))
            if im.format != "JPEG" or im.size != (w, h):  # checked before decoding any pixel
                raise ValueError(f"video.jpgs: frame {i} is a {im.format} of {im.size[0]}x{im.size[1]}, the "
                                 f"header says JPEG {w}x{h}")
            if scale > 1:
                im.draft("RGB", (max(1, w * min_size // min(w, h)), max(1, h * min_size // min(w, h))))
            frame = np.asarray(im.convert("RGB"))
        except ValueError:
            raise
        except (OSError, SyntaxError, struct.error, IndexError, Image.DecompressionBombError) as exc:
            raise ValueError(f"video.jpgs: frame {i} cannot be decoded ({type(exc).__name__}: {exc})") from None
        if arr is None:
            arr = np.empty((len(idx),) + frame.shape, np.uint8)
        if frame.shape != arr.shape[1:]:
            raise ValueError(f"video.jpgs: frame {i} decodes to {frame.shape}, frame {idx[0]} to {arr.shape[1:]}")
        arr[j] = frame
    if arr is None:
        raise ValueError("video.jpgs: no frames asked for")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

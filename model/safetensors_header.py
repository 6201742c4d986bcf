"""The safetensors header, checked before anything is allocated: the one reader of untrusted ``.safetensors`` files
(LAVIMO checkpoints, run directories' ``last.safetensors`` / ``best.safetensors``, pretrained CLIP weights).

A safetensors file is ``[u64 little-endian N][N bytes of JSON header][tensor bytes]``; the header maps tensor names
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the tensor bytes) plus an optional
``"__metadata__"`` object of string values. :func:`read_header` checks, reading only the first ``8 + N`` bytes:

* ``N`` is at most :data:`MAX_HEADER_BYTES` and fits in the file (a crafted length cannot make it read or allocate
  more than the file holds);
* the header is UTF-8 JSON of at most :data:`MAX_HEADER_ITEMS` values (counted before parsing) nested at most
  :data:`lavimo.core.jsonconfig.MAX_JSON_DEPTH` deep, a JSON object whose ``__metadata__`` maps strings to strings;
* every tensor has a known dtype, a shape of non-negative integers and offsets inside the tensor bytes whose
  length is exactly ``prod(shape) x itemsize``; tensors do not overlap and together cover the tensor bytes.

So every byte a later ``safetensors`` call allocates is a byte that is in the file. Anything else raises
:class:`lavimo.core.errors.BadInputError` naming the file and ``"safetensors header"``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavimo.core.errors import BadInputError
from lavimo.core.jsonconfig import MAX_JSON_DEPTH, loads_bounded

#: the largest header accepted (bytes): 32 MiB, a third of safetensors' own limit (100 MB), so that reading and
#: checking one costs at most ~100 MB; a LAVIMO checkpoint's header (tensor table + config + the text backbone's
#: tokenizer files) is about 1 MB, a CLIP state dict's a few KB
MAX_HEADER_BYTES = 32 * 2**20

#: the most JSON values in a header (a paper checkpoint's: ~5 k; the text assets are strings, one value each):
#: parsing costs ~50 bytes of Python objects per value, so this bounds it at ~50 MB
MAX_HEADER_ITEMS = 1_000_000

#: bytes per element of every safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

FIELD = "safetensors header"


@dataclass
class Header:
    """A checked safetensors header: ``tensors`` {name: (dtype, shape)}, ``metadata`` {str: str} (empty when the
    file has none), ``data_bytes`` = the length of the tensor bytes (sum of every tensor's bytes)."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]
    data_bytes: int


def read_header(path: str | os.PathLike, *, max_header_bytes: int = MAX_HEADER_BYTES) -> Header:
    """Read and check the header of safetensors file ``path`` (see the module docstring); reads ``8 + N`` bytes
    at most. ``FileNotFoundError`` when absent; :class:`BadInputError` for anything else wrong."""
    path = Path(path)

    def bad(message: str) -> BadInputError:
        return BadInputError(path, FIELD, message)

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            raise bad(f"the file is {size} bytes, too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if n > max_header_bytes:
            raise bad(f"declares a {n}-byte header, more than the {max_header_bytes} accepted")
        if n > size - 8:
            raise bad(f"declares a {n}-byte header but the file has only {size - 8} bytes after the length")
        raw = fh.read(n)
    if len(raw) != n:
        raise bad("the file changed while it was read")
    obj = loads_bounded(raw, path, FIELD, max_bytes=max_header_bytes, max_depth=MAX_JSON_DEPTH,
                        max_items=MAX_HEADER_ITEMS)
    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    meta = obj.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("__metadata__ must be an object of string values")
    data_bytes = size - 8 - n
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in obj.items():
        shown = name[:80]
        if not isinstance(info, dict):
            raise bad(f"tensor {shown!r}: expected an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise bad(f"tensor {shown!r}: unknown dtype {str(dtype)[:20]!r}")
        if (not isinstance(shape, list) or len(shape) > 64
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"tensor {shown!r}: shape must be a list of at most 64 non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"tensor {shown!r}: data_offsets must be two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            raise bad(f"tensor {shown!r}: data_offsets [{begin}, {end}] outside the {data_bytes} tensor bytes "
                      "in the file (truncated or crafted)")
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if nbytes != end - begin:
            raise bad(f"tensor {shown!r}: shape {shape} of {dtype} is {nbytes} bytes but its data_offsets span "
                      f"{end - begin}")
        tensors[name] = (dtype, tuple(shape))
        spans.append((begin, end, shown))
    spans.sort()
    pos = 0
    for begin, end, shown in spans:
        if begin != pos:
            raise bad(f"tensor {shown!r}: starts at {begin}, expected {pos} (tensors overlap or leave a gap)")
        pos = end
    if pos != data_bytes:
        raise bad(f"the tensors cover {pos} bytes but the file holds {data_bytes} after the header "
                  "(truncated, padded or crafted)")
    return Header(tensors, meta, data_bytes)


def load_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """Every tensor of safetensors file ``path`` on the CPU, after :func:`read_header` (so at most the file's own
    bytes are allocated); :class:`BadInputError` naming the file for anything unreadable."""
    from safetensors.torch import load_file

    read_header(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends on a damaged file
        raise BadInputError(path, FIELD, f"not a readable safetensors file ({' '.join(str(exc).split())[:200]})"
                            ) from exc

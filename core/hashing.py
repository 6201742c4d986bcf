"""The one file-hash helper (shard manifests, render sidecars, run records)."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO


def sha256_stream(fh: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex sha256, size in bytes) of everything a binary stream gives, read in ``chunk``-byte blocks (constant
    memory)."""
    h = hashlib.sha256()
    size = 0
    for block in iter(lambda: fh.read(chunk), b""):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in ``chunk``-byte blocks (constant memory)."""
    with open(path, "rb") as fh:
        return sha256_stream(fh, chunk)

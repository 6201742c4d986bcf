"""A shard's sha256 computed while the loader streams it (docs/shards.md, "Checked while streamed").

The training loader reads every byte of a tar anyway; :class:`DigestReader` sits between the opened stream
(local file, curl, ``pipe:`` command) and the tar reader and feeds each block it passes on to ``hashlib``. The
verdict is exact and never a guess:

- more bytes than the manifest's ``bytes`` -> :class:`ShardChecksumError` at once (nothing past them is read);
- at the end of the stream (the tar reader has reached the end-of-archive blocks; :meth:`DigestReader.finish`
  reads the tail after them, the record padding, through the same hash) the size and the sha256 are compared
  with the manifest's: a difference raises :class:`ShardChecksumError` naming the shard;
- a tar the reader cannot parse is read to its end the same way (:meth:`DigestReader.settle`): bytes that differ
  from the manifest are a checksum error, not a skipped shard;
- a reading that stops early (an epoch cut in the middle of a shard, a read error) gives no verdict: the shard is
  checked the next time a reading of it reaches its end (every training pass reads each of a rank's shards to
  its end but the one in flight at the cut; validation reads every val shard to its end).

:class:`ShardChecksumError` is a :class:`lavimo.core.errors.SetupError` (exit 2); it pickles, so a loader
worker hands it to the main process (dataset/shards/stream.py).
"""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

from lavimo.core.errors import SetupError

#: bytes read per block when a tail is drained
_CHUNK = 1 << 20


class ShardChecksumError(SetupError):
    """A shard whose bytes differ from its manifest entry (size or sha256); ``url`` is the shard's path or URL,
    named first in the message."""

    def __init__(self, url: str, problem: str):
        self.url, self.problem = str(url), str(problem)
        super().__init__(f"{self.url}: {self.problem}; rebuild the shards with build-shards (or pass --no-verify "
                         "to train on them anyway)")

    def __reduce__(self):
        return (type(self), (self.url, self.problem))


class DigestReader(io.RawIOBase):
    """A read-only stream of ``raw`` (a shard of ``size`` bytes whose sha256 should be ``sha256``) that hashes
    what it passes on and raises :class:`ShardChecksumError` as described in the module docstring.
    ``verified`` is True once the whole stream was read and matched. :meth:`close` closes ``raw``."""

    def __init__(self, raw: BinaryIO, url: str, sha256: str, size: int):
        super().__init__()
        self._raw, self.url = raw, str(url)
        self.expected_sha256, self.expected_size = str(sha256), int(size)
        self._hash = hashlib.sha256()
        self.nbytes = 0
        self.verified = False
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._ended:
            return 0
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        want = min(len(view), self.expected_size + 1 - self.nbytes)  # >= 1: one byte past the size tells "too long"
        data = self._raw.read(want)
        if not data:
            self._ended = True
            self._check()
            return 0
        n = len(data)
        self.nbytes += n
        if self.nbytes > self.expected_size:
            self._ended = True
            raise ShardChecksumError(self.url, f"more than the {self.expected_size} bytes the manifest lists "
                                               "(modified or appended to)")
        self._hash.update(data)
        view[:n] = data
        return n

    def _check(self) -> None:
        if self.nbytes != self.expected_size:
            raise ShardChecksumError(self.url, f"{self.nbytes} bytes, the manifest says {self.expected_size} "
                                               "(truncated or modified)")
        if self._hash.hexdigest() != self.expected_sha256:
            raise ShardChecksumError(self.url, "sha256 differs from the manifest (modified or corrupt), found "
                                               "while streaming it for training")
        self.verified = True

    def finish(self) -> None:
        """Read what is left of the stream (the tail after the tar's end-of-archive blocks) through the hash and
        give the verdict: returns when the shard matches its manifest, else raises ShardChecksumError. Read
        errors (OSError) propagate."""
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass

    def settle(self) -> None:
        """After the tar reader failed: :meth:`finish` when the rest can be read (ShardChecksumError when the
        bytes differ from the manifest); nothing when the stream itself fails (no verdict)."""
        try:
            self.finish()
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()

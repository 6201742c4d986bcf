"""The motion (raw feature rows) of an indexed motion, read only from the index's own database: the feature file
of a feature-folder index (:meth:`lavimo.search.index.Index.feature_file`: ``<keyid>.npy`` inside the recorded
folder) or the ``motion.npy`` member of the sample in its shard (a shard the recorded shard set's manifest lists,
matched by name; never a path from a request or from an entry). For the page's ``.npy`` download and skeleton
previews: :class:`MotionReader` reads a split's manifest once; :meth:`MotionReader.each` reads each shard once for
every motion of it (``index --skeleton-previews``)."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from lavimo.core.errors import BadInputError
from lavimo.core.keyids import is_keyid
from lavimo.dataset.shards import format as shard_format, stream

from .model import read_motion_npy


class MotionReader:
    """Reads the motions of one index from its own database. The shard set's manifest of a split is read once,
    on first use, and kept (a server reads it once per service, ``index --skeleton-previews`` once per run); the
    shards themselves are read when asked. Thread-safe."""

    def __init__(self, index: Any):
        self.index = index
        self._lock = threading.Lock()
        self._shards: dict[str, dict[str, Path] | None] = {}  # split -> shard name -> path (None: unreadable)

    def features(self, i: int) -> np.ndarray | None:
        """Motion ``i``'s raw features (T, D) float32, or None when the index's database does not hold it (a moved
        shard set, an index of another kind). Raises BadInputError for an unreadable file or member."""
        p = self.index.feature_file(i)
        if p is not None:
            return read_motion_npy(Path(p)) if Path(p).is_file() else None
        where = self.shard_member(i)
        if where is None:
            return None
        data = _first_member(*where)
        return None if data is None else _features(where[0], data)

    def shard_member(self, i: int) -> tuple[Path, str] | None:
        """(shard path, member name) of motion ``i``'s ``motion.npy`` in the recorded shard set: a shard the
        split's manifest lists, matched by name (never a path from an entry), and the member of the entry's
        keyid. None for an entry of another kind, a keyid that is not a name, a set that moved."""
        e, db = self.index.entry(i), self.index.meta.get("database")
        if not isinstance(db, dict) or db.get("kind") != "shards" or not isinstance(db.get("path"), str):
            return None
        src = e.source if isinstance(e.source, dict) else {}
        shard, split = src.get("shard"), src.get("split")
        if src.get("kind") != "shard" or not isinstance(shard, str) or not isinstance(split, str):
            return None
        # the shard set index.json records, opened only as a folder of the splits it lists: a path that is no
        # folder (a brace pattern would be expanded) or a split that is not a name (../x) reads nothing
        splits = db.get("splits")
        if not (is_keyid(split) and isinstance(splits, list) and split in splits and Path(db["path"]).is_dir()):
            return None
        try:
            wanted = shard_format.member_name(e.keyid, "motion.npy")
        except BadInputError:  # an entry whose keyid is not a keyid names no member
            return None
        path = (self._split_shards(db["path"], split) or {}).get(shard)
        return None if path is None else (path, wanted)

    def _split_shards(self, root: str, split: str) -> dict[str, Path] | None:
        with self._lock:
            if split not in self._shards:
                try:
                    urls = stream.resolve_shards(Path(root), split)[0]
                    self._shards[split] = {Path(u).name: Path(u) for u in reversed(urls)}  # the first of a name
                except (OSError, ValueError, KeyError):  # BadInputError is a ValueError: the set moved or its
                    self._shards[split] = None  # manifest changed
            return self._shards[split]

    def each(self, rows: Iterable[int]) -> Iterator[tuple[int, np.ndarray | None | Exception]]:
        """(row, features or None or the error reading them) for every row of ``rows``, each row once: feature
        files one by one, then each shard streamed once, up to its last wanted member
        (:func:`lavimo.dataset.shards.format.shard_members`, only the wanted members read), a motion given as its
        member arrives. For rendering every motion's preview without streaming a shard once per motion."""
        by_shard: dict[Path, dict[str, int]] = {}
        for i in rows:
            try:
                if self.index.feature_file(i) is not None:
                    yield i, self.features(i)
                    continue
                where = self.shard_member(i)
            except (OSError, ValueError) as exc:
                yield i, exc
                continue
            if where is None:
                yield i, None
            elif where[1] in by_shard.setdefault(where[0], {}):
                yield i, None  # two rows of one keyid in one shard: the first takes the member
            else:
                by_shard[where[0]][where[1]] = i
        for path, want in by_shard.items():
            yield from _shard_features(path, want)


def motion_features(index: Any, i: int) -> np.ndarray | None:
    """Motion ``i``'s raw features (T, D) float32 (:meth:`MotionReader.features`, the manifest read for this call
    alone), or None when the index's database does not hold it. Raises BadInputError for an unreadable file or
    member."""
    return MotionReader(index).features(i)


def _features(where: Path, data: bytes) -> np.ndarray:
    a = shard_format.load_npy_bytes(data)
    if a.ndim != 2 or a.dtype.kind != "f" or not np.isfinite(a).all():
        raise BadInputError(where, "motion.npy", f"not finite (T, D) features: {a.dtype} {a.shape}")
    return a.astype(np.float32)


def _shard_features(path: Path, want: dict[str, int]) -> Iterator[tuple[int, np.ndarray | None | Exception]]:
    """(row, features or None or error) for the members ``want`` (member name -> row) of one shard, read once in
    tar order; a row whose member the shard does not hold gets None, every row left when the shard turns out
    unreadable gets that error."""
    left = dict(want)
    members = shard_format.shard_members(path, want=lambda n: n in left)
    try:
        for name, data in members:
            row = left.pop(name, None)
            if row is None:
                continue
            try:
                yield row, _features(path, data)
            except ValueError as exc:
                yield row, exc
            if not left:
                break
    except (tarfile.TarError, EOFError, OSError) as exc:
        err: Exception = exc if isinstance(exc, OSError) else BadInputError(
            path, "motion.npy", f"unreadable shard ({' '.join(str(exc).split())[:200]})")
        for row in left.values():
            yield row, err
        left = {}
    finally:
        members.close()
    for row in left.values():
        yield row, None


def _first_member(path: Path, name: str) -> bytes | None:
    """The bytes of the first member ``name`` of the shard ``path``, or None when it has none. Only that member
    is read (the others are skipped unread, one at a time), and the reading stops at it. BadInputError for a
    shard that cannot be read (damaged, truncated, compressed)."""
    members = shard_format.shard_members(path, want=lambda n: n == name)
    try:
        for _, data in members:
            return data
    except (tarfile.TarError, EOFError) as exc:
        raise BadInputError(path, name, f"unreadable shard ({' '.join(str(exc).split())[:200]})") from exc
    finally:
        members.close()
    return None


def npy_bytes(a: np.ndarray) -> bytes:
    """An array as the bytes of a ``.npy`` file (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()

"""The motion (raw feature rows) of an indexed motion, read only from the index's own database: the feature file
of a feature-folder index (:meth:`lavimo.search.index.Index.feature_file`: ``<keyid>.npy`` inside the recorded
folder) or the ``motion.npy`` member of the sample in its shard (a shard the recorded shard set's manifest lists,
matched by name; never a path from a request or from an entry). For the page's ``.npy`` download and skeleton
previews."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from lavimo.core.errors import BadInputError
from lavimo.core.keyids import is_keyid
from lavimo.dataset.shards import format as shard_format, stream

from .model import read_motion_npy


def motion_features(index: Any, i: int) -> np.ndarray | None:
    """Motion ``i``'s raw features (T, D) float32, or None when the index's database does not hold it (a moved
    shard set, an index of another kind). Raises BadInputError for an unreadable file or member."""
    p = index.feature_file(i)
    if p is not None:
        return read_motion_npy(Path(p)) if Path(p).is_file() else None
    e, db = index.entry(i), index.meta.get("database")
    if not isinstance(db, dict) or db.get("kind") != "shards" or not isinstance(db.get("path"), str):
        return None
    src = e.source if isinstance(e.source, dict) else {}
    shard, split = src.get("shard"), src.get("split")
    if src.get("kind") != "shard" or not isinstance(shard, str) or not isinstance(split, str):
        return None
    # the shard set index.json records, opened only as a folder of the splits it lists: a path that is no folder
    # (a brace pattern would be expanded) or a split that is not a name (../x) reads nothing
    root, splits = Path(db["path"]), db.get("splits")
    if not (is_keyid(split) and isinstance(splits, list) and split in splits and root.is_dir()):
        return None
    try:
        urls = stream.resolve_shards(root, split)[0]
    except (OSError, ValueError, KeyError):  # BadInputError is a ValueError: the set moved or its manifest changed
        return None
    try:
        wanted = shard_format.member_name(e.keyid, "motion.npy")
    except BadInputError:  # an entry whose keyid is not a keyid names no member
        return None
    for url in urls:
        if Path(url).name != shard:
            continue
        data = _first_member(Path(url), wanted)
        if data is None:
            return None
        a = shard_format.load_npy_bytes(data)
        if a.ndim != 2 or a.dtype.kind != "f" or not np.isfinite(a).all():
            raise BadInputError(url, "motion.npy", f"not finite (T, D) features: {a.dtype} {a.shape}")
        return a.astype(np.float32)
    return None


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

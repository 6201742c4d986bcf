"""The shard-set format, defined once: file and member names, ``meta.json`` (:class:`SampleMeta`), manifests,
tar reading and writing, ``stats.npz`` (docs/shards.md, "Layout").

A shard set ``SHARDS/``: ``{split}-NNNNNN.tar`` (:func:`shard_name`), plain uncompressed POSIX tars whose
sample ``<keyid>`` has the members ``<keyid>.<member>`` (:func:`member_name`) of :data:`BASE_MEMBERS` and one of
:data:`VIDEO_MEMBERS`; ``{split}.json`` (:func:`manifest_path`, kind :data:`MANIFEST_KIND`; :func:`write_manifest`,
:func:`read_manifest`, :func:`read_manifests`, :func:`manifest_shards`); ``stats.npz`` (:data:`STATS_NAME`:
``mean`` / ``std`` (D,) float32 of the train features and the train shards' fingerprint; :func:`write_stats`,
:func:`load_stats`). The readers also take a remote set (:mod:`lavimo.dataset.shards.source`).

Members, manifests and ``.npy`` payloads are untrusted: tars are read as one uncompressed stream
(:func:`iter_tar_members`; compressed files refused) and members refused from their header (:func:`refusal`:
type, name, kind, :data:`MEMBER_MAX_BYTES`); JSON is parsed bounded (:func:`parse_json_member`); ``.npy`` goes
through the one checked reader (:func:`load_npy_bytes`, never unpickled, sizes checked before allocating).
"""


from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import re
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from lavimo.core.atomic import atomic_path
from lavimo.core.errors import BadInputError
from lavimo.core.jsonconfig import loads_bounded, read_json_file
from lavimo.core.restricted_unpickle import MAX_ARRAY_BYTES, open_npz, read_npy_bytes, read_npz_member
from lavimo.core.hashing import sha256_file
from lavimo.core.keyids import check_keyid, check_member_name, child_path, is_keyid
from lavimo.core.mp4 import MAX_STREAM_FRAMES
from lavimo.dataset.shards.source import CommandFailed, RemoteShards, shard_set

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_KIND = "lavimo-shards-manifest"
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed so rebuilds are byte-identical
META, MOTION, SENT, TEXTS = "meta.json", "motion.npy", "sent.npy", "texts.json"
VIDEO_JPGS, VIDEO_MP4 = "video.jpgs", "video.mp4"
VIDEO_MEMBERS = {"jpgs": VIDEO_JPGS, "mp4": VIDEO_MP4}
BASE_MEMBERS = (META, MOTION, SENT, TEXTS)
ALL_MEMBERS = BASE_MEMBERS + tuple(VIDEO_MEMBERS.values())
SPLITS = ("train", "val", "test")
STATS_NAME = "stats.npz"
#: largest member of a ``stats.npz`` read (bytes): 64 MiB; its arrays are (D,) vectors (D = 263 for HumanML3D)
_MAX_STATS_MEMBER_BYTES = 1 << 26
#: a shard's file name in a manifest: a letter or digit, then letters, digits, ``_``, ``-``, then ``.tar``;
#: always used with ``fullmatch`` (``$`` would let a trailing newline through into a ``pipe:`` command)
SHARD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.tar")
#: a sha256 in hex, as manifests, build states and render sidecars record it
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: the message of a member that is not a regular file
NOT_REGULAR = "not a regular file (link, directory or device)"
#: the longest clip a shard sample holds, in frames: an hour at 30 fps (build-shards refuses longer ones; the
#: member caps below are sized from it); the same number as the longest stream lavimo.core.mp4 decodes
MAX_CLIP_FRAMES = MAX_STREAM_FRAMES
#: the most bytes read of each member kind (:func:`iter_tar_members`); a larger member is refused unread (reason
#: ``member_size``). JSON members are small (a sample's meta.json is ~1 KB, texts.json a few KB);
#: ``motion.npy`` fits :data:`MAX_CLIP_FRAMES` rows of up to 600 float32 features (HumanML3D's 263 take 114 MB);
#: ``sent.npy`` 16k captions of a 1024-wide float16 embedding; a video member 1 GiB (an hour of 256-pixel
#: JPEG frames at quality 90 is ~1 GB). build-shards refuses to write a sample whose member is above its cap.
MEMBER_MAX_BYTES = {
    META: 1 << 20,
    TEXTS: 4 << 20,
    SENT: 32 << 20,
    MOTION: 256 << 20,
    VIDEO_JPGS: 1 << 30,
    VIDEO_MP4: 1 << 30,
}
#: the most bytes of members one sample (consecutive members of one keyid, duplicates included) may hold; the
#: members past it are refused unread (reason ``sample_size``) and the sample is not used
MAX_SAMPLE_BYTES = (1 << 30) + (256 << 20)
#: the first bytes of a compressed stream (gzip, bzip2, xz, zstd): such a "tar" is refused, never decompressed
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


# ----------------------------------------------------------------------------------------------- names
def member_name(key: str, member: str) -> str:
    """The tar member name ``<keyid>.<member>`` of a sample: the one place it is built.

    Raises BadInputError for a key that is not a keyid or a member outside :data:`ALL_MEMBERS`, so a writer
    can never put ``../x`` or ``/abs`` into a tar."""
    check_keyid(key, field="keyid")
    if member not in ALL_MEMBERS:
        raise BadInputError(None, "member", f"{member!r} is not one of {sorted(ALL_MEMBERS)}")
    return check_member_name(f"{key}.{member}")


def shard_name(split: str, index: int) -> str:
    """The file name of shard ``index`` of ``split``: ``{split}-NNNNNN.tar``."""
    return f"{split}-{index:06d}.tar"


def manifest_path(out: str | os.PathLike, split: str) -> Path:
    """The manifest of ``split`` in the shard set ``out``: ``out/{split}.json``."""
    return Path(out) / f"{split}.json"


# ----------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an OSError raised while writing ``path`` (ENOSPC, EIO, ...) the file name it lacks."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
        raise


def write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    with naming(path), atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return True


def tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """A tar header with fixed metadata (mtime, owner, mode) for deterministic shards."""
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = TAR_MTIME
    ti.mode = 0o444
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti, io.BytesIO(data)


def write_tar(path: Path, samples: Sequence[dict[str, bytes]]) -> tuple[str, int]:
    """Atomically write ``samples`` (dicts with ``__key__`` and member -> bytes) -> (sha256 hex, size bytes)."""
    with naming(path), atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for s in samples:
                key = s["__key__"]
                for member in sorted(k for k in s if k != "__key__"):
                    tf.addfile(*tar_member(member_name(key, member), s[member]))
        digest, size = sha256_file(tmp)
    return digest, size


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def manifest_json(manifest: dict) -> str:
    """The text of a manifest file (indented, sorted keys, newline-terminated: the same bytes for the same dict)."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write_manifest(out: str | os.PathLike, split: str, manifest: dict) -> bool:
    """Write ``out/{split}.json`` atomically unless it already holds the same text; True when written."""
    return write_if_changed(manifest_path(out, split), manifest_json(manifest))


def write_stats(path: str | os.PathLike, mean: np.ndarray, std: np.ndarray, *, fingerprint: str,
                num_samples: int) -> None:
    """Write ``stats.npz`` atomically: ``mean``/``std`` (D,), the train ``fingerprint`` they were computed from
    (:func:`stats_fingerprint`) and the number of feature arrays."""
    path = Path(path)
    with naming(path), atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=mean, std=std, train_fingerprint=np.array(fingerprint),
                     num_samples=np.array(num_samples))


# ----------------------------------------------------------------------------------------------- reading
def load_npy_bytes(data: bytes, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """Parse a ``.npy`` member from untrusted bytes -> array, through the one checked ``.npy`` reader
    (:func:`lavimo.core.restricted_unpickle.read_npy`): format version 1.0/2.0, no object dtype (nothing is ever
    unpickled), ``prod(shape) * itemsize`` equal to the bytes that follow and at most ``max_bytes``, all checked
    before any array memory is allocated. Raises ValueError (the message, without a file: callers name the
    member)."""
    try:
        return read_npy_bytes(data, None, "npy", max_bytes)
    except BadInputError as exc:
        raise ValueError(exc.message) from None


def is_int(x: Any) -> bool:
    """Whether ``x`` is an integer (Python or numpy), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def finite_number(v: Any) -> float | None:
    """``v`` as a float when it is a JSON number (not a bool) with a finite value, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer too large for a float
        return None
    return f if math.isfinite(f) else None


def _span_value(t: Any, key: str, n: int) -> float | None:
    v = t.get(key) if isinstance(t, dict) else None
    if v is None:
        return None
    f = finite_number(v)
    if f is None or f < 0:
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        raise ValueError(f"texts.json text {n}: {key} {shown} is not null or a number of seconds >= 0")
    return f


def parse_json_member(data: bytes, member: str = META) -> Any:
    """The JSON value of a ``meta.json`` / ``texts.json`` member, parsed with
    :func:`lavimo.core.jsonconfig.loads_bounded`: at most the member's cap (:data:`MEMBER_MAX_BYTES`) and 64 levels of
    nesting. Raises ValueError naming the member (not JSON, not UTF-8, too big, nested too deep)."""
    try:
        return loads_bounded(data, None, member, max_bytes=MEMBER_MAX_BYTES.get(member, 1 << 20))
    except BadInputError as exc:
        raise ValueError(f"{member}: {exc.message}") from None


def parse_meta(data: bytes) -> dict:
    """A ``meta.json`` member as a dict (:func:`parse_json_member`); ValueError when it is not a JSON object.
    Readers use :meth:`SampleMeta.parse`, which is built on it."""
    meta = parse_json_member(data, META)
    if not isinstance(meta, dict):
        raise ValueError("meta.json: not a JSON object")
    return meta


@dataclasses.dataclass(frozen=True)
class SampleMeta:
    """A sample's ``meta.json``: the one type that writes (:meth:`to_bytes`, build-shards) and reads
    (:meth:`parse`: the loader, ``build-shards check``, the evaluation gallery, the search index) it.

    ``fps``: frames per second of the clip's video and motion; ``num_frames``: video frames T;
    ``feature_rows`` / ``feature_dim``: the motion member's (T-1, D); ``video_size`` / ``rendered_size``:
    [width, height] in pixels of the stored and the rendered frames; ``frame_rule`` / ``frame_start`` /
    ``frame_end``: the clip's AMASS frame selection. Read from an untrusted shard every field may be absent
    (None) or of any JSON type: readers check the fields they use (:meth:`frame_rate`, :meth:`frame_count`)."""

    keyid: Any = None
    dataset: Any = None
    split: Any = None
    amass_path: Any = None
    fps: Any = None
    num_frames: Any = None
    feature_rows: Any = None
    feature_dim: Any = None
    avatar: Any = None
    light: Any = None
    mirrored: Any = None
    body_model: Any = None
    video_size: Any = None
    rendered_size: Any = None
    frame_rule: Any = None
    frame_start: Any = None
    frame_end: Any = None

    def to_bytes(self) -> bytes:
        """The member's bytes (sorted keys, :func:`json_bytes`)."""
        return json_bytes(dataclasses.asdict(self))

    @classmethod
    def parse(cls, data: bytes) -> "SampleMeta":
        """The member ``data`` (:func:`parse_meta`: bounded, a JSON object; ValueError otherwise); unknown keys
        are ignored, absent ones are None."""
        meta = parse_meta(data)
        return cls(**{f.name: meta.get(f.name) for f in dataclasses.fields(cls)})

    def frame_rate(self) -> float:
        """``fps`` as a finite number > 0; ValueError otherwise."""
        fps = finite_number(self.fps)
        if fps is None or fps <= 0:
            raise ValueError(f"fps {str(self.fps)[:40]} is not a positive frame rate")
        return fps

    def frame_count(self) -> int:
        """``num_frames`` as an int >= 1; ValueError / TypeError otherwise."""
        n = int(self.num_frames)
        if n < 1:
            raise ValueError(f"num_frames {n}")
        return n


def parse_texts(data: bytes) -> tuple[list[str], list[tuple[float | None, float | None]]]:
    """Captions and spans of a ``texts.json`` member (a non-empty list of {caption, start, end} or strings;
    parsed by :func:`parse_json_member`: size and nesting capped) -> (captions, [(start, end)]) with start/end
    seconds inside the clip or None (None = whole clip / from the start / to the end; the loader's segment rule
    is in dataset/shards/stream.py). Raises ValueError for anything else (not JSON, not a non-empty list, a caption that
    is not a string, a start/end that is not null or a finite number >= 0, an ``end <= start`` other than
    HumanML3D's whole-clip ``0, 0``)."""
    texts = parse_json_member(data, TEXTS)
    if not isinstance(texts, list) or not texts:
        raise ValueError("texts.json holds no texts")
    captions = [t.get("caption") if isinstance(t, dict) else t for t in texts]
    if not all(isinstance(c, str) for c in captions):
        raise ValueError("texts.json: every text needs a string caption")
    spans = []
    for n, t in enumerate(texts):
        start, end = _span_value(t, "start", n), _span_value(t, "end", n)
        if start is not None and end is not None and end <= start and not start == end == 0:
            raise ValueError(f"texts.json text {n}: end {end} is not after start {start}")
        spans.append((start, end))
    return captions, spans


def read_manifest(shards: str | Path | RemoteShards, split: str) -> dict:
    """The manifest ``{shards}/{split}.json`` as a dict (FileNotFoundError with a hint when absent).

    ``shards`` is a shard set location (:mod:`lavimo.dataset.shards.source`): a directory, or an http(s) base URL /
    ``pipe:`` command, whose manifest is fetched (at most :data:`lavimo.dataset.shards.source.SMALL_FILE_MAX_BYTES`,
    within its timeout; :class:`lavimo.dataset.shards.source.FetchError` naming the URL when that fails)."""
    loc = shard_set(shards)
    if isinstance(loc, RemoteShards):
        path: str | Path = loc.url(f"{split}.json")
        try:
            raw = loc.read_bytes(f"{split}.json")
        except (FileNotFoundError, CommandFailed) as exc:
            raise FileNotFoundError(f"{exc}: no manifest for split {split!r} in {loc}; build the shards with "
                                    "build-shards") from exc
        m = loads_bounded(raw, path)  # size, values and nesting capped: BadInputError naming the URL
    else:
        path = manifest_path(loc, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no manifest for split {split!r}; build the shards with build-shards")
        m = read_json_file(path)  # size, values and nesting capped: BadInputError naming the file
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list):
        raise BadInputError(path, "shards", "not a shard manifest (no list of shards)")
    return m


def read_manifests(out: Path) -> dict[str, dict]:
    """All ``{split}.json`` manifests of a shard set -> {split: manifest}.

    Only visible files named ``<split>.json`` (split = letters, digits, ``_``, ``-``) whose ``split`` field
    agrees with the file name count; temporary files of a killed run (``.train.json.XXXX.tmp.json``) never do."""
    found = {}
    for p in sorted(Path(out).glob("*.json")):
        if not is_keyid(p.stem) or p.name != f"{p.stem}.json":
            continue
        try:
            m = read_json_file(p)
        except (OSError, ValueError):  # unreadable, or not bounded UTF-8 JSON (BadInputError is a ValueError)
            continue
        if isinstance(m, dict) and m.get("kind") == MANIFEST_KIND:
            if m.get("split", p.stem) != p.stem:
                log.warning("%s: split field %r differs from the file name: ignored", p, m.get("split"))
                continue
            found[p.stem] = m
    return found


def manifest_shards(out: Path | RemoteShards, split: str, m: dict) -> list[tuple[dict, Path | str]]:
    """(entry, path) of every shard a manifest lists; for a remote set (:mod:`lavimo.dataset.shards.source`) the path is
    the shard's URL (or ``pipe:`` command). Raises BadInputError naming the manifest when ``shards`` is not a
    list of {name, ...} or a name is not a plain ``<name>.tar`` inside ``out`` (no ``/``, ``..``, URL: a
    manifest never makes a reader fetch another host or run another command)."""
    loc = shard_set(out)
    remote = isinstance(loc, RemoteShards)
    where = loc.url(f"{split}.json") if remote else manifest_path(loc, split)
    entries = m.get("shards") if isinstance(m, dict) else None
    if not isinstance(entries, list):
        raise BadInputError(where, "shards", "expected a list of shard entries")
    result: list[tuple[dict, Path | str]] = []
    for e in entries:
        name = e.get("name") if isinstance(e, dict) else None
        if not isinstance(name, str) or not SHARD_NAME_RE.fullmatch(name):
            raise BadInputError(where, "shards", f"shard name {name!r} is not a plain '<name>.tar' file name")
        result.append((e, loc.url(name) if remote else child_path(loc, name)))
    return result


def member_kind(name: str) -> str:
    """The kind of a member ``<keyid>.<kind>`` (``meta.json``, ``video.mp4``, ...)."""
    return name.partition(".")[2]


def refusal(ti: tarfile.TarInfo, where: str | os.PathLike) -> tuple[str, str] | None:
    """Why the member ``ti`` of the tar ``where`` must not be read, as (reason, message): ``member_type`` when it
    is not a regular file (link, directory, device), ``member_name`` when its name is not ``<keyid>.<ext>``
    (:func:`lavimo.core.keyids.check_member_name`: no ``/``, no ``..``), ``member_kind`` when ``<ext>`` is not one of
    :data:`ALL_MEMBERS`, ``member_size`` when it is larger than its kind's cap (:data:`MEMBER_MAX_BYTES`); None
    when it may be read."""
    if not ti.isreg():
        return "member_type", NOT_REGULAR
    try:
        check_member_name(ti.name, where)
    except BadInputError as exc:
        return "member_name", exc.message
    kind = member_kind(ti.name)
    if kind not in MEMBER_MAX_BYTES:
        return "member_kind", f"not a shard member ({', '.join(ALL_MEMBERS)}): skipped unread"
    if ti.size > MEMBER_MAX_BYTES[kind]:
        return "member_size", f"{ti.size} bytes, more than the {MEMBER_MAX_BYTES[kind]} read of a {kind}"
    return None


class CompressedTarError(tarfile.ReadError):
    """A shard that is a compressed stream (gzip, bzip2, xz, zstd): shards are plain tars, never decompressed."""


def _tar_head(fh: BinaryIO, where: str | os.PathLike) -> bytes:
    """The first tar block of ``fh`` (fewer bytes at the end of the stream); raises :class:`CompressedTarError`
    naming ``where`` when it starts like a compressed stream rather than a tar header (``ustar`` at byte 257)."""
    head = b""
    while len(head) < tarfile.BLOCKSIZE:
        got = fh.read(tarfile.BLOCKSIZE - len(head))
        if not got:
            break
        head += got
    if head[257:262] != b"ustar":
        for magic, kind in _COMPRESSED:
            if head.startswith(magic):
                raise CompressedTarError(f"{where}: a {kind}-compressed file, not a plain tar (shards are read "
                                         "uncompressed only: decompress it first)")
    return head


class _Prefixed:
    """A read-only stream: ``head``, then the rest of ``fh`` (the bytes :func:`_tar_head` took)."""

    def __init__(self, head: bytes, fh: BinaryIO):
        self._head, self._fh = head, fh

    def read(self, n: int | None = -1) -> bytes:
        if not self._head:
            return self._fh.read(n)
        if n is None or n < 0:
            data, self._head = self._head + self._fh.read(), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        if len(data) < n:
            data += self._fh.read(n - len(data))
        return data


def iter_tar_members(source: str | os.PathLike | BinaryIO, *, where: str | os.PathLike | None = None,
                     refused: Callable[[tarfile.TarInfo, str, str], None] | None = None,
                     want: Callable[[str], bool] | None = None,
                     admit: Callable[[tarfile.TarInfo], tuple[str, str] | None] | None = None,
                     max_bytes: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of a shard tar in tar order, read as one uncompressed stream (``r|``: constant
    memory; a gzip / bzip2 / xz / zstd file raises :class:`CompressedTarError` naming it, nothing is ever
    decompressed).

    ``source``: a path or a binary file object (``where`` names it in messages). Members refused by
    :func:`refusal` (not a regular file, a bad name, a kind not in :data:`ALL_MEMBERS`, larger than its kind's
    cap in :data:`MEMBER_MAX_BYTES` or than ``max_bytes``), and members ``admit(tarinfo)`` gives a (reason,
    message) for, are never read: ``refused(tarinfo, reason, message)`` is called for each. Members whose name
    ``want`` rejects are skipped unread. A member whose data ends early raises EOFError; a damaged tar raises
    ``tarfile.TarError`` / OSError.
    """
    own = isinstance(source, (str, os.PathLike))
    if own:
        where = source if where is None else where
        fh: BinaryIO = open(source, "rb")
    else:
        where = "<tar>" if where is None else where
        fh = source  # type: ignore[assignment]
    try:
        head = _tar_head(fh, where)
        with tarfile.open(fileobj=_Prefixed(head, fh), mode="r|") as tf:  # type: ignore[call-overload]
            for ti in tf:
                tf.members = []  # a stream is read once: keep no TarInfo of the members already passed
                why = refusal(ti, where)
                if why is None and max_bytes is not None and ti.size > max_bytes:
                    why = ("member_size", f"{ti.size} bytes")
                if why is None and admit is not None:
                    why = admit(ti)
                if why is not None:
                    if refused is not None:
                        refused(ti, *why)
                    continue
                if want is not None and not want(ti.name):
                    continue
                member = tf.extractfile(ti)
                data = member.read() if member is not None else b""
                if len(data) != ti.size:
                    raise EOFError(f"{ti.name}: member truncated")
                yield ti.name, data
    finally:
        if own:
            fh.close()


def shard_members(path: Path, *, want: Callable[[str], bool] | None = None, refused: list[str] | None = None):
    """:func:`iter_tar_members` of one shard; each refused member is logged and, when
    ``refused`` is a list, appended to it as ``"member 'NAME' refused: reason"``."""
    def note(ti, reason: str, message: str) -> None:
        log.warning("%s: member %r refused: %s", path, ti.name, message)
        if refused is not None:
            refused.append(f"member {ti.name!r} refused: {message}")

    return iter_tar_members(path, refused=note, want=want)


def stats_path(root: str | os.PathLike) -> Path:
    """``root`` when it is a file, else the shard set's ``root/stats.npz`` (local sets; a remote set's is
    ``RemoteShards.url(STATS_NAME)``)."""
    path = Path(root)
    return path / STATS_NAME if path.is_dir() else path


def stats_fingerprint(path: str | os.PathLike) -> str | None:
    """The train fingerprint a ``stats.npz`` was computed from; None when the file is absent or unreadable
    (read with :func:`lavimo.core.restricted_unpickle.read_npz_member`: bounded, never unpickled)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open_npz(path) as zf:
            fp = read_npz_member(zf, path, "train_fingerprint", max_bytes=_MAX_STATS_MEMBER_BYTES)
    except (OSError, BadInputError):
        return None
    return str(fp) if fp.dtype.kind in "US" and fp.size == 1 else None


def stats_arrays(path: str | os.PathLike | BinaryIO, where: str | os.PathLike | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a ``stats.npz`` (a path or a binary file object, named ``where``) as float32, unchecked
    for shape and values. Read with :func:`lavimo.core.restricted_unpickle.read_npz_member` (never unpickled; each
    member's header agrees with the bytes present and is at most :data:`_MAX_STATS_MEMBER_BYTES`, all before
    anything is allocated). Raises BadInputError naming the file and the member (``archive`` when it is not
    an npz, ``mean`` / ``std`` for a missing, malformed, oversized or non-numeric member), OSError when the
    file cannot be read."""
    where = where if where is not None else (path if isinstance(path, (str, os.PathLike)) else "<stats>")
    with open_npz(where, None if isinstance(path, (str, os.PathLike)) else path) as zf:
        out = []
        for key in ("mean", "std"):
            a = read_npz_member(zf, where, key, max_bytes=_MAX_STATS_MEMBER_BYTES)
            if a.dtype.kind not in "iuf":
                raise BadInputError(where, key, f"expected numbers, got dtype {a.dtype}")
            out.append(a.astype(np.float32))
    return out[0], out[1]


def load_stats(root: str | Path | RemoteShards) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) (D,) float32 from ``stats.npz`` (a file, a shard set directory, or a remote set's
    ``stats.npz`` fetched through :mod:`lavimo.dataset.shards.source`), checked (one dimension D, finite); a std below
    1e-8 reads as 1. Raises FileNotFoundError (missing), BadInputError (field ``mean/std``) or
    :class:`lavimo.dataset.shards.source.FetchError` (a remote file that cannot be fetched)."""
    source: Path | io.BytesIO
    loc = shard_set(root)
    if isinstance(loc, RemoteShards):
        path: str | Path = loc.url(STATS_NAME)
        try:
            source = io.BytesIO(loc.read_bytes(STATS_NAME))
        except (FileNotFoundError, CommandFailed) as exc:
            raise FileNotFoundError(f"{exc}: feature statistics missing (build-shards writes them with the train "
                                    "split; pass stats= to use another shard set's)") from exc
    else:
        path = source = stats_path(loc)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: feature statistics missing (build-shards writes them with the train "
                                    "split; pass stats= to use another shard set's)")
    try:
        mean, std = stats_arrays(source, path)
    except BadInputError:
        raise
    except OSError as exc:
        raise BadInputError(path, "mean/std", f"unreadable feature statistics: {exc}") from exc
    if mean.ndim != 1 or mean.shape != std.shape or mean.size == 0:
        raise BadInputError(path, "mean/std", f"expected two (D,) arrays, got {mean.shape} and {std.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise BadInputError(path, "mean/std", "contain NaN/inf (rebuild the train split's stats)")
    return mean, np.where(std < 1e-8, 1.0, std).astype(np.float32)

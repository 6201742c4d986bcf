"""A motion index: the latents of a database of motions under one checkpoint, searched exactly (a matrix product).

Sources: a shard set (``build-shards`` output; one split, several, or ``all``) or a HumanML3D-style folder
(``new_joint_vecs/*.npy`` features, optional ``texts/<id>.txt`` with ``caption#tokens#start#end`` lines).

On disk, in the index directory (format :data:`FORMAT` version :data:`VERSION`):

- ``index.npz`` (no pickled objects; read with ``allow_pickle=False``): ``keyid`` (N,) str, ``motion`` (N, C)
  and ``video`` (N, C) float32 L2-normalised latents (``video`` rows are 0 where the database has no video,
  ``has_video`` (N,) bool), ``text`` (K, C) latents of every caption and ``text_owner`` (K,) int64 (its motion).
- ``index.json``: format, version, the checkpoint's path and sha256, the npz's sha256, latent size, the
  database description, and per motion ``keyid``, ``captions``, ``source`` (AMASS path + frame rule, or the
  feature file) and ``preview`` (a video file inside the index directory, relative to it, or null: rendered on
  demand by ``lavimo.search.preview``; a preview that resolves outside the directory is ignored).

Both are written atomically (npz first, then the json naming its sha256), the npz's members stored uncompressed.
Reading is bounded (docs/security.md, "The search page and index"): :func:`read_index_json`, then
:func:`read_index_arrays` (every member's header checked against index.json before any data is read). A query
refuses an index built with another checkpoint. Building again into the same directory with the same checkpoint
is incremental (:func:`build_index`: kept motions are not decoded again; :func:`_repair_previews`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from lavimo.core.atomic import atomic_path, write_json
from lavimo.core.errors import BadInputError
from lavimo.core.hashing import sha256_file
from lavimo.core.jsonconfig import read_json_file
from lavimo.core.keyids import child_path, is_keyid
from lavimo.core.restricted_unpickle import open_npz, read_npz_header, read_npz_member
from lavimo.dataset import video_frames
from lavimo.dataset.shards import format as shard_format, stream

from .preview import write_mp4

log = logging.getLogger(__name__)

FORMAT = "lavimo-search-index"
VERSION = 1
NPZ = "index.npz"
META = "index.json"
PREVIEWS = "previews"


@dataclass
class Entry:
    keyid: str
    captions: list[str]
    source: dict[str, Any]
    preview: str | None = None


@dataclass
class BuildReport:
    done: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.done} encoded, {self.reused} reused, {len(self.failed)} failed"
                + (f" (e.g. {'; '.join(self.failed[:3])})" if self.failed else "") + f" in {self.seconds:.1f} s")


class Index:
    """An index in memory: ``entries`` (list[Entry]) and the latent arrays (module docstring)."""

    def __init__(self, entries: list[Entry], motion: np.ndarray, video: np.ndarray, has_video: np.ndarray,
                 text: np.ndarray, text_owner: np.ndarray, meta: dict[str, Any], root: Path | None = None):
        self.entries, self.motion, self.video, self.has_video = entries, motion, video, has_video
        self.text, self.text_owner, self.meta, self.root = text, text_owner, meta, root
        self.pos = {e.keyid: i for i, e in enumerate(entries)}

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------- the API the query, CLI and page use
    def entry(self, i: int) -> Entry:
        """Motion ``i``'s record (keyid, captions, source, preview)."""
        return self.entries[i]

    def keyid(self, i: int) -> str:
        return self.entries[i].keyid

    def position(self, keyid: str) -> int | None:
        """The row of ``keyid`` in the index, None when it is not indexed."""
        return self.pos.get(keyid)

    def caption(self, row: int) -> tuple[str, int]:
        """Caption row ``row`` (the rows are every motion's captions in order) -> (caption, its motion's row)."""
        owner = int(self.text_owner[row])
        first = int(np.searchsorted(self.text_owner, owner, side="left"))
        return self.entries[owner].captions[row - first], owner

    # -------------------------------------------------------------------------------------------- search
    def search(self, query: np.ndarray, k: int = 5, against: str = "motion") -> list[tuple[int, float]]:
        """Exact top-k by cosine similarity: ``against`` "motion" (default) or "video" latents of the index,
        or "text" (caption rows; returns caption row numbers). ``query`` (C,) or (1, C) L2-normalised."""
        q = np.asarray(query, np.float32).reshape(-1)
        mat = {"motion": self.motion, "video": self.video, "text": self.text}[against]
        if mat.shape[0] == 0:
            return []
        scores = mat @ q
        if against == "video":
            scores = np.where(self.has_video, scores, -np.inf)
        k = max(1, min(int(k), len(scores)))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def result(self, i: int, score: float) -> dict[str, Any]:
        e = self.entries[i]
        return {"keyid": e.keyid, "score": round(score, 6), "captions": list(e.captions), "source": e.source,
                "preview": self.preview_path(i)}

    def preview_path(self, i: int, warn: bool = True) -> str | None:
        """The preview video of motion ``i``: ``IDX/<preview>`` (None when it has none yet, or when the index's
        JSON names a file that, symbolic links resolved, is not inside the index directory: an edited index
        cannot point the page at other files; docs/security.md, "The search page and index")."""
        p = self.entries[i].preview
        if p is None or self.root is None:
            return None
        try:
            path = self.root / str(p)
            inside = path.resolve().is_relative_to(self.root.resolve())
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
            return None
        if not inside:
            if warn and not getattr(self, "_warned_outside", False):
                self._warned_outside = True
                log.warning("%s: previews outside the index directory are ignored (e.g. %s's; an index built "
                            "before previews were copied in: build it again with --videos DIR)", self.root / META,
                            self.entries[i].keyid)
            return None
        return str(path)

    def feature_file(self, i: int) -> Path | None:
        """The feature file of motion ``i`` of an index of a feature folder, for rendering its preview: the entry's
        ``source.path`` when it is a string that, symbolic links resolved, names ``<keyid>.npy`` inside the folder
        index.json records as the database (``database.path``, kind ``features``); None otherwise (another kind
        of index, no folder recorded, a missing or non-string path, a path elsewhere: an edited index cannot make
        the page render other files; docs/security.md, "The search page and index")."""
        e = self.entries[i]
        db = self.meta.get("database")
        if e.source.get("kind") != "features" or not isinstance(db, dict) or db.get("kind") != "features":
            return None
        folder, path = db.get("path"), e.source.get("path")
        if not isinstance(folder, str) or not isinstance(path, str) or not folder or not path:
            return None
        try:
            p, root = Path(path).resolve(), Path(folder).resolve()
            ok = p.is_relative_to(root) and p.name == f"{e.keyid}.npy"
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
            return None
        return p if ok else None

    # -------------------------------------------------------------------------------------------- io
    def save(self, root: str | os.PathLike) -> Path:
        """Write index.npz then index.json atomically into ``root``."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        npz = root / NPZ
        keyids = np.array([e.keyid for e in self.entries], dtype=str)
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keyid=keyids, motion=self.motion.astype(np.float32),
                         video=self.video.astype(np.float32), has_video=self.has_video.astype(bool),
                         text=self.text.astype(np.float32), text_owner=self.text_owner.astype(np.int64))
        meta = dict(self.meta)
        meta.setdefault("latent_dim", int(self.motion.shape[1]))  # read back first: it fixes the arrays' shapes
        meta.update({"format": FORMAT, "version": VERSION, "count": len(self.entries),
                     "npz_sha256": sha256_file(npz)[0],
                     "entries": [{"keyid": e.keyid, "captions": e.captions, "source": e.source,
                                  "preview": e.preview} for e in self.entries]})
        write_json(root / META, meta)
        self.meta, self.root = meta, root
        return root

    @classmethod
    def load(cls, root: str | os.PathLike, checkpoint_sha256: str | None = None,
             latent_dim: int | None = None) -> "Index":
        """Read an index directory. ``checkpoint_sha256``: refuse an index of another checkpoint; ``latent_dim``:
        refuse one whose latents are not of this size (the model's). index.json is read first (bounded:
        :func:`read_index_json`) and fixes every array's shape; index.npz's member headers are then all checked
        against those shapes before any member's data is read (:func:`read_index_arrays`).
        Raises FileNotFoundError (no index) or BadInputError naming the file and the field."""
        root = Path(root)
        meta_path, npz = root / META, root / NPZ
        if not meta_path.is_file() or not npz.is_file():
            raise FileNotFoundError(f"{root}: no index (build it with 'lavimo-search index')")
        meta = read_index_json(meta_path)
        if meta.get("version") != VERSION:
            raise BadInputError(meta_path, "version", f"index format version {meta.get('version')!r}, this code "
                                                      f"reads {VERSION}: rebuild it with 'lavimo-search index'")
        if checkpoint_sha256 is not None and meta.get("checkpoint_sha256") != checkpoint_sha256:
            raise BadInputError(meta_path, "checkpoint_sha256", f"built with another checkpoint "
                                f"({meta.get('checkpoint')}, sha256 {str(meta.get('checkpoint_sha256'))[:12]}): "
                                "its latents do not compare with this model's; rebuild the index with this "
                                "checkpoint or query with that one")
        rows = meta.get("entries")
        if not isinstance(rows, list):
            raise BadInputError(meta_path, "entries", "not a list of one entry per indexed motion")
        entries = [_entry(meta_path, j, r) for j, r in enumerate(rows)]
        c = meta.get("latent_dim")
        if type(c) is not int or not 1 <= c <= MAX_LATENT_DIM:
            raise BadInputError(meta_path, "latent_dim", f"{str(c)[:40]!r} is not a latent size in 1..{MAX_LATENT_DIM}")
        if latent_dim is not None and c != latent_dim:
            raise BadInputError(meta_path, "latent_dim", f"latents of {c} values, this model's have {latent_dim}")
        if sha256_file(npz)[0] != meta.get("npz_sha256"):
            raise BadInputError(npz, "npz_sha256", "does not match index.json (an interrupted or mixed build): "
                                                   "rebuild the index")
        arrays = read_index_arrays(npz, len(entries), sum(len(e.captions) for e in entries), c)
        if [e.keyid for e in entries] != [str(k) for k in arrays["keyid"]]:
            raise BadInputError(meta_path, "entries", "keyids differ from index.npz")
        owners = np.repeat(np.arange(len(entries), dtype=np.int64), [len(e.captions) for e in entries])
        if not np.array_equal(arrays["text_owner"], owners):
            raise BadInputError(npz, "text_owner", "does not match the captions index.json lists per motion")
        meta = {k: v for k, v in meta.items() if k != "entries"}
        return cls(entries, arrays["motion"], arrays["video"], arrays["has_video"], arrays["text"],
                   arrays["text_owner"], meta, root)


#: index.json is as large as its library (~400 bytes and ~15 JSON values per motion): read with these caps instead
#: of the 16 MiB / 2 M values of other JSON state files (lavimo.core.jsonconfig); parsing costs at most ~50 bytes a value
MAX_INDEX_JSON_BYTES = 512 << 20
MAX_INDEX_JSON_ITEMS = 32_000_000
#: the largest latent size an index may declare (LAVIMO's models use 256..1024)
MAX_LATENT_DIM = 1 << 14
#: the longest keyid string index.npz may store (keyids are at most 128 characters)
MAX_KEYID_CHARS = 256


def read_index_json(path: str | os.PathLike) -> dict[str, Any]:
    """The object in an ``index.json`` (:func:`lavimo.core.jsonconfig.loads_bounded`: at most
    :data:`MAX_INDEX_JSON_BYTES` bytes, checked before reading, :data:`MAX_INDEX_JSON_ITEMS` values and 64 levels of
    nesting; a RecursionError is never raised). FileNotFoundError when absent; anything else wrong (unreadable,
    not JSON, not an object of :data:`FORMAT`) is a BadInputError naming the file."""
    path = Path(path)
    try:
        meta = read_json_file(path, max_bytes=MAX_INDEX_JSON_BYTES, max_items=MAX_INDEX_JSON_ITEMS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BadInputError(path, None, f"unreadable ({exc.strerror or exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(path, "format", f"not a {FORMAT} file")
    return meta


#: the arrays of index.npz: name -> (dtype kinds accepted, largest item size in bytes)
_ARRAYS = {"keyid": ("U", 4 * MAX_KEYID_CHARS), "motion": ("f", 8), "video": ("f", 8), "has_video": ("b", 1),
           "text": ("f", 8), "text_owner": ("iu", 8)}
#: no per-array cap: an index's arrays are as large as its library (10 M motions x 256 float32 latents = 10 GB);
#: what bounds them is index.json (the shapes) and the file itself (members stored, not compressed)
_INDEX_MAX_ARRAY = 1 << 40





def read_index_arrays(npz: Path, n: int, k: int, c: int) -> dict[str, np.ndarray]:
    """The arrays of an ``index.npz`` (:data:`_ARRAYS`) for an index.json of ``n`` motions with ``k`` captions in
    all and latents of ``c`` values, header first: every member's ``.npy`` header is read (numpy's header parser,
    no pickle) and must declare the shape the JSON implies (``keyid`` (N,), ``motion`` and ``video`` (N, C),
    ``has_video`` (N,), ``text`` (K, C), ``text_owner`` (K,)), an accepted dtype, and exactly the bytes its zip
    entry holds (``read_npz_header``: the header length itself capped); every member must be stored uncompressed, as ``Index.save`` writes it (a
    deflated member could expand to far more than the file). Only then is any data read (the one checked ``.npy``
    reader, ``read_npz_member``), so what is allocated is at most the file's own size. Owners must be in
    ``0..N-1`` and in order, latents finite. Raises BadInputError(npz, field)."""
    expected = {"keyid": (n,), "motion": (n, c), "video": (n, c), "has_video": (n,), "text": (k, c),
                "text_owner": (k,)}
    out: dict[str, np.ndarray] = {}
    with open_npz(npz) as zf:
        infos = {}
        for name, (kinds, max_item) in _ARRAYS.items():  # every header before any data
            shape, _, dtype = read_npz_header(zf, npz, name, max_bytes=_INDEX_MAX_ARRAY,
                                              max_elements=_INDEX_MAX_ARRAY)  # checked against the entry's size
            if dtype.kind not in kinds or dtype.itemsize > max_item or shape != expected[name]:
                raise BadInputError(npz, name, f"shape {shape} of {dtype}; index.json ({n} motions, {k} captions, "
                                               f"latent_dim {c}) implies shape {expected[name]} of kind {kinds}")
            infos[name] = zf.getinfo(f"{name}.npy")
        for name, info in infos.items():
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise BadInputError(npz, name, "compressed member: lavimo-search index stores index.npz "
                                               "uncompressed (a compressed member could expand to far more than "
                                               "the file)")
        for name in _ARRAYS:
            out[name] = read_npz_member(zf, npz, name, max_bytes=_INDEX_MAX_ARRAY, max_elements=_INDEX_MAX_ARRAY)
    own = out["text_owner"]
    if len(own) and (int(own.min()) < 0 or int(own.max()) >= n or np.any(np.diff(own.astype(np.int64)) < 0)):
        raise BadInputError(npz, "text_owner", f"owners outside 0..{n - 1} or out of order")
    for name in ("motion", "video", "text"):
        out[name] = out[name].astype(np.float32, copy=False)  # no second copy of a float32 file's latents
        if not np.isfinite(out[name]).all():
            raise BadInputError(npz, name, "non-finite latents")
    out["text_owner"] = own.astype(np.int64)
    return out


def _entry(meta_path: Path, j: int, row: Any) -> Entry:
    """Entry ``j`` of index.json's ``entries`` (BadInputError naming it unless keyid is a string, captions a list
    of strings, source an object and preview a string or null)."""
    if not isinstance(row, dict):
        raise BadInputError(meta_path, f"entries[{j}]", "not an object")
    keyid, caps, source, preview = row.get("keyid"), row.get("captions", []), row.get("source"), row.get("preview")
    if (not isinstance(keyid, str) or not isinstance(caps, list) or not all(isinstance(c, str) for c in caps)
            or not isinstance(source, (dict, type(None))) or not isinstance(preview, (str, type(None)))):
        raise BadInputError(meta_path, f"entries[{j}]", "expected keyid (string), captions (list of strings), "
                                                        "source (object) and preview (string or null)")
    return Entry(keyid, list(caps), dict(source or {}), preview)


def source_text(source: dict[str, Any]) -> str:
    """One line for a motion's ``source`` (the CLI's table and the search page): "AMASS path [start..end s]
    (shard)" for a shard sample, the feature file's path otherwise."""
    if source.get("kind") == "shard":
        return (f"{source.get('amass_path')} [{source.get('frame_start')}..{source.get('frame_end')} s] "
                f"({source.get('shard')})")
    return str(source.get("path"))


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class Item:
    """One motion to index: raw feature rows or a loader-processed sample, its captions and provenance."""

    keyid: str
    captions: list[str]
    source: dict[str, Any]
    motion: np.ndarray | None          # normalised (T, D); None: not decoded (already indexed, same source)
    video: Any = None                  # (F, 3, S, S) tensor or None
    preview_frames: Any = None         # callable -> (frames (T,H,W,3) uint8, fps) or bytes of an mp4, or None


def shard_items(shards: str | os.PathLike, splits: Sequence[str], retriever: Any, failed: list[str],
                indexed: Mapping[str, dict[str, Any]] | None = None) -> Iterator[Item]:
    """Samples of a shard set, decoded by the loader's evaluation transform with the checkpoint's preprocessing
    (``lavimo.dataset.shards.stream.SampleTransform``: first usable caption's segment, first max_motion_len rows, segment-centre
    frames, centred crop). A sample the loader would skip is recorded in ``failed`` ("keyid: reason").

    ``indexed`` (keyid -> source, read as the iteration goes): a sample whose keyid is in it with the same
    source (which comes from its ``meta.json`` and the shard's name alone) is not decoded; it is yielded as an
    Item with ``motion`` None, for the caller to keep its indexed entry."""
    root = Path(shards)
    p = retriever.preprocess
    transform = stream.SampleTransform(False, p["image_size"], p["num_frames"], p["max_motion_len"], retriever.mean,
                                   retriever.std, None, p["frame_crop"])
    for split in splits:
        urls, _, _ = stream.resolve_shards(root, split)
        for url in urls:
            skips = stream._Skips()
            for raw in stream._tar_samples(url, skips):
                key = raw.get("__key__")
                try:  # the shard format's one meta.json parser (bounded): a hostile member is a failed sample
                    meta = shard_format.SampleMeta.parse(raw.get("meta.json", b"{}"))
                except ValueError:
                    meta = shard_format.SampleMeta()  # the loader's transform below reads meta.json itself and reports the sample
                source = {"kind": "shard", "split": split, "shard": Path(url).name,
                          "amass_path": meta.amass_path, "frame_rule": meta.frame_rule,
                          "frame_start": meta.frame_start, "frame_end": meta.frame_end,
                          "fps": meta.fps}
                if indexed is not None and indexed.get(key) == source:
                    yield Item(key, [], source, None)  # already indexed from this very sample: no decode
                    continue
                try:
                    s = transform(raw, None)
                except Exception as exc:  # noqa: BLE001 - SampleError or a decoder error: reported, build goes on
                    failed.append(f"{key}: {getattr(exc, 'reason', type(exc).__name__)}: {exc}")
                    continue
                yield Item(key, list(s["texts"]), source, s["motion"].numpy(), s["video"],
                           _shard_preview(raw, meta))
            for reason, n in skips.counts.items():
                failed.append(f"{Path(url).name}: {n} member(s) refused ({reason})")


def _shard_preview(raw: dict, meta):
    if "video.mp4" in raw:
        data = raw["video.mp4"]
        return lambda: data
    if "video.jpgs" in raw:
        data, fps = raw["video.jpgs"], float(meta.fps or 20.0)

        def frames():
            return video_frames.decode_jpgs(data).permute(0, 2, 3, 1).numpy(), fps
        return frames
    return None


def _humanml3d_texts(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        cap = line.split("#", 1)[0].strip()
        if cap:
            out.append(cap)
    return out


def folder_items(folder: str | os.PathLike, retriever: Any, failed: list[str]) -> Iterator[Item]:
    """``FOLDER/new_joint_vecs/*.npy`` (or ``FOLDER/*.npy``) feature files, captions from ``FOLDER/texts``."""
    root = Path(folder)
    vecs = root / "new_joint_vecs" if (root / "new_joint_vecs").is_dir() else root
    texts = root / "texts"
    for f in sorted(vecs.glob("*.npy")):
        if not is_keyid(f.stem):
            failed.append(f"{f.name}: file name is not a keyid")
            continue
        try:
            feats = retriever.features_of(f)
            motion = retriever.normalise(feats)
        except BadInputError as exc:
            failed.append(f"{f.name}: {exc.reason if hasattr(exc, 'reason') else exc}")
            continue
        tf = texts / f"{f.stem}.txt"
        caps = _humanml3d_texts(tf) if tf.is_file() else []
        st = f.stat()
        yield Item(f.stem, caps, {"kind": "features", "path": str(f.resolve()), "rows": int(len(feats)),
                                  "size": st.st_size, "mtime": int(st.st_mtime)}, motion)


# ------------------------------------------------------------------------------------------------ build
def build_index(retriever: Any, out: str | os.PathLike, *, shards: str | os.PathLike | None = None,
                splits: Sequence[str] = ("test",), folder: str | os.PathLike | None = None,
                videos: str | os.PathLike | None = None, previews: bool = True, batch_size: int = 32,
                progress: bool = True) -> tuple[Index, BuildReport]:
    """Build (or extend) the index in ``out`` from a shard set (``splits``; "all" = every manifest) or a feature
    folder. ``videos``: a directory of rendered ``<keyid>.mp4`` used as previews when present; otherwise, with
    ``previews``, a shard's own video is written to ``out/previews/<keyid>.mp4``. Motions already in an index of
    the same checkpoint in ``out`` are kept, not re-encoded. Returns the index and a report (bad samples are
    listed in ``report.failed``; the build goes on)."""
    t0 = time.perf_counter()
    out = Path(out)
    report = BuildReport()
    old: Index | None = None
    if (out / META).is_file():
        try:
            old = Index.load(out, retriever.sha256, retriever.latent_dim)
        except BadInputError as exc:
            log.warning("%s: starting a new index (%s)", out, exc.message)
    if (shards is None) == (folder is None):
        raise ValueError("give exactly one of shards= or folder=")
    if old:
        _repair_previews(old, out, videos)
    parts = _Parts.of(old)
    seen = {e.keyid: e.source for e in parts.entries}  # keyid -> source, of the old index and of this build so far
    if shards is not None:
        if list(splits) == ["all"]:
            splits = sorted(shard_format.read_manifests(Path(shards)))
        items = shard_items(shards, splits, retriever, report.failed, indexed=seen)
        total = _announced(Path(shards), splits)
        database = {"kind": "shards", "path": str(Path(shards).resolve()), "splits": list(splits)}
    else:
        items, total = folder_items(folder, retriever, report.failed), None
        database = {"kind": "features", "path": str(Path(folder).resolve())}
    batch: list[Item] = []
    bar = tqdm(total=total, desc="index", unit="motion", disable=not progress)
    for it in items:
        bar.update(1)
        if it.keyid in seen:
            if seen[it.keyid] == it.source:
                report.reused += 1
            else:
                where = it.source.get("shard") or it.source.get("path")
                report.failed.append(f"{it.keyid}: duplicate keyid (from {where}), first kept")
            continue
        seen[it.keyid] = it.source
        batch.append(it)
        if len(batch) >= batch_size:
            report.done += parts.add(retriever, batch, lambda it: _preview(it, out, videos, previews))
    report.done += parts.add(retriever, batch, lambda it: _preview(it, out, videos, previews))
    bar.close()
    index = parts.index({"checkpoint": str(Path(retriever.checkpoint).resolve()), "checkpoint_sha256":
                         retriever.sha256, "latent_dim": retriever.latent_dim, "database": database})
    index.save(out)
    report.seconds = time.perf_counter() - t0
    return index, report


def _announced(shards: Path, splits: Sequence[str]) -> int:
    """The samples the splits' manifests announce: only the progress bar's total (a manifest that cannot say is
    reported by the loader)."""
    total = 0
    for s in splits:
        try:
            total += int(shard_format.read_manifest(shards, s)["num_samples"])
        except (OSError, ValueError, KeyError, TypeError, OverflowError):  # BadInputError is a ValueError
            pass
    return total


@dataclass
class _Parts:
    """An index being built: its entries and latent blocks (those of the index kept first), a batch at a time."""

    entries: list[Entry]
    motion: list[np.ndarray]
    video: list[np.ndarray]
    has_video: list[np.ndarray]
    text: list[np.ndarray]
    text_owner: list[np.ndarray]

    @classmethod
    def of(cls, old: Index | None) -> "_Parts":
        if old is None:
            return cls([], [], [], [], [], [])
        return cls(list(old.entries), [old.motion], [old.video], [old.has_video], [old.text], [old.text_owner])

    def add(self, retriever: Any, batch: list[Item], preview) -> int:
        """Encode ``batch`` (motions; videos when the model has a video encoder; captions) and append it with each
        item's ``preview(item)``; empties ``batch`` and returns how many items it held."""
        if not batch:
            return 0
        base = len(self.entries)
        m = retriever.encode_motion_batch([it.motion for it in batch])
        v = np.zeros_like(m)
        has = np.array([it.video is not None for it in batch])
        if has.any() and retriever.has_video:
            idx = np.flatnonzero(has)
            v[idx] = retriever.encode_video_batch(torch.stack([batch[i].video for i in idx]))
        else:
            has[:] = False
        caps = [(base + j, c) for j, it in enumerate(batch) for c in it.captions]
        if caps:
            self.text.append(retriever.encode_text([c for _, c in caps]))
            self.text_owner.append(np.array([o for o, _ in caps], np.int64))
        for it in batch:
            self.entries.append(Entry(it.keyid, it.captions, it.source, preview(it)))
        self.motion.append(m)
        self.video.append(v)
        self.has_video.append(has)
        n = len(batch)
        batch.clear()
        return n

    def index(self, meta: dict[str, Any]) -> Index:
        c = meta["latent_dim"]
        cat = lambda xs, shape, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(shape, dt)  # noqa: E731
        return Index(self.entries, cat(self.motion, (0, c), np.float32), cat(self.video, (0, c), np.float32),
                     cat(self.has_video, (0,), bool), cat(self.text, (0, c), np.float32),
                     cat(self.text_owner, (0,), np.int64), meta)


def _repair_previews(old: Index, out: Path, videos) -> None:
    """Entries kept from an index built before previews were copied in name their preview by an absolute path
    (or one outside ``out``), which :meth:`Index.preview_path` ignores: with ``videos`` the rendered video is
    copied (hard-linked) into ``out/previews/`` again (:func:`_preview`); without, or when ``videos`` has none for
    that motion, the preview is dropped, with one logged note. An absolute path inside ``out`` is made relative."""
    dropped = []
    for i, e in enumerate(old.entries):
        if e.preview is None:
            continue
        inside = old.preview_path(i, warn=False)  # its note ("rebuild it") would be noise: this is the rebuild
        if inside is not None:
            if Path(e.preview).is_absolute():
                e.preview = Path(inside).resolve().relative_to(out.resolve()).as_posix()
            continue
        try:
            e.preview = _preview(Item(e.keyid, e.captions, e.source, None), out, videos, False)
        except BadInputError:  # a keyid that cannot name a file (child_path): no preview
            e.preview = None
        if e.preview is None:
            dropped.append(e.keyid)
    if dropped:
        log.warning("%s: %d preview(s) outside the index directory dropped (e.g. %s's: an index built before "
                    "previews were copied in); build again with --videos DIR to copy the rendered videos in",
                    out / META, len(dropped), dropped[0])


def _preview(it: Item, out: Path, videos, previews: bool) -> str | None:
    target = child_path(out / PREVIEWS, f"{it.keyid}.mp4")
    if videos is not None:
        p = child_path(videos, f"{it.keyid}.mp4")
        if p.is_file():  # copied in (a hard link when it can): previews are served only from inside the index
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                try:
                    os.unlink(tmp)
                    os.link(p, tmp)
                except OSError:
                    shutil.copyfile(p, tmp)
            return f"{PREVIEWS}/{it.keyid}.mp4"
    if not previews or it.preview_frames is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    got = it.preview_frames()
    if isinstance(got, bytes):
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(got)
    else:
        write_mp4(target, *got)
    return f"{PREVIEWS}/{it.keyid}.mp4"

"""A motion index: the latents of a database of motions under one checkpoint, and their per-motion records.

Sources: a shard set (``build-shards`` output; one split, several, or ``all``) or a HumanML3D-style folder
(``new_joint_vecs/*.npy`` features, optional ``texts/<id>.txt`` with ``caption#tokens#start#end`` lines).

On disk, in the index directory (format :data:`FORMAT` version :data:`VERSION`; docs/search.md, "The index"):

- ``motion.npy`` (N, C), ``video.npy`` (V, C) with ``video_rows.npy`` (V,) int64 (the motions that have a video,
  ascending) and ``text.npy`` (K, C): L2-normalised latents, float32 for an exact set, float16 for an
  approximate one (:mod:`lavimo.search.vectors`), memory-mapped when read; for an approximate set its IVF-PQ
  arrays ``<set>.ivf.<part>.npy`` (:data:`lavimo.search.vectors.IVF_PARTS`).
- ``records.sqlite``: keyid, captions, source and preview of every motion (:mod:`lavimo.search.store`); a
  query reads only its hits' rows.
- ``index.json`` (small, written last): format, version, the checkpoint's path and sha256, latent size, the
  database description, ``count`` (N), ``captions`` (K), ``build_id``, per latent set its rows, dtype and search
  (``vectors.<set>.ann``: ``exact``, or ``ivfpq`` with its parameters and the recall@10 measured at build), and
  per data file its size and sha256 (``files``).

Every file is written atomically, index.json last. Loading (:meth:`Index.load`) reads index.json (bounded),
checks each file's size and each ``.npy`` header against it, and opens records.sqlite (its schema and build id
checked): no latent and no record is read, so it takes the same time for 100 or 10 M motions; a truncated or
replaced file is one BadInputError naming it and the field. The sha256 of the files is checked by
``lavimo-search verify`` (:func:`verify_index`), not on every load. Index format version 1 (``index.npz`` +
a large ``index.json``) is refused with one line: rebuild. A query refuses an index built with another
checkpoint. Building again into the same directory with the same checkpoint is incremental
(:func:`build_index`: kept motions are not decoded again; :func:`_repair_previews`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
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
from lavimo.dataset import video_frames
from lavimo.dataset.shards import format as shard_format, stream

from .preview import PREVIEWS, write_mp4
from .store import RECORDS, Entry, MemoryRecords, Records, write_records
from .vectors import ANN_KINDS, AUTO_ANN_MIN, IVF_PARTS, MAX_NLIST, MIN_ANN_ROWS, IvfPq, VectorSet, _ivf_shapes, open_npy, \
    train_ivfpq, write_npy

log = logging.getLogger(__name__)

__all__ = ["Entry", "Index", "BuildReport", "build_index", "verify_index", "source_text", "read_index_json"]

FORMAT = "lavimo-search-index"
VERSION = 2
META = "index.json"
LEGACY_NPZ = "index.npz"
SETS = ("motion", "video", "text")
#: index.json is small now (no per-motion data): read with these caps
MAX_INDEX_JSON_BYTES = 1 << 20
MAX_INDEX_JSON_ITEMS = 100_000
#: the largest latent size an index may declare (LAVIMO's models use 256..1024)
MAX_LATENT_DIM = 1 << 14
#: the most motions / captions an index may declare (10 M motions of 3 captions are 3e7)
MAX_ROWS = 1 << 40
#: queries sampled at build to measure an approximate set's recall@10
RECALL_QUERIES = 200


@dataclass
class BuildReport:
    done: int = 0
    reused: int = 0
    duplicates: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    times: dict[str, float] = field(default_factory=dict)  # seconds spent: decode, encode, write

    def summary(self) -> str:
        where = ", ".join(f"{k} {v:.1f} s" for k, v in self.times.items())
        return (f"{self.done} encoded, {self.reused} reused, {self.duplicates} duplicate(s) of an indexed sample "
                f"skipped, {len(self.failed)} failed"
                + (f" (e.g. {'; '.join(self.failed[:3])})" if self.failed else "") + f" in {self.seconds:.1f} s"
                + (f" ({where})" if where else ""))


class Index:
    """An index: its records (:class:`lavimo.search.store.Records` for a stored index, a list in memory) and its
    latent sets (:class:`lavimo.search.vectors.VectorSet`: ``motion``, ``video``, ``text``).

    ``Index(entries, motion, video, has_video, text, text_owner, meta, root)`` makes one in memory (``video``
    (N, C) with ``has_video`` (N,) bool; ``text`` (K, C) the captions' latents in order, ``text_owner`` (K,)
    their motions); :meth:`load` opens a stored one, :meth:`save` writes one."""

    def __init__(self, entries: list[Entry], motion: np.ndarray, video: np.ndarray, has_video: np.ndarray,
                 text: np.ndarray, text_owner: np.ndarray, meta: dict[str, Any], root: Path | None = None):
        records = MemoryRecords(list(entries))
        if not np.array_equal(np.asarray(text_owner, np.int64), np.asarray(records.owner, np.int64)):
            raise ValueError("text_owner does not match the entries' captions")
        rows = np.flatnonzero(np.asarray(has_video, bool)).astype(np.int64)
        f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
        self._setup(records, {"motion": VectorSet(f32(motion), None), "video": VectorSet(f32(video)[rows], None, rows),
                              "text": VectorSet(f32(text), None)}, dict(meta), root)

    def _setup(self, records: Records | MemoryRecords, sets: dict[str, VectorSet], meta: dict[str, Any],
               root: Path | None) -> None:
        self._records, self._sets, self.meta, self.root = records, sets, meta, root
        self._warned_outside = False

    def __len__(self) -> int:
        return len(self._records)

    # ------------------------------------------------------------------- the API the query, CLI and page use
    def entry(self, i: int) -> Entry:
        """Motion ``i``'s record (keyid, captions, source, preview)."""
        return self._records.entry(i)

    def keyid(self, i: int) -> str:
        return self.entry(i).keyid

    def position(self, keyid: str) -> int | None:
        """The row of ``keyid`` in the index, None when it is not indexed."""
        return self._records.position(keyid)

    def caption(self, row: int) -> tuple[str, int]:
        """Caption row ``row`` (the rows are every motion's captions in order) -> (caption, its motion's row)."""
        return self._records.caption(row)

    def motion_vector(self, i: int) -> np.ndarray:
        """Motion ``i``'s latent, (C,) float32 (for "more like this")."""
        return self._sets["motion"].vector(int(i))

    def video_vector(self, i: int) -> np.ndarray | None:
        """Motion ``i``'s video latent, (C,) float32, or None when it has no video."""
        vs = self._sets["video"]
        j = vs.slot(int(i))
        return None if j is None else vs.vector(j)

    def check_model(self, checkpoint_sha256: str | None, latent_dim: int | None = None) -> None:
        """Refuse (BadInputError naming index.json) when the index was built with another checkpoint or latent
        size than the model's (what :meth:`load` checks when given them)."""
        _check_model(Path(self.root or ".") / META, self.meta, checkpoint_sha256, latent_dim)

    def vectors(self, against: str = "motion") -> np.ndarray:
        """The stored latents of set ``against`` (memory-mapped; read-only): "motion" (N, C), "text" (K, C) in
        caption-row order, "video" (V, C) of the motions that have a video, in row order."""
        return self._sets[against].vectors

    def iter_entries(self) -> Iterator[Entry]:
        """Every record in row order."""
        return self._records.iter_entries()

    def ann(self, against: str = "motion") -> dict[str, Any]:
        """How set ``against`` is searched: {"kind": "exact"} or the IVF-PQ parameters and measured recall@10."""
        a = self._sets[against].ann
        return {"kind": "exact"} if a is None else a.params()

    # -------------------------------------------------------------------------------------------- search
    def search(self, query: np.ndarray, k: int = 5, against: str = "motion",
               offset: int = 0) -> list[tuple[int, float]]:
        """Top-k by cosine similarity, results ``offset``..``offset + k`` (paging): ``against`` "motion"
        (default) or "video" latents of the index (rows of motions; only motions with a video), or "text"
        (caption rows). ``query`` (C,) or (1, C) L2-normalised. Exact, or approximate for a set built with
        ``--ann ivfpq`` (:mod:`lavimo.search.vectors`)."""
        if against not in self._sets:
            raise ValueError(f"against must be one of {SETS}, not {against!r}")
        vs = self._sets[against]
        q = np.asarray(query, np.float32).reshape(-1)
        c = vs.vectors.shape[1]
        if q.shape[0] != c or not np.isfinite(q).all():
            raise ValueError(f"a query is {c} finite values, got {q.shape[0]}")
        offset, k = max(0, int(offset)), max(1, int(k))
        return vs.search(q, offset + k)[offset:]

    def result(self, i: int, score: float) -> dict[str, Any]:
        e = self.entry(i)
        return {"keyid": e.keyid, "score": round(score, 6), "captions": list(e.captions), "source": e.source,
                "preview": self.preview_path(i)}

    def preview_path(self, i: int, warn: bool = True) -> str | None:
        """The preview video of motion ``i``: ``IDX/<preview>`` (None when it has none yet, or when its record
        names a file that, symbolic links resolved, is not inside the index directory: an edited index
        cannot point the page at other files; docs/security.md, "The search page and index")."""
        p = self.entry(i).preview
        if p is None or self.root is None:
            return None
        try:
            path = self.root / str(p)
            inside = path.resolve().is_relative_to(self.root.resolve())
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
            return None
        if not inside:
            if warn and not self._warned_outside:
                self._warned_outside = True
                log.warning("%s: previews outside the index directory are ignored (e.g. %s's; an index built "
                            "before previews were copied in: build it again with --videos DIR)", self.root,
                            self.keyid(i))
            return None
        return str(path)

    def feature_file(self, i: int) -> Path | None:
        """The feature file of motion ``i`` of an index of a feature folder, for rendering its preview: the entry's
        ``source.path`` when it is a string that, symbolic links resolved, names ``<keyid>.npy`` inside the folder
        index.json records as the database (``database.path``, kind ``features``); None otherwise (another kind
        of index, no folder recorded, a missing or non-string path, a path elsewhere: an edited index cannot make
        the page render other files; docs/security.md, "The search page and index")."""
        e = self.entry(i)
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
    def save(self, root: str | os.PathLike, ann: str = "auto") -> Path:
        """Write the index into ``root`` (module docstring): the latent files, records.sqlite, then index.json.
        ``ann``: "exact", "ivfpq", or "auto" (IVF-PQ for a set of at least
        :data:`lavimo.search.vectors.AUTO_ANN_MIN` latents)."""
        if ann not in ANN_KINDS:
            raise ValueError(f"ann must be one of {ANN_KINDS}, not {ann!r}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        build_id = secrets.token_hex(8)
        c = int(self._sets["motion"].vectors.shape[1])
        written, spec = [], {}
        for name in SETS:
            vs = self._sets[name]
            vectors = np.asarray(vs.vectors, np.float32)
            approx = ann == "ivfpq" or (ann == "auto" and len(vs) >= AUTO_ANN_MIN)
            approx = approx and len(vs) >= MIN_ANN_ROWS
            ivf = train_ivfpq(vectors, _recall_queries(self, name, vectors)) if approx else None
            write_npy(root / f"{name}.npy", vectors.astype(np.float16) if ivf else vectors)
            written.append(f"{name}.npy")
            if name == "video":
                write_npy(root / "video_rows.npy", np.asarray(vs.rows, np.int64))
                written.append("video_rows.npy")
            if ivf is not None:
                for part in IVF_PARTS:
                    write_npy(root / f"{name}.ivf.{part}.npy", getattr(ivf, part))
                    written.append(f"{name}.ivf.{part}.npy")
            spec[name] = {"rows": len(vs), "dtype": "float16" if ivf else "float32",
                          "ann": ivf.params() if ivf else {"kind": "exact"}}
        write_records(root / RECORDS, self._records.iter_entries(), build_id)
        written.append(RECORDS)
        files = {}
        for f in written:
            digest, size = sha256_file(root / f)
            files[f] = {"bytes": size, "sha256": digest}
        meta = {k: v for k, v in self.meta.items() if k not in ("entries", "npz_sha256")}
        meta.setdefault("latent_dim", c)
        meta.update({"format": FORMAT, "version": VERSION, "count": len(self), "captions": len(self._sets["text"]),
                     "build_id": build_id, "vectors": spec, "files": files})
        write_json(root / META, meta)
        for stale in _index_files(root):  # a format-1 index.npz, IVF arrays of a set that is exact now
            if stale.name not in files:
                stale.unlink()
        self.meta, self.root = meta, root
        return root

    @classmethod
    def load(cls, root: str | os.PathLike, checkpoint_sha256: str | None = None,
             latent_dim: int | None = None) -> "Index":
        """Open an index directory. ``checkpoint_sha256``: refuse an index of another checkpoint; ``latent_dim``:
        refuse one whose latents are not of this size (the model's). Reads index.json (bounded:
        :func:`read_index_json`), checks the files against it (sizes, ``.npy`` headers, the records' schema and
        build id) and memory-maps the latents; reads no latent and no record (module docstring).
        Raises FileNotFoundError (no index) or BadInputError naming the file and the field."""
        root = Path(root)
        meta_path = root / META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{root}: no index (build it with 'lavimo-search index')")
        if (root / LEGACY_NPZ).is_file() and not (root / RECORDS).is_file():
            raise BadInputError(meta_path, "version", "an index of format version 1 (index.npz), this code reads "
                                                      f"version {VERSION}: rebuild it with 'lavimo-search index'")
        meta = read_index_json(meta_path)
        if meta.get("version") != VERSION:
            raise BadInputError(meta_path, "version", f"index format version {str(meta.get('version'))[:20]!r}, "
                                                      f"this code reads {VERSION}: rebuild it with "
                                                      "'lavimo-search index'")
        c = _check_model(meta_path, meta, checkpoint_sha256, latent_dim)
        n, k = _count(meta_path, meta, "count"), _count(meta_path, meta, "captions")
        build_id = meta.get("build_id")
        if not isinstance(build_id, str) or not re.fullmatch(r"[0-9a-f]{16}", build_id):
            raise BadInputError(meta_path, "build_id", "not 16 hexadecimal digits")
        specs = _vector_specs(meta_path, meta, n, k, c)
        files = _file_table(meta_path, meta, specs)
        for name, (size, _) in files.items():
            try:
                got = (root / name).stat().st_size
            except FileNotFoundError:
                raise BadInputError(root / name, None, "missing (an incomplete index: rebuild it)") from None
            if got != size:
                raise BadInputError(root / name, "bytes", f"{got} bytes, index.json records {size}: truncated or "
                                                          "replaced (rebuild the index)")
        sets = {name: _open_set(root, name, spec, c, n) for name, spec in specs.items()}
        records = Records(root / RECORDS, n, k, build_id)
        index = cls.__new__(cls)
        index._setup(records, sets, meta, root)
        return index


def _check_model(meta_path: Path, meta: dict[str, Any], checkpoint_sha256: str | None,
                 latent_dim: int | None) -> int:
    """index.json's ``latent_dim`` (checked), after refusing an index of another checkpoint (``checkpoint_sha256``)
    or latent size (``latent_dim``); None skips that check."""
    if checkpoint_sha256 is not None and meta.get("checkpoint_sha256") != checkpoint_sha256:
        raise BadInputError(meta_path, "checkpoint_sha256", f"built with another checkpoint "
                            f"({str(meta.get('checkpoint'))[:200]}, sha256 "
                            f"{str(meta.get('checkpoint_sha256'))[:12]}): its latents do not compare with "
                            "this model's; rebuild the index with this checkpoint or query with that one")
    c = meta.get("latent_dim")
    if type(c) is not int or not 1 <= c <= MAX_LATENT_DIM:
        raise BadInputError(meta_path, "latent_dim", f"{str(c)[:40]!r} is not a latent size in 1..{MAX_LATENT_DIM}")
    if latent_dim is not None and c != latent_dim:
        raise BadInputError(meta_path, "latent_dim", f"latents of {c} values, this model's have {latent_dim}")
    return c


def _index_files(root: Path) -> list[Path]:
    """The data files an index directory may hold (those index.json does not list are stale)."""
    names = [LEGACY_NPZ, RECORDS, "video_rows.npy"] + [f"{s}.npy" for s in SETS]
    names += [f"{s}.ivf.{p}.npy" for s in SETS for p in IVF_PARTS]
    return [root / n for n in names if (root / n).is_file()]


def _recall_queries(index: Index, name: str, vectors: np.ndarray) -> np.ndarray:
    """Queries to measure set ``name``'s recall with: the other modality's latents where there are (captions
    for motions, motions for captions), else the set's own latents with noise; at most
    :data:`RECALL_QUERIES`, drawn with a fixed seed."""
    rng = np.random.default_rng(0)
    other = {"motion": "text", "text": "motion"}.get(name)
    if other and len(index._sets[other]):
        pool = index._sets[other].vectors
        q = np.asarray(pool[np.sort(rng.choice(len(pool), min(len(pool), RECALL_QUERIES), replace=False))], np.float32)
    else:  # noise on the drawn rows only: no copy of the set (10 M latents of 256: 10 GB)
        q = np.asarray(vectors[np.sort(rng.choice(len(vectors), min(len(vectors), RECALL_QUERIES), replace=False))],
                       np.float32)
        q = q + rng.standard_normal(q.shape, dtype=np.float32) * np.float32(0.5 / np.sqrt(vectors.shape[1]))
    return (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _count(meta_path: Path, meta: dict[str, Any], key: str) -> int:
    v = meta.get(key)
    if type(v) is not int or not 0 <= v <= MAX_ROWS:
        raise BadInputError(meta_path, key, f"{str(v)[:40]!r} is not a count in 0..{MAX_ROWS}")
    return v


def _vector_specs(meta_path: Path, meta: dict[str, Any], n: int, k: int, c: int) -> dict[str, dict[str, Any]]:
    """index.json's ``vectors``, checked: per set its rows (motion N, text K, video at most N), dtype (float32
    for exact search, float16 for IVF-PQ) and ``ann`` (exact, or ivfpq with nlist, m dividing C, nprobe, refine)."""
    vec = meta.get("vectors")
    if not isinstance(vec, dict) or set(vec) != set(SETS):
        raise BadInputError(meta_path, "vectors", f"expected an object of {', '.join(SETS)}")
    out = {}
    for name in SETS:
        spec, what = vec[name], f"vectors.{name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("ann"), dict):
            raise BadInputError(meta_path, what, "expected an object with rows, dtype and ann")
        rows, ann = spec.get("rows"), spec["ann"]
        want = {"motion": n, "text": k}.get(name)
        if type(rows) is not int or not 0 <= rows <= MAX_ROWS or (want is None and rows > n) or \
                (want is not None and rows != want):
            raise BadInputError(meta_path, f"{what}.rows", f"{str(rows)[:40]!r} does not fit count {n} / captions {k}")
        kind = ann.get("kind")
        if kind == "exact" and spec.get("dtype") == "float32":
            out[name] = {"rows": rows, "ivf": None}
            continue
        ints = [ann.get(f) for f in ("nlist", "m", "nprobe", "refine")]
        if (kind != "ivfpq" or spec.get("dtype") != "float16" or any(type(v) is not int for v in ints)
                or not 1 <= ints[0] <= MAX_NLIST or not 1 <= ints[1] <= c or c % ints[1]
                or not 1 <= ints[2] <= MAX_NLIST or not 1 <= ints[3] <= 4096 or rows < 2):
            raise BadInputError(meta_path, f"{what}.ann", "expected exact search of float32 latents or ivfpq of "
                                                         f"float16 ones (nlist 1..{MAX_NLIST}, m dividing {c}, "
                                                         "nprobe, refine 1..4096)")
        recall = ann.get("recall_at_10")
        out[name] = {"rows": rows, "ivf": dict(zip(("nlist", "m", "nprobe", "refine"), ints)),
                     "recall_at_10": recall if isinstance(recall, (int, float)) else None}
    return out


def _file_table(meta_path: Path, meta: dict[str, Any], specs: dict[str, dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """index.json's ``files``: name -> (bytes, sha256), exactly the files this index's sets imply (the names
    come from the code, never from the file: an index cannot name other files)."""
    expected = [RECORDS, "video_rows.npy"] + [f"{s}.npy" for s in SETS]
    expected += [f"{s}.ivf.{p}.npy" for s, spec in specs.items() if spec["ivf"] for p in IVF_PARTS]
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != set(expected):
        raise BadInputError(meta_path, "files", f"expected sizes and sha256 of exactly {', '.join(sorted(expected))}")
    out = {}
    for name in expected:
        f = files[name]
        size, digest = (f.get("bytes"), f.get("sha256")) if isinstance(f, dict) else (None, None)
        if type(size) is not int or size < 0 or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BadInputError(meta_path, f"files.{name}", "expected bytes (an integer) and sha256 (64 hex digits)")
        out[name] = (size, digest)
    return out


def _open_set(root: Path, name: str, spec: dict[str, Any], c: int, row_limit: int) -> VectorSet:
    """Set ``name`` memory-mapped (headers checked by :func:`lavimo.search.vectors.open_npy`)."""
    rows, ivf = spec["rows"], spec["ivf"]
    vectors = open_npy(root / f"{name}.npy", np.dtype("<f2" if ivf else "<f4"), (rows, c))
    ids = open_npy(root / "video_rows.npy", np.dtype("<i8"), (rows,)) if name == "video" else None
    ann = None
    if ivf:
        shapes = _ivf_shapes(rows, c, ivf["nlist"], ivf["m"])
        parts = {p: open_npy(root / f"{name}.ivf.{p}.npy", *shapes[p]) for p in IVF_PARTS}
        ann = IvfPq(**parts, nprobe=ivf["nprobe"], refine=ivf["refine"], recall_at_10=spec.get("recall_at_10"),
                    source=root, prefix=f"{name}.ivf.")
    return VectorSet(vectors, ann, ids, root / "video_rows.npy", row_limit) if ids is not None else \
        VectorSet(vectors, ann)


def read_index_json(path: str | os.PathLike) -> dict[str, Any]:
    """The object in an ``index.json`` (:func:`lavimo.core.jsonconfig.read_json_file`: at most
    :data:`MAX_INDEX_JSON_BYTES` bytes, checked before reading, :data:`MAX_INDEX_JSON_ITEMS` values and 64 levels of
    nesting; a RecursionError is never raised). FileNotFoundError when absent; anything else wrong (unreadable,
    not JSON, not an object of :data:`FORMAT`) is a BadInputError naming the file. A format-1 index.json (as
    large as its library) is refused by its size with a note to rebuild."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_INDEX_JSON_BYTES and (path.parent / LEGACY_NPZ).is_file():
            raise BadInputError(path, "version", "an index of format version 1 (index.npz), this code reads "
                                                 f"version {VERSION}: rebuild it with 'lavimo-search index'")
        meta = read_json_file(path, max_bytes=MAX_INDEX_JSON_BYTES, max_items=MAX_INDEX_JSON_ITEMS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BadInputError(path, None, f"unreadable ({exc.strerror or exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(path, "format", f"not a {FORMAT} file")
    return meta


def verify_index(root: str | os.PathLike) -> list[str]:
    """Check an index directory fully: every data file's sha256 against index.json, every record
    (:meth:`lavimo.search.store.Records.iter_entries`), every latent finite, the IVF-PQ arrays. Returns the
    problems found, one line each (empty: the index is intact). FileNotFoundError / BadInputError naming
    index.json when the directory is not a readable index of this version (nothing to check against)."""
    root = Path(root)
    meta = read_index_json(root / META)  # raises when there is no index.json to check against
    try:
        index = Index.load(root)
    except BadInputError as exc:
        if exc.path == str(root / META):
            raise
        return [str(exc)]
    problems = []
    for name, (_, digest) in _file_table(root / META, meta, _vector_specs(
            root / META, meta, len(index), meta["captions"], meta["latent_dim"])).items():
        if sha256_file(root / name)[0] != digest:
            problems.append(f"{root / name}: sha256: differs from index.json's (edited or damaged since the build)")
    checks = [("records", lambda: sum(1 for _ in index.iter_entries()))]
    checks += [(name, vs.check) for name, vs in index._sets.items()]
    for _, check in checks:
        try:
            check()
        except BadInputError as exc:
            problems.append(str(exc))
    return problems


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
                indexed: Mapping[str, dict[str, Any]] | None = None, workers: int = 1) -> Iterator[Item]:
    """Samples of a shard set, decoded by the loader's evaluation transform with the checkpoint's preprocessing
    (``lavimo.dataset.shards.stream.SampleTransform``: first usable caption's segment, first max_motion_len rows,
    segment-centre frames, centred crop), in order. ``workers`` > 1: decoded in that many forked processes
    (:class:`lavimo.core.workers.WorkerPool`; the tar files are read here, a bounded window of samples ahead).
    A sample the loader would skip is recorded in ``failed`` ("keyid: reason").

    ``indexed`` (keyid -> source, read as the iteration goes): a sample whose keyid is in it with the same
    source (which comes from its ``meta.json`` and the shard's name alone) is not decoded; it is yielded as an
    Item with ``motion`` None, for the caller to keep its indexed entry."""
    from collections import deque

    from lavimo.core.workers import WorkerPool

    p = retriever.preprocess
    transform = stream.SampleTransform(False, p["image_size"], p["num_frames"], p["max_motion_len"], retriever.mean,
                                       retriever.std, None, p["frame_crop"])
    pool = WorkerPool(max(1, int(workers)))
    tasks: deque = deque()

    def raws() -> Iterator[tuple]:
        for key, source, raw, meta in _shard_raws(Path(shards), splits, failed):
            skip = indexed is not None and indexed.get(key) == source
            tasks.append((key, source, raw, meta, skip))
            yield (transform, None if skip else raw)

    try:
        for result in pool.ordered(_decode, raws(), window=8 * max(1, int(workers))):
            key, source, raw, meta, skip = tasks.popleft()
            if skip:
                yield Item(key, [], source, None)  # already indexed from this very sample: no decode
            elif isinstance(result, str):
                failed.append(f"{key}: {result}")
            else:
                texts, motion, video = result
                yield Item(key, texts, source, motion, None if video is None else torch.from_numpy(video),
                           _shard_preview(raw, meta))
        pool.close()
    finally:
        pool.terminate()


def _shard_raws(root: Path, splits: Sequence[str], failed: list[str]) -> Iterator[tuple]:
    """(keyid, source, raw sample, SampleMeta) of every sample of ``splits``; refused tar members in ``failed``."""
    for split in splits:
        urls, _, _ = stream.resolve_shards(root, split)
        for url in urls:
            skips = stream._Skips()
            for raw in stream._tar_samples(url, skips):
                try:  # the shard format's one meta.json parser (bounded): a hostile member is a failed sample
                    meta = shard_format.SampleMeta.parse(raw.get("meta.json", b"{}"))
                except ValueError:
                    meta = shard_format.SampleMeta()  # the loader's transform reads meta.json itself and reports it
                source = {"kind": "shard", "split": split, "shard": Path(url).name,
                          "amass_path": meta.amass_path, "frame_rule": meta.frame_rule,
                          "frame_start": meta.frame_start, "frame_end": meta.frame_end, "fps": meta.fps}
                yield raw.get("__key__"), source, raw, meta
            for reason, n in skips.counts.items():
                failed.append(f"{Path(url).name}: {n} member(s) refused ({reason})")


def _decode(task: tuple) -> tuple | str | None:
    """Worker side of :func:`shard_items`: (texts, motion (T, D) float32, video (F, 3, S, S) or None), a failure
    reason (str), or None for a sample not to decode."""
    transform, raw = task
    if raw is None:
        return None
    try:
        s = transform(raw, None)
    except Exception as exc:  # noqa: BLE001 - SampleError or a decoder error: reported, build goes on
        return f"{getattr(exc, 'reason', type(exc).__name__)}: {exc}"
    video = s.get("video")
    return list(s["texts"]), s["motion"].numpy(), None if video is None else video.numpy()


#: the fields of a shard sample's source that name where it was read, not what it is
_WHERE = ("split", "shard")


def same_sample(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """True when sources ``a`` and ``b`` describe the same sample: equal, or two shard samples whose meta.json
    (AMASS path, frame rule and window, fps) agree, read from different splits or shards (``nsim_test`` repeats
    test samples)."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    if a.get("kind") != "shard" or b.get("kind") != "shard":
        return False
    strip = lambda s: {k: v for k, v in s.items() if k not in _WHERE}  # noqa: E731
    return strip(a) == strip(b) and a.get("amass_path") is not None


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
                progress: bool = True, ann: str = "auto", workers: int = 1) -> tuple[Index, BuildReport]:
    """Build (or extend) the index in ``out`` from a shard set (``splits``; "all" = every manifest) or a feature
    folder. ``videos``: a directory of rendered ``<keyid>.mp4`` used as previews when present; otherwise, with
    ``previews``, a shard's own video is written to ``out/previews/<keyid>.mp4``. Motions already in an index of
    the same checkpoint in ``out`` are kept, not re-encoded. A keyid met again with the same sample (another
    split: ``nsim_test`` repeats test samples) is counted in ``report.duplicates``; with a different sample it
    is a failure (the first kept). ``ann``: how the latent sets are searched (:meth:`Index.save`); ``workers``:
    shard samples decoded in that many processes. Returns the index and a report (bad samples are listed in
    ``report.failed``; the build goes on; ``report.times``: seconds spent decoding, encoding, writing)."""
    if ann not in ANN_KINDS:
        raise ValueError(f"ann must be one of {ANN_KINDS}, not {ann!r}")
    t0 = time.perf_counter()
    out = Path(out)
    report = BuildReport(times={"decode": 0.0, "encode": 0.0, "previews": 0.0, "write": 0.0})
    old: Index | None = None
    if (out / META).is_file():
        try:
            old = Index.load(out, retriever.sha256, retriever.latent_dim)
        except BadInputError as exc:
            log.warning("%s: starting a new index (%s)", out, exc.message)
    if (shards is None) == (folder is None):
        raise ValueError("give exactly one of shards= or folder=")
    parts = _Parts.of(old)
    if old:
        _repair_previews(parts.entries, out, videos)
    seen = {e.keyid: e.source for e in parts.entries}  # keyid -> source, of the old index and of this build so far
    if shards is not None:
        if list(splits) == ["all"]:
            splits = sorted(shard_format.read_manifests(Path(shards)))
        items = shard_items(shards, splits, retriever, report.failed, indexed=seen, workers=workers)
        total = _announced(Path(shards), splits)
        database = {"kind": "shards", "path": str(Path(shards).resolve()), "splits": list(splits)}
    else:
        items, total = folder_items(folder, retriever, report.failed), None
        database = {"kind": "features", "path": str(Path(folder).resolve())}

    def preview(it: Item) -> str | None:
        t = time.perf_counter()
        try:
            return _preview(it, out, videos, previews)
        finally:
            report.times["previews"] += time.perf_counter() - t

    batch: list[Item] = []
    bar = tqdm(total=total, desc="index", unit="motion", disable=not progress)
    for it in _timed(items, report.times):
        bar.update(1)
        if it.keyid in seen:
            if seen[it.keyid] == it.source:
                report.reused += 1
            elif same_sample(seen[it.keyid], it.source):
                report.duplicates += 1
            else:
                where = it.source.get("shard") or it.source.get("path")
                report.failed.append(f"{it.keyid}: duplicate keyid of another sample (from {where}), first kept")
            continue
        seen[it.keyid] = it.source
        batch.append(it)
        if len(batch) >= batch_size:
            report.done += parts.add(retriever, batch, preview, report.times)
    report.done += parts.add(retriever, batch, preview, report.times)
    bar.close()
    index = parts.index({"checkpoint": str(Path(retriever.checkpoint).resolve()), "checkpoint_sha256":
                         retriever.sha256, "latent_dim": retriever.latent_dim, "database": database})
    t = time.perf_counter()
    index.save(out, ann)
    report.times["write"] += time.perf_counter() - t
    report.times["encode"] -= report.times["previews"]
    report.seconds = time.perf_counter() - t0
    return Index.load(out, retriever.sha256, retriever.latent_dim), report


def _timed(items: Iterator[Item], times: dict[str, float]) -> Iterator[Item]:
    """``items``, adding the time spent producing each (reading + decoding) to ``times["decode"]``."""
    while True:
        t = time.perf_counter()
        try:
            it = next(items)
        except StopIteration:
            return
        finally:
            times["decode"] += time.perf_counter() - t
        yield it


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

    @classmethod
    def of(cls, old: Index | None) -> "_Parts":
        if old is None:
            return cls([], [], [], [], [])
        n = len(old)
        vs = old._sets["video"]
        video = np.zeros((n, vs.vectors.shape[1]), np.float32)
        has = np.zeros(n, bool)
        if len(vs):
            rows = vs._rows()
            video[rows], has[rows] = np.asarray(vs.vectors, np.float32), True
        return cls(list(old.iter_entries()), [np.asarray(old._sets["motion"].vectors, np.float32)], [video], [has],
                   [np.asarray(old._sets["text"].vectors, np.float32)])

    def add(self, retriever: Any, batch: list[Item], preview, times: dict[str, float]) -> int:
        """Encode ``batch`` (motions; videos when the model has a video encoder; captions) and append it with each
        item's ``preview(item)``; empties ``batch`` and returns how many items it held."""
        if not batch:
            return 0
        t0 = time.perf_counter()
        m = retriever.encode_motion_batch([it.motion for it in batch])
        v = np.zeros_like(m)
        has = np.array([it.video is not None for it in batch])
        if has.any() and retriever.has_video:
            idx = np.flatnonzero(has)
            v[idx] = retriever.encode_video_batch(torch.stack([batch[i].video for i in idx]))
        else:
            has[:] = False
        caps = [c for it in batch for c in it.captions]
        if caps:
            self.text.append(retriever.encode_text(caps))
        for it in batch:
            self.entries.append(Entry(it.keyid, it.captions, it.source, preview(it)))
        self.motion.append(m)
        self.video.append(v)
        self.has_video.append(has)
        n = len(batch)
        batch.clear()
        times["encode"] += time.perf_counter() - t0
        return n

    def index(self, meta: dict[str, Any]) -> Index:
        c = meta["latent_dim"]
        cat = lambda xs, shape, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(shape, dt)  # noqa: E731
        owners = np.repeat(np.arange(len(self.entries), dtype=np.int64), [len(e.captions) for e in self.entries])
        return Index(self.entries, cat(self.motion, (0, c), np.float32), cat(self.video, (0, c), np.float32),
                     cat(self.has_video, (0,), bool), cat(self.text, (0, c), np.float32), owners, meta)


def _repair_previews(entries: list[Entry], out: Path, videos) -> None:
    """Entries kept from an index built before previews were copied in name their preview by an absolute path
    (or one outside ``out``), which :meth:`Index.preview_path` ignores: with ``videos`` the rendered video is
    copied (hard-linked) into ``out/previews/`` again (:func:`_preview`); without, or when ``videos`` has none for
    that motion, the preview is dropped, with one logged note. An absolute path inside ``out`` is made relative."""
    dropped = []
    root = out.resolve()
    for e in entries:
        if e.preview is None:
            continue
        try:
            path = (out / str(e.preview)).resolve()
            inside = path.is_relative_to(root)
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
            inside = False
        if inside:
            if Path(e.preview).is_absolute():
                e.preview = path.relative_to(root).as_posix()
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
                    out, len(dropped), dropped[0])


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

"""The latent vectors of an index and their search: exact inner product, or IVF-PQ (faiss) with an exact re-rank.

A :class:`VectorSet` is ``n`` L2-normalised latents of ``C`` values (motion, video or caption latents), stored as
one plain ``.npy`` file: float32 for an exact set, float16 for an approximate one (half the bytes; a score read
from float16 is within ~1e-3 of the float32 one). Stored sets are memory-mapped (``np.memmap`` at the offset of a
header checked against index.json and the file's size first, :func:`open_npy`): opening one reads no latent.

Search (``search(q, k)``, cosine = inner product of unit vectors):

- **exact**: over the (memory-mapped) float32 latents, in blocks: faiss' exhaustive kernel (what ``IndexFlatIP``
  runs) for a block of up to :data:`EXACT_FAISS_MAX` rows, one BLAS matrix-vector product and a partial sort for a
  larger one (measured faster for one query on 2 cores: tests/benchmarks/bench_search_scale.py prints both).
- **ivfpq**: faiss ``IndexIVFPQ`` (inner product; ``nlist`` coarse cells, ``m`` sub-quantisers of 8 bits) proposes
  ``refine * k`` candidates from ``nprobe`` cells, which are re-ranked exactly on their stored float16 latents.
  ``nprobe`` and ``refine`` are chosen at build (:func:`train_ivfpq`) as the cheapest pair whose recall@10 against
  exact search, measured on sample queries, reaches :data:`RECALL_TARGET`; the recall reached is stored in
  index.json (``vectors.<name>.ann.recall_at_10``).

faiss' own index files are never read (``faiss.read_index`` parses C++ structures from the file; a hostile file
would reach that parser): the IVF-PQ structure is stored as five plain arrays (:data:`IVF_PARTS`: coarse
centroids, PQ codebooks, list offsets, ids, codes) whose every value is checked or harmless (an id is checked to
lie in ``0..n-1``, any code byte is valid), and faiss' index is rebuilt from them in memory at the first search
(a copy of ``n * (m + 8)`` bytes: O(n), 30 ms for a million latents measured). docs/security.md, "The search index".
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lavimo.core.atomic import atomic_path
from lavimo.core.errors import BadInputError
from lavimo.core.restricted_unpickle import read_npy_header

log = logging.getLogger(__name__)

# OpenMP threads that sleep when idle instead of spinning: faiss' training and search on a busy host (more
# runnable threads than cores) run several times slower with spinning threads (measured: IVF-PQ training 30 s
# vs 5 s on the 2-core reference host under load). Read when faiss' OpenMP runtime starts (its first import).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: approximate search targets this recall@10 against exact search (measured at build on sample queries)
RECALL_TARGET = 0.95
#: ``--ann auto`` switches from exact search to IVF-PQ from this many latents in a set
AUTO_ANN_MIN = 200_000
#: a set smaller than this is searched exactly even on request (its PQ codebooks need 256 points and more)
MIN_ANN_ROWS = 1024
ANN_KINDS = ("auto", "exact", "ivfpq")
#: the arrays of a stored IVF-PQ structure: part -> (dtype, shape given n, C, nlist, m)
IVF_PARTS = ("centroids", "pq", "offsets", "ids", "codes")
#: search parameters tried at build, cheapest first within each refine factor
NPROBES = (4, 8, 16, 32, 64, 128, 256, 512)
REFINES = (4, 16, 64)
MAX_NLIST = 1 << 16
#: exact search reads the latents in blocks of this many rows (float16 blocks are converted one at a time)
EXACT_BLOCK = 1 << 20
#: exact search of a block up to this many rows uses faiss' kernel, a larger one a BLAS product (bench_search_scale)
EXACT_FAISS_MAX = 1 << 12


def _ivf_shapes(n: int, c: int, nlist: int, m: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {"centroids": (np.dtype("<f4"), (nlist, c)), "pq": (np.dtype("<f4"), (m, 256, c // m)),
            "offsets": (np.dtype("<i8"), (nlist + 1,)), "ids": (np.dtype("<i8"), (n,)),
            "codes": (np.dtype("u1"), (n, m))}


# ------------------------------------------------------------------------------------------------ .npy files
def write_npy(path: Path, array: np.ndarray) -> None:
    """``array`` to the ``.npy`` file ``path``, atomically (no pickle: plain dtypes only)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def open_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array in ``path``, memory-mapped read-only, after checking its header (numpy's parser, no pickle)
    declares exactly ``dtype`` and ``shape`` in C order and the file holds exactly header + data bytes (a
    truncated or extended file is refused before any data is read). Raises BadInputError(path, field)."""
    try:
        with open(path, "rb") as fh:
            got_shape, fortran, got_dtype = read_npy_header(fh, path, path.name)
            offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError as exc:
        raise BadInputError(path, None, "missing (an incomplete index: rebuild it with 'lavimo-search index')") \
            from exc
    except OSError as exc:
        raise BadInputError(path, None, f"unreadable ({exc.strerror or exc})") from exc
    if got_shape != tuple(shape) or got_dtype != dtype or fortran:
        raise BadInputError(path, "header", f"shape {got_shape} of {got_dtype}; index.json implies {tuple(shape)} "
                                            f"of {dtype}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != offset + nbytes:
        raise BadInputError(path, "size", f"{size} bytes, its header declares {offset + nbytes}: truncated or "
                                          "extended (rebuild the index)")
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


# ------------------------------------------------------------------------------------------------ IVF-PQ
@dataclass
class IvfPq:
    """An IVF-PQ structure as plain arrays (module docstring) and the search parameters chosen at build."""

    centroids: np.ndarray   # (nlist, C) float32
    pq: np.ndarray          # (m, 256, C/m) float32 codebooks
    offsets: np.ndarray     # (nlist + 1,) int64: list l holds ids[offsets[l]:offsets[l+1]]
    ids: np.ndarray         # (n,) int64 vector numbers, grouped by list
    codes: np.ndarray       # (n, m) uint8 PQ codes, in the order of ids
    nprobe: int
    refine: int
    recall_at_10: float | None = None
    source: Path | None = None  # the directory the arrays were read from (errors name the file)
    prefix: str = ""            # their file names: <source>/<prefix><part>.npy

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def m(self) -> int:
        return int(self.pq.shape[0])

    def params(self) -> dict[str, Any]:
        return {"kind": "ivfpq", "nlist": self.nlist, "m": self.m, "nprobe": self.nprobe, "refine": self.refine,
                "recall_at_10": self.recall_at_10}

    def faiss_index(self, n: int) -> Any:
        """faiss' IndexIVFPQ over these arrays (built in memory; checked first: offsets run 0..n in order, ids in
        0..n-1, centroids and codebooks finite). BadInputError names the bad array's file."""
        import faiss

        def bad(part: str, why: str) -> BadInputError:
            where = self.source / f"{self.prefix}{part}.npy" if self.source else part
            return BadInputError(where, part, why + " (an edited index: rebuild it)")

        off = np.asarray(self.offsets)
        if off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 0):
            raise bad("offsets", f"list offsets do not run from 0 to {n} in order")
        ids = np.asarray(self.ids)
        if n and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise bad("ids", f"ids outside 0..{n - 1}")
        cents, pq = np.ascontiguousarray(self.centroids, np.float32), np.ascontiguousarray(self.pq, np.float32)
        if not np.isfinite(cents).all() or not np.isfinite(pq).all():
            raise bad("centroids" if not np.isfinite(cents).all() else "pq", "non-finite values")
        c = cents.shape[1]
        quant = faiss.IndexFlatIP(c)
        quant.add(cents)
        index = faiss.IndexIVFPQ(quant, c, self.nlist, self.m, 8, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(pq.reshape(-1), index.pq.centroids)
        index.is_trained = True
        for lst in range(self.nlist):
            a, b = int(off[lst]), int(off[lst + 1])
            if b > a:
                index.invlists.add_entries(lst, b - a, faiss.swig_ptr(np.ascontiguousarray(ids[a:b], np.int64)),
                                           faiss.swig_ptr(np.ascontiguousarray(self.codes[a:b], np.uint8)))
        index.ntotal = n
        index.quantizer = quant  # keep the quantizer alive with the index
        index.nprobe = min(self.nprobe, self.nlist)
        return index


def _pq_m(c: int) -> int:
    """Sub-quantisers for latents of ``c`` values: the largest divisor of ``c`` at most ``c / 8`` (256 -> 32:
    32 code bytes per latent)."""
    return max(d for d in range(1, max(1, c // 8) + 1) if c % d == 0)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1 << 16) -> np.ndarray:
    """(Q, k) ids of the exact top-``k`` inner products of ``queries`` (Q, C) over ``vectors`` (n, C), computed in
    row chunks of float32 (vectors may be float16 or memory-mapped)."""
    q = np.asarray(queries, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(vectors), chunk):
        s = q @ np.asarray(vectors[a:a + chunk], np.float32).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.arange(a, a + s.shape[1])[None].repeat(len(q), 0)], axis=1)
        kk = min(k, s_all.shape[1])
        part = np.argpartition(-s_all, kk - 1, axis=1)[:, :kk]
        best_s, best_i = np.take_along_axis(s_all, part, 1), np.take_along_axis(i_all, part, 1)
    return best_i


def train_ivfpq(vectors: np.ndarray, queries: np.ndarray, seed: int = 0) -> IvfPq:
    """An IVF-PQ structure over ``vectors`` (n, C) float32 unit rows, and the cheapest (nprobe, refine) whose
    recall@10 over ``queries`` (Q, C) against exact search reaches :data:`RECALL_TARGET` (else the best pair
    tried, with a logged warning). nlist ~ 2 sqrt(n); codebooks of m = C/8 sub-quantisers trained on at most
    64 points per list."""
    import faiss

    n, c = vectors.shape
    nlist = int(min(MAX_NLIST, max(1, round(2 * math.sqrt(n)))))
    m = _pq_m(c)
    rng = np.random.default_rng(seed)
    train = vectors[np.sort(rng.choice(n, min(n, max(64 * nlist, 10_000)), replace=False))]
    quant = faiss.IndexFlatIP(c)
    index = faiss.IndexIVFPQ(quant, c, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1  # small sets: no warnings
    index.train(np.ascontiguousarray(train, np.float32))
    index.add(np.ascontiguousarray(vectors, np.float32))
    from faiss.contrib.inspect_tools import get_invlist

    ids, codes, offsets = [], [], [0]
    for lst in range(nlist):
        i, cd = get_invlist(index.invlists, lst)
        ids.append(np.asarray(i, np.int64))
        codes.append(np.asarray(cd, np.uint8).reshape(-1, index.pq.code_size))
        offsets.append(offsets[-1] + len(i))
    ivf = IvfPq(quant.reconstruct_n(0, nlist).astype(np.float32),
                faiss.vector_to_array(index.pq.centroids).reshape(m, 256, c // m).astype(np.float32),
                np.asarray(offsets, np.int64), np.concatenate(ids), np.concatenate(codes), 1, 1)
    _tune(ivf, index, vectors, queries)
    return ivf


def _tune(ivf: IvfPq, index: Any, vectors: np.ndarray, queries: np.ndarray) -> None:
    """Sets ``ivf.nprobe``, ``ivf.refine`` and ``ivf.recall_at_10`` (module docstring)."""
    n = len(vectors)
    k = min(10, n)
    truth = exact_top(vectors, queries, k)
    store = VectorSet(vectors.astype(np.float16), None)
    best: tuple[float, float, int, int] | None = None  # (-recall, seconds, nprobe, refine)
    for refine in REFINES:
        for nprobe in (p for p in NPROBES if p <= max(ivf.nlist, 4)):
            index.nprobe = min(nprobe, ivf.nlist)
            t0 = time.perf_counter()
            hits = [store._refined(index, q, k, refine)[0] for q in queries]
            secs = (time.perf_counter() - t0) / max(1, len(queries))
            recall = float(np.mean([len(set(h.tolist()) & set(t.tolist())) / k for h, t in zip(hits, truth)]))
            cand = (-min(recall, RECALL_TARGET), secs, nprobe, refine)
            if best is None or cand < best:
                best = cand
                ivf.recall_at_10 = round(recall, 4)
            if recall >= RECALL_TARGET or nprobe >= ivf.nlist:
                break
    assert best is not None
    ivf.nprobe, ivf.refine = best[2], best[3]
    # the recall of the chosen pair (``best`` kept the recall capped at the target for the choice)
    index.nprobe = min(ivf.nprobe, ivf.nlist)
    hits = [store._refined(index, q, k, ivf.refine)[0] for q in queries]
    ivf.recall_at_10 = round(float(np.mean([len(set(h.tolist()) & set(t.tolist())) / k
                                            for h, t in zip(hits, truth)])), 4)
    if ivf.recall_at_10 < RECALL_TARGET:
        log.warning("approximate index: recall@10 %.3f < %.2f at nprobe %d, refine %d (use --ann exact)",
                    ivf.recall_at_10, RECALL_TARGET, ivf.nprobe, ivf.refine)


# ------------------------------------------------------------------------------------------------ a set
class VectorSet:
    """``n`` unit latents (``vectors`` (n, C), float32 or float16, possibly memory-mapped), searched exactly or
    through ``ann`` (an :class:`IvfPq`). ``rows`` (n,) int64, or None: the index row of each latent (the video
    set holds only the motions that have a video), ascending and below ``row_limit``; checked at first use
    (``rows_file`` is named when they are not)."""

    def __init__(self, vectors: np.ndarray, ann: IvfPq | None, rows: np.ndarray | None = None,
                 rows_file: Path | None = None, row_limit: int | None = None):
        self.vectors, self.ann, self.rows = vectors, ann, rows
        self.rows_file, self.row_limit = rows_file, row_limit
        self._faiss: Any = None
        self._rows_ok = rows is None or rows_file is None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def vector(self, j: int) -> np.ndarray:
        """Latent ``j`` as (C,) float32."""
        return np.asarray(self.vectors[j], np.float32)

    def _rows(self) -> np.ndarray:
        if not self._rows_ok:
            r = np.asarray(self.rows)
            limit = self.row_limit if self.row_limit is not None else np.iinfo(np.int64).max
            if len(r) and (int(r[0]) < 0 or int(r[-1]) >= limit or np.any(np.diff(r) <= 0)):
                raise BadInputError(self.rows_file, "rows", f"not ascending rows in 0..{limit - 1} (an edited index: "
                                                            "rebuild it)")
            self._rows_ok = True
        return self.rows

    def slot(self, row: int) -> int | None:
        """The latent of index row ``row`` (None when this set has none for it)."""
        if self.rows is None:
            return row if 0 <= row < len(self) else None
        rows = self._rows()
        j = int(np.searchsorted(rows, row))
        return j if j < len(rows) and int(rows[j]) == row else None

    def check(self, chunk: int = 1 << 16) -> None:
        """Every latent finite, the rows in order, the IVF-PQ arrays consistent (``lavimo-search verify``; O(n)).
        BadInputError naming the file otherwise."""
        self._rows()
        for a in range(0, len(self), chunk):
            if not np.isfinite(np.asarray(self.vectors[a:a + chunk], np.float32)).all():
                where = getattr(self.vectors, "filename", None)
                raise BadInputError(where, "latents", f"non-finite values in rows {a}..{a + chunk - 1}")
        if self.ann is not None:
            self._faiss_index()

    def search(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The top ``k`` (index row, score) by inner product with ``q`` (C,), best first, finite scores only."""
        n = len(self)
        if n == 0 or k < 1:
            return []
        k = min(k, n)
        if self.ann is None:
            ids, sc = self._exact(q, k)
        else:
            ids, sc = self._refined(self._faiss_index(), q, k, self.ann.refine)
        rows = ids if self.rows is None else np.asarray(self._rows())[ids]
        return [(int(r), float(s)) for r, s in zip(rows, sc) if np.isfinite(s)]

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` over the latents where they are (memory-mapped: no copy), in blocks of
        :data:`EXACT_BLOCK` rows: faiss' exhaustive inner-product kernel (what ``IndexFlatIP`` runs) for a small
        block, a BLAS matrix-vector product and a partial sort for a large one (measured faster from
        :data:`EXACT_FAISS_MAX` rows for one query: faiss scans the rows one by one, on one thread)."""
        import faiss

        q1 = np.ascontiguousarray(np.asarray(q, np.float32).reshape(-1))
        best_s, best_i = np.zeros(0, np.float32), np.zeros(0, np.int64)
        for a in range(0, len(self), EXACT_BLOCK):
            block = self.vectors[a:a + EXACT_BLOCK]
            block = block if block.dtype == np.float32 else np.asarray(block, np.float32)
            kk = min(k, len(block))
            if len(block) <= EXACT_FAISS_MAX:
                s, i = faiss.knn(q1[None], block, kk, metric=faiss.METRIC_INNER_PRODUCT)
                s, i = s[0], i[0]
            else:
                scores = np.asarray(block @ q1)
                scores = np.where(np.isfinite(scores), scores, -np.inf)
                i = np.argpartition(-scores, kk - 1)[:kk] if kk < len(scores) else np.arange(len(scores))
                s = scores[i]
            best_s, best_i = np.concatenate([best_s, s]), np.concatenate([best_i, i + a])
        ok = (best_i >= 0) & np.isfinite(best_s)  # faiss marks missing results -1; a NaN (edited file) never ranks
        best_s, best_i = best_s[ok], best_i[ok]
        order = np.lexsort((best_i, -best_s))[:k]  # by score, ties by row (as a stable sort of the scores)
        return best_i[order], best_s[order]

    def _faiss_index(self) -> Any:
        with self._lock:
            if self._faiss is None:
                self._faiss = self.ann.faiss_index(len(self))
            return self._faiss

    def _refined(self, index: Any, q: np.ndarray, k: int, refine: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from faiss ``index`` (``refine * k`` of them), re-ranked on the stored latents."""
        _, cand = index.search(np.asarray(q, np.float32).reshape(1, -1), min(len(self), max(k, refine * k)))
        cand = np.unique(cand[0][cand[0] >= 0])  # sorted: the memory map is read in file order
        if len(cand) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = np.asarray(self.vectors[cand], np.float32) @ np.asarray(q, np.float32).reshape(-1)
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        order = np.argsort(-scores, kind="stable")[:k]
        return cand[order], scores[order]

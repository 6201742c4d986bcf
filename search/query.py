"""One query against an index, shared by ``lavimo-search query`` / ``batch``, the search page and the demo.

- :func:`open_index`: the index and the model it was built with.
- :class:`Query` and :func:`check_query` (:mod:`lavimo.search.inputs`, re-exported): a query's inputs, checked
  before any model is loaded (an empty or too long text, a missing file, a wrong suffix, a bad window or paging).
- :func:`run_query` in three steps: :func:`decode_query` (reading and resampling a video or motion file: no model
  needed, run outside the model lock), :func:`encode_query` (the encoder call: the only step under ``lock``) and the
  index search (top ``offset + k``, then the page ``offset:offset + k``). Queries by an indexed row ("more like
  this", the captions of a motion, similar videos) use the stored latents (:func:`motion_vector`,
  :func:`video_vector`) and need no model.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from lavimo.core.errors import BadInputError

from .inputs import Query, check_query


def open_index(index_dir: Path, checkpoint: Path | None, stats: Path | None, device: str = "cpu"):
    """(Retriever, Index) for an index directory, the checkpoint defaulting to the one it records. Loading order:
    the cheap refusals first — no checkpoint file (given, or the one index.json records), no index or a damaged
    one (:meth:`Index.load`: milliseconds, whatever its size), a checkpoint whose sha256 is not the one the index
    records — and only then the model (seconds), whose latent size the index must match."""
    from lavimo.core.hashing import sha256_file

    from .index import META, Index
    from .model import load

    hint = "" if checkpoint is not None else f" (recorded by {index_dir}; pass --checkpoint)"
    checkpoint = recorded_checkpoint(index_dir) if checkpoint is None else Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint{hint}")
    if not (Path(index_dir) / META).is_file():
        raise FileNotFoundError(f"{index_dir}: no index (build it with 'lavimo-search index')")
    index = Index.load(index_dir)
    sha = sha256_file(checkpoint)[0]
    index.check_model(sha)  # the checkpoint the index was built with, before the model loads
    retriever = load(checkpoint, stats=stats, device=device, sha256=sha)
    index.check_model(None, retriever.latent_dim)
    return retriever, index


def recorded_checkpoint(index_dir: Path) -> Path:
    """The checkpoint path an index directory's ``index.json`` records (read bounded, before any model loads).
    FileNotFoundError when there is no index; BadInputError naming the file otherwise."""
    if not Path(index_dir).is_dir():  # before importing the index module (torch): a wrong path fails at once
        raise FileNotFoundError(f"{index_dir}: no index (build it with 'lavimo-search index')")
    from .index import META, read_index_json

    meta_path = Path(index_dir) / META
    try:  # bounded: a hostile index.json is one BadInputError naming it (read_index_json), never a traceback
        recorded = read_index_json(meta_path).get("checkpoint")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{index_dir}: no index (build it with 'lavimo-search index')") from exc
    if not isinstance(recorded, str) or not recorded or "\0" in recorded:
        raise BadInputError(meta_path, "checkpoint", "not a file name; pass --checkpoint")
    return Path(recorded)


# ---------------------------------------------------------------------------------------------- the stored latents
def motion_vector(index: Any, i: int) -> np.ndarray:
    """The stored motion latent of row ``i`` -> (1, C) float32 (L2-normalised)."""
    return np.asarray(index.motion_vector(i), np.float32).reshape(1, -1)


def video_vector(index: Any, i: int) -> np.ndarray | None:
    """The stored video latent of row ``i`` -> (1, C) float32, or None when that motion has no video."""
    v = index.video_vector(i)
    return None if v is None else np.asarray(v, np.float32).reshape(1, -1)


@dataclass
class Decoded:
    """A query after :func:`decode_query`: ``vector`` (1, C) when no model is needed (a row, a text encoded in a
    batch), else ``model_input`` for :func:`encode_query` (a text, a (F, 3, S, S) video tensor, (T, D) normalised
    motion features)."""

    query: Query
    vector: np.ndarray | None = None
    model_input: Any = None
    decode_s: float = 0.0


def decode_query(retriever: Any, index: Any, q: Query) -> Decoded:
    """Everything before the encoder: read, resample and normalise a file (thread-safe; no lock needed). A row's
    stored latent (:func:`motion_vector` / :func:`video_vector`) is the whole query. Raises BadInputError."""
    t0 = time.perf_counter()
    if q.row is not None:
        v = video_vector(index, q.row) if q.against == "video" else motion_vector(index, q.row)
        if v is None:
            raise BadInputError(None, "row", f"motion {index.keyid(q.row)} has no video latent in this index")
        return Decoded(q, vector=v, decode_s=time.perf_counter() - t0)
    if q.text is not None:
        x: Any = q.text
    elif q.video is not None:
        if not retriever.has_video:
            raise BadInputError(retriever.checkpoint, "modalities", "this model has no video encoder (modalities "
                                                                    "'tm')")
        x = retriever.video_tensor(q.video, q.start, q.end, q.crop)
    else:
        x = retriever.normalise(retriever.features_of(q.motion, q.fps, q.start, q.end))
    return Decoded(q, model_input=x, decode_s=time.perf_counter() - t0)


def encode_query(retriever: Any, d: Decoded) -> np.ndarray:
    """The encoder call for a decoded query (:func:`decode_query`) -> (1, C). The only step that needs the model
    lock."""
    if d.vector is not None:
        return d.vector
    if d.query.text is not None:
        return retriever.encode_text([d.model_input])
    if d.query.video is not None:
        return retriever.encode_video_batch(d.model_input[None])
    return retriever.encode_motion_batch([d.model_input])


def search_page(index: Any, vector: np.ndarray, q: Query) -> list[tuple[int, float]]:
    """The hits ``offset .. offset + k`` of ``vector`` against ``q.against``: asks the index for the top
    ``offset + k`` (+1 for a row searching motions or videos, whose own row is left out) and slices."""
    skip_self = q.row is not None and q.against in ("motion", "video")
    hits = index.search(vector, q.offset + q.k + int(skip_self), q.against)
    if skip_self:
        hits = [h for h in hits if h[0] != q.row][: q.offset + q.k]
    return hits[q.offset:q.offset + q.k]


def results_of(index: Any, q: Query, hits: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """Hits -> result dicts: captions (``against`` "text": caption, keyid, row, score) or motions
    (:meth:`Index.result` + row), each with its 1-based ``rank`` over all pages."""
    out = []
    for n, (i, s) in enumerate(hits):
        if q.against == "text":
            caption, owner = index.caption(i)
            r = {"caption": caption, "keyid": index.keyid(owner), "row": int(owner), "score": round(s, 6)}
        else:
            r = dict(index.result(i, s), row=int(i))
        r["rank"] = q.offset + n + 1
        out.append(r)
    return out


def answer(index: Any, d: Decoded, vector: np.ndarray, encode_s: float = 0.0) -> dict[str, Any]:
    """The JSON answer to a decoded and encoded query: ``{"query": {kind, against, k, offset[, row, keyid]},
    "results": [...], "latency_ms": {decode, encode, search}}``."""
    q = d.query
    t0 = time.perf_counter()
    results = results_of(index, q, search_page(index, vector, q))
    search_s = time.perf_counter() - t0
    head: dict[str, Any] = {"kind": q.kind, "against": q.against, "k": q.k, "offset": q.offset}
    if q.row is not None:
        head.update(row=q.row, keyid=index.keyid(q.row))
    ms = {"decode": d.decode_s, "encode": encode_s, "search": search_s}
    return {"query": head, "results": results, "latency_ms": {k: round(v * 1000, 2) for k, v in ms.items()}}


def run_query(retriever: Any, index: Any, *, text: str | None = None, video: Path | None = None,
              motion: Path | None = None, row: int | None = None, k: int = 5, offset: int = 0,
              captions: bool = False, against: str | None = None, start: float | None = None,
              end: float | None = None, crop=None, fps: float | None = None,
              lock: ContextManager | None = None) -> dict[str, Any]:
    """One query -> ``{"query": {...}, "results": [...], "latency_ms": {...}}`` (:func:`answer`). ``captions``:
    motion -> text (the same as ``against="text"``). ``lock``: held around the encoder call only (decoding a file
    happens before, outside it)."""
    if captions:
        if motion is None and row is None:
            raise ValueError("captions (motion -> text) go with a motion")
        against = "text"
    q = check_query(Query(text, video, motion, row, k, offset, against, start, end, crop, fps), len(index))
    d = decode_query(retriever, index, q)
    t0 = time.perf_counter()
    with lock if lock is not None else contextlib.nullcontext():
        vector = encode_query(retriever, d)
    return answer(index, d, vector, time.perf_counter() - t0)

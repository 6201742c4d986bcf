"""``lavimo-search batch``: many queries for one model load. A queries file in, one JSON line per query out.

Input (``--queries``), read before the model loads, every line checked (:func:`check_all`: each line's
:func:`lavimo.search.inputs.check_query`, its files included; a ``keyid`` line is looked up once the index is open):

- ``.txt``: one query text per line (blank lines and lines starting with ``#`` are skipped);
- ``.jsonl``: one JSON object per line: ``{"text": "..."}``, ``{"video": "clip.mp4", "start": 2, "end": 6.5,
  "crop": [x, y, size]}``, ``{"motion": "m.npy", "captions": true}`` or ``{"keyid": "000123"}`` (an indexed motion:
  "more like this"), each with optional ``k``, ``offset``, ``against`` ("motion" | "video" | "text") and ``id`` (any
  JSON string or number, echoed). Relative file paths are relative to the queries file's folder.

Output (``--out``, written atomically): one line per input query, in order: ``{"line": N, "id": ..., "query": {...},
"results": [...], "latency_ms": {...}}`` or ``{"line": N, "id": ..., "error": "one line"}``. Texts are encoded in
batches of :data:`TEXT_BATCH` (one forward pass each). Exit status: 0 every query answered, 1 some failed (each is a
line with ``error``, counted on stderr), 2 a usage or set-up error (no queries file, no model).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

from lavimo.core.atomic import atomic_open
from lavimo.core.errors import BadInputError, one_line

from .inputs import Query, check_query
from .query import Decoded, answer, decode_query, encode_query

TEXT_BATCH = 64
#: the most queries one file may hold, and the longest line (bytes): a larger file is refused before any model loads
MAX_QUERIES = 1_000_000
MAX_LINE_BYTES = 1 << 20
_FIELDS = {"text", "video", "motion", "keyid", "k", "offset", "against", "captions", "start", "end", "crop", "fps",
           "id"}


def _number(obj: dict, name: str) -> float | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number, got {json.dumps(v)[:40]}")
    return float(v)


def parse_line(obj: Any, base: Path, index: Any | None, k: int) -> Query:
    """One JSONL object -> a checked :class:`Query` (module docstring). ValueError / BadInputError otherwise.
    ``index`` None (before it is open): a ``keyid`` line is refused, rows are not checked against its length."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object such as {\"text\": \"a person walks\"}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)[:80]} (known: {', '.join(sorted(_FIELDS))})")
    for name in ("text", "video", "motion", "keyid", "against"):
        if name in obj and not isinstance(obj[name], str):
            raise ValueError(f"{name} must be a string")
    row = None
    if "keyid" in obj:
        if index is None:
            raise ValueError("a keyid query needs the index")
        row = index.position(obj["keyid"])
        if row is None:
            raise ValueError(f"keyid {obj['keyid'][:64]!r} is not in the index")
    crop = obj.get("crop")
    if crop is not None:
        if not isinstance(crop, list) or len(crop) != 3 or not all(type(c) is int for c in crop):
            raise ValueError("crop must be [x, y, size] (integers, pixels)")
        crop = tuple(crop)
    kk, offset = obj.get("k", k), obj.get("offset", 0)
    against = "text" if obj.get("captions") is True else obj.get("against")
    q = Query(text=obj.get("text"), video=base / obj["video"] if "video" in obj else None,
              motion=base / obj["motion"] if "motion" in obj else None, row=row, k=kk, offset=offset,
              against=against, start=_number(obj, "start"), end=_number(obj, "end"), crop=crop,
              fps=_number(obj, "fps"))
    return check_query(q, None if index is None else len(index))


def read_queries(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, the line's text or JSON object, a parse error or None) for each query line of ``path``.
    Raises FileNotFoundError / BadInputError (not a .txt or .jsonl, more than :data:`MAX_QUERIES` lines)."""
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise BadInputError(path, "queries", f"expected a .txt (one text a line) or .jsonl file, got "
                                             f"{suffix or 'no suffix'}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such queries file")
    n = 0
    with open(path, "rb") as fh:
        for no, raw in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise BadInputError(path, f"line {no}", f"longer than {MAX_LINE_BYTES} bytes")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                yield no, None, "not UTF-8 text"
                continue
            if not line or (suffix == ".txt" and line.startswith("#")):
                continue
            n += 1
            if n > MAX_QUERIES:
                raise BadInputError(path, "queries", f"more than {MAX_QUERIES} queries: split the file")
            if suffix == ".txt":
                yield no, {"text": line}, None
                continue
            try:
                yield no, json.loads(line), None
            except (ValueError, RecursionError) as exc:
                yield no, None, f"not JSON ({str(exc)[:80]})"


def check_all(path: Path, k: int = 5) -> list[tuple[int, Any, str | None]]:
    """Every line of ``path`` read (:func:`read_queries`) and checked before any model loads: a JSON line that
    is not an object is an error, and every query but a ``keyid`` one (which needs the index) goes through
    :func:`lavimo.search.inputs.check_query` with its files checked (they exist, with a known suffix; relative to
    the queries file's folder), its error kept as the line's. Raises when the file itself is unusable or holds
    no query."""
    lines = list(read_queries(path))
    if not lines:
        raise BadInputError(path, "queries", "no query in the file")
    out: list[tuple[int, Any, str | None]] = []
    for no, obj, err in lines:
        if err is None and not isinstance(obj, dict):
            err = "expected a JSON object"
        if err is None and "keyid" not in obj:
            try:
                parse_line(obj, path.parent, None, k)
            except (ValueError, OSError) as exc:  # BadInputError is a ValueError: the file and field, one line
                err = one_line(exc)
        out.append((no, obj, err))
    return out


def run_batch(retriever: Any, index: Any, lines: list[tuple[int, Any, str | None]], base: Path, out: Path,
              k: int = 5) -> tuple[int, int]:
    """Answer every line (:func:`check_all`) into ``out`` (JSONL, atomic) -> (answered, failed). Texts are encoded
    :data:`TEXT_BATCH` at a time; files are decoded one by one; a bad line is an error line, the others go on."""
    records: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], Decoded]] = []  # texts waiting for a batched encoder call

    def flush() -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        try:
            vecs = retriever.encode_text([d.model_input for _, d in pending])
        except ValueError as exc:  # cannot happen for checked texts; reported per line rather than raised
            for rec, _ in pending:
                rec["error"] = one_line(exc)
            pending.clear()
            return
        each = (time.perf_counter() - t0) / len(pending)
        for (rec, d), v in zip(pending, vecs):
            rec.update(answer(index, d, v[None], each))
        pending.clear()

    for no, obj, err in lines:
        rec: dict[str, Any] = {"line": no}
        records.append(rec)
        if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int, float)):
            rec["id"] = obj["id"]
        if err is not None:
            rec["error"] = err
            continue
        try:
            q = parse_line(obj, base, index, k)
            d = decode_query(retriever, index, q)
            if q.text is not None:
                pending.append((rec, d))
                if len(pending) >= TEXT_BATCH:
                    flush()
                continue
            t0 = time.perf_counter()
            v = encode_query(retriever, d)
            rec.update(answer(index, d, v, time.perf_counter() - t0))
        except (ValueError, OSError, RuntimeError) as exc:  # a bad, unreadable or undecodable input: this line
            rec["error"] = one_line(exc)  # BadInputError is a ValueError: the file and field, one line
    flush()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    failed = sum("error" in r for r in records)
    return len(records) - failed, failed

"""A query's inputs and their checks, with no model and no heavy import (the standard library and
``lavimo.core.errors``): ``lavimo-search query`` / ``batch`` check every input with these before importing torch or loading a model, so a
missing file or an empty text fails at once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavimo.core.errors import BadInputError

#: the longest query text (characters) accepted; a longer one is refused (HTTP 400 / exit 2), never truncated
MAX_TEXT = 1000
#: the deepest result (offset + k) a query may ask for (the page caps k itself: lavimo.search.server.MAX_K)
MAX_DEPTH = 1000
MOTION_SUFFIXES = (".npy", ".npz")
#: the largest file the search server accepts as an upload (HTTP 413 above it; ``query --server`` refuses a larger
#: local file before sending it)
MAX_UPLOAD_BYTES = 64 << 20
#: the motion files the search server accepts (no AMASS .npz: a local query reads those)
SERVER_MOTION_TYPES = (".npy",)
VIDEO_TYPES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv")
#: what a query searches: "motion" latents (default), "video" latents (stored video latents) or "text" (captions)
AGAINST = ("motion", "video", "text")
#: which ``against`` each kind of query may use (the first is its default)
ALLOWED_AGAINST = {"text": ("motion", "video"), "video": ("motion", "video"), "motion": ("motion", "text"),
                   "row": ("motion", "text", "video")}


# ---------------------------------------------------------------------------------------------- the query
@dataclass
class Query:
    """One query: exactly one of ``text``, ``video`` (a file), ``motion`` (a file) or ``row`` (an indexed motion),
    the result page ``k`` results from ``offset``, and ``against`` (:data:`AGAINST`; None: the kind's default).
    ``start``/``end`` seconds and ``crop`` (x, y, size pixels) window a video (start/end an AMASS motion too);
    ``fps``: an AMASS motion's feature rate."""

    text: str | None = None
    video: Path | None = None
    motion: Path | None = None
    row: int | None = None
    k: int = 5
    offset: int = 0
    against: str | None = None
    start: float | None = None
    end: float | None = None
    crop: tuple[int, int, int] | None = None
    fps: float | None = None

    @property
    def kind(self) -> str:
        return ("text" if self.text is not None else "video" if self.video is not None
                else "motion" if self.motion is not None else "row")


def check_text(text: Any) -> str:
    """A query text, stripped -> itself; ValueError when empty or longer than :data:`MAX_TEXT` characters. The text
    is only ever text: template syntax, HTML or ``{results}`` in it is searched for as typed."""
    t = str(text if text is not None else "").strip()
    if not t:
        raise ValueError("empty query text (type a description of a motion)")
    if len(t) > MAX_TEXT:
        raise ValueError(f"query text of {len(t)} characters: at most {MAX_TEXT} (shorten it)")
    return t


def check_query(q: Query, index_len: int | None = None, check_files: bool = True) -> Query:
    """``q`` checked without a model: one input, a non-empty bounded text, existing files with a known suffix
    (``check_files``), a finite window, a crop of 3 integers, 1 <= k, 0 <= offset,
    offset + k <= :data:`MAX_DEPTH`, a known ``against`` for the kind, and (``index_len``) a row inside the index.
    Returns ``q`` with the text stripped and ``against`` filled in; raises ValueError / BadInputError."""
    given = [v is not None for v in (q.text, q.video, q.motion, q.row)]
    if sum(given) != 1:
        raise ValueError("give exactly one of a text, a video, a motion file or an indexed row")
    if type(q.k) is not int or not 1 <= q.k <= MAX_DEPTH:
        raise ValueError(f"k must be an integer in 1..{MAX_DEPTH}, got {q.k!r}")
    if type(q.offset) is not int or q.offset < 0 or q.offset + q.k > MAX_DEPTH:
        raise ValueError(f"offset must be an integer >= 0 with offset + k <= {MAX_DEPTH}, got {q.offset!r}")
    allowed = ALLOWED_AGAINST[q.kind]
    q.against = allowed[0] if q.against is None else q.against
    if q.against not in allowed:
        raise ValueError(f"a {q.kind} query searches {' or '.join(allowed)}, not {q.against!r}")
    for name in ("start", "end", "fps"):
        v = getattr(q, name)
        if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if q.start is not None and q.end is not None and q.end <= q.start:
        raise ValueError(f"end ({q.end:g} s) must be after start ({q.start:g} s)")
    if q.crop is not None and (len(q.crop) != 3 or not all(type(c) is int and c >= 0 for c in q.crop)):
        raise ValueError(f"crop must be x,y,size (non-negative integers), got {q.crop!r}")
    if q.text is not None:
        q.text = check_text(q.text)
    if q.row is not None and (type(q.row) is not int or q.row < 0
                              or (index_len is not None and q.row >= index_len)):
        raise ValueError(f"row {q.row!r} is not a motion of the index")
    for path, suffixes, field in ((q.video, VIDEO_TYPES, "video"), (q.motion, MOTION_SUFFIXES, "motion")):
        if path is not None and check_files:
            path = Path(path)
            if not path.is_file():
                raise BadInputError(path, field, "file not found")
            if path.suffix.lower() not in suffixes:
                raise BadInputError(path, field, f"expected one of {', '.join(suffixes)}, got "
                                                 f"{path.suffix or 'no suffix'}")
    return q


def parse_crop(text: str | None) -> tuple[int, int, int] | None:
    """``"x,y,size"`` -> (x, y, size) ints (None passes through). ValueError on anything else."""
    if text is None or text == "":
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"crop must be x,y,size (non-negative integers, pixels), got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]

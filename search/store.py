"""The per-motion records of an index (keyid, captions, source, preview) in one SQLite file, ``records.sqlite``.

A query reads only its hits' rows (a primary-key lookup each), so opening an index of 10 M motions parses
nothing in proportion to it. Tables (:data:`SCHEMA`, exactly):

- ``info(key, value)``: ``format`` (:data:`FORMAT`) and ``build_id`` (the one index.json records: a records
  file of another build is refused);
- ``motions(row, keyid, source, preview)``: row = the motion's row in the latent files, 0..N-1; ``source`` a
  JSON object; ``preview`` a path relative to the index directory, or NULL;
- ``captions(row, owner, caption)``: row = the caption's row in ``text.npy``; ``owner`` its motion's row;
  a motion's captions in row order.

The file may come from elsewhere (an index is a directory people copy around), so it is read defensively
(docs/security.md, "The search index"; SQLite's own advice for untrusted databases): opened read-only through a
``file:...?mode=ro`` URI, extensions never enabled, ``trusted_schema`` off, ``cell_size_check`` on, no memory
map, strings and blobs capped at :data:`MAX_VALUE_BYTES`, a statement aborted after :data:`MAX_STEPS` virtual-machine
steps (a hostile file cannot make a lookup run for long), and ``sqlite_master`` must hold exactly our schema (no
views or triggers standing in for the tables). Every value read is checked again as index.json's entries were:
a keyid is a name (:func:`lavimo.core.keyids.is_keyid`), captions strings, the source a JSON object (bounded
parser), the preview a string or NULL (and :meth:`lavimo.search.index.Index.preview_path` keeps it inside the
index directory). Anything else is one BadInputError naming the file and the row.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from lavimo.core.atomic import atomic_path
from lavimo.core.errors import BadInputError
from lavimo.core.jsonconfig import loads_bounded
from lavimo.core.keyids import is_keyid, shown

FORMAT = "lavimo-search-records-1"
RECORDS = "records.sqlite"
SCHEMA = {
    ("table", "info"): "CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ("table", "motions"): "CREATE TABLE motions (row INTEGER PRIMARY KEY, keyid TEXT NOT NULL UNIQUE, "
                          "source TEXT NOT NULL, preview TEXT)",
    ("table", "captions"): "CREATE TABLE captions (row INTEGER PRIMARY KEY, owner INTEGER NOT NULL, "
                           "caption TEXT NOT NULL)",
    ("index", "captions_owner"): "CREATE INDEX captions_owner ON captions (owner, row)",
}
#: SQLite's automatic indexes of the UNIQUE / PRIMARY KEY constraints above (no SQL text of their own)
AUTO_INDEXES = {"sqlite_autoindex_info_1", "sqlite_autoindex_motions_1"}
#: the longest string or blob a row may hold (a source object is ~300 bytes, a caption ~100)
MAX_VALUE_BYTES = 1 << 20
#: virtual-machine steps one statement may take (a lookup takes ~100; reading every record ~20 per row)
MAX_STEPS = 1_000_000
#: how many records a :class:`Records` keeps decoded (LRU)
CACHE = 4096


@dataclass
class Entry:
    keyid: str
    captions: list[str]
    source: dict[str, Any]
    preview: str | None = None


# ------------------------------------------------------------------------------------------------ write
def write_records(path: Path, entries: Iterable[Entry], build_id: str) -> None:
    """``entries`` (in row order) into a new SQLite file at ``path``, atomically (written aside, then renamed)."""
    with atomic_path(path) as tmp:
        if os.path.exists(tmp):
            os.unlink(tmp)
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=OFF")
            con.execute("PRAGMA synchronous=OFF")
            for sql in SCHEMA.values():
                con.execute(sql)
            con.executemany("INSERT INTO info VALUES (?, ?)", [("format", FORMAT), ("build_id", build_id)])
            caps: list[tuple[int, int, str]] = []

            def motions() -> Iterator[tuple[int, str, str, str | None]]:
                for row, e in enumerate(entries):
                    caps.extend((len(caps), row, c) for c in e.captions)
                    yield row, e.keyid, json.dumps(e.source, separators=(",", ":")), e.preview

            con.executemany("INSERT INTO motions VALUES (?, ?, ?, ?)", motions())
            con.executemany("INSERT INTO captions VALUES (?, ?, ?)", caps)
            con.commit()
        finally:
            con.close()


# ------------------------------------------------------------------------------------------------ read
class Records:
    """The records of a stored index, read on demand (module docstring). ``count`` motions and ``captions``
    caption rows, as index.json records them; ``build_id`` must match the file's."""

    def __init__(self, path: Path, count: int, captions: int, build_id: str):
        self.path, self.count, self.captions = path, count, captions
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, Entry] = OrderedDict()
        self._steps = 0
        if not path.is_file():
            raise BadInputError(path, None, "missing (an incomplete index: rebuild it with 'lavimo-search index')")
        uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
        try:
            self._con = sqlite3.connect(uri, uri=True, check_same_thread=False)
            con = self._con
            con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            con.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 4096)
            con.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            con.set_progress_handler(self._progress, 100)
            for pragma in ("trusted_schema=OFF", "cell_size_check=ON", "mmap_size=0", "query_only=ON"):
                con.execute(f"PRAGMA {pragma}")
            self._check_schema()
            info = dict(self._query("SELECT key, value FROM info WHERE key IN ('format', 'build_id')"))
        except sqlite3.Error as exc:
            raise BadInputError(path, None, f"not a readable records file ({exc}): rebuild the index") from exc
        if info.get("format") != FORMAT:
            raise BadInputError(path, "info.format", f"{shown(info.get('format'))}: not a {FORMAT} file")
        if info.get("build_id") != build_id:
            raise BadInputError(path, "info.build_id", "written by another build than index.json's (an interrupted "
                                                       "or mixed build): rebuild the index")

    def _progress(self) -> int:
        self._steps += 100
        return 1 if self._steps > MAX_STEPS else 0  # non-zero aborts the statement

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        self._steps = 0
        return self._con.execute(sql, args).fetchall()

    def _check_schema(self) -> None:
        rows = self._query("SELECT type, name, sql FROM sqlite_master")
        got = {(t, n): s for t, n, s in rows if n not in AUTO_INDEXES or t != "index" or s is not None}
        if got != SCHEMA:
            extra = sorted(set(n for _, n in got) ^ set(n for _, n in SCHEMA)) or [
                n for (t, n), s in SCHEMA.items() if got.get((t, n)) != s]
            raise BadInputError(self.path, "schema", f"not the records schema (differs at {shown(extra)})")

    def _read(self, sql: str, args: tuple, what: str) -> list[tuple]:
        with self._lock:
            try:
                return self._query(sql, args)
            except sqlite3.Error as exc:
                raise BadInputError(self.path, what, f"unreadable ({exc}): rebuild the index") from exc

    # -------------------------------------------------------------------------------------------- the API
    def __len__(self) -> int:
        return self.count

    def entry(self, i: int) -> Entry:
        """Motion row ``i``'s record, checked (module docstring); cached."""
        i = int(i)
        if not 0 <= i < self.count:
            raise IndexError(i)
        with self._lock:
            e = self._cache.get(i)
            if e is not None:
                self._cache.move_to_end(i)
                return e
        what = f"motions[{i}]"
        rows = self._read("SELECT keyid, source, preview FROM motions WHERE row = ?", (i,), what)
        if not rows:
            raise BadInputError(self.path, what, "missing (an edited index: rebuild it)")
        keyid, source, preview = rows[0]
        caps = [c for (c,) in self._read("SELECT caption FROM captions WHERE owner = ? ORDER BY row", (i,), what)]
        e = check_entry(self.path, what, keyid, source, preview, caps)
        with self._lock:
            self._cache[i] = e
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)
        return e

    def position(self, keyid: str) -> int | None:
        if not isinstance(keyid, str):
            return None
        rows = self._read("SELECT row FROM motions WHERE keyid = ?", (keyid,), "motions")
        if not rows:
            return None
        row = rows[0][0]
        if type(row) is not int or not 0 <= row < self.count:
            raise BadInputError(self.path, "motions", f"row {shown(row)} of {shown(keyid)} is outside 0..{self.count - 1}")
        return row

    def caption(self, row: int) -> tuple[str, int]:
        """Caption row ``row`` -> (caption, its motion's row)."""
        row = int(row)
        what = f"captions[{row}]"
        rows = self._read("SELECT caption, owner FROM captions WHERE row = ?", (row,), what)
        if not rows:
            raise BadInputError(self.path, what, "missing (an edited index: rebuild it)")
        caption, owner = rows[0]
        if not isinstance(caption, str) or type(owner) is not int or not 0 <= owner < self.count:
            raise BadInputError(self.path, what, "expected a caption (text) of a motion row in "
                                                 f"0..{self.count - 1}")
        return caption, owner

    def iter_entries(self, chunk: int = 1000) -> Iterator[Entry]:
        """Every record in row order (a rebuild keeps them, ``verify`` checks them), each checked, ``chunk`` rows
        per statement; the rows must be 0..N-1."""
        for a in range(0, self.count, chunk):
            b = min(self.count, a + chunk) - 1
            what = f"motions[{a}..{b}]"
            rows = self._read("SELECT row, keyid, source, preview FROM motions WHERE row BETWEEN ? AND ? "
                              "ORDER BY row", (a, b), what)
            caps: dict[Any, list[Any]] = {}
            for owner, c in self._read("SELECT owner, caption FROM captions WHERE owner BETWEEN ? AND ? "
                                       "ORDER BY row", (a, b), what):
                caps.setdefault(owner, []).append(c)
            if [r[0] for r in rows] != list(range(a, b + 1)):
                raise BadInputError(self.path, what, "rows missing (an edited index: rebuild it)")
            for i, keyid, source, preview in rows:
                e = check_entry(self.path, f"motions[{i}]", keyid, source, preview, caps.get(i, []))
                yield e

    def close(self) -> None:
        self._con.close()


class MemoryRecords:
    """Records held in a list (an index built in memory, or in tests): the same API as :class:`Records`."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.pos = {e.keyid: i for i, e in enumerate(entries)}
        self.first: list[int] = []
        self.owner: list[int] = []
        for i, e in enumerate(entries):
            self.first.append(len(self.owner))
            self.owner.extend([i] * len(e.captions))
        self.count, self.captions = len(entries), len(self.owner)

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, i: int) -> Entry:
        return self.entries[i]

    def position(self, keyid: str) -> int | None:
        return self.pos.get(keyid)

    def caption(self, row: int) -> tuple[str, int]:
        owner = self.owner[row]
        return self.entries[owner].captions[row - self.first[owner]], owner

    def iter_entries(self) -> Iterator[Entry]:
        return iter(self.entries)


def check_entry(path: Path | str, what: str, keyid: Any, source: Any, preview: Any, captions: list[Any]) -> Entry:
    """One record, checked: keyid a name, source a JSON object (text, bounded parse), preview text or NULL,
    captions text. BadInputError(path, what) otherwise."""
    if not is_keyid(keyid):
        raise BadInputError(path, what, f"keyid {shown(keyid)} is not a name (a keyid)")
    if not isinstance(source, str):
        raise BadInputError(path, what, "source is not a JSON object")
    obj = loads_bounded(source, path, what)
    if not isinstance(obj, dict):
        raise BadInputError(path, what, "source is not a JSON object")
    if not isinstance(preview, (str, type(None))) or not all(isinstance(c, str) for c in captions):
        raise BadInputError(path, what, "expected preview (text or NULL) and captions (text)")
    return Entry(keyid, list(captions), obj, preview)

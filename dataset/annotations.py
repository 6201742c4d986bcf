"""Reading motion-text annotations into :class:`~lavimo.dataset.clip.Clip` lists.

Two source layouts are read (see the README):

* **HumanML3D directory**: ``index.csv`` (``source_path,start_frame,end_frame,new_name``; paths as
  ``./pose_data/<AMASS path>.npy``, frames at 20 fps, ``end_frame == -1`` = to the end),
  ``texts/<keyid>.txt`` (lines ``caption#tokens#start#end``; ``0.0#0.0`` = the whole clip, otherwise
  seconds inside the clip) and split files ``splits/<split>.txt`` or ``<split>.txt`` at the root.
  ``M``-prefixed ids are HumanML3D's mirrored copies: same AMASS file and frames as the original row,
  ``mirrored=True``, their own (left/right-swapped) texts. An explicit ``M...`` row in the index wins.
* **TMR-style** ``annotations.json`` (KIT-ML, HumanML3D, BABEL as released by TMR) + ``splits/*.txt``:
  ``{keyid: {path, duration, annotations: [{seg_id, text, start, end}]}}`` where ``path`` is the AMASS
  path without extension (``M/`` prefix = mirrored) and ``start``/``end`` are seconds in the AMASS
  sequence. A clip spans ``[min start, max end]`` of its annotations (time rule, 20 fps); its texts'
  times are made relative to the clip, and a text covering the whole clip gets ``start = end = None``.

As the reference loaders (HumanML3D's ``Text2MotionDatasetV2``, TMR's ``TextMotionDataset``; docs/data.md, "As
HumanML3D's and TMR's loaders read them"): a NaN time tag reads as 0.0, a caption whose end is not after its start
is dropped, and - by default for HumanML3D / KIT-ML / BABEL sources, never the synthetic corpus - HumanML3D's
``40 <= feature rows < 200`` and TMR's train/val ``2-10 s`` length rules apply; all counted in the report.

Entries that cannot become clips are skipped and reported, never fatal: HumanML3D rows whose motion is
not in AMASS (HumanAct12), ids listed in a split file but absent from the index, and - when an AMASS
root is given - clips whose AMASS file is missing or bad. Clips **without texts are kept** (with
``texts == ()``, so videos can still be rendered for them) and listed in ``report.no_texts``; callers
that need texts (shards, training) filter them out.

Untrusted input (docs/security.md, "Annotations"); every rule is per item, the rest still loads:

* **Keyids are names, never paths**: every keyid (``annotations.json`` keys, ``index.csv`` ``new_name`` and split
  lines, a ``.npy`` suffix dropped; generated ``M`` copies) must follow :data:`lavimo.core.keyids.KEYID_RULE`, else
  it is skipped as ``bad_keyid`` (value, file and line quoted); ``texts/<keyid>.txt`` is only opened for a valid
  keyid (:func:`lavimo.core.keyids.child_path`).
* **AMASS paths are relative paths under the AMASS root** (``source_path``, ``path``; ``\\`` read as ``/``):
  :func:`amass_path_problem` refuses the rest as ``bad_path``.
* **Duplicates are decided, never left to dict order**: identical ``annotations.json`` members / ``index.csv`` rows
  are kept once (``report.duplicates``, ``duplicate_kept``), different ones skip the keyid as ``duplicate_keyid``
  naming both places; an id repeated in a split file is kept once (``report.duplicates``), one in two of
  train/val/test is ``duplicate_keyid``; duplicate fields inside one entry or annotation make it ``bad_entry``.
* **One bad annotation drops its whole entry** (the clip's span depends on all of them): a ``text`` that is not a
  string, ``start``/``end`` not finite numbers with ``0 <= start < end``, or not an object -> ``bad_entry``.
* **Rows, not files, fail** in ``index.csv``: missing columns, extra non-empty fields, a non-integer frame or an
  empty/invalid ``new_name`` fail that row alone, with its line and column (keyed ``index.csv line N`` if unnamed).
* **Encodings**: UTF-8 with an optional BOM, LF / CRLF / CR line ends. Invalid UTF-8 in ``index.csv``,
  ``annotations.json`` or a split file, a malformed index header, unreadable or too deeply nested JSON, or a
  top level that is not an object is a whole-file :class:`BadInputError` naming the file (and line); in
  ``texts/<keyid>.txt`` it skips that keyid as ``bad_texts``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from lavimo.dataset.amass import amass_file, read_amass_header
from lavimo.dataset.clip import Clip, FrameSpec, Text
from lavimo.core.errors import BadInputError
from lavimo.dataset.frames import HUMANML3D_FPS
from lavimo.core.keyids import check_keyid, child_path, is_keyid, shown

log = logging.getLogger(__name__)

__all__ = ["Clip", "ClipSet", "FrameSpec", "LoadReport", "Text", "load_clips", "humanml3d_amass_path",
           "parse_humanml3d_text", "amass_path_problem", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "val", "test")
NOT_IN_AMASS = ("humanact12",)  # HumanML3D sources that are not AMASS motions
# A TMR text within this many seconds of both clip bounds counts as covering the whole clip.
_WHOLE_CLIP_TOL = 1e-3
INDEX_COLUMNS = ("source_path", "start_frame", "end_frame", "new_name")
#: HumanML3D's motion-length rule (text-to-motion ``Text2MotionDatasetV2``): a motion, and a caption's segment, is
#: used when ``min <= feature rows < HUMANML3D_MAX_ROWS`` (rows at 20 fps; a clip of N frames has N - 1 rows);
#: min is 40 ("t2m") or 24 for KIT-ML
HUMANML3D_MIN_ROWS = {"kitml": 24}
HUMANML3D_DEFAULT_MIN_ROWS = 40
HUMANML3D_MAX_ROWS = 200
#: TMR's annotation-length rule (``src/data/text_motion.py``): outside test splits, an annotation is kept when
#: ``min <= end - start <= max`` seconds, and an entry left without annotations is dropped
TMR_SECONDS = (2.0, 10.0)
#: the datasets whose reference loader applies the length rule of a layout, i.e. where ``load_clips`` applies it by
#: default (``length_filter=None``); a dataset is named by its directory, as :func:`_dataset_name` says
LENGTH_FILTER_DATASETS = {"humanml3d": ("humanml3d", "kitml"), "tmr": ("humanml3d", "kitml", "babel")}
#: ``--length-filter`` of render-amass and build-shards -> ``load_clips(length_filter=...)``
LENGTH_FILTER_MODES = {"auto": None, "on": True, "off": False}
#: ``--dataset`` of render-amass and build-shards -> ``load_clips(dataset=...)`` ("auto": from the directory name)
DATASET_CHOICES = ("auto", "humanml3d", "kitml", "babel", "other")
_FRAME_RE = re.compile(r"-?[0-9]{1,12}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


#: longest reason kept for one keyid: later repeats of a keyid (a file may repeat a row 100 000 times) are not
#: appended past it, so recording them stays linear in the number of rows
_MAX_REASON_CHARS = 1000


def _more(reason: str, extra: str) -> str:
    """``reason; extra``, or ``reason`` ending in ``; ...`` once it is :data:`_MAX_REASON_CHARS` long."""
    if len(reason) < _MAX_REASON_CHARS:
        return f"{reason}; {extra}"
    return reason if reason.endswith("; ...") else f"{reason}; ..."


@dataclass
class LoadReport:
    """What :func:`load_clips` did.

    Attributes:
        source: the annotation source read; layout: "humanml3d" | "tmr"; split: the split asked for.
        requested: ids considered (split file lines, or all entries).
        loaded: clips returned.
        skipped: keyid -> reason for every entry that did not become a clip (one outcome per keyid; an
            index.csv row without a usable name is keyed ``index.csv line N``).
        no_texts: keyids of returned clips that have no texts (kept, see module docstring).
        duplicates: keyid -> where, for exact duplicates that were kept once (identical annotations.json
            members or index.csv rows, an id repeated in one split file). Conflicting duplicates are in
            ``skipped`` as "duplicate_keyid".
        counts: number of entries per outcome ("loaded", "no_texts", "not_in_amass", "unknown_id",
            "bad_entry", "bad_keyid", "bad_path", "bad_texts", "duplicate_keyid", "missing_amass_file",
            "bad_amass_file", "mirrored_excluded", "length_filter"), plus "duplicate_kept" (entries of
            ``duplicates``) and the number of captions dropped from entries: "caption_bad_span" (HumanML3D
            end not after start), "caption_length_filter".
        captions_dropped: keyid -> reason, for entries that lost captions (the entry itself may still load).
        length_filter: the reference loader's length rule applied (see :func:`load_clips`), or None.
    """

    source: str
    layout: str
    split: str | None
    requested: int = 0
    loaded: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    no_texts: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    duplicates: dict[str, str] = field(default_factory=dict)
    captions_dropped: dict[str, str] = field(default_factory=dict)
    length_filter: str | None = None

    def skip(self, keyid: str, kind: str, reason: str) -> None:
        """Record that ``keyid`` did not become a clip. A keyid has one outcome: a second call for the same
        keyid appends its reason and is not counted again."""
        if keyid in self.skipped:
            self.skipped[keyid] = _more(self.skipped[keyid], reason)
            return
        self.skipped[keyid] = reason
        self.counts[kind] += 1

    def duplicate(self, keyid: str, reason: str) -> None:
        """Record an exact duplicate that was kept once."""
        if keyid in self.duplicates:
            self.duplicates[keyid] = _more(self.duplicates[keyid], reason)
            return
        self.duplicates[keyid] = reason
        self.counts["duplicate_kept"] += 1

    def drop_captions(self, keyid: str, kind: str, n: int, reason: str) -> None:
        """Record that ``n`` captions of ``keyid`` were dropped (counted per caption under ``kind``)."""
        self.counts[kind] += n
        old = self.captions_dropped.get(keyid)
        self.captions_dropped[keyid] = reason if old is None else _more(old, reason)

    def to_dict(self) -> dict:
        d = {"source": self.source, "layout": self.layout, "split": self.split,
             "requested": self.requested, "loaded": self.loaded, "counts": dict(sorted(self.counts.items())),
             "no_texts": list(self.no_texts), "skipped": dict(self.skipped),
             "duplicates": dict(self.duplicates)}
        if self.captions_dropped:
            d["captions_dropped"] = dict(self.captions_dropped)
        if self.length_filter:
            d["length_filter"] = self.length_filter
        return d

    def summary(self) -> str:
        """One line: ``loaded N of M (kind: n, ...)``."""
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()) if k != "loaded")
        return (f"{self.source} [{self.layout}, split={self.split or 'all'}]: loaded {self.loaded} of "
                f"{self.requested}" + (f" ({parts})" if parts else "")
                + (f" [length filter: {self.length_filter}]" if self.length_filter else ""))


class ClipSet(list):
    """A list of :class:`Clip` with the :class:`LoadReport` of how it was read (``.report``)."""

    def __init__(self, clips=(), report: LoadReport | None = None):
        super().__init__(clips)
        self.report = report

    def by_keyid(self) -> dict[str, Clip]:
        return {c.keyid: c for c in self}


# -- helpers -------------------------------------------------------------------------------------------------


def _keyid_problem(value: object) -> str | None:
    """None for a valid keyid, else the message of :func:`check_keyid` (value quoted, rule stated)."""
    if is_keyid(value):
        return None
    try:
        check_keyid(value, None, None)
    except BadInputError as e:
        return e.message
    return None  # pragma: no cover - check_keyid agrees with is_keyid


def amass_path_problem(path: str) -> str | None:
    """Why ``path`` is not a plain relative path under the AMASS root, or None when it is.

    ``path`` is as stored in a clip (``/`` separators; readers turn ``\\`` into ``/`` first). Refused: empty,
    absolute (``/x``, ``//host/x``, ``C:...``), an empty, ``.`` or ``..`` component, a control character
    (NUL included), text that is not encodable as UTF-8 (lone surrogates).
    """
    if not isinstance(path, str) or not path:
        return "is empty"
    if _CONTROL_RE.search(path):
        return "contains a control character"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if path.startswith("/") or _DRIVE_RE.match(path):
        return "is absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "has an empty, '.' or '..' component"
    return None


def _path_message(raw: str, problem: str) -> str:
    return f"{shown(raw)} {problem} (AMASS paths must be relative paths under the AMASS root)"


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 bytes (a leading BOM dropped) -> str; invalid UTF-8 -> BadInputError naming file and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadInputError(path, f"line {line}", f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                                                  f"{e.start}); the file must be UTF-8") from None


def _read_text(path: Path) -> str:
    """The whole file as text (see :func:`_decode`); unreadable -> BadInputError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInputError(path, None, f"cannot read ({e.strerror or e})") from None
    return _decode(path, data)


def _lines(text: str) -> list[str]:
    """Split on LF, CRLF or CR (and nothing else)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _display(path: Path) -> str:
    """``splits/train.txt`` or ``train.txt``: short name of a file for reasons."""
    return f"splits/{path.name}" if path.parent.name == "splits" else path.name


def humanml3d_amass_path(source_path: str) -> str:
    """index.csv's ``./pose_data/KIT/3/x_poses.npy`` -> AMASS-root-relative ``KIT/3/x_poses.npz``.

    Only rewrites; :func:`amass_path_problem` says whether the result is acceptable.
    """
    p = source_path.strip().replace("\\", "/")
    for prefix in ("./", "pose_data/"):
        if p.startswith(prefix):
            p = p[len(prefix):]
    if p.endswith(".npy"):
        p = p[:-4] + ".npz"
    return p


def _parse_text_line(line: str) -> tuple[Text | None, bool]:
    """One ``caption#tokens#start#end`` line -> (Text or None, dropped). ``dropped``: the caption has a time span
    that HumanML3D's loader never pairs with motion (see :func:`parse_humanml3d_text`)."""
    line = line.strip()
    if not line:
        return None, False
    parts = line.rsplit("#", 3)
    if len(parts) < 4:  # caption only, or caption#tokens
        caption = parts[0]
        tokens = parts[1] if len(parts) > 1 else None
        return Text(caption.strip(), None, None, tokens or None), False
    caption, tokens, s, e = parts
    try:
        start, end = float(s), float(e)
    except ValueError:
        start = end = 0.0
    # HumanML3D (Text2MotionDatasetV2): a NaN tag reads as 0.0, each on its own; 0.0#0.0 is the whole clip
    start, end = (0.0 if math.isnan(start) else start), (0.0 if math.isnan(end) else end)
    if start == 0.0 and end == 0.0:
        return Text(caption.strip(), None, None, tokens or None), False
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        return None, True  # motion[int(f*20):int(t*20)] is empty (or int() fails): HumanML3D drops the caption
    return Text(caption.strip(), start, end, tokens or None), False


def parse_humanml3d_text(line: str) -> Text | None:
    """One ``caption#tokens#start#end`` line -> :class:`Text`; None for a blank line or a dropped caption.

    ``start``/``end`` are seconds inside the clip. As HumanML3D's ``Text2MotionDatasetV2``: a NaN tag is read as
    0.0 (each tag on its own), ``0.0#0.0`` = the whole clip; a span whose end is not after its start (or with an
    infinite tag) selects no motion and the caption is dropped. Unparsable times = whole clip.
    """
    return _parse_text_line(line)[0]


# A requested id and where it came from ("splits/train.txt line 3", "index.csv line 5: new_name", ...).
_Ref = tuple[str, str]


def _read_split(path: Path, report: LoadReport | None = None) -> list[_Ref]:
    """A split file -> ``[(id, where)]`` in file order, each id once (a ``.npy`` suffix dropped).

    Ids are not validated here (the loaders report invalid ones per item). A repeated id is kept at its
    first line and, when ``report`` is given, recorded in ``report.duplicates``.
    """
    name = _display(path)
    first: dict[str, int] = {}
    out: list[_Ref] = []
    for n, line in enumerate(_lines(_read_text(path)), start=1):
        s = line.strip()
        if not s:
            continue
        if s.endswith(".npy"):
            s = s[:-4]
        if s in first:
            if report is not None:
                report.duplicate(s, f"{name} lists it on lines {first[s]} and {n}; kept once")
            continue
        first[s] = n
        out.append((s, f"{name} line {n}"))
    return out


def _split_file(root: Path, name: str) -> Path | None:
    for d in (root / "splits", root):
        cand = child_path(d, f"{name}.txt")  # a split name is one file name, never a path
        if cand.is_file():
            return cand
    return None


def _membership(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """From whichever of train/val/test split files exist: (keyid -> split, keyid -> conflict reason).

    An id listed in two of them is a conflict: it keeps the first split in ``membership`` and the reason
    names both places.
    """
    member: dict[str, str] = {}
    where: dict[str, str] = {}
    conflicts: dict[str, str] = {}
    for name in SPLIT_NAMES:
        f = _split_file(root, name)
        if f is None:
            continue
        for k, w in _read_split(f):
            if k in member:
                conflicts.setdefault(k, f"listed in {where[k]} and {w}; its split is ambiguous")
            else:
                member[k], where[k] = name, w
    return member, conflicts


def _dataset_name(root: Path) -> str:
    if (root / "synth.json").is_file() or (root.parent / "synth.json").is_file():
        return "synthetic"
    name = root.name.lower().replace("-", "").replace("_", "")
    for known in ("humanml3d", "kitml", "babel"):
        if known in name:
            return known
    return root.name


def _requested_ids(root: Path, split: str | None, all_ids: list[_Ref], report: LoadReport) -> list[_Ref]:
    if split is None or split == "all":
        f = _split_file(root, "all")
        return _read_split(f, report) if f is not None else list(all_ids)
    f = _split_file(root, split)
    if f is None:
        raise BadInputError(root, "split", f"no split file {split}.txt (looked in splits/ and the root)")
    return _read_split(f, report)


# -- HumanML3D -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One usable index.csv row."""

    line: int
    source_path: str
    amass_path: str
    start: int
    end: int


@dataclass
class _Index:
    """index.csv read row by row.

    rows: keyid -> usable row; failed: key -> (kind, reason) for rows that cannot become clips (key =
    their ``new_name``, or ``index.csv line N`` when they have none); order: every key once, in file order,
    with where it came from (the ids requested when there is no split file).
    """

    rows: dict[str, _Row] = field(default_factory=dict)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    order: list[_Ref] = field(default_factory=list)


def _parse_index_row(fields: list[str], col: dict[str, int], width: int, line: int, where: str,
                     ) -> tuple[_Row | None, tuple[str, str] | None]:
    """One data row -> (row, None) or (None, (kind, reason))."""
    missing = [c for c in INDEX_COLUMNS if col[c] >= len(fields)]
    if missing:
        return None, ("bad_entry", f"{where}: missing column{'s' if len(missing) > 1 else ''} "
                                   f"{', '.join(missing)} (the row has {len(fields)} of {width} fields)")
    if any(f.strip() for f in fields[width:]):
        return None, ("bad_entry", f"{where}: {len(fields)} fields, the header has {width} (an unquoted ','?)")
    name = fields[col["new_name"]].strip()
    name = name[:-4] if name.endswith(".npy") else name
    problem = _keyid_problem(name)
    if problem is not None:
        return None, ("bad_keyid", f"{where}: new_name: {problem}")
    frames = []
    for c in ("start_frame", "end_frame"):
        v = fields[col[c]].strip()
        if not _FRAME_RE.fullmatch(v):
            return None, ("bad_entry", f"{where}: {c}: {shown(v)} is not an integer frame number")
        frames.append(int(v))
    source = fields[col["source_path"]]
    amass_path = humanml3d_amass_path(source)
    problem = amass_path_problem(amass_path)
    if problem is not None:
        return None, ("bad_path", f"{where}: source_path: {_path_message(source.strip(), problem)}")
    return _Row(line, source.strip(), amass_path, frames[0], frames[1]), None


def _read_index(index: Path, report: LoadReport) -> _Index:
    """Read index.csv (UTF-8, optional BOM, LF or CRLF): per-row problems go to ``_Index.failed``.

    Raises:
        BadInputError: unreadable file, invalid UTF-8, CSV syntax the reader cannot get past, or a header
            without the four columns.
    """
    name = index.name
    reader = csv.reader(io.StringIO(_read_text(index), newline=""))
    out = _Index()
    seen: dict[str, tuple[int, tuple[str, ...]]] = {}  # valid keyid -> (first line, its stripped fields)
    try:
        header = [h.strip() for h in next(reader, None) or []]
        need = set(INDEX_COLUMNS)
        if not need <= set(header) or any(header.count(c) > 1 for c in INDEX_COLUMNS):
            raise BadInputError(index, "header", f"expected the columns {list(INDEX_COLUMNS)} once each, got "
                                                 f"{shown(header, 200)}")
        col = {c: header.index(c) for c in INDEX_COLUMNS}
        for fields in reader:
            if not fields:
                continue
            n = reader.line_num
            where = f"{name} line {n}"
            raw_name = fields[col["new_name"]].strip() if col["new_name"] < len(fields) else ""
            raw_name = raw_name[:-4] if raw_name.endswith(".npy") else raw_name
            key = raw_name or where
            stripped = [raw_name if i == col["new_name"] else f.strip() for i, f in enumerate(fields)]
            while len(stripped) > len(header) and not stripped[-1]:  # trailing empty fields are no difference
                stripped.pop()
            if is_keyid(key) and key in seen:  # the same keyid again: decide, never let the later row win
                first, first_fields = seen[key]
                prev = out.failed.get(key)
                if prev is not None and prev[0] == "duplicate_keyid":
                    out.failed[key] = (prev[0], _more(prev[1], f"line {n} too"))
                elif tuple(stripped) == first_fields:
                    report.duplicate(key, f"{name} lines {first} and {n} are identical rows; kept once")
                else:
                    out.rows.pop(key, None)
                    out.failed[key] = ("duplicate_keyid", f"{name} lines {first} and {n} both define it, with "
                                                          f"different values; skipped")
                continue
            row, err = _parse_index_row(fields, col, len(header), n, where)
            if is_keyid(key):
                seen[key] = (n, tuple(stripped))
            elif key in out.failed:  # two rows with the same invalid name: one outcome, both lines named
                kind, reason = out.failed[key]
                out.failed[key] = (kind, _more(reason, f"again on line {n}"))
                continue
            out.order.append((key, where + (": new_name" if key == raw_name else "")))
            if row is not None:
                out.rows[key] = row
            else:
                out.failed[key] = err
    except csv.Error as e:
        raise BadInputError(index, f"line {reader.line_num}", f"unreadable CSV ({e})") from None
    if out.failed:
        log.warning("%s: %d row(s) cannot be used (see the load report)", index, len(out.failed))
    return out


def _humanml3d_texts(texts_dir: Path | None, keyid: str) -> tuple[tuple[Text, ...], int]:
    """Captions of ``texts/<keyid>.txt`` (``keyid`` already valid; () when there is no such file) and the number
    of captions dropped for their time span (:func:`parse_humanml3d_text`).

    Raises:
        BadInputError: the file exists but is unreadable or not UTF-8.
    """
    if texts_dir is None:
        return (), 0
    f = child_path(texts_dir, f"{check_keyid(keyid, texts_dir)}.txt")
    if not f.is_file():
        return (), 0
    out = [_parse_text_line(line) for line in _lines(_read_text(f))]
    return tuple(t for t, _ in out if t is not None and t.caption), sum(d for _, d in out)


def _load_humanml3d(root: Path, split: str | None, mirrored: bool, report: LoadReport) -> list[Clip]:
    index = root / "index.csv"
    idx = _read_index(index, report)
    rows, failed = idx.rows, idx.failed
    texts_dir = root / "texts" if (root / "texts").is_dir() else None
    if texts_dir is None:
        log.info("%s: no texts/ directory; clips will have no texts", root)
    all_ids = list(idx.order)
    if mirrored:
        listed = {k for k, _ in idx.order}
        all_ids += [(f"M{k}", f"{w} (mirrored copy)") for k, w in idx.order
                    if is_keyid(k) and f"M{k}" not in listed]
    ids = _requested_ids(root, split, all_ids, report)
    member, conflicts = _membership(root)
    dataset = _dataset_name(root)
    known = rows.keys() | failed.keys()
    clips = []
    for keyid, where in ids:
        if not is_keyid(keyid):
            if keyid in failed:  # an index row without a usable name
                report.skip(keyid, *failed[keyid])
            else:
                report.skip(keyid, "bad_keyid", f"{where}: {_keyid_problem(keyid)}")
            continue
        is_m = keyid.startswith("M") and keyid[1:] in known and keyid not in known
        if is_m and not mirrored:
            report.counts["mirrored_excluded"] += 1
            continue
        if keyid in conflicts:
            report.skip(keyid, "duplicate_keyid", conflicts[keyid])
            continue
        base = keyid[1:] if is_m else keyid
        if base in failed:
            report.skip(keyid, *failed[base])
            continue
        if base not in rows:
            report.skip(keyid, "unknown_id", f"id not in {index.name}")
            continue
        row = rows[base]
        if row.amass_path.split("/", 1)[0] in NOT_IN_AMASS:
            report.skip(keyid, "not_in_amass", f"motion not in AMASS ({row.source_path})")
            continue
        start, end = row.start, row.end
        if start < 0 or (end != -1 and end <= start):
            report.skip(keyid, "bad_entry", f"{index.name} line {row.line}: bad frame range [{start}, {end})")
            continue
        try:
            texts, dropped = _humanml3d_texts(texts_dir, keyid)
        except BadInputError as e:
            report.skip(keyid, "bad_texts", f"texts/{keyid}.txt: {e.reason}")
            continue
        if dropped:
            report.drop_captions(keyid, "caption_bad_span", dropped, f"texts/{keyid}.txt: {dropped} caption(s) "
                                 "whose end is not after its start (HumanML3D drops them)")
        spec = FrameSpec("humanml3d", float(start), None if end == -1 else float(end), HUMANML3D_FPS)
        clips.append(Clip(keyid=keyid, amass_path=row.amass_path, frame_spec=spec, fps=HUMANML3D_FPS,
                          texts=texts, split=member.get(keyid, split), mirrored=is_m, dataset=dataset))
    return clips


# -- TMR annotations.json ------------------------------------------------------------------------------------


class _JsonObject(dict):
    """A JSON object that remembers repeated member names: ``dups = {name: [(member number, value), ...]}``
    (1-based member numbers in file order, first occurrence included). The dict keeps the first value."""

    dups: dict = {}  # shared empty default, replaced (never mutated) when an object has repeats


def _json_object(pairs: list[tuple[str, object]]) -> _JsonObject:
    obj = _JsonObject()
    dups: dict[str, list[tuple[int, object]]] | None = None
    for i, (k, v) in enumerate(pairs, start=1):
        if k in obj:
            if dups is None:
                dups = {}
            if k not in dups:
                first = next(j for j, (kk, _) in enumerate(pairs, start=1) if kk == k)
                dups[k] = [(first, obj[k])]
            dups[k].append((i, v))
        else:
            obj[k] = v
    if dups:
        obj.dups = dups
    return obj


def _entry_error(kind: str, src: Path, field_: str, message: str) -> BadInputError:
    e = BadInputError(src, field_, message)
    e.kind = kind  # type: ignore[attr-defined]
    return e


def _check_no_dups(obj: dict, src: Path, where: str) -> None:
    """BadInputError(src, where) when the JSON object ``obj`` repeats a member name."""
    if getattr(obj, "dups", None):
        name, occ = next(iter(obj.dups.items()))
        raise BadInputError(src, where, f"field {name!r} appears {len(occ)} times")


def _seconds(value: object) -> float:
    """A JSON time: a number (or a numeric string, as before); bools, null, lists, objects refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _tmr_clip(keyid: str, entry: object, src: Path, split: str | None, dataset: str,
              seconds: tuple[float, float] | None = None) -> tuple[Clip, int]:
    """One annotations.json entry -> (Clip, number of annotations dropped by ``seconds``).

    ``seconds``: TMR's ``(min, max)`` annotation length, applied before the clip's span is taken (None: keep
    all). Raises BadInputError (``.kind`` "bad_path", "bad_entry", or "length_filter" when no annotation is
    left)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise BadInputError(src, keyid, "entry must be an object with a string 'path'")
    _check_no_dups(entry, src, keyid)
    raw = entry["path"].strip()
    path = raw.replace("\\", "/")
    is_m = path.startswith("M/")
    if is_m:
        path = path[2:]
    amass_path = path if path.endswith(".npz") else path + ".npz"
    problem = amass_path_problem(path)
    if problem is not None:
        raise _entry_error("bad_path", src, f"{keyid}.path", _path_message(raw, problem))
    anns = entry.get("annotations") or []
    if not isinstance(anns, list):
        raise BadInputError(src, f"{keyid}.annotations", "must be a list")
    segs = []
    for j, a in enumerate(anns):
        where = f"{keyid}.annotations[{j}]"
        if not isinstance(a, dict):
            raise BadInputError(src, where, f"must be an object, got {type(a).__name__}")
        _check_no_dups(a, src, where)
        if "text" not in a or not isinstance(a["text"], str):
            got = type(a["text"]).__name__ if "text" in a else "nothing"
            raise BadInputError(src, f"{where}.text", f"expected a string, got {got}")
        text = a["text"].strip()
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInputError(src, f"{where}.text", "not valid Unicode (lone surrogate)") from None
        try:
            s, e = _seconds(a["start"]), _seconds(a["end"])
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise BadInputError(src, where, f"needs text, start, end ({err})") from err
        if not (math.isfinite(s) and math.isfinite(e)) or e <= s or s < 0:
            raise BadInputError(src, where, f"bad time span [{s}, {e}]")
        if text:
            segs.append((text, s, e))
    kept = segs if seconds is None else [x for x in segs if seconds[0] <= x[2] - x[1] <= seconds[1]]
    if segs and not kept:
        raise _entry_error("length_filter", src, f"{keyid}.annotations", f"no annotation of {seconds[0]:g} to "
                           f"{seconds[1]:g} s (TMR's length filter outside test splits)")
    dropped, segs = len(segs) - len(kept), kept
    if segs:
        c0, c1 = min(s for _, s, _ in segs), max(e for _, _, e in segs)
    else:
        c0 = 0.0
        dur = entry.get("duration")
        try:
            d = _seconds(dur) if isinstance(dur, (int, float)) else None
        except (TypeError, ValueError, OverflowError):
            d = None
        c1 = d if d is not None and math.isfinite(d) and d > 0 else None
    texts = []
    for text, s, e in segs:
        if abs(s - c0) <= _WHOLE_CLIP_TOL and c1 is not None and abs(e - c1) <= _WHOLE_CLIP_TOL:
            texts.append(Text(text))
        else:
            texts.append(Text(text, round(s - c0, 6), round(e - c0, 6)))
    spec = FrameSpec("time", c0, c1, HUMANML3D_FPS)
    return Clip(keyid=keyid, amass_path=amass_path, frame_spec=spec, fps=HUMANML3D_FPS, texts=tuple(texts),
                split=split, mirrored=is_m, dataset=dataset), dropped


def _read_json(json_path: Path) -> dict:
    """annotations.json -> its top-level object (a :class:`_JsonObject`)."""
    text = _read_text(json_path)
    try:
        data = json.loads(text, object_pairs_hook=_json_object)
    except RecursionError:
        raise BadInputError(json_path, None, "unreadable JSON (nested too deeply)") from None
    except ValueError as e:
        raise BadInputError(json_path, None, f"unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadInputError(json_path, None, "expected an object {keyid: entry}")
    return data


def _load_tmr(json_path: Path, split: str | None, mirrored: bool, length_filter: bool | None,
              report: LoadReport, dataset: str | None = None) -> list[Clip]:
    root = json_path.parent
    data = _read_json(json_path)
    name = json_path.name
    conflicts: dict[str, str] = {}
    for k, occ in getattr(data, "dups", {}).items():
        members = " and ".join(f"#{i}" for i, _ in occ)
        if all(v == occ[0][1] for _, v in occ[1:]):
            report.duplicate(k, f"{name} members {members} are identical entries; kept once")
        else:
            conflicts[k] = f"{name} members {members} all define it, with different entries; skipped"
    ids = _requested_ids(root, split, [(k, f"{name}: top-level key") for k in data], report)
    member, split_conflicts = _membership(root)
    dataset = dataset or _dataset_name(root)
    if _filters(length_filter, "tmr", dataset):
        report.length_filter = f"TMR: train/val annotations of {TMR_SECONDS[0]:g} to {TMR_SECONDS[1]:g} s"
    clips = []
    for keyid, where in ids:
        problem = _keyid_problem(keyid)
        if problem is not None:
            report.skip(keyid, "bad_keyid", f"{where}: {problem}")
            continue
        if keyid not in data:
            report.skip(keyid, "unknown_id", f"id not in {name}")
            continue
        if keyid in conflicts or keyid in split_conflicts:
            report.skip(keyid, "duplicate_keyid", conflicts.get(keyid) or split_conflicts[keyid])
            continue
        clip_split = member.get(keyid, split)
        filtered = report.length_filter is not None and clip_split is not None and "test" not in clip_split
        try:
            clip, dropped = _tmr_clip(keyid, data[keyid], json_path, clip_split, dataset,
                                      TMR_SECONDS if filtered else None)
        except BadInputError as e:
            report.skip(keyid, getattr(e, "kind", "bad_entry"), f"{name}: {e.reason}")
            continue
        if clip.mirrored and not mirrored:
            report.counts["mirrored_excluded"] += 1
            continue
        if clip.amass_path.split("/", 1)[0] in NOT_IN_AMASS:
            report.skip(keyid, "not_in_amass", f"motion not in AMASS ({clip.amass_path})")
            continue
        if dropped:
            report.drop_captions(keyid, "caption_length_filter", dropped, f"{name}: {dropped} annotation(s) "
                                 f"outside {TMR_SECONDS[0]:g} to {TMR_SECONDS[1]:g} s (TMR's length filter)")
        clips.append(clip)
    return clips


# -- AMASS resolution ----------------------------------------------------------------------------------------


def _resolve(clips: list[Clip], amass_root: Path, report: LoadReport) -> list[Clip]:
    headers: dict[str, tuple[str, int, float] | BadInputError] = {}
    for ap in tqdm(sorted({c.amass_path for c in clips}), desc="AMASS headers", unit="file", disable=None):
        real, p = amass_file(amass_root, ap)
        try:
            n, fps = read_amass_header(p)
            headers[ap] = (real, n, fps)
        except BadInputError as e:
            headers[ap] = e
    out = []
    for c in clips:
        h = headers[c.amass_path]
        if isinstance(h, BadInputError):
            if h.field is None and h.message == "file not found":
                report.skip(c.keyid, "missing_amass_file", f"missing AMASS file {c.amass_path}")
            else:
                report.skip(c.keyid, "bad_amass_file", f"bad AMASS file {c.amass_path}: {h.reason}")
            continue
        real, n, fps = h
        try:
            rc = c.resolve(n, fps)
        except ValueError as e:
            report.skip(c.keyid, "bad_entry", str(e))
            continue
        if real != c.amass_path:
            rc = replace(rc, amass_path=real)
        if rc.num_frames == 0:
            report.skip(c.keyid, "bad_entry", f"selects no frames of {c.amass_path} ({n} frames at {fps:g} fps)")
            continue
        out.append(rc)
    return out


def _filters(length_filter: bool | None, layout: str, dataset: str) -> bool:
    """Whether the length rule of ``layout`` applies: ``length_filter``, or by default (None) for the datasets of
    :data:`LENGTH_FILTER_DATASETS`."""
    return dataset in LENGTH_FILTER_DATASETS[layout] if length_filter is None else length_filter


def _feature_rows(clip: Clip) -> int | None:
    """HumanML3D feature rows of a clip (its 20-fps frames - 1): from its resolved frames, else from index.csv's
    frame range; None when unknown (``end_frame == -1`` before resolution)."""
    if clip.num_frames is not None:
        return clip.num_frames - 1
    spec = clip.frame_spec
    if spec.rule == "humanml3d" and spec.end is not None:
        return int(spec.end) - int(spec.start) - 1
    return None


def _humanml3d_length_filter(clips: list[Clip], dataset: str, report: LoadReport) -> list[Clip]:
    """HumanML3D's motion-length rule (:data:`HUMANML3D_MIN_ROWS`): a clip outside ``[min, 200)`` feature rows is
    skipped ("length_filter"); a segment caption whose rows ``motion[int(start*20):int(end*20)]`` fall outside it
    is dropped ("caption_length_filter"). A clip of unknown length is kept."""
    lo, hi = HUMANML3D_MIN_ROWS.get(dataset, HUMANML3D_DEFAULT_MIN_ROWS), HUMANML3D_MAX_ROWS
    report.length_filter = f"HumanML3D: {lo} <= feature rows < {hi} at 20 fps"
    out = []
    for c in clips:
        rows = _feature_rows(c)
        if rows is not None and not lo <= rows < hi:
            report.skip(c.keyid, "length_filter", f"{rows} feature rows at 20 fps, outside HumanML3D's [{lo}, {hi})")
            continue

        def seg_rows(t: Text) -> int:
            end = int(t.end * HUMANML3D_FPS)
            return max(0, (end if rows is None else min(end, rows)) - int(t.start * HUMANML3D_FPS))

        keep = tuple(t for t in c.texts if t.start is None or t.end is None or lo <= seg_rows(t) < hi)
        if len(keep) < len(c.texts):
            n = len(c.texts) - len(keep)
            report.drop_captions(c.keyid, "caption_length_filter", n, f"{n} segment caption(s) outside HumanML3D's "
                                 f"[{lo}, {hi}) feature rows")
            c = replace(c, texts=keep)
        out.append(c)
    return out


def load_clips(source: str | os.PathLike, amass_root: str | os.PathLike | None = None, split: str | None = None,
               *, mirrored: bool = True, length_filter: bool | None = None,
               dataset: str | None = None) -> ClipSet:
    """Read annotations into a :class:`ClipSet` in split-file order, with ``.report`` (:class:`LoadReport`).

    ``source``: a HumanML3D directory (with ``index.csv``) or its ``index.csv``, or a TMR-style
    ``annotations.json`` or its directory. ``amass_root`` (holding ``KIT/``, ``CMU/``, ...): every clip is
    resolved (``clip.frames`` from the file's frame count and fps), clips whose file is missing or bad are
    skipped and reported; None: ``frames`` stays None. ``split``: a split-file name; None or "all" = all
    entries. ``mirrored``: include mirrored copies (HumanML3D ``M`` ids, TMR ``M/`` paths). ``length_filter``:
    apply the reference loader's length rule of the layout - HumanML3D's (:data:`HUMANML3D_MIN_ROWS`, every split,
    on resolved clips or index.csv's frame range) or TMR's (:data:`TMR_SECONDS`, clips whose split is not a test
    split) - counted in the report; None (default): for HumanML3D, KIT-ML and BABEL sources
    (:data:`LENGTH_FILTER_DATASETS`) only, so never for the synthetic corpus or a dataset of one's own. ``dataset``
    (``humanml3d``, ``kitml``, ``babel`` or ``other``) says which dataset the source is; None or "auto": told from
    the directory name (``HumanML3D``, ``KIT-ML``, ``kit_ml``, ``babel``... anywhere in it). Raises
    BadInputError when the source itself is unusable (no index/annotations file, missing split file, malformed
    index header); per-entry problems are reported, not raised.
    """
    if dataset not in (None, *DATASET_CHOICES):
        raise ValueError(f"dataset must be one of {', '.join(DATASET_CHOICES)}, not {dataset!r}")
    dataset = None if dataset == "auto" else dataset
    src = Path(source)
    if src.is_dir():
        if (src / "index.csv").is_file():
            layout, root = "humanml3d", src
        elif (src / "annotations.json").is_file():
            layout, root = "tmr", src / "annotations.json"
        else:
            raise BadInputError(src, None, "neither index.csv (HumanML3D) nor annotations.json (TMR) found")
    elif src.is_file() and src.suffix == ".json":
        layout, root = "tmr", src
    elif src.is_file() and src.name.endswith(".csv"):
        layout, root = "humanml3d", src.parent
    else:
        raise BadInputError(src, None, "annotation source not found")
    report = LoadReport(source=str(src), layout=layout, split=split)
    clips = (_load_humanml3d(root, split, mirrored, report) if layout == "humanml3d"
             else _load_tmr(root, split, mirrored, length_filter, report, dataset))
    report.requested = len(clips) + len(report.skipped) + report.counts["mirrored_excluded"]
    if amass_root is not None:
        ar = Path(amass_root)
        if not ar.is_dir():
            raise BadInputError(ar, None, "AMASS root is not a directory")
        clips = _resolve(clips, ar, report)
    if layout == "humanml3d" and _filters(length_filter, layout, dataset := dataset or _dataset_name(root)):
        clips = _humanml3d_length_filter(clips, dataset, report)
    report.no_texts = [c.keyid for c in clips if not c.texts]
    if report.no_texts:
        report.counts["no_texts"] = len(report.no_texts)
    report.loaded = len(clips)
    report.counts["loaded"] = len(clips)
    log.info("%s", report.summary())
    return ClipSet(clips, report)

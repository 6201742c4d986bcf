"""Reading motion-text annotations into :class:`~dataset.clip.Clip` lists.

Two source layouts are read (see the README):

* **HumanML3D directory**: ``index.csv`` (``source_path,start_frame,end_frame,new_name``; paths as
  ``./pose_data/<AMASS path>.npy``, frames at 20 fps, ``end_frame == -1`` = to the end),
  ``texts/<keyid>.txt`` (lines ``caption#tokens#start#end``; ``0.0#0.0`` = the whole clip, otherwise
  seconds inside the clip) and split files ``splits/<split>.txt`` or ``<split>.txt`` at the root.
  ``M``-prefixed ids are HumanML3D's mirrored copies: same AMASS file and frames as the original row,
  ``mirrored=True``, their own (left/right-swapped) texts.
* **TMR-style** ``annotations.json`` (KIT-ML, HumanML3D, BABEL as released by TMR) + ``splits/*.txt``:
  ``{keyid: {path, duration, annotations: [{seg_id, text, start, end}]}}`` where ``path`` is the AMASS
  path without extension (``M/`` prefix = mirrored) and ``start``/``end`` are seconds in the AMASS
  sequence. A clip spans ``[min start, max end]`` of its annotations (time rule, 20 fps); its texts'
  times are made relative to the clip, and a text covering the whole clip gets ``start = end = None``.

Entries that cannot become clips are skipped and reported, never fatal: HumanML3D rows whose motion is
not in AMASS (HumanAct12), ids listed in a split file but absent from the index, and - when an AMASS
root is given - clips whose AMASS file is missing or bad. Clips **without texts are kept** (with
``texts == ()``, so videos can still be rendered for them) and listed in ``report.no_texts``; callers
that need texts (shards, training) filter them out.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from dataset.amass import read_amass_header
from dataset.clip import Clip, FrameSpec, Text
from dataset.errors import BadInputError
from dataset.frames import HUMANML3D_FPS

log = logging.getLogger(__name__)

__all__ = ["Clip", "ClipSet", "FrameSpec", "LoadReport", "Text", "load_clips", "humanml3d_amass_path",
           "parse_humanml3d_text", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "val", "test")
NOT_IN_AMASS = ("humanact12",)  # HumanML3D sources that are not AMASS motions
# A TMR text within this many seconds of both clip bounds counts as covering the whole clip.
_WHOLE_CLIP_TOL = 1e-3


@dataclass
class LoadReport:
    """What :func:`load_clips` did.

    Attributes:
        source: the annotation source read; layout: "humanml3d" | "tmr"; split: the split asked for.
        requested: ids considered (split file lines, or all entries).
        loaded: clips returned.
        skipped: keyid -> reason for every entry that did not become a clip.
        no_texts: keyids of returned clips that have no texts (kept, see module docstring).
        counts: number of entries per outcome ("loaded", "no_texts", "not_in_amass", "unknown_id",
            "bad_entry", "missing_amass_file", "bad_amass_file", "mirrored_excluded").
    """

    source: str
    layout: str
    split: str | None
    requested: int = 0
    loaded: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    no_texts: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def skip(self, keyid: str, kind: str, reason: str) -> None:
        self.skipped[keyid] = reason
        self.counts[kind] += 1

    def to_dict(self) -> dict:
        return {"source": self.source, "layout": self.layout, "split": self.split,
                "requested": self.requested, "loaded": self.loaded, "counts": dict(sorted(self.counts.items())),
                "no_texts": list(self.no_texts), "skipped": dict(self.skipped)}

    def summary(self) -> str:
        """One line: ``loaded N of M (kind: n, ...)``."""
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()) if k != "loaded")
        return (f"{self.source} [{self.layout}, split={self.split or 'all'}]: loaded {self.loaded} of "
                f"{self.requested}" + (f" ({parts})" if parts else ""))


class ClipSet(list):
    """A list of :class:`Clip` with the :class:`LoadReport` of how it was read (``.report``)."""

    def __init__(self, clips=(), report: LoadReport | None = None):
        super().__init__(clips)
        self.report = report

    def by_keyid(self) -> dict[str, Clip]:
        return {c.keyid: c for c in self}


# ----------------------------------------------------------------------------------------------------
# helpers


def humanml3d_amass_path(source_path: str) -> str:
    """index.csv's ``./pose_data/KIT/3/x_poses.npy`` -> AMASS-root-relative ``KIT/3/x_poses.npz``."""
    p = source_path.strip().replace("\\", "/")
    for prefix in ("./", "pose_data/"):
        if p.startswith(prefix):
            p = p[len(prefix):]
    if p.endswith(".npy"):
        p = p[:-4] + ".npz"
    return p


def parse_humanml3d_text(line: str) -> Text | None:
    """One ``caption#tokens#start#end`` line -> :class:`Text` (None for a blank line).

    ``start``/``end`` are seconds inside the clip; ``0.0#0.0`` (or unparsable/NaN times) = whole clip.
    """
    line = line.strip()
    if not line:
        return None
    parts = line.rsplit("#", 3)
    if len(parts) < 4:  # caption only, or caption#tokens
        caption = parts[0]
        tokens = parts[1] if len(parts) > 1 else None
        return Text(caption.strip(), None, None, tokens or None)
    caption, tokens, s, e = parts
    try:
        start, end = float(s), float(e)
    except ValueError:
        start = end = 0.0
    if not (math.isfinite(start) and math.isfinite(end)) or (start == 0.0 and end == 0.0) or end <= start:
        return Text(caption.strip(), None, None, tokens or None)
    return Text(caption.strip(), start, end, tokens or None)


def _read_ids(path: Path) -> list[str]:
    ids = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            s = line.strip()
            if s:
                ids.append(s[:-4] if s.endswith(".npy") else s)
    return ids


def _split_file(root: Path, name: str) -> Path | None:
    for cand in (root / "splits" / f"{name}.txt", root / f"{name}.txt"):
        if cand.is_file():
            return cand
    return None


def _membership(root: Path) -> dict[str, str]:
    """keyid -> "train" | "val" | "test" from whichever of those split files exist."""
    member: dict[str, str] = {}
    for name in SPLIT_NAMES:
        f = _split_file(root, name)
        if f is not None:
            for k in _read_ids(f):
                member.setdefault(k, name)
    return member


def _dataset_name(root: Path) -> str:
    if (root / "synth.json").is_file() or (root.parent / "synth.json").is_file():
        return "synthetic"
    name = root.name.lower().replace("-", "").replace("_", "")
    for known in ("humanml3d", "kitml", "babel"):
        if known in name:
            return known
    return root.name


def _requested_ids(root: Path, split: str | None, all_ids: list[str]) -> list[str]:
    if split is None or split == "all":
        f = _split_file(root, "all")
        return _read_ids(f) if f is not None else list(all_ids)
    f = _split_file(root, split)
    if f is None:
        raise BadInputError(root, "split", f"no split file {split}.txt (looked in splits/ and the root)")
    return _read_ids(f)


# ----------------------------------------------------------------------------------------------------
# HumanML3D


def _read_index(index: Path) -> dict[str, tuple[str, int, int]]:
    """index.csv -> {keyid: (source_path, start_frame, end_frame)}."""
    rows: dict[str, tuple[str, int, int]] = {}
    with open(index, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"source_path", "start_frame", "end_frame", "new_name"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise BadInputError(index, "header", f"expected columns {sorted(need)}, got {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            try:
                keyid = row["new_name"].strip()
                keyid = keyid[:-4] if keyid.endswith(".npy") else keyid
                rows[keyid] = (row["source_path"], int(row["start_frame"]), int(row["end_frame"]))
            except (TypeError, ValueError, AttributeError) as e:
                raise BadInputError(index, f"line {i}", f"bad row {row!r} ({e})") from e
    return rows


def _humanml3d_texts(texts_dir: Path | None, keyid: str) -> tuple[Text, ...]:
    if texts_dir is None:
        return ()
    f = texts_dir / f"{keyid}.txt"
    if not f.is_file():
        return ()
    with open(f, encoding="utf-8") as fh:
        out = [parse_humanml3d_text(line) for line in fh]
    return tuple(t for t in out if t is not None and t.caption)


def _load_humanml3d(root: Path, split: str | None, mirrored: bool, report: LoadReport) -> list[Clip]:
    index = root / "index.csv"
    rows = _read_index(index)
    texts_dir = root / "texts" if (root / "texts").is_dir() else None
    if texts_dir is None:
        log.info("%s: no texts/ directory; clips will have no texts", root)
    all_ids = list(rows) + ([f"M{k}" for k in rows] if mirrored else [])
    ids = _requested_ids(root, split, all_ids)
    member = _membership(root)
    dataset = _dataset_name(root)
    clips = []
    for keyid in ids:
        is_m = keyid.startswith("M") and keyid[1:] in rows and keyid not in rows
        if is_m and not mirrored:
            report.counts["mirrored_excluded"] += 1
            continue
        base = keyid[1:] if is_m else keyid
        if base not in rows:
            report.skip(keyid, "unknown_id", f"id not in {index.name}")
            continue
        source_path, start, end = rows[base]
        amass_path = humanml3d_amass_path(source_path)
        if amass_path.split("/", 1)[0] in NOT_IN_AMASS:
            report.skip(keyid, "not_in_amass", f"motion not in AMASS ({source_path})")
            continue
        if start < 0 or (end != -1 and end <= start):
            report.skip(keyid, "bad_entry", f"{index.name}: bad frame range [{start}, {end})")
            continue
        spec = FrameSpec("humanml3d", float(start), None if end == -1 else float(end), HUMANML3D_FPS)
        clips.append(Clip(keyid=keyid, amass_path=amass_path, frame_spec=spec, fps=HUMANML3D_FPS,
                          texts=_humanml3d_texts(texts_dir, keyid), split=member.get(keyid, split),
                          mirrored=is_m, dataset=dataset))
    return clips


# ----------------------------------------------------------------------------------------------------
# TMR annotations.json


def _tmr_clip(keyid: str, entry: dict, src: Path, split: str | None, dataset: str) -> Clip:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise BadInputError(src, keyid, "entry must be an object with a string 'path'")
    path = entry["path"].strip().replace("\\", "/")
    is_m = path.startswith("M/")
    if is_m:
        path = path[2:]
    amass_path = path if path.endswith(".npz") else path + ".npz"
    anns = entry.get("annotations") or []
    if not isinstance(anns, list):
        raise BadInputError(src, f"{keyid}.annotations", "must be a list")
    segs = []
    for j, a in enumerate(anns):
        try:
            text = str(a["text"]).strip()
            s, e = float(a["start"]), float(a["end"])
        except (KeyError, TypeError, ValueError) as err:
            raise BadInputError(src, f"{keyid}.annotations[{j}]", f"needs text, start, end ({err})") from err
        if not (math.isfinite(s) and math.isfinite(e)) or e <= s or s < 0:
            raise BadInputError(src, f"{keyid}.annotations[{j}]", f"bad time span [{s}, {e}]")
        if text:
            segs.append((text, s, e))
    if segs:
        c0, c1 = min(s for _, s, _ in segs), max(e for _, _, e in segs)
    else:
        c0 = 0.0
        dur = entry.get("duration")
        c1 = float(dur) if isinstance(dur, (int, float)) and dur > 0 else None
    texts = []
    for text, s, e in segs:
        if abs(s - c0) <= _WHOLE_CLIP_TOL and c1 is not None and abs(e - c1) <= _WHOLE_CLIP_TOL:
            texts.append(Text(text))
        else:
            texts.append(Text(text, round(s - c0, 6), round(e - c0, 6)))
    spec = FrameSpec("time", c0, c1, HUMANML3D_FPS)
    return Clip(keyid=keyid, amass_path=amass_path, frame_spec=spec, fps=HUMANML3D_FPS, texts=tuple(texts),
                split=split, mirrored=is_m, dataset=dataset)


def _load_tmr(json_path: Path, split: str | None, mirrored: bool, report: LoadReport) -> list[Clip]:
    root = json_path.parent
    try:
        with open(json_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise BadInputError(json_path, None, f"unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise BadInputError(json_path, None, "expected an object {keyid: entry}")
    ids = _requested_ids(root, split, list(data))
    member = _membership(root)
    dataset = _dataset_name(root)
    clips = []
    for keyid in ids:
        if keyid not in data:
            report.skip(keyid, "unknown_id", f"id not in {json_path.name}")
            continue
        try:
            clip = _tmr_clip(keyid, data[keyid], json_path, member.get(keyid, split), dataset)
        except BadInputError as e:
            report.skip(keyid, "bad_entry", e.reason)
            continue
        if clip.mirrored and not mirrored:
            report.counts["mirrored_excluded"] += 1
            continue
        if clip.amass_path.split("/", 1)[0] in NOT_IN_AMASS:
            report.skip(keyid, "not_in_amass", f"motion not in AMASS ({clip.amass_path})")
            continue
        clips.append(clip)
    return clips


# ----------------------------------------------------------------------------------------------------
# AMASS resolution


def _amass_file(amass_root: Path, amass_path: str) -> tuple[str, Path]:
    """The file for ``amass_path``, falling back from ``*_poses.npz`` to ``*_stageii.npz``."""
    p = amass_root / amass_path
    if not p.is_file() and amass_path.endswith("_poses.npz"):
        alt = amass_path[: -len("_poses.npz")] + "_stageii.npz"
        if (amass_root / alt).is_file():
            return alt, amass_root / alt
    return amass_path, p


def _resolve(clips: list[Clip], amass_root: Path, report: LoadReport) -> list[Clip]:
    headers: dict[str, tuple[str, int, float] | BadInputError] = {}
    for ap in tqdm(sorted({c.amass_path for c in clips}), desc="AMASS headers", unit="file", disable=None):
        real, p = _amass_file(amass_root, ap)
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


# ----------------------------------------------------------------------------------------------------


def load_clips(source: str | os.PathLike, amass_root: str | os.PathLike | None = None, split: str | None = None,
               *, mirrored: bool = True) -> ClipSet:
    """Read annotations into clips.

    Args:
        source: a HumanML3D directory (with ``index.csv``) or its ``index.csv``; or a TMR-style
            ``annotations.json`` or the directory holding it.
        amass_root: AMASS root (holding ``KIT/``, ``CMU/``, ...). When given, every clip is resolved
            (``clip.frames`` = AMASS frame indices, read from the file's frame count and fps); clips
            whose file is missing or bad are skipped and reported. When None, ``frames`` stays None.
        split: "train" | "val" | "test" | any other split-file name; None or "all" = all entries.
        mirrored: include mirrored copies (HumanML3D ``M`` ids, TMR ``M/`` paths).

    Returns:
        A :class:`ClipSet` in split-file order, with ``.report`` (:class:`LoadReport`).

    Raises:
        BadInputError: when the source itself is unusable (no index/annotations file, missing split
            file, malformed index header). Per-entry problems are reported, not raised.
    """
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
             else _load_tmr(root, split, mirrored, report))
    report.requested = len(clips) + len(report.skipped) + report.counts["mirrored_excluded"]
    if amass_root is not None:
        ar = Path(amass_root)
        if not ar.is_dir():
            raise BadInputError(ar, None, "AMASS root is not a directory")
        clips = _resolve(clips, ar, report)
    report.no_texts = [c.keyid for c in clips if not c.texts]
    if report.no_texts:
        report.counts["no_texts"] = len(report.no_texts)
    report.loaded = len(clips)
    report.counts["loaded"] = len(clips)
    log.info("%s", report.summary())
    return ClipSet(clips, report)

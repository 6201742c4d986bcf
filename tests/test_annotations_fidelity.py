"""Fidelity to the reference loaders (docs/evaluation.md, "Fidelity to HumanML3D and TMR"), on hand-made sources:
HumanML3D's ``Text2MotionDatasetV2`` (NaN time tags, captions whose end is not after their start, 40 <= feature
rows < 200) and TMR's ``TextMotionDataset`` (train/val annotations of 2 to 10 s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lavimo.dataset.annotations import (
    HUMANML3D_MAX_ROWS, LENGTH_FILTER_MODES, TMR_SECONDS, load_clips, parse_humanml3d_text,
)


# -- time tags -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tags,span", [
    ("0.0#0.0", (None, None)),      # the whole clip
    ("nan#nan", (None, None)),      # both NaN read as 0.0: the whole clip
    ("nan#0.0", (None, None)),
    ("nan#3.0", (0.0, 3.0)),        # a NaN start reads as 0.0: [0, 3] s
    ("1.5#3.0", (1.5, 3.0)),
])
def test_time_tags_kept(tags, span):
    t = parse_humanml3d_text(f"a person walks#a/DET person/NOUN walk/VERB#{tags}")
    assert t is not None and t.caption == "a person walks" and (t.start, t.end) == span


@pytest.mark.parametrize("tags", [
    "3.0#1.0",      # end before start: motion[60:20] is empty
    "2.0#2.0",      # end == start (not 0): empty
    "2.0#nan",      # a NaN end reads as 0.0: end before start
    "1.0#inf",      # int(inf * 20) fails in HumanML3D's loader: the caption is left out
    "-inf#1.0",
])
def test_time_tags_dropped(tags):
    assert parse_humanml3d_text(f"a person walks#a/DET#{tags}") is None


def _h3d(root: Path, rows: dict[str, tuple[int, int]], texts: dict[str, list[str]] | None = None) -> Path:
    """A HumanML3D directory: index.csv rows {keyid: (start_frame, end_frame)} on one AMASS path, texts/."""
    (root / "texts").mkdir(parents=True)
    lines = ["source_path,start_frame,end_frame,new_name"]
    lines += [f"./pose_data/KIT/3/walk_poses.npy,{s},{e},{k}.npy" for k, (s, e) in rows.items()]
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    for k in rows:
        caps = (texts or {}).get(k, ["a person walks#a/DET person/NOUN walk/VERB#0.0#0.0"])
        (root / "texts" / f"{k}.txt").write_text("\n".join(caps) + "\n")
    return root


def test_end_before_start_is_dropped_and_counted_with_or_without_the_length_filter(tmp_path):
    h = _h3d(tmp_path / "mydata", {"000000": (0, 100)}, {"000000": [
        "a person walks#a/DET#0.0#0.0", "a person turns#a/DET#3.0#1.0", "a person stops#a/DET#nan#nan",
        "a person sits#a/DET#2.5#nan", "a person jumps#a/DET#1.0#3.0"]})
    for lf in (None, False):
        clips = load_clips(h, mirrored=False, length_filter=lf)
        rep = clips.report
        assert [(t.caption, t.start, t.end) for t in clips[0].texts] == [
            ("a person walks", None, None), ("a person stops", None, None), ("a person jumps", 1.0, 3.0)]
        assert rep.counts["caption_bad_span"] == 2 and "000000" in rep.captions_dropped
        assert "end is not after its start" in rep.to_dict()["captions_dropped"]["000000"]
        assert rep.loaded == 1 and "length_filter" not in rep.to_dict()  # "mydata": no length rule by default


# -- HumanML3D's motion-length rule --------------------------------------------------------------------------


def test_humanml3d_rows_filter_on_clips_and_segments(tmp_path):
    # a clip of N 20-fps frames has N - 1 feature rows; kept when 40 <= rows < 200
    rows = {"000000": (0, 40), "000001": (0, 41), "000002": (10, 210), "000003": (10, 211), "000004": (0, 120)}
    segs = ["a person walks#a/DET#0.0#0.0",
            "a person steps#a/DET#0.0#2.0",      # rows [0, 40): 40, kept
            "a person hops#a/DET#0.0#1.95",      # rows [0, 39): 39, dropped
            "a person runs#a/DET#1.0#7.0",       # rows [20, min(140, 119)): 99, kept
            "a person waits#a/DET#5.0#9.0"]      # rows [100, 119): 19, dropped
    h = _h3d(tmp_path / "HumanML3D", rows, {"000004": segs})
    clips = load_clips(h, mirrored=False)
    rep = clips.report
    assert [c.keyid for c in clips] == ["000001", "000002", "000004"]
    assert rep.counts["length_filter"] == 2 and rep.skipped["000000"].startswith("39 feature rows")
    assert "200 feature rows" in rep.skipped["000003"]
    assert [t.caption for t in clips.by_keyid()["000004"].texts] == ["a person walks", "a person steps",
                                                                      "a person runs"]
    assert rep.counts["caption_length_filter"] == 2 and "000004" in rep.captions_dropped
    assert rep.length_filter.startswith("HumanML3D: 40 <= feature rows < 200")
    assert "length_filter" in rep.to_dict() and "[length filter: HumanML3D" in rep.summary()
    assert rep.requested == 5 and rep.loaded == 3
    # switched off: every clip and caption
    off = load_clips(h, mirrored=False, length_filter=LENGTH_FILTER_MODES["off"])
    assert len(off) == 5 and len(off.by_keyid()["000004"].texts) == 5 and off.report.length_filter is None
    assert "length_filter" not in off.report.counts and "length_filter" not in off.report.to_dict()


def test_humanml3d_rows_filter_kitml_minimum_and_own_data(tmp_path):
    rows = {"00000": (0, 24), "00001": (0, 25), "00002": (0, 200), "00003": (0, 201)}
    kit = load_clips(_h3d(tmp_path / "KIT-ML", rows), mirrored=False)
    assert [c.keyid for c in kit] == ["00001", "00002"]  # 24 <= rows < 200 for KIT-ML
    assert kit.report.length_filter.startswith("HumanML3D: 24 <= feature rows")
    own = _h3d(tmp_path / "mydata", rows)
    assert len(load_clips(own, mirrored=False)) == 4  # one's own data: off by default
    assert [c.keyid for c in load_clips(own, mirrored=False, length_filter=LENGTH_FILTER_MODES["on"])] == ["00002"]  # 40..200


def test_humanml3d_rows_filter_uses_the_resolved_frames(tmp_path, shared_data):
    import shutil

    amass = tmp_path / "amass"
    (amass / "KIT" / "3").mkdir(parents=True)
    shutil.copy(shared_data / "amass" / "amass_sample.npz", amass / "KIT" / "3" / "walk_poses.npz")  # 601 @ 120 fps
    # 101 frames at 20 fps: the index asks for [60, 300), the file has 41 frames from 60 -> 40 rows, kept;
    # [70, 300) -> 30 rows, dropped although index.csv's range (230 frames) alone says too long
    h = _h3d(tmp_path / "humanml3d", {"000000": (60, 300), "000001": (70, 300)})
    assert len(load_clips(h)) == 0  # unresolved: 239 and 229 rows from the index
    clips = load_clips(h, amass, mirrored=False)
    assert [c.keyid for c in clips] == ["000000"] and clips[0].num_frames == 41
    assert clips.report.skipped["000001"].startswith("30 feature rows")


def test_synthetic_corpus_is_never_filtered_by_default(tmp_path):
    rows = {"000000": (0, 40), "000001": (0, 300)}
    h = _h3d(tmp_path / "corpus" / "humanml3d", rows)
    (tmp_path / "corpus" / "synth.json").write_text("{}")
    clips = load_clips(h, mirrored=False)
    assert len(clips) == 2 and clips[0].dataset == "synthetic" and clips.report.length_filter is None


# -- TMR's annotation-length rule ----------------------------------------------------------------------------


def _tmr(root: Path, entries: dict[str, list[tuple[float, float]]], splits: dict[str, list[str]]) -> Path:
    root.mkdir(parents=True)
    ann = {k: {"path": "KIT/3/walk_poses", "duration": 30.0, "annotations": [
        {"seg_id": f"{k}_{j}", "text": f"caption {j} of {k}", "start": s, "end": e}
        for j, (s, e) in enumerate(spans)]} for k, spans in entries.items()}
    (root / "annotations.json").write_text(json.dumps(ann))
    (root / "splits").mkdir()
    for name, ids in splits.items():
        (root / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root / "annotations.json"


def test_tmr_seconds_filter_train_val_only(tmp_path):
    lo, hi = TMR_SECONDS
    entries = {"00000": [(1.0, 2.5), (3.0, 5.0), (4.0, 14.0), (0.5, 11.0)],  # 1.5 s and 10.5 s dropped
               "00001": [(0.0, 1.0), (2.0, 3.9)],                          # nothing of 2..10 s: dropped
               "00002": [(0.0, 1.0), (2.0, 12.5)],                         # test: never filtered
               "00003": [(0.0, 2.0)]}                                      # exactly 2 s: kept
    src = _tmr(tmp_path / "kitml", entries, {"train": ["00000", "00003"], "val": ["00001"], "test": ["00002"]})
    clips = load_clips(src)
    rep = clips.report
    by = clips.by_keyid()
    assert sorted(by) == ["00000", "00002", "00003"] and rep.counts["length_filter"] == 1
    assert f"no annotation of {lo:g} to {hi:g} s" in rep.skipped["00001"]
    # the clip spans its kept annotations only: [3, 14] s, captions relative to it
    c = by["00000"]
    assert (c.frame_spec.start, c.frame_spec.end) == (3.0, 14.0)
    assert [(t.caption, t.start, t.end) for t in c.texts] == [("caption 1 of 00000", 0.0, 2.0),
                                                               ("caption 2 of 00000", 1.0, 11.0)]
    assert rep.counts["caption_length_filter"] == 2 and "2 annotation(s)" in rep.captions_dropped["00000"]
    assert len(by["00002"].texts) == 2 and (by["00002"].frame_spec.start, by["00002"].frame_spec.end) == (0.0, 12.5)
    assert rep.length_filter.startswith("TMR: train/val annotations of 2 to 10 s")
    # per split as TMR loads them; the test split is never filtered
    assert [c.keyid for c in load_clips(src, split="val")] == []
    assert [c.keyid for c in load_clips(src, split="test")] == ["00002"]
    off = load_clips(src, length_filter=False)
    assert len(off) == 4 and off.by_keyid()["00000"].frame_spec.start == 0.5 and "length_filter" not in off.report.counts


def test_tmr_seconds_filter_default_by_dataset(tmp_path):
    entries = {"00000": [(0.0, 1.0)]}
    for name, filtered in (("humanml3d", True), ("BABEL", True), ("mydata", False)):
        src = _tmr(tmp_path / name, entries, {"train": ["00000"]})
        assert len(load_clips(src)) == (0 if filtered else 1), name
    assert len(load_clips(tmp_path / "mydata", length_filter=True)) == 0


def test_dataset_named_explicitly_overrides_the_directory_name(tmp_path):
    rows = {"00000": (0, 24), "00001": (0, 25), "00002": (0, 200), "00003": (0, 201)}
    own = _h3d(tmp_path / "export-2026", rows)  # a KIT-ML copy under a name that says nothing
    assert len(load_clips(own, mirrored=False)) == 4 and len(load_clips(own, mirrored=False, dataset="auto")) == 4
    assert [c.keyid for c in load_clips(own, mirrored=False, dataset="kitml")] == ["00001", "00002"]
    named = _h3d(tmp_path / "KIT-ML", rows)  # "other": a dataset of one's own despite its name
    assert len(load_clips(named, mirrored=False, dataset="other")) == 4
    tmr = _tmr(tmp_path / "mine", {"00000": [(0.0, 1.0)]}, {"train": ["00000"]})
    assert len(load_clips(tmr)) == 1 and len(load_clips(tmr, dataset="babel")) == 0
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_clips(own, dataset="kit")


# -- on the real fixtures: the rules give what the reference loaders' own rules give ---------------------------


def test_real_humanml3d_index_rows_filter(shared_data):
    """Every clip of the real index.csv (originals and mirrors) is kept iff HumanML3D's 40 <= end - start - 1 < 200
    (index.csv's frame range, the clip's 20-fps frames)."""
    clips = load_clips(shared_data / "humanml3d")
    every = load_clips(shared_data / "humanml3d", length_filter=False)
    rows = {c.keyid: int(c.frame_spec.end) - int(c.frame_spec.start) - 1 for c in every}
    want = [k for k in rows if 40 <= rows[k] < HUMANML3D_MAX_ROWS]
    # the row count is that of HumanML3D's released features (frames [149, 320) -> 170 rows)
    assert rows["012314"] == len(np.load(shared_data / "humanml3d" / "new_joint_vecs" / "012314.npy")) == 170
    assert [c.keyid for c in clips] == want
    assert clips.report.counts["length_filter"] == len(every) - len(want) > 0
    assert clips.report.requested == every.report.requested


def test_real_kitml_seconds_filter(shared_data):
    """TMR's filter_annotations on the real KIT-ML annotations.json: a train/val keyid stays iff one of its
    annotations lasts 2 to 10 s; test keyids all stay."""
    data = json.loads((shared_data / "kitml" / "annotations.json").read_text())
    for split in ("train", "val", "test"):
        ids = (shared_data / "kitml" / "splits" / f"{split}.txt").read_text().split()
        want = [k for k in ids if k in data and (split == "test" or any(
            2.0 <= a["end"] - a["start"] <= 10.0 for a in data[k]["annotations"]))]
        got = load_clips(shared_data / "kitml", split=split)
        assert [c.keyid for c in got] == want, split
        assert split == "test" or got.report.counts["length_filter"] > 0

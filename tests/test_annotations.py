"""load_clips on the real HumanML3D index / KIT-ML annotations and on small hand-made sources."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lavimo.dataset.annotations import ClipSet, humanml3d_amass_path, load_clips, parse_humanml3d_text
from lavimo.core.errors import BadInputError
from lavimo.dataset.frames import humanml3d_frame_indices


def test_humanml3d_index_without_texts(shared_data):
    clips = load_clips(shared_data / "humanml3d", length_filter=False)
    rep = clips.report
    assert isinstance(clips, ClipSet) and rep.layout == "humanml3d"
    assert rep.requested == 29228  # all.txt, originals + M copies
    # HumanAct12 rows (and their mirrors) are not AMASS motions: reported and skipped
    assert rep.counts["not_in_amass"] == 2382 and len(clips) == 29228 - 2382
    assert all("not in AMASS" in r for r in rep.skipped.values())
    # no texts/ in the fixture: clips are kept with empty texts and reported, never invented
    assert rep.counts["no_texts"] == len(clips) and all(c.texts == () for c in clips)
    assert set(rep.no_texts) == {c.keyid for c in clips}
    by = clips.by_keyid()
    c = by["000000"]
    assert c.amass_path == "KIT/3/kick_high_left02_poses.npz" and not c.mirrored
    assert (c.frame_spec.rule, c.frame_spec.start, c.frame_spec.end) == ("humanml3d", 0, 117)
    assert c.split == "test" and c.fps == 20.0 and c.frames is None and c.dataset == "humanml3d"
    m = by["M000000"]
    assert m.mirrored and m.amass_path == c.amass_path and m.frame_spec == c.frame_spec
    assert "000001" in rep.skipped and "M000001" in rep.skipped  # humanact12
    e = by["000040"]  # an Eyes_Japan_Dataset row (its path has spaces)
    assert e.amass_path.startswith("Eyes_Japan_Dataset/kudo/gesture_etc-13-juggling imaginary")
    assert "loaded" in rep.summary() and json.dumps(rep.to_dict())


def test_humanml3d_splits_and_mirrored_flag(shared_data):
    test = load_clips(shared_data / "humanml3d" / "index.csv", split="test")
    assert test.report.requested == 4384
    assert {c.split for c in test} == {"test"}
    assert any(c.mirrored for c in test)
    originals = load_clips(shared_data / "humanml3d", split="test", mirrored=False)
    assert not any(c.mirrored or c.keyid.startswith("M") for c in originals)
    assert originals.report.counts["mirrored_excluded"] > 0
    assert len(originals) + originals.report.counts["mirrored_excluded"] + \
        sum(1 for k in originals.report.skipped) == 4384
    with pytest.raises(BadInputError, match="no split file"):
        load_clips(shared_data / "humanml3d", split="nope")
    nsim = load_clips(shared_data / "humanml3d", split="nsim_test")
    assert nsim.report.requested == 100


def test_kitml_annotations(shared_data):
    clips = load_clips(shared_data / "kitml" / "annotations.json", length_filter=False)
    rep = clips.report
    assert rep.layout == "tmr" and len(clips) == 5766 and rep.counts.get("no_texts", 0) == 0
    by = clips.by_keyid()
    c = by["00001"]
    assert c.amass_path == "KIT/4/WalkingStraightForward01_poses.npz" and not c.mirrored
    assert (c.frame_spec.rule, c.frame_spec.start, c.frame_spec.end) == ("time", 0.0, 3.78)
    assert c.texts[0].caption == "A person is walking forwards." and c.texts[0].start is None
    assert c.dataset == "kitml" and c.split == "train"
    m = by["M00001"]
    assert m.mirrored and m.amass_path == c.amass_path  # "M/" path prefix stripped
    test = load_clips(shared_data / "kitml", split="test", length_filter=False)
    assert len(test) == 786 and {c.split for c in test} == {"test"}
    assert len(load_clips(shared_data / "kitml", split="test", mirrored=False, length_filter=False)) == 786 // 2


def test_parse_humanml3d_text():
    t = parse_humanml3d_text("a man kicks something#a/DET man/NOUN kick/VERB something/PRON#0.0#0.0\n")
    assert (t.caption, t.start, t.end, t.tokens) == ("a man kicks something", None, None,
                                                      "a/DET man/NOUN kick/VERB something/PRON")
    t = parse_humanml3d_text("walks # then runs#w/VERB#1.5#3.0")
    assert (t.caption, t.start, t.end) == ("walks # then runs", 1.5, 3.0)
    assert parse_humanml3d_text("x#y#nan#nan").start is None
    assert parse_humanml3d_text("caption only").caption == "caption only"
    assert parse_humanml3d_text("   ") is None
    assert humanml3d_amass_path("./pose_data/KIT/3/x_poses.npy") == "KIT/3/x_poses.npz"


@pytest.fixture
def small_amass(shared_data, tmp_path):
    """An AMASS root with the 601-frame 120-fps sample under two names, a truncated and a stage-ii file."""
    root = tmp_path / "amass"
    src = shared_data / "amass" / "amass_sample.npz"
    for rel in ("KIT/3/a_poses.npz", "MPI_HDM05/bk/b_poses.npz", "CMU/1/d_stageii.npz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    (root / "KIT/3/bad_poses.npz").write_bytes(src.read_bytes()[:5000])
    return root


def test_humanml3d_dir_with_texts_and_amass(small_amass, tmp_path):
    h = tmp_path / "h3d"
    (h / "texts").mkdir(parents=True)
    (h / "index.csv").write_text(
        "source_path,start_frame,end_frame,new_name\n"
        "./pose_data/KIT/3/a_poses.npy,0,50,000000.npy\n"
        "./pose_data/humanact12/humanact12/P1.npy,0,-1,000001.npy\n"
        "./pose_data/MPI_HDM05/bk/b_poses.npy,5,-1,000002.npy\n"
        "./pose_data/KIT/3/missing_poses.npy,0,10,000003.npy\n"
        "./pose_data/KIT/3/bad_poses.npy,0,10,000004.npy\n"
        "./pose_data/CMU/1/d_poses.npy,0,10,000005.npy\n"
        "./pose_data/KIT/3/a_poses.npy,500,600,000006.npy\n")
    (h / "texts" / "000000.txt").write_text("a person jumps#a/DET person/NOUN jump/VERB#0.0#0.0\n"
                                            "then waves left#x#1.0#2.0\n")
    (h / "texts" / "M000000.txt").write_text("a person jumps, mirrored right#x#0.0#0.0\n")
    (h / "train.txt").write_text("000000\nM000000\n000001\n000002\n")  # at the root, as HumanML3D ships
    (h / "test.txt").write_text("000003\n000004\n000005\n000006\n999999\n")
    clips = load_clips(h, small_amass)
    rep = clips.report
    by = clips.by_keyid()
    # no all.txt: every index row and its M copy is considered
    assert set(by) == {"000000", "M000000", "000002", "M000002", "000005", "M000005"}
    assert by["M000002"].split is None
    assert rep.counts["not_in_amass"] == 2  # 000001 and M000001
    assert rep.counts["missing_amass_file"] == 2 and "missing AMASS file" in rep.skipped["000003"]
    assert rep.counts["bad_amass_file"] == 2 and "truncated" in rep.skipped["000004"]
    assert "selects no frames" in rep.skipped["000006"]  # 600 20-fps frames past a 601-frame 120-fps file
    a = by["000000"]
    assert a.frames.tolist() == list(range(0, 300, 6)) and a.split == "train"
    assert [t.caption for t in a.texts] == ["a person jumps", "then waves left"]
    assert (a.texts[1].start, a.texts[1].end) == (1.0, 2.0)
    assert by["M000000"].mirrored and np.array_equal(by["M000000"].frames, a.frames)
    assert by["M000000"].texts[0].caption.endswith("mirrored right")
    b = by["000002"]  # MPI_HDM05: 3 s trimmed, from 20-fps frame 5 to the end
    assert b.frames.tolist() == humanml3d_frame_indices("MPI_HDM05/bk/b_poses.npz", 601, 120.0, 5, -1).tolist()
    assert b.frames[0] == (60 + 5) * 6 and b.texts == () and "000002" in rep.no_texts
    assert by["000005"].amass_path == "CMU/1/d_stageii.npz"  # *_poses -> *_stageii fallback
    test_only = load_clips(h, small_amass, split="test")
    assert test_only.report.skipped["999999"].startswith("id not in")


def test_tmr_segments_relative_to_clip(small_amass, tmp_path):
    ann = {
        "k1": {"path": "KIT/3/a_poses", "duration": 5.0, "annotations": [
            {"seg_id": "k1_0", "text": "walks", "start": 1.0, "end": 3.0},
            {"seg_id": "k1_1", "text": "turns", "start": 2.0, "end": 4.5}]},
        "k2": {"path": "M/KIT/3/a_poses", "duration": 5.0, "annotations": [
            {"seg_id": "k2_0", "text": "whole", "start": 0.0, "end": 5.0}]},
        "k3": {"path": "KIT/3/a_poses", "duration": 2.0, "annotations": []},
        "k4": {"path": "KIT/3/a_poses", "duration": 2.0, "annotations": [{"text": "x", "start": 2, "end": 1}]},
        "k5": {"path": "KIT/3/missing_poses", "duration": 1.0, "annotations": [
            {"seg_id": "k5_0", "text": "y", "start": 0.0, "end": 1.0}]},
    }
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "annotations.json").write_text(json.dumps(ann))
    clips = load_clips(tmp_path / "t", small_amass)
    by = clips.by_keyid()
    k1 = by["k1"]
    assert (k1.frame_spec.start, k1.frame_spec.end) == (1.0, 4.5)
    assert [(t.caption, t.start, t.end) for t in k1.texts] == [("walks", 0.0, 2.0), ("turns", 1.0, 3.5)]
    assert k1.frames.tolist() == [round((1.0 + i / 20) * 120) for i in range(70)]
    assert by["k2"].mirrored and by["k2"].texts[0].start is None and len(by["k2"].frames) == 100
    assert by["k3"].texts == () and clips.report.no_texts == ["k3"] and len(by["k3"].frames) == 40
    assert "bad time span" in clips.report.skipped["k4"]
    assert clips.report.counts["missing_amass_file"] == 1
    with pytest.raises(BadInputError):
        load_clips(tmp_path / "nothing_here")

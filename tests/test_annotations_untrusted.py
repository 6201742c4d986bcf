"""load_clips on crafted, hostile or broken annotation files (issue 15: safe on untrusted input).

Every test writes its own input. Per-item problems must be reported in the LoadReport and the other items
must still load; whole-file problems must raise BadInputError naming the file; nothing outside the
annotation directory / AMASS root may be read.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import lavimo.dataset.annotations as annotations
from lavimo.dataset.annotations import load_clips
from lavimo.dataset.clip import Clip, FrameSpec
from lavimo.core.errors import BadInputError

HEADER = "source_path,start_frame,end_frame,new_name"
BAD_KEYIDS = ["../x", "/abs/path", "a/b", "", "a.b", "a b", "x" * 129]


def _write_amass(path: Path, frames: int = 40, fps: float = 20.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, poses=np.zeros((frames, 156), np.float32), trans=np.zeros((frames, 3), np.float32),
                 mocap_framerate=np.array(fps))


def _h3d(tmp_path: Path, rows: list[str] | bytes, texts: dict[str, bytes] | None = None,
         splits: dict[str, bytes] | None = None) -> Path:
    """A HumanML3D directory: index.csv (lines after the header, or raw bytes), texts/, root split files."""
    h = tmp_path / "h3d"
    h.mkdir(parents=True)
    data = rows if isinstance(rows, bytes) else ("\n".join([HEADER, *rows]) + "\n").encode()
    (h / "index.csv").write_bytes(data)
    if texts is not None:
        (h / "texts").mkdir()
        for k, v in texts.items():
            (h / "texts" / f"{k}.txt").write_bytes(v)
    for name, v in (splits or {}).items():
        (h / f"{name}.txt").write_bytes(v)
    return h


def _entry(path: str = "KIT/1/a_poses", text: object = "a person walks", start=0.0, end=1.0) -> dict:
    return {"path": path, "duration": 2.0, "annotations": [{"seg_id": "s", "text": text, "start": start,
                                                            "end": end}]}


def _tmr(tmp_path: Path, text: str | bytes, splits: dict[str, str] | None = None) -> Path:
    d = tmp_path / "tmr"
    d.mkdir(parents=True)
    (d / "annotations.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    if splits:
        (d / "splits").mkdir()
        for name, v in splits.items():
            (d / "splits" / f"{name}.txt").write_text(v)
    return d


@pytest.fixture
def reads(monkeypatch):
    """Every file the annotation reader reads as text (index, json, split files, texts)."""
    seen: list[Path] = []
    real = annotations._read_text

    def spy(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(annotations, "_read_text", spy)
    return seen


# ------------------------------------------------------------------------------------------------ keyids


def test_index_new_name_is_a_name_never_a_path(tmp_path, reads):
    rows = ["./pose_data/KIT/1/a_poses.npy,0,10,000000.npy"]
    rows += [f"./pose_data/KIT/1/a_poses.npy,0,10,{k}.npy" for k in BAD_KEYIDS if k]
    h = _h3d(tmp_path, rows, texts={"000000": b"walks#w#0.0#0.0\n"})
    (h / "x.txt").write_text("SECRET caption outside texts/\n")  # what texts/../x.txt would read
    (tmp_path / "abs").mkdir()
    clips = load_clips(h, mirrored=False)
    rep = clips.report
    assert [c.keyid for c in clips] == ["000000"]
    assert rep.counts["bad_keyid"] == len(BAD_KEYIDS) - 1
    for line, k in enumerate([k for k in BAD_KEYIDS if k], start=3):
        reason = rep.skipped[k]
        assert f"index.csv line {line}: new_name: {k!r}"[:60] in reason and "not a valid keyid" in reason
        assert "letters, digits" in reason  # the rule is stated
    assert all(p.resolve().is_relative_to(h.resolve()) for p in reads)
    assert h / "x.txt" not in reads
    assert not any("SECRET" in t.caption for c in clips for t in c.texts)


def test_index_empty_new_name_is_a_row_failure(tmp_path):
    # today an empty name went on as keyid '' (ffmpeg then wrote '..mp4'); an empty row name is reported
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000.npy", "./pose_data/KIT/1/a_poses.npy,0,10,",
                        "./pose_data/KIT/1/a_poses.npy,0,10, .npy"])
    clips = load_clips(h)
    rep = clips.report
    assert sorted(c.keyid for c in clips) == ["000000", "M000000"]
    assert rep.counts["bad_keyid"] == 2
    assert "''" in rep.skipped["index.csv line 3"] and "not a valid keyid" in rep.skipped["index.csv line 3"]
    assert "index.csv line 4: new_name" in rep.skipped["index.csv line 4"]
    assert rep.requested == 4


def test_split_file_ids_are_checked(tmp_path, reads):
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000.npy"], texts={},
             splits={"train": b"000000\n../x\n/etc/passwd\na.b\nM000000\n"})
    (h / "x.txt").write_text("SECRET\n")
    clips = load_clips(h, split="train")
    rep = clips.report
    assert [c.keyid for c in clips] == ["000000", "M000000"]
    assert rep.counts["bad_keyid"] == 3 and rep.requested == 5
    assert rep.skipped["../x"].startswith("train.txt line 2: '../x' is not a valid keyid")
    assert rep.skipped["/etc/passwd"].startswith("train.txt line 3:")
    assert h / "x.txt" not in reads and Path("/etc/passwd") not in reads


def test_mirrored_prefix_rule_and_too_long_mirror(tmp_path):
    long = "k" * 128  # valid; its mirrored copy "M" + 128 characters is not
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000.npy", f"./pose_data/KIT/1/a_poses.npy,0,10,{long}"])
    clips = load_clips(h)
    by = clips.by_keyid()
    assert set(by) == {"000000", "M000000", long}
    assert by["M000000"].mirrored and not by["000000"].mirrored
    assert clips.report.counts["bad_keyid"] == 1
    assert "index.csv line 3: new_name (mirrored copy)" in clips.report.skipped["M" + long]


def test_annotations_json_keys_are_checked(tmp_path):
    ann = {k: _entry() for k in BAD_KEYIDS}
    ann["00001"] = _entry()
    d = _tmr(tmp_path, json.dumps(ann))
    clips = load_clips(d)
    assert [c.keyid for c in clips] == ["00001"]
    rep = clips.report
    assert rep.counts["bad_keyid"] == len(BAD_KEYIDS)
    assert rep.skipped["../x"].startswith("annotations.json: top-level key: '../x' is not a valid keyid")
    assert "expected" not in rep.skipped[""] and "''" in rep.skipped[""]
    # a split file naming a bad id: reported with the split file's line
    d2 = _tmr(tmp_path / "s", json.dumps(ann), splits={"test": "00001\n../x\n"})
    test = load_clips(d2, split="test")
    assert [c.keyid for c in test] == ["00001"]
    assert test.report.skipped["../x"].startswith("splits/test.txt line 2:")


@pytest.mark.parametrize("bad", ["../x", "/abs/path", "a/b", "", "a.b", 5, None, ["a"]])
def test_clip_refuses_an_invalid_keyid(bad):
    spec = FrameSpec("time", 0.0, None)
    with pytest.raises(BadInputError, match="Clip.keyid"):
        Clip(keyid=bad, amass_path="KIT/1/a_poses.npz", frame_spec=spec, fps=20.0)
    ok = Clip(keyid="000001", amass_path="KIT/1/a_poses.npz", frame_spec=spec, fps=20.0)
    with pytest.raises(BadInputError):
        replace(ok, keyid=bad)


# ------------------------------------------------------------------------------------------ AMASS paths


BAD_SOURCE_PATHS = ["/etc/passwd", "./pose_data/../outside_poses.npy", "..\\outside_poses.npy",
                    "KIT/1/a\x00b_poses.npy", "C:\\x\\a_poses.npy", "\\\\host\\share\\a_poses.npy",
                    "KIT//1/a_poses.npy", "KIT/./1/a_poses.npy", "", "KIT/1/a\tb_poses.npy"]


def test_index_source_path_stays_under_the_amass_root(tmp_path):
    amass = tmp_path / "amass"
    _write_amass(amass / "KIT/1/a_poses.npz")
    _write_amass(tmp_path / "outside_poses.npz")  # a valid file that '..' would reach
    rows = ["./pose_data/KIT/1/a_poses.npy,0,10,000000"]
    rows += ['"' + p.replace('"', '""') + f'",0,10,{i + 1:06d}' for i, p in enumerate(BAD_SOURCE_PATHS)]
    h = _h3d(tmp_path, rows)
    clips = load_clips(h, amass, mirrored=False)
    rep = clips.report
    assert [c.keyid for c in clips] == ["000000"]
    assert rep.counts["bad_path"] == len(BAD_SOURCE_PATHS)
    for i, p in enumerate(BAD_SOURCE_PATHS):
        reason = rep.skipped[f"{i + 1:06d}"]
        assert reason.startswith(f"index.csv line {i + 3}: source_path: ")
        assert "relative paths under the AMASS root" in reason
    assert "is absolute" in rep.skipped["000001"] and "'..'" in rep.skipped["000002"]
    assert "'..'" in rep.skipped["000003"]  # backslashes are separators: ..\ is '..'
    assert "control character" in rep.skipped["000004"]
    assert "is absolute" in rep.skipped["000005"] and "is absolute" in rep.skipped["000006"]


BAD_JSON_PATHS = ["/abs/KIT/1/a_poses", "../outside_poses", "M/../outside_poses", "KIT\\..\\..\\outside_poses",
                  "KIT/1/a\u0000b", "\ud800x", "C:/x", "M/", "KIT/1/../../../outside_poses"]


def test_annotations_json_path_stays_under_the_amass_root(tmp_path):
    amass = tmp_path / "amass"
    _write_amass(amass / "KIT/1/a_poses.npz")
    _write_amass(tmp_path / "outside_poses.npz")
    ann = {f"b{i}": _entry(p) for i, p in enumerate(BAD_JSON_PATHS)}
    ann["ok"] = _entry()
    d = _tmr(tmp_path, json.dumps(ann))  # json.dumps escapes NUL and the lone surrogate
    clips = load_clips(d, amass)
    rep = clips.report
    assert [c.keyid for c in clips] == ["ok"]
    assert rep.counts["bad_path"] == len(BAD_JSON_PATHS)
    for i in range(len(BAD_JSON_PATHS)):
        assert rep.skipped[f"b{i}"].startswith(f"annotations.json: b{i}.path: ")
    assert "is not valid Unicode" in rep.skipped["b5"]


# ------------------------------------------------------------------------------------------- duplicates


def test_annotations_json_duplicate_keys(tmp_path):
    a, b = json.dumps(_entry(text="first")), json.dumps(_entry(text="second"))
    text = '{"k1": %s, "k2": %s, "k1": %s, "k3": %s, "k3": %s}' % (a, a, b, a, a)
    clips = load_clips(_tmr(tmp_path, text))
    rep = clips.report
    # conflicting: neither definition wins by dict order
    assert sorted(c.keyid for c in clips) == ["k2", "k3"]
    assert rep.counts["duplicate_keyid"] == 1
    assert "members #1 and #3" in rep.skipped["k1"] and "different" in rep.skipped["k1"]
    # identical: kept once and reported
    assert rep.duplicates == {"k3": "annotations.json members #4 and #5 are identical entries; kept once"}
    assert rep.counts["duplicate_kept"] == 1 and "duplicates" in rep.to_dict()
    assert "duplicate_kept: 1" in rep.summary()


def test_annotations_json_duplicate_fields_in_an_entry(tmp_path):
    text = ('{"k1": {"path": "KIT/1/a_poses", "path": "../x", "annotations": []},'
            ' "k2": {"path": "KIT/1/a_poses", "annotations": [{"text": "a", "text": "b", "start": 0, "end": 1}]},'
            ' "k3": %s}' % json.dumps(_entry()))
    clips = load_clips(_tmr(tmp_path, text))
    assert [c.keyid for c in clips] == ["k3"]
    assert "'path' appears 2 times" in clips.report.skipped["k1"]
    assert "k2.annotations[0]" in clips.report.skipped["k2"] and "'text' appears 2" in clips.report.skipped["k2"]


def test_index_duplicate_new_name(tmp_path):
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000.npy",
                        "./pose_data/KIT/1/b_poses.npy,0,10,000001.npy",
                        "./pose_data/KIT/1/OTHER_poses.npy,0,10,000000.npy",  # conflicts with line 2
                        "./pose_data/KIT/1/b_poses.npy, 0,10,000001,",  # line 3 again (spaces, .npy, trailing ',')
                        "./pose_data/KIT/1/a_poses.npy,0,10,000000.npy"])  # line 6: conflict stays
    clips = load_clips(h)
    rep = clips.report
    assert sorted(c.keyid for c in clips) == ["000001", "M000001"]
    assert clips.by_keyid()["000001"].amass_path == "KIT/1/b_poses.npz"
    assert rep.counts["duplicate_keyid"] == 2  # 000000 and its mirror
    assert rep.skipped["000000"].startswith("index.csv lines 2 and 4 both define it, with different values")
    assert "line 6" in rep.skipped["000000"]
    assert rep.duplicates["000001"] == "index.csv lines 3 and 5 are identical rows; kept once"


def test_split_file_duplicates(tmp_path):
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000.npy",
                        "./pose_data/KIT/1/b_poses.npy,0,10,000001.npy"],
             splits={"train": b"000000\n000001\n000000.npy\n", "test": b"000001\n"})
    train = load_clips(h, split="train", mirrored=False)
    assert [c.keyid for c in train] == ["000000"]  # listed twice, loaded once
    assert train.report.duplicates["000000"] == "train.txt lists it on lines 1 and 3; kept once"
    # 000001 is in train.txt and test.txt: its split is ambiguous, skipped from either
    assert "listed in train.txt line 2 and test.txt line 1" in train.report.skipped["000001"]
    assert train.report.counts["duplicate_keyid"] == 1 and train.report.requested == 2
    test = load_clips(h, split="test")
    assert list(test) == [] and test.report.counts["duplicate_keyid"] == 1


# --------------------------------------------------------------------------------------- text values


@pytest.mark.parametrize("text", [["a", 1], 5, None, {"x": 1}, True])
def test_non_string_text_drops_the_entry(tmp_path, text):
    ann = {"bad": _entry(text=text), "ok": _entry()}
    ann["bad"]["annotations"].insert(0, {"seg_id": "s0", "text": "fine", "start": 0.0, "end": 1.0})
    clips = load_clips(_tmr(tmp_path, json.dumps(ann)))
    assert [c.keyid for c in clips] == ["ok"]
    reason = clips.report.skipped["bad"]
    assert reason.startswith("annotations.json: bad.annotations[1].text: expected a string, got ")
    assert clips.report.counts["bad_entry"] == 1
    assert not any("[" in t.caption or "{" in t.caption for c in clips for t in c.texts)


def test_bad_numbers_and_annotation_shapes(tmp_path):
    ann = {"bool": _entry(start=False, end=True), "huge": _entry(end=10 ** 400), "nan": _entry(end=float("nan")),
           "notobj": {"path": "KIT/1/a_poses", "annotations": ["walks"]}, "ok": _entry()}
    text = json.dumps(ann).replace(str(10 ** 400), "1" + "0" * 400)
    clips = load_clips(_tmr(tmp_path, text))
    rep = clips.report
    assert [c.keyid for c in clips] == ["ok"] and rep.counts["bad_entry"] == 4
    assert "expected a number, got bool" in rep.skipped["bool"]
    assert "notobj.annotations[0]: must be an object" in rep.skipped["notobj"]


def test_deeply_nested_json_is_a_file_error(tmp_path):
    d = _tmr(tmp_path, '{"k": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(BadInputError, match="annotations.json.*nested too deeply"):
        load_clips(d)


# ------------------------------------------------------------------------------- encodings and rows


def test_index_bom_and_crlf(tmp_path):
    rows = [HEADER, "./pose_data/KIT/1/a_poses.npy,0,10,000000.npy", "./pose_data/KIT/1/b_poses.npy,5,-1,000001.npy"]
    texts = {"000000": b"\xef\xbb\xbfa person walks#a/DET#0.0#0.0\r\nthen runs#x#1.0#2.0\r\n"}
    splits = {"all": b"\xef\xbb\xbf000000\r\n000001\r\nM000000\r\n", "train": b"\xef\xbb\xbf000000\r\n"}
    h = _h3d(tmp_path, b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n", texts=texts, splits=splits)
    clips = load_clips(h)
    by = clips.by_keyid()
    assert list(by) == ["000000", "000001", "M000000"] and not clips.report.skipped
    assert [t.caption for t in by["000000"].texts] == ["a person walks", "then runs"]
    assert by["000000"].split == "train" and by["000001"].frame_spec.start == 5.0
    assert by["000001"].amass_path == "KIT/1/b_poses.npz"


def test_index_short_rows_and_bad_frames_are_row_failures(tmp_path):
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000.npy",
                        "./pose_data/KIT/1/a_poses.npy,0",  # short: missing end_frame, new_name
                        "",  # blank line: skipped, line numbers still count it
                        "./pose_data/KIT/1/a_poses.npy,abc,10,000002",
                        "./pose_data/KIT/1/a_poses.npy,0,1.5,000003",
                        "./pose_data/KIT/1/a_poses.npy,1_0,20,000004",
                        "./pose_data/KIT/1/a_poses.npy,0,10,000005,extra",
                        "./pose_data/KIT/1/a_poses.npy,0,10,000006,,",  # trailing empty fields: fine
                        "./pose_data/KIT/1/a_poses.npy,0,10,000007"])
    clips = load_clips(h, mirrored=False)
    rep = clips.report
    assert [c.keyid for c in clips] == ["000000", "000006", "000007"]
    assert rep.skipped["index.csv line 3"] == ("index.csv line 3: missing columns end_frame, new_name "
                                               "(the row has 2 of 4 fields)")
    assert rep.skipped["000002"] == "index.csv line 5: start_frame: 'abc' is not an integer frame number"
    assert rep.skipped["000003"].startswith("index.csv line 6: end_frame: '1.5'")
    assert rep.skipped["000004"].startswith("index.csv line 7: start_frame: '1_0'")
    assert rep.skipped["000005"].startswith("index.csv line 8: 5 fields, the header has 4")
    assert rep.counts["bad_entry"] == 5


def test_index_bad_header_and_empty_file(tmp_path):
    h = _h3d(tmp_path, b"source_path,start_frame,new_name\nx,0,1\n")
    with pytest.raises(BadInputError, match="index.csv: header"):
        load_clips(h)
    (h / "index.csv").write_bytes(b"")
    with pytest.raises(BadInputError, match="index.csv: header"):
        load_clips(h)


def test_invalid_utf8_index_json_split_is_a_file_error(tmp_path):
    h = _h3d(tmp_path, b"source_path,start_frame,end_frame,new_name\n./pose_data/K/\xff.npy,0,1,000000\n")
    with pytest.raises(BadInputError, match=r"index.csv: line 2: not valid UTF-8 \(byte 0xff") as e:
        load_clips(h)
    assert not isinstance(e.value.__cause__, UnicodeDecodeError)  # no raw decoding error leaks out
    d = _tmr(tmp_path, b'{"k": {"path": "\xc3\x28"}}')
    with pytest.raises(BadInputError, match="annotations.json: line 1: not valid UTF-8"):
        load_clips(d)
    h2 = _h3d(tmp_path / "2", ["./pose_data/KIT/1/a_poses.npy,0,10,000000"], splits={"test": b"000000\n\x80\n"})
    with pytest.raises(BadInputError, match="test.txt: line 2: not valid UTF-8"):
        load_clips(h2, split="test")


def test_invalid_utf8_texts_is_an_item_failure(tmp_path):
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000", "./pose_data/KIT/1/a_poses.npy,0,10,000001"],
             texts={"000000": b"caf\xe9 walk#x#0.0#0.0\n", "000001": b"a person walks#x#0.0#0.0\n"})
    clips = load_clips(h, mirrored=False)
    assert [c.keyid for c in clips] == ["000001"]
    assert clips.report.skipped["000000"].startswith("texts/000000.txt: line 1: not valid UTF-8")
    assert clips.report.counts["bad_texts"] == 1


def test_split_name_is_a_file_name(tmp_path):
    h = _h3d(tmp_path, ["./pose_data/KIT/1/a_poses.npy,0,10,000000"])
    (tmp_path / "evil.txt").write_text("000000\n")
    with pytest.raises(BadInputError, match="not a plain file name"):
        load_clips(h, split="../evil")


@pytest.mark.slow
def test_repeated_rows_and_ids_cost_linear_time(tmp_path):
    """An index.csv repeating one row 100 000 times, a split file and a subset file repeating one id: the
    duplicate bookkeeping stays linear (a reason string grown row by row, and ``ids.count`` per id, took
    minutes on the branch point: the fuzz test's 2.4 MB index.csv ran past 100 s)."""
    from tests.fixtures.untrusted import run_python

    d = tmp_path / "h3d"
    (d / "splits").mkdir(parents=True)
    row = b"./pose_data/KIT/3/walk_poses.npy,0,40,000000.npy\n"
    (d / "index.csv").write_bytes(b"source_path,start_frame,end_frame,new_name\n" + row * 100_000)
    (d / "splits" / "train.txt").write_bytes(b"000000\n" * 100_000)
    (tmp_path / "nsim_test.txt").write_bytes(b"000001\n" * 100_000)
    m = run_python("""
        import sys
        from lavimo.dataset.annotations import load_clips
        from lavimo.dataset.subsets import read_subset
        from lavimo.core.errors import BadInputError
        clips = load_clips(sys.argv[1], None, "train")
        print(len(clips), clips.report.counts["duplicate_kept"], len(clips.report.duplicates["000000"]))
        try:
            read_subset(sys.argv[2])
        except BadInputError as exc:
            print(exc.field)
    """, d, tmp_path / "nsim_test.txt", timeout=60)
    assert not m.timed_out and m.returncode == 0, m.stderr[-2000:]
    n, kept, reason_len, field = m.stdout.split()
    assert (n, kept, field) == ("1", "1", "ids") and int(reason_len) < 1100
    assert m.seconds < 20

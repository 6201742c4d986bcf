"""Caption segments: a caption with a time span gets exactly its motion rows, video frames from inside its window
and its own sentence embedding; whole-clip captions are unchanged; segments shorter than HumanML3D's minimum are
never used (training draws another caption, evaluation takes the first usable one, else the sample is skipped as
``segment_too_short``). Spans come from HumanML3D ``caption#tokens#start#end`` lines and TMR ``annotations.json``
(both read by dataset/annotations.py); shards are built with the real writer (lavimo.dataset.shards.build.build_shards).

Fixture content encodes indices: motion feature row r has r in column 0, and video frame i is a flat grey frame of
brightness ``8 + 4 i``, so the rows and frames the loader returns can be read back as indices."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from lavimo.dataset.annotations import load_clips, parse_humanml3d_text
from lavimo.dataset.augment import CLIP_MEAN, CLIP_STD
from lavimo.dataset.clip import Clip, FrameSpec, Text
from lavimo.core.seeding import stable_rng
from lavimo.dataset.shards.format import json_bytes, load_stats, npy_bytes, parse_texts
from lavimo.dataset.shards.build import BuildConfig, build_shards
from lavimo.dataset.shards.check import check_shards
from lavimo.dataset.shards.stream import (SKIP_REASONS, SampleError, SampleTransform, is_whole_clip, make_loader,
                            min_segment_rows, segment_rows)
from lavimo.core.mp4 import write_video
from lavimo.dataset.video_frames import encode_jpgs

FPS = 20.0
T = 61          # video frames per clip -> 60 motion rows
DIM = 263       # HumanML3D features: minimum segment 40 rows
NUM_FRAMES = 4  # frames the loader samples
SIZE = 32
KW = dict(image_size=SIZE, num_frames=NUM_FRAMES)


class IndexEmbedder:
    """A tiny deterministic 'text model': a distinct 8-dim unit vector per caption."""

    name, dim = "index-embedder", 8

    def info(self):
        return {"name": self.name, "dim": self.dim, "pooling": "mean", "normalized": True}

    def encode(self, sentences):
        out = np.stack([stable_rng(0, "emb", s).normal(size=self.dim) for s in sentences]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def index_features(clip) -> np.ndarray:
    """(T-1, 263) features whose column 0 is the row index (the other columns deterministic noise)."""
    n = clip.num_frames - 1
    arr = stable_rng(0, clip.keyid, "feat").normal(size=(n, DIM)).astype(np.float32)
    arr[:, 0] = np.arange(n, dtype=np.float32)
    return arr


def index_frames(n: int, size: int = SIZE) -> np.ndarray:
    """(n, size, size, 3) uint8: frame i is flat grey of brightness 8 + 4 i."""
    return np.broadcast_to((8 + 4 * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, size, size, 3)).copy()


def frame_ids(video) -> list[int]:
    """The frame indices of a loader video (k, 3, S, S) CLIP-normalised, read back from the brightness."""
    std = np.asarray(CLIP_STD, np.float32)[:, None, None]
    mean = np.asarray(CLIP_MEAN, np.float32)[:, None, None]
    grey = [float(((v.numpy() * std + mean) * 255).mean()) for v in video]
    return [int(round((g - 8) / 4)) for g in grey]


def motion_rows(motion, length, mean, std) -> list[int]:
    """The motion row indices of a loader sample (normalised rows), read back from column 0."""
    raw = motion[:int(length)].numpy() * std + mean
    return [int(round(x)) for x in raw[:, 0]]


def make_clip(keyid: str, split: str, texts, num_frames: int = T) -> Clip:
    clip = Clip(keyid=keyid, amass_path=f"SYN/{keyid}_poses.npz", frame_spec=FrameSpec("time", 0.0, None, FPS),
                fps=FPS, texts=tuple(texts), split=split, dataset="synthetic")
    return clip.resolve(num_frames * 6, 120.0)


def write_inputs(videos: Path, clip: Clip) -> None:
    n = clip.num_frames
    write_video(videos / f"{clip.keyid}.mp4", index_frames(n), fps=clip.fps, crf=10)
    side = {"keyid": clip.keyid, "avatar": "test", "light": 0, "fps": clip.fps, "amass_path": clip.amass_path,
            "frames": [int(f) for f in clip.frames], "num_frames": n, "size": SIZE, "camera": {},
            "body_model": "procedural", "mirrored": False, "trajectory": "fixed", "version": "test"}
    (videos / f"{clip.keyid}.json").write_text(json.dumps(side))


def h3d(line: str) -> Text:
    """A HumanML3D text line read by the annotations reader."""
    t = parse_humanml3d_text(line)
    assert t is not None
    return t


def tmr_clip(root: Path) -> Clip:
    """A clip read from a TMR-style annotations.json: the clip spans [0.5, 3.55] s of its AMASS sequence (61 frames
    at 20 fps); one text covers it all, one covers [1.0, 3.25] s -> [0.5, 2.75] s inside the clip."""
    ann = {"tmr01": {"path": "KIT/3/walk_poses", "duration": 5.0, "annotations": [
        {"seg_id": "tmr01_0", "text": "a person walks a circle", "start": 0.5, "end": 3.55},
        {"seg_id": "tmr01_1", "text": "a person turns left", "start": 1.0, "end": 3.25}]}}
    (root / "annotations.json").write_text(json.dumps(ann))
    clips = load_clips(root / "annotations.json")
    assert len(clips) == 1
    clip = clips[0]
    assert [(t.start, t.end) for t in clip.texts] == [(None, None), (0.5, 2.75)]
    clip = clip.resolve(600, 120.0)  # a 5 s AMASS sequence at 120 fps
    assert clip.num_frames == T
    import dataclasses

    return dataclasses.replace(clip, split="val", keyid="tmr01", dataset="synthetic")


# texts of each clip; the comment gives the rows at 20 fps (min 40 rows for 263-dim features)
VAL_TEXTS = {
    "seg": [h3d("a person walks forward#a/DET person/NOUN walk/VERB forward/ADV#0.5#2.75")],  # rows [10, 55)
    "floor": [h3d("a person jumps#a/DET person/NOUN jump/VERB#0.56#2.79")],                   # [11, 55): floor
    "whole": [h3d("a person waves#a/DET person/NOUN wave/VERB#0.0#0.0"), Text("a person waves twice")],
    "short": [h3d("a person sits#a/DET person/NOUN sit/VERB#1.0#2.5")],                       # [20, 50): 30
    "edge39": [h3d("a person kicks#a/DET person/NOUN kick/VERB#0.5#2.45")],                   # [10, 49): 39
    "edge40": [h3d("a person bows#a/DET person/NOUN bow/VERB#0.5#2.5")],                      # [10, 50): 40
    "mixed": [Text("a quick step", 0.25, 1.0), Text("a person dances"), Text("a long spin", 0.5, 2.5)],
    "shortfirst": [Text("a quick hop", 0.25, 1.0), Text("a person runs", 0.5, 2.75)],         # 15 rows, then 45
}
# "mixed": [5, 20) 15 rows (never used), whole clip, [10, 50) 40 rows (used)


def centre_ids(lo: int, hi: int) -> list[int]:
    """Evaluation frame indices: the centre frame of each of NUM_FRAMES equal parts of frames [lo, hi)."""
    n = hi - lo
    return [lo + int(np.floor((k + 0.5) * n / NUM_FRAMES)) for k in range(NUM_FRAMES)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("segments")
    videos = root / "videos"
    videos.mkdir()
    clips = [make_clip(k, "val", texts) for k, texts in VAL_TEXTS.items()]
    clips.append(tmr_clip(root))
    clips.append(make_clip("train01", "train", VAL_TEXTS["mixed"]))
    for c in clips:
        write_inputs(videos, c)
    cfg = BuildConfig(out=root / "shards", videos=videos, splits=("train", "val"), samples_per_shard=16,
                      frame_size=SIZE)
    rep = build_shards(clips, cfg, embedder=IndexEmbedder(), features_fn=index_features, show_progress=False)
    assert not rep.failed and not rep.skipped, rep.summary()
    mp4 = BuildConfig(out=root / "mp4", videos=videos, splits=("val",), samples_per_shard=16, frame_size=SIZE,
                      video_format="mp4")
    build_shards([c for c in clips if c.keyid == "seg"], mp4, embedder=IndexEmbedder(),
                 features_fn=index_features, show_progress=False)
    return root


@pytest.fixture(scope="module")
def evaluated(shards):
    loader = make_loader(shards / "shards", "val", batch_size=16, train=False, **KW)
    batches = list(loader)
    assert len(batches) == 1
    return batches[0], loader


def _sample(batch, key):
    """One sample's fields of a batch (``motion`` still padded; ``length`` says how many rows are valid)."""
    j = batch["keyid"].index(key)
    return {k: v[j] for k, v in batch.items()}


def test_shards_keep_one_sample_per_clip_with_spans(shards):
    rep = check_shards(shards / "shards")
    assert rep.ok, rep.problems
    assert rep.samples == {"train": 1, "val": len(VAL_TEXTS) + 1}


@pytest.mark.parametrize("key,lo,hi", [("seg", 10, 55), ("floor", 11, 55), ("edge40", 10, 50)])
def test_segment_caption_gets_its_rows_frames_and_embedding(shards, evaluated, key, lo, hi):
    batch, _ = evaluated
    mean, std = load_stats(shards / "shards")
    s = _sample(batch, key)
    assert s["text"] == s["texts"][0]
    assert motion_rows(s["motion"], s["length"], mean, std) == list(range(lo, hi))
    assert frame_ids(s["video"]) == centre_ids(lo, hi)
    assert np.allclose(s["sent_emb"].numpy(), IndexEmbedder().encode([s["text"]])[0], atol=2e-3)


def test_tmr_relative_span_is_cut_when_chosen(shards):
    """The TMR clip's segment caption [0.5, 2.75] s (rows [10, 55)) is used whenever training draws it; its first
    caption covers the clip, so evaluation reads the whole clip."""
    mean, std = load_stats(shards / "shards")
    batch = next(iter(make_loader(shards / "shards", "val", batch_size=16, train=False, **KW)))
    s = _sample(batch, "tmr01")
    assert s["text"] == "a person walks a circle"
    assert motion_rows(s["motion"], s["length"], mean, std) == list(range(T - 1))
    assert frame_ids(s["video"]) == centre_ids(0, T)
    st = SampleTransform(True, SIZE, NUM_FRAMES, 196, mean, std, None)
    sample = _raw(shards / "shards", "val", "tmr01")
    seen = set()
    for seed in range(12):
        out = st(dict(sample), np.random.default_rng(seed))
        i = out["texts"].index(out["text"])
        seen.add(i)
        rows = motion_rows(out["motion"], len(out["motion"]), mean, std)
        if i == 1:
            assert rows == list(range(10, 55))
            assert all(10 <= f < 55 for f in frame_ids(out["video"]))
        else:
            assert rows == list(range(60))
        assert np.allclose(out["sent_emb"].numpy(), IndexEmbedder().encode([out["text"]])[0], atol=2e-3)
    assert seen == {0, 1}


def test_whole_clip_caption_is_unchanged(shards, evaluated):
    batch, _ = evaluated
    mean, std = load_stats(shards / "shards")
    s = _sample(batch, "whole")
    assert s["text"] == "a person waves"  # HumanML3D's #0.0#0.0: the whole clip
    assert motion_rows(s["motion"], s["length"], mean, std) == list(range(T - 1))
    assert frame_ids(s["video"]) == centre_ids(0, T)


def test_too_short_segments_are_not_used(shards, evaluated):
    batch, loader = evaluated
    mean, std = load_stats(shards / "shards")
    keys = batch["keyid"]
    # only segments shorter than 40 rows: skipped, counted, named
    assert "short" not in keys and "edge39" not in keys
    assert loader.skip_counts == {"segment_too_short": 2}
    assert sorted(loader.skip_examples["segment_too_short"]) == ["edge39", "short"]
    assert "segment_too_short" in SKIP_REASONS
    # evaluation takes the first usable caption: "mixed" -> the whole clip; "shortfirst" -> its 45-row segment
    s = _sample(batch, "mixed")
    assert s["text"] == "a person dances"
    assert motion_rows(s["motion"], s["length"], mean, std) == list(range(T - 1))
    s = _sample(batch, "shortfirst")
    assert s["text"] == "a person runs"
    assert motion_rows(s["motion"], s["length"], mean, std) == list(range(10, 55))
    assert frame_ids(s["video"]) == centre_ids(10, 55)
    assert np.allclose(s["sent_emb"].numpy(), IndexEmbedder().encode(["a person runs"])[0], atol=2e-3)


def test_min_segment_len_is_configurable(shards):
    assert min_segment_rows(263) == 40 and min_segment_rows(251) == 24 and min_segment_rows(7) == 40
    loader = make_loader(shards / "shards", "val", batch_size=16, train=False, min_segment_len=30, **KW)
    batch = next(iter(loader))
    assert "short" in batch["keyid"] and "edge39" in batch["keyid"] and loader.skipped == 0
    mean, std = load_stats(shards / "shards")
    s = _sample(batch, "short")
    assert motion_rows(s["motion"], s["length"], mean, std) == list(range(20, 50))
    s = _sample(batch, "mixed")  # the 15-row segment is still too short: the whole clip comes first usable
    assert s["text"] == "a person dances"
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="min_segment_len"):
            make_loader(shards / "shards", "val", batch_size=2, train=False, min_segment_len=bad)


def test_training_never_pairs_a_too_short_segment(shards):
    mean, std = load_stats(shards / "shards")
    loader = make_loader(shards / "shards", "train", batch_size=1, train=True, epoch_batches=30, augment=False,
                         shuffle_buffer=0, seed=3, **KW)
    chosen = []
    for b in loader:
        text = b["text"][0]
        chosen.append(text)
        rows = motion_rows(b["motion"][0], b["length"][0], mean, std)
        ids = frame_ids(b["video"][0])
        if text == "a long spin":
            assert rows == list(range(10, 50)) and all(10 <= f < 50 for f in ids)
        else:
            assert text == "a person dances" and rows == list(range(T - 1))
        assert np.allclose(b["sent_emb"][0].numpy(), IndexEmbedder().encode([text])[0], atol=2e-3)
    assert "a quick step" not in chosen
    assert set(chosen) == {"a person dances", "a long spin"}
    assert loader.skipped == 0


def test_mp4_video_is_sampled_inside_the_window(shards):
    loader = make_loader(shards / "mp4", "val", batch_size=1, train=False, stats=shards / "shards" / "stats.npz",
                         **KW)
    b = next(iter(loader))
    assert b["keyid"] == ["seg"] and frame_ids(b["video"][0]) == centre_ids(10, 55)


# ----------------------------------------------------------------------------------------------- crafted samples
def _raw(out: Path, split: str, key: str) -> dict:
    """The raw members (ext -> bytes) of one sample of a shard set."""
    import tarfile

    for tar in sorted(out.glob(f"{split}-*.tar")):
        with tarfile.open(tar) as tf:
            got = {ti.name.partition(".")[2]: tf.extractfile(ti).read() for ti in tf if ti.name.startswith(key + ".")}
        if got:
            return {"__key__": key, **got}
    raise KeyError(key)


def _crafted(texts, n_frames: int = 21, meta=None) -> dict:
    """A hand-made sample: ``n_frames`` index frames, n_frames-1 index rows of 4-dim motion, one sent row/text."""
    motion = np.zeros((n_frames - 1, 4), np.float32)
    motion[:, 0] = np.arange(n_frames - 1)
    s = {"__key__": "k", "texts.json": json_bytes(texts),
         "sent.npy": npy_bytes(np.eye(len(texts), 4, dtype=np.float16)),
         "motion.npy": npy_bytes(motion), "video.jpgs": encode_jpgs(index_frames(n_frames, 16), 95)}
    if meta is not False:
        s["meta.json"] = json_bytes({"fps": FPS} if meta is None else meta)
    return s


def _st(min_len=5, train=False):
    return SampleTransform(train, 16, NUM_FRAMES, 196, np.zeros(4, np.float32), np.ones(4, np.float32), None,
                           min_segment_len=min_len)


def test_crafted_spans_rows_and_frames():
    st = _st()
    # raw HumanML3D tag 0/0 and start 0 with end null: whole clip; a span over every row: whole clip too
    for span in ({"start": 0.0, "end": 0.0}, {"start": 0.0, "end": None}, {}, {"start": 0, "end": 5.0}):
        out = st(_crafted([{"caption": "a", **span}]), None)
        assert out["motion"][:, 0].tolist() == list(range(20)) and frame_ids(out["video"]) == centre_ids(0, 21)
    # end null with start > 0: to the end; start null with an end: from 0
    out = st(_crafted([{"caption": "a", "start": 0.5, "end": None}]), None)
    assert out["motion"][:, 0].tolist() == list(range(10, 20)) and frame_ids(out["video"]) == centre_ids(10, 20)
    out = st(_crafted([{"caption": "a", "start": None, "end": 0.4}]), None)
    assert out["motion"][:, 0].tolist() == list(range(0, 8)) and frame_ids(out["video"]) == centre_ids(0, 8)
    # a span past the end keeps the rows that exist (and counts only those)
    out = st(_crafted([{"caption": "a", "start": 0.5, "end": 9.0}]), None)
    assert out["motion"][:, 0].tolist() == list(range(10, 20))
    # the sentence embedding is the chosen text's row
    out = st(_crafted([{"caption": "a", "start": 0.05, "end": 0.1}, {"caption": "b", "start": 0.2, "end": 0.6}]),
             None)
    assert out["text"] == "b" and out["sent_emb"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert out["motion"][:, 0].tolist() == list(range(4, 12))
    # the max_motion_len crop applies to the segment
    crop = SampleTransform(False, 16, NUM_FRAMES, 3, np.zeros(4, np.float32), np.ones(4, np.float32), None,
                           min_segment_len=1)
    out = crop(_crafted([{"caption": "a", "start": 0.5, "end": 0.9}]), None)
    assert out["motion"][:, 0].tolist() == [10, 11, 12]


def test_crafted_spans_fps_from_meta():
    out = _st()(_crafted([{"caption": "a", "start": 1.0, "end": 2.0}], meta={"fps": 10}), None)
    assert out["motion"][:, 0].tolist() == list(range(10, 20))
    with pytest.raises(SampleError) as e:
        _st()(_crafted([{"caption": "a", "start": 0.5, "end": 0.9}], meta=False), None)
    assert e.value.reason == "missing_member"
    for meta in ({"fps": 0}, {"fps": "20"}, {"fps": True}, {}, [1], {"fps": 10 ** 400}):
        with pytest.raises(SampleError) as e:
            _st()(_crafted([{"caption": "a", "start": 0.5, "end": 0.9}], meta=meta), None)
        assert e.value.reason == "meta", meta
    # whole-clip captions never need meta.json (as before segments)
    out = _st()(_crafted([{"caption": "a", "start": None, "end": None}], meta=False), None)
    assert len(out["motion"]) == 20


@pytest.mark.parametrize("span", [{"start": -0.5, "end": 1.0}, {"start": "0.5", "end": 1.0},
                                  {"start": 0.5, "end": float("nan")}, {"start": True, "end": 1.0},
                                  {"start": 1.0, "end": 0.5}, {"start": 0.5, "end": 0.5},
                                  {"start": 0.0, "end": 10 ** 400}, {"start": [1], "end": 2}])
def test_bad_spans_are_refused_as_texts(span):
    data = json_bytes([{"caption": "a", **span}])  # NaN is written as JSON's NaN extension, which json reads
    with pytest.raises(ValueError):
        parse_texts(data)
    with pytest.raises(SampleError) as e:
        _st()({**_crafted([{"caption": "a"}]), "texts.json": data}, None)
    assert e.value.reason == "texts"


def test_huge_span_values_do_not_overflow():
    out = _st()(_crafted([{"caption": "a", "start": 0.5, "end": 1e300}]), None)
    assert out["motion"][:, 0].tolist() == list(range(10, 20))
    with pytest.raises(SampleError) as e:
        _st()(_crafted([{"caption": "a", "start": 1e300, "end": 1e301}]), None)
    assert e.value.reason == "segment_too_short"


def test_segment_rows_rule():
    assert is_whole_clip(None, None) and is_whole_clip(0.0, None) and is_whole_clip(0.0, 0.0)
    assert not is_whole_clip(0.5, None) and not is_whole_clip(None, 1.0) and not is_whole_clip(0.0, 1.0)
    assert segment_rows(0.5, 2.75, 20.0, 60) == (10, 55)
    assert segment_rows(0.56, 2.79, 20.0, 60) == (11, 55)  # int() = floor, as HumanML3D's int(t*20)
    assert segment_rows(0.0, 3.0, 20.0, 60) is None         # every row: the whole clip
    assert segment_rows(0.0, 29 / 12.5, 12.5, 29) is None    # 29 / 12.5 * 12.5 = 28.999999999999996
    assert segment_rows(0.0, 28 / 12.5, 12.5, 29) == (0, 28)
    assert segment_rows(0.0, 2.0, 20.0, 60) == (0, 40)
    assert segment_rows(3.5, 4.0, 20.0, 60) == (60, 60)     # past the end: no row


def test_training_draw_is_unchanged_for_whole_clip_captions():
    """With whole-clip captions only, the random draws are the ones made before segments existed: the caption is
    rng.integers(n) drawn first, then the segment-sampling draws."""
    st = _st(train=True)
    texts = [{"caption": c, "start": None, "end": None} for c in "abc"]
    for seed in range(5):
        out = st(_crafted(texts), np.random.default_rng(seed))
        ref = np.random.default_rng(seed)
        i = int(ref.integers(3))
        assert out["text"] == "abc"[i]
        assert frame_ids(out["video"]) == st.frame_indices(21, ref).tolist()


def test_check_reports_a_bad_span(shards, tmp_path):
    import shutil
    import tarfile

    out = tmp_path / "set"
    shutil.copytree(shards / "shards", out)
    tar = next(p for p in sorted(out.glob("val-*.tar")))
    with tarfile.open(tar) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            if ti.name == "seg.texts.json":
                data = json_bytes([{"caption": "a person walks forward", "start": -1.0, "end": 2.0}])
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    rep = check_shards(out, splits=["val"])
    assert any("sample seg" in p and "text 0: start -1.0" in p for p in rep.problems), rep.problems
    loader = make_loader(out, "val", batch_size=16, train=False, **KW)
    assert "seg" not in [k for b in loader for k in b["keyid"]] and loader.skip_counts["texts"] == 1


def test_evaluation_takes_the_first_caption_whatever_its_length(shards):
    """evaluate.py's loader (min_segment_len EVAL_MIN_SEGMENT_ROWS, as TMR's evaluation: annotation 0 of each test
    motion, test splits never length-filtered): the first caption and its segment, however short."""
    from lavimo.evaluation.encode import EVAL_MIN_SEGMENT_ROWS

    loader = make_loader(shards / "shards", "val", batch_size=16, train=False, min_segment_len=EVAL_MIN_SEGMENT_ROWS,
                         **KW)
    batch = next(iter(loader))
    mean, std = load_stats(shards / "shards")
    assert loader.skipped == 0 and sorted(batch["keyid"]) == sorted(list(VAL_TEXTS) + ["tmr01"])
    for key in batch["keyid"]:
        assert _sample(batch, key)["text"] == _sample(batch, key)["texts"][0], key
    for key, lo, hi in (("shortfirst", 5, 20), ("mixed", 5, 20), ("short", 20, 50), ("edge39", 10, 49)):
        s = _sample(batch, key)
        assert motion_rows(s["motion"], s["length"], mean, std) == list(range(lo, hi)), key
        assert frame_ids(s["video"]) == centre_ids(lo, hi), key

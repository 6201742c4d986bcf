"""synth-amass: AMASS-format files, determinism, both annotation layouts, plausible kinematics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lavimo.dataset.amass import load_amass
from lavimo.dataset.annotations import load_clips
from lavimo.dataset.synth.corpus import main, mirror_caption, plan_corpus, tokens
from lavimo.dataset.synth.actions import ACTION_NAMES, ACTIONS, MotionParams, animate, captions, sample_params
from lavimo.dataset.synth.rig import FLOOR_TOLERANCE, assemble, heading_vectors
from lavimo.dataset.synth.skeleton import forward_kinematics, limit_violations

ARGS = ["--motions", "30", "--seed", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "c"
    assert main(["--out", str(out), *ARGS]) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _items(corpus):
    return json.loads((corpus / "synth.json").read_text())["items"]


def test_list_actions(capsys):
    assert main(["--list-actions"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 24 and len(set(l.split("\t")[0] for l in lines)) == len(lines)
    assert all("directions=" in l and "reps=" in l for l in lines)


def test_npz_files_have_amass_keys_and_shapes(corpus):
    files = sorted((corpus / "amass").rglob("*.npz"))
    assert len(files) == 30
    assert all(f.name.endswith("_poses.npz") and f.parent.parent.name == "SynthMocap" for f in files)
    fps_seen = set()
    for f in files:
        d = np.load(f)
        assert list(d.files) == ["poses", "trans", "betas", "gender", "mocap_framerate", "dmpls"]
        T = d["poses"].shape[0]
        assert d["poses"].shape == (T, 156) and d["poses"].dtype == np.float64
        assert d["trans"].shape == (T, 3) and d["betas"].shape == (16,) and d["dmpls"].shape == (T, 8)
        assert str(d["gender"]) == "neutral"
        fps = float(d["mocap_framerate"])
        fps_seen.add(fps)
        assert 2.0 <= T / fps <= 8.0 + 1e-9
        m = load_amass(f)
        assert m.model_type == "smplh" and m.fps == fps
    assert fps_seen == {60.0, 100.0, 120.0}
    assert not [p for p in corpus.rglob(".*")]  # no temp files left by the atomic writes


def test_deterministic(corpus, tmp_path):
    again = tmp_path / "again"
    assert main(["--out", str(again), *ARGS]) == 0
    a, b = _files(corpus), _files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_both_layouts_give_the_same_clips(corpus):
    tmr = load_clips(corpus, corpus / "amass")
    h3d = load_clips(corpus / "humanml3d", corpus / "amass")
    assert len(tmr) == len(h3d) == 30
    assert not tmr.report.skipped and not h3d.report.skipped and not tmr.report.no_texts
    assert tmr[0].dataset == h3d[0].dataset == "synthetic"
    for a, b in zip(tmr, h3d):
        assert a.keyid == b.keyid and a.amass_path == b.amass_path and a.split == b.split
        assert abs(a.num_frames - b.num_frames) <= 1
        assert np.array_equal(a.frames, b.frames)  # durations are whole 20-fps frames: identical
        assert [t.caption for t in a.texts] == [t.caption for t in b.texts] and len(a.texts) >= 3
        assert all(t.start is None for t in a.texts + b.texts)
        assert all(t.tokens for t in b.texts)
    for split in ("train", "val", "test"):
        assert [c.keyid for c in load_clips(corpus, split=split)] == \
            [c.keyid for c in load_clips(corpus / "humanml3d", split=split)]


def test_reference_length_filters_leave_the_corpus_whole(corpus):
    """The synthetic corpus is not HumanML3D / KIT-ML for the length rules: by default every clip loads. Switched
    on, TMR's 2-10 s rule keeps every clip (2 to 8 s); HumanML3D's 40 <= rows < 200 drops the 2.0 s clips (39
    rows), which is why it stays off for the corpus."""
    for src in (corpus, corpus / "humanml3d"):
        clips = load_clips(src, corpus / "amass")
        assert len(clips) == 30 and clips.report.length_filter is None and not clips.report.skipped
    assert len(load_clips(corpus, corpus / "amass", length_filter=True)) == 30
    on = load_clips(corpus / "humanml3d", corpus / "amass", length_filter=True)
    every = load_clips(corpus / "humanml3d", corpus / "amass")
    assert [c.keyid for c in on] == [c.keyid for c in every if 40 <= c.num_frames - 1 < 200]


def test_every_action_in_every_split(corpus):
    items = _items(corpus)
    actions = {m["params"]["action"] for m in items.values()}
    assert len(actions) == 7  # 30 motions -> 7 actions, so each can be in train, val and test
    for a in actions:
        assert {m["split"] for m in items.values() if m["params"]["action"] == a} == {"train", "val", "test"}
    full = plan_corpus(240, 0)
    assert {p.params.action for p in full} == set(ACTION_NAMES)
    for a in ACTION_NAMES:
        assert {p.split for p in full if p.params.action == a} == {"train", "val", "test"}
    demo = plan_corpus(500, 0, test_fraction=0.25)
    assert sum(p.split == "test" for p in demo) >= 100


def test_captions_state_the_modifiers():
    rng = np.random.default_rng(0)
    for name in ACTION_NAMES:
        for _ in range(4):
            p = sample_params(name, rng)
            caps = captions(p)
            assert len(caps) >= 3 and len(set(caps)) == len(caps)
            if p.side in ("left", "right"):
                assert all(p.side in c for c in caps), caps
            if p.direction in ("forward", "backward", "sideways", "clockwise", "counterclockwise"):
                assert any(p.direction in c for c in caps), caps
            if ACTIONS[name].reps[1] > 1:
                assert any(w in " ".join(caps) for w in ("once", "twice", "one", "two", "three", "four", "five", "six",
                                                          "seven", "eight", "nine", "ten", "eleven",
                                                          "twelve", "thirteen", "fourteen")), caps
    p = MotionParams("wave", side="left", reps=3)
    assert "a person waves with the left hand three times." in captions(p)
    assert mirror_caption("turns clockwise with the left hand") == "turns counterclockwise with the right hand"
    assert tokens("a person waves twice") == "a/DET person/NOUN waves/VERB twice/ADV"


def _check_motion(poses, trans, fps, label):
    joints, soles = forward_kinematics(poses, trans)
    low = soles[..., 2].min(axis=1)
    assert low.min() >= -FLOOR_TOLERANCE - 1e-6, f"{label}: a sole below the floor"
    assert abs(low.min()) < 0.011 and np.mean(low < 0.01) > 0.5, f"{label}: feet not on the floor"
    assert limit_violations(poses) == {}, label
    step = np.linalg.norm(np.diff(joints, axis=0), axis=-1) * fps
    assert step.max() < 16.0, f"{label}: joint speed {step.max():.1f} m/s"  # no jumps between frames
    rot = np.linalg.norm(np.diff(poses[:, 3:66].reshape(len(poses), 21, 3), axis=0), axis=-1) * fps
    assert rot.max() < 40.0, f"{label}: joint angular speed {rot.max():.1f} rad/s"
    head = joints[:, 15, 2] - low
    assert head.min() > 0.7 and head.max() < 1.9, label  # human-sized, never lying down


def test_kinematics_plausible(corpus):
    for k, m in _items(corpus).items():
        a = load_amass(corpus / "amass" / m["amass_path"])
        _check_motion(a.poses, a.trans, a.fps, f"{k} {m['params']['action']}")


@pytest.mark.slow
def test_kinematics_every_action():
    rng = np.random.default_rng(3)
    for name in ACTION_NAMES:
        p = sample_params(name, rng)
        poses, trans = assemble(animate(p, 60.0, rng))
        _check_motion(poses, trans, 60.0, name)


def test_walking_translates_with_the_steps():
    rng = np.random.default_rng(0)
    for direction, sign in (("forward", 1), ("backward", -1)):
        p = MotionParams("walk", direction=direction, reps=6)
        rig = animate(p, 100.0, rng)
        poses, trans = assemble(rig)
        fwd, _ = heading_vectors(np.zeros(1))
        d = trans[-1, :2] - trans[0, :2]
        along = float(d @ fwd[0]) * sign
        assert 0.25 * 6 < along < 0.95 * 6, (direction, along)  # plausible step lengths
        v = np.diff(trans[:, :2], axis=0) @ fwd[0] * sign
        assert v.min() > -1e-4  # never pushed back against the walking direction (< 1 cm/s)
        _, soles = forward_kinematics(poses, trans)
        on = (soles[:-1, :, 2] < 0.005) & (soles[1:, :, 2] < 0.005)
        slide = np.linalg.norm(np.diff(soles[..., :2], axis=0), axis=-1)[on] * 100.0
        assert np.median(slide) < 0.05  # the supporting foot stays put
    p = MotionParams("side_step", direction="left", reps=3)
    _, trans = assemble(animate(p, 60.0, rng))
    _, left = heading_vectors(np.zeros(1))
    assert (trans[-1, :2] - trans[0, :2]) @ left[0] > 0.5


def test_mirror_layouts(tmp_path):
    out = tmp_path / "m"
    assert main(["--out", str(out), "--motions", "6", "--seed", "2", "--mirror", "--actions", "wave,kick"]) == 0
    tmr = load_clips(out, out / "amass")
    h3d = load_clips(out / "humanml3d", out / "amass")
    assert len(tmr) == len(h3d) == 12
    by_t, by_h = tmr.by_keyid(), h3d.by_keyid()
    for k in by_t:
        if k.startswith("M"):
            orig = by_t[k[1:]]
            assert by_t[k].mirrored and by_h[k].mirrored
            assert by_t[k].amass_path == orig.amass_path and np.array_equal(by_t[k].frames, orig.frames)
            assert [t.caption for t in by_t[k].texts] == [mirror_caption(t.caption) for t in orig.texts]
            assert [t.caption for t in by_h[k].texts] == [t.caption for t in by_t[k].texts]
    assert load_clips(out, mirrored=False).report.counts["mirrored_excluded"] == 6


def test_bad_arguments(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--actions", "moonwalk"]) == 2
    assert "unknown action" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "y"), "--test-fraction", "0.7", "--val-fraction", "0.5"]) == 2


def test_nsim_test_is_a_dissimilar_subset_of_the_test_split(corpus, tmp_path):
    from lavimo.dataset.subsets import build_dissimilar_subset
    from lavimo.dataset.text_embed import SentenceEmbedder

    test = (corpus / "splits" / "test.txt").read_text().split()
    nsim = (corpus / "splits" / "nsim_test.txt").read_text().split()
    assert nsim == sorted(nsim) and set(nsim) == set(test)  # 30 motions: fewer test clips than 100, all taken
    assert (corpus / "humanml3d" / "nsim_test.txt").read_text().split() == nsim
    # a smaller size picks the builder's choice on the first captions
    out = tmp_path / "small"
    assert main(["--out", str(out), *ARGS, "--nsim-size", "3"]) == 0
    small = (out / "splits" / "nsim_test.txt").read_text().split()
    items = _items(out)
    emb = SentenceEmbedder().encode([items[k]["captions"][0] for k in test])
    assert small == sorted(build_dissimilar_subset(test, emb, 3).ids)
    assert load_clips(out / "annotations.json", split="nsim_test").report.loaded == 3
    assert main(["--out", str(out), *ARGS, "--nsim-size", "0"]) == 0
    assert not (out / "splits" / "nsim_test.txt").exists()

"""build-shards on small fixtures: counts vs manifests, tar members, no-op rerun, resume, truncation check,
missing/bad clips, byte-identical rebuilds, refusal to mix text models or feature dimensions."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from tests.fixtures.shard_fixtures import FEATURE_DIM, FakeEmbedder, fake_features, make_clip, make_corpus, write_clip_video  # noqa: E402

from lavimo.dataset.shards.format import read_manifests  # noqa: E402
from lavimo.dataset.shards.build import BuildConfig, ShardSetMismatch, build_shards  # noqa: E402
from lavimo.dataset.shards.check import check_shards  # noqa: E402
from lavimo.dataset.shards.cli import main as cli_main  # noqa: E402

COUNTS = {"train": 6, "val": 3, "test": 2}
MISSING = "000004"  # a train clip whose video is deleted


@pytest.fixture(scope="module")
def embedder():
    from lavimo.dataset.text_embed import SentenceEmbedder

    return SentenceEmbedder()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    clips, videos = make_corpus(root, COUNTS)
    (videos / f"{MISSING}.mp4").unlink()
    return clips, videos


def _build(clips, videos, out, embedder, **kw):
    cfg = BuildConfig(out=out, videos=videos, samples_per_shard=kw.pop("samples_per_shard", 4), **kw)
    return build_shards(clips, cfg, embedder=embedder, features_fn=fake_features, show_progress=False)


@pytest.fixture(scope="module")
def built(corpus, embedder, tmp_path_factory):
    clips, videos = corpus
    out = tmp_path_factory.mktemp("shards")
    report = _build(clips, videos, out, embedder)
    return out, report


def test_counts_match_manifests_and_members(built):
    out, report = built
    manifests = read_manifests(out)
    assert set(manifests) == {"train", "val", "test"}
    assert manifests["train"]["num_samples"] == COUNTS["train"] - 1
    assert manifests["val"]["num_samples"] == COUNTS["val"]
    assert report.done == sum(COUNTS.values()) - 1
    for split, m in manifests.items():
        assert sum(e["count"] for e in m["shards"]) == m["num_samples"]
        assert m["feature_dim"] == FEATURE_DIM and m["text_model"]["dim"] == 384
        assert m["video"]["format"] == "jpgs" and m["video"]["bytes_per_sample"] > 0
        for e in m["shards"]:
            assert (out / e["name"]).is_file()
    assert [e["name"] for e in manifests["train"]["shards"]] == ["train-000000.tar", "train-000001.tar"]
    # plain tar lists the members, grouped per sample
    listing = subprocess.run(["tar", "-tf", str(out / "val-000000.tar")], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing == [f"{k}.{m}" for k in ("000006", "000007", "000008")
                       for m in ("meta.json", "motion.npy", "sent.npy", "texts.json", "video.jpgs")]
    assert (out / "stats.npz").is_file() and (out / "README.md").is_file()
    with np.load(out / "stats.npz") as z:
        assert z["mean"].shape == (FEATURE_DIM,) and z["std"].shape == (FEATURE_DIM,)
    assert check_shards(out).ok


def test_sample_contents(built, corpus):
    out, _ = built
    clips = {c.keyid: c for c in corpus[0]}
    with tarfile.open(out / "train-000000.tar") as tf:
        members = {ti.name: tf.extractfile(ti).read() for ti in tf}
        infos = {ti.name: ti for ti in tf}
    key = "000001"
    texts = json.loads(members[f"{key}.texts.json"])
    assert [t["caption"] for t in texts] == [t.caption for t in clips[key].texts]
    sent = np.load(io.BytesIO(members[f"{key}.sent.npy"]))
    assert sent.dtype == np.float16 and sent.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(sent.astype(np.float32), axis=1), 1.0, atol=2e-3)
    motion = np.load(io.BytesIO(members[f"{key}.motion.npy"]))
    assert motion.dtype == np.float32 and np.array_equal(motion, fake_features(clips[key]))
    meta = json.loads(members[f"{key}.meta.json"])
    assert meta["num_frames"] == clips[key].num_frames == motion.shape[0] + 1
    assert meta["split"] == "train" and meta["avatar"] == "proc_00" and meta["amass_path"] == clips[key].amass_path
    from lavimo.dataset.video_frames import decode_jpgs, jpgs_info

    n, w, h, _, _ = jpgs_info(members[f"{key}.video.jpgs"])
    assert (n, w, h) == (clips[key].num_frames, 48, 48)  # never upscaled past the rendered size
    assert tuple(decode_jpgs(members[f"{key}.video.jpgs"], [0, n - 1]).shape) == (2, 3, 48, 48)
    ti = infos[f"{key}.meta.json"]
    assert (ti.mtime, ti.uid, ti.gid, ti.uname, ti.mode) == (946684800, 0, 0, "", 0o444)


def test_missing_video_reported_and_skipped(built):
    out, report = built
    assert MISSING in report.skipped and "video" in report.skipped[MISSING]
    assert MISSING in read_manifests(out)["train"]["skipped"]
    keys = [ti.name.split(".")[0] for e in read_manifests(out)["train"]["shards"]
            for ti in tarfile.open(out / e["name"])]
    assert MISSING not in keys


def test_second_run_is_noop(built, corpus, embedder):
    out, _ = built
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    report = _build(*corpus, out, embedder)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert report.done == 0 and report.shards_written == 0 and report.kept == sum(COUNTS.values()) - 1
    assert before == after


@pytest.mark.slow
def test_byte_identical_rebuild_and_resume(built, corpus, embedder, tmp_path):
    out, _ = built
    out2 = tmp_path / "again"
    _build(*corpus, out2, embedder)
    for split, m in read_manifests(out).items():
        m2 = read_manifests(out2)[split]
        assert [e["sha256"] for e in m["shards"]] == [e["sha256"] for e in m2["shards"]]
        for e in m["shards"]:
            assert (out / e["name"]).read_bytes() == (out2 / e["name"]).read_bytes()
    # resume: a deleted shard is rebuilt (identically), the others are kept
    (out2 / "val-000000.tar").unlink()
    report = _build(*corpus, out2, embedder)
    assert report.shards_written == 1 and report.done == COUNTS["val"]
    assert (out2 / "val-000000.tar").read_bytes() == (out / "val-000000.tar").read_bytes()


def test_truncated_shard_detected(built, tmp_path, capsys):
    out, _ = built
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    tar = bad / "train-000000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    rep = check_shards(bad)
    assert not rep.ok
    text = "\n".join(rep.problems)
    assert "train-000000.tar" in text and ("sha256" in text or "bytes" in text)
    assert cli_main(["check", str(bad)]) == 1
    assert "PROBLEM" in capsys.readouterr().out
    assert cli_main(["check", str(out)]) == 0
    assert cli_main(["--out", str(out), "--dry-run"]) == 0


def test_bad_video_fails_clip_and_build_goes_on(corpus, embedder, tmp_path):
    clips, videos = corpus
    vids = tmp_path / "videos"
    shutil.copytree(videos, vids)
    (vids / "000006.mp4").write_bytes(b"not a video at all")
    report = _build(clips, vids, tmp_path / "s", embedder, splits=("val",))
    assert "000006" in report.failed and report.done == COUNTS["val"] - 1
    assert read_manifests(tmp_path / "s")["val"]["failed"].keys() == {"000006"}


def test_refuses_mixing_text_models_and_feature_dims(built, corpus, embedder, tmp_path):
    out, _ = built
    with pytest.raises(ShardSetMismatch, match="text_model"):
        _build(*corpus, out, FakeEmbedder("other-model"))
    with pytest.raises(ShardSetMismatch, match="video"):
        _build(*corpus, out, embedder, video_format="mp4")
    # features of another dimension in the same set: those clips fail, the set stays 263-dim
    clips, videos = corpus
    out2 = tmp_path / "dims"
    cfg = BuildConfig(out=out2, videos=videos, samples_per_shard=2, splits=("val",))

    def feats(clip):
        f = fake_features(clip)
        return f if clip.keyid != "000007" else f[:, :251]

    report = build_shards(clips, cfg, embedder=embedder, features_fn=feats, show_progress=False)
    assert "000007" in report.failed and "feature dim" in report.failed["000007"]
    assert read_manifests(out2)["val"]["feature_dim"] == FEATURE_DIM


def test_mp4_format_and_overwrite(corpus, embedder, tmp_path):
    out = tmp_path / "mp4"
    report = _build(*corpus, out, embedder, splits=("test",), video_format="mp4")
    assert report.done == COUNTS["test"]
    m = read_manifests(out)["test"]
    assert m["video"]["member"] == "video.mp4" and check_shards(out).ok
    names = tarfile.open(out / "test-000000.tar").getnames()
    assert "000009.video.mp4" in names
    report = _build(*corpus, out, embedder, splits=("test",), overwrite=True)
    assert report.done == COUNTS["test"] and read_manifests(out)["test"]["video"]["format"] == "jpgs"


@pytest.mark.slow
def test_cli_end_to_end_on_real_amass(shared_data, tmp_path, capsys):
    """build-shards CLI: TMR-style annotations over the real AMASS sample, features computed from AMASS with
    the procedural body, videos written to the clips' frame counts, two workers."""
    from lavimo.dataset.annotations import load_clips

    amass = tmp_path / "amass"
    (amass / "SAMPLE").mkdir(parents=True)
    shutil.copy(shared_data / "amass" / "amass_sample.npz", amass / "SAMPLE" / "walk_poses.npz")
    ann = tmp_path / "ann"
    (ann / "splits").mkdir(parents=True)
    entries = {}
    for i, (start, end, split) in enumerate([(0.0, 1.0, "train"), (1.0, 2.2, "train"), (2.0, 3.0, "val"),
                                             (3.0, 4.0, "test")]):
        entries[f"{i:05d}"] = {"path": "SAMPLE/walk_poses", "duration": end - start, "annotations": [
            {"seg_id": f"{i:05d}_0", "text": f"a person walks, part {i}", "start": start, "end": end}]}
    (ann / "annotations.json").write_text(json.dumps(entries))
    for split in ("train", "val", "test"):
        ids = [k for k, (s, e, sp) in zip(entries, [(0, 1, "train"), (1, 2, "train"), (2, 3, "val"),
                                                      (3, 4, "test")]) if sp == split]
        (ann / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = load_clips(ann / "annotations.json", amass)
    assert len(clips) == 4
    for c in clips:
        write_clip_video(videos, make_clip(c.keyid, c.split, c.num_frames), 32)
    out = tmp_path / "shards"
    rc = cli_main(["--annotations", str(ann / "annotations.json"), "--amass", str(amass), "--videos", str(videos),
                   "--out", str(out), "--samples-per-shard", "1", "--workers", "2", "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "done 4" in printed
    m = read_manifests(out)
    assert {s: v["num_samples"] for s, v in m.items()} == {"train": 2, "val": 1, "test": 1}
    assert m["train"]["feature_dim"] == 263
    with tarfile.open(out / "train-000000.tar") as tf:
        motion = np.load(io.BytesIO(tf.extractfile("00000.motion.npy").read()))
    assert motion.shape == (clips[0].num_frames - 1, 263) and np.isfinite(motion).all()
    assert cli_main(["check", str(out)]) == 0

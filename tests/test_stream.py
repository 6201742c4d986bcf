"""The streaming loader on a small shard set: batch layout, evaluation order, rank/worker splitting, epoch length,
motion crop and normalisation, segment sampling, corrupt-sample skipping, resampled mode."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.shard_fixtures import FEATURE_DIM, build_corpus_shards, fake_features  # noqa: E402

from lavimo.dataset.augment import CLIP_MEAN, CLIP_STD, AugmentConfig, augment_clip, clip_normalize  # noqa: E402
from lavimo.dataset.shards.format import load_stats, read_manifest  # noqa: E402
from lavimo.dataset.shards.stream import SampleTransform, make_loader  # noqa: E402

COUNTS = {"train": 8, "val": 5}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out, clips = build_corpus_shards(tmp_path_factory.mktemp("stream"), COUNTS, size=40, frames=(14, 40), n_texts=3)
    return out, {c.keyid: c for c in clips}


def _keys(loader):
    return [k for b in loader for k in b["keyid"]]


def test_batch_layout_training(shards):
    out, clips = shards
    loader = make_loader(out, "train", batch_size=3, train=True, seed=1)
    assert len(loader) == COUNTS["train"] // 3
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert set(b) == {"keyid", "video", "text", "texts", "sent_emb", "motion", "mask", "length"}
    assert b["video"].shape == (3, 8, 3, 224, 224) and b["video"].dtype == torch.float32
    assert b["sent_emb"].shape == (3, 384) and b["sent_emb"].dtype == torch.float32
    t = int(b["length"].max())
    assert b["motion"].shape == (3, t, FEATURE_DIM) and b["mask"].shape == (3, t) and b["mask"].dtype == torch.bool
    assert torch.equal(b["mask"].sum(1), b["length"])
    sents = {}
    for tar in out.glob("train-*.tar"):
        with tarfile.open(tar) as tf:
            for ti in tf:
                if ti.name.endswith(".sent.npy"):
                    sents[ti.name.split(".")[0]] = np.load(io.BytesIO(tf.extractfile(ti).read()))
    for j, key in enumerate(b["keyid"]):
        assert b["text"][j] in b["texts"][j]
        assert b["texts"][j] == [x.caption for x in clips[key].texts]
        assert int(b["length"][j]) == clips[key].num_frames - 1
        assert torch.all(b["motion"][j, int(b["length"][j]):] == 0)
        # the sentence embedding is the one of the chosen text
        i = b["texts"][j].index(b["text"][j])
        assert np.allclose(b["sent_emb"][j].numpy(), sents[key][i].astype(np.float32))
        assert abs(float(b["sent_emb"][j].norm()) - 1.0) < 5e-3


def test_eval_every_sample_once_in_order(shards):
    out, clips = shards
    loader = make_loader(out, "val", batch_size=2, train=False)
    batches = list(loader)
    assert [len(b["keyid"]) for b in batches] == [2, 2, 1]
    keys = [k for b in batches for k in b["keyid"]]
    assert keys == sorted(k for k, c in clips.items() if c.split == "val")
    b = batches[0]
    assert b["text"] == [t[0] for t in b["texts"]]  # first caption in evaluation
    # deterministic: a second pass gives identical tensors
    again = list(make_loader(out, "val", batch_size=2, train=False))
    assert torch.equal(again[0]["video"], b["video"]) and torch.equal(again[0]["motion"], b["motion"])
    # CLIP normalisation: undoing it gives images in [0, 1]
    mean = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    img = b["video"] * std + mean
    assert img.min() >= -1e-4 and img.max() <= 1 + 1e-4
    # sent_emb matches sent.npy row 0 of the sample
    with tarfile.open(out / "val-000000.tar") as tf:
        sent = np.load(io.BytesIO(tf.extractfile(f"{b['keyid'][0]}.sent.npy").read()))
    assert np.allclose(b["sent_emb"][0].numpy(), sent[0].astype(np.float32))


def test_motion_normalised_and_cropped(shards):
    out, clips = shards
    mean, std = load_stats(out)
    b = next(iter(make_loader(out, "val", batch_size=5, train=False, max_motion_len=10)))
    assert b["motion"].shape[1] == 10 and int(b["length"].max()) == 10
    raw = fake_features(clips[b["keyid"][0]])[:10]
    assert np.allclose(b["motion"][0].numpy(), (raw - mean) / std, atol=1e-5)
    tb = next(iter(make_loader(out, "train", batch_size=4, train=True, max_motion_len=10, epoch_batches=1)))
    assert tb["motion"].shape[1] <= 10


def test_two_ranks_disjoint(shards):
    out, clips = shards
    val = sorted(k for k, c in clips.items() if c.split == "val")
    r0 = _keys(make_loader(out, "val", batch_size=2, train=False, rank=0, world_size=2))
    r1 = _keys(make_loader(out, "val", batch_size=2, train=False, rank=1, world_size=2))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == val
    # training: every rank yields the same number of batches; within one pass the ranks' samples are disjoint
    # (shuffle buffer off: it would mix in the start of the next pass)
    t0 = list(make_loader(out, "train", batch_size=2, train=True, rank=0, world_size=2, seed=3, shuffle_buffer=0))
    t1 = list(make_loader(out, "train", batch_size=2, train=True, rank=1, world_size=2, seed=3, shuffle_buffer=0))
    assert len(t0) == len(t1) == COUNTS["train"] // 4
    k0 = {k for b in t0 for k in b["keyid"]}
    k1 = {k for b in t1 for k in b["keyid"]}
    assert len(k0) == len(k1) == 4 and not k0 & k1


@pytest.mark.slow
def test_two_workers_disjoint(shards):
    out, clips = shards
    val = sorted(k for k, c in clips.items() if c.split == "val")
    keys = _keys(make_loader(out, "val", batch_size=2, train=False, num_workers=2))
    assert sorted(keys) == val  # each sample exactly once across the two workers
    batches = list(make_loader(out, "train", batch_size=2, train=True, num_workers=2, seed=5, shuffle_buffer=0))
    assert len(batches) == COUNTS["train"] // 2
    keys = [k for b in batches for k in b["keyid"]]
    assert len(set(keys)) == len(keys) == COUNTS["train"]  # 4 shards over 2 workers: one pass, no repeats


def test_epochs_and_resampled(shards):
    out, _ = shards
    loader = make_loader(out, "train", batch_size=2, train=True, seed=0)
    e0 = [b["keyid"] for b in loader]
    e1 = [b["keyid"] for b in loader]  # next epoch: another shard order / shuffle
    assert len(e0) == len(e1) == 4
    loader.set_epoch(0)
    assert [b["keyid"] for b in loader] == e0  # reproducible per (seed, epoch)
    res = make_loader(out, "train", batch_size=2, train=True, resampled=True, epoch_batches=7)
    assert len(list(res)) == 7


def test_segment_sampling():
    st = SampleTransform(True, 32, 8, 196, np.zeros(2, np.float32), np.ones(2, np.float32), None)
    rng = np.random.default_rng(0)
    for n in (8, 20, 197):
        idx = st.frame_indices(n, rng)
        edges = np.linspace(0, n, 9)
        assert np.all(idx >= np.floor(edges[:-1])) and np.all(idx < np.ceil(edges[1:]))
        assert np.all(np.diff(idx) >= 0) and idx.max() < n
    st.train = False
    assert st.frame_indices(16, None).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert st.frame_indices(3, None).max() <= 2  # fewer frames than segments: repeats, never out of range


def test_frame_crop_keeps_the_centred_square(shards):
    out, _ = shards
    full = next(iter(make_loader(out, "val", batch_size=2, train=False, image_size=40)))["video"]
    crop = next(iter(make_loader(out, "val", batch_size=2, train=False, image_size=20, frame_crop=0.5)))["video"]
    assert crop.shape[-2:] == (20, 20)
    # the stored frames are 40 px: a 0.5 crop is the 20 px centre, resized to 20 px = the same pixels
    assert torch.allclose(crop, full[..., 10:30, 10:30], atol=1e-5)
    train = next(iter(make_loader(out, "train", batch_size=2, train=True, image_size=16, frame_crop=0.5)))
    assert train["video"].shape[-2:] == (16, 16)
    with pytest.raises(ValueError, match="frame_crop"):
        make_loader(out, "val", batch_size=2, train=False, frame_crop=0.0)


def test_augmentation_is_clip_consistent():
    frames = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    frames[:] = frames[0]  # a still clip: every frame must get the same augmentation
    cfg = AugmentConfig(jitter_p=1.0, grayscale_p=0.0, blur_p=1.0)
    out = augment_clip(frames, 32, cfg, np.random.default_rng(1))
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, out[0:1].expand_as(out))
    gray = augment_clip(frames, 32, AugmentConfig(grayscale_p=1.0, jitter_p=0, blur_p=0), np.random.default_rng(2))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    clip_normalize(gray)  # in-place normalisation works on the grayscale output (no broadcast view)
    assert AugmentConfig().hflip_p == 0.0  # flips would contradict "left"/"right" in texts and motion


def _corrupt_copy(out: Path, dst: Path) -> Path:
    """A copy of the val split with one sample's video replaced by garbage and one shard truncated."""
    import shutil

    dst.mkdir()
    for p in out.iterdir():
        if p.is_file():
            shutil.copy(p, dst / p.name)
    src = dst / "val-000000.tar"
    with tarfile.open(src) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]
    with tarfile.open(src, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            if ti.name.endswith(".video.jpgs") and ti.name.startswith("000008"):
                data = b"garbage" * 10
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    t = dst / "val-000001.tar"
    t.write_bytes(t.read_bytes()[:3000])
    return dst


def test_corrupt_samples_skipped_and_counted(shards, tmp_path, caplog):
    out, _ = shards
    bad = _corrupt_copy(out, tmp_path / "bad")
    loader = make_loader(bad, "val", batch_size=2, train=False)
    keys = _keys(loader)
    assert "000008" not in keys and "000009" in keys and "000012" in keys  # the 3rd shard is intact
    assert loader.skipped >= 2  # the garbage video and the truncated shard
    assert "skipping" in caplog.text
    json.loads((bad / "val.json").read_text())  # manifest untouched
    assert read_manifest(bad, "val")["num_samples"] == COUNTS["val"]

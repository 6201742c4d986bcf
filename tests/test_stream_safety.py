"""The streaming loader (and the gallery extractor of evaluation/report.py) on crafted shards: refused member names and
links, non-finite or wrong-width motion skipped per sample and counted per reason (also across worker
processes), malformed manifests and stats, pickled .npy members, and the hang when no sample is usable (it must
raise NoUsableSamplesError within seconds, also with workers and resampled shards)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from lavimo.core.errors import BadInputError
from lavimo.dataset.shards.format import load_stats
from lavimo.dataset.shards.stream import NoUsableSamplesError, SampleTransform, make_loader

ROOT = Path(__file__).resolve().parents[1]
KW = dict(image_size=16, num_frames=2)  # small batches: these tests are about skipping, not pixels


class FakeEmbedder:
    """A tiny deterministic 'text model' (no model load): 8-dim unit vectors."""

    name, dim = "fake-embedder", 8

    def info(self):
        return {"name": self.name, "dim": self.dim, "pooling": "mean", "normalized": True}

    def encode(self, sentences):
        return np.full((len(sentences), self.dim), self.dim ** -0.5, np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """8 train clips (2 shards of 4) and 4 val clips (1 shard), 16 px, real writer."""
    from tests.fixtures.tiny_shards import make_tiny_shards

    out = tmp_path_factory.mktemp("stream-safety") / "shards"
    make_tiny_shards(out, n_train=8, n_val=4, samples_per_shard=4, size=16, frames=(9, 12),
                     embedder=FakeEmbedder())
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _rewrite(tar: Path, edit, extra=()) -> None:
    """Rewrite ``tar`` member by member: ``edit(name, data) -> bytes | None`` (None drops the member), then
    append ``extra`` TarInfo/bytes pairs; the manifest entry is updated to the new size and sha256."""
    with tarfile.open(tar) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            new = edit(ti.name, data)
            if new is None:
                continue
            ti.size = len(new)
            tf.addfile(ti, io.BytesIO(new))
        for ti, data in extra:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    split = tar.name.rsplit("-", 1)[0]
    mpath = tar.parent / f"{split}.json"
    m = json.loads(mpath.read_text())
    raw = tar.read_bytes()
    for e in m["shards"]:
        if e["name"] == tar.name:
            e["bytes"], e["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    mpath.write_text(json.dumps(m))


def _keys(loader) -> list[str]:
    return [k for b in loader for k in b["keyid"]]


# ------------------------------------------------------------------------------------------ 7a/7b per-sample


def test_nonfinite_and_wrong_width_motion_skipped_per_sample(tiny, tmp_path, caplog):
    out = _copy(tiny, tmp_path / "set")

    def edit(name, data):
        key = name.split(".")[0]
        if name.endswith(".motion.npy") and key in ("000008", "000009", "000010"):
            arr = np.load(io.BytesIO(data))
            if key == "000008":
                arr[3, 5] = np.nan
            elif key == "000009":
                arr[0, 0] = np.inf
            else:
                arr = arr[:, :100]
            return _npy(arr)
        return data

    _rewrite(out / "val-000000.tar", edit)
    loader = make_loader(out, "val", batch_size=2, train=False, **KW)
    assert _keys(loader) == ["000011"]
    assert loader.skip_counts == {"motion_nonfinite": 2, "motion_shape": 1}
    assert loader.skipped == 3
    assert sorted(loader.skip_examples["motion_nonfinite"]) == ["000008", "000009"]
    assert loader.skip_examples["motion_shape"] == ["000010"]
    assert "000008" in caplog.text and "motion_nonfinite" in caplog.text and "000010" in caplog.text


def test_skip_counts_are_summed_across_worker_processes(tiny, tmp_path):
    out = _copy(tiny, tmp_path / "set")

    def nan_first(name, data):
        if name.endswith(".motion.npy") and name.split(".")[0] in ("000000", "000004"):
            arr = np.load(io.BytesIO(data))
            arr[:] = np.nan
            return _npy(arr)
        return data

    _rewrite(out / "train-000000.tar", nan_first)
    _rewrite(out / "train-000001.tar", nan_first)
    loader = make_loader(out, "train", batch_size=3, train=False, num_workers=2, **KW)
    assert sorted(_keys(loader)) == [f"{i:06d}" for i in range(8) if i not in (0, 4)]
    assert loader.skip_counts == {"motion_nonfinite": 2} and loader.skipped == 2
    assert sorted(loader.skip_examples["motion_nonfinite"]) == ["000000", "000004"]


# ------------------------------------------------------------------------------------------ 2. members


def test_crafted_member_names_and_links_are_refused(tiny, tmp_path):
    out = _copy(tiny, tmp_path / "set")
    bait = tmp_path / "secret.motion.npy"
    bait.write_bytes(_npy(np.zeros((3, 263), np.float32)))
    extra = []
    for name in ("../secret.motion.npy", "/abs.texts.json", "a/b.meta.json", "000011..video.jpgs"):
        ti = tarfile.TarInfo(name)
        ti.size = 4
        extra.append((ti, b"evil"))
    link = tarfile.TarInfo("000099.motion.npy")
    link.type, link.linkname = tarfile.SYMTYPE, str(bait)
    hard = tarfile.TarInfo("000098.motion.npy")
    hard.type, hard.linkname = tarfile.LNKTYPE, "000011.motion.npy"
    extra += [(link, None), (hard, None)]
    # a sample whose video member is replaced by a symlink to a file outside
    vlink = tarfile.TarInfo("000010.video.jpgs")
    vlink.type, vlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _rewrite(out / "val-000000.tar",
             lambda n, d: None if n == "000010.video.jpgs" else d, extra=[(vlink, None)] + extra)
    before = sorted(p.name for p in tmp_path.iterdir())
    loader = make_loader(out, "val", batch_size=2, train=False, **KW)
    keys = _keys(loader)
    assert keys == ["000008", "000009", "000011"]
    assert loader.skip_counts == {"member_name": 4, "member_type": 3, "missing_member": 1}, loader.skip_counts
    assert "'../secret.motion.npy'" in loader.skip_examples["member_name"]
    assert loader.skip_examples["missing_member"] == ["000010"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written anywhere


def test_pickled_and_bomb_npy_members_are_refused(tiny, tmp_path):
    out = _copy(tiny, tmp_path / "set")
    marker = tmp_path / "PWNED"
    payload = io.BytesIO()
    np.save(payload, np.array([_Exploit(str(marker))], dtype=object), allow_pickle=True)
    bomb = _npy(np.zeros((2, 263), np.float32)).replace(b"(2, 263)", b"(99999999999, 263)")

    def edit(name, data):
        if name == "000008.motion.npy":
            return payload.getvalue()
        if name == "000009.motion.npy":
            return bomb
        if name == "000010.sent.npy":
            return payload.getvalue()
        return data

    _rewrite(out / "val-000000.tar", edit)
    loader = make_loader(out, "val", batch_size=4, train=False, **KW)
    assert _keys(loader) == ["000011"]
    assert loader.skip_counts == {"motion_unreadable": 2, "sent": 1}
    assert not marker.exists()


class _Exploit:
    """Unpickling this would create a marker file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_jpgs_frames_that_disagree_with_their_header_are_refused(tiny, tmp_path):
    from PIL import Image

    from lavimo.dataset.video_frames import _HEADER, JPGS_MAGIC

    big = io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(big, format="JPEG")
    blob = big.getvalue()
    member = _HEADER.pack(JPGS_MAGIC, 1, 16, 16) + np.array([0, len(blob)], "<u8").tobytes() + blob
    out = _copy(tiny, tmp_path / "set")
    _rewrite(out / "val-000000.tar", lambda n, d: member if n == "000009.video.jpgs" else d)
    loader = make_loader(out, "val", batch_size=4, train=False, **KW)
    assert _keys(loader) == ["000008", "000010", "000011"] and loader.skip_counts == {"video": 1}


# ------------------------------------------------------------------------------------------ set-up files


def test_manifest_naming_files_outside_is_refused(tiny, tmp_path):
    out = _copy(tiny, tmp_path / "set")
    m = json.loads((out / "val.json").read_text())
    m["shards"][0]["name"] = "../../etc/passwd"
    (out / "val.json").write_text(json.dumps(m))
    with pytest.raises(BadInputError, match="val.json"):
        make_loader(out, "val", batch_size=2, train=False, **KW)
    (out / "val.json").write_text('{"kind": "lavimo-shards-manifest"}')
    with pytest.raises(BadInputError, match="val.json"):
        make_loader(out, "val", batch_size=2, train=False, **KW)


def test_nonfinite_or_malformed_stats_are_refused(tiny, tmp_path):
    out = _copy(tiny, tmp_path / "set")
    np.savez(out / "stats.npz", mean=np.full(263, np.nan, np.float32), std=np.ones(263, np.float32))
    with pytest.raises(BadInputError, match="stats.npz"):
        load_stats(out)
    np.savez(out / "stats.npz", mean=np.zeros((2, 3), np.float32), std=np.ones((2, 3), np.float32))
    with pytest.raises(BadInputError, match="stats.npz"):
        make_loader(out, "val", batch_size=2, train=False, **KW)
    (out / "stats.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="stats.npz"):
        load_stats(out)


# ------------------------------------------------------------------------------------------ 7c the hang


def _all_motion_wrong_width(tiny: Path, dst: Path) -> Path:
    out = _copy(tiny, dst)
    for tar in sorted(out.glob("*.tar")):
        _rewrite(tar, lambda n, d: _npy(np.zeros((5, 7), np.float32)) if n.endswith(".motion.npy") else d)
    return out


def _raises_within(fn, seconds: float) -> BaseException | None:
    """Run ``fn`` in a daemon thread; the exception it raised (None if it returned). Fails on timeout."""
    box: dict = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: the loader hangs"
    return box.get("exc")


@pytest.mark.parametrize("kw", [dict(), dict(resampled=True, epoch_batches=50), dict(shuffle_buffer=0)],
                         ids=["passes", "resampled", "no-shuffle"])
def test_no_usable_sample_raises_instead_of_hanging(tiny, tmp_path, kw):
    out = _all_motion_wrong_width(tiny, tmp_path / "set")
    loader = make_loader(out, "train", batch_size=2, train=True, **KW, **kw)
    exc = _raises_within(lambda: list(loader), 30)
    assert isinstance(exc, NoUsableSamplesError), exc
    assert set(exc.counts) == {"motion_shape"} and exc.counts["motion_shape"] >= 8
    assert "motion_shape" in str(exc) and "no usable sample" in str(exc)
    assert loader.skip_counts["motion_shape"] >= 8
    again = pickle.loads(pickle.dumps(exc))
    assert again.counts == exc.counts and str(again) == str(exc)


def test_unreadable_shards_everywhere_raise_too(tiny, tmp_path):
    out = _copy(tiny, tmp_path / "set")
    for tar in out.glob("train-*.tar"):
        tar.write_bytes(b"\0" * 10 + b"not a tar")
    loader = make_loader(out, "train", batch_size=2, train=True, **KW)
    exc = _raises_within(lambda: list(loader), 30)
    assert isinstance(exc, NoUsableSamplesError) and set(exc.counts) == {"shard_unreadable"}


def test_some_usable_samples_are_not_a_hang(tiny, tmp_path):
    out = _copy(tiny, tmp_path / "set")
    # every sample of the first train shard is bad, the second shard is fine
    _rewrite(out / "train-000000.tar", lambda n, d: _npy(np.zeros((5, 7), np.float32))
             if n.endswith(".motion.npy") else d)
    loader = make_loader(out, "train", batch_size=2, train=True, epoch_batches=6, **KW)
    batches = []
    assert _raises_within(lambda: batches.extend(loader), 60) is None
    assert len(batches) == 6 and {k for b in batches for k in b["keyid"]} <= {f"{i:06d}" for i in range(4, 8)}


def test_eval_pass_without_usable_sample_raises(tiny, tmp_path):
    out = _all_motion_wrong_width(tiny, tmp_path / "set")
    with pytest.raises(NoUsableSamplesError) as e:
        list(make_loader(out, "val", batch_size=2, train=False, **KW))
    assert e.value.counts == {"motion_shape": 4}
    # two ranks: each rank only sees its share, so it does not raise (no collective would be left waiting)
    assert list(make_loader(out, "val", batch_size=2, train=False, rank=0, world_size=2, **KW)) == []


def test_no_usable_sample_with_workers_exits_in_a_subprocess(tiny, tmp_path):
    """The trainer's configuration (worker processes, resampled or passes): a non-zero exit within seconds."""
    out = _all_motion_wrong_width(tiny, tmp_path / "set")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from lavimo.dataset.shards.stream import NoUsableSamplesError, make_loader
        for kw in (dict(num_workers=2), dict(num_workers=2, resampled=True, epoch_batches=100)):
            try:
                list(make_loader({str(out)!r}, "train", batch_size=2, train=True, image_size=16, num_frames=2,
                                 **kw))
            except NoUsableSamplesError as exc:
                print("raised", sorted(exc.counts), flush=True)
                continue
            sys.exit(4)
        sys.exit(3)
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stdout.count("raised ['motion_shape']") == 2


def test_sample_transform_reasons():
    st = SampleTransform(False, 16, 2, 10, np.zeros(4, np.float32), np.ones(4, np.float32), None)
    base = {"__key__": "k", "texts.json": b'[{"caption": "a"}]', "sent.npy": _npy(np.ones((1, 3), np.float16)),
            "motion.npy": _npy(np.zeros((3, 4), np.float32))}
    cases = {
        "missing_member": {k: v for k, v in base.items() if k != "sent.npy"},
        "texts": {**base, "texts.json": b"[[[[" * 10},
        "sent": {**base, "sent.npy": _npy(np.ones((2, 3), np.float16))},
        "sent_nonfinite": {**base, "sent.npy": _npy(np.full((1, 3), np.nan, np.float16))},
        "motion_shape": {**base, "motion.npy": _npy(np.zeros((0, 4), np.float32))},
        "motion_unreadable": {**base, "motion.npy": _npy(np.array(["a", "b"]))},
        "motion_nonfinite": {**base, "motion.npy": _npy(np.full((3, 4), 1e38, np.float64) * 10)},
    }
    from lavimo.dataset.shards.stream import SampleError

    for reason, sample in cases.items():
        with pytest.raises(SampleError) as e:
            st(sample, None)
        assert e.value.reason == reason, (reason, e.value)
    with pytest.raises(SampleError) as e:
        st(base, None)  # everything but the video is fine
    assert e.value.reason == "missing_member" and "video" in str(e.value)


# ------------------------------------------------------------------------------------------ report.py gallery


def test_gallery_extraction_refuses_crafted_names_and_links(tiny, tmp_path):
    from lavimo.evaluation.report import extract_shard_clips

    out = _copy(tiny, tmp_path / "set")
    evil = []
    for name in ("../../escape.video.mp4", "sub/000009.video.mp4"):
        ti = tarfile.TarInfo(name)
        ti.size = 4
        evil.append((ti, b"evil"))
    _rewrite(out / "val-000000.tar", lambda n, d: None if n == "000009.video.jpgs" else d, extra=evil)
    gallery = tmp_path / "eval" / "gallery_media"
    gallery.mkdir(parents=True)
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"do not touch")
    (gallery / "000010.mp4").symlink_to(outside)  # a planted link must not be reused or written through
    got = extract_shard_clips(out, "val", ["000008", "000009", "000010", "../x", "a/b"], gallery)
    assert set(got) == {"000008", "000010"}
    assert all(p.parent == gallery and not p.is_symlink() and p.stat().st_size > 0 for p in got.values())
    assert outside.read_bytes() == b"do not touch"
    assert not (tmp_path / "escape.video.mp4").exists() and not (tmp_path / "eval" / "escape.video.mp4").exists()
    assert sorted(p.name for p in gallery.iterdir()) == ["000008.mp4", "000010.mp4"]


# ------------------------------------------------------------------- issue 24: compressed shards, sample caps


def test_compressed_shard_and_oversized_sample(tiny, tmp_path, monkeypatch):
    """A gzip shard (even named .tar) is one ``shard_unreadable``, never decompressed; a sample whose members
    hold more than MAX_SAMPLE_BYTES is skipped once (``sample_size``) and the next sample is read."""
    import gzip

    import lavimo.dataset.shards.stream as stream

    out = _copy(tiny, tmp_path / "set")
    _rewrite(out / "val-000000.tar", lambda n, d: d + b" " * 600_000 if n == "000009.texts.json" else d)
    monkeypatch.setattr(stream, "MAX_SAMPLE_BYTES", 500_000)
    loader = make_loader(out, "val", batch_size=2, train=False, **KW)
    assert _keys(loader) == ["000008", "000010", "000011"]
    assert loader.skip_counts == {"sample_size": 1}, loader.skip_counts
    assert loader.skip_examples["sample_size"] == ["000009"]

    tar = out / "val-000000.tar"
    tar.write_bytes(gzip.compress(tar.read_bytes()))
    m = json.loads((out / "val.json").read_text())
    raw = tar.read_bytes()
    m["shards"][0].update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    (out / "val.json").write_text(json.dumps(m))
    loader = make_loader(out, "val", batch_size=2, train=False, **KW)
    with pytest.raises(NoUsableSamplesError) as info:
        _keys(loader)
    assert info.value.counts == {"shard_unreadable": 1}


def test_json_members_are_bounded():
    """texts.json / meta.json are parsed with their size and nesting capped (ValueError naming the member)."""
    from lavimo.dataset.shards.format import MEMBER_MAX_BYTES, parse_texts

    big = json.dumps(["a person walks"] * (MEMBER_MAX_BYTES["texts.json"] // 16 + 1)).encode()
    with pytest.raises(ValueError, match="texts.json: .*bytes of JSON, more than"):
        parse_texts(big)
    with pytest.raises(ValueError, match="texts.json: JSON nested deeper"):
        parse_texts(b"[" * 100_000 + b"]" * 100_000)
    from lavimo.dataset.shards.format import parse_meta

    with pytest.raises(ValueError, match="meta.json: JSON nested deeper"):
        parse_meta(b"[" * 1000 + b"]" * 1000)
    assert parse_meta(b'{"fps": 20}') == {"fps": 20}

"""Shards checked while streamed (dataset/shards/digest.py): the loader hashes each tar as it reads it and a shard
whose bytes differ from its manifest stops iteration with ShardChecksumError naming it, in the main process
whichever worker read it; untampered shards give the very batches an unchecked loader gives."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
import torch

from tests.fixtures.shard_fixtures import build_corpus_shards

from lavimo.core.errors import BadInputError, SetupError
from lavimo.dataset.shards.digest import DigestReader, ShardChecksumError
from lavimo.dataset.shards.stream import make_loader

COUNTS = {"train": 8, "val": 4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_corpus_shards(tmp_path_factory.mktemp("verify"), COUNTS, size=32, frames=(14, 30), n_texts=2)[0]


def _names(out, split):
    return [e["name"] for e in json.loads((out / f"{split}.json").read_text())["shards"]]


def _member_offset(tar, kind: str) -> int:
    """The offset of the first data byte of the first member of ``kind`` (e.g. ``motion.npy``) in ``tar``."""
    with tarfile.open(tar) as tf:
        for ti in tf:
            if ti.name.endswith(kind):
                return ti.offset_data + ti.size - 1  # the member's last byte: the tar still parses
    raise AssertionError(kind)


def _tampered(shards, tmp_path, split="train", index=1, where="member"):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    victim = bad / _names(bad, split)[index]
    data = bytearray(victim.read_bytes())
    pos = _member_offset(victim, ".motion.npy") if where == "member" else len(data) - 1
    data[pos] ^= 0x01  # same size, one byte flipped
    victim.write_bytes(bytes(data))
    return bad, victim


def _batches(loader):
    return [b for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_untampered_batches_are_identical(shards, workers):
    kw = dict(batch_size=2, train=True, seed=3, num_workers=workers, image_size=32, num_frames=2)
    plain, checked = make_loader(shards, "train", **kw), make_loader(shards, "train", verify=True, **kw)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        checked.set_epoch(epoch)
        a, b = _batches(plain), _batches(checked)
        assert len(a) == len(b) == 4
        for x, y in zip(a, b):
            assert x["keyid"] == y["keyid"] and x["text"] == y["text"]
            for k in ("video", "motion", "sent_emb", "mask"):
                assert torch.equal(x[k], y[k]), k
    val = _batches(make_loader(shards, "val", batch_size=3, train=False, verify=True, image_size=32, num_frames=2))
    assert sum(len(b["keyid"]) for b in val) == COUNTS["val"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("where", ["member", "padding"])
def test_flipped_byte_is_caught_naming_the_shard(shards, tmp_path, workers, where):
    bad, victim = _tampered(shards, tmp_path, where=where)
    loader = make_loader(bad, "train", batch_size=2, train=True, seed=3, num_workers=workers, verify=True,
                         image_size=32, num_frames=2)
    with pytest.raises(ShardChecksumError) as info:
        _batches(loader)
    exc = info.value
    assert isinstance(exc, SetupError) and exc.url == str(victim)
    assert str(exc).startswith(f"{victim}: ") and "sha256 differs" in str(exc) and "\n" not in str(exc)
    # unchecked, the same shards train (the flipped byte is inside a member or the padding)
    assert len(_batches(make_loader(bad, "train", batch_size=2, train=True, seed=3, image_size=32,
                                    num_frames=2))) == 4


def test_val_shard_checked_too(shards, tmp_path):
    bad, victim = _tampered(shards, tmp_path, split="val", index=0)
    with pytest.raises(ShardChecksumError, match=str(victim)):
        _batches(make_loader(bad, "val", batch_size=2, train=False, verify=True, image_size=32, num_frames=2))


def test_truncated_or_extended_shard(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    victim = bad / _names(bad, "val")[0]
    data = victim.read_bytes()
    victim.write_bytes(data + b"\0" * 1024)  # appended zeros: the tar still reads
    with pytest.raises(ShardChecksumError, match="more than the"):
        _batches(make_loader(bad, "val", batch_size=2, train=False, verify=True, image_size=32, num_frames=2))
    victim.write_bytes(data[:len(data) // 2])  # cut in a member: the tar reader fails, the size tells
    with pytest.raises(ShardChecksumError, match="truncated or modified"):
        _batches(make_loader(bad, "val", batch_size=2, train=False, verify=True, image_size=32, num_frames=2))


def test_manifest_without_sha256_is_refused(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    m = json.loads((bad / "train.json").read_text())
    del m["shards"][0]["sha256"]
    (bad / "train.json").write_text(json.dumps(m))
    with pytest.raises(BadInputError, match="no valid sha256"):
        make_loader(bad, "train", batch_size=2, train=True, verify=True)


def test_digest_reader_verdicts():
    import hashlib

    payload = bytes(range(256)) * 40
    good = hashlib.sha256(payload).hexdigest()
    r = DigestReader(io.BytesIO(payload), "x.tar", good, len(payload))
    assert r.read(100) == payload[:100] and not r.verified
    r.finish()
    assert r.verified and r.nbytes == len(payload)
    stopped = DigestReader(io.BytesIO(payload), "x.tar", "0" * 64, len(payload))
    stopped.read(10)
    stopped.close()  # a reading that stops early gives no verdict
    assert not stopped.verified
    with pytest.raises(ShardChecksumError, match="x.tar: sha256 differs"):
        DigestReader(io.BytesIO(payload), "x.tar", "0" * 64, len(payload)).finish()
    with pytest.raises(ShardChecksumError, match="more than the 10 bytes"):
        DigestReader(io.BytesIO(payload), "x.tar", good, 10).finish()


@pytest.mark.parametrize("workers", [0, 2])
def test_elastic_loader_checks_while_streaming(shards, tmp_path, workers):
    """An elastic run (--global-batch-size) streams through loader streams: the same check applies."""
    from lavimo.dataset.shards.elastic import make_elastic_loader

    kw = dict(global_batch=2, streams=2, epoch_batches=4, num_workers=workers, seed=3, image_size=32, num_frames=2)
    plain, checked = make_elastic_loader(shards, "train", **kw), make_elastic_loader(shards, "train", verify=True, **kw)
    assert [b["keyid"] for b in _batches(plain)] == [b["keyid"] for b in _batches(checked)]
    bad, victim = _tampered(shards, tmp_path)
    loader = make_elastic_loader(bad, "train", verify=True, **{**kw, "epoch_batches": 8})  # every shard read whole
    with pytest.raises(ShardChecksumError) as info:
        _batches(loader)
    assert info.value.url == str(victim)

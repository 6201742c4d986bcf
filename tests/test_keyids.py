"""Keyids are names, never paths: the one validator every reader uses, and the one safe join."""


import pytest

from lavimo.core.errors import BadInputError
from lavimo.core.hashing import sha256_file
from lavimo.core.keyids import check_keyid, check_member_name, child_path, is_keyid


@pytest.mark.parametrize("good", ["000123", "M000123", "00001", "a_b-c", "x" * 128])
def test_valid_keyids(good):
    assert is_keyid(good)
    assert check_keyid(good) == good


@pytest.mark.parametrize("bad", ["", "../x", "/abs/path", "a/b", "a\\b", ".hidden", "..", ".", "a.b", "a b",
                                 "a\x00b", "x" * 129, "é", None, 12, ["a"]])
def test_invalid_keyids_are_bad_input_naming_file_and_field(bad):
    assert not is_keyid(bad)
    with pytest.raises(BadInputError) as e:
        check_keyid(bad, "annotations.json", "keyid")
    assert "annotations.json" in str(e.value) and "keyid" in str(e.value)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\x00"])
def test_child_path_refuses_escapes(tmp_path, bad):
    with pytest.raises(BadInputError):
        child_path(tmp_path, bad)


def test_child_path_joins_plain_names(tmp_path):
    assert child_path(tmp_path, "000001.mp4") == tmp_path / "000001.mp4"


@pytest.mark.parametrize("bad", ["../x.npy", "a/b.npy", "x..npy", "noext", ".npy", "a.b/c", "é.npy"])
def test_member_names_refused(bad):
    with pytest.raises(BadInputError) as e:
        check_member_name(bad, "train-000000.tar")
    assert "train-000000.tar" in str(e.value)


def test_member_names_accepted():
    assert check_member_name("000001.motion.npy") == "000001.motion.npy"


def test_sha256_file(tmp_path):
    import hashlib
    p = tmp_path / "f"
    p.write_bytes(b"abc" * 1000)
    assert sha256_file(p, chunk=7) == (hashlib.sha256(b"abc" * 1000).hexdigest(), 3000)

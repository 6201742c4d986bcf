"""AMASS reader: the real sample files and rejection of malformed ones (messages name file and field)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lavimo.dataset.amass import load_amass, normalise_gender, read_amass_header
from lavimo.core.errors import BadInputError


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good(T=12):
    return dict(poses=np.zeros((T, 156)), trans=np.zeros((T, 3)), betas=np.zeros(16),
                gender=np.array("male"), mocap_framerate=np.array(120.0))


def test_amass_sample(shared_data):
    m = load_amass(shared_data / "amass" / "amass_sample.npz")
    assert m.poses.shape == (601, 156) and m.poses.dtype == np.float64
    assert m.trans.shape == (601, 3)
    assert m.betas.shape == (16,)
    assert m.gender == "male" and m.fps == 120.0 and m.model_type == "smplh"
    assert m.num_frames == 601 and m.duration == pytest.approx(601 / 120)
    assert read_amass_header(shared_data / "amass" / "amass_sample.npz") == (601, 120.0)


def test_dmpl_sample_gender_bytes(shared_data):
    path = shared_data / "amass" / "dmpl_sample.npz"
    assert np.load(path)["gender"].dtype.kind == "S"  # stored as bytes
    m = load_amass(path)
    assert m.gender == "female"
    assert m.poses.shape == (235, 156)
    assert m.fps == pytest.approx(120.00004, abs=1e-4)
    n, fps = read_amass_header(path)
    assert n == 235 and fps == pytest.approx(m.fps)


def test_truncated_file(shared_data, tmp_path):
    data = (shared_data / "amass" / "amass_sample.npz").read_bytes()
    bad = tmp_path / "truncated_poses.npz"
    bad.write_bytes(data[: len(data) // 2])
    for reader in (load_amass, read_amass_header):
        with pytest.raises(BadInputError) as e:
            reader(bad)
        assert str(bad) in str(e.value) and "truncated" in str(e.value)
        assert e.value.field == "archive"


def test_missing_trans(tmp_path):
    arrays = _good()
    del arrays["trans"]
    p = _write(tmp_path / "no_trans.npz", **arrays)
    for reader in (load_amass, read_amass_header):
        with pytest.raises(BadInputError) as e:
            reader(p)
        assert str(e.value) == f"{p}: trans: missing key"
        assert e.value.field == "trans" and e.value.reason == "trans: missing key"


def test_nan_poses(tmp_path):
    arrays = _good()
    arrays["poses"][3, 7] = np.nan
    p = _write(tmp_path / "nan.npz", **arrays)
    with pytest.raises(BadInputError) as e:
        load_amass(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: poses: ") and "NaN" in msg and "(3, 7)" in msg


@pytest.mark.parametrize("change, field", [
    (dict(poses=np.zeros((12, 100))), "poses"),
    (dict(poses=np.zeros((0, 156)), trans=np.zeros((0, 3))), "poses"),
    (dict(trans=np.zeros((11, 3))), "trans"),
    (dict(mocap_framerate=np.array(0.0)), "mocap_framerate"),
    (dict(betas=np.zeros(5)), "betas"),
    (dict(gender=np.array("robot")), "gender"),
    (dict(trans=np.full((12, 3), np.inf)), "trans"),
])
def test_rejections_name_the_field(tmp_path, change, field):
    arrays = {**_good(), **change}
    p = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BadInputError) as e:
        load_amass(p)
    assert e.value.field == field and str(p) in str(e.value)


def test_variants(tmp_path):
    arrays = _good()
    del arrays["mocap_framerate"]
    arrays["mocap_frame_rate"] = np.array(60.0)  # SMPL-X stage-ii key
    arrays["poses"] = np.zeros((12, 165))
    arrays["gender"] = np.array(b"neutral")
    m = load_amass(_write(tmp_path / "x_stageii.npz", **arrays))
    assert m.fps == 60.0 and m.model_type == "smplx" and m.gender == "neutral"
    assert normalise_gender(np.array("Female")) == "female"
    assert normalise_gender(b"m") == "male"
    with pytest.raises(BadInputError) as e:
        load_amass(tmp_path / "absent.npz")
    assert "file not found" in str(e.value)


def test_copy_reads_same(shared_data, tmp_path):
    dst = tmp_path / "KIT" / "3" / "x_poses.npz"
    dst.parent.mkdir(parents=True)
    shutil.copy(shared_data / "amass" / "amass_sample.npz", dst)
    assert load_amass(dst).num_frames == 601

"""Frame rules: HumanML3D's (hand-computed cases) and the time rule."""

from __future__ import annotations

import numpy as np
import pytest

from lavimo.dataset.clip import Clip, FrameSpec
from lavimo.dataset.frames import humanml3d_frame_indices, humanml3d_trim_frames, time_frame_indices


def test_humanml3d_120fps_stride6():
    idx = humanml3d_frame_indices("KIT/3/kick_high_left02_poses.npz", 601, 120.0, 0, 10)
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 6, 12, 18, 24, 30, 36, 42, 48, 54]
    # HumanML3D's real index row for 000000 (KIT, 0..117) on a 120-fps sequence long enough for it
    idx = humanml3d_frame_indices("KIT/3/kick_high_left02_poses.npz", 720, 120.0, 0, 117)
    assert len(idx) == 117 and idx[-1] == 116 * 6


def test_humanml3d_250fps_stride12():
    # int(250 / 20) = 12, not 12.5
    idx = humanml3d_frame_indices("BMLmovi/Subject_1_F_MoSh/x_poses.npz", 1000, 250.0, 2, 6)
    assert idx.tolist() == [24, 36, 48, 60]


def test_humanml3d_stride_from_non_integer_fps():
    # 120.00004 fps (a real AMASS value) -> stride int(6.000002) = 6; 59.94 fps -> stride 2
    assert humanml3d_frame_indices("CMU/x.npz", 100, 120.00004, 0, 3).tolist() == [0, 6, 12]
    assert humanml3d_frame_indices("CMU/x.npz", 100, 59.94, 0, 3).tolist() == [0, 2, 4]


def test_humanml3d_mpi_hdm05_trim_3s():
    path = "MPI_HDM05/bk/HDM_bk_01-01_01_120_poses.npz"
    assert humanml3d_trim_frames(path) == 60  # 3 s at 20 fps
    idx = humanml3d_frame_indices(path, 1200, 120.0, 0, 5)
    # every 6th AMASS frame, the first 60 of those dropped: 20-fps frame 0 is AMASS frame 360
    assert idx.tolist() == [360, 366, 372, 378, 384]
    idx = humanml3d_frame_indices(path, 1200, 120.0, 10, 12)
    assert idx.tolist() == [(60 + 10) * 6, (60 + 11) * 6]


@pytest.mark.parametrize("name, frames", [("Eyes_Japan_Dataset", 60), ("TotalCapture", 20), ("MPI_Limits", 20),
                                          ("Transitions_mocap", 10), ("CMU", 0), ("KIT", 0)])
def test_humanml3d_trims(name, frames):
    assert humanml3d_trim_frames(f"{name}/s/x_poses.npz") == frames


def test_humanml3d_end_minus_one_means_to_the_end():
    idx = humanml3d_frame_indices("CMU/01/01_01_poses.npz", 125, 120.0, 3, -1)
    # ceil(125 / 6) = 21 subsampled frames, from the 4th one on
    assert len(idx) == 21 - 3 and idx[0] == 18 and idx[-1] == 120
    full = humanml3d_frame_indices("MPI_HDM05/x_poses.npz", 600, 120.0, 0, -1)
    assert len(full) == 100 - 60 and full[0] == 360


def test_humanml3d_rejects_fps_below_20():
    with pytest.raises(ValueError):
        humanml3d_frame_indices("CMU/x.npz", 100, 15.0, 0, -1)


def test_time_rule():
    # 100 fps, [1 s, 2 s) at 20 fps -> 20 frames, AMASS frames 100, 105, ...
    idx = time_frame_indices(500, 100.0, 20.0, 1.0, 2.0)
    assert idx.tolist() == list(range(100, 200, 5))
    # 120.00004 fps rounds to the nearest frame
    idx = time_frame_indices(235, 120.00004, 20.0, 0.0, None)
    assert len(idx) == int(np.floor(235 / 120.00004 * 20 + 1e-6)) and idx[1] == 6
    # end past the sequence is clipped; end None / negative = to the end
    assert len(time_frame_indices(60, 60.0, 20.0, 0.0, 5.0)) == 20
    assert len(time_frame_indices(60, 60.0, 20.0, 0.5, -1)) == 10
    assert len(time_frame_indices(60, 60.0, 20.0, 2.0, 3.0)) == 0
    # 2.5 s at 30 fps -> 50 frames, nearest AMASS frames
    idx = time_frame_indices(75, 30.0, 20.0, 0.0, None)
    assert len(idx) == 50 and idx[:4].tolist() == [0, 2, 3, 4] and idx.max() <= 74


def test_frame_spec_and_clip_resolve():
    spec = FrameSpec("humanml3d", 0, 5)
    clip = Clip("000001", "MPI_HDM05/x_poses.npz", spec, 20.0)
    assert clip.frames is None and clip.num_frames is None
    r = clip.resolve(1200, 120.0)
    assert r.frames.tolist() == [360, 366, 372, 378, 384] and r.num_frames == 5
    t = Clip("00001", "KIT/4/w_poses.npz", FrameSpec("time", 0.0, 1.0), 20.0).resolve(100, 100.0)
    assert t.frames.tolist() == list(range(0, 100, 5))
    assert FrameSpec("humanml3d", 3, None).indices("CMU/x.npz", 125, 120.0).tolist() == \
        humanml3d_frame_indices("CMU/x.npz", 125, 120.0, 3, -1).tolist()

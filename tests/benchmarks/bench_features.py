"""Benchmark: AMASS -> joints -> HumanML3D features, clips per second.

Measures, on 10 s clips at 20 fps (200 motion frames; ``--quick``: 2 s clips):

* features: ``joints_to_features`` (vectorised over frames and joints) against a plain per-frame
  Python loop of the same computation (the loop baseline below, checked to give the same numbers);
* end to end: ``amass_to_joints`` (one batched body call) + ``joints_to_features`` against the body
  posed one frame at a time + the loop baseline.

The clip is the real AMASS sample from ../shared/data/amass (5 s at 120 fps, played forward then
backward to make 10 s of continuous motion) with the procedural body; without ../shared it is a
synthetic AMASS-format sequence.

    .venv/bin/python tests/benchmarks/bench_features.py [--quick] [--repeats N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scipy.ndimage import gaussian_filter1d  # noqa: E402

from lavimo.dataset import features as F  # noqa: E402
from lavimo.dataset.motion import HUMANML3D, Skeleton  # noqa: E402

FPS = 20.0
SECONDS = 10.0


# ------------------------------------------------------------------------------------------------
# the per-frame loop baseline (same algorithm, one frame / one joint at a time)
# ------------------------------------------------------------------------------------------------

def _bones(skel: Skeleton):
    out = []
    for chain in skel.chains:
        for k in range(1, len(chain)):
            out.append((chain[k], chain[k - 1], chain[k - 1] if k > 1 else -1))
    return out


def loop_features(joints: np.ndarray, skel: Skeleton = HUMANML3D) -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    t_len, j_len = joints.shape[:2]
    bones = _bones(skel)
    up, fwd_z = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    # retarget
    src = {c: np.linalg.norm(joints[0, c] - joints[0, p]) for c, p, _ in bones}
    l1, l2 = skel.leg_joints
    scale = (skel.target_lengths[l1] + skel.target_lengths[l2]) / (src[l1] + src[l2])
    pos = np.zeros_like(joints)
    for t in range(t_len):
        pos[t, 0] = joints[t, 0] * scale
        for c, p, _ in bones:
            d = joints[t, c] - joints[t, p]
            pos[t, c] = pos[t, p] + skel.target_lengths[c] * d / np.linalg.norm(d)
    floor = min(pos[t, j, 1] for t in range(t_len) for j in range(j_len))
    origin = np.array([pos[0, 0, 0], floor, pos[0, 0, 2]])
    r_hip, l_hip, r_sh, l_sh = skel.face_joints
    for t in range(t_len):
        pos[t] = pos[t] - origin
    across = pos[0, r_hip] - pos[0, l_hip] + pos[0, r_sh] - pos[0, l_sh]
    f0 = np.cross(up, across / np.linalg.norm(across))
    q0 = F._qbetween(f0 / np.linalg.norm(f0), fwd_z)
    for t in range(t_len):
        for j in range(j_len):
            pos[t, j] = F._qrot(q0, pos[t, j])
    # facing per frame (reference IK order), smoothed
    forward = np.zeros((t_len, 3))
    for t in range(t_len):
        a = pos[t, l_hip] - pos[t, r_hip] + pos[t, r_sh] - pos[t, l_sh]
        forward[t] = np.cross(up, a / np.linalg.norm(a))
    forward = gaussian_filter1d(forward, 20.0, axis=0, mode="nearest")
    root_q = np.zeros((t_len, 4))
    for t in range(t_len):
        root_q[t] = F._qbetween(forward[t] / np.linalg.norm(forward[t]), fwd_z)
    root_q[0] = (1.0, 0.0, 0.0, 0.0)
    rows = []
    for t in range(t_len - 1):
        world = {}
        rot = np.zeros((j_len, 6))
        for c, p, pr in bones:
            d = pos[t, c] - pos[t, p]
            world[c] = F._qbetween(skel.raw_offsets[c], d / np.linalg.norm(d))
            parent = root_q[t] if pr < 0 else world[pr]
            rot[c] = F._quat_to_cont6d(F._qmul(F._qinv(parent), world[c]))
        vel = F._qrot(root_q[t + 1], pos[t + 1, 0] - pos[t, 0])
        rv = F._qmul(root_q[t + 1], F._qinv(root_q[t]))
        ric = np.zeros((j_len, 3))
        lvel = np.zeros((j_len, 3))
        for j in range(j_len):
            rel = pos[t, j] - np.array([pos[t, 0, 0], 0.0, pos[t, 0, 2]])
            ric[j] = F._qrot(root_q[t], rel)
            lvel[j] = F._qrot(root_q[t], pos[t + 1, j] - pos[t, j])
        contacts = [float(np.sum((pos[t + 1, j] - pos[t, j]) ** 2) < skel.contact_threshold)
                    for j in (*skel.feet_left, *skel.feet_right)]
        rows.append(np.concatenate([[np.arcsin(rv[2]), vel[0], vel[2], ric[0, 1]], ric[1:].ravel(),
                                    rot[1:].ravel(), lvel.ravel(), contacts]))
    return np.asarray(rows, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------

def load_clip(seconds: float = SECONDS) -> tuple[SimpleNamespace, np.ndarray, str]:
    """(AMASS-like motion, seconds * 20 AMASS frame indices, description)."""
    shared = Path(os.environ.get("LAVIMO_SHARED_DATA", REPO.parent / "shared" / "data"))
    sample = shared / "amass" / "amass_sample.npz"
    n = int(seconds * FPS)
    if sample.is_file():
        from lavimo.dataset.amass import load_amass
        from lavimo.dataset.frames import time_frame_indices

        motion = load_amass(sample)
        fwd = time_frame_indices(motion.num_frames, motion.fps, FPS)
        frames = np.concatenate([fwd, fwd[::-1]])
        frames = np.resize(frames, n)
        return motion, frames, f"real AMASS sample ({motion.num_frames} frames @ {motion.fps:g} fps), ping-pong"
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * 120)) / 120.0
    poses = np.zeros((len(t), 156))
    poses[:, 0] = np.pi / 2                                   # stand up in AMASS's Z-up world
    amp = rng.uniform(0.1, 0.5, size=63)
    poses[:, 3:66] = amp * np.sin(2 * np.pi * rng.uniform(0.3, 1.2, size=63) * t[:, None])
    trans = np.stack([0.8 * t, np.zeros_like(t), 0.95 + 0.02 * np.sin(6 * t)], -1)
    motion = SimpleNamespace(path="synthetic", poses=poses, trans=trans, betas=np.zeros(16), gender="neutral",
                             fps=120.0, num_frames=len(t), model_type="smplh")
    return motion, np.arange(0, len(t), 6)[:n], "synthetic AMASS-format sequence (no ../shared)"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 s clips, 2 repeats")
    ap.add_argument("--seconds", type=float, default=None, help="clip length in seconds (default 10, quick 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 15, quick 2)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 15)
    base_repeats = 1 if args.quick else max(3, repeats // 5)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    from lavimo.body.model import load_body

    body = load_body(None)
    motion, frames, desc = load_clip(args.seconds or (2.0 if args.quick else SECONDS))
    print(f"clip: {desc}; {len(frames)} frames = {len(frames) / FPS:g} s at {FPS:g} fps; body: {body.kind}; "
          f"repeats {repeats} (baseline {base_repeats})")

    joints = F.amass_to_joints(motion, frames, body)
    fast = F.joints_to_features(joints)
    slow = loop_features(joints)
    err = float(np.abs(fast - slow).max())
    print(f"check: vectorised vs loop baseline max |diff| = {err:.2e}")
    if err > 1e-4:
        print("ERROR: the baseline disagrees with joints_to_features")
        return 1

    t_feat = median_time(lambda: F.joints_to_features(joints), repeats)
    t_feat_loop = median_time(lambda: loop_features(joints), base_repeats)

    def end_to_end():
        F.joints_to_features(F.amass_to_joints(motion, frames, body))

    def end_to_end_loop():
        per_frame = []
        for i in frames:
            out = body.pose(motion.poses[i:i + 1], motion.trans[i:i + 1], motion.betas[:10])
            per_frame.append(out.joints[0, :22])
        loop_features(np.asarray(per_frame, dtype=np.float64) @ F.AMASS_TO_HUMANML3D)

    t_e2e = median_time(end_to_end, repeats)
    t_e2e_loop = median_time(end_to_end_loop, base_repeats)

    print(f"{'stage':<34}{'median s/clip':>15}{'clips/s':>10}")
    for name, t in [("features, vectorised", t_feat), ("features, per-frame loop", t_feat_loop),
                    ("amass->features, batched", t_e2e), ("amass->features, per-frame loop", t_e2e_loop)]:
        print(f"{name:<34}{t:>15.5f}{1.0 / t:>10.1f}")
    print(f"ratio features: {t_feat_loop / t_feat:.1f}x faster than the loop baseline")
    print(f"ratio amass->features: {t_e2e_loop / t_e2e:.1f}x faster than the loop baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())

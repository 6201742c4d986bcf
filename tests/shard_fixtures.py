"""Small synthetic inputs for the shard and loader tests and benchmarks (not collected by pytest).

``make_corpus`` writes short H.264 videos with render-amass style sidecars and returns hand-made ``Clip``s;
``fake_features`` gives deterministic random (T-1, 263) features per clip, standing in for
``dataset.features.clip_features`` where a test does not need real motion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dataset.clip import Clip, FrameSpec, Text
from core.seeding import stable_rng
from dataset.video_frames import write_video

FEATURE_DIM = 263


def synthetic_frames(keyid: str, num_frames: int, size: int) -> np.ndarray:
    """(T, size, size, 3) uint8: a gradient background and a moving two-ellipse 'figure' (compresses like a
    render: mostly flat colours with smooth shading)."""
    rng = stable_rng(0, keyid, "video")
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([0.55 + 0.2 * y, 0.6 + 0.1 * x, 0.65 - 0.1 * y], -1)
    colour = rng.uniform(0.1, 0.9, 3)
    cx0, cy0, vx = rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.6), rng.uniform(-0.004, 0.004)
    out = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        cx = cx0 + vx * t
        body = ((x - cx) / 0.08) ** 2 + ((y - cy0) / 0.22) ** 2 < 1
        head = ((x - cx) / 0.05) ** 2 + ((y - cy0 + 0.28 + 0.01 * np.sin(t / 3)) / 0.05) ** 2 < 1
        shade = 0.7 + 0.3 * (1 - np.clip(np.abs(x - cx) / 0.08, 0, 1))
        img = base.copy()
        m = body | head
        img[m] = (colour[None, :] * shade[m][:, None])
        out[t] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def make_clip(keyid: str, split: str, num_frames: int, n_texts: int = 2) -> Clip:
    texts = tuple(Text(f"a person number {keyid} does motion {j}", 0.0, None) for j in range(n_texts))
    clip = Clip(keyid=keyid, amass_path=f"SYN/{keyid}_poses.npz", frame_spec=FrameSpec("time", 0.0, None, 20.0),
                fps=20.0, texts=texts, split=split, mirrored=keyid.startswith("M"), dataset="synthetic")
    return clip.resolve(num_frames * 6, 120.0)


def write_clip_video(videos: Path, clip: Clip, size: int) -> None:
    n = clip.num_frames
    write_video(videos / f"{clip.keyid}.mp4", synthetic_frames(clip.keyid, n, size), fps=clip.fps)
    side = {"keyid": clip.keyid, "avatar": "proc_00", "light": int(len(clip.keyid) % 3), "fps": clip.fps,
            "amass_path": clip.amass_path, "frames": [int(f) for f in clip.frames], "num_frames": n,
            "size": size, "camera": {}, "body_model": "procedural", "mirrored": clip.mirrored,
            "trajectory": "fixed", "version": "test"}
    (videos / f"{clip.keyid}.json").write_text(json.dumps(side))


def make_corpus(root: Path, counts: dict[str, int], size: int = 48, frames: tuple[int, int] = (12, 30),
                n_texts: int = 2) -> tuple[list[Clip], Path]:
    """Clips of each split (keyids 000000, 000001, ...) with videos under ``root/videos``."""
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    clips = []
    k = 0
    for split, n in counts.items():
        for _ in range(n):
            keyid = f"{k:06d}"
            t = int(stable_rng(0, keyid, "len").integers(frames[0], frames[1] + 1))
            clip = make_clip(keyid, split, t, n_texts=1 + k % n_texts)
            write_clip_video(videos, clip, size)
            clips.append(clip)
            k += 1
    return clips, videos


def fake_features(clip: Clip) -> np.ndarray:
    """Deterministic (T-1, 263) float32 features for a clip (stand-in for dataset.features.clip_features)."""
    rng = stable_rng(0, clip.keyid, "features")
    return rng.normal(0.0, 1.0, (clip.num_frames - 1, FEATURE_DIM)).astype(np.float32)


def simple_stats(arrays):
    """Plain per-dimension mean/std (stand-in for dataset.features.feature_stats)."""
    cat = np.concatenate(arrays, 0)
    return cat.mean(0).astype(np.float32), cat.std(0).astype(np.float32)

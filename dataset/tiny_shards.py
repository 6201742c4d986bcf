"""A small synthetic, *learnable* shard set for trainer tests, benchmarks and smoke runs (no rendering).

Every clip belongs to one of ``n_classes`` actions. Its captions are that action's sentences, its video is a
coloured background with a square moving along the action's path (plus noise), and its motion features are the
action's (T-1, D) pattern plus Gaussian noise — so text, video and motion agree and a model can learn to
retrieve across them. The set is written with the real shard writer (:func:`dataset.shards.build_shards`,
real mp4 -> JPEG frames, real sentence embeddings), so the manifests, ``stats.npz`` and members are exactly what
``build-shards`` writes. Features are *not* HumanML3D features of any real motion: only shapes/dtypes match.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from core.seeding import stable_rng

log = logging.getLogger(__name__)

ACTIONS = (
    ("a person walks forward", "someone walks straight ahead"),
    ("a person jumps up and down", "the man jumps in place"),
    ("a person waves with the right hand", "someone is waving hello"),
    ("a person sits down on a chair", "the person sits down slowly"),
    ("a person turns around in a circle", "someone spins around"),
    ("a person kicks with the left leg", "the man kicks forward"),
    ("a person crouches low to the ground", "someone squats down"),
    ("a person throws a ball overhand", "the person throws something"),
)


class _Features:
    """Picklable ``clip -> (T-1, D)`` lookup for build_shards."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def __call__(self, clip) -> np.ndarray:
        return self.table[clip.keyid]


def _video(cls: int, n_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(T, size, size, 3) uint8: class-coloured background, a white square moving along the class's path."""
    hue = np.array([(cls * 97) % 256, (cls * 53 + 80) % 256, (cls * 151 + 40) % 256], dtype=np.float32)
    frames = np.empty((n_frames, size, size, 3), dtype=np.float32)
    frames[:] = hue
    frames += rng.normal(0, 12, frames.shape)
    sq = max(2, size // 6)
    angle = 2 * np.pi * cls / 8
    for t in range(n_frames):
        a = t / max(1, n_frames - 1)
        cx = int((0.5 + 0.35 * np.cos(angle) * (2 * a - 1)) * (size - sq))
        cy = int((0.5 + 0.35 * np.sin(angle) * (2 * a - 1)) * (size - sq))
        frames[t, cy:cy + sq, cx:cx + sq] = 255
    return np.clip(frames, 0, 255).astype(np.uint8)


def _motion(cls: int, rows: int, dim: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """(rows, dim) float32: the class's smooth pattern plus noise."""
    base = stable_rng(seed, "tiny-shards-class", cls)
    amp = base.normal(0, 1, dim).astype(np.float32)
    freq = base.uniform(0.5, 3.0, dim).astype(np.float32)
    phase = base.uniform(0, 2 * np.pi, dim).astype(np.float32)
    t = np.linspace(0, 1, rows, dtype=np.float32)[:, None]
    return (amp * np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, 0.3, (rows, dim))).astype(np.float32)


def make_tiny_shards(out: str | os.PathLike, *, n_train: int = 48, n_val: int = 16, n_test: int = 0,
                     n_classes: int = 4, frames: tuple[int, int] = (16, 28), size: int = 32,
                     feature_dim: int = 263, fps: float = 20.0, samples_per_shard: int = 16, seed: int = 0,
                     embedder=None) -> Path:
    """Write a synthetic shard set to ``out`` and return it.

    Args:
        out: shard set directory (created; an existing set there is replaced).
        n_train, n_val, n_test: clips per split (keyids ``000000``...; class = index % n_classes).
        n_classes: number of actions (<= 8).
        frames: (min, max) video frames per clip; a clip of T frames has T-1 feature rows.
        size: video side in pixels (stored JPEG frames use the same size).
        feature_dim: motion feature dimension (263 HumanML3D-like, 251 KIT-like).
        fps: clip frame rate (written to the sidecars).
        samples_per_shard: clips per tar.
        seed: randomness (per clip via core.seeding).
        embedder: a SentenceEmbedder (default: the bundled all-MiniLM-L6-v2).
    """
    from dataset.clip import Clip, FrameSpec, Text
    from dataset.shards import BuildConfig, build_shards
    from dataset.video_frames import write_video

    if not 1 <= n_classes <= len(ACTIONS):
        raise ValueError(f"n_classes must be in 1..{len(ACTIONS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    videos = Path(tempfile.mkdtemp(prefix="tiny-shards-videos-", dir=out.parent))
    try:
        clips, feats = [], {}
        i = 0
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for _ in range(n):
                keyid = f"{i:06d}"
                cls = i % n_classes
                rng = stable_rng(seed, "tiny-shards", keyid)
                t = int(rng.integers(frames[0], frames[1] + 1))
                write_video(videos / f"{keyid}.mp4", _video(cls, t, size, rng), fps=fps)
                (videos / f"{keyid}.json").write_text(json.dumps({
                    "keyid": keyid, "num_frames": t, "fps": fps, "avatar": "synthetic", "light": None,
                    "mirrored": False, "body_model": "none", "frames": list(range(t))}))
                feats[keyid] = _motion(cls, t - 1, feature_dim, rng, seed)
                clips.append(Clip(keyid=keyid, amass_path=f"synthetic/{keyid}.npz",
                                  frame_spec=FrameSpec("time", 0.0, None), fps=fps,
                                  texts=tuple(Text(c, 0.0, (t - 1) / fps) for c in ACTIONS[cls]),
                                  split=split, dataset="synthetic"))
                i += 1
        splits = tuple(s for s, n in (("train", n_train), ("val", n_val), ("test", n_test)) if n > 0)
        cfg = BuildConfig(out=out, videos=videos, splits=splits, samples_per_shard=samples_per_shard,
                          frame_size=size, overwrite=True)
        report = build_shards(clips, cfg, embedder=embedder, features_fn=_Features(feats),
                              sources={"generator": "dataset.tiny_shards", "seed": seed}, show_progress=False)
        if report.failed or report.skipped:
            raise RuntimeError(f"tiny shard build lost clips: {report.summary()}")
        log.info("tiny shards in %s: %s", out, report.summary())
    finally:
        shutil.rmtree(videos, ignore_errors=True)
    return out

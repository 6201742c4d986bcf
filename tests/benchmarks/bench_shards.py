"""Shard build throughput (clips/s) of lavimo.dataset.shards.build.build_shards against a naive writer, same clips, one run.

  naive   one process; per clip: decode the mp4 at full resolution, resize each frame with PIL, JPEG-encode,
          embed the clip's captions in their own call, write the sample with webdataset's TarWriter (no resume
          state, no sha256, no manifest, no stats).
  build   build_shards (the build-shards command): the same members; frames scaled by ffmpeg while decoding,
          captions embedded once per shard, clips processed by --workers processes, deterministic headers,
          atomic shards, manifests, stats, dataset card.

Motion features come from a deterministic stand-in (random (T-1, 263) arrays) so the numbers measure the shard
writer; computing features from AMASS is lavimo.dataset.features' cost. Prints medians over repeats and the ratio.

    .venv/bin/python tests/benchmarks/bench_shards.py [--quick] [--clips N] [--video-size S] [--workers W]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_loader import build_corpus  # noqa: E402
from tests.fixtures.shard_fixtures import fake_features  # noqa: E402


def naive_sample(clip, videos: Path, embedder, frame_size: int = 256) -> dict:
    """One sample the straightforward way: full-resolution decode, PIL resize per frame, per-clip embedding."""
    import json

    import numpy as np
    from PIL import Image

    from lavimo.dataset.shards.format import json_bytes, npy_bytes
    from lavimo.dataset.shards.build import texts_of
    from lavimo.core.mp4 import read_video
    from lavimo.dataset.video_frames import encode_jpgs, read_sidecar

    side = read_sidecar(videos / f"{clip.keyid}.json")
    frames, _ = read_video(videos / f"{clip.keyid}.mp4")
    small = np.stack([np.asarray(Image.fromarray(f).resize((frame_size, frame_size), Image.BILINEAR))
                      for f in frames])
    feats = fake_features(clip)
    texts = texts_of(clip)
    return {"__key__": clip.keyid, "video.jpgs": encode_jpgs(small, 90), "motion.npy": npy_bytes(feats),
            "texts.json": json_bytes(texts),
            "sent.npy": npy_bytes(embedder.encode([t["caption"] for t in texts]).astype(np.float16)),
            "meta.json": json.dumps({"keyid": clip.keyid, "num_frames": len(frames),
                                     "avatar": side.get("avatar")}).encode()}


def naive_build(clips, videos: Path, out: Path, embedder, samples_per_shard: int) -> float:
    import webdataset as wds

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    writer = None
    for i, c in enumerate(clips):
        if i % samples_per_shard == 0:
            if writer is not None:
                writer.close()
            writer = wds.TarWriter(str(out / f"train-{i // samples_per_shard:06d}.tar"))
        writer.write(naive_sample(c, videos, embedder))
    if writer is not None:
        writer.close()
    return len(clips) / (time.perf_counter() - t0)


def real_build(clips, videos: Path, out: Path, embedder, samples_per_shard: int, workers: int) -> float:
    from lavimo.dataset.shards.build import BuildConfig, build_shards

    t0 = time.perf_counter()
    rep = build_shards(clips, BuildConfig(out=out, videos=videos, splits=("train",), workers=workers,
                                          samples_per_shard=samples_per_shard),
                       embedder=embedder, features_fn=fake_features, show_progress=False)
    assert rep.done + rep.kept == len(clips) and not rep.failed, rep.summary()
    return len(clips) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--clips", type=int, default=None, help="clips (default 32; quick 4)")
    ap.add_argument("--video-size", type=int, default=None, help="rendered video side (default 512; quick 64)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3; quick 1)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="build-shards --workers")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    n = args.clips or (4 if args.quick else 32)
    size = args.video_size or (64 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 3)
    frames = (16, 30) if args.quick else (80, 196)
    per_shard = max(1, n // 4)

    from lavimo.dataset.text_embed import SentenceEmbedder

    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        clips, videos = build_corpus(tmp, n, size, frames)
        embedder = SentenceEmbedder()
        embedder.encode(["warm up"])
        naive, real, noop = [], [], []
        for r in range(repeats):
            naive.append(naive_build(clips, videos, tmp / f"naive{r}", embedder, per_shard))
            real.append(real_build(clips, videos, tmp / f"real{r}", embedder, per_shard, args.workers))
            noop.append(real_build(clips, videos, tmp / f"real{r}", embedder, per_shard, args.workers))
        mn, mr, mo = statistics.median(naive), statistics.median(real), statistics.median(noop)
        print(f"bench_shards: {n} clips, {size}x{size} video, frames {frames[0]}-{frames[1]}, jpgs at 256 px, "
              f"{repeats} repeats, {args.workers} workers, {os.cpu_count()} cores")
        print(f"{'path':<34}{'clips/s (median)':>18}{'x naive':>10}")
        print(f"{'naive writer, 1 process':<34}{mn:>18.2f}{1.0:>10.2f}")
        print(f"{f'build_shards, {args.workers} workers':<34}{mr:>18.2f}{mr / mn:>10.2f}")
        print(f"{'build_shards re-run (no-op)':<34}{mo:>18.2f}{mo / mn:>10.2f}")
        print(f"ratio build_shards / naive: {mr / mn:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

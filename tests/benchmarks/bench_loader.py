"""Loader throughput: samples/s of training samples (8 frames at 224x224, augmented, plus text and motion).

Measured in one run on the same synthetic clips:
  baseline  naive per-clip loading: decode the whole mp4 with imageio, pick 8 frames (segment sampling),
            torchvision PIL transforms per frame (random resize + 256 crop, colour jitter, grayscale, blur,
            resize to 224, CLIP normalisation), read texts/sentence embeddings/motion from files.
  jpgs      lavimo.dataset.shards.stream.make_loader over shards with the ``video.jpgs`` member (the default format).
  mp4       lavimo.dataset.shards.stream.make_loader over shards with the rendered ``video.mp4`` member.
each in one process (per-worker throughput), and the baseline and jpgs loader with all cores. Prints medians
over repeats, ratios to the baseline and bytes per sample of each format.

    .venv/bin/python tests/benchmarks/bench_loader.py [--quick] [--clips N] [--video-size S] [--repeats R]
        [--videos RENDERS --annotations SRC --amass ROOT]   (real render-amass output instead of synthetic clips)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.fixtures.shard_fixtures import fake_features, make_clip, write_clip_video  # noqa: E402


def build_corpus(root: Path, n: int, size: int, frames: tuple[int, int]):
    from lavimo.core.seeding import stable_rng

    videos = root / "videos"
    videos.mkdir(parents=True)
    clips = []
    for i in range(n):
        keyid = f"{i:06d}"
        t = int(stable_rng(0, keyid, "len").integers(frames[0], frames[1] + 1))
        c = make_clip(keyid, "train", t, n_texts=1 + i % 3)
        write_clip_video(videos, c, size)
        clips.append(c)
    return clips, videos


# ------------------------------------------------------------------------------------------------ baseline
class NaiveLoader:
    """The straightforward per-clip loader the shards replace (one clip at a time, files on disk)."""

    def __init__(self, clips, videos: Path, side: Path, image_size: int = 224, num_frames: int = 8, seed: int = 0):
        import torchvision.transforms as T

        self.clips, self.videos, self.side = clips, videos, side
        self.num_frames = num_frames
        self.rng = np.random.default_rng(seed)
        self.tf = T.Compose([
            T.RandomResizedCrop(256, scale=(0.64, 1.0), ratio=(1.0, 1.0)),
            T.Resize(image_size),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(0.2),
            T.RandomApply([T.GaussianBlur(13, (0.1, 2.0))], p=0.5),
            T.ToTensor(),
            T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ])
        self.mean = np.zeros(263, np.float32)
        self.std = np.ones(263, np.float32)

    def sample(self, clip) -> dict:
        import imageio.v2 as imageio
        import torch
        from PIL import Image

        frames = imageio.mimread(self.videos / f"{clip.keyid}.mp4", memtest=False)  # the whole video
        n = len(frames)
        edges = np.linspace(0, n, self.num_frames + 1)
        idx = np.clip(np.floor(edges[:-1] + self.rng.random(self.num_frames) * np.diff(edges)).astype(int), 0, n - 1)
        video = torch.stack([self.tf(Image.fromarray(frames[i])) for i in idx])
        texts = json.loads((self.side / f"{clip.keyid}.texts.json").read_text())
        sent = np.load(self.side / f"{clip.keyid}.sent.npy")
        i = int(self.rng.integers(len(texts)))
        motion = (np.load(self.side / f"{clip.keyid}.motion.npy")[:196] - self.mean) / self.std
        return {"video": video, "text": texts[i]["caption"], "sent_emb": torch.from_numpy(sent[i].astype(np.float32)),
                "motion": torch.from_numpy(motion.astype(np.float32))}


def _baseline_worker(args):
    import torch

    torch.set_num_threads(1)
    clips, videos, side = args
    loader = NaiveLoader(clips, videos, side)
    for c in clips:
        loader.sample(c)
    return len(clips)


def measure_baseline(clips, videos, side, n_procs: int) -> float:
    t0 = time.perf_counter()
    if n_procs == 1:
        loader = NaiveLoader(clips, videos, side)
        for c in clips:
            loader.sample(c)
        n = len(clips)
    else:
        import multiprocessing as mp

        parts = [(clips[i::n_procs], videos, side) for i in range(n_procs)]
        with mp.get_context("fork").Pool(n_procs) as pool:
            n = sum(pool.map(_baseline_worker, parts))
    return n / (time.perf_counter() - t0)


def write_side_files(clips, side: Path, embedder) -> None:
    """texts / sentence embeddings / motion as loose files for the baseline (what it reads besides the mp4)."""
    from lavimo.dataset.shards.build import texts_of

    side.mkdir(parents=True)
    for c in clips:
        texts = texts_of(c)
        (side / f"{c.keyid}.texts.json").write_text(json.dumps(texts))
        np.save(side / f"{c.keyid}.sent.npy", embedder.encode([t["caption"] for t in texts]).astype(np.float16))
        np.save(side / f"{c.keyid}.motion.npy", fake_features(c))


# ------------------------------------------------------------------------------------------------ loader
def measure_loader(shards: Path, n_samples: int, batch_size: int, workers: int) -> float:
    from lavimo.dataset.shards.stream import make_loader

    batches = max(1, n_samples // batch_size)
    loader = make_loader(shards, "train", batch_size=batch_size, train=True, num_workers=workers,
                         resampled=True, epoch_batches=batches, seed=1)
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        n += len(b["keyid"])
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--clips", type=int, default=None, help="clips in the corpus (default 32; quick 4)")
    ap.add_argument("--video-size", type=int, default=None, help="rendered video side (default 512; quick 64)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 3; quick 1)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the all-cores runs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--videos", type=Path, help="use real render-amass output (<keyid>.mp4 + .json) instead of "
                    "synthetic videos; needs --annotations and --amass")
    ap.add_argument("--annotations", type=Path, help="annotation source of --videos (load_clips)")
    ap.add_argument("--amass", type=Path, help="AMASS root of --annotations")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    n_clips = args.clips or (4 if args.quick else 32)
    size = args.video_size or (64 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 3)
    frames = (16, 30) if args.quick else (80, 196)
    batch = 4 if args.quick else 8

    from lavimo.dataset.shards.format import read_manifests
    from lavimo.dataset.shards.build import BuildConfig, build_shards
    from lavimo.dataset.text_embed import SentenceEmbedder

    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        if args.videos is not None:
            from dataclasses import replace

            from lavimo.dataset.annotations import load_clips

            clips = [replace(c, split="train") for c in load_clips(args.annotations, args.amass)
                     if (args.videos / f"{c.keyid}.mp4").is_file()][:n_clips]
            videos = args.videos
            n_clips = len(clips)
            size = json.loads((videos / f"{clips[0].keyid}.json").read_text()).get("size", "?")
            size = size[0] if isinstance(size, (list, tuple)) else size
        else:
            clips, videos = build_corpus(tmp, n_clips, size, frames)
        embedder = SentenceEmbedder()
        write_side_files(clips, tmp / "side", embedder)
        sets = {}
        for fmt in ("jpgs", "mp4"):
            out = tmp / f"shards-{fmt}"
            build_shards(clips, BuildConfig(out=out, videos=videos, splits=("train",), video_format=fmt,
                                            samples_per_shard=max(1, n_clips // 4)),
                         embedder=embedder, features_fn=fake_features, show_progress=False)
            m = read_manifests(out)["train"]
            sets[fmt] = (out, m["video"]["bytes_per_sample"], m["bytes_per_sample"])
        mp4_bytes = statistics.mean((videos / f"{c.keyid}.mp4").stat().st_size for c in clips)

        measure_loader(sets["jpgs"][0], batch, batch, 0)  # warm-up: imports, page cache
        NaiveLoader(clips[:1], videos, tmp / "side").sample(clips[0])
        results: dict[str, list[float]] = {k: [] for k in ("baseline", "jpgs", "mp4")}
        multi = args.workers > 1 and not args.quick
        if multi:
            results.update({"baseline_all": [], "jpgs_all": []})
        n_loader = max(n_clips, 4 * batch)
        for _ in range(repeats):
            results["baseline"].append(measure_baseline(clips, videos, tmp / "side", 1))
            results["jpgs"].append(measure_loader(sets["jpgs"][0], n_loader, batch, 0))
            results["mp4"].append(measure_loader(sets["mp4"][0], n_clips, batch, 0))
            if multi:
                results["baseline_all"].append(measure_baseline(clips, videos, tmp / "side", args.workers))
                results["jpgs_all"].append(measure_loader(sets["jpgs"][0], 4 * n_loader, batch, args.workers))
        med = {k: statistics.median(v) for k, v in results.items()}
        avg_frames = statistics.mean(c.num_frames for c in clips)
        kind = "rendered" if args.videos is not None else "synthetic"
        print(f"bench_loader: {n_clips} {kind} clips, {size}x{size} video, {avg_frames:.0f} frames on average, "
              f"8 frames -> 224x224 augmented, batch {batch}, {repeats} repeats, torch threads 1, "
              f"{os.cpu_count()} cores")
        print(f"{'path':<28}{'samples/s (median)':>20}{'x baseline':>12}")
        base = med["baseline"]
        names = {"baseline": "naive baseline, 1 proc", "jpgs": "loader jpgs, 1 proc", "mp4": "loader mp4, 1 proc",
                 "baseline_all": f"naive baseline, {args.workers} procs",
                 "jpgs_all": f"loader jpgs, {args.workers} workers"}
        for k, v in med.items():
            ref = med["baseline_all"] if k == "jpgs_all" else base
            print(f"{names[k]:<28}{v:>20.1f}{v / ref:>12.2f}")
        print(f"bytes/sample: video.jpgs {sets['jpgs'][1]:.0f} (whole sample {sets['jpgs'][2]:.0f}); "
              f"video.mp4 {sets['mp4'][1]:.0f} (whole sample {sets['mp4'][2]:.0f}); rendered mp4 {mp4_bytes:.0f}")
        print(f"ratio loader jpgs / naive baseline (1 process): {med['jpgs'] / base:.2f}x; "
              f"mp4 member: {med['mp4'] / base:.2f}x")
        if args.json:
            args.json.write_text(json.dumps({"median": med, "runs": results, "bytes_per_sample": {
                "jpgs_video": sets["jpgs"][1], "jpgs_sample": sets["jpgs"][2], "mp4_video": sets["mp4"][1],
                "mp4_sample": sets["mp4"][2]}, "clips": n_clips, "video_size": size,
                "avg_frames": avg_frames}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Streaming loader over build-shards output: a WebDataset pipeline yielding training / evaluation batches.

Pipeline (per DataLoader worker): shard list (manifest or brace notation) -> shard shuffle (training; the same
permutation on every rank, re-drawn every pass) -> split by rank (``rank``/``world_size`` or torch.distributed)
-> split by worker -> tar reading -> sample shuffle buffer (training) -> per-sample decode and transforms ->
batches with padding masks. The main process caps an epoch at ``epoch_batches`` batches with ``with_epoch``;
in training every worker streams its shards in an endless loop, so every rank yields exactly ``epoch_batches``
batches. Evaluation reads every sample of the rank's shards exactly once, in order, with a last partial batch.
Shards are disjoint across ranks and workers within a pass; the sample shuffle buffer (at most one worker's
share of a pass) mixes the end of one pass with the start of the next.

Per sample:
- video: ``num_frames`` frames by segment sampling (T frames cut into ``num_frames`` equal segments; a random
  frame of each segment in training, the centre frame in evaluation); training augmentation
  (dataset/augment.py: random resize + 256 crop, colour jitter, grayscale, blur; no horizontal flip by default)
  or a centre square in evaluation; resized to ``image_size`` and CLIP-normalised -> (num_frames, 3, S, S).
- text: one caption at random in training, the first in evaluation, with its sentence embedding (float32);
  ``texts`` keeps all captions.
- motion: features normalised with ``stats.npz`` ((x - mean) / std), cropped to ``max_motion_len`` rows
  (a random window in training, the first rows in evaluation).

Corrupt samples (unreadable members, bad video, shard read errors) are skipped with a warning and counted in
``loader.skipped``; they never stop an epoch.
"""

from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from dataset.augment import AugmentConfig, augment_clip, center_box, clip_normalize, eval_view
from dataset.seeding import stable_rng, stable_seed

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 1000
_SKIPPED = [0]  # per process: corrupt samples / shard errors since the last batch of this process


# --------------------------------------------------------------------------------------------- manifest, urls
def read_manifest(shards: str | Path, split: str) -> dict:
    """The manifest ``{shards}/{split}.json`` as a dict (FileNotFoundError with a hint when absent)."""
    path = Path(shards) / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest for split {split!r}; build the shards with build-shards")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def resolve_shards(shards: str | Path | Sequence[str], split: str) -> tuple[list[str], dict | None, Path]:
    """Shard urls, manifest (or None) and the shard set directory for a directory, brace pattern or list."""
    import webdataset as wds

    if isinstance(shards, (list, tuple)):
        urls = [str(u) for u in shards]
    elif Path(shards).is_dir():
        root = Path(shards)
        m = read_manifest(root, split)
        return [str(root / e["name"]) for e in m["shards"]], m, root
    elif "{" not in str(shards) and not str(shards).endswith(".tar") and "://" not in str(shards):
        raise FileNotFoundError(f"{shards}: no such shard set directory (build it with build-shards)")
    else:
        urls = list(wds.shardlists.expand_urls(str(shards)))
    if not urls:
        raise FileNotFoundError(f"no shards in {shards!r}")
    root = Path(urls[0]).parent
    manifest = None
    if (root / f"{split}.json").is_file():
        manifest = read_manifest(root, split)
    return urls, manifest, root


def load_stats(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) (D,) float32 from ``stats.npz`` (a file or a shard set directory)."""
    path = Path(root)
    if path.is_dir():
        path = path / "stats.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature statistics missing (build-shards writes them with the train "
                                "split; pass stats= to use another shard set's)")
    with np.load(path) as z:
        mean, std = z["mean"].astype(np.float32), z["std"].astype(np.float32)
    return mean, np.where(std < 1e-8, 1.0, std).astype(np.float32)


# --------------------------------------------------------------------------------------------- pipeline stages
try:
    from torch.utils.data import IterableDataset as _IterableDataset
except ImportError:  # pragma: no cover
    _IterableDataset = object


def _dist_info(rank: int, world_size: int) -> tuple[int, int]:
    if world_size > 1:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        return rank, world_size
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return 0, 1


def _worker_info() -> tuple[int, int]:
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardSource(_IterableDataset):
    """First pipeline stage: yields ``{"url": ...}`` for this rank and worker.

    training, not resampled: endless passes; each pass permutes all shards with a seed shared by every rank and
        worker (seed, epoch, pass), then takes every ``world_size``-th shard from ``rank`` and every
        ``num_workers``-th of those from the worker -> disjoint shards across ranks and workers.
    training, resampled: shards drawn with replacement, independently per (seed, epoch, rank, worker).
    evaluation: one pass in manifest order, split by rank then worker.
    """

    def __init__(self, urls: list[str], train: bool, resampled: bool, seed: int, rank: int, world_size: int):
        self.urls, self.train, self.resampled = list(urls), train, resampled
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker_info()
        if self.resampled:
            rng = random.Random(stable_seed(self.seed, "resample", self.epoch, self.rank, worker))
            while True:
                yield {"url": rng.choice(self.urls)}
        passes = 0
        while True:
            order = list(self.urls)
            if self.train:
                random.Random(stable_seed(self.seed, "shards", self.epoch, passes)).shuffle(order)
            mine = order[self.rank::self.world_size][worker::num_workers]
            if not mine:
                return
            for u in mine:
                yield {"url": u}
            passes += 1
            if not self.train:
                return


def _count_and_continue(exc: Exception) -> bool:
    """webdataset handler: log a shard/tar read error, count it, keep going."""
    _SKIPPED[0] += 1
    log.warning("skipping unreadable shard data: %s", exc)
    return True


class SampleTransform:
    """Decode one raw webdataset sample (member -> bytes) into tensors (see the module docstring)."""

    def __init__(self, train: bool, image_size: int, num_frames: int, max_motion_len: int, mean: np.ndarray,
                 std: np.ndarray, augment: AugmentConfig | None, frame_crop: float = 1.0):
        if not 0.0 < frame_crop <= 1.0:
            raise ValueError(f"frame_crop must be in (0, 1], got {frame_crop}")
        self.train, self.image_size, self.num_frames = train, image_size, num_frames
        self.max_motion_len = max_motion_len
        self.mean, self.std = mean, std
        self.augment = augment
        self.frame_crop = float(frame_crop)

    def frame_indices(self, n: int, rng: np.random.Generator | None) -> np.ndarray:
        """Segment sampling of ``num_frames`` indices out of ``n`` frames (random in training, else centres)."""
        edges = np.linspace(0.0, n, self.num_frames + 1)
        lo, hi = edges[:-1], edges[1:]
        if self.train and rng is not None:
            pos = lo + rng.random(self.num_frames) * (hi - lo)
        else:
            pos = (lo + hi) / 2.0
        return np.clip(np.floor(pos).astype(np.int64), 0, n - 1)

    def video(self, sample: dict, rng: np.random.Generator | None):
        import torch
        from dataset.video_frames import decode_jpgs, jpgs_info, mp4_frames

        if "video.jpgs" in sample:
            data = sample["video.jpgs"]
            n = jpgs_info(data)[0]
            zoom = self.augment.scale[1] if (self.train and self.augment is not None) else 1.0
            frames = decode_jpgs(data, self.frame_indices(n, rng),
                                 min_size=int(np.ceil(self.image_size * zoom / self.frame_crop)))
        elif "video.mp4" in sample:
            meta = json.loads(sample["meta.json"])
            idx = self.frame_indices(int(meta["num_frames"]), rng)
            frames = torch.from_numpy(mp4_frames(sample["video.mp4"], idx)).permute(0, 3, 1, 2).contiguous()
        else:
            raise KeyError("no video member (video.jpgs or video.mp4)")
        if self.frame_crop < 1.0:
            t, l, h, w = center_box(*frames.shape[-2:], fraction=self.frame_crop)
            frames = frames[:, :, t:t + h, l:l + w]
        if self.train and self.augment is not None:
            x = augment_clip(frames, self.image_size, self.augment, rng)
        else:
            x = eval_view(frames, self.image_size)
        return clip_normalize(x)

    def __call__(self, sample: dict, rng: np.random.Generator | None) -> dict:
        import torch

        texts = json.loads(sample["texts.json"])
        captions = [t["caption"] if isinstance(t, dict) else str(t) for t in texts]
        if not captions:
            raise ValueError("no texts")
        sent = np.load(io.BytesIO(sample["sent.npy"]))
        if sent.shape[0] != len(captions):
            raise ValueError(f"sent.npy has {sent.shape[0]} rows for {len(captions)} texts")
        i = int(rng.integers(len(captions))) if self.train and rng is not None else 0
        motion = np.load(io.BytesIO(sample["motion.npy"]))
        if motion.ndim != 2 or motion.shape[1] != self.mean.shape[0] or len(motion) == 0:
            raise ValueError(f"motion.npy shape {motion.shape} does not match stats dim {self.mean.shape[0]}")
        if len(motion) > self.max_motion_len:
            start = int(rng.integers(len(motion) - self.max_motion_len + 1)) if self.train and rng is not None else 0
            motion = motion[start:start + self.max_motion_len]
        motion = (motion - self.mean) / self.std
        return {
            "keyid": sample["__key__"],
            "video": self.video(sample, rng),
            "text": captions[i],
            "texts": captions,
            "sent_emb": torch.from_numpy(sent[i].astype(np.float32)),
            "motion": torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)),
        }


def collate(samples: list[dict]) -> dict:
    """Stack processed samples into the batch dict of docs/interfaces.md (motion zero-padded, mask True = valid)."""
    import torch

    lengths = torch.tensor([s["motion"].shape[0] for s in samples], dtype=torch.long)
    t_max = int(lengths.max())
    dim = samples[0]["motion"].shape[1]
    motion = torch.zeros(len(samples), t_max, dim, dtype=torch.float32)
    for j, s in enumerate(samples):
        motion[j, :s["motion"].shape[0]] = s["motion"]
    mask = torch.arange(t_max)[None, :] < lengths[:, None]
    return {
        "keyid": [s["keyid"] for s in samples],
        "video": torch.stack([s["video"] for s in samples]),
        "text": [s["text"] for s in samples],
        "texts": [s["texts"] for s in samples],
        "sent_emb": torch.stack([s["sent_emb"] for s in samples]),
        "motion": motion,
        "mask": mask,
        "length": lengths,
    }


class _ProcessAndBatch:
    """Pipeline stage: shuffle buffer (training), per-sample transform with corrupt-sample skipping, batching.

    Each batch carries ``_skipped`` (samples/shard errors skipped in this process since its last batch); the
    loader pops it and sums it into ``loader.skipped``."""

    def __init__(self, transform: SampleTransform, batch_size: int, train: bool, seed: int, rank: int,
                 source: ShardSource, shuffle_buffer: int):
        self.transform, self.batch_size, self.train = transform, batch_size, train
        self.seed, self.rank, self.source, self.shuffle_buffer = seed, rank, source, shuffle_buffer

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        import webdataset as wds

        worker, _ = _worker_info()
        rng = stable_rng(self.seed, "samples", self.source.epoch, self.rank, worker)
        if self.train and self.shuffle_buffer > 1:
            src = wds.filters._shuffle(src, self.shuffle_buffer, min(100, self.shuffle_buffer),
                                       rng=random.Random(stable_seed(self.seed, "buffer", self.source.epoch,
                                                                     self.rank, worker)))
        batch: list[dict] = []
        for raw in src:
            try:
                batch.append(self.transform(raw, rng if self.train else None))
            except Exception as exc:  # noqa: BLE001 - a corrupt sample never stops a run; counted and logged
                _SKIPPED[0] += 1
                log.warning("skipping corrupt sample %s (%s): %s: %s", raw.get("__key__"), raw.get("__url__"),
                            type(exc).__name__, exc)
                continue
            if len(batch) == self.batch_size:
                yield self._emit(batch)
                batch = []
        if batch and not self.train:
            yield self._emit(batch)
        elif _SKIPPED[0] and not self.train:
            yield {"_skipped": self._take_skipped()}

    @staticmethod
    def _take_skipped() -> int:
        n, _SKIPPED[0] = _SKIPPED[0], 0
        return n

    def _emit(self, batch: list[dict]) -> dict:
        out = collate(batch)
        out["_skipped"] = self._take_skipped()
        return out


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    _SKIPPED[0] = 0


# --------------------------------------------------------------------------------------------- loader
class StreamLoader:
    """Iterable of batch dicts (see :func:`make_loader`). Each ``iter()`` is one epoch; ``skipped`` counts
    corrupt samples skipped so far; ``len()`` is the number of batches per epoch when known."""

    def __init__(self, pipeline, *, num_workers: int, epoch_batches: int | None, source: ShardSource,
                 num_samples: int | None, prefetch_factor: int = 2):
        self.pipeline, self.num_workers, self.epoch_batches = pipeline, num_workers, epoch_batches
        self.source, self.num_samples, self.prefetch_factor = source, num_samples, prefetch_factor
        self.skipped = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed shard order and augmentation of the next ``iter()``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("this loader's epoch length is unknown (evaluation over shards without a manifest)")
        return self.epoch_batches

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        self.source.epoch = self.epoch
        loader = wds.WebLoader(self.pipeline, batch_size=None, num_workers=self.num_workers,
                               worker_init_fn=_worker_init if self.num_workers > 0 else None,
                               prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
                               persistent_workers=False)
        if self.epoch_batches is not None:
            loader = loader.with_epoch(self.epoch_batches)
        self.epoch += 1
        for batch in loader:
            n = batch.pop("_skipped", 0)
            if n:
                self.skipped += int(n)
                log.warning("%d corrupt samples skipped so far", self.skipped)
            if "video" in batch:
                yield batch


def make_loader(shards: str | Path | Sequence[str], split: str, *, batch_size: int, train: bool,
                num_workers: int = 0, seed: int = 0, image_size: int = 224, num_frames: int = 8,
                max_motion_len: int = 196, epoch_batches: int | None = None, rank: int = 0, world_size: int = 1,
                augment: Any = None, resampled: bool = False, stats: str | Path | None = None,
                shuffle_buffer: int = SHUFFLE_BUFFER, prefetch_factor: int = 2,
                frame_crop: float = 1.0) -> StreamLoader:
    """Streaming loader over a shard set.

    Args:
        shards: a shard set directory (shards from ``{split}.json``), a brace pattern
            (``"SHARDS/train-{000000..000009}.tar"``) or a list of tar paths/urls.
        split: "train" | "val" | "test" (names the manifest).
        batch_size: samples per batch B.
        train: training mode (shuffling, augmentation, random text and crops, endless shard loop capped at
            ``epoch_batches``) or evaluation (every sample of this rank exactly once, in order, last batch partial).
        num_workers: DataLoader worker processes (0 = in the calling process).
        seed: seeds shard order, shuffle buffer and augmentation (with the epoch, rank and worker).
        image_size: output frame side S in pixels.
        num_frames: frames per clip.
        max_motion_len: maximum motion rows T (feature frames at the clip fps, 20 fps for HumanML3D).
        epoch_batches: batches per epoch on every rank (training default: num_samples // (B * world_size));
            in evaluation None = all samples.
        rank, world_size: this process's DDP rank and the number of ranks (defaults: torch.distributed when
            initialised, else a single process).
        augment: None/True = the default AugmentConfig in training, False = none, a dict or AugmentConfig.
            Never applied in evaluation.
        resampled: draw shards with replacement (each rank/worker independently) for long runs; training only.
        stats: path of a stats.npz (default ``<shard set>/stats.npz``).
        shuffle_buffer: samples in the training shuffle buffer per worker (<= 1 disables it).
        prefetch_factor: batches prefetched per worker.
        frame_crop: fraction of each stored frame's short side kept as a centred square before augmentation
            and resizing (1 = the whole frame; < 1 zooms in on the centred person).

    Yields:
        dicts with ``keyid`` list[str], ``video`` (B, num_frames, 3, S, S) float32 CLIP-normalised, ``text``
        list[str], ``texts`` list[list[str]], ``sent_emb`` (B, D) float32, ``motion`` (B, T, F) float32
        normalised, ``mask`` (B, T) bool (True = valid), ``length`` (B,) long.
    """
    import webdataset as wds

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if resampled and not train:
        raise ValueError("resampled=True is for training; evaluation reads every sample once")
    urls, manifest, root = resolve_shards(shards, split)
    rank, world_size = _dist_info(rank, world_size)
    mean, std = load_stats(stats if stats is not None else root)
    num_samples = manifest["num_samples"] if manifest else None
    if train:
        if epoch_batches is None:
            if num_samples is None:
                raise ValueError("epoch_batches is needed for training on shards without a manifest")
            epoch_batches = max(1, num_samples // (batch_size * world_size))
        if not resampled and len(urls) < world_size:
            raise ValueError(f"{len(urls)} shards for {world_size} ranks: every rank needs a shard; use "
                             "resampled=True or rebuild with a smaller --samples-per-shard")
        if not resampled and num_workers > 1 and len(urls) < world_size * num_workers:
            log.warning("%d shards for %d ranks x %d workers: some workers stay idle", len(urls), world_size,
                        num_workers)
        if num_samples and shuffle_buffer > 1:
            # a buffer larger than this worker's share of one pass would only mix consecutive passes
            share = -(-num_samples // (world_size * max(1, num_workers)))
            shuffle_buffer = max(2, min(shuffle_buffer, share))
    source = ShardSource(urls, train, resampled, seed, rank, world_size)
    transform = SampleTransform(train, image_size, num_frames, max_motion_len, mean, std,
                                AugmentConfig.from_any(augment) if train else None, frame_crop)
    stage = _ProcessAndBatch(transform, batch_size, train, seed, rank, source, shuffle_buffer)
    pipeline = wds.DataPipeline(source, wds.tarfile_to_samples(handler=_count_and_continue), stage)
    return StreamLoader(pipeline, num_workers=num_workers, epoch_batches=epoch_batches, source=source,
                        num_samples=num_samples, prefetch_factor=prefetch_factor)

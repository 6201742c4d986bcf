"""The training loader whose global sample order does not depend on the number of ranks (elastic resume,
docs/training.md, "Elastic resume").

The global stream of an epoch is ``S`` *loader streams* (``S`` fixed for the run, not tied to ranks or
workers). Stream ``s`` reads, pass after pass, the shards ``order[s::S]`` of the permutation every rank draws
from (seed, epoch, pass), through its own shuffle buffer and augmentation RNG, both seeded by (seed, epoch,
``s``). Global batch ``g`` (``G`` rows) is the ``g``-th chunk of ``c = G / S`` usable samples of every stream,
stream 0 first. Rank ``r`` of ``W`` takes rows ``[r * G / W, (r + 1) * G / W)`` of it: it reads the streams those
rows fall in (a stream that straddles two ranks is read by both, each keeping its own rows) and hands them to the
trainer in stream order. The batch rows therefore are a function of (seed, epoch, step) alone: the same on one
rank as on eight, so a run resumed on another number of ranks continues the same epoch with the same samples,
in the same order, with the same augmentation.

Within a rank, DataLoader workers split the rank's streams (``streams[worker::num_workers]``); per global batch
each hands over ``{"parts": {stream: rows}}`` once (so the DataLoader's round robin over workers keeps every
worker at the same batch) and :class:`ElasticLoader` assembles them in stream order. Skips, dead-shard markers and
:class:`lavimo.dataset.shards.stream.NoUsableSamplesError` work as in the per-rank loader.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from lavimo.core.seeding import stable_rng, stable_seed
from lavimo.dataset.augment import AugmentConfig
from lavimo.dataset.shards.format import load_stats
from lavimo.dataset.shards.source import RemoteShards
from lavimo.dataset.shards.stream import (
    SHUFFLE_BUFFER, SampleTransform, SkipStats, StreamLoader, _Handover, _IterableDataset, _Ledger, _expected_for,
    _usable_samples, _with_checksum, _worker_info, collate, resolve_shards,
)


def rows_of_rank(global_batch: int, streams: int, rank: int, world_size: int) -> dict[int, tuple[int, int]]:
    """``{stream: (lo, hi)}``: the streams whose chunk rows rank ``rank`` of ``world_size`` takes, and which
    rows ``[lo, hi)`` of each chunk (``global_batch / streams`` rows per chunk). Raises ValueError unless
    ``streams`` and ``world_size`` both divide ``global_batch``."""
    if global_batch < 1 or streams < 1 or world_size < 1:
        raise ValueError(f"global batch {global_batch}, {streams} streams, {world_size} ranks: all must be >= 1")
    if global_batch % streams or global_batch % world_size:
        raise ValueError(f"the global batch {global_batch} is not a multiple of the {streams} loader streams and "
                         f"of the {world_size} ranks")
    chunk, per_rank = global_batch // streams, global_batch // world_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    out = {}
    for s in range(lo // chunk, -(-hi // chunk)):
        out[s] = (max(lo, s * chunk) - s * chunk, min(hi, (s + 1) * chunk) - s * chunk)
    return out


class ElasticStreams(_IterableDataset):
    """The worker-side pipeline: this rank's streams (split among workers), each yielding chunks of usable
    samples; also the loader's ``source`` (``urls``, ``train``, ``epoch``)."""

    train = True

    def __init__(self, urls: list[str], transform: SampleTransform, *, seed: int, streams: int, chunk: int,
                 rows: dict[int, tuple[int, int]], shuffle_buffer: int,
                 expected: Mapping[str, tuple[str, int]] | None = None):
        self.urls, self.transform, self.seed, self.expected = list(urls), transform, seed, expected
        self.streams, self.chunk, self.rows, self.shuffle_buffer = streams, chunk, rows, shuffle_buffer
        self.epoch = 0

    def shard_urls(self, stream: int) -> Iterator[dict]:
        """Endless passes over stream ``stream``'s shards (``{"url": ...}``), re-permuted per pass."""
        passes = 0
        while True:
            order = list(self.urls)
            random.Random(stable_seed(self.seed, "shards", self.epoch, passes)).shuffle(order)
            for u in order[stream::self.streams]:
                yield {"url": u}
            passes += 1

    def samples(self, stream: int, skips: SkipStats) -> Iterator[dict | tuple[str, ...]]:
        """Stream ``stream``'s usable samples (transformed), and tuples of the shard urls whose reading gave no
        usable sample."""
        return _usable_samples(self.shard_urls(stream), self.transform, skips,
                               rng=stable_rng(self.seed, "samples", self.epoch, "stream", stream), ledger=_Ledger(),
                               expected=self.expected, shuffle_buffer=self.shuffle_buffer,
                               buffer_seed=stable_seed(self.seed, "buffer", self.epoch, "stream", stream))

    def __iter__(self) -> Iterator[_Handover]:
        skips = SkipStats()
        yield from _with_checksum(self._handovers(skips), skips)

    def _handovers(self, skips: SkipStats) -> Iterator[_Handover]:
        worker, num_workers = _worker_info()
        mine = sorted(self.rows)[worker::num_workers]
        gens = {s: self.samples(s, skips) for s in mine}
        while mine:  # one hand-over per global batch from every worker: the DataLoader's round robin stays even
            parts: dict[int, list[dict]] = {}
            for s in mine:
                lo, hi = self.rows[s]
                parts[s] = []
                n = 0
                while n < self.chunk:
                    item = next(gens[s])
                    if isinstance(item, tuple):
                        yield _Handover(None, skips.take(), item)
                        continue
                    if lo <= n < hi:
                        parts[s].append(item)
                    n += 1
            yield _Handover({"parts": parts}, skips.take())


class ElasticLoader(StreamLoader):
    """A :class:`StreamLoader` that assembles each batch from the parts of this rank's streams, in stream
    order."""

    def __init__(self, source: ElasticStreams, **kw: Any):
        super().__init__(source, source=source, **kw)
        self.parts: dict[int, deque] = {}

    def __iter__(self) -> Iterator[dict]:
        self.parts = {s: deque() for s in self.source.rows}
        return super().__iter__()

    def _assemble(self, part: dict) -> dict | None:
        for s, rows in part["parts"].items():
            self.parts[s].append(rows)
        if any(not q for q in self.parts.values()):
            return None
        return collate([row for s in sorted(self.parts) for row in self.parts[s].popleft()])


def make_elastic_loader(shards: str | Path | RemoteShards | Sequence[str], split: str = "train", *,
                        global_batch: int, streams: int, epoch_batches: int, rank: int = 0, world_size: int = 1,
                        num_workers: int = 0, seed: int = 0, image_size: int = 224, num_frames: int = 8,
                        max_motion_len: int = 196, augment: Any = None, stats: str | Path | None = None,
                        shuffle_buffer: int = SHUFFLE_BUFFER, prefetch_factor: int = 2, frame_crop: float = 1.0,
                        min_segment_len: int | None = None, verify: bool = False) -> ElasticLoader:
    """The training loader of the module docstring: ``epoch_batches`` batches of ``global_batch / world_size``
    rows on rank ``rank``; ``streams`` loader streams (``S``, at most the number of shards, dividing
    ``global_batch``); ``shuffle_buffer`` samples per stream (capped at a stream's share of one pass). The other
    arguments (``verify``: each shard hashed while streamed) and the batch dicts are
    :func:`lavimo.dataset.shards.stream.make_loader`'s. Raises ValueError for a layout that does not fit (naming
    the numbers), FileNotFoundError / BadInputError / ShardChecksumError as make_loader."""
    urls, manifest, root = resolve_shards(shards, split)
    rows = rows_of_rank(global_batch, streams, rank, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if len(urls) < streams:
        raise ValueError(f"{len(urls)} {split} shards for {streams} loader streams: every stream needs a shard "
                         "(fewer streams, or rebuild with a smaller --samples-per-shard)")
    mean, std = load_stats(stats if stats is not None else root)
    num_samples = int(manifest["num_samples"]) if manifest and "num_samples" in manifest else None
    if num_samples and shuffle_buffer > 1:  # a buffer beyond a stream's share of a pass only mixes passes
        shuffle_buffer = max(2, min(shuffle_buffer, -(-num_samples // streams)))
    transform = SampleTransform(True, image_size, num_frames, max_motion_len, mean, std,
                                AugmentConfig.from_any(augment), frame_crop, min_segment_len)
    expected = _expected_for(root, split, manifest, urls, verify)
    source = ElasticStreams(urls, transform, seed=seed, streams=streams, chunk=global_batch // streams,
                            rows=rows, shuffle_buffer=shuffle_buffer, expected=expected)
    return ElasticLoader(source, num_workers=num_workers, epoch_batches=epoch_batches, num_samples=num_samples,
                         prefetch_factor=prefetch_factor, train=True, world_size=world_size)

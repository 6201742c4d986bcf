"""Streaming loader over build-shards output: a WebDataset pipeline yielding training / evaluation batches
(docs/shards.md, "The loader"; the batch dict is :func:`collate`'s).

Pipeline per DataLoader worker: :class:`ShardSource` (the shard list: the same permutation on every rank per
pass in training, split by rank then by worker) -> :func:`_read_tars` (our tar reader: the shard format's caps
and refusals, :func:`lavimo.dataset.shards.format.iter_tar_members`) -> webdataset's shuffle buffer (training)
-> :class:`SampleTransform` (decode, augment, normalise; :class:`SampleError` skips a sample) -> batches. Training
streams endlessly and the main process cuts an epoch at ``epoch_batches``; evaluation reads every sample of the
rank's shards once, in order, the last batch partial.

Caption segments (docs/shards.md, "Caption segments"): a shard holds the whole clip; the loader cuts the
motion rows and video frames of the caption it picks (:meth:`SampleTransform.choose_text`,
:func:`segment_rows`); a segment shorter than ``min_segment_len`` rows is never paired with its caption.

Skipped samples (docs/shards.md, "Bad samples") never stop an epoch: each is logged (the first few per reason)
and counted in one :class:`SkipStats` per worker, handed to the main process beside the batches and summed in
``loader.skips`` (``loader.skip_counts``, ``loader.skipped``, ``loader.skip_examples``); reasons:
:data:`SKIP_REASONS`. A whole pass without a usable sample raises :class:`NoUsableSamplesError` (training; and
a single-process evaluation pass that skipped samples and gave no batch).
"""


from __future__ import annotations

import logging
import random
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from lavimo.dataset.augment import AugmentConfig, augment_clip, center_box, clip_normalize, eval_view, names_a_side
from lavimo.core.errors import BadInputError
from lavimo.core.keyids import shown
from lavimo.core.seeding import stable_rng, stable_seed
from lavimo.dataset.shards.format import (
    MAX_SAMPLE_BYTES, META, MOTION, SENT, SHA256_RE, TEXTS, VIDEO_JPGS, VIDEO_MP4, SampleMeta, is_int,
    iter_tar_members, load_npy_bytes, load_stats, manifest_path, manifest_shards, member_kind, parse_texts,
    read_manifest,
)
from lavimo.dataset.shards.digest import DigestReader, ShardChecksumError
from lavimo.dataset.shards.source import RemoteShards, is_remote, open_shard, shard_set

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 1000
SKIP_EXAMPLES = 5           # example keyids kept per skip reason
# HumanML3D's min_motion_len (text-to-motion Text2MotionDatasetV2): segments shorter than this many feature
# rows are not used, per feature width (263 = HumanML3D "t2m", 251 = KIT-ML); other widths use the default.
MIN_SEGMENT_ROWS = {263: 40, 251: 24}
DEFAULT_MIN_SEGMENT_ROWS = 40
_WHOLE_EPS = 1e-6  # rows: a span from 0 whose end reaches the last row within this covers the whole clip
_LOGGED_PER_REASON = 20     # skips logged one by one per reason and worker pass; the rest are only counted

SKIP_REASONS = {
    "shard_unreadable": "a shard could not be opened or read to its end (the sample being read is lost)",
    "member_name": "a member whose name is not '<keyid>.<ext>' ('/', '..', bad keyid): refused",
    "member_type": "a member that is not a regular file (link, directory, device): refused",
    "member_kind": "a member of an unknown kind (not meta.json, motion.npy, sent.npy, texts.json, video.jpgs, "
                   "video.mp4): skipped unread",
    "member_size": "a member larger than its kind's cap (lavimo.dataset.shards.format.MEMBER_MAX_BYTES): refused unread",
    "sample_size": f"a sample whose members hold more than {MAX_SAMPLE_BYTES} bytes: the rest refused unread, "
                   "the sample not used",
    "member_duplicate": "a sample holding the same member twice",
    "missing_member": "a sample without one of texts.json, sent.npy, motion.npy, meta.json, the video",
    "texts": "texts.json is not a non-empty list of captions",
    "sent": "sent.npy unreadable or not one row per caption",
    "sent_nonfinite": "sent.npy holds NaN/inf",
    "motion_unreadable": "motion.npy is not a numeric .npy array",
    "motion_shape": "motion.npy is not (T >= 1, D) with D the stats' feature dimension",
    "motion_nonfinite": "motion.npy holds NaN/inf (or overflows when normalised)",
    "segment_too_short": "every caption is a time segment shorter than the minimum (min_segment_len rows)",
    "meta": "meta.json unreadable (mp4 video members; captions with a time span need its fps)",
    "video": "the video member cannot be decoded",
    "other": "any other error while decoding the sample",
}


class NoUsableSamplesError(RuntimeError):
    """No usable sample in a whole pass over the loader's shards: training would wait forever for a batch.

    Attributes:
        counts: reason -> number of skipped samples/members/shards since the last batch (see SKIP_REASONS).
        examples: reason -> a few keyids (or member / shard names).
        shards: how many shards the loader reads (None when unknown).
    """

    def __init__(self, counts: Mapping[str, int] | str | None = None,
                 examples: Mapping[str, Sequence[str]] | None = None, shards: int | None = None):
        message = counts if isinstance(counts, str) else None  # re-raised from a message only
        self.counts = {} if message is not None else {str(k): int(v) for k, v in dict(counts or {}).items()}
        self.examples = {str(k): list(v) for k, v in dict(examples or {}).items()}
        self.shards = shards
        if message is None:
            reasons = ", ".join(
                f"{k} {v}" + (f" (e.g. {', '.join(self.examples[k][:3])})" if self.examples.get(k) else "")
                for k, v in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "nothing read"
            where = f"{shards} shards" if shards is not None else "the shards"
            message = (f"no usable sample in a whole pass over {where}; skipped: {reasons}. Check the set with "
                       "'build-shards check SHARDS' and rebuild it (or the stats / preset that does not match it)")
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.counts, self.examples, self.shards))


class SampleError(ValueError):
    """A sample that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.reason, str(self)))


class SkipStats:
    """Skipped samples by reason (:data:`SKIP_REASONS`): ``counts`` (a Counter), ``examples`` (reason -> up to
    :data:`SKIP_EXAMPLES` keyids, or member / shard names), :attr:`total`. A worker's pass records each skip
    (:meth:`add`, logging the first few per reason) and hands what it gathered since its last hand-over to the
    main process beside each batch (:meth:`take`); the loader sums them (:meth:`merge`)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.logged: Counter = Counter()

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def _example(self, reason: str, key: str) -> None:
        ex = self.examples.setdefault(reason, [])
        if len(ex) < SKIP_EXAMPLES and key not in ex:
            ex.append(key)

    def add(self, reason: str, key: str, url: str | None, detail: str) -> None:
        self.counts[reason] += 1
        self._example(reason, key)
        self.logged[reason] += 1
        if self.logged[reason] <= _LOGGED_PER_REASON:
            log.warning("skipping %s (%s): %s: %s", key, url, reason, detail)
            if self.logged[reason] == _LOGGED_PER_REASON:
                log.warning("further '%s' skips in this worker are counted, not logged", reason)

    def merge(self, other: "SkipStats") -> None:
        """Add ``other``'s counts and examples to these."""
        for reason, c in other.counts.items():
            self.counts[reason] += int(c)
        for reason, keys in other.examples.items():
            self.examples.setdefault(reason, [])
            for k in keys:
                self._example(reason, k)

    def take(self) -> "SkipStats":
        """The counts and examples since the last take (this object starts again from none)."""
        out = SkipStats()
        out.counts, out.examples = self.counts, self.examples
        self.counts, self.examples = Counter(), {}
        return out

    def __bool__(self) -> bool:
        return bool(self.counts)


_Skips = SkipStats  # the name search/ reads shards with


@dataclass
class _Handover:
    """What a worker hands the main process: a batch (None for a marker), the skips since its last hand-over and
    (training) the shard readings that ended with no usable sample."""

    batch: dict | None
    skips: SkipStats
    dead: tuple[str, ...] = ()
    checksum: ShardChecksumError | None = None  # a shard whose bytes differ from its manifest (stops the run)


@dataclass
class _Reading:
    url: str
    read: int = 0         # samples this reading of the shard produced
    resolved: int = 0     # of those, decoded or skipped
    usable: bool = False  # at least one decoded
    complete: bool = False


class _Ledger:
    """Training only: which readings of a shard ended with every sample resolved and none usable ("dead")."""

    def __init__(self) -> None:
        self.open: dict[int, _Reading] = {}
        self.next = 0
        self.dead: list[str] = []

    def start(self, url: str) -> int:
        self.next += 1
        self.open[self.next] = _Reading(url)
        return self.next

    def read(self, i: int) -> None:
        self.open[i].read += 1

    def finish(self, i: int) -> None:
        self.open[i].complete = True
        self._settle(i)

    def resolved(self, i: int, usable: bool) -> None:
        r = self.open.get(i)
        if r is not None:
            r.resolved += 1
            r.usable = r.usable or usable
            self._settle(i)

    def _settle(self, i: int) -> None:
        r = self.open[i]
        if r.complete and r.resolved >= r.read:
            del self.open[i]
            if not r.usable:
                self.dead.append(r.url)

    def take_dead(self) -> list[str]:
        d, self.dead = self.dead, []
        return d


# --------------------------------------------------------------------------------------------- manifest, urls
def resolve_shards(shards: str | Path | RemoteShards | Sequence[str], split: str
                   ) -> tuple[list[str], dict | None, Path | RemoteShards]:
    """Shard urls, manifest (or None) and the shard set location for a directory, a remote set location (an
    http(s) base URL or a ``pipe:`` command with ``{}``: :mod:`lavimo.dataset.shards.source`), a brace pattern or a
    list."""
    import webdataset as wds

    if isinstance(shards, (list, tuple)):
        urls = [str(u) for u in shards]
    elif is_remote(shards) or Path(shards).is_dir():
        loc = shard_set(shards)
        m = read_manifest(loc, split)
        return [str(url) for _, url in manifest_shards(loc, split, m)], m, loc
    elif "{" not in str(shards) and not str(shards).endswith(".tar") and "://" not in str(shards):
        raise FileNotFoundError(f"{shards}: no such shard set directory (build it with build-shards)")
    else:
        urls = list(wds.shardlists.expand_urls(str(shards)))
    if not urls:
        raise FileNotFoundError(f"no shards in {shards!r}")
    root = Path(urls[0]).parent
    manifest = None
    if manifest_path(root, split).is_file():
        manifest = read_manifest(root, split)
    return urls, manifest, root


def expected_digests(root: Path | RemoteShards, split: str, manifest: dict | None) -> dict[str, tuple[str, int]]:
    """url -> (sha256, bytes) of every shard the manifest of ``split`` lists (what :func:`resolve_shards` gives
    the loader). Raises BadInputError naming the manifest when there is none or an entry lacks a valid sha256
    or size."""
    where = root.url(f"{split}.json") if isinstance(root, RemoteShards) else manifest_path(root, split)
    if manifest is None:
        raise BadInputError(where, None, "no manifest: shards are checked against it while streamed (pass "
                                         "verify=False / --no-verify to read them unchecked)")
    out: dict[str, tuple[str, int]] = {}
    for entry, url in manifest_shards(root, split, manifest):
        sha, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(sha, str) or not SHA256_RE.match(sha) or not is_int(size) or size < 0:
            raise BadInputError(where, "shards", f"{entry.get('name')}: no valid sha256 and bytes to check the "
                                                 "shard against; rebuild the shards with build-shards")
        out[str(url)] = (sha, int(size))
    return out


def _expected_for(root: Path | RemoteShards, split: str, manifest: dict | None, urls: Sequence[str],
                  verify: bool) -> dict[str, tuple[str, int]] | None:
    """With ``verify``, :func:`expected_digests` for the loader's ``urls`` (None without). Raises BadInputError
    as it does, and naming the first url the manifest does not list."""
    if not verify:
        return None
    expected = expected_digests(root, split, manifest)
    unlisted = [u for u in urls if u not in expected]
    if unlisted:
        raise BadInputError(unlisted[0], None, f"not listed in the {split} manifest: cannot be checked while "
                                               "streamed (verify=False reads it unchecked)")
    return expected


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


def _tar_samples(url: str, skips: SkipStats, expected: tuple[str, int] | None = None) -> Iterator[dict]:
    """The samples of one tar, read as a stream: consecutive members ``<key>.<ext>`` -> ``{"__key__": key,
    "__url__": url, ext: bytes, ...}``. Refused members (:func:`lavimo.dataset.shards.format.iter_tar_members`) are
    counted in ``skips`` and never read; read errors propagate (the caller counts the shard as unreadable).
    ``expected`` = the manifest's (sha256, bytes): the stream is hashed as it is read
    (:class:`lavimo.dataset.shards.digest.DigestReader`) and read to its end before the last sample is given;
    bytes that differ raise :class:`ShardChecksumError` (also when the tar cannot be parsed)."""
    too_big: set[str] = set()  # keys of samples past MAX_SAMPLE_BYTES (each counted once)
    run = {"key": None, "bytes": 0}  # the sample being read: its key and the bytes of its members so far

    def admit(ti) -> tuple[str, str] | None:
        key = ti.name.partition(".")[0]
        if key != run["key"]:
            run["key"], run["bytes"] = key, 0
            too_big.discard(key)  # the same key again after another sample: a new sample
        run["bytes"] += ti.size
        if run["bytes"] > MAX_SAMPLE_BYTES:
            return "sample_size", f"{run['bytes']} bytes of members, more than the {MAX_SAMPLE_BYTES} of a sample"
        return None

    def refused(ti, reason: str, message: str) -> None:
        key = ti.name.partition(".")[0]
        if reason == "sample_size":
            if key not in too_big:
                too_big.add(key)
                skips.add(reason, key, url, f"{ti.name}: {message}")
        elif reason == "member_size":
            skips.add(reason, key, url, f"{ti.name}: {message}")
        else:
            skips.add(reason, shown(ti.name, 60), url, message)

    # local files are opened as files (a ':' in a path is never taken for a URL scheme such as "pipe:"); http(s)
    # and pipe: urls are streamed by dataset/shards/source.py's own opener (curl / sh, with a stall timeout)
    stream = open_shard(url)
    digest = None if expected is None else DigestReader(stream, url, *expected)
    try:
        cur: dict | None = None
        try:
            for name, data in iter_tar_members(digest or stream, where=url, refused=refused, admit=admit):
                key, ext = name.partition(".")[0], member_kind(name)
                if cur is None or cur["__key__"] != key:
                    if cur is not None and cur["__key__"] not in too_big:
                        yield cur
                    cur = {"__key__": key, "__url__": url}
                if ext in cur:
                    cur.setdefault("__dup__", ext)
                cur[ext] = data
        except (tarfile.TarError, EOFError, ValueError):
            if digest is not None:
                digest.settle()  # bytes that differ from the manifest: a checksum error, not an unreadable shard
            raise
        if digest is not None:
            digest.finish()  # the tail after the end-of-archive blocks, then the verdict
        if cur is not None and cur["__key__"] not in too_big:
            yield cur
    finally:
        (digest or stream).close()


def _read_tars(src: Iterator[dict], skips: SkipStats, ledger: _Ledger | None,
               expected: Mapping[str, tuple[str, int]] | None = None) -> Iterator[dict]:
    """Samples of the shards ``src`` yields (``{"url": ...}``). A shard that cannot be read to its end is
    counted once ("shard_unreadable") and the stream goes on. With a ledger (training), samples carry the id
    of their shard reading, and a reading that produced no sample yields a ``{"__tick__": True}`` so the
    consumer can notice shards that give nothing at all. ``expected``: url -> the manifest's (sha256, bytes),
    checked while streaming (:func:`_tar_samples`; a mismatch raises :class:`ShardChecksumError`)."""
    for item in src:
        url = item["url"]
        reading = ledger.start(url) if ledger is not None else None
        produced = 0
        try:
            for sample in _tar_samples(url, skips, None if expected is None else expected[url]):
                if ledger is not None:
                    ledger.read(reading)
                    sample["__reading__"] = reading
                produced += 1
                yield sample
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            skips.add("shard_unreadable", Path(str(url)).name, url, f"{type(exc).__name__}: {exc}")
        if ledger is not None:
            ledger.finish(reading)
            if produced == 0:
                yield {"__tick__": True}


class SampleTransform:
    """Decode one raw webdataset sample (member -> bytes) into tensors (see the module docstring)."""

    def __init__(self, train: bool, image_size: int, num_frames: int, max_motion_len: int, mean: np.ndarray,
                 std: np.ndarray, augment: AugmentConfig | None, frame_crop: float = 1.0,
                 min_segment_len: int | None = None):
        if not 0.0 < frame_crop <= 1.0:
            raise ValueError(f"frame_crop must be in (0, 1], got {frame_crop}")
        self.train, self.image_size, self.num_frames = train, image_size, num_frames
        self.max_motion_len = max_motion_len
        self.mean, self.std = mean, std
        self.augment = augment
        self.frame_crop = float(frame_crop)
        self.min_segment_len = (min_segment_rows(int(mean.shape[0])) if min_segment_len is None
                                else _check_min_segment_len(min_segment_len))

    def frame_indices(self, n: int, rng: np.random.Generator | None) -> np.ndarray:
        """Segment sampling of ``num_frames`` indices out of ``n`` frames (random in training, else centres)."""
        edges = np.linspace(0.0, n, self.num_frames + 1)
        lo, hi = edges[:-1], edges[1:]
        if self.train and rng is not None:
            pos = lo + rng.random(self.num_frames) * (hi - lo)
        else:
            pos = (lo + hi) / 2.0
        return np.clip(np.floor(pos).astype(np.int64), 0, n - 1)

    def window_indices(self, n: int, window: tuple[int, int] | None, rng: np.random.Generator | None
                       ) -> np.ndarray:
        """Frame indices for a video of ``n`` frames: :meth:`frame_indices` over the frames ``[lo, hi)`` of
        ``window`` (clipped to the video), over all ``n`` frames when ``window`` is None. Raises SampleError
        ("video") when the window holds no frame of the video."""
        if window is None:
            return self.frame_indices(n, rng)
        lo, hi = window[0], min(window[1], n)
        if hi <= lo:
            raise SampleError("video", f"the caption's segment (frames {window[0]}..{window[1] - 1}) lies past "
                              f"the video's {n} frames")
        return lo + self.frame_indices(hi - lo, rng)

    def video(self, sample: dict, rng: np.random.Generator | None, captions: Sequence[str] = (),
              window: tuple[int, int] | None = None):
        """(num_frames, 3, S, S) float32 CLIP-normalised frames of a sample (raises SampleError). ``captions``:
        the sample's texts; a horizontal flip is never drawn for a clip whose captions name a side.
        ``window``: frames ``[lo, hi)`` to sample from (the chosen caption's segment; None = every frame)."""
        try:
            return self._video(sample, rng, captions, window)
        except SampleError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder error of untrusted bytes: skip the sample
            raise SampleError("video", f"{type(exc).__name__}: {exc}") from exc

    def _video(self, sample: dict, rng: np.random.Generator | None, captions: Sequence[str] = (),
               window: tuple[int, int] | None = None):
        import torch
        from lavimo.core.mp4 import mp4_frames
        from lavimo.dataset.video_frames import decode_jpgs, jpgs_info

        zoom = self.augment.scale[1] if (self.train and self.augment is not None) else 1.0
        min_size = int(np.ceil(self.image_size * zoom / self.frame_crop))  # the short side the crop needs
        if VIDEO_JPGS in sample:
            data = sample[VIDEO_JPGS]
            n = jpgs_info(data)[0]
            frames = decode_jpgs(data, self.window_indices(n, window, rng), min_size=min_size)
        elif VIDEO_MP4 in sample:
            if META not in sample:
                raise SampleError("missing_member", "no meta.json member (needed for mp4 videos)")
            try:
                n = SampleMeta.parse(sample[META]).frame_count()
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                raise SampleError("meta", f"meta.json: {type(exc).__name__}: {exc}") from exc
            idx = self.window_indices(n, window, rng)
            # decoded as an untrusted file (lavimo.core.mp4: allowed containers, frame size cap), scaled by ffmpeg to a
            # short side of at most 2 x min_size (as JPEG frames are by draft mode)
            frames = torch.from_numpy(mp4_frames(sample[VIDEO_MP4], idx, short_side=2 * min_size)
                                      ).permute(0, 3, 1, 2).contiguous()
        else:
            raise SampleError("missing_member", "no video member (video.jpgs or video.mp4)")
        if self.frame_crop < 1.0:
            t, l, h, w = center_box(*frames.shape[-2:], fraction=self.frame_crop)
            frames = frames[:, :, t:t + h, l:l + w]
        if self.train and self.augment is not None:
            x = augment_clip(frames, self.image_size, self.augment, rng, allow_flip=not names_a_side(captions))
        else:
            x = eval_view(frames, self.image_size)
        return clip_normalize(x)

    def __call__(self, sample: dict, rng: np.random.Generator | None) -> dict:
        """One raw sample -> the processed dict (see :func:`collate`). Raises :class:`SampleError` with a
        reason of :data:`SKIP_REASONS` for a sample that cannot be used."""
        import torch


        if "__dup__" in sample:
            raise SampleError("member_duplicate", f"member {sample['__dup__']!r} appears twice")
        for m in (TEXTS, SENT, MOTION):
            if m not in sample:
                raise SampleError("missing_member", f"no {m} member")
        try:
            captions, spans = parse_texts(sample[TEXTS])
        except ValueError as exc:
            raise SampleError("texts", str(exc)) from exc
        try:
            sent = load_npy_bytes(sample[SENT])
        except ValueError as exc:
            raise SampleError("sent", f"sent.npy: {exc}") from exc
        if sent.ndim != 2 or sent.shape[0] != len(captions) or sent.dtype.kind != "f":
            raise SampleError("sent", f"sent.npy {sent.dtype} {sent.shape} for {len(captions)} texts")
        if not np.isfinite(sent).all():
            raise SampleError("sent_nonfinite", "sent.npy holds NaN/inf")
        # drawn here, before anything can fail, as it always was: the same draws with whole-clip captions
        drawn = int(rng.integers(len(captions))) if self.train and rng is not None else 0
        try:
            motion = load_npy_bytes(sample[MOTION])
        except ValueError as exc:
            raise SampleError("motion_unreadable", f"motion.npy: {exc}") from exc
        if motion.dtype.kind not in "fiu":
            raise SampleError("motion_unreadable", f"motion.npy has dtype {motion.dtype}, expected float32")
        if motion.ndim != 2 or motion.shape[1] != self.mean.shape[0] or len(motion) == 0:
            raise SampleError("motion_shape", f"motion.npy shape {motion.shape} does not match stats dim "
                              f"{self.mean.shape[0]}")
        bad = ~np.isfinite(motion)
        if bad.any():
            raise SampleError("motion_nonfinite", f"motion.npy holds {int(bad.sum())} NaN/inf values "
                              f"(first at row {int(np.argwhere(bad)[0][0])})")
        i, window = self.choose_text(spans, drawn, len(motion), sample, rng)
        if window is not None:
            motion = motion[window[0]:window[1]]
        if len(motion) > self.max_motion_len:
            start = int(rng.integers(len(motion) - self.max_motion_len + 1)) if self.train and rng is not None else 0
            motion = motion[start:start + self.max_motion_len]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected just below
            motion = ((motion.astype(np.float32) - self.mean) / self.std).astype(np.float32)
        if not np.isfinite(motion).all():
            raise SampleError("motion_nonfinite", "motion features overflow when normalised with stats.npz")
        return {
            "keyid": sample["__key__"],
            "video": self.video(sample, rng, captions, window),
            "text": captions[i],
            "texts": captions,
            "sent_emb": torch.from_numpy(sent[i].astype(np.float32)),
            "motion": torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)),
        }

    def choose_text(self, spans: Sequence[tuple[float | None, float | None]], drawn: int, motion_rows: int,
                    sample: Mapping[str, bytes], rng: np.random.Generator | None
                    ) -> tuple[int, tuple[int, int] | None]:
        """The caption to use and its segment -> (text index, motion rows ``[lo, hi)`` or None = whole clip).

        ``spans``: each text's (start, end) seconds from :func:`lavimo.dataset.shards.format.parse_texts`; ``drawn``: the
        caption drawn at random (training) or 0; ``motion_rows``: the clip's feature rows. The rule is in the
        module docstring ("Caption segments").
        Raises SampleError: ``segment_too_short`` (no usable caption), ``missing_member`` / ``meta`` (a span
        but no readable fps in meta.json)."""
        if all(is_whole_clip(s, e) for s, e in spans):
            return drawn, None  # whole-clip captions only: exactly the pre-segment behaviour
        fps = _meta_fps(sample)
        windows = [segment_rows(s, e, fps, motion_rows) for s, e in spans]
        usable = [j for j, w in enumerate(windows) if w is None or w[1] - w[0] >= self.min_segment_len]
        if not usable:
            lens = ", ".join(str(w[1] - w[0]) for w in windows if w is not None)
            raise SampleError("segment_too_short", f"every caption is a segment shorter than "
                              f"{self.min_segment_len} motion rows (rows: {lens}; clip {motion_rows} rows)")
        if self.train and rng is not None:
            # uniform over the usable captions: keep the draw when usable, else draw again among them
            i = drawn if drawn in usable else usable[int(rng.integers(len(usable)))]
        else:
            i = usable[0]
        return i, windows[i]


def min_segment_rows(feature_dim: int) -> int:
    """HumanML3D's minimum segment length in feature rows for a feature width: 40 (263, HumanML3D), 24 (251,
    KIT-ML), :data:`DEFAULT_MIN_SEGMENT_ROWS` otherwise."""
    return MIN_SEGMENT_ROWS.get(int(feature_dim), DEFAULT_MIN_SEGMENT_ROWS)


def _check_min_segment_len(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"min_segment_len must be an integer >= 1 (feature rows), got {value!r}")
    return int(value)


def is_whole_clip(start: float | None, end: float | None) -> bool:
    """True for a caption of the whole clip: ``end`` None with ``start`` None or 0, or ``start == end == 0``
    (HumanML3D's ``#0.0#0.0``)."""
    return (end is None and not start) or (start == 0 and end == 0)


def segment_rows(start: float | None, end: float | None, fps: float, motion_rows: int) -> tuple[int, int] | None:
    """Motion feature rows ``[lo, hi)`` of a caption's span, or None for a whole-clip caption.

    ``start``/``end``: seconds inside the clip (checked by :func:`lavimo.dataset.shards.format.parse_texts`: None or finite
    >= 0). Whole clip (None): :func:`is_whole_clip`, or a span whose rows are all ``motion_rows`` rows (cutting
    would change nothing). Otherwise ``lo = int(start * fps)`` (0 when ``start`` is None), ``hi = int(end *
    fps)`` (``motion_rows`` when ``end`` is None), as HumanML3D's ``motion[int(f_tag*20):int(to_tag*20)]``;
    both clipped to ``[0, motion_rows]`` (a span past the end keeps the rows that exist; ``hi - lo`` may be
    0)."""
    if is_whole_clip(start, end):
        return None
    lo = 0 if start is None else int(min(start * fps, motion_rows))
    hi = motion_rows if end is None else int(min(end * fps, motion_rows))
    if lo == 0 and (end is None or end * fps + _WHOLE_EPS >= motion_rows):
        return None  # (the tolerance: e.g. end = rows / 12.5 s gives end * 12.5 = rows - 1e-14)
    return lo, max(lo, hi)


def _meta_fps(sample: Mapping[str, bytes]) -> float:
    """The clip's motion/video frame rate from ``meta.json`` (needed to cut a caption's segment)."""

    if META not in sample:
        raise SampleError("missing_member", "no meta.json member (its fps is needed for captions with a time span)")
    try:
        return SampleMeta.parse(sample[META]).frame_rate()
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise SampleError("meta", f"meta.json: {type(exc).__name__}: {exc}") from exc


def collate(samples: list[dict]) -> dict:
    """Stack processed samples into the batch dict of docs/design.md ("Shards and the loader") (motion zero-padded, mask True = valid)."""
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
    """Pipeline stage: tar reading, shuffle buffer (training), per-sample transform with skipping, batching.

    Yields :class:`_Handover` objects: each batch with the :class:`SkipStats` of this process since its last
    hand-over (the loader sums them); in training, a marker (no batch) names the shard readings that ended with
    no usable sample, so the main process can tell "every shard gives nothing" from "slow"
    (:class:`NoUsableSamplesError`)."""

    def __init__(self, transform: SampleTransform, batch_size: int, train: bool, seed: int, rank: int,
                 source: ShardSource, shuffle_buffer: int, expected: Mapping[str, tuple[str, int]] | None = None):
        self.transform, self.batch_size, self.train = transform, batch_size, train
        self.seed, self.rank, self.source, self.shuffle_buffer = seed, rank, source, shuffle_buffer
        self.expected = expected

    def __call__(self, src: Iterator[dict]) -> Iterator[_Handover]:
        skips = SkipStats()
        yield from _with_checksum(self._batches(src, skips), skips)

    def _batches(self, src: Iterator[dict], skips: SkipStats) -> Iterator[_Handover]:
        worker, _ = _worker_info()
        rng = stable_rng(self.seed, "samples", self.source.epoch, self.rank, worker) if self.train else None
        samples = _usable_samples(iter(src), self.transform, skips, rng=rng,
                                  ledger=_Ledger() if self.train else None, expected=self.expected,
                                  shuffle_buffer=self.shuffle_buffer if self.train else 0,
                                  buffer_seed=stable_seed(self.seed, "buffer", self.source.epoch, self.rank, worker))
        batch: list[dict] = []
        for item in samples:
            if isinstance(item, tuple):
                yield _Handover(None, skips.take(), item)
                continue
            batch.append(item)
            if len(batch) == self.batch_size:
                yield _Handover(collate(batch), skips.take())
                batch = []
        if batch and not self.train:
            yield _Handover(collate(batch), skips.take())
        elif skips:
            yield _Handover(None, skips.take())


def _with_checksum(handovers: Iterator[_Handover], skips: SkipStats) -> Iterator[_Handover]:
    """``handovers``, ended by a hand-over carrying the :class:`ShardChecksumError` that stopped them (with the
    skips not yet handed over): the main process raises it (:class:`StreamLoader`), whichever worker read the
    shard."""
    try:
        yield from handovers
    except ShardChecksumError as exc:
        yield _Handover(None, skips.take(), checksum=exc)


def _usable_samples(shards: Iterator[dict], transform: SampleTransform, skips: SkipStats, *,
                    rng: np.random.Generator | None, ledger: _Ledger | None,
                    expected: Mapping[str, tuple[str, int]] | None, shuffle_buffer: int,
                    buffer_seed: int) -> Iterator[dict | tuple[str, ...]]:
    """The usable (transformed) samples of the shards ``shards`` yields (``{"url": ...}``), read by
    :func:`_read_tars` through a shuffle buffer of ``shuffle_buffer`` samples seeded by ``buffer_seed`` (none
    when <= 1), each transformed with ``rng`` (None: evaluation) and skipped samples counted in ``skips``. With
    a ledger (training), also tuples of the shard urls whose reading ended with no usable sample, as soon as
    that is known. Raises :class:`ShardChecksumError` (``expected``: url -> the manifest's (sha256, bytes))."""
    import webdataset as wds

    stream = _read_tars(shards, skips, ledger, expected)
    if shuffle_buffer > 1:
        stream = wds.shuffle(shuffle_buffer, min(100, shuffle_buffer), rng=random.Random(buffer_seed))(stream)
    for raw in stream:
        if "__tick__" not in raw:
            reading = raw.pop("__reading__", None)
            sample = process_sample(transform, raw, rng, skips)
            if ledger is not None and reading is not None:
                ledger.resolved(reading, sample is not None)
            if sample is not None:
                yield sample
        if ledger is not None and ledger.dead:
            yield tuple(ledger.take_dead())


def process_sample(transform: SampleTransform, raw: dict, rng, skips: SkipStats) -> dict | None:
    """``transform(raw, rng)``, or None with the reason counted in ``skips`` (a bad sample never stops a run)."""
    key, url = raw.get("__key__"), raw.get("__url__")
    try:
        return transform(raw, rng)
    except SampleError as exc:
        skips.add(exc.reason, key, url, str(exc))
    except Exception as exc:  # noqa: BLE001 - a corrupt sample never stops a run; counted and logged
        skips.add("other", key, url, f"{type(exc).__name__}: {exc}")
    return None


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- loader
class StreamLoader:
    """Iterable of batch dicts (see :func:`make_loader`). Each ``iter()`` is one epoch; ``len()`` is the
    number of batches per epoch when known.

    Attributes:
        skipped: samples / members / shards skipped so far (all epochs, all worker processes).
        skip_counts: Counter reason -> count (:data:`SKIP_REASONS`); its values sum to ``skipped``.
        skip_examples: reason -> up to :data:`SKIP_EXAMPLES` keyids (member or shard names for those reasons).

    Raises (while iterating) :class:`NoUsableSamplesError` when no shard gives a usable sample (module
    docstring), and :class:`lavimo.dataset.shards.digest.ShardChecksumError` (exit 2) when a shard read to its
    end differs from its manifest (``verify=True``; raised in the main process whichever worker read it)."""

    def __init__(self, pipeline, *, num_workers: int, epoch_batches: int | None, source: ShardSource,
                 num_samples: int | None, prefetch_factor: int = 2, train: bool | None = None,
                 world_size: int = 1):
        self.pipeline, self.num_workers, self.epoch_batches = pipeline, num_workers, epoch_batches
        self.source, self.num_samples, self.prefetch_factor = source, num_samples, prefetch_factor
        self.train = source.train if train is None else train
        self.world_size = world_size
        self.skips = SkipStats()  # all epochs, all worker processes
        self.epoch = 0

    @property
    def skipped(self) -> int:
        return self.skips.total

    @property
    def skip_counts(self) -> Counter:
        return self.skips.counts

    @property
    def skip_examples(self) -> dict[str, list[str]]:
        return self.skips.examples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed shard order and augmentation of the next ``iter()``."""
        self.epoch = int(epoch)

    def _assemble(self, part: dict) -> dict | None:
        """The batch a worker's hand-over completes (here every hand-over is a whole batch)."""
        return part

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
        self.epoch += 1
        all_urls = set(self.source.urls)
        dead: set[str] = set()
        period = SkipStats()  # skips since the last batch
        batches = skipped = 0
        for out in loader:
            self.skips.merge(out.skips)
            if out.checksum is not None:
                raise out.checksum
            period.merge(out.skips)
            if out.skips:
                skipped += out.skips.total
                log.warning("%d samples skipped so far (%s)", self.skipped,
                            ", ".join(f"{k} {v}" for k, v in sorted(self.skip_counts.items())))
            if out.batch is not None:
                dead.clear()
                period = SkipStats()
                batch = self._assemble(out.batch)
                if batch is None:  # a part of a batch (lavimo.dataset.shards.elastic)
                    continue
                yield batch
                batches += 1
                if self.epoch_batches is not None and batches >= self.epoch_batches:
                    return
                continue
            dead.update(out.dead)
            if self.train and all_urls and dead >= all_urls:
                raise NoUsableSamplesError(period.counts, period.examples, shards=len(all_urls))
        if not self.train and batches == 0 and skipped and self.world_size == 1:
            raise NoUsableSamplesError(period.counts, period.examples, shards=len(all_urls))


def make_loader(shards: str | Path | RemoteShards | Sequence[str], split: str, *, batch_size: int, train: bool,
                num_workers: int = 0, seed: int = 0, image_size: int = 224, num_frames: int = 8,
                max_motion_len: int = 196, epoch_batches: int | None = None, rank: int = 0, world_size: int = 1,
                augment: Any = None, resampled: bool = False, stats: str | Path | None = None,
                shuffle_buffer: int = SHUFFLE_BUFFER, prefetch_factor: int = 2,
                frame_crop: float = 1.0, min_segment_len: int | None = None, verify: bool = False) -> StreamLoader:
    """Streaming loader over a shard set.

    Args:
        shards: a shard set directory (shards from ``{split}.json``), a remote shard set (an http(s) base URL
            or a ``pipe:`` command with ``{}`` for the file name; :mod:`lavimo.dataset.shards.source`), a brace pattern
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
        stats: path of a stats.npz (default ``<shard set>/stats.npz``, fetched for a remote set).
        shuffle_buffer: samples in the training shuffle buffer per worker (<= 1 disables it).
        prefetch_factor: batches prefetched per worker.
        frame_crop: fraction of each stored frame's short side kept as a centred square before augmentation
            and resizing (1 = the whole frame; < 1 zooms in on the centred person).
        min_segment_len: a caption's time segment shorter than this many motion feature rows is not used
            (module docstring, "Caption segments"); None = :func:`min_segment_rows` of the stats' feature width
            (40 for 263-dim HumanML3D features, 24 for 251-dim KIT-ML), as HumanML3D's ``min_motion_len``.
        verify: hash every shard while it is streamed and compare it with the manifest's sha256 and size when a
            reading reaches the shard's end (:mod:`lavimo.dataset.shards.digest`); needs a manifest listing both
            for every shard (BadInputError naming it otherwise).

    Yields:
        dicts with ``keyid`` list[str], ``video`` (B, num_frames, 3, S, S) float32 CLIP-normalised, ``text``
        list[str], ``texts`` list[list[str]], ``sent_emb`` (B, D) float32, ``motion`` (B, T, F) float32
        normalised, ``mask`` (B, T) bool (True = valid), ``length`` (B,) long. When ``text`` is a caption with
        a time span, ``video``, ``motion`` and ``sent_emb`` are all of that segment (module docstring).

    Raises:
        FileNotFoundError: no manifest / shard set / stats.npz. BadInputError: a malformed manifest or stats.npz
        (naming the file). While iterating: :class:`NoUsableSamplesError` (see the module docstring) and, with
        ``verify``, :class:`lavimo.dataset.shards.digest.ShardChecksumError`.
    """
    import webdataset as wds

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if min_segment_len is not None:
        _check_min_segment_len(min_segment_len)
    if resampled and not train:
        raise ValueError("resampled=True is for training; evaluation reads every sample once")
    urls, manifest, root = resolve_shards(shards, split)
    rank, world_size = _dist_info(rank, world_size)
    mean, std = load_stats(stats if stats is not None else root)
    try:
        num_samples = int(manifest["num_samples"]) if manifest else None
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(root / f"{split}.json", "num_samples", "missing or not an integer") from exc
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
                                AugmentConfig.from_any(augment) if train else None, frame_crop,
                                min_segment_len)
    expected = _expected_for(root, split, manifest, urls, verify)
    stage = _ProcessAndBatch(transform, batch_size, train, seed, rank, source, shuffle_buffer, expected)
    pipeline = wds.DataPipeline(source, stage)
    return StreamLoader(pipeline, num_workers=num_workers, epoch_batches=epoch_batches, source=source,
                        num_samples=num_samples, prefetch_factor=prefetch_factor, train=train,
                        world_size=world_size)

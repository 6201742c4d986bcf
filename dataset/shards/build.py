"""Write a shard set (``build-shards``): one sample per clip with video, texts, sentence embeddings and motion
(the format: :mod:`lavimo.dataset.shards.format`; docs/shards.md).

A clip is written once, with its whole motion and video; ``texts.json`` keeps each caption's span and the
loader cuts it (docs/shards.md, "Caption segments"). Determinism: clips are ordered by keyid and cut into fixed
slots of ``samples_per_shard`` (a skipped or failed clip leaves its slot empty); tar headers and member order
are fixed, so the same input gives byte-identical tars, written atomically. A shard whose inputs (clip
definitions, input file sizes and mtimes, build settings) are unchanged is kept: a second run is a no-op
(resume state in ``SHARDS/.build/``, the last run's report in ``.build/report.json``).

Untrusted input (docs/security.md): keyids follow :data:`lavimo.core.keyids.KEYID_RULE` (else the clip fails,
the build goes on); input files are found with :func:`lavimo.core.keyids.child_path`; a render sidecar must name
the clip's keyid and match its video (:func:`check_sidecar`). SIGINT/SIGTERM stop a build between shards
(:class:`lavimo.core.stop.StopSignals`; the report says ``interrupted``); worker processes die with their parent;
a killed run's temporary files are removed by the next run.
"""


from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from lavimo.core.atomic import temp_target, write_json
from lavimo.core.errors import BadInputError
from lavimo.core.jsonconfig import read_json_file
from lavimo.core.hashing import sha256_file
from lavimo.core.keyids import check_keyid, child_path, is_keyid
from lavimo.core.stop import StopSignals
from lavimo.core.workers import WorkerPool
from lavimo.dataset.shards.format import (
    BASE_MEMBERS, FORMAT_VERSION, MANIFEST_KIND, MAX_CLIP_FRAMES, MEMBER_MAX_BYTES, META, MOTION, SENT, SHA256_RE,
    SPLITS, STATS_NAME, TEXTS, SampleMeta, VIDEO_JPGS, VIDEO_MEMBERS, VIDEO_MP4, finite_number, is_int, json_bytes,
    load_npy_bytes, manifest_path, manifest_shards, naming, npy_bytes, read_manifests, shard_members, shard_name,
    stats_fingerprint, write_if_changed, write_manifest, write_stats, write_tar,
)

log = logging.getLogger(__name__)

TOOL_VERSION = "lavimo-build-shards 1.0"
# final names of ours, whose temporary files (lavimo.core.atomic.temp_target) a killed run may leave behind
_OUR_NAME_RE = re.compile(r"^(?:[A-Za-z0-9_-]+-\d{6}\.tar(?:\.json)?|[A-Za-z0-9_-]+\.json|stats\.npz|README\.md)$")


class ShardSetMismatch(RuntimeError):
    """The output directory holds a shard set built with other settings (text model, feature dim, video)."""


class BuildInterrupted(BaseException):
    """SIGINT/SIGTERM during a build (a BaseException so no per-clip ``except Exception`` swallows it)."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


@dataclass
class BuildConfig:
    """Settings of one ``build-shards`` run.

    Attributes:
        out: the shard set directory.
        videos: directory with ``<keyid>.mp4`` + ``<keyid>.json`` from render-amass.
        amass_root: AMASS root (motion features are computed from it unless ``humanml3d_vecs`` is given).
        humanml3d_vecs: HumanML3D's ``new_joint_vecs`` directory (features read from ``<keyid>.npy``).
        splits: splits to build.
        samples_per_shard: clip slots per shard.
        workers: processes that decode videos and compute features.
        video_format: "jpgs" (per-frame JPEGs at ``frame_size``) or "mp4" (the rendered file as is).
        frame_size: short side in pixels of the stored JPEG frames.
        jpeg_quality: JPEG quality (1..95).
        overwrite: delete an existing shard set (ours: tars, manifests, stats, card, state) before building.
        skeleton: feature layout, "humanml3d" (263) or "kit" (251, only from ``humanml3d_vecs``).
        part: ``(K, N)``: build only the shard slots ``i`` with ``i % N == K - 1`` of every split (parts may run
            at the same time into the same ``out``) and write no manifest, stats or card; a run without ``part``
            afterwards keeps every shard the parts wrote (same fingerprints) and writes them (the merge).
    """

    out: Path
    videos: Path
    amass_root: Path | None = None
    humanml3d_vecs: Path | None = None
    splits: tuple[str, ...] = SPLITS
    samples_per_shard: int = 256
    workers: int = 1
    video_format: str = "jpgs"
    frame_size: int = 256
    jpeg_quality: int = 90
    overwrite: bool = False
    skeleton: str = "humanml3d"
    part: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.videos = Path(self.videos)
        self.amass_root = None if self.amass_root is None else Path(self.amass_root)
        self.humanml3d_vecs = None if self.humanml3d_vecs is None else Path(self.humanml3d_vecs)
        if self.video_format not in VIDEO_MEMBERS:
            raise ValueError(f"video_format must be one of {sorted(VIDEO_MEMBERS)}, got {self.video_format!r}")
        if self.samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError("jpeg_quality must be in 1..95")
        if self.frame_size < 16:
            raise ValueError("frame_size must be >= 16 pixels")
        if self.part is not None:
            k, n = self.part
            if not 1 <= k <= n:
                raise ValueError(f"part K/N needs 1 <= K <= N, got {k}/{n}")
            if self.overwrite:
                raise ValueError("--overwrite cannot be combined with --part (it would delete the other parts' "
                                 "shards); remove the shard set once before starting the parts")

    def video_info(self) -> dict:
        info = {"format": self.video_format, "member": VIDEO_MEMBERS[self.video_format]}
        if self.video_format == "jpgs":
            info.update(frame_size=self.frame_size, jpeg_quality=self.jpeg_quality)
        return info


@dataclass
class BuildReport:
    """Outcome of a build: sample and shard counts, per-clip reasons for skipped and failed clips."""

    done: int = 0            # samples written in this run
    kept: int = 0            # samples in shards kept from an earlier run
    skipped: dict[str, str] = field(default_factory=dict)   # keyid -> reason (inputs missing)
    failed: dict[str, str] = field(default_factory=dict)    # keyid -> reason (errors while processing)
    shards_written: int = 0
    shards_kept: int = 0
    shards_removed: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    stats_written: bool = False
    leftovers_removed: list[str] = field(default_factory=list)  # temp files of a killed run, removed
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when the run was stopped (what finished is counted)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def not_done(self) -> dict[str, str]:
        """Clips that were not written (failed, or skipped for a missing input); clips without texts are not
        counted (they are filtered out by design, see dataset/annotations.py)."""
        out = dict(self.failed)
        out.update({k: r for k, r in self.skipped.items() if r != NO_TEXTS})
        return out

    def summary(self) -> str:
        text = (f"done {self.done}, kept {self.kept}, skipped {len(self.skipped)}, failed {len(self.failed)} "
                f"(shards written {self.shards_written}, kept {self.shards_kept}, removed {self.shards_removed}; "
                f"samples per split {self.per_split})")
        if self.interrupted:
            text += f"; interrupted by {self.interrupted} (run again to finish)"
        return text


NO_TEXTS = "texts: the clip has no texts"


# ----------------------------------------------------------------------------------------------- per clip
def default_features(clip, amass_root: Path | None, humanml3d_vecs: Path | None,
                     skeleton: str = "humanml3d") -> np.ndarray:
    """Motion features of a clip -> (T-1, D) float32 (lavimo.dataset.features.clip_features, procedural body)."""
    from lavimo.dataset.features import clip_features

    return clip_features(clip, amass_root, humanml3d_vecs=humanml3d_vecs, skeleton=skeleton)


def default_stats(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """HumanML3D-convention mean/std (lavimo.dataset.features.feature_stats) for 263 (humanml3d) or 251 (kit) dims;
    plain per-dimension mean/std for any other dimension (no feature groups to average over)."""
    dim = arrays[0].shape[1]
    if dim in (263, 251):
        from lavimo.dataset.features import feature_stats

        return feature_stats(arrays, skeleton="humanml3d" if dim == 263 else "kit")
    log.warning("feature dim %d is neither HumanML3D (263) nor KIT (251): plain per-dimension mean/std", dim)
    cat = np.concatenate(arrays, 0).astype(np.float64)
    std = cat.std(0)
    return cat.mean(0).astype(np.float32), np.where(std < 1e-8, 1.0, std).astype(np.float32)


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except OSError:
        return ["missing"]
    return [st.st_size, st.st_mtime_ns]


def clip_inputs(clip, cfg: BuildConfig) -> tuple[Path, Path]:
    """(video, sidecar) paths of a clip: ``videos/<keyid>.mp4`` and ``videos/<keyid>.json``.

    Raises BadInputError when the keyid is not a keyid (never a path outside ``cfg.videos``)."""
    key = check_keyid(clip.keyid, field="keyid")
    return child_path(cfg.videos, f"{key}.mp4"), child_path(cfg.videos, f"{key}.json")


def clip_fingerprint(clip, cfg: BuildConfig) -> list:
    """What a clip's sample depends on (definition + input file stats); a change triggers a rebuild."""
    if not is_keyid(clip.keyid):
        return [repr(clip.keyid), "invalid keyid"]
    frames = None if clip.frames is None else hashlib.sha256(np.asarray(clip.frames, np.int64).tobytes()).hexdigest()
    feat_src = child_path(cfg.humanml3d_vecs, f"{clip.keyid}.npy") if cfg.humanml3d_vecs is not None else \
        (cfg.amass_root / clip.amass_path if cfg.amass_root is not None else None)
    mp4, side = clip_inputs(clip, cfg)
    return [clip.keyid, clip.amass_path, clip.fps, clip.split, bool(clip.mirrored), clip.dataset, frames,
            [[t.caption, t.start, t.end] for t in clip.texts],
            _stat(mp4), _stat(side), None if feat_src is None else _stat(feat_src)]


def texts_of(clip) -> list[dict]:
    out = []
    for t in clip.texts:
        d = {"caption": t.caption, "start": t.start, "end": t.end}
        if getattr(t, "tokens", None):
            d["tokens"] = t.tokens
        out.append(d)
    return out


def check_sidecar(side: dict, side_path: Path, keyid: str, mp4: Path) -> None:
    """Check a render sidecar against its clip and video (raises BadInputError naming the file and field).

    - ``keyid`` must be the clip's keyid (a sidecar copied or renamed from another clip is refused);
    - ``video_size`` (bytes) / ``video_sha256`` (hex), when present, must match ``mp4`` (truncated or replaced
      videos are refused);
    - ``num_frames`` a non-negative integer, ``fps`` a finite number > 0, ``frames`` a list of non-negative
      integer AMASS frame indices (as many as ``num_frames`` when both are given).
    """
    if side.get("keyid") != keyid:
        raise BadInputError(side_path, "keyid", f"{side.get('keyid')!r} but the clip is {keyid!r} "
                            "(a sidecar of another clip?)")
    n = side.get("num_frames")
    if n is not None and (not is_int(n) or n < 0):
        raise BadInputError(side_path, "num_frames", f"{n!r} is not a frame count")
    fps = side.get("fps")
    if fps is not None and not (finite_number(fps) or 0) > 0:
        raise BadInputError(side_path, "fps", f"{fps!r} is not a positive frame rate")
    frames = side.get("frames")
    if frames is not None:
        if not isinstance(frames, list) or not all(is_int(f) and f >= 0 for f in frames):
            raise BadInputError(side_path, "frames", "expected a list of non-negative AMASS frame indices")
        if n is not None and len(frames) not in (0, n):
            raise BadInputError(side_path, "frames", f"{len(frames)} frame indices but num_frames is {n}")
    size, digest = side.get("video_size"), side.get("video_sha256")
    if size is not None and (not is_int(size) or size < 0):
        raise BadInputError(side_path, "video_size", f"{size!r} is not a byte count")
    if digest is not None and (not isinstance(digest, str) or not SHA256_RE.match(digest.lower())):
        raise BadInputError(side_path, "video_sha256", "expected 64 hexadecimal digits")
    if digest is not None:
        actual, actual_size = sha256_file(mp4)
    elif size is not None:
        actual, actual_size = None, mp4.stat().st_size
    else:
        return
    if size is not None and actual_size != size:
        raise BadInputError(mp4, "video", f"{actual_size} bytes but {side_path.name} says video_size {size} "
                            "(truncated or replaced; render it again)")
    if digest is not None and actual != digest.lower():
        raise BadInputError(mp4, "video", f"sha256 differs from {side_path.name}'s video_sha256 "
                            "(modified or replaced; render it again)")


def prepare_sample(clip, cfg: BuildConfig, features_fn: Callable) -> dict[str, bytes]:
    """Everything of a sample except ``sent.npy`` (added by the caller, which holds the text model).

    Raises BadInputError for bad inputs (bad keyid, unreadable video or sidecar, sidecar of another clip or
    not matching the video, frame count mismatch, bad features)."""
    from lavimo.core.mp4 import decode, frame_count, iter_frames, scaled_size
    from lavimo.dataset.video_frames import JpgsEncoder, read_sidecar

    mp4, side_path = clip_inputs(clip, cfg)
    side = read_sidecar(side_path)
    check_sidecar(side, side_path, clip.keyid, mp4)
    if cfg.video_format == "jpgs":
        # frames scaled by ffmpeg while decoding and JPEG-encoded chunk by chunk: a long clip never sits in memory
        # decoded; at most MAX_CLIP_FRAMES frames and a member of at most MEMBER_MAX_BYTES[video.jpgs]
        info, (out_w, out_h), chunks = iter_frames(mp4, cfg.frame_size, max_frames=MAX_CLIP_FRAMES)
        enc = JpgsEncoder(cfg.jpeg_quality, max_bytes=MEMBER_MAX_BYTES[VIDEO_JPGS])
        try:
            for part in chunks:
                enc.add(part)
        except BadInputError:
            raise
        except ValueError as exc:
            raise BadInputError(mp4, "video", f"{exc} (the largest member a shard reader accepts; lower "
                                              "--frame-size or --jpeg-quality, or use --video-format mp4)") from None
        n_frames = len(enc)
    else:
        # the mp4 is stored as is: its frames are counted from its packets (no decoding) and its first frame
        # decoded (ffmpeg stopped right after) to check that it is a readable video
        n_frames, info = frame_count(mp4, MAX_CLIP_FRAMES)
        if not len(decode(info, scaled_size(info.width, info.height, 32), 1)[0]):
            raise BadInputError(mp4, "video", "no frame could be decoded")
        if mp4.stat().st_size > MEMBER_MAX_BYTES[VIDEO_MP4]:
            raise BadInputError(mp4, "video", f"{mp4.stat().st_size} bytes, more than the "
                                              f"{MEMBER_MAX_BYTES[VIDEO_MP4]} a shard reader accepts")
    src_w, src_h = info.source_size
    n_side = side.get("num_frames", len(side.get("frames", [])) or None)
    if n_side is not None and int(n_side) != n_frames:
        raise BadInputError(mp4, "video", f"{n_frames} frames decoded but the sidecar says {n_side}")
    if side.get("frames"):
        # The video defines the clip's frames: compute the motion on exactly the AMASS frames the video
        # shows (render-amass may have used another --fps than the annotations' default), so video frame
        # i and motion frame i stay the same instant.
        if len(side["frames"]) != n_frames:
            raise BadInputError(side_path, "frames", f"{len(side['frames'])} frame indices for {n_frames} "
                                "decoded frames")
        clip = dataclasses.replace(clip, frames=np.asarray(side["frames"], dtype=np.int64),
                                   fps=float(side.get("fps", clip.fps)))
    feats = np.asarray(features_fn(clip), dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] < 1 or not np.isfinite(feats).all():
        raise BadInputError(clip.amass_path, "motion", f"bad features of shape {feats.shape} or non-finite values")
    if feats.shape[0] + 1 != n_frames:
        log.warning("%s: %d video frames for %d feature rows (expected frames = rows + 1)", clip.keyid,
                    n_frames, feats.shape[0])
    motion = npy_bytes(feats)
    if len(motion) > MEMBER_MAX_BYTES[MOTION]:
        raise BadInputError(clip.amass_path, "motion", f"{len(motion)} bytes of features, more than the "
                                                       f"{MEMBER_MAX_BYTES[MOTION]} a shard reader accepts")
    sample: dict[str, bytes] = {"__key__": clip.keyid}
    if cfg.video_format == "jpgs":
        sample[VIDEO_JPGS] = enc.finish()
        stored = [int(out_w), int(out_h)]
    else:
        sample[VIDEO_MP4] = mp4.read_bytes()
        stored = [int(src_w), int(src_h)]
    sample[META] = SampleMeta(
        keyid=clip.keyid, dataset=clip.dataset, split=clip.split, amass_path=clip.amass_path,
        fps=float(side.get("fps", clip.fps)), num_frames=int(n_frames),
        feature_rows=int(feats.shape[0]), feature_dim=int(feats.shape[1]),
        avatar=side.get("avatar"), light=side.get("light"),
        mirrored=bool(side.get("mirrored", clip.mirrored)), body_model=side.get("body_model"),
        video_size=stored, rendered_size=[int(src_w), int(src_h)],
        frame_rule=clip.frame_spec.rule, frame_start=clip.frame_spec.start, frame_end=clip.frame_spec.end,
    ).to_bytes()
    sample[MOTION] = motion
    sample[TEXTS] = json_bytes(texts_of(clip))
    return sample


def _work(item):
    """Pool entry point: (clip, cfg, features_fn) -> ("ok", sample) | ("failed", keyid, reason)."""
    clip, cfg, features_fn = item
    try:
        return ("ok", prepare_sample(clip, cfg, features_fn))
    except BadInputError as exc:
        return ("failed", clip.keyid, exc.reason if exc.path is None else str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad clip must not stop a build; reported per clip
        log.debug("clip %s failed", clip.keyid, exc_info=True)
        return ("failed", clip.keyid, f"{type(exc).__name__}: {exc}")


def temp_leftovers(out: Path) -> list[Path]:
    """Temporary files of an interrupted run in a shard set (``.{name}.XXXXXXXX.tmp*`` of lavimo.core.atomic for
    our own file names, in ``out`` and ``out/.build``)."""
    found = []
    for d in (out, out / ".build"):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            target = temp_target(p.name)
            if target and _OUR_NAME_RE.match(target) and (p.is_file() or p.is_symlink()):
                found.append(p)
    return found


def remove_leftovers(out: Path) -> list[str]:
    """Remove :func:`temp_leftovers` (logged); returns their paths."""
    removed = []
    for p in temp_leftovers(out):
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        log.info("removed %s (temporary file of an interrupted run)", p)
        removed.append(str(p))
    return removed


# ----------------------------------------------------------------------------------------------- set config
def _set_config(cfg: BuildConfig, text_info: dict) -> dict:
    return {"format_version": FORMAT_VERSION, "text_model": text_info, "video": cfg.video_info()}


def _check_compatible(out: Path, set_cfg: dict) -> int | None:
    """Refuse a shard set built with another text model / video format; returns its feature dim if known."""
    prior = []
    for split, m in read_manifests(out).items():
        _check_feature_dim(manifest_path(out, split), m.get("feature_dim"))
        prior.append((f"{split}.json", {k: m.get(k) for k in ("format_version", "text_model", "video")},
                      m.get("feature_dim")))
    state = out / ".build" / "set.json"
    if state.is_file():
        s = _read_set_state(state)
        prior.append((".build/set.json", {k: s.get(k) for k in ("format_version", "text_model", "video")},
                      s.get("feature_dim")))
    dims = {d for _, _, d in prior if d is not None}
    for where, c, _ in prior:
        c = dict(c)
        if isinstance(c.get("video"), dict):  # manifests add measured fields; compare the settings only
            c["video"] = {k: c["video"].get(k) for k in set_cfg["video"]}
        for k in ("format_version", "text_model", "video"):
            if c.get(k) != set_cfg[k]:
                raise ShardSetMismatch(
                    f"{out / where}: the shard set was built with {k}={c.get(k)} but this run uses {set_cfg[k]}; "
                    "one shard set cannot mix them (use another --out or --overwrite)")
    if len(dims) > 1:
        raise ShardSetMismatch(f"{out}: manifests disagree on the feature dimension {sorted(dims)}")
    return dims.pop() if dims else None


def _read_set_state(path: Path) -> dict:
    """``.build/set.json`` (the set's build state: format version, text model, video settings, feature dim) as a
    dict. Raises BadInputError(path, field) for a file that is not UTF-8 JSON (e.g. truncated), nests too deep,
    is not an object, or whose fields have the wrong type; OSError when it cannot be read."""
    s = read_json_file(path)  # size, values and nesting capped: BadInputError naming the file
    if not isinstance(s, dict):
        raise BadInputError(path, None, f"expected a JSON object, got {type(s).__name__}")
    _check_feature_dim(path, s.get("feature_dim"))
    return s


def _check_feature_dim(path: Path, dim: Any) -> None:
    """A recorded ``feature_dim`` is absent (None) or a positive integer; else BadInputError(path, feature_dim)."""
    if dim is not None and (type(dim) is not int or dim <= 0):
        raise BadInputError(path, "feature_dim", f"expected a positive integer, got {dim!r:.40}")


def remove_shard_set(out: Path) -> int:
    """Delete the files a shard set consists of (tars, manifests, stats, card, state); returns the count."""
    n = 0
    manifests = read_manifests(out)
    for p in list(out.glob("*.tar")):
        if p.stem.rsplit("-", 1)[0] in set(manifests) | set(SPLITS):
            p.unlink()
            n += 1
    for split in manifests:
        manifest_path(out, split).unlink(missing_ok=True)
        n += 1
    for name in (STATS_NAME, "README.md"):
        if (out / name).exists():
            (out / name).unlink()
            n += 1
    build = out / ".build"
    if build.is_dir():
        for p in sorted(build.glob("*")):
            p.unlink()
        build.rmdir()
    return n


# ----------------------------------------------------------------------------------------------- build
def build_shards(clips: Iterable, cfg: BuildConfig, *, embedder=None, features_fn: Callable | None = None,
                 stats_fn: Callable | None = None, sources: dict | None = None,
                 show_progress: bool = True, then_ignore_signals: bool = False) -> BuildReport:
    """Build (or resume) a shard set from resolved clips.

    Args:
        clips: ``lavimo.dataset.clip.Clip`` objects with ``split`` set (clips of other splits are ignored).
        cfg: build settings.
        embedder: a :class:`lavimo.dataset.text_embed.SentenceEmbedder` (default: the bundled all-MiniLM-L6-v2).
        features_fn: ``clip -> (T-1, D) float32`` (default: ``lavimo.dataset.features.clip_features`` with
            ``cfg.amass_root`` / ``cfg.humanml3d_vecs``); must be picklable when ``cfg.workers > 1``.
        stats_fn: ``list[(T-1, D)] -> (mean, std)`` (default: :func:`default_stats`).
        sources: provenance recorded in the manifests (e.g. annotation source, AMASS root, videos dir).
        then_ignore_signals: SIGINT/SIGTERM stay ignored after the build (its process is about to exit:
            :meth:`lavimo.core.stop.StopSignals.uninstall`) instead of getting their previous handlers back.

    Returns:
        the BuildReport. Raises ShardSetMismatch when ``cfg.out`` holds an incompatible shard set.
    """
    from tqdm import tqdm

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    leftovers = remove_leftovers(out) if cfg.part is None else []  # other parts' temp files may be in use
    if cfg.overwrite:
        n = remove_shard_set(out)
        log.info("--overwrite: removed %d files of the previous shard set in %s", n, out)
    if embedder is None:
        from lavimo.dataset.text_embed import SentenceEmbedder

        embedder = SentenceEmbedder()
    if features_fn is None:
        features_fn = functools.partial(default_features, amass_root=cfg.amass_root,
                                        humanml3d_vecs=cfg.humanml3d_vecs, skeleton=cfg.skeleton)
    set_cfg = _set_config(cfg, embedder.info())
    feature_dim = _check_compatible(out, set_cfg)
    build_dir = out / ".build"
    build_dir.mkdir(exist_ok=True)
    _write_state(build_dir / "set.json", {**set_cfg, "feature_dim": feature_dim})

    report = BuildReport(leftovers_removed=leftovers)
    by_split: dict[str, list] = {s: [] for s in cfg.splits}
    for c in clips:
        if c.split in by_split:
            by_split[c.split].append(c)
    pool = WorkerPool(cfg.workers)
    stop = StopSignals(raise_as=BuildInterrupted)
    with stop.installed(then_ignore=then_ignore_signals):
        try:
            try:
                for split in cfg.splits:
                    feature_dim = _build_split(split, sorted(by_split[split], key=lambda c: str(c.keyid)), cfg,
                                               set_cfg, embedder, features_fn, feature_dim, pool, report,
                                               sources or {}, show_progress, tqdm, stop)
            except BaseException:
                pool.terminate()  # interrupted or failed: do not wait for queued clips
                raise
            pool.close()
            _write_state(build_dir / "set.json", {**set_cfg, "feature_dim": feature_dim})
            if cfg.part is None:  # a part leaves the manifests, stats and card to the run without --part
                report.stats_written = update_stats(out, stats_fn)
                write_card(out)
        except BuildInterrupted as exc:
            report.interrupted = exc.signame
            log.warning("%s: build stopped; %d samples in %d shards were written (run again to finish)",
                        exc.signame, report.done, report.shards_written)
        stop.decide()  # the report says how the build ended: later signals change nothing
        report_name = "report.json" if cfg.part is None else f"report-part-{cfg.part[0]}-of-{cfg.part[1]}.json"
        with naming(build_dir / report_name):
            write_json(build_dir / report_name, report.to_dict())
    return report


def _build_split(split, clips, cfg, set_cfg, embedder, features_fn, feature_dim, pool, report, sources,
                 show_progress, tqdm, stop):
    """Build (or keep) the shards of one split and write its manifest (not for a ``--part`` run); returns the
    shard set's feature dimension (None while unknown)."""
    n_slots = cfg.samples_per_shard
    plan = [clips[i:i + n_slots] for i in range(0, len(clips), n_slots)]
    states, todo, feature_dim = _plan_split(split, plan, cfg, set_cfg, feature_dim, report)
    n_todo = sum(len(g) for _, g, _ in todo)
    bar = tqdm(total=n_todo, desc=f"build-shards {split}", unit="clip", disable=not show_progress or n_todo == 0)
    jobs = _clip_jobs(split, todo, cfg, features_fn)
    # one ordered stream over all shards' clips, a bounded number in flight (workers never wait for a shard)
    items = [w for job in jobs for w in job[5]]
    results = (pool if items else WorkerPool(1)).ordered(_work, items, window=4 * max(1, cfg.workers))
    for si, group, fp, skipped, failed0, work in jobs:
        bar.update(len(group) - len(work))
        samples, failed = [], dict(failed0)
        for _ in range(len(work)):
            res = next(results)
            bar.update(1)
            if res[0] == "failed":
                failed[res[1]] = res[2]
                continue
            sample = res[1]
            dim = int(SampleMeta.parse(sample[META]).feature_dim)
            if feature_dim is None:
                feature_dim = dim
            if dim != feature_dim:
                failed[sample["__key__"]] = f"motion: feature dim {dim} differs from the shard set's {feature_dim}"
                continue
            samples.append(sample)
        _add_sentences(samples, embedder)
        with stop.deferred():  # a shard, its state and the counters are written together
            states[si] = _write_shard(cfg, split, si, fp, samples, skipped, failed, feature_dim)
            _write_state(cfg.out / ".build" / "set.json", {**set_cfg, "feature_dim": feature_dim})
            report.done += len(samples)
            report.shards_written += 1
        for k, r in skipped.items():
            log.warning("skipped %s: %s", k, r)
        for k, r in failed.items():
            log.warning("failed %s: %s", k, r)
    bar.close()
    _tally_split(split, plan, {t[0] for t in todo}, states, cfg, set_cfg, feature_dim, report, sources)
    return feature_dim


def _mine(cfg: BuildConfig, si: int) -> bool:
    """Whether shard slot ``si`` is this run's (every slot, or the ``--part`` K/N's)."""
    return cfg.part is None or si % cfg.part[1] == cfg.part[0] - 1


def _plan_split(split, plan, cfg, set_cfg, feature_dim, report):
    """The states of the shards kept from an earlier run (inputs unchanged) -> (states, [(slot, clips,
    fingerprint)] to build, feature dim); removes the split's shards beyond ``plan`` (the split shrank)."""
    out = cfg.out
    config_fp = json.dumps(set_cfg, sort_keys=True)
    todo: list[tuple[int, list, str]] = []
    states: dict[int, dict] = {}
    for si, group in enumerate(plan):
        fp = hashlib.sha256(json.dumps([config_fp, [clip_fingerprint(c, cfg) for c in group]],
                                       sort_keys=True, default=str).encode()).hexdigest()
        name = shard_name(split, si)
        state = _read_state(out / ".build" / f"{name}.json")
        tar = out / name
        if state and state.get("inputs") == fp and tar.is_file() and tar.stat().st_size == state.get("bytes"):
            states[si] = state
            if feature_dim is None:
                feature_dim = state.get("feature_dim")
        elif _mine(cfg, si):
            todo.append((si, group, fp))
    for p in sorted(out.glob(f"{split}-*.tar")):
        idx = p.stem.rsplit("-", 1)[-1]
        if idx.isdigit() and int(idx) >= len(plan):
            p.unlink(missing_ok=True)  # another --part may have removed it already
            (out / ".build" / f"{p.name}.json").unlink(missing_ok=True)
            report.shards_removed += 1
    return states, todo, feature_dim


def _clip_jobs(split, todo, cfg, features_fn):
    """Per shard to build: (slot, clips, fingerprint, skipped, failed, pool work items); a clip without texts
    or video is skipped, a bad or repeated keyid fails, the others are work for the pool."""
    jobs = []
    seen: set[str] = set()
    for si, group, fp in todo:
        skipped: dict[str, str] = {}
        failed0: dict[str, str] = {}
        work = []
        for c in group:
            key = str(c.keyid)
            try:
                mp4 = clip_inputs(c, cfg)[0]
            except BadInputError as exc:
                failed0[key] = exc.reason
                continue
            if key in seen:
                failed0[key] = f"keyid: {key!r} appears twice in split {split}"
            elif not c.texts:
                skipped[key] = NO_TEXTS
            elif not mp4.is_file():
                skipped[key] = f"{mp4}: video: file not found"
            else:
                work.append((c, cfg, features_fn))
            seen.add(key)
        jobs.append((si, group, fp, skipped, failed0, work))
    return jobs


def _write_shard(cfg, split, si, fp, samples, skipped, failed, feature_dim) -> dict:
    """Write shard ``si`` of ``split`` and its resume state; returns the state."""
    name = shard_name(split, si)
    digest, size = write_tar(cfg.out / name, samples)
    state = {"inputs": fp, "name": name, "count": len(samples), "sha256": digest, "bytes": size,
             "keys": [s["__key__"] for s in samples], "skipped": skipped, "failed": failed,
             "feature_dim": feature_dim,
             "video_bytes": sum(len(s[VIDEO_MEMBERS[cfg.video_format]]) for s in samples)}
    with naming(cfg.out / ".build" / f"{name}.json"):
        write_json(cfg.out / ".build" / f"{name}.json", state)
    return state


def _tally_split(split, plan, rebuilt, states, cfg, set_cfg, feature_dim, report, sources) -> None:
    """Count the split's shards in ``report`` and (not for a ``--part`` run: the manifest lists every part's
    shards) write its manifest."""
    entries: list[dict] = []
    for si in (si for si in range(len(plan)) if _mine(cfg, si)):
        st = states[si]
        if si not in rebuilt:
            report.kept += st["count"]
            report.shards_kept += 1
        report.skipped.update(st.get("skipped", {}))
        report.failed.update(st.get("failed", {}))
        entries.append({"name": st["name"], "count": st["count"], "sha256": st["sha256"], "bytes": st["bytes"]})
    n = sum(e["count"] for e in entries)
    report.per_split[split] = n
    if cfg.part is not None:
        return
    video_bytes = sum(states[si].get("video_bytes", 0) for si in range(len(plan)))
    manifest = {
        "kind": MANIFEST_KIND, "format_version": FORMAT_VERSION, "tool_version": TOOL_VERSION,
        "split": split, "num_samples": n, "num_shards": len(entries), "samples_per_shard": cfg.samples_per_shard,
        "shards": entries, "text_model": set_cfg["text_model"], "feature_dim": feature_dim,
        "video": {**set_cfg["video"],
                  "bytes_per_sample": round(video_bytes / n) if n else None,
                  "note": VIDEO_FORMAT_NOTE, "format_benchmark": FORMAT_BENCHMARK},
        "members": sorted(BASE_MEMBERS + (VIDEO_MEMBERS[cfg.video_format],)),
        "bytes_per_sample": round(sum(e["bytes"] for e in entries) / n) if n else None,
        "skipped": {k: v for si in range(len(plan)) for k, v in states[si].get("skipped", {}).items()},
        "failed": {k: v for si in range(len(plan)) for k, v in states[si].get("failed", {}).items()},
        "sources": {k: str(v) for k, v in sorted(sources.items())},
    }
    if n == 0:
        log.warning("split %s has no samples", split)
    write_manifest(cfg.out, split, manifest)


# What tests/benchmarks/bench_loader.py measured when the default format was chosen (recorded in manifests):
# 16 render-amass clips at 512x512 (105 frames), 8 frames -> 224x224 augmented, one CPU process.
FORMAT_BENCHMARK = {
    "source": "tests/benchmarks/bench_loader.py, 16 rendered 512x512 clips, 1 CPU process (shared 2-core host)",
    "jpgs": {"samples_per_s": 28.0, "video_bytes_per_sample": 905505},
    "mp4": {"samples_per_s": 2.1, "video_bytes_per_sample": 275566},
    "naive_mp4_decode_baseline": {"samples_per_s": 1.7},
}

VIDEO_FORMAT_NOTE = (
    "jpgs = every frame resized to frame_size and JPEG-encoded, packed in one member, so the loader decodes only "
    "the 8 frames it samples; mp4 = the rendered H.264 file, decoded from its start for every sample. "
    "Measured numbers: the README (tests/benchmarks/bench_loader.py).")


def _add_sentences(samples: list[dict], embedder) -> None:
    """Add ``sent.npy`` (n_texts, D) float16 L2-normalised to each sample (one encode call per shard)."""
    captions, spans = [], []
    for s in samples:
        texts = json.loads(s[TEXTS])
        spans.append((len(captions), len(captions) + len(texts)))
        captions.extend(t["caption"] for t in texts)
    emb = embedder.encode(captions) if captions else np.zeros((0, embedder.dim), np.float32)
    for s, (a, b) in zip(samples, spans):
        s[SENT] = npy_bytes(emb[a:b].astype(np.float16))


def _read_state(path: Path) -> dict | None:
    """A shard's resume state (None when absent or unreadable: the shard is rebuilt)."""
    try:
        state = read_json_file(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # unreadable, or not bounded UTF-8 JSON (BadInputError is a ValueError)
        log.warning("%s: unreadable build state (%s): the shard is rebuilt", path, exc)
        return None
    return state if isinstance(state, dict) else None


def _write_state(path: Path, obj: dict) -> bool:
    return write_if_changed(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------- stats, card
def update_stats(out: Path, stats_fn: Callable | None = None) -> bool:
    """(Re)write ``stats.npz`` from the train shards' motion features when the train manifest changed.

    ``mean``/``std`` are (D,) float32 from ``lavimo.dataset.features.feature_stats`` (HumanML3D convention); the
    file also records the train shards' sha256 list it was computed from. Returns True when written."""
    manifests = read_manifests(out)
    if "train" not in manifests:
        log.warning("no train split in %s: stats.npz not written (the loader needs one)", out)
        return False
    m = manifests["train"]
    fp = hashlib.sha256(json.dumps([e["sha256"] for e in m["shards"]]).encode()).hexdigest()
    path = out / STATS_NAME
    if stats_fingerprint(path) == fp:
        return False
    arrays = [load_npy_bytes(data) for _, shard in manifest_shards(out, "train", m)
              for _, data in shard_members(shard, want=lambda name: name.endswith("." + MOTION))]
    if not arrays:
        log.warning("train split is empty: stats.npz not written")
        return False
    mean, std = (stats_fn or default_stats)(arrays)
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    write_stats(path, mean, std, fingerprint=fp, num_samples=len(arrays))
    return True


def write_card(out: Path) -> bool:
    """Write ``SHARDS/README.md`` (dataset card) from the manifests; only when its content changes."""
    manifests = read_manifests(out)
    if not manifests:
        return False
    any_m = next(iter(manifests.values()))
    tm, video = any_m["text_model"], any_m["video"]
    lines = [
        "# LAVIMO shard set", "",
        "WebDataset shards of rendered AMASS motions: video, captions, sentence embeddings and motion features.",
        "Written by `build-shards`; check with `build-shards check <this dir>`.", "",
        "| split | samples | shards | skipped | failed | bytes/sample |", "| --- | --- | --- | --- | --- | --- |"]
    for split, m in sorted(manifests.items()):
        lines.append(f"| {split} | {m['num_samples']} | {m['num_shards']} | {len(m.get('skipped', {}))} | "
                     f"{len(m.get('failed', {}))} | {m.get('bytes_per_sample')} |")
    lines += [
        "", "## Sample members", "",
        "- `<keyid>.meta.json`: AMASS path, fps, frame count, avatar, light, mirrored, split.",
        "- `<keyid>.texts.json`: captions as a list of {caption, start, end} (seconds in the clip; null = whole;",
        "  the loader cuts motion and video to the span of the caption it uses).",
        f"- `<keyid>.sent.npy`: (n_texts, {tm['dim']}) float16, L2-normalised embeddings by `{tm['name']}`.",
        f"- `<keyid>.motion.npy`: (T-1, {any_m.get('feature_dim')}) float32 HumanML3D-style features "
        "(Y-up), unnormalised; normalise with `stats.npz` (`mean`, `std`, train split).",
    ]
    if video["format"] == "jpgs":
        lines.append(f"- `<keyid>.video.jpgs`: all T frames, short side {video['frame_size']} px, JPEG quality "
                     f"{video['jpeg_quality']}, packed (magic `LVJPGS1`, see dataset/video_frames.py).")
    else:
        lines.append("- `<keyid>.video.mp4`: the rendered H.264 video (T frames).")
    lines += [
        "", "## Load", "", "```python", "from lavimo.dataset.shards.stream import make_loader",
        "loader = make_loader('<this dir>', 'train', batch_size=64, train=True, num_workers=8)", "```", "",
        "## Licences", "",
        "Motions come from AMASS (non-commercial research licence) and texts from HumanML3D / KIT-ML via their",
        "annotation files; respect their terms when sharing these shards.",
        "", f"Tool: {any_m.get('tool_version')}, format version {any_m.get('format_version')}.", ""]
    return write_if_changed(out / "README.md", "\n".join(lines))

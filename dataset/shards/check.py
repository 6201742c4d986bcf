"""Check a shard set: its tars' bytes against the manifests (:func:`verify_shards`, local or remote) and, for a
local set, every sample's members (:func:`check_shards`, ``build-shards check``)."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lavimo.core.errors import BadInputError
from lavimo.core.hashing import sha256_file
from lavimo.dataset.shards.build import temp_leftovers
from lavimo.dataset.shards.format import (
    BASE_MEMBERS, META, MOTION, SENT, SHA256_RE, STATS_NAME, TEXTS, VIDEO_JPGS, VIDEO_MEMBERS, is_int,
    load_npy_bytes, manifest_path, manifest_shards, parse_texts, read_manifest, read_manifests,
    SampleMeta, shard_members, stats_arrays,
)
from lavimo.dataset.shards.source import FetchError, RemoteShards, is_url, sha256_remote, shard_set


def verify_shard(path: Path | str, entry: dict) -> dict:
    """Check one shard file's bytes against its manifest entry (streaming sha256, constant memory). ``path`` is
    a local file or the URL (``pipe:`` command) of a remote set's shard (:mod:`lavimo.dataset.shards.source`; the whole
    tar is streamed once, nothing is stored).

    Returns ``{"file": str, "name": manifest name, "size": int | None, "sha256": str | None, "expected_size":
    int | None, "expected_sha256": str | None, "ok": bool, "problem": str | None}``; ``problem`` names the
    file."""
    exp_size, exp_sha = entry.get("bytes"), entry.get("sha256")
    res: dict[str, Any] = {"file": str(path), "name": entry.get("name"), "size": None, "sha256": None,
                           "expected_size": exp_size, "expected_sha256": exp_sha, "ok": False, "problem": None}
    if not isinstance(exp_sha, str) or not SHA256_RE.match(exp_sha):
        res["problem"] = f"{path}: the manifest has no valid sha256 for it"
        return res
    try:
        digest, size = sha256_remote(path) if is_url(path) else sha256_file(path)
    except FileNotFoundError:
        res["problem"] = f"{path}: missing"
        return res
    except FetchError as exc:  # names the url
        res["problem"] = f"{exc}"
        return res
    except OSError as exc:
        res["problem"] = f"{path}: unreadable: {exc.strerror or exc}"
        return res
    res.update(size=size, sha256=digest)
    if is_int(exp_size) and size != exp_size:
        res["problem"] = f"{path}: {size} bytes, manifest says {exp_size} (truncated or modified)"
    elif digest != exp_sha:
        res["problem"] = f"{path}: sha256 differs from the manifest (modified or corrupt)"
    else:
        res["ok"] = True
    return res


def verify_shards(shards_dir: str | os.PathLike | RemoteShards, splits: Sequence[str] | None = None, *,
                  manifests: dict[str, dict] | None = None) -> list[dict]:
    """Check every shard of ``splits`` (default: every manifest) against its manifest's size and sha256.

    Reads each tar once, in 1 MiB blocks (:func:`lavimo.core.hashing.sha256_file`), without parsing it. A remote set
    (an http(s) base URL or ``pipe:`` command, :mod:`lavimo.dataset.shards.source`) needs ``splits`` (its manifests
    cannot be listed) and has every tar streamed once over the network. Returns one dict per listed shard, in
    manifest order (see :func:`verify_shard`: ``file``, ``name``, ``size``, ``sha256``, ``expected_size``,
    ``expected_sha256``, ``ok``, ``problem``); the set is intact when every ``ok`` is True. ``manifests``
    (``{split: manifest}``, e.g. what a trainer already read and checked) are used instead of reading them
    again, so the tars are checked against those very manifests.

    Raises:
        BadInputError: a requested split has no manifest (field ``manifest``), or a manifest's ``shards`` list
            is malformed or names a file outside the directory (field ``shards``).
    """
    out = shard_set(shards_dir)
    if manifests is None and isinstance(out, RemoteShards):
        if not splits:
            raise BadInputError(str(out), "manifest", "name the splits to verify: a remote set cannot be listed")
        manifests = {}
        for split in splits:
            try:
                manifests[split] = read_manifest(out, split)
            except FileNotFoundError as exc:
                raise BadInputError(out.url(f"{split}.json"), "manifest", f"missing ({exc})") from exc
    elif manifests is None:
        manifests = read_manifests(out)
    wanted = list(splits) if splits else sorted(manifests)
    if not wanted:
        raise BadInputError(out, "manifest", "no manifests ({split}.json) found: not a shard set?")
    results = []
    for split in wanted:
        m = manifests.get(split)
        if m is None:
            raise BadInputError(manifest_path(out, split), "manifest", "missing or not a shard manifest")
        for e, path in manifest_shards(out, split, m):
            results.append(verify_shard(path, e))
    return results


@dataclass
class CheckReport:
    """Result of :func:`check_shards`: problems found (empty = valid) and what was checked.

    ``leftovers``: temporary files of an interrupted run (never counted as shards; the next build-shards run
    removes them). They are not problems."""

    problems: list[str] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shards(out: str | os.PathLike, splits: Sequence[str] | None = None, deep: bool = True) -> CheckReport:
    """Validate a shard set against its manifests.

    Checks per shard: the file exists, its size and sha256 match the manifest, the tar reads to the end, every
    member is a regular file named ``<keyid>.<ext>`` (others are refused and reported), every sample has all
    members, the sample count matches; with ``deep`` also that the arrays parse with the manifest's dimensions,
    the motion features are finite and the video member's header is intact. Also: stray tars, stats.npz
    shape, temporary files of a killed run (``leftovers``, not problems)."""
    from lavimo.dataset.video_frames import jpgs_info

    out = Path(out)
    rep = CheckReport(leftovers=[str(p) for p in temp_leftovers(out)])
    manifests = read_manifests(out)
    if not manifests:
        rep.problems.append(f"{out}: no manifests ({{split}}.json) found")
        return rep
    for split in splits or sorted(manifests):
        m = manifests.get(split)
        if m is None:
            rep.problems.append(f"{manifest_path(out, split)}: manifest missing")
            continue
        try:
            listed_shards = manifest_shards(out, split, m)
            vmember = m["video"]["member"]
            if vmember not in VIDEO_MEMBERS.values():
                raise BadInputError(manifest_path(out, split), "video", f"unknown video member {vmember!r}")
        except (BadInputError, KeyError, TypeError) as exc:
            rep.problems.append(str(exc) if isinstance(exc, BadInputError) else
                                f"{manifest_path(out, split)}: malformed manifest ({type(exc).__name__}: {exc})")
            continue
        listed = {path.name for _, path in listed_shards}
        for p in sorted(out.glob(f"{split}-*.tar")):
            if p.name not in listed:
                rep.problems.append(f"{p}: not listed in {split}.json")
        need = set(BASE_MEMBERS) | {vmember}
        total = 0
        keys_seen: set[str] = set()
        for e, p in listed_shards:
            rep.shards += 1
            v = verify_shard(p, e)
            if v["problem"]:
                rep.problems.append(v["problem"])
            if v["size"] is None:
                continue
            samples: dict[str, dict[str, bytes]] = {}
            refused: list[str] = []
            try:
                for name, data in shard_members(p, refused=refused):
                    key, _, member = name.partition(".")
                    samples.setdefault(key, {})[member] = data if deep else b""
            except (tarfile.TarError, OSError, EOFError) as exc:
                rep.problems.append(f"{p}: tar unreadable: {exc}")
                continue
            finally:
                rep.problems.extend(f"{p}: {r}" for r in refused)
            for key, mem in samples.items():
                missing = need - set(mem)
                if missing:
                    rep.problems.append(f"{p}: sample {key}: members missing {sorted(missing)}")
                if key in keys_seen:
                    rep.problems.append(f"{p}: sample {key} appears twice in split {split}")
                keys_seen.add(key)
                if deep and not missing:
                    try:
                        prob = _check_sample(mem, m, vmember, jpgs_info)
                    except (KeyError, TypeError) as exc:
                        prob = f"the manifest lacks a valid text_model.dim / feature_dim ({exc!r})"
                    if prob:
                        rep.problems.append(f"{p}: sample {key}: {prob}")
            if len(samples) != e.get("count"):
                rep.problems.append(f"{p}: {len(samples)} samples, manifest says {e.get('count')}")
            total += len(samples)
        rep.samples[split] = total
        if total != m.get("num_samples"):
            rep.problems.append(f"{manifest_path(out, split)}: {total} samples found, manifest says "
                                f"{m.get('num_samples')}")
    if "train" in manifests:
        sp = out / STATS_NAME
        if not sp.is_file():
            rep.problems.append(f"{sp}: missing")
        else:
            try:
                mean, std = stats_arrays(sp)
                d = manifests["train"].get("feature_dim")
                if mean.shape != (d,) or std.shape != (d,):
                    rep.problems.append(f"{sp}: mean/std shapes {mean.shape}/{std.shape}, expected ({d},)")
                elif not (np.isfinite(mean).all() and np.isfinite(std).all()):
                    rep.problems.append(f"{sp}: mean/std contain NaN/inf")
            except (OSError, KeyError, ValueError) as exc:
                rep.problems.append(f"{sp}: unreadable: {exc}")
    return rep


def _check_sample(mem: dict[str, bytes], m: dict, vmember: str, jpgs_info) -> str | None:
    try:
        sent = load_npy_bytes(mem[SENT])
        motion = load_npy_bytes(mem[MOTION])
        meta = SampleMeta.parse(mem[META])  # bounded JSON, an object
    except (ValueError, OSError, EOFError, RecursionError) as exc:
        return f"unparsable member: {exc}"
    try:
        captions, _ = parse_texts(mem[TEXTS])  # a non-empty list; strings; spans null or seconds >= 0, end > start
    except ValueError as exc:
        return str(exc)
    if sent.dtype != np.float16 or sent.shape != (len(captions), m["text_model"]["dim"]):
        return f"sent.npy {sent.dtype} {sent.shape}, expected float16 ({len(captions)}, {m['text_model']['dim']})"
    if motion.dtype != np.float32 or motion.ndim != 2 or motion.shape[1] != m["feature_dim"]:
        return f"motion.npy {motion.dtype} {motion.shape}, expected float32 (T-1, {m['feature_dim']})"
    if not np.isfinite(motion).all():
        return "motion.npy contains NaN/inf"
    if vmember == VIDEO_JPGS:
        try:
            n = jpgs_info(mem[vmember])[0]
        except ValueError as exc:
            return str(exc)
        if n != meta.num_frames:
            return f"video has {n} frames, meta.json says {meta.num_frames}"
    elif len(mem[vmember]) < 8 or mem[vmember][4:8] != b"ftyp":
        return "video.mp4 does not start with an mp4 header"
    return None

"""``build-shards``: write WebDataset shards from annotations + AMASS + rendered videos, or check a shard set.

    build-shards --annotations SRC --amass ROOT --videos DIR --out SHARDS [options]
    build-shards check SHARDS [--splits train,val] [--quick]
    build-shards --out SHARDS --dry-run          (same as check)

See the README for every flag and the shard format.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("build-shards")


def _splits(text: str) -> tuple[str, ...]:
    parts = tuple(s.strip() for s in text.split(",") if s.strip())
    if not parts:
        raise argparse.ArgumentTypeError("give at least one split")
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-shards", description="Write WebDataset shards (video, texts, sentence embeddings, motion "
        "features) for training and evaluation; 'build-shards check SHARDS' validates a shard set.")
    p.add_argument("--annotations", help="annotation source: a HumanML3D directory or annotations.json "
                   "(+ splits/), as read by dataset.annotations.load_clips")
    p.add_argument("--amass", help="AMASS root directory (npz files)")
    p.add_argument("--videos", help="render-amass output directory (<keyid>.mp4 + <keyid>.json)")
    p.add_argument("--out", required=True, help="shard set directory")
    p.add_argument("--humanml3d-vecs", help="take features from HumanML3D's new_joint_vecs/<keyid>.npy instead of "
                   "computing them from AMASS")
    p.add_argument("--splits", type=_splits, default=("train", "val", "test"),
                   help="comma-separated splits to build (default train,val,test)")
    p.add_argument("--samples-per-shard", type=int, default=256, help="clips per shard (default 256)")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)),
                   help="processes decoding videos and computing features (default: cores-1, at most 8)")
    p.add_argument("--text-model", help="local sentence-transformers directory (default: the bundled "
                   "all-MiniLM-L6-v2)")
    p.add_argument("--video-format", choices=("jpgs", "mp4"), default="jpgs",
                   help="video member: jpgs = per-frame JPEGs at --frame-size (default), mp4 = the rendered file")
    p.add_argument("--frame-size", type=int, default=256, help="short side of stored JPEG frames in pixels "
                   "(default 256: the 256x256 augmentation crop)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..95 (default 90)")
    p.add_argument("--skeleton", choices=("humanml3d", "kit"), default="humanml3d",
                   help="feature layout: humanml3d (263-dim, default) or kit (251-dim, only with --humanml3d-vecs)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing shard set in --out first")
    p.add_argument("--dry-run", action="store_true", help="only check the shard set in --out against its manifests")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    return p


def check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build-shards check",
                                description="Validate a shard set against its manifests (exit 1 on problems).")
    p.add_argument("shards", help="shard set directory")
    p.add_argument("--splits", type=_splits, default=None, help="only these splits (default: every manifest)")
    p.add_argument("--quick", action="store_true", help="skip parsing members (sizes, sha256, tar, members only)")
    return p


def run_check(shards: str, splits=None, deep: bool = True) -> int:
    from dataset.shards import check_shards

    rep = check_shards(shards, splits=splits, deep=deep)
    for prob in rep.problems:
        print(f"PROBLEM {prob}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(rep.samples.items()))
    print(f"checked {rep.shards} shards ({counts}): " + ("OK" if rep.ok else f"{len(rep.problems)} problems"))
    return 0 if rep.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "check":
        a = check_parser().parse_args(argv[1:])
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return run_check(a.shards, a.splits, deep=not a.quick)
    p = build_parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if a.dry_run:
        return run_check(a.out, None if a.splits == ("train", "val", "test") else a.splits)
    missing = [f for f in ("annotations", "videos") if getattr(a, f) is None]
    if a.amass is None and a.humanml3d_vecs is None:
        missing.append("amass (or --humanml3d-vecs)")
    if missing:
        p.error("missing " + ", ".join("--" + m for m in missing))
    for flag, path in (("--videos", a.videos), ("--amass", a.amass), ("--humanml3d-vecs", a.humanml3d_vecs)):
        if path is not None and not Path(path).is_dir():
            p.error(f"{flag} {path}: not a directory")

    from dataset.annotations import load_clips
    from dataset.shards import BuildConfig, ShardSetMismatch, build_shards
    from dataset.text_embed import SentenceEmbedder

    try:
        cfg = BuildConfig(out=Path(a.out), videos=Path(a.videos), amass_root=a.amass and Path(a.amass),
                          humanml3d_vecs=a.humanml3d_vecs and Path(a.humanml3d_vecs), splits=a.splits,
                          samples_per_shard=a.samples_per_shard, workers=a.workers, video_format=a.video_format,
                          frame_size=a.frame_size, jpeg_quality=a.jpeg_quality, overwrite=a.overwrite,
                          skeleton=a.skeleton)
    except ValueError as exc:
        p.error(str(exc))
    try:
        embedder = SentenceEmbedder(a.text_model)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clips = load_clips(a.annotations, a.amass)
    ann_report = getattr(clips, "report", None)
    sources = {"annotations": a.annotations, "amass": a.amass, "videos": a.videos}
    if a.humanml3d_vecs:
        sources["humanml3d_vecs"] = a.humanml3d_vecs
    try:
        report = build_shards(clips, cfg, embedder=embedder, sources=sources, show_progress=not a.quiet)
    except ShardSetMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if ann_report is not None:
        print(f"annotations: {_short(ann_report)}")
    for kind, items in (("skipped", report.skipped), ("failed", report.failed)):
        for key, reason in sorted(items.items())[:20]:
            print(f"{kind} {key}: {reason}")
        if len(items) > 20:
            print(f"... {len(items) - 20} more {kind} (see {Path(a.out) / '.build' / 'report.json'})")
    print(f"build-shards: {report.summary()}")
    total = report.done + report.kept
    return 0 if total > 0 or not (report.failed or report.skipped) else 1


def _short(rep) -> str:
    if hasattr(rep, "summary") and callable(rep.summary):
        return rep.summary()
    if hasattr(rep, "to_dict"):
        rep = rep.to_dict()
    try:
        return json.dumps(rep, default=str)[:500]
    except TypeError:
        return str(rep)[:500]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

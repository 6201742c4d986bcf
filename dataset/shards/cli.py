"""``build-shards``: write WebDataset shards from annotations + AMASS + rendered videos, or check a shard set.

    build-shards --annotations SRC --amass ROOT --videos DIR --out SHARDS [--body-models DIR] [options]
    build-shards check SHARDS [--splits train,val] [--quick]
    build-shards --out SHARDS --dry-run          (same as check)

Motion features are computed from AMASS with the procedural body, or with the real SMPL-family models of
``--body-models DIR`` (smplx's layout, as render-amass), gendered per AMASS file; ``--humanml3d-vecs`` reads the
released vectors instead (no body is posed). The manifests record ``sources.body_models``.

Exit status: 0 every clip was written; 1 some clips failed or were skipped (the rest is written), the run was
interrupted by SIGINT/SIGTERM (what finished is kept and reported in SHARDS/.build/report.json), or ``check``
found problems; 2 usage or set-up error (missing directory, unreadable annotations, missing or malformed body
model, incompatible shard set, disk full), one line naming the file.

See the README for every flag and the shard format.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from pathlib import Path

from lavimo.core.atomic import check_writable_dir
from lavimo.core.errors import BadInputError, SetupError, os_error_text, print_error
from lavimo.dataset.annotations import DATASET_CHOICES
from lavimo.dataset.subsets import NSIM_SPLIT

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
                   "(+ splits/), as read by lavimo.dataset.annotations.load_clips")
    p.add_argument("--amass", help="AMASS root directory (npz files)")
    p.add_argument("--length-filter", choices=("auto", "on", "off"), default="auto",
                   help="HumanML3D's / TMR's motion-length rules (docs/data.md): auto (default) = on for HumanML3D, "
                        "KIT-ML and BABEL sources, off otherwise (the synthetic corpus, one's own data)")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default="auto",
                   help="which dataset the annotations are, for --length-filter auto and KIT-ML's 24-row minimum: "
                        "auto (default) = from the directory name (HumanML3D, KIT-ML, BABEL), else other")
    p.add_argument("--videos", help="render-amass output directory (<keyid>.mp4 + <keyid>.json)")
    p.add_argument("--out", required=True, help="shard set directory")
    p.add_argument("--humanml3d-vecs", help="take features from HumanML3D's new_joint_vecs/<keyid>.npy instead of "
                   "computing them from AMASS")
    p.add_argument("--body-models", metavar="DIR",
                   help="SMPL-family body-model directory in smplx's layout, as render-amass --body-models (e.g. "
                        "DIR/smplh/SMPLH_MALE.npz and SMPLH_FEMALE.npz; DIR/smplx/ for 165-dim poses): features "
                        "computed from AMASS pose the real body, gendered per AMASS file as HumanML3D (the male "
                        "model for 'male', the female one otherwise); default: the procedural body. Not used with "
                        "--humanml3d-vecs (the vectors are read as they are)")
    p.add_argument("--splits", type=_splits, default=("train", "val", "test"),
                   help="comma-separated splits to build (default train,val,test)")
    p.add_argument("--no-nsim", action="store_true",
                   help="do not pack the dissimilar subset as the nsim_test split (default: packed with test when "
                        "the annotations' splits hold nsim_test.txt or the dataset is HumanML3D / KIT-ML)")
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
    p.add_argument("--part", default=None,
                   help="K/N: build only every N-th shard slot starting at K-1 (parts may run at once into the same "
                        "--out; default inside a Slurm job array: from SLURM_ARRAY_TASK_ID / _COUNT); afterwards run "
                        "the same command without --part: it keeps every shard and writes the manifests and stats")
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
    from lavimo.dataset.shards.check import check_shards

    rep = check_shards(shards, splits=splits, deep=deep)
    for prob in rep.problems:
        print(f"PROBLEM {prob}")
    for left in rep.leftovers:
        print(f"LEFTOVER {left} (temporary file of an interrupted run, not a shard; the next build-shards run "
              "removes it)")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(rep.samples.items()))
    print(f"checked {rep.shards} shards ({counts}): " + ("OK" if rep.ok else f"{len(rep.problems)} problems"))
    return 0 if rep.ok else 1


def _os_error(exc: OSError, default: str | os.PathLike) -> str:
    return os_error_text(exc, default, " (free some space and run again: finished shards are kept)")


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 every clip written; 1 some clips failed or were skipped (the others are written), the
    run was interrupted (SIGINT/SIGTERM), or ``check`` found problems; 2 usage or set-up error (one line)."""
    command = argv is None  # this process's own command line (not a caller's in-process main([...]))
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "check":
            a = check_parser().parse_args(argv[1:])
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
            if not Path(a.shards).is_dir():
                raise SetupError(f"{a.shards}: not a directory (give a shard set written by build-shards)")
            return run_check(a.shards, a.splits, deep=not a.quick)
        p = build_parser()
        a = p.parse_args(argv)
        logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        if a.dry_run:
            if not Path(a.out).is_dir():
                raise SetupError(f"--out {a.out}: not a directory (give a shard set written by build-shards)")
            return run_check(a.out, None if a.splits == ("train", "val", "test") else a.splits)
        return _build(p, a, command)
    except SetupError as exc:
        return print_error("build-shards", exc)


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> tuple[int, int] | None:
    """Check the build flags and inputs (usage errors exit through ``p.error``, set-up errors raise SetupError);
    returns the ``--part`` (K, N) or None."""
    missing = [f for f in ("annotations", "videos") if getattr(a, f) is None]
    if a.amass is None and a.humanml3d_vecs is None:
        missing.append("amass (or --humanml3d-vecs)")
    if missing:
        p.error("missing " + ", ".join("--" + m for m in missing))
    for flag, value, ok, rule in (("--samples-per-shard", a.samples_per_shard, a.samples_per_shard >= 1, ">= 1"),
                                  ("--workers", a.workers, a.workers >= 1, ">= 1"),
                                  ("--frame-size", a.frame_size, a.frame_size >= 16, ">= 16 (pixels)"),
                                  ("--jpeg-quality", a.jpeg_quality, 1 <= a.jpeg_quality <= 95, "in 1..95")):
        if not ok:
            p.error(f"{flag} must be {rule}, got {value}")
    if a.skeleton == "kit" and a.humanml3d_vecs is None:
        p.error("--skeleton kit needs --humanml3d-vecs (features computed from AMASS use the 22-joint humanml3d "
                "skeleton: omit --skeleton)")
    for flag, path, what in (("--videos", a.videos, "render-amass's output directory"),
                             ("--amass", a.amass, "the AMASS root"),
                             ("--humanml3d-vecs", a.humanml3d_vecs, "HumanML3D's new_joint_vecs directory"),
                             ("--body-models", a.body_models, "a body-model directory in smplx's layout, e.g. "
                              "DIR/smplh/SMPLH_MALE.npz; omit --body-models to use the procedural body")):
        if path is not None and not Path(path).is_dir():
            raise SetupError(f"{flag} {path}: not a directory (give {what})")
    if not Path(a.annotations).exists():
        raise SetupError(f"--annotations {a.annotations}: not found (give a HumanML3D directory or an "
                         "annotations.json)")
    from lavimo.core.slurm import SlurmEnvError, parse_part, part_argument

    try:  # no --part inside a Slurm job array: the task's part (core/slurm.py)
        part_text = part_argument(a.part)
        part = None if part_text is None else parse_part(part_text)
    except (SlurmEnvError, ValueError) as exc:
        raise SetupError(str(exc)) from None
    try:
        check_writable_dir(Path(a.out))
    except OSError as exc:
        raise SetupError(f"--out {_os_error(exc, Path(a.out))} (give a writable directory for the shard set)") from None
    return part


def _build(p: argparse.ArgumentParser, a: argparse.Namespace, command: bool) -> int:
    """``build-shards`` without ``check`` / ``--dry-run``: build, print the outcome, its exit status."""
    part = _check_args(p, a)
    out = Path(a.out)
    from lavimo.dataset.annotations import LENGTH_FILTER_MODES, load_clips
    from lavimo.dataset.shards.build import BuildConfig, ShardSetMismatch, build_shards
    from lavimo.dataset.text_embed import SentenceEmbedder

    try:
        cfg = BuildConfig(out=out, videos=Path(a.videos), amass_root=a.amass and Path(a.amass),
                          humanml3d_vecs=a.humanml3d_vecs and Path(a.humanml3d_vecs), splits=a.splits,
                          samples_per_shard=a.samples_per_shard, workers=a.workers, video_format=a.video_format,
                          frame_size=a.frame_size, jpeg_quality=a.jpeg_quality, overwrite=a.overwrite,
                          skeleton=a.skeleton, part=part)
    except ValueError as exc:
        p.error(str(exc))
    try:
        embedder = SentenceEmbedder(a.text_model)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        raise SetupError(f"--text-model: {exc}") from None
    try:
        clips = load_clips(a.annotations, a.amass, length_filter=LENGTH_FILTER_MODES[a.length_filter],
                           dataset=a.dataset)
    except BadInputError as exc:
        raise SetupError(f"annotations: {exc}") from None
    except (OSError, ValueError) as exc:  # unreadable / not JSON / not UTF-8
        raise SetupError(f"--annotations {a.annotations}: unreadable: {exc}") from None
    ann_report = getattr(clips, "report", None)
    if "test" in a.splits and NSIM_SPLIT not in a.splits and not a.no_nsim:
        try:
            nsim, nsim_note = nsim_clips(clips, a.annotations)
        except BadInputError as exc:
            raise SetupError(f"{NSIM_SPLIT}: {exc}") from None
        if nsim:
            clips = list(clips) + nsim
            cfg = dataclasses.replace(cfg, splits=tuple(cfg.splits) + (NSIM_SPLIT,))
            print(f"{NSIM_SPLIT}: {nsim_note}")
    sources = {"annotations": a.annotations, "amass": a.amass, "videos": a.videos,
               "body_models": body_models_source(a.body_models, a.humanml3d_vecs)}
    if a.humanml3d_vecs:
        sources["humanml3d_vecs"] = a.humanml3d_vecs
    features_fn = _features_fn(a, cfg, clips, sources["body_models"])
    try:
        report = build_shards(clips, cfg, embedder=embedder, features_fn=features_fn, sources=sources,
                              show_progress=not a.quiet, then_ignore_signals=command)
    except ShardSetMismatch as exc:
        raise SetupError(str(exc)) from None
    except BadInputError as exc:  # a malformed shard set already in --out
        raise SetupError(f"{exc} (use another --out or --overwrite)") from None
    except OSError as exc:  # ENOSPC, EACCES, EIO while writing
        raise SetupError(_os_error(exc, out)) from None
    if ann_report is not None:
        print(f"annotations: {_short(ann_report)}")
    return _outcome(report, out, part)


def _features_fn(a: argparse.Namespace, cfg, clips: list, body_models: str):
    """The motion features of the build: None (build_shards' default: clip_features with the procedural body,
    or the vectors) or :func:`amass_features_fn` with the real bodies of ``--body-models`` (loaded here)."""
    if a.humanml3d_vecs is not None:
        if a.body_models is not None:
            log.info("--body-models %s is not used: features are read from --humanml3d-vecs", a.body_models)
        return None
    if not a.overwrite:
        clash = body_models_clash(Path(a.out), body_models)
        if clash:
            raise SetupError(clash)
    if a.body_models is None:
        return None
    try:
        needed = load_needed_bodies(a.body_models, [c for c in clips if c.split in cfg.splits], a.amass)
    except BadInputError as exc:  # a malformed model file: names the file and the member
        raise SetupError(f"--body-models: {exc}") from None
    except (FileNotFoundError, ValueError) as exc:  # names the file expected under DIR
        raise SetupError(f"--body-models: {exc}") from None
    except OSError as exc:
        raise SetupError(f"--body-models {_os_error(exc, a.body_models)}") from None
    log.info("body models for the features: %s", ", ".join(f"{t} {g}" for t, g in needed) or "none needed")
    return amass_features_fn(cfg.amass_root, a.body_models, cfg.skeleton)


def _outcome(report, out: Path, part: tuple[int, int] | None) -> int:
    """Print what the build did; exit status 1 when it was interrupted or some clips were not written."""
    for kind, items in (("skipped", report.skipped), ("failed", report.failed)):
        for key, reason in sorted(items.items())[:20]:
            print(f"{kind} {key}: {reason}")
        if len(items) > 20:
            print(f"... {len(items) - 20} more {kind} (see {out / '.build' / 'report.json'})")
    print(f"build-shards: {report.summary()}")
    if part is not None and not report.interrupted:
        print(f"build-shards: part {part[0]}/{part[1]} written; when every part has finished, run the same command "
              "without --part (outside the job array) to write the manifests and stats.npz (it keeps every shard "
              "the parts wrote)")
    if report.interrupted:
        return 1
    not_done = report.not_done()
    if not_done:
        print(f"build-shards: {len(not_done)} clips not written (reasons above and in "
              f"{out / '.build' / 'report.json'}); the other clips are in the shards")
        return 1
    return 0


#: ``sources.body_models`` of a shard set whose features were read from ``--humanml3d-vecs``
BODY_MODELS_UNUSED = "none (features read from humanml3d_vecs)"


def body_models_source(body_models: str | os.PathLike | None, humanml3d_vecs: str | os.PathLike | None) -> str:
    """What the manifests record as ``sources.body_models``: the ``--body-models`` directory, ``"procedural"``,
    or :data:`BODY_MODELS_UNUSED` when the features come from ``--humanml3d-vecs``."""
    if humanml3d_vecs is not None:
        return BODY_MODELS_UNUSED
    return "procedural" if body_models is None else os.fspath(body_models)


def _same_body(a: str, b: str) -> bool:
    if a == b:
        return True
    if "procedural" in (a, b) or BODY_MODELS_UNUSED in (a, b):
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def body_models_clash(out: str | os.PathLike, body_models: str) -> str | None:
    """A one-line message when the shard set in ``out`` has features computed from AMASS with another body
    than ``body_models`` (a ``sources.body_models`` value), else None.

    The shards' resume fingerprints do not cover the body, so a run with another body would keep the old
    shards: like another text model, it needs another ``--out`` or ``--overwrite``. Manifests written before
    ``body_models`` was recorded count as ``"procedural"`` (the only body there was); manifests of features
    read from ``humanml3d_vecs`` never clash (their shards are rebuilt: their inputs differ)."""
    from lavimo.dataset.shards.format import manifest_path, read_manifests

    for split, m in sorted(read_manifests(Path(out)).items()):
        src = m.get("sources") if isinstance(m.get("sources"), dict) else {}
        if src.get("humanml3d_vecs") not in (None, "None"):
            continue
        prior = str(src.get("body_models", "procedural"))
        if not _same_body(prior, body_models):
            return (f"{manifest_path(out, split)}: the shard set's motion features were computed with "
                    f"body_models={prior} but this run uses {body_models}; one shard set cannot mix them (use "
                    "another --out or --overwrite)")
    return None


def amass_body_key(path: str | os.PathLike) -> tuple[str, str]:
    """(model type, gender) of the body :func:`lavimo.dataset.features.clip_features` poses an AMASS file with, given a
    model directory: "smplh" for (T, 156) poses, "smplx" for (T, 165); "male" for a male file, "female"
    otherwise (HumanML3D's rule). Reads only the ``poses`` header and the ``gender`` member (never unpickles
    anything but plain strings, as :func:`lavimo.dataset.amass.load_amass`).

    Raises:
        BadInputError: naming the file and the field (missing/unreadable file, bad poses shape or gender).
    """
    from lavimo.dataset.amass import MAX_AMASS_ARRAY_BYTES, POSE_WIDTHS, _open_npz, _read, normalise_gender
    from lavimo.core.restricted_unpickle import read_npz_header

    path = os.fspath(path)
    with _open_npz(path) as zf:
        shape, _, _ = read_npz_header(zf, path, "poses", MAX_AMASS_ARRAY_BYTES)
        if len(shape) != 2 or shape[1] not in POSE_WIDTHS:
            raise BadInputError(path, "poses", f"expected shape (T, 156) or (T, 165), got {shape}")
        gender = "neutral"
        if "gender.npy" in zf.namelist():
            gender = normalise_gender(_read(zf, path, "gender", numeric=False), path)
    return POSE_WIDTHS[shape[1]], ("male" if gender == "male" else "female")


def load_needed_bodies(body_models: str | os.PathLike, clips: list, amass_root: str | os.PathLike
                       ) -> list[tuple[str, str]]:
    """Load (and cache in this process, so forked workers inherit them) the real bodies the clips' AMASS files
    need; returns the sorted (model type, gender) pairs.

    An AMASS file that cannot be read is left out here: its clips fail one by one during the build, with the
    reason. Raises FileNotFoundError naming the model file expected under ``body_models`` (as render-amass
    reports it), BadInputError naming a malformed model file and its member."""
    from lavimo.dataset.features import _cached_body

    needed: set[tuple[str, str]] = set()
    for rel in sorted({str(c.amass_path) for c in clips}):
        try:
            needed.add(amass_body_key(Path(amass_root) / rel))
        except (BadInputError, OSError) as exc:
            log.debug("%s: body model not determined (%s); its clips fail during the build", rel, exc)
    for model_type, gender in sorted(needed):
        _cached_body(os.fspath(body_models), model_type, gender)  # the key clip_features looks it up with
    return sorted(needed)


def amass_features_fn(amass_root: str | os.PathLike, body_models: str | os.PathLike, skeleton: str = "humanml3d"):
    """``clip -> (T-1, 263) float32``: :func:`lavimo.dataset.features.clip_features` with the real bodies of
    ``body_models``. A partial of a module function over plain paths, so it pickles to the worker processes
    (each loads a body once, or inherits the parent's cache when forked)."""
    from lavimo.dataset.features import clip_features

    return functools.partial(clip_features, amass_root=Path(amass_root), body=os.fspath(body_models),
                             skeleton=skeleton)


def nsim_clips(clips: list, annotations: str | os.PathLike) -> tuple[list, str]:
    """The clips of the dataset's dissimilar subset, relabelled as split ``nsim_test`` (TMR evaluates the list as
    a split of its own, so ids outside the test split count too), and a note saying where the ids came from.

    Ids come from the annotations' own ``nsim_test.txt`` (``splits/`` or the root, as the other split files), else
    from TMR's published list when the clips' dataset is HumanML3D or KIT-ML (``dataset/subsets``); no list ->
    ``[]``. Ids of the list that are not among the loaded clips are named in the note."""
    from lavimo.dataset.subsets import published_subset, read_subset

    src = Path(annotations)
    root = src if src.is_dir() else src.parent
    listed = next((f for f in (root / "splits" / f"{NSIM_SPLIT}.txt", root / f"{NSIM_SPLIT}.txt") if f.is_file()),
                  None)
    if listed is None and clips:
        listed = published_subset(clips[0].dataset)
    if listed is None:
        return [], ""
    ids = read_subset(listed)
    by_key = {c.keyid: c for c in clips}
    found = [dataclasses.replace(by_key[k], split=NSIM_SPLIT) for k in ids if k in by_key]
    missing = [k for k in ids if k not in by_key]
    note = f"{len(found)} of the {len(ids)} ids of {listed}"
    if missing:
        note += f" (not among the loaded clips: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''})"
    return found, note


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

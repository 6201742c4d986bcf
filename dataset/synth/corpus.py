"""``synth-amass``: a synthetic corpus of procedural motions in the real AMASS format.

Writes, under ``--out DIR``::

    DIR/amass/SynthMocap/subject_NN/<action>_KK_poses.npz   AMASS SMPL-H files (see below)
    DIR/annotations.json + DIR/splits/{train,val,test,all,nsim_test}.txt   TMR-style annotations (seconds)
    DIR/humanml3d/index.csv, texts/<keyid>.txt, {train,val,test,all,nsim_test}.txt   HumanML3D-style annotations
    DIR/synth.json   the corpus manifest (arguments, per-motion action and modifiers)

Each npz holds ``poses`` (T, 156) float64 SMPL-H axis-angle (root orientation includes the +90 degree
turn about X from SMPL's Y-up rest frame to AMASS's Z-up world), ``trans`` (T, 3) metres (Z-up, lowest
sole on the floor z = 0), ``betas`` (16,) zeros, ``gender`` "neutral", ``mocap_framerate`` (60, 100 or
120 fps by subject) and ``dmpls`` (T, 8) zeros. Durations are whole 20-fps frames between 2 and 8 s, so
the HumanML3D frame rule (stride fps/20) and the time rule (20 fps) select the same frames.

``nsim_test.txt`` is the corpus's dissimilar subset, as TMR ships one for HumanML3D and KIT-ML: up to
``nsim_size`` test motions whose first captions are mutually dissimilar, picked by
:func:`lavimo.dataset.subsets.build_dissimilar_subset` on the bundled sentence model's embeddings.

Everything is a pure function of ``--seed`` and the arguments: running twice writes byte-identical files.

Exit status: 0 the corpus was written; 1 interrupted (Ctrl-C: run the same command again, it rewrites the
corpus); 2 usage or set-up error, one line (bad arguments, ``--out`` not a writable directory, disk full, the
bundled sentence model missing), checked before anything is written where possible.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lavimo.core.atomic import atomic_path, check_writable_dir, write_json, write_text
from lavimo.core.errors import print_error
from lavimo.core.seeding import stable_rng
from lavimo.dataset.subsets import NSIM_SPLIT, build_dissimilar_subset
from lavimo.dataset.synth.actions import (ACTION_NAMES, ACTIONS, MotionParams, animate, captions, describe_action,
                                   sample_params)
from lavimo.dataset.synth.rig import assemble

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
FPS_CHOICES = (60.0, 100.0, 120.0)
DATASET_DIR = "SynthMocap"


@dataclass(frozen=True)
class MotionPlan:
    """One motion of the corpus: its id, file, frame rate, split and modifiers."""

    keyid: str
    amass_path: str  # relative to DIR/amass, with .npz
    subject: int
    fps: float
    split: str
    params: MotionParams


# -- planning ------------------------------------------------------------------------------------------------


def choose_actions(n_motions: int, actions: list[str] | None = None) -> list[str]:
    """Actions used for a corpus of ``n_motions``: all (or ``actions``), cut to n_motions // 4 so that
    every action can appear in train (at least twice), val and test."""
    names = list(actions) if actions else list(ACTION_NAMES)
    unknown = [a for a in names if a not in ACTIONS]
    if unknown:
        raise ValueError(f"unknown action(s) {unknown}; see synth-amass --list-actions")
    k = max(1, min(len(names), n_motions // 4))
    if k < len(names):
        log.warning("%d motions are too few for %d actions in every split; using the first %d actions",
                    n_motions, len(names), k)
    return names[:k]


def _split_counts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    n_test = max(1, int(round(n * test_fraction))) if test_fraction > 0 else 0
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    while n_test + n_val > n - 1 and (n_test > 1 or n_val > 1):  # keep at least one for training
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    if n - n_test - n_val < 1:  # tiny groups: train first, then test, then val
        n_test, n_val = min(n_test, max(0, n - 1)), min(n_val, max(0, n - 1 - min(n_test, max(0, n - 1))))
    return n_test, n_val


def plan_corpus(n_motions: int, seed: int = 0, actions: list[str] | None = None, test_fraction: float = 0.15,
                val_fraction: float = 0.10, subjects: int = 10) -> list[MotionPlan]:
    """The deterministic plan of a corpus: motion i has action ``actions[i % k]``; each action's motions
    are split train/val/test by the fractions (at least one each when the fractions are > 0)."""
    if n_motions < 1:
        raise ValueError("--motions must be >= 1")
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError("--test-fraction and --val-fraction must be in [0, 1) with a sum below 1")
    names = choose_actions(n_motions, actions)
    by_action: dict[str, list[int]] = defaultdict(list)
    for i in range(n_motions):
        by_action[names[i % len(names)]].append(i)
    split_of: dict[int, str] = {}
    for action, idx in by_action.items():
        order = [idx[j] for j in stable_rng(seed, "split", action).permutation(len(idx))]
        n_test, n_val = _split_counts(len(idx), test_fraction, val_fraction)
        for j, i in enumerate(order):
            split_of[i] = "test" if j < n_test else ("val" if j < n_test + n_val else "train")
    counters: Counter = Counter()
    plans = []
    for i in range(n_motions):
        keyid = f"{i:06d}"
        action = names[i % len(names)]
        subject = i % max(1, subjects)
        counters[(subject, action)] += 1
        path = f"{DATASET_DIR}/subject_{subject:02d}/{action}_{counters[(subject, action)]:02d}_poses.npz"
        params = sample_params(action, stable_rng(seed, keyid, "params"))
        plans.append(MotionPlan(keyid, path, subject, FPS_CHOICES[subject % len(FPS_CHOICES)], split_of[i], params))
    return plans


# -- text ----------------------------------------------------------------------------------------------------


_POS = {}
for _w in "a an the".split():
    _POS[_w] = "DET"
for _w in "someone person human figure themself it its them each one".split():
    _POS[_w] = "PRON" if _w not in ("person", "human", "figure") else "NOUN"
for _w in "in on to with from at for of into around up down out over by back off".split():
    _POS[_w] = "ADP"
for _w in "forward backward sideways clockwise counterclockwise twice once again in place".split():
    _POS.setdefault(_w, "ADV")
for _w in "left right both high small big full steady slow fast normal opposite seated overhand".split():
    _POS[_w] = "ADJ"
_POS["and"] = "CCONJ"
_NUMWORDS = set("one two three four five six seven eight nine ten eleven twelve thirteen fourteen".split())


def tokens(caption: str) -> str:
    """HumanML3D-style ``word/POS`` tokens of a caption (a small rule-based tagger)."""
    out = []
    for w in re.findall(r"[a-z]+", caption.lower()):
        if w in _NUMWORDS:
            pos = "NUM"
        elif w in _POS:
            pos = _POS[w]
        elif w.endswith("ly"):
            pos = "ADV"
        elif w.endswith(("s", "es")) and len(w) > 3 and out and out[-1].endswith(("/PRON", "/NOUN")):
            pos = "VERB"
        elif w.endswith("ing"):
            pos = "VERB"
        else:
            pos = "NOUN"
        out.append(f"{w}/{pos}")
    return " ".join(out)


_SWAP = {"left": "right", "right": "left", "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def mirror_caption(caption: str) -> str:
    """Caption of the mirrored motion: left <-> right and clockwise <-> counterclockwise."""
    return re.sub(r"\b(left|right|clockwise|counterclockwise)\b", lambda m: _SWAP[m.group(1)], caption)


# -- writing -------------------------------------------------------------------------------------------------


def motion_arrays(plan: MotionPlan, seed: int) -> dict[str, np.ndarray]:
    """The AMASS npz members of one planned motion (fixed key order)."""
    rig = animate(plan.params, plan.fps, stable_rng(seed, plan.keyid, "motion"))
    poses, trans = assemble(rig)
    T = poses.shape[0]
    return {
        "poses": poses.astype(np.float64),
        "trans": trans.astype(np.float64),
        "betas": np.zeros(16, dtype=np.float64),
        "gender": np.array("neutral"),
        "mocap_framerate": np.array(plan.fps, dtype=np.float64),
        "dmpls": np.zeros((T, 8), dtype=np.float64),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write an uncompressed npz (deterministic: fixed member order, fixed zip timestamps)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _remove_stale(root: Path, pattern: str, keep: set[Path]) -> int:
    n = 0
    for f in root.glob(pattern):
        if f.resolve() not in keep:
            f.unlink()
            n += 1
    return n


def generate_corpus(out: str | Path, n_motions: int = 240, seed: int = 0, *, actions: list[str] | None = None,
                    test_fraction: float = 0.15, val_fraction: float = 0.10, subjects: int = 10,
                    mirror: bool = False, nsim_size: int = 100) -> dict:
    """Generate the corpus under ``out`` and return its summary (see the module docstring)."""
    out = Path(out)
    t0 = time.perf_counter()
    plans = plan_corpus(n_motions, seed, actions, test_fraction, val_fraction, subjects)
    amass_root = out / "amass"
    h3d = out / "humanml3d"
    was_ours = (out / "synth.json").is_file()
    motions = {}
    ann = {}
    index_rows = ["source_path,start_frame,end_frame,new_name"]
    texts: dict[str, list[str]] = {}
    split_ids: dict[str, list[str]] = defaultdict(list)
    for plan in tqdm(plans, desc="synth-amass", unit="motion", disable=None):
        arrays = motion_arrays(plan, seed)
        write_npz(amass_root / plan.amass_path, arrays)
        T = arrays["poses"].shape[0]
        n20 = int(round(T * 20.0 / plan.fps))
        duration = n20 / 20.0
        caps = captions(plan.params)
        stem = plan.amass_path[: -len(".npz")]
        copies = [(plan.keyid, stem, caps)]
        if mirror:
            copies.append((f"M{plan.keyid}", f"M/{stem}", [mirror_caption(c) for c in caps]))
        for kid, path, cs in copies:
            ann[kid] = {"path": path, "duration": duration,
                        "annotations": [{"seg_id": f"{kid}_{j}", "text": c, "start": 0.0, "end": duration}
                                        for j, c in enumerate(cs)]}
            texts[kid] = [f"{c}#{tokens(c)}#0.0#0.0" for c in cs]
            split_ids[plan.split].append(kid)
            split_ids["all"].append(kid)
        index_rows.append(f"./pose_data/{stem}.npy,0,{n20},{plan.keyid}.npy")
        motions[plan.keyid] = {"amass_path": plan.amass_path, "subject": plan.subject, "fps": plan.fps,
                               "num_frames": T, "num_frames_20fps": n20, "duration": duration,
                               "split": plan.split, "params": plan.params.to_dict(), "captions": caps}
    # annotation layouts
    write_json(out / "annotations.json", ann)
    for name in ("train", "val", "test", "all"):
        body = "".join(f"{k}\n" for k in sorted(split_ids.get(name, [])))
        write_text(out / "splits" / f"{name}.txt", body)
        write_text(h3d / f"{name}.txt", body)
    nsim = dissimilar_test_ids(split_ids.get("test", []), {k: m["captions"][0] for k, m in motions.items()},
                               nsim_size)
    for target in (out / "splits" / f"{NSIM_SPLIT}.txt", h3d / f"{NSIM_SPLIT}.txt"):
        if nsim:
            write_text(target, "".join(f"{k}\n" for k in sorted(nsim)))
        elif was_ours and target.is_file():
            target.unlink()  # an earlier run's subset no longer applies
    write_text(h3d / "index.csv", "\n".join(index_rows) + "\n")
    for kid, lines in texts.items():
        write_text(h3d / "texts" / f"{kid}.txt", "\n".join(lines) + "\n")
    stale = 0
    if was_ours:
        stale += _remove_stale(amass_root / DATASET_DIR, "subject_*/*_poses.npz",
                               {(amass_root / p.amass_path).resolve() for p in plans})
        stale += _remove_stale(h3d / "texts", "*.txt", {(h3d / "texts" / f"{k}.txt").resolve() for k in texts})
    summary = _summary(plans, motions, out, seed, mirror, time.perf_counter() - t0, stale)
    manifest = {"version": SYNTH_VERSION, "seed": seed, "motions": n_motions,
                "args": {"test_fraction": test_fraction, "val_fraction": val_fraction, "subjects": subjects,
                         "mirror": mirror, "nsim_size": nsim_size, "actions": sorted({p.params.action for p in plans})},
                "amass_root": "amass", "layouts": {"tmr": "annotations.json", "humanml3d": "humanml3d"},
                "summary": {k: v for k, v in summary.items() if k not in ("out", "seconds", "stale_removed")},
                "items": motions}
    write_json(out / "synth.json", manifest)
    return summary


def dissimilar_test_ids(test_ids: list[str], first_caption: dict[str, str], size: int) -> list[str]:
    """The corpus's ``nsim_test`` ids: up to ``size`` test motions (not their mirrored copies) whose first
    captions are mutually dissimilar, by :func:`lavimo.dataset.subsets.build_dissimilar_subset` on the bundled
    sentence model. Empty when ``size`` is 0 or the test split is empty."""
    ids = sorted(k for k in test_ids if k in first_caption)
    if size <= 0 or not ids:
        return []
    from lavimo.dataset.text_embed import SentenceEmbedder

    emb = SentenceEmbedder().encode([first_caption[k] for k in ids])
    return build_dissimilar_subset(ids, emb, min(size, len(ids))).ids


def _summary(plans, motions, out, seed, mirror, seconds, stale) -> dict:
    per_action: dict[str, Counter] = defaultdict(Counter)
    for p in plans:
        per_action[p.params.action][p.split] += 1
    fps = Counter(f"{int(p.fps)}" for p in plans)
    total = sum(m["duration"] for m in motions.values())
    splits = Counter(p.split for p in plans)
    return {"out": str(out), "seed": seed, "motions": len(plans), "clips": len(plans) * (2 if mirror else 1),
            "actions": len(per_action), "splits": dict(sorted(splits.items())),
            "per_action": {a: dict(sorted(c.items())) for a, c in sorted(per_action.items())},
            "fps": dict(sorted(fps.items())), "total_duration_s": round(total, 2),
            "mean_duration_s": round(total / max(1, len(plans)), 2), "seconds": round(seconds, 2),
            "stale_removed": stale}


def format_summary(s: dict) -> str:
    lines = [f"synth-amass: {s['motions']} motions ({s['clips']} clips) of {s['actions']} actions -> {s['out']}",
             "  splits: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()),
             "  fps mix: " + ", ".join(f"{k} fps x{v}" for k, v in s["fps"].items()),
             f"  duration: {s['total_duration_s']:.1f} s in total, {s['mean_duration_s']:.2f} s per motion",
             "  per action (train/val/test):"]
    for a, c in s["per_action"].items():
        lines.append(f"    {a:<14} {c.get('train', 0):>3} / {c.get('val', 0):>3} / {c.get('test', 0):>3}")
    lines.append(f"  written in {s['seconds']:.1f} s"
                 + (f"; removed {s['stale_removed']} stale files of an earlier run" if s["stale_removed"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="synth-amass", description=(
        "Write a synthetic corpus of procedural motions as AMASS npz files with TMR-style and "
        "HumanML3D-style annotations."))
    ap.add_argument("--out", help="output directory (created)")
    ap.add_argument("--motions", type=int, default=240, help="number of motions (default 240)")
    ap.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    ap.add_argument("--test-fraction", type=float, default=0.15,
                    help="fraction of each action's motions in the test split (default 0.15)")
    ap.add_argument("--val-fraction", type=float, default=0.10,
                    help="fraction of each action's motions in the val split (default 0.10)")
    ap.add_argument("--actions", default=None, help="comma-separated subset of actions (default: all)")
    ap.add_argument("--subjects", type=int, default=10, help="number of subject folders (default 10)")
    ap.add_argument("--mirror", action="store_true",
                    help="also annotate mirrored copies (M-prefixed ids, left/right-swapped captions)")
    ap.add_argument("--nsim-size", type=int, default=100,
                    help="size of the dissimilar test subset written as splits/nsim_test.txt (0 = none; default 100)")
    ap.add_argument("--list-actions", action="store_true", help="print the actions and their parameters")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.list_actions:
        for name in ACTION_NAMES:
            print(describe_action(ACTIONS[name]))
        return 0
    if not args.out:
        ap.error("--out is required (or --list-actions)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    actions = [a.strip() for a in args.actions.split(",") if a.strip()] if args.actions else None
    problem = _argument_problem(args, actions)
    if problem is None:
        problem = _output_problem(Path(args.out))
    if problem is not None:
        return print_error("synth-amass", problem)
    try:
        summary = generate_corpus(args.out, args.motions, args.seed, actions=actions,
                                  test_fraction=args.test_fraction, val_fraction=args.val_fraction,
                                  subjects=args.subjects, mirror=args.mirror, nsim_size=args.nsim_size)
    except OSError as e:  # disk full, a path component that is a file, permissions
        where = f"{e.filename}: " if e.filename else ""
        return print_error("synth-amass", f"{where}{e.strerror or e} (--out {args.out}; fix it and run again: the "
                                          "corpus is rewritten)")
    except (ValueError, RuntimeError) as e:  # bad arguments; the bundled sentence model missing (--nsim-size)
        return print_error("synth-amass", str(e))
    except KeyboardInterrupt:
        print(f"synth-amass: interrupted; run the same command again to write the whole corpus to {args.out}",
              file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _argument_problem(args: argparse.Namespace, actions: list[str] | None) -> str | None:
    """What is wrong with the arguments (one line), or None; checked before anything is written."""
    if args.motions < 1:
        return f"--motions must be >= 1, got {args.motions}"
    if args.subjects < 1:
        return f"--subjects must be >= 1, got {args.subjects}"
    if args.nsim_size < 0:
        return f"--nsim-size must be >= 0 (0 = no dissimilar subset), got {args.nsim_size}"
    tf, vf = args.test_fraction, args.val_fraction
    if not (0 <= tf < 1 and 0 <= vf < 1 and tf + vf < 1):  # also NaN
        return f"--test-fraction and --val-fraction must be in [0, 1) with a sum below 1, got {tf} and {vf}"
    unknown = [a for a in actions or () if a not in ACTIONS]
    if unknown:
        return f"unknown action(s) {unknown}; see synth-amass --list-actions"
    return None


def _output_problem(out: Path) -> str | None:
    """Why ``out`` cannot take the corpus (one line naming it), or None; creates the directory."""
    try:
        check_writable_dir(out)
    except OSError as e:
        return f"--out {out}: not a writable directory ({e.strerror or e}); pass a writable --out"
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

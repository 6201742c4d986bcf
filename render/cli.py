"""``render-amass``: render AMASS motions of annotated clips into frame-aligned mp4 videos.

    render-amass --amass ROOT --annotations SRC --out DIR [--avatars assets/avatars] [--lights 4]
                 [--body-models DIR] [--size 512] [--fps F] [--split S] [--limit N] [--keyids FILE]
                 [--mirror] [--workers N] [--part K/N] [--overwrite] [--seed 0] [--lod auto|full|N]
                 [--shading auto|pixel|vertex]

See the README. Exit status: 0 all clips rendered or skipped, 1 some clip failed (after finishing the
others) or the run was interrupted (SIGINT / SIGTERM; the report lists the clips not attempted), 2 set-up
error (bad arguments, no EGL, avatars/lights/body models/output unusable, disk full), as one line.

Reliability: outputs are written atomically and only inside ``--out`` (keyids are checked, see
:mod:`lavimo.core.keyids`); a clip counts as done only when its mp4 matches the size and sha256 recorded in its
sidecar (:func:`lavimo.render.pipeline.verify_outputs`); temporary files a killed run left for this run's clips are
removed at start; worker processes exit when the parent dies.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from tqdm import tqdm  # noqa: E402

from lavimo.core.atomic import check_writable_dir, temp_target, write_json  # noqa: E402
from lavimo.dataset.annotations import DATASET_CHOICES  # noqa: E402
from lavimo.dataset.clip import Clip  # noqa: E402
from lavimo.core.errors import BadInputError, SetupError, os_error_text, print_error  # noqa: E402
from lavimo.core.keyids import check_keyid, is_keyid  # noqa: E402
from lavimo.core.stop import StopSignals  # noqa: E402
from lavimo.core.workers import WorkerProcesses, fork_server_context, stop_fork_server, worker_setup  # noqa: E402
from lavimo.render.egl_device import choose_egl_devices  # noqa: E402

PROG = "render-amass"
log = logging.getLogger(PROG)


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N (lavimo.core.slurm's rule; its ValueError as a SetupError)."""
    if text is None:
        return None
    from lavimo.core.slurm import parse_part as parse

    try:
        return parse(text)
    except ValueError as e:
        raise SetupError(str(e)) from None


def select_part(clips: list[Clip], part: tuple[int, int] | None) -> list[Clip]:
    """Deterministic split: clips sorted by keyid, every N-th starting at K-1 (parts are disjoint, cover all)."""
    if part is None:
        return list(clips)
    k, n = part
    ordered = sorted(clips, key=lambda c: c.keyid)
    return ordered[k - 1::n]


def add_mirrored(clips: list[Clip], problems: dict[str, str] | None = None) -> list[Clip]:
    """``--mirror``: add an ``M<keyid>`` mirrored copy of every clip that has none. A copy whose keyid would
    break the keyid rule (a 128-character keyid) is left out and recorded in ``problems``."""
    have = {c.keyid for c in clips}
    extra = []
    for c in clips:
        if c.mirrored or "M" + c.keyid in have:
            continue
        if not is_keyid("M" + c.keyid):
            reason = f"--mirror: {ascii('M' + c.keyid)} would not be a valid keyid (too long)"
            log.warning("%s; no mirrored copy of %s", reason, c.keyid)
            if problems is not None:
                problems["M" + c.keyid] = reason
            continue
        extra.append(replace(c, keyid="M" + c.keyid, mirrored=True))
    return list(clips) + extra


def read_keyids(path: str) -> tuple[list[str], dict[str, str]]:
    """``--keyids FILE`` -> (valid keyids in file order, {"line N": reason} for lines that are not keyids).

    Blank lines and ``#`` comments are ignored; an invalid line is reported, never used as a keyid."""
    wanted: list[str] = []
    invalid: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                try:
                    wanted.append(check_keyid(text, path, f"line {n}"))
                except BadInputError as e:
                    invalid[f"line {n}"] = e.message
    except (OSError, UnicodeDecodeError) as e:
        raise SetupError(f"--keyids: cannot read {path} ({e})") from e
    return wanted, invalid


def remove_stale_temps(out: Path, finals: set[str]) -> tuple[int, int]:
    """Remove temporary files a killed run left in ``out``: ``.{name}.XXXX.tmp{ext}`` (lavimo.core.atomic and the
    video writer) whose final ``name`` is in ``finals`` (this run's ``<keyid>.mp4`` / ``<keyid>.json`` /
    report). Temporary files of other names are left alone: another ``--part`` may be writing them now. Returns (removed, left)."""
    removed = left = 0
    try:
        entries = list(os.scandir(out))
    except OSError as e:
        raise SetupError(f"cannot list the output directory {out} ({e.strerror or e})") from e
    for entry in entries:
        final = temp_target(entry.name)
        if final is None or entry.is_dir(follow_symlinks=False):
            continue
        if final in finals:
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                raise SetupError(f"cannot remove the stale temporary file {entry.path} ({e.strerror or e})") from e
        else:
            left += 1
    return removed, left


def check_output_dir(out: Path) -> None:
    try:
        check_writable_dir(out)
    except OSError as e:
        raise SetupError(f"output directory {out} is not writable ({e}); pass a writable --out") from e


#: modules the worker processes need, imported once by the fork server the workers are forked from
#: (instead of once per spawned worker: torch and pyrender alone take ~5 s of CPU to import). Importing them
#: creates no EGL context and runs no torch kernels, so forking after it is safe.
WORKER_PRELOAD = ["torch", "smplx", "scipy.sparse", "scipy.ndimage", "pyrender", "lavimo.render.pipeline", "lavimo.body.model",
                  "lavimo.render.scene", "lavimo.render.trajectory"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--amass", required=True, help="AMASS root directory (holding KIT/, CMU/, ...)")
    p.add_argument("--annotations", required=True,
                   help="HumanML3D directory (index.csv, texts/, splits) or TMR-style annotations.json")
    p.add_argument("--out", required=True, help="output directory for <keyid>.mp4 / <keyid>.json / the report")
    p.add_argument("--avatars", default=None, help="avatar specs: a directory of *.json, or an assets root holding avatars/ and "
                        "lights.json (default: assets/avatars)")
    p.add_argument("--lights", type=int, default=4, help="draw each clip's lighting setup from the first N")
    p.add_argument("--lights-file", default=None, help="lighting setups JSON (default: lights.json of the --avatars assets root, else "
                        "assets/lights.json)")
    p.add_argument("--body-models", default=None,
                   help="smplx body-model directory (smplh/, smplx/ ...); default: the procedural body")
    p.add_argument("--size", type=int, default=512, help="frame width and height in pixels (even)")
    p.add_argument("--shading", default="auto", choices=("auto", "pixel", "vertex"),
                   help="auto: per vertex below 384 px (triangles cover a few pixels), else per pixel; pixel: "
                        "pyrender's fragment shader; vertex: the same lighting per vertex, interpolated")
    p.add_argument("--lod", default="auto",
                   help="body mesh level of detail: auto (full mesh from 384 px; below, 3,500 faces at 128 px scaled "
                        "with the pixel area, at least 1,500), full, or a target face count (>= 500)")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate for time-rule clips (TMR annotations); default: the clip's (20). "
                        "HumanML3D-rule clips are fixed at 20")
    p.add_argument("--split", default=None, help="train | val | test | any split-file name (default: all)")
    p.add_argument("--limit", type=int, default=None, help="render at most N clips (after --keyids, before --part)")
    p.add_argument("--keyids", default=None, help="file with one keyid per line: render only these")
    p.add_argument("--mirror", action="store_true", help="also render an M<keyid> mirrored copy of every clip")
    p.add_argument("--no-mirrored", action="store_true", help="leave out the dataset's own mirrored clips")
    p.add_argument("--length-filter", choices=("auto", "on", "off"), default="auto",
                   help="HumanML3D's / TMR's motion-length rules (docs/data.md): auto (default) = on for HumanML3D, "
                        "KIT-ML and BABEL sources, off otherwise (the synthetic corpus, one's own data)")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default="auto",
                   help="which dataset the annotations are, for --length-filter auto and KIT-ML's 24-row minimum: "
                        "auto (default) = from the directory name (HumanML3D, KIT-ML, BABEL), else other")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own EGL context")
    p.add_argument("--egl-devices", "--egl-device", default=None,
                   help="comma-separated EGL device ids handed to workers round-robin (several GPUs); default: "
                        "the GPUs in CUDA_VISIBLE_DEVICES / SLURM_STEP_GPUS / SLURM_JOB_GPUS mapped to their EGL "
                        "devices, else EGL's default device (docs/rendering.md, 'Which GPU')")
    p.add_argument("--part", default=None, help="K/N: render only the K-th of N deterministic parts (default inside "
                   "a Slurm job array: from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--overwrite", action="store_true", help="re-render clips whose outputs exist")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-clip avatar and light choice")
    p.add_argument("--crf", type=int, default=18, help="x264 constant rate factor (lower = better quality)")
    p.add_argument("--preset", default="veryfast", help="x264 preset")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def select_clips(args: argparse.Namespace) -> tuple[list[Clip], dict, dict]:
    """The clips to consider, the annotation load report, and notes on the selection: ``keyids_file``
    (what ``--keyids`` did: ``{"path", "invalid": {"line N": reason}, "missing": [...]}``) and
    ``mirror_skipped`` ({keyid: reason} of ``--mirror`` copies left out).
    Every clip's keyid was checked when the clip was made (:class:`lavimo.dataset.clip.Clip`)."""
    from lavimo.dataset.annotations import LENGTH_FILTER_MODES, load_clips

    try:
        clips = load_clips(args.annotations, None, split=args.split, mirrored=not args.no_mirrored,
                           length_filter=LENGTH_FILTER_MODES[args.length_filter], dataset=args.dataset)
    except BadInputError as e:
        raise SetupError(f"--annotations: {e}") from e
    except OSError as e:
        raise SetupError(f"--annotations: cannot read {args.annotations} ({e.strerror or e})") from e
    rep = getattr(clips, "report", None)
    report = dict(rep.to_dict(), summary=rep.summary()) if rep is not None else {}
    clips = list(clips)
    if args.fps is not None:
        if args.fps <= 0:
            raise SetupError("--fps must be positive")
        out = []
        for c in clips:
            if c.frame_spec.rule == "time":
                c = replace(c, frame_spec=replace(c.frame_spec, fps=args.fps), fps=args.fps)
            elif abs(args.fps - c.fps) > 1e-9:
                raise SetupError(f"--fps {args.fps:g}: clip {c.keyid} follows the HumanML3D frame rule, "
                                 f"fixed at {c.fps:g} fps (its motion features are at that rate); drop --fps")
            out.append(c)
        clips = out
    notes: dict = {}
    if args.mirror:
        notes["mirror_skipped"] = {}
        clips = add_mirrored(clips, notes["mirror_skipped"])
    if args.keyids:
        wanted, invalid = read_keyids(args.keyids)
        if invalid:
            first = next(iter(invalid.items()))
            log.warning("%d line(s) of %s are not valid keyids and are ignored (first: %s: %s)", len(invalid),
                        args.keyids, *first)
        by = {c.keyid: c for c in clips}
        missing = [k for k in dict.fromkeys(wanted) if k not in by]
        if missing:
            log.warning("%d keyid(s) from %s are not among the clips (first: %s)", len(missing), args.keyids,
                        ", ".join(missing[:5]))
        clips = [by[k] for k in dict.fromkeys(wanted) if k in by]
        notes["keyids_file"] = {"path": args.keyids, "invalid": invalid, "missing": missing}
    if args.limit is not None:
        clips = clips[: max(0, args.limit)]
    return select_part(clips, parse_part(args.part)), report, notes


def _fast_ffmpeg_spawn() -> None:
    """Let imageio-ffmpeg start ffmpeg without its ``preexec_fn=os.setpgrp`` (which forces a full ``fork`` of
    this large process, ~25 ms CPU and ~80 ms wall per clip, instead of ``vfork``, ~1.5 ms / ~9 ms). The
    price: Ctrl-C also reaches ffmpeg, which only loses the clips in flight (as an interrupt does anyway).
    A user-set ``IMAGEIO_FFMPEG_NO_PREVENT_SIGINT`` is respected."""
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


def stop_signals() -> StopSignals:
    """The command's SIGINT / SIGTERM handler: rendering stops after the current frame and the report is still
    written; a second signal ends the process at once (``os._exit(1)``, no report; the workers follow, and the
    next run removes the temporary files). The handler only records the signal: it never raises, so a signal
    can never unwind the main thread out of native code (EGL, torch, ffmpeg pipes)."""
    return StopSignals(prog=PROG, on_first="stopping after the current frame (the report is written; send it "
                       "again to quit at once)", on_repeat="exit")


def _worker_main(idx: int, clips: list[Clip], cfg, egl_device: str | None, lp_threads: int, events,
                 parent_conn=None) -> None:
    """Worker process (a :class:`lavimo.core.workers.WorkerProcesses` target): own EGL context, renders its clips,
    reports ``("result", ClipResult)`` / ``("frames", n)`` through ``events``.

    ``LP_NUM_THREADS`` (llvmpipe's rasteriser threads) is set to ``lp_threads`` before the EGL context is
    created, unless the user set it. A renderer that cannot start is reported as ``("setup", idx, message)``,
    a :class:`lavimo.render.pipeline.FatalRenderError` as ``("fatal", idx, message)``. The worker dies with the
    parent (:func:`lavimo.core.workers.worker_setup`); SIGINT / SIGTERM make it stop after the current frame and
    report what it finished.
    """
    stop = StopSignals().install()
    worker_setup(parent_conn)
    if egl_device is not None:
        os.environ["EGL_DEVICE_ID"] = str(egl_device)
    # llvmpipe (CPU rendering) uses every core per context by default: share them between the workers.
    os.environ.setdefault("LP_NUM_THREADS", str(lp_threads))
    os.environ["PYOPENGL_PLATFORM"] = "egl"
    _fast_ffmpeg_spawn()
    logging.basicConfig(level=logging.WARNING, format=f"[worker {idx}] %(levelname)s %(name)s: %(message)s")
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001
        pass
    from lavimo.render.pipeline import FatalRenderError, render_clips
    from lavimo.render.scene import RendererSetupError, SceneRenderer

    if stop():
        events.put(("exit", idx))
        return
    try:
        renderer = SceneRenderer(cfg.size)
    except RendererSetupError as e:
        events.put(("setup", idx, str(e)))
        events.put(("exit", idx))
        return
    try:
        render_clips(clips, cfg, renderer=renderer, on_result=lambda r: events.put(("result", r)),
                     on_frames=lambda n: events.put(("frames", n)), stop=stop)
    except FatalRenderError as e:
        events.put(("fatal", idx, str(e)))
    except Exception as e:  # noqa: BLE001 - reported by the parent as failures of the remaining clips
        events.put(("crash", idx, f"{type(e).__name__}: {e}"))
    finally:
        renderer.close()
    events.put(("exit", idx))


#: seconds the workers get to finish their current frame after a stop (interrupt, fatal error) before a kill
STOP_GRACE_S = 15.0


def _render_in_workers(clips: list[Clip], cfg, workers: int, devices: list[str] | None,
                       on_result: Callable, on_frames: Callable[[int], None], stop: StopSignals) -> str | None:
    """Render ``clips`` round-robin over ``workers`` processes; returns the first fatal / set-up message of a
    worker (the others are then stopped), else None. Clips a crashed worker never reported fail; clips left
    by a stop get no result (the caller lists them as not attempted)."""
    from lavimo.render.pipeline import ClipResult

    # Round-robin assignment over keyid order balances long and short clips on average.
    shares = [clips[i::workers] for i in range(workers)]
    lp = max(1, (os.cpu_count() or 1) // workers)
    jobs = [(share, cfg, devices[i % len(devices)] if devices else None, lp) for i, share in enumerate(shares)]
    fatal: str | None = None
    reported: set[str] = set()

    def on_event(ev: tuple) -> None:
        nonlocal fatal
        if ev[0] == "result":
            reported.add(ev[1].keyid)
            on_result(ev[1])
        elif ev[0] == "frames":
            on_frames(ev[1])
        elif ev[0] == "crash":
            log.error("worker %d stopped: %s", ev[1], ev[2])
        elif ev[0] in ("setup", "fatal"):
            fatal = fatal or ev[2]

    procs = WorkerProcesses(_worker_main, jobs, WORKER_PRELOAD, grace_s=STOP_GRACE_S)
    if not procs.run(on_event, lambda: stop() or fatal is not None):
        for i, share in enumerate(shares):  # clips a crashed worker never reported
            for c in share:
                if c.keyid not in reported:
                    on_result(ClipResult(c.keyid, "failed", f"worker {i} stopped before rendering it"))
    return fatal


def resolve_asset_paths(avatars: str | None, lights_file: str | None) -> tuple[str | None, str | None]:
    """``--avatars`` may name the avatar specs directory itself (``assets/avatars``) or an assets root holding
    ``avatars/*.json`` and ``lights.json`` (``assets/``, as the paper's command line writes it). For a root, the
    specs are ``ROOT/avatars`` and, unless ``--lights-file`` is given, the lights are ``ROOT/lights.json``.
    Returns the (avatars directory, lights file) to load; None keeps the installed defaults."""
    if avatars is None:
        return None, lights_file
    root = Path(avatars)
    if root.is_dir() and (root / "avatars").is_dir() and any((root / "avatars").glob("*.json")):
        if lights_file is None and (root / "lights.json").is_file():
            lights_file = str(root / "lights.json")
        return str(root / "avatars"), lights_file
    return avatars, lights_file


def _report_name(part: tuple[int, int] | None) -> str:
    return "render-report.json" if part is None else f"render-report-part-{part[0]}-of-{part[1]}.json"


def run(args: argparse.Namespace, stop: StopSignals | None = None) -> int:
    """The whole command after argument parsing; returns the exit status (see the module docstring).
    Raises SetupError for set-up problems found before rendering starts."""
    from lavimo.render.avatars import load_avatars
    from lavimo.render.lights import load_lights
    from lavimo.render.lod import parse_lod

    stop = stop or StopSignals()
    if args.size < 16 or args.size % 2:
        raise SetupError(f"--size must be an even number >= 16, got {args.size}")
    if args.workers < 1:
        raise SetupError("--workers must be >= 1")
    egl = choose_egl_devices(args.egl_devices, os.environ)  # the GPU(s) the job was given, or --egl-devices
    args.egl_devices = ",".join(egl.devices) if egl.devices else None
    log.info("EGL device(s) %s: %s", args.egl_devices or "default", egl.source)
    part = parse_part(args.part)
    try:
        lod = parse_lod(args.lod)
    except ValueError as e:
        raise SetupError(str(e)) from e
    if not Path(args.amass).is_dir():
        raise SetupError(f"--amass {args.amass} is not a directory (the AMASS root holding KIT/, CMU/, ...)")
    if args.body_models is not None and not Path(args.body_models).is_dir():
        raise SetupError(f"--body-models {args.body_models} is not a directory (smplx's layout, e.g. "
                         f"DIR/smplh/SMPLH_NEUTRAL.npz); omit --body-models to use the procedural body")
    args.avatars, args.lights_file = resolve_asset_paths(args.avatars, args.lights_file)
    try:
        avatars = load_avatars(args.avatars)
    except BadInputError as e:  # names the file and the field
        raise SetupError(f"{e}; fix or remove the file (see the README for the spec format)") from e
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise SetupError(f"--avatars {args.avatars or 'assets/avatars'}: unusable avatar spec "
                         f"({type(e).__name__}: {e}); fix or remove it (see the README)") from e
    try:
        lights = load_lights(args.lights_file)
    except BadInputError as e:
        raise SetupError(f"{e}; fix the file (see the README for the format)") from e
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise SetupError(f"--lights-file {args.lights_file or 'assets/lights.json'}: unusable lighting setups "
                         f"({type(e).__name__}: {e}); fix the file (see the README)") from e
    if not 1 <= args.lights <= len(lights):
        raise SetupError(f"--lights must be between 1 and {len(lights)}")
    out = Path(args.out)
    check_output_dir(out)
    workers = args.workers
    renderer = None
    _fast_ffmpeg_spawn()
    if workers == 1:  # the run's own renderer doubles as the EGL probe
        from lavimo.render.scene import RendererSetupError, SceneRenderer

        if args.egl_devices:
            os.environ["EGL_DEVICE_ID"] = args.egl_devices.split(",")[0].strip()
        try:
            renderer = SceneRenderer(args.size)
        except RendererSetupError as e:
            raise SetupError(str(e)) from e
    else:  # each worker creates its own context and reports a set-up error as ("setup", i, message)
        fork_server_context(WORKER_PRELOAD, start=True)
    try:
        return _run_clips(args, stop, part, lod, avatars, out, renderer)
    finally:
        if renderer is not None:
            renderer.close()
        if workers > 1:
            stop_fork_server()


class _Progress:
    """The clips' results as they come, and the progress bar (clips done, frames/s)."""

    def __init__(self, total: int):
        self.results: dict = {}
        self.frames = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, unit="clip", desc=PROG, disable=None)

    def on_result(self, r) -> None:
        self.results[r.keyid] = r
        self.bar.update(1)

    def on_frames(self, n: int) -> None:
        self.frames += n
        self.bar.set_postfix_str(f"{self.frames / max(time.perf_counter() - self.t0, 1e-9):.1f} frames/s",
                                 refresh=False)


def _run_clips(args: argparse.Namespace, stop: StopSignals, part, lod, avatars, out: Path, renderer) -> int:
    """Select the clips, remove stale temporary files, render (here or in workers), write the report; returns
    the exit status. The clips' keyids were checked when the clips were made (:class:`lavimo.dataset.clip.Clip`,
    :func:`read_keyids`) and are trusted from here on; outputs are joined with ``child_path``."""
    from lavimo.render.pipeline import RenderConfig

    clips, ann_report, notes = select_clips(args)
    report_name = _report_name(part)
    finals = {report_name} | {f"{c.keyid}.{ext}" for c in clips for ext in ("mp4", "json")}
    removed, left = remove_stale_temps(out, finals)
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted run", removed, out)
    if left:
        log.info("left %d temporary file(s) of other clips in %s (another --part may be writing them)", left, out)
    cfg = RenderConfig(amass_root=str(args.amass), out_dir=str(out), avatars_dir=args.avatars,
                       lights_path=args.lights_file, num_lights=args.lights, size=args.size, seed=args.seed,
                       body_models=args.body_models, overwrite=args.overwrite, crf=args.crf, preset=args.preset,
                       lod=lod, shading=args.shading)
    log.info("%d clips to consider, %d avatars, lights 1..%d, %dx%d, %d worker(s)%s", len(clips), len(avatars),
             args.lights, args.size, args.size, args.workers, f", part {part[0]}/{part[1]}" if part else "")
    progress = _Progress(len(clips))
    workers = min(args.workers, max(1, len(clips)))
    try:
        fatal = _render(clips, cfg, workers, args.egl_devices, renderer, stop, progress)
    finally:
        progress.bar.close()
    elapsed = time.perf_counter() - progress.t0
    interrupted = stop.decide()  # the report and the exit status both say this, whatever signal comes later
    report = _report(progress.results, clips, elapsed, part, workers, removed, interrupted, fatal, notes, ann_report)
    report["egl_devices"] = args.egl_devices  # the EGL device(s) rendered on (None: EGL's default)
    return _finish(out / report_name, report, elapsed, fatal, interrupted)


def _render(clips: list[Clip], cfg, workers: int, egl_devices: str | None, renderer, stop: StopSignals,
            progress: _Progress) -> str | None:
    """Render ``clips`` with the run's own ``renderer``, else in ``workers`` processes; returns the message of a
    fatal error (:class:`lavimo.render.pipeline.FatalRenderError`, a worker's set-up error) or None."""
    from lavimo.render.pipeline import FatalRenderError, render_clips

    if not clips or stop():
        return None
    if renderer is None:
        devices = [d.strip() for d in egl_devices.split(",")] if egl_devices else None
        return _render_in_workers(clips, cfg, workers, devices, progress.on_result, progress.on_frames, stop)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # posing shares the CPU with rasterisation and encoding
    try:
        render_clips(clips, cfg, renderer=renderer, on_result=progress.on_result, on_frames=progress.on_frames,
                     stop=stop)
    except FatalRenderError as e:
        return str(e)
    finally:
        torch.set_num_threads(threads)
    return None


def _report(results: dict, clips: list[Clip], elapsed: float, part, workers: int, removed: int,
            interrupted: str | None, fatal: str | None, notes: dict, ann_report: dict) -> dict:
    """The run's report (``render-report.json``; docs/rendering.md lists its fields)."""
    rendered = [r for r in results.values() if r.status == "rendered"]
    skipped = [r for r in results.values() if r.status == "skipped"]
    failed = {r.keyid: r.reason for r in results.values() if r.status == "failed"}
    not_attempted = [c.keyid for c in clips if c.keyid not in results]
    n_frames = sum(r.frames for r in rendered)
    return {
        "rendered": len(rendered),
        "skipped": len(skipped),
        "failed": dict(sorted(failed.items())),
        "num_failed": len(failed),
        "clips": len(clips),
        "frames_rendered": n_frames,
        "seconds": round(elapsed, 3),
        "frames_per_second": round(n_frames / elapsed, 2) if elapsed > 0 else None,
        "part": f"{part[0]}/{part[1]}" if part else None,
        "workers": workers,
        "rerendered": {r.keyid: r.reason[len("re-rendered: "):] for r in rendered
                       if r.reason.startswith("re-rendered: ")},
        "skipped_unverified": sum(1 for r in skipped if "legacy" in r.reason),
        "temp_files_removed": removed,
        "interrupted": interrupted,
        "error": fatal,
        "not_attempted": not_attempted,
        "num_not_attempted": len(not_attempted),
        "keyids_file": notes.get("keyids_file"),
        "mirror_skipped": notes.get("mirror_skipped") or {},
        "annotations": ann_report.get("summary"),
        "annotation_report": ann_report,
    }


def _finish(report_path: Path, report: dict, elapsed: float, fatal: str | None, interrupted: str | None) -> int:
    """Write the report, print the summary (and the first 20 failures); returns the exit status."""
    try:
        write_json(report_path, report)
    except OSError as e:
        return print_error(PROG, f"cannot write the report ({os_error_text(e, report_path)})"
                           + (f"; also: {fatal}" if fatal else ""))
    failed = report["failed"]
    print(f"{PROG}: rendered {report['rendered']}, skipped {report['skipped']}, failed {len(failed)} "
          f"({report['frames_rendered']} frames in {elapsed:.1f} s, "
          f"{report['frames_per_second']} frames/s); report: {report_path}")
    for k, reason in list(failed.items())[:20]:
        print(f"  failed {k}: {reason}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (see the report)")
    if fatal is not None:
        return print_error(PROG, fatal)
    if interrupted is not None:
        print(f"{PROG}: interrupted by {interrupted}: {report['num_not_attempted']} clip(s) not attempted "
              f"(run the same command again to finish them)", file=sys.stderr)
        return 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """The command; ``argv`` None means this is the process's own command line (``render-amass``, ``python -m
    lavimo.render.cli``): SIGINT / SIGTERM are then ignored once the run has ended, until the process exits."""
    command = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge-reports"]:  # render-amass merge-reports OUT: one report from the parts' reports
        from lavimo.render.report_merge import main as merge_main

        return merge_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from lavimo.core.slurm import SlurmEnvError, part_argument

    try:  # no --part inside a Slurm job array: the task's part (core/slurm.py)
        args.part = part_argument(args.part)
    except SlurmEnvError as e:
        return print_error(PROG, e)
    stop = stop_signals()
    with stop.installed(then_ignore=command):
        try:
            return run(args, stop)
        except SetupError as e:
            return print_error(PROG, e)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 1
        except OSError as e:
            return print_error(PROG, os_error_text(e))
        except Exception as e:  # noqa: BLE001 - one line, never a traceback (-v logs it)
            log.debug("unexpected error", exc_info=True)
            return print_error(PROG, f"{type(e).__name__}: {e} (rerun with -v for details)")


if __name__ == "__main__":
    sys.exit(main())

"""``render-amass``: render AMASS motions of annotated clips into frame-aligned mp4 videos.

    render-amass --amass ROOT --annotations SRC --out DIR [--avatars assets/avatars] [--lights 4]
                 [--body-models DIR] [--size 512] [--fps F] [--split S] [--limit N] [--keyids FILE]
                 [--mirror] [--workers N] [--part K/N] [--overwrite] [--seed 0] [--lod auto|full|N]
                 [--shading auto|pixel|vertex]

See the README. Exit status: 0 all clips rendered or skipped, 1 some clip failed (after
finishing the others), 2 set-up error (bad arguments, no EGL, avatars/lights/output unusable).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from tqdm import tqdm  # noqa: E402

from dataset.atomic import write_json  # noqa: E402
from dataset.clip import Clip  # noqa: E402
from dataset.errors import BadInputError  # noqa: E402

log = logging.getLogger("render-amass")


class SetupError(RuntimeError):
    """A problem that stops the whole run (message says what to fix)."""


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise SetupError(f"--part expects K/N (e.g. 1/4), got {text!r}") from e
    if not (1 <= k <= n):
        raise SetupError(f"--part K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def select_part(clips: list[Clip], part: tuple[int, int] | None) -> list[Clip]:
    """Deterministic split: clips sorted by keyid, every N-th starting at K-1 (parts are disjoint, cover all)."""
    if part is None:
        return list(clips)
    k, n = part
    ordered = sorted(clips, key=lambda c: c.keyid)
    return ordered[k - 1::n]


def add_mirrored(clips: list[Clip]) -> list[Clip]:
    """``--mirror``: add an ``M<keyid>`` mirrored copy of every clip that has none."""
    have = {c.keyid for c in clips}
    extra = [replace(c, keyid="M" + c.keyid, mirrored=True) for c in clips
             if not c.mirrored and "M" + c.keyid not in have]
    return list(clips) + extra


def read_keyids(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise SetupError(f"--keyids: cannot read {path} ({e})") from e


def check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SetupError(f"output directory {out} is not writable ({e}); pass a writable --out") from e


#: modules the worker processes need, imported once by the forkserver process the workers are forked from
#: (instead of once per spawned worker: torch and pyrender alone take ~5 s of CPU to import). Importing them
#: creates no EGL context and runs no torch kernels, so forking after it is safe.
WORKER_PRELOAD = ["torch", "smplx", "scipy.sparse", "scipy.ndimage", "pyrender", "render.pipeline", "render.body",
                  "render.scene", "render.trajectory"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="render-amass", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--amass", required=True, help="AMASS root directory (holding KIT/, CMU/, ...)")
    p.add_argument("--annotations", required=True,
                   help="HumanML3D directory (index.csv, texts/, splits) or TMR-style annotations.json")
    p.add_argument("--out", required=True, help="output directory for <keyid>.mp4 / <keyid>.json / the report")
    p.add_argument("--avatars", default=None, help="directory of avatar specs *.json (default: assets/avatars)")
    p.add_argument("--lights", type=int, default=4, help="draw each clip's lighting setup from the first N")
    p.add_argument("--lights-file", default=None, help="lighting setups JSON (default: assets/lights.json)")
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
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own EGL context")
    p.add_argument("--egl-devices", default=None,
                   help="comma-separated EGL device ids handed to workers round-robin (several GPUs)")
    p.add_argument("--part", default=None, help="K/N: render only the K-th of N deterministic parts")
    p.add_argument("--overwrite", action="store_true", help="re-render clips whose outputs exist")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-clip avatar and light choice")
    p.add_argument("--crf", type=int, default=18, help="x264 constant rate factor (lower = better quality)")
    p.add_argument("--preset", default="veryfast", help="x264 preset")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def select_clips(args: argparse.Namespace) -> tuple[list[Clip], dict]:
    from dataset.annotations import load_clips

    try:
        clips = load_clips(args.annotations, None, split=args.split, mirrored=not args.no_mirrored)
    except BadInputError as e:
        raise SetupError(f"--annotations: {e}") from e
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
                raise SetupError(f"--fps {args.fps:g}: clip {c.keyid} follows the HumanML3D frame rule, fixed at "
                                 f"{c.fps:g} fps (its motion features are at that rate); drop --fps")
            out.append(c)
        clips = out
    if args.mirror:
        clips = add_mirrored(clips)
    if args.keyids:
        wanted = read_keyids(args.keyids)
        by = {c.keyid: c for c in clips}
        missing = [k for k in wanted if k not in by]
        if missing:
            log.warning("%d keyid(s) from %s are not among the clips (first: %s)", len(missing), args.keyids,
                        ", ".join(missing[:5]))
        clips = [by[k] for k in dict.fromkeys(wanted) if k in by]
    if args.limit is not None:
        clips = clips[: max(0, args.limit)]
    return select_part(clips, parse_part(args.part)), report


def _fast_ffmpeg_spawn() -> None:
    """Let imageio-ffmpeg start ffmpeg without its ``preexec_fn=os.setpgrp`` (which forces a full ``fork`` of
    this large process, ~25 ms CPU and ~80 ms wall per clip, instead of ``vfork``, ~1.5 ms / ~9 ms). The
    price: Ctrl-C also reaches ffmpeg, which only loses the clips in flight (as an interrupt does anyway).
    A user-set ``IMAGEIO_FFMPEG_NO_PREVENT_SIGINT`` is respected."""
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


def _worker_main(idx: int, clips: list[Clip], cfg, egl_device: str | None, events, lp_threads: int) -> None:
    """Worker process: own EGL context, renders its clips, reports results/frames through ``events``.

    ``LP_NUM_THREADS`` (llvmpipe's rasteriser threads) is set to ``lp_threads`` before the EGL context is
    created, unless the user set it. A renderer that cannot start is reported as ``("setup", idx, message)``.
    """
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
    from render.pipeline import render_clips
    from render.scene import RendererSetupError, SceneRenderer

    try:
        renderer = SceneRenderer(cfg.size)
    except RendererSetupError as e:
        events.put(("setup", idx, str(e)))
        events.put(("exit", idx))
        return
    try:
        render_clips(clips, cfg, renderer=renderer, on_result=lambda r: events.put(("result", r)),
                     on_frames=lambda n: events.put(("frames", n)))
    except Exception as e:  # noqa: BLE001 - reported by the parent as failures of the remaining clips
        events.put(("crash", idx, f"{type(e).__name__}: {e}"))
    finally:
        renderer.close()
    events.put(("exit", idx))


def _worker_context(start: bool = False):
    """multiprocessing context for the workers: forkserver (modules preloaded once) where available, else spawn.
    ``start``: start the fork server now, so its imports overlap the parent's own set-up."""
    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # no fork on this platform
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    if start:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    return ctx


def _stop_fork_server() -> None:
    """Stop (and reap) the fork server after the workers ended, so no idle process holding torch stays around
    and its CPU time (the workers' included) is accounted to this process's children."""
    try:
        from multiprocessing import forkserver

        forkserver._forkserver._stop()  # private in CPython 3.8-3.13; harmless to skip
    except Exception:  # noqa: BLE001
        log.debug("could not stop the fork server", exc_info=True)


def run(args: argparse.Namespace) -> int:
    from render.avatars import load_avatars
    from render.lights import load_lights
    from render.lod import parse_lod
    from render.pipeline import ClipResult, RenderConfig, render_clips

    if args.size < 16 or args.size % 2:
        raise SetupError(f"--size must be an even number >= 16, got {args.size}")
    if args.workers < 1:
        raise SetupError("--workers must be >= 1")
    part = parse_part(args.part)
    try:
        lod = parse_lod(args.lod)
    except ValueError as e:
        raise SetupError(str(e)) from e
    if not Path(args.amass).is_dir():
        raise SetupError(f"--amass {args.amass} is not a directory (the AMASS root holding KIT/, CMU/, ...)")
    try:
        avatars = load_avatars(args.avatars)
        lights = load_lights(args.lights_file)
    except BadInputError as e:
        raise SetupError(f"{e}\n  fix or remove the file (see the README for the spec format)") from e
    if not 1 <= args.lights <= len(lights):
        raise SetupError(f"--lights must be between 1 and {len(lights)}")
    out = Path(args.out)
    check_output_dir(out)
    workers = args.workers
    renderer = None
    _fast_ffmpeg_spawn()
    if workers == 1:  # the run's own renderer doubles as the EGL probe
        from render.scene import RendererSetupError, SceneRenderer

        if args.egl_devices:
            os.environ["EGL_DEVICE_ID"] = args.egl_devices.split(",")[0].strip()
        try:
            renderer = SceneRenderer(args.size)
        except RendererSetupError as e:
            raise SetupError(str(e)) from e
    else:  # each worker creates its own context and reports a set-up error as ("setup", i, message)
        _worker_context(start=True)
    clips, ann_report = select_clips(args)
    cfg = RenderConfig(amass_root=str(args.amass), out_dir=str(out), avatars_dir=args.avatars,
                       lights_path=args.lights_file, num_lights=args.lights, size=args.size, seed=args.seed,
                       body_models=args.body_models, overwrite=args.overwrite, crf=args.crf, preset=args.preset,
                       lod=lod, shading=args.shading)
    log.info("%d clips to consider, %d avatars, lights 1..%d, %dx%d, %d worker(s)%s", len(clips), len(avatars),
             args.lights, args.size, args.size, args.workers, f", part {part[0]}/{part[1]}" if part else "")

    results: dict[str, ClipResult] = {}
    frames_done = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(clips), unit="clip", desc="render-amass", disable=None)

    def on_result(r: ClipResult) -> None:
        results[r.keyid] = r
        bar.update(1)

    def on_frames(n: int) -> None:
        nonlocal frames_done
        frames_done += n
        bar.set_postfix_str(f"{frames_done / max(time.perf_counter() - t0, 1e-9):.1f} frames/s", refresh=False)

    workers = min(workers, max(1, len(clips)))
    devices = [d.strip() for d in args.egl_devices.split(",")] if args.egl_devices else None
    if renderer is not None:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # posing shares the CPU with rasterisation and encoding
        try:
            render_clips(clips, cfg, renderer=renderer, on_result=on_result, on_frames=on_frames)
        finally:
            renderer.close()
            torch.set_num_threads(threads)
    else:
        ctx = _worker_context()
        events = ctx.Queue()
        # Round-robin assignment over keyid order balances long and short clips on average.
        shares = [clips[i::workers] for i in range(workers)]
        procs = []
        for i, share in enumerate(shares):
            dev = devices[i % len(devices)] if devices else None
            lp = max(1, (os.cpu_count() or 1) // workers)
            pr = ctx.Process(target=_worker_main, args=(i, share, cfg, dev, events, lp), daemon=True)
            pr.start()
            procs.append(pr)
        alive = set(range(workers))
        while alive:
            try:
                ev = events.get(timeout=1.0)
            except Exception:  # noqa: BLE001 - queue.Empty
                for i in list(alive):
                    if not procs[i].is_alive() and procs[i].exitcode not in (0, None):
                        log.error("worker %d died (exit code %s)", i, procs[i].exitcode)
                        alive.discard(i)
                continue
            if ev[0] == "result":
                on_result(ev[1])
            elif ev[0] == "frames":
                on_frames(ev[1])
            elif ev[0] == "crash":
                log.error("worker %d stopped: %s", ev[1], ev[2])
            elif ev[0] == "setup":
                for pr in procs:
                    pr.terminate()
                    pr.join(timeout=10)
                _stop_fork_server()
                bar.close()
                raise SetupError(ev[2])
            elif ev[0] == "exit":
                alive.discard(ev[1])
        for pr in procs:
            pr.join(timeout=10)
        _stop_fork_server()
        for i, share in enumerate(shares):  # clips a crashed worker never reported
            for c in share:
                if c.keyid not in results:
                    on_result(ClipResult(c.keyid, "failed", f"worker {i} stopped before rendering it"))
    bar.close()
    elapsed = time.perf_counter() - t0
    rendered = [r for r in results.values() if r.status == "rendered"]
    skipped = [r for r in results.values() if r.status == "skipped"]
    failed = {r.keyid: r.reason for r in results.values() if r.status == "failed"}
    n_frames = sum(r.frames for r in rendered)
    report = {
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
        "annotations": ann_report.get("summary"),
        "annotation_report": ann_report,
    }
    name = "render-report.json" if part is None else f"render-report-part-{part[0]}-of-{part[1]}.json"
    write_json(out / name, report)
    print(f"render-amass: rendered {len(rendered)}, skipped {len(skipped)}, failed {len(failed)} "
          f"({n_frames} frames in {elapsed:.1f} s, {report['frames_per_second']} frames/s); report: {out / name}")
    for k, reason in list(sorted(failed.items()))[:20]:
        print(f"  failed {k}: {reason}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (see the report)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except SetupError as e:
        print(f"render-amass: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

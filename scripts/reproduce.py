#!/usr/bin/env python
"""One command from raw data to the paper's tables: render -> shards -> every row -> tables.

    python scripts/reproduce.py --amass AMASS --annotations ANN --out OUT (--body-models DIR | --procedural-body)
        [--weights DIR | --random-init] [--text-model DIR | --any-text-model] [--tables all] [--rows tmr,ours,...] [--preset paper] [--epochs N]
        [--set FIELD=VALUE ...] [--size 512] [--fps N] [--workers N] [--device D] [--slurm] [--dry-run]

Stages (local): ``render`` (render-amass -> OUT/videos), ``shards`` (build-shards -> OUT/shards), ``rows``
(scripts/paper_ablations.py train -> OUT/runs/<run>) and ``tables`` (paper_ablations.py table ->
OUT/runs/tables/paper_tables.{md,tex,json,png}, printed). A stage that succeeded leaves OUT/.done-<stage> holding
its command; a rerun skips a stage whose stamp holds the same command, and redoes every stage after one that ran.
Each stage resumes by itself as well (finished clips, kept shards, complete rows). ``--slurm``: the same stages as
Slurm jobs chained by dependencies (scripts/slurm/render_array.sbatch, build_shards.sbatch + its merge, one array
task per run with paper_rows.sbatch, then the tables); stamped stages are not submitted.

Before any work it prints what the run will cost: clips, frames, disk and hours, from the rates measured in
docs/benchmarks.md (:data:`RATES`). Exit status: 0 done (or submitted); 1 a stage failed or interrupted (rerun to
continue; also when render or shards failed some clips: the others went on); 2 set-up error: one line naming
what is missing (a path, the body models, pretrained weights, a local copy of the preset's sentence model).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("lavimo") is None:  # the checkout is the package: installed, not put on sys.path
    print("lavimo is not installed: run `pip install -e .` in the checkout (or make venv)", file=sys.stderr)
    sys.exit(2)

from lavimo.core.errors import BadInputError, SetupError, print_error  # noqa: E402
from lavimo.core.process import run_stoppable  # noqa: E402
from lavimo.core.stop import StopSignals  # noqa: E402

PROG = "reproduce.py"
RUNNER = REPO / "scripts" / "paper_ablations.py"
SLURM = REPO / "scripts" / "slurm"
STAGES = ("render", "shards", "rows", "tables")
#: The project's measured rates, the cost estimate's only source: docs/benchmarks.md (2026-11-23, a shared 2-core
#: CPU without a GPU; no GPU rate is recorded yet, so on a GPU machine the hours are an upper bound).
RATES = {
    "render_fps_small": 148.0,  # "Rendering": render-amass frames/s at 112 px, 1 worker
    "render_fps_large": 16.2,  # "Rendering": the pipeline at 512 px (the lower of two runs), 1 worker
    "shard_clips_per_s": 2.07,  # "Shard build": build_shards, 2 workers
    "train_samples_per_s": 27.6,  # "Training": demo preset, CPU fp32, real shards through the loader
    "mp4_bytes_per_frame": 276e3 / 105,  # "Loader and video format": a 512x512 mp4 of 105 frames, 276 kB
    "shard_bytes_per_frame": 1025e3 / 105,  # same: its whole sample (video.jpgs at 256 px), 1025 kB
}
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2


def _runner():
    spec = importlib.util.spec_from_file_location("paper_ablations", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("paper_ablations", mod)  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return sys.modules["paper_ablations"]


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse (SetupError, one line) when a path, the body models or the weights directory is missing."""
    for flag, path, kind in (("--amass", args.amass, "directory"), ("--annotations", args.annotations, "path"),
                             ("--weights", args.weights, "directory"), ("--body-models", args.body_models,
                                                                        "directory"),
                             ("--text-model", args.text_model, "directory")):
        if path is not None and not (Path(path).is_dir() if kind == "directory" else Path(path).exists()):
            raise SetupError(f"{flag} {path}: no such {kind}")
    if args.body_models is None and not args.procedural_body:
        raise SetupError("missing --body-models DIR (SMPL-H in smplx's layout: DIR/smplh/SMPLH_MALE.npz and "
                         "SMPLH_FEMALE.npz), or pass --procedural-body to pose the procedural body instead")
    if args.body_models is not None:
        from lavimo.body.model import find_model_file

        for gender in ("male", "female"):
            try:
                find_model_file(args.body_models, "smplh", gender)
            except FileNotFoundError as exc:
                raise SetupError(f"--body-models {args.body_models}: {' '.join(str(exc).split())}") from None
    if args.weights is not None:
        os.environ["LAVIMO_WEIGHTS"] = str(Path(args.weights).resolve())  # the children inherit it
        if args.text_model is None and (Path(args.weights) / "all-mpnet-base-v2").is_dir():
            args.text_model = str(Path(args.weights) / "all-mpnet-base-v2")
    if args.text_model is not None:
        args.text_model = str(Path(args.text_model).resolve())


def check_text_model(args: argparse.Namespace, cfg: Any) -> None:
    """Refuse (SetupError) when the preset's sentence model (ε is defined on its scores) has no local copy: no
    --text-model of that model and not the bundled one; ``--any-text-model`` embeds with what is given instead."""
    from lavimo.dataset.text_embed import BUNDLED_NAME, same_sentence_model

    given = args.text_model or BUNDLED_NAME
    if args.any_text_model or same_sentence_model(given, cfg.sentence_model):
        return
    raise SetupError(f"the preset's sentence model {cfg.sentence_model} (its threshold is defined on it) has no "
                     f"local copy ({'--text-model ' + args.text_model if args.text_model else 'no --text-model'}): "
                     "give --text-model DIR (or --weights DIR holding all-mpnet-base-v2/), or pass --any-text-model")


def plan_runs(args: argparse.Namespace) -> tuple[list[str], Any, list[str]]:
    """(the selected rows' runs, each once; the config of the first; the runner's flags). Refuses missing
    pretrained weights (unless --random-init) and bad flags, as the runner would."""
    pa = _runner()
    tables = pa.load_tables(pa.DATA)[0]
    selected = pa.select_rows(tables, args.tables, args.rows)
    common = [*(["--epochs", str(args.epochs)] if args.epochs is not None else []),
              *[f for s in args.set for f in ("--set", s)], *(["--random-init"] if args.random_init else [])]
    res = pa.resolve_rows(tables, str(Path(args.out) / "shards"), args.preset, common)
    runs = list(dict.fromkeys(res[r.name].run for r in selected))
    from lavimo.model.weights import missing_pretrained

    missing = sorted({m for run in runs for m in missing_pretrained(res[run].cfg.model)})
    if missing:
        raise SetupError(f"missing pretrained weights (give --weights DIR or pass --random-init): {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    check_text_model(args, res[runs[0]].cfg.model)
    return runs, res[runs[0]].cfg, ["--preset", args.preset, *common, *(["--device", args.device] if args.device
                                                                       else [])]


def cost(args: argparse.Namespace, runs: list[str], cfg: Any) -> list[str]:
    """What the run will cost, from the annotations (clips, frames) and :data:`RATES`: lines to print."""
    from lavimo.dataset.annotations import load_clips

    try:
        clips = load_clips(args.annotations, args.amass)
    except BadInputError as exc:
        raise SetupError(f"--annotations: {exc}") from None
    if not clips:
        raise SetupError(f"--annotations {args.annotations}: no clip could be loaded with --amass {args.amass}")
    frames = sum(int(round(len(c.frames) * (args.fps or c.fps) / c.fps)) for c in clips if c.frames is not None)
    n_train = sum(c.split == "train" for c in clips)
    workers, mirror = max(1, args.workers), 2 if args.slurm else 1  # render_array.sbatch passes --mirror
    render_fps = RATES["render_fps_large" if args.size >= 384 else "render_fps_small"] * workers
    scale = (args.size / 512) ** 2, (min(args.size, 256) / 256) ** 2
    video_gb = mirror * frames * RATES["mp4_bytes_per_frame"] * scale[0] / 1e9
    shard_gb = frames * RATES["shard_bytes_per_frame"] * scale[1] / 1e9
    secs = {"render": mirror * frames / render_fps, "shards": len(clips) / RATES["shard_clips_per_s"],
            "rows": len(runs) * cfg.train.epochs * n_train / RATES["train_samples_per_s"]}
    return [f"{len(clips)} clips ({n_train} train) from {args.annotations}, {frames} video frames at {args.size} px; "
            f"{len(runs)} training run(s) ({', '.join(runs)}), preset {args.preset!r}, {cfg.train.epochs} epoch(s)",
            "estimated cost: " + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in secs.items())
            + f" (total {sum(secs.values()) / 3600:.2f} h); disk: videos {video_gb:.3f} GB + shards {shard_gb:.3f} GB",
            "  (rates of docs/benchmarks.md, measured on a 2-core CPU without a GPU: render "
            f"{render_fps:g} frames/s with {workers} worker(s), {RATES['shard_clips_per_s']} clips/s, training "
            f"{RATES['train_samples_per_s']} samples/s of the demo preset; a GPU machine is faster"
            + ("; rendering counts mirrored copies, up to 2x" if args.slurm else "") + ")"]


def stage_commands(args: argparse.Namespace, flags: list[str]) -> dict[str, list[str]]:
    """Each local stage's command."""
    import lavimo.assets

    py, out = sys.executable, Path(args.out)
    body = ["--body-models", str(args.body_models)] if args.body_models else []
    selection = ["--tables", args.tables, *(["--rows", args.rows] if args.rows else [])]
    runner = [py, str(RUNNER), "--shards", str(out / "shards"), "--out", str(out / "runs"), *selection, *flags]
    return {
        "render": [py, "-m", "lavimo.render.cli", "--amass", args.amass, "--annotations", args.annotations,
                   "--avatars", str(lavimo.assets.ROOT), "--lights", "4", "--out", str(out / "videos"),
                   "--size", str(args.size), *(["--fps", str(args.fps)] if args.fps else []),
                   "--workers", str(args.workers), *body],
        "shards": [py, "-m", "lavimo.dataset.shards.cli", "--annotations", args.annotations, "--amass", args.amass,
                   "--videos", str(out / "videos"), "--out", str(out / "shards"), "--frame-size",
                   str(min(args.size, 256)), "--workers", str(args.workers), "--quiet", *body,
                   *(["--text-model", args.text_model] if args.text_model else [])],
        "rows": [*runner[:2], "train", *runner[2:]],
        "tables": [*runner[:2], "table", *runner[2:]],
    }


def _stamp_text(cmd: list[str]) -> str:
    return shlex.join(cmd[1:])  # without the interpreter's path: another venv does not redo the stages


def _run_stage(cmd: list[str], stop: StopSignals) -> int:
    """A stage's exit status. A stop signal (only recorded here) is passed on as SIGTERM and the stage is waited
    for, so it ends at its own safe point (a finished clip or shard, a checkpoint); then KeyboardInterrupt."""
    rc = run_stoppable(cmd, stop)
    if stop():
        raise KeyboardInterrupt
    return rc


def run_local(args: argparse.Namespace, cmds: dict[str, list[str]], stop: StopSignals) -> int:
    """Run the stages in order, skipping stamped ones until one runs; the tables are printed either way. Render or
    shards exiting 1 (some clips failed, the others done) is a partial success: stamped, the next stage runs, and
    the final status is 1."""
    out, ran, rc = Path(args.out), False, EXIT_OK
    reports = {"render": out / "videos" / "render-report.json", "shards": out / "shards" / ".build" / "report.json"}
    table_md = out / "runs" / "tables" / "paper_tables.md"
    for name in STAGES:
        stamp, text = out / f".done-{name}", _stamp_text(cmds[name])
        if not ran and stamp.is_file() and stamp.read_text(encoding="utf-8") == text and (
                name != "tables" or table_md.is_file()):
            print(f"== {name}: already complete (remove {stamp} to redo)", flush=True)
            if name == "tables":
                print(table_md.read_text(encoding="utf-8"), end="")
            continue
        print(f"== {name}: {shlex.join(cmds[name])}", flush=True)
        ran, stage_rc = True, _run_stage(cmds[name], stop)
        if stage_rc == EXIT_OK:
            stamp.write_text(text, encoding="utf-8")
            continue
        if stage_rc == EXIT_FAILED and name in reports:
            print(f"{PROG}: stage {name}: some clips failed (see {reports[name]}); continuing with the others",
                  file=sys.stderr, flush=True)
            stamp.write_text(text, encoding="utf-8")
            rc = EXIT_FAILED
            continue
        print(f"{PROG}: stage {name} failed (exit {stage_rc})", file=sys.stderr, flush=True)
        if stage_rc == EXIT_SETUP or name in ("render", "shards"):
            return EXIT_SETUP if stage_rc == EXIT_SETUP else EXIT_FAILED
        rc = EXIT_FAILED  # a failed row: the tables still come, marking it
    return rc


def run_slurm(args: argparse.Namespace, cmds: dict[str, list[str]], runs: list[str], flags: list[str]) -> int:
    """Submit the unstamped stages as Slurm jobs, each after the one before (sbatch --parsable)."""
    out, dep, body = Path(args.out), None, ["--body-models", str(args.body_models)] \
        if args.body_models else []

    def submit(what: str, extra: list[str], tail: list[str], exports: dict[str, str], after: str = "afterok"):
        nonlocal dep
        cmd = ["sbatch", "--parsable", *([f"--dependency={after}:{dep}"] if dep else []),
               "--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in exports.items())]), *extra, *tail]
        print(f"== {what}: {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            dep = f"<{what} job>"
        else:
            dep = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().split(";")[0]
            print(f"   job {dep}", flush=True)

    def stamped(name: str) -> bool:
        stamp = out / f".done-{name}"
        return stamp.is_file() and stamp.read_text(encoding="utf-8") == _stamp_text(cmds[name])

    data = {"AMASS": args.amass, "ANN": args.annotations}
    if not stamped("render"):
        submit("render", [f"--array=0-{args.render_tasks - 1}"], [str(SLURM / "render_array.sbatch"),
               "--size", str(args.size), *(["--fps", str(args.fps)] if args.fps else []), *body],
               {**data, "OUT": str(out / "videos")})
    if not stamped("shards"):
        shard_env = {**data, "VIDEOS": str(out / "videos"), "OUT": str(out / "shards")}
        tail = [str(SLURM / "build_shards.sbatch"), "--frame-size", str(min(args.size, 256)), *body,
                *(["--text-model", args.text_model] if args.text_model else [])]
        # afterany: a render task with failed clips exits 1; build-shards refuses missing inputs itself
        submit("shards", [f"--array=0-{args.shard_tasks - 1}"], tail, shard_env, after="afterany")
        submit("shards merge", [], tail, {**shard_env, "MERGE": "1"}, after="afterany")
    submit("rows", [f"--array=0-{len(runs) - 1}"], [str(SLURM / "paper_rows.sbatch"), *flags],
           {"RUNNER": str(RUNNER), "SHARDS": str(out / "shards"), "OUT": str(out / "runs"), "RUNS": " ".join(runs)},
           after="afterany")  # a merge with failed clips exits 1; train.py refuses missing shards itself
    submit("tables", ["--job-name=lavimo-tables", f"--output={out / 'tables-%j.out'}"],
           ["--wrap", shlex.join(cmds["tables"])], {}, after="afterany")
    print(f"{'dry run: nothing submitted' if args.dry_run else 'submitted'}; the tables will be in {out / 'runs' / 'tables'}/paper_tables.md", flush=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Raw data to the LAVIMO paper's tables: render, shards, "
                                "every row, tables (docs/paper.md, 'Reproduce').")
    p.add_argument("--amass", required=True, help="AMASS root (holding KIT/, CMU/, ...)")
    p.add_argument("--annotations", required=True, help="HumanML3D / KIT-ML directory or TMR-style annotations.json")
    p.add_argument("--out", required=True, help="output directory (videos/, shards/, runs/, stage stamps)")
    p.add_argument("--body-models", default=None, help="SMPL-H body models in smplx's layout (DIR/smplh/...)")
    p.add_argument("--procedural-body", action="store_true", help="no body models: the procedural body")
    p.add_argument("--weights", default=None, help="pretrained weights directory (DistilBERT, CLIP): "
                   "LAVIMO_WEIGHTS for every stage")
    p.add_argument("--text-model", default=None, metavar="DIR", help="local sentence-transformers copy of the "
                   "preset's sentence model, for build-shards (default: WEIGHTS/all-mpnet-base-v2 when it exists)")
    p.add_argument("--any-text-model", action="store_true", help="embed captions with --text-model or the bundled "
                   "all-MiniLM-L6-v2 even when the preset names another model (numbers not comparable)")
    p.add_argument("--random-init", action="store_true", help="random backbones (no pretrained weights needed)")
    p.add_argument("--tables", default="all", help="table2,...,table6 or all (default)")
    p.add_argument("--rows", default=None, help="only these rows, comma separated (e.g. tmr,ours)")
    p.add_argument("--preset", default="paper", help="training preset (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every row (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config field for every row")
    p.add_argument("--size", type=int, default=512, help="rendered frame size in pixels (default: the paper's 512)")
    p.add_argument("--fps", type=int, default=None, help="video frame rate (default: the clip's, 20)")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)),
                   help="render and shard worker processes (default: %(default)s)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--slurm", action="store_true", help="submit the stages as Slurm jobs instead")
    p.add_argument("--render-tasks", type=int, default=32, help="--slurm: render array tasks (default 32)")
    p.add_argument("--shard-tasks", type=int, default=16, help="--slurm: build-shards array tasks (default 16)")
    p.add_argument("--dry-run", action="store_true", help="print the cost and the commands, run nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_SETUP
    try:
        check_inputs(args)
        args.amass, args.annotations, args.out = (str(Path(p).resolve()) for p in (args.amass, args.annotations,
                                                                                   args.out))
        runs, cfg, flags = plan_runs(args)
        for line in cost(args, runs, cfg):
            print(line, flush=True)
        cmds = stage_commands(args, flags)
        if not args.dry_run:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        if args.slurm:
            return run_slurm(args, cmds, runs, flags)
        if args.dry_run:
            print("\n".join(f"== {n}: {shlex.join(c)}" for n, c in cmds.items()) + "\ndry run: nothing was run")
            return EXIT_OK
        with StopSignals(prog=PROG, on_first="stopping the running stage").installed() as stop:
            return run_local(args, cmds, stop)
    except (SetupError, BadInputError) as exc:
        return print_error(PROG, exc, EXIT_SETUP)
    except subprocess.CalledProcessError as exc:
        return print_error(PROG, f"{shlex.join(exc.cmd)}: exit {exc.returncode}", EXIT_FAILED)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: rerun the same command to continue (done stages are skipped)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

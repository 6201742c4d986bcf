"""scripts/reproduce.py: raw data to the paper's tables in one command.

End to end on a toy synthetic corpus (24 motions, 32 px at 5 fps, the ``tiny`` preset for one epoch, two rows of
Table 2): the cost is stated first, every stage runs, the table is printed beside the paper's numbers; a second
run skips every stage. Refusals: a missing path, missing body models, missing weights without --random-init: one
line naming what is missing, exit 2, nothing written. ``--slurm`` with a stand-in ``sbatch``: the stages as jobs
chained by dependencies, one array task per run; paper_rows.sbatch picks its task's run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce.py"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYOPENGL_PLATFORM=os.environ.get(
    "PYOPENGL_PLATFORM", "egl"), TOKENIZERS_PARALLELISM="false")
TOY = ["--procedural-body", "--random-init", "--preset", "tiny", "--epochs", "1", "--size", "32", "--fps", "5",
       "--workers", "1", "--device", "cpu", "--tables", "table2", "--rows", "tmr,ours"]


def _run(args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reproduce") / "corpus"
    p = subprocess.run([sys.executable, "-m", "lavimo.dataset.synth.corpus", "--out", str(out), "--motions", "24",
                        "--seed", "0", "--test-fraction", "0.34", "--val-fraction", "0.2"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


def _paths(corpus: Path, out: Path) -> list:
    return ["--amass", corpus / "amass", "--annotations", corpus / "annotations.json", "--out", out]


def test_toy_run_from_raw_data_to_the_table_then_skips_every_stage(corpus, tmp_path):
    out = tmp_path / "repro"
    first = _run([*_paths(corpus, out), *TOY])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lines = first.stdout.splitlines()
    assert lines[0].startswith("24 clips (") and "2 training run(s) (tmr, ours), preset 'tiny', 1 epoch(s)" in lines[0]
    assert lines[1].startswith("estimated cost: render ") and " GB + shards " in lines[1]
    assert "docs/benchmarks.md" in lines[2] and "27.6 samples/s" in lines[2]
    for stage in ("render", "shards", "rows", "tables"):
        assert f"== {stage}: " in first.stdout and (out / f".done-{stage}").is_file(), stage
    assert "| TMR | MT | frozen | tmr | plain | ours |" in first.stdout
    assert "| paper | 24.58 | 50.48 | 60.36 | 5.00 |" in first.stdout  # the published number beside ours
    assert "### Fusion attention weights" in first.stdout
    for ext in ("md", "tex", "json", "png"):
        assert (out / "runs" / "tables" / f"paper_tables.{ext}").is_file()
    assert (out / "videos" / "render-report.json").is_file() and (out / "shards" / "train.json").is_file()

    second = _run([*_paths(corpus, out), *TOY])
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("render", "shards", "rows", "tables"):
        assert f"== {stage}: already complete" in second.stdout, stage
    assert "training ->" not in second.stdout and "evaluated" not in second.stderr  # nothing ran again
    assert "| TMR | MT | frozen | tmr | plain | ours |" in second.stdout  # the saved table is printed again


def _refused_args(case: str, corpus: Path, tmp: Path) -> list:
    """The toy command with one thing missing."""
    args = [*_paths(corpus, tmp / "repro"), *TOY]
    swap = {"amass": ("--amass", tmp / "no-amass"), "annotations": ("--annotations", tmp / "no-annotations.json"),
            "body models": ("--procedural-body", None), "body model files": ("--procedural-body", "--body-models"),
            "weights": ("--random-init", "--weights"), "text model": ("--random-init", "--random-init")}[case]
    i = args.index(swap[0])
    if case in ("amass", "annotations"):
        args[i + 1] = swap[1]
    elif case == "text model":
        pass  # the paper preset names all-mpnet-base-v2: no local copy, no --any-text-model
    elif swap[1] is None:
        del args[i]
    else:
        args[i:i + 1] = [swap[1], tmp]  # an empty directory
    return [("paper" if a == "tiny" and case in ("weights", "text model") else a) for a in args]


@pytest.mark.parametrize("case, needle", [
    ("amass", "--amass"), ("annotations", "--annotations"), ("body models", "missing --body-models"),
    ("body model files", "no SMPLH male body model"), ("weights", "missing pretrained weights"),
    ("text model", "sentence model sentence-transformers/all-mpnet-base-v2")])
def test_refusals_name_what_is_missing_with_exit_2(case, needle, corpus, tmp_path):
    p = _run(_refused_args(case, corpus, tmp_path))
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reproduce.py: error: ") and needle in err[0], p.stderr
    assert not (tmp_path / "repro").exists()  # refused before any work


def test_slurm_submits_the_stages_as_chained_jobs_one_array_task_per_run(corpus, tmp_path):
    log, bin_dir = tmp_path / "sbatch.log", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$SBATCH_LOG"\n'
                                    'echo "$((100 + $(wc -l < "$SBATCH_LOG")));cluster"\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = dict(ENV, PATH=f"{bin_dir}{os.pathsep}{ENV['PATH']}", SBATCH_LOG=str(log))
    out, mpnet = tmp_path / "repro", tmp_path / "weights" / "all-mpnet-base-v2"
    mpnet.mkdir(parents=True)  # --weights holding all-mpnet-base-v2/: the shards' --text-model
    p = _run([*_paths(corpus, out), "--procedural-body", "--random-init", "--preset", "paper", "--tables",
              "table2,table4", "--weights", mpnet.parent, "--slurm"], env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = log.read_text().splitlines()
    assert len(jobs) == 5  # render, shards, shards merge, rows, tables
    assert "--array=0-31" in jobs[0] and "render_array.sbatch --size 512" in jobs[0]
    # afterany: a task with some failed clips exits 1, and the next stage refuses missing inputs itself
    assert "--dependency=afterany:101" in jobs[1] and "build_shards.sbatch" in jobs[1]
    assert "--dependency=afterany:102" in jobs[2] and "MERGE=1" in jobs[2]
    assert all(j.endswith(f"--text-model {mpnet}") for j in jobs[1:3]), jobs[1:3]
    # Table 2's seven rows and Table 4's five ε values; ε 0.8 is the Ours run under the paper preset: 11 runs
    runs = "tmr row2 row3 row4 row5 row6 ours negative_threshold-0p7 negative_threshold-0p75 " \
           "negative_threshold-0p85 negative_threshold-0p9"
    assert "--dependency=afterany:103" in jobs[3] and "--array=0-10" in jobs[3] and f"RUNS={runs}" in jobs[3]
    assert jobs[3].endswith("paper_rows.sbatch --preset paper --random-init")
    assert "--dependency=afterany:104" in jobs[4] and "paper_ablations.py table" in jobs[4]

    # an array task of paper_rows.sbatch trains its run with the runner (a stand-in python prints the command)
    (bin_dir / "python").write_text('#!/bin/bash\necho "$@"\n')
    (bin_dir / "python").chmod(0o755)
    task = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "paper_rows.sbatch"), "--preset", "paper"],
                          env=dict(env, RUNNER="R.py", SHARDS="S", OUT="O", RUNS=runs, SLURM_ARRAY_TASK_ID="7",
                                   SLURM_CPUS_PER_TASK="4"), capture_output=True, text=True, timeout=60)
    assert task.returncode == 0, task.stderr
    assert task.stdout.strip() == "R.py train --shards S --out O --rows negative_threshold-0p7 --preset paper -- " \
                                  "--workers 4"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_reproduce_refuses_without_the_paths():
    env = {k: v for k, v in ENV.items() if k not in ("AMASS", "ANN", "OUT")}
    p = subprocess.run(["make", "-s", "reproduce", "AMASS=/data/amass"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("make reproduce: missing ANN=PATH"), p.stderr


def test_a_stop_signal_is_passed_on_and_the_stage_waited_for(tmp_path):
    """SIGINT / SIGTERM are only recorded; the running stage gets SIGTERM and ends at its own safe point (here: a
    stand-in that writes a file on SIGTERM), then the stop surfaces as KeyboardInterrupt (main: exit 1)."""
    import importlib.util
    import threading

    from lavimo.core.stop import StopSignals

    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    done = tmp_path / "checkpointed"
    child = ("import pathlib, signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(done)!r}).write_text('x'), sys.exit(0)))\n"
             "time.sleep(60)\n")
    stop = StopSignals(signals=())
    threading.Timer(1.0, stop.request, ("SIGTERM",)).start()
    with pytest.raises(KeyboardInterrupt):
        mod._run_stage([sys.executable, "-c", child], stop)
    assert done.read_text() == "x"


def test_stages_run_in_their_own_session_and_failed_clips_are_a_partial_success(tmp_path, monkeypatch):
    """The terminal's SIGINT reaches only reproduce.py (the stage has its own session); render/shards exiting 1
    (some clips failed) is stamped, the next stages run, and the final status is 1."""
    import argparse
    import importlib.util
    import os as _os

    from lavimo.core.stop import StopSignals

    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sid = tmp_path / "sid"
    mod._run_stage([sys.executable, "-c", f"import os, pathlib; pathlib.Path({str(sid)!r}).write_text("
                    "str(os.getsid(0)))"], StopSignals(signals=()))
    assert int(sid.read_text()) != _os.getsid(0)

    cmds = {name: [sys.executable, "-c", f"import sys; sys.exit({1 if name == 'render' else 0})"]
            for name in mod.STAGES}
    (tmp_path / "runs" / "tables").mkdir(parents=True)
    (tmp_path / "runs" / "tables" / "paper_tables.md").write_text("table\n")
    rc = mod.run_local(argparse.Namespace(out=str(tmp_path)), cmds, StopSignals(signals=()))
    assert rc == 1
    assert all((tmp_path / f".done-{name}").is_file() for name in mod.STAGES)

"""`make demo`'s script (scripts/demo.sh): its knobs are documented, and it runs the six stages end to end.

The end-to-end test shrinks the corpus (84 motions, 32 px at 5 fps) and trains the ``tiny`` preset for one epoch,
so it checks the wiring (every stage, the printed table and paths, skip-on-rerun), not the retrieval numbers; those
are the README's captured run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "demo.sh"
STAGES = ("synth", "render", "shards", "train", "eval", "search")


def test_demo_knobs_are_documented_in_readme() -> None:
    knobs = set(re.findall(r"\$\{(DEMO_[A-Z_]+):-", SCRIPT.read_text()))
    assert {"DEMO_MOTIONS", "DEMO_PRESET", "DEMO_EPOCHS"} <= knobs
    readme = (REPO / "README.md").read_text()
    assert not [k for k in sorted(knobs) if f"`{k}`" not in readme], "knobs of scripts/demo.sh missing in README"


def test_default_epochs_are_the_presets() -> None:
    """Without DEMO_EPOCHS the script asks the preset (its run settings) for the epoch count: 20 for 'demo'."""
    (code,) = re.findall(r"EPOCHS=\$\{DEMO_EPOCHS:-\$\(\"\$BIN/python\" -c '([^']+)' \"\$PRESET\"\)\}", SCRIPT.read_text())
    p = subprocess.run([sys.executable, "-c", code, "demo"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "20", p.stderr[-2000:]


def _run_demo(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, VENV=str(Path(sys.executable).parents[1]), DEMO=str(out), DEMO_MOTIONS="84",
               DEMO_TEST_FRACTION="0.34", DEMO_VAL_FRACTION="0.2", DEMO_SIZE="32", DEMO_FPS="5",
               DEMO_PRESET="tiny", DEMO_EPOCHS="1", DEMO_WORKERS="1")
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_script_runs_every_stage_then_skips_them(tmp_path: Path) -> None:
    if not (Path(sys.executable).parent / "render-amass").exists():
        pytest.skip("the console scripts are not installed beside this interpreter (run through make test)")
    out = tmp_path / "demo"
    first = _run_demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in STAGES:
        assert f"== {stage}: " in first.stdout
        assert (out / f".done-{stage}").is_file()
    assert "preset 'tiny', 1 epochs" in first.stdout
    assert "| dissimilar subset |" in first.stdout
    info = json.loads((out / "eval" / "eval_info.json").read_text())  # TMR's way: nsim_test as its own split
    assert info["subset"] == "nsim_test split" and (out / "shards" / "nsim_test.json").is_file()
    for rel in ("eval/metrics.md", "eval/metrics.json", "eval/gallery.html", "eval/tsne.png"):
        assert (out / rel).is_file(), rel
        assert str(out / rel) in first.stdout
    for query in ("text query", "video query", "motion query"):  # the search stage's three top-5 tables
        assert first.stdout.count(f"== {query} ") == 2, query  # printed by the stage and again at the end
    assert first.stdout.count("   5  ") >= 6 and (out / "search" / "index" / "index.json").is_file()
    times = (out / "stage-times.txt").read_text().split("\n")
    assert [t.split()[0] for t in times if t] == list(STAGES)
    assert all(t.split()[1].endswith("s") and t.split()[1] != "skipped" for t in times if t)

    second = _run_demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in STAGES:
        assert f"== {stage}: already complete" in second.stdout
    # nothing ran again: told by the work (every stage skipped), not by a wall clock (issue 24: a loaded machine)
    times = [t.split() for t in (out / "stage-times.txt").read_text().split("\n") if t]
    assert times == [[stage, "skipped"] for stage in STAGES], times
    assert "| dissimilar subset |" in second.stdout
    assert "== motion query " in second.stdout  # the saved queries are printed again
    assert all(t.split()[1] == "skipped" for t in (out / "stage-times.txt").read_text().split("\n") if t)

"""scripts/paper_ablations.py: the paper's ablation rows as train.py commands, and their retrieval table.

Fast tests: --dry-run prints the exact train.py command of every Table 2 row and writes nothing; usage errors
(unknown row or table, a crafted rows file, flags that would move a run) exit 2 with one line naming the file and
field, and write nothing. The slow test trains every Table 2 row on tiny synthetic shards, prints the table, and
covers skip / resume / conflicting runs / a failing row (exit 1) / the subprocess path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import sigterm_when
from tests.fixtures.tiny_shards import cached_tiny_shards

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "paper_ablations.py"
DATA = REPO / "model" / "presets" / "ablations" / "paper_tables.json"
TABLE2 = ("row1", "row2", "row3", "row4", "row5", "row6", "ours")


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_ablations", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_ablations"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


pa = _load_script()


def _main(argv, capsys):
    rc = pa.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _cli(argv, timeout=120):
    """The script as a user runs it (its own process)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def fake_shards(tmp_path):
    """A directory that passes the script's own checks (manifests present); nothing reads it in these tests."""
    d = tmp_path / "shards"
    d.mkdir()
    for split in ("train", "val", "test"):
        (d / f"{split}.json").write_text("{}")
    return d


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


# ----------------------------------------------------------------------------------------------------------
# the rows file


def test_rows_file_has_every_table2_row_and_no_paper_number():
    tables = pa.load_data(DATA)
    assert [r.name for r in tables["table2"].rows] == list(TABLE2)
    rows = {r.name: r for r in tables["table2"].rows}
    assert rows["row1"].flags == ["--modalities", "tm", "--negative-filtering", "tmr"]
    assert rows["row5"].flags == ["--recon-weight", "0"] and not rows["row5"].mapping_is_ours
    assert rows["row6"].flags == ["--no-fusion"] and not rows["row6"].mapping_is_ours
    assert rows["ours"].flags == []
    assert all(rows[r].mapping_is_ours for r in ("row2", "row3", "row4"))  # our guess, marked as such
    assert {"threshold", "recon_weight", "frames", "freezing"} <= set(tables)
    raw = json.loads(DATA.read_text())
    for t in raw["tables"].values():
        for r in t["rows"]:  # nothing invented: every paper value is null until a user fills it in
            assert "arXiv 2403.00691" in r["paper"]["source"]
            assert all(v is None for d in ("t2m", "m2t") for v in r["paper"][d].values())
    assert "ablations" not in __import__("model").list_presets()  # not mistaken for a model preset


# ----------------------------------------------------------------------------------------------------------
# dry run and usage errors (fast)


def test_dry_run_prints_exact_train_commands(fake_shards, tmp_path, capsys):
    out = tmp_path / "runs"
    rc, stdout, err = _main(["train", "--shards", fake_shards, "--out", out, "--preset", "tiny", "--epochs", "1",
                             "--set", "epoch_batches=2", "--random-init", "--dry-run"], capsys)
    assert rc == 0, err
    flags = {r.name: r.flags for r in pa.load_data(DATA)["table2"].rows}
    lines = stdout.splitlines()
    for i, name in enumerate(TABLE2, 1):
        assert any(ln.startswith(f"[{i}/7] {name}: would train") for ln in lines), stdout
        cmd = [sys.executable, str(REPO / "train.py"), "--shards", str(fake_shards), "--preset", "tiny",
               *flags[name], "--epochs", "1", "--set", "epoch_batches=2", "--random-init", "--no-progress",
               "--out", str(out / name)]
        assert f"  {shlex.join(cmd)}" in lines, (name, stdout)
    assert "dry run: 7 row(s), nothing was run" in stdout
    assert not out.exists()  # a dry run writes nothing

    rc, stdout, err = _main(["train", "--shards", fake_shards, "--out", out, "--preset", "tiny", "--rows", "row6",
                             "--random-init", "--launcher", "torchrun --nproc_per_node=2", "--dry-run"], capsys)
    assert rc == 0, err
    assert f"  torchrun --nproc_per_node=2 {REPO / 'train.py'} --shards {fake_shards} --preset tiny --no-fusion " \
           f"--random-init --no-progress --out {out / 'row6'}" in stdout.splitlines(), stdout


def test_dry_run_shares_runs_of_identical_configs(fake_shards, tmp_path, capsys):
    rc, stdout, err = _main(["train", "--shards", fake_shards, "--out", tmp_path / "r", "--preset", "tiny",
                             "--rows", "eps080,eps070", "--random-init", "--dry-run"], capsys)
    assert rc == 0, err
    assert "eps070: would train" in stdout
    # epsilon 0.8 is the tiny preset's own value: that row is the "ours" run, trained once under that name
    assert re.search(r"eps080: would train \(same config as ours: shares its run\) -> \S*/r/ours", stdout)
    assert str(tmp_path / "r" / "eps080") not in stdout


def test_bad_row_name_exits_2(fake_shards, tmp_path):
    out = tmp_path / "runs"
    p = _cli(["train", "--shards", fake_shards, "--out", out, "--rows", "ours,row9", "--dry-run"])
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "--rows: unknown row row9" in lines[0] and "row1, row2" in lines[0] and str(DATA) in lines[0]
    assert not out.exists()


def test_usage_errors_exit_2_with_one_line(fake_shards, tmp_path, capsys):
    out = tmp_path / "runs"
    cases = [
        (["train", "--shards", fake_shards, "--out", out, "--table", "table9"], "--table: unknown table table9"),
        (["train", "--shards", tmp_path / "nope", "--out", out], "train.json: not found"),
        (["train", "--shards", fake_shards, "--out", out, "--preset", "nosuch"], "--preset"),
        (["train", "--shards", fake_shards, "--out", out, "--", "--resume"], "--resume may not be given"),
        (["train", "--shards", fake_shards, "--out", out, "--", "--no-such-flag"], "unrecognized arguments"),
        (["train", "--shards", fake_shards, "--out", out, "--preset", "paper", "--rows", "ours", "--set",
          f"text_model={tmp_path / 'no-such-model'}"], "missing pretrained weights"),
        (["train", "--shards", fake_shards, "--out", out, "--launcher", "torchrun", "--in-process"], "--launcher"),
        (["table", "--shards", fake_shards, "--runs", out], "--runs directory not found"),
        (["table", "--shards", fake_shards, "--runs", tmp_path, "--split", "../test"], "--split"),
    ]
    for argv, needle in cases:
        rc, stdout, err = _main(argv, capsys)
        assert rc == 2, (argv, err)
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert not out.exists()


def _crafted_rows(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"tables": {"table2": {"rows": rows}}}))
    return path


@pytest.mark.parametrize("row, field, needle", [
    ({"name": "../../escape", "flags": []}, "tables.table2.rows[0].name", "not a valid keyid"),
    ({"name": "logs", "flags": []}, "tables.table2.rows[0].name", "reserved"),
    ({"name": "x", "flags": "--no-fusion"}, "tables.table2.rows[0].flags", "list of train.py arguments"),
    ({"name": "x", "flags": [], "paper": {"t2m": {"R@1": "12"}}}, "tables.table2.rows[0].paper.t2m.R@1",
     "number or null"),
    ({"name": "x", "flags": [], "paper": {"t2m": {"R@11": 1}}}, "tables.table2.rows[0].paper.t2m", "unknown"),
    ({"name": "x", "flag": []}, "tables.table2.rows[0]", "unknown keys ['flag']"),
    ({"name": "x", "flags": ["--out", "/tmp/elsewhere"]}, "tables.table2.rows[0].flags", "--out may not be given"),
    ({"name": "x", "flags": ["--ou", "elsewhere"]}, "tables.table2.rows[0].flags", "--out may not be given"),
    ({"name": "x", "flags": ["--shards", "/elsewhere"]}, "tables.table2.rows[0].flags", "--shards may not"),
    ({"name": "x", "flags": ["--set", "no_such_field=1"]}, "tables.table2.rows[0].flags", "no_such_field"),
])
def test_crafted_rows_file_exits_2_naming_file_and_field(row, field, needle, fake_shards, tmp_path, capsys):
    data = _crafted_rows(tmp_path, [row])
    out = tmp_path / "runs"
    before = _files(tmp_path)
    rc, stdout, err = _main(["train", "--shards", fake_shards, "--out", out, "--data", data, "--preset", "tiny"],
                            capsys)
    assert rc == 2, err
    assert str(data) in err and field in err and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _files(tmp_path) == before  # nothing written, inside or outside --out
    assert not (tmp_path.parent / "escape").exists()


def test_unreadable_rows_file_exits_2(fake_shards, tmp_path, capsys):
    bad = tmp_path / "rows.json"
    bad.write_bytes(b"{not json")
    rc, _, err = _main(["train", "--shards", fake_shards, "--data", bad, "--out", tmp_path / "r"], capsys)
    assert rc == 2 and str(bad) in err and "json" in err, err
    rc, _, err = _main(["train", "--shards", fake_shards, "--data", tmp_path / "missing.json"], capsys)
    assert rc == 2 and "missing.json" in err and "not found" in err, err


def test_filled_in_paper_numbers_are_printed():
    tables = pa.load_data(DATA)
    row = tables["table2"].rows[-1]
    row.paper["t2m"]["R@1"] = 12.5
    res = {r.name: pa.Result({d: {m: 1.0 for m in pa.METRICS} for d in pa.DIRECTIONS}, 34)
           for r in tables["table2"].rows}
    names = {r.name: r.name for r in tables["table2"].rows}
    md = pa.render_markdown(tables, tables["table2"].rows, res, names, data_path=DATA, split="test", threshold=0.8)
    paper_lines = [ln for ln in md.splitlines() if ln.startswith("| | | paper |")]
    assert paper_lines[-1].split("|")[4].strip() == "12.50" and "—" in paper_lines[-1]
    tex = pa.render_latex(tables, tables["table2"].rows, res, names, data_path=DATA, split="test", threshold=0.8)
    assert "\\begin{tabular}" in tex and " & & paper & 12.50 & --- &" in tex and "\\end{tabular}" in tex


def test_crafted_run_record_stays_inside_runs(tmp_path, fake_shards, capsys):
    runs = tmp_path / "runs"
    (runs / "rows").mkdir(parents=True)
    (runs / "rows" / "ours.json").write_text(json.dumps({"run": "../../outside"}))
    before = _files(tmp_path)
    rc, stdout, err = _main(["table", "--shards", fake_shards, "--runs", runs, "--rows", "ours"], capsys)
    assert rc == 1, err
    assert str(runs / "rows" / "ours.json") in err and "run" in err and "not a valid keyid" in err
    assert "| ours | " in stdout and "n/a" in stdout
    assert _files(tmp_path) == before


# ----------------------------------------------------------------------------------------------------------
# the whole path on tiny synthetic shards (slow)


TINY_SHARDS = dict(n_train=32, n_val=8, n_test=34, n_classes=4, samples_per_shard=16, size=32, frames=(42, 46))


@pytest.mark.slow
def test_train_every_table2_row_then_print_the_table(request, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    shards = cached_tiny_shards(request, "ablation", **TINY_SHARDS)  # 41-45 feature rows: >= the min segment
    out = tmp_path / "ablations"
    base = ["--shards", shards, "--out", out, "--preset", "tiny", "--epochs", "1", "--set", "epoch_batches=2",
            "--random-init", "--device", "cpu", "--in-process"]
    rc, stdout, err = _main(["train", *base, "--", "--threads", "1"], capsys)
    assert rc == 0, stdout + err
    for i, name in enumerate(TABLE2, 1):
        assert f"[{i}/7] {name}: done in" in stdout, stdout
        assert (out / name / "checkpoints" / "last.safetensors").is_file()
        rec = json.loads((out / "rows" / f"{name}.json").read_text())
        assert rec["run"] == name and rec["command"][1] == str(REPO / "train.py")
    assert "train: 7 done, 0 skipped, 0 failed" in stdout
    assert json.loads((out / "row1" / "config.json").read_text())["model"]["modalities"] == "tm"
    assert json.loads((out / "row5" / "config.json").read_text())["model"]["recon_weight"] == 0
    # rows of the sweeps with the same config as a trained row point at its run
    assert json.loads((out / "rows" / "eps080.json").read_text())["run"] == "ours"
    assert json.loads((out / "rows" / "lambda0p0.json").read_text())["run"] == "row5"

    rc, stdout, err = _main(["table", "--shards", shards, "--runs", out, "--device", "cpu", "--in-process"], capsys)
    assert rc == 0, stdout + err
    lines = stdout.splitlines()
    assert lines[0] == "### Table 2: ablations (paper: Table 2 of arXiv 2403.00691)"
    assert "TMR's \"all with threshold\" protocol (threshold 0.8), split test, N = 34" in stdout
    header = ("| Row | Setting | | T→M R@1 | T→M R@5 | T→M R@10 | T→M MedR | M→T R@1 | M→T R@5 | M→T R@10 | "
              "M→T MedR |")
    assert header in lines
    body = lines[lines.index(header) + 2:]
    for k, name in enumerate(TABLE2):
        ours, paper = body[2 * k].split("|"), body[2 * k + 1].split("|")
        assert ours[1].strip().rstrip("*") == name and ours[3].strip() == "ours", body[2 * k]
        nums = [float(c) for c in ours[4:12]]  # every row has numbers
        assert all(0 <= v <= 100 for v in nums[:3] + nums[4:7]) and nums[3] >= 1 and nums[7] >= 1
        assert paper[3].strip() == "paper" and [c.strip() for c in paper[4:12]] == ["—"] * 8
    assert body[0].split("|")[1].strip() == "row1*"  # our guessed mappings are marked
    assert sum("paper value not filled in" in ln for ln in lines) == 1  # said once
    assert "no result" not in stdout
    for name in TABLE2:
        assert f"{name}: done in" in err  # progress lines on stderr
        info = json.loads((out / name / "eval" / "table-test" / "eval_info.json").read_text())
        assert info["protocols"] == ["threshold"] and info["threshold"] == 0.8

    # a second table skips the evaluations; --format latex
    rc, stdout, err = _main(["table", "--shards", shards, "--runs", out, "--device", "cpu", "--in-process",
                             "--rows", "row5,lambda0p0", "--format", "latex"], capsys)
    assert rc == 0, err
    assert "[1/1] row5: skipped, metrics exist" in err
    assert re.search(r"^row5 & no reconstruction \(lambda\\_recon = 0\) & ours( & \d+\.\d\d){8} \\\\$", stdout,
                     re.M), stdout
    assert "lambda\\_recon = 0.0 (run: row5) & ours" in stdout

    # complete rows are skipped; a longer schedule resumes (--resume); other settings in the same --out refuse
    rc, stdout, _ = _main(["train", *base], capsys)
    assert rc == 0 and stdout.count("skipped, complete (epoch 1/1)") == 7, stdout
    rc, stdout, _ = _main(["train", *base[:6], "--epochs", "2", *base[8:], "--rows", "row6", "--dry-run"], capsys)
    assert rc == 0 and "would resume (from epoch 1/2, batch 0)" in stdout
    assert re.search(r"--out \S*/row6 --resume$", stdout, re.M), stdout
    rc, stdout, _ = _main(["train", *base, "--set", "epoch_batches=3", "--rows", "row6"], capsys)
    assert rc == 1 and "holds a run with other settings (epoch_batches: saved 2, wanted 3)" in stdout, stdout

    # a row that fails (train.py refuses its feature_dim) is reported, the others still run; the subprocess path; exit 1
    data = tmp_path / "rows.json"
    data.write_text(json.dumps({"tables": {"t": {"rows": [
        {"name": "wrongdim", "flags": ["--set", "feature_dim=251"]},
        {"name": "ours", "flags": []}]}}}))
    p = _cli(["train", *[a for a in base if a != "--in-process"], "--data", data])
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"\[1/2\] wrongdim: FAILED, exit 2 .*feature_dim.*\(log: \S+wrongdim-train\.log\)",
                     p.stdout), p.stdout
    assert "[2/2] ours: skipped, complete" in p.stdout and "1 failed (wrongdim)" in p.stdout
    rc, stdout, err = _main(["table", "--shards", shards, "--runs", out, "--data", data, "--device", "cpu",
                             "--in-process"], capsys)
    assert rc == 1 and "wrongdim: FAILED" in err and "no numbers for wrongdim" in err
    assert re.search(r"^\| wrongdim \| wrongdim \| ours \| n/a \|", stdout, re.M) and "`n/a` no result" in stdout


@pytest.mark.slow
def test_sigterm_stops_the_running_train_py_and_exits_1(request, tmp_path):
    """SIGTERM while a row trains: the train.py child is stopped (no orphan), the script exits 1 and says how
    to continue."""

    shards = cached_tiny_shards(request, "ablation", **TINY_SHARDS)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "train", "--shards", str(shards), "--out",
                             str(tmp_path / "r"), "--preset", "tiny", "--epochs", "50", "--random-init", "--device",
                             "cpu", "--rows", "ours"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    children: list[int] = []  # the train.py process(es) the script started

    def train_py_running() -> bool:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            children[:] = [int(c) for c in fh.read().split()]
        return bool(children)

    first = proc.stdout.readline()
    rc, err = sigterm_when(proc, train_py_running)  # polls (up to 120 s: the child imports torch first)
    assert "ours" in first and "training" in first, first
    assert children, "train.py was not started"
    assert rc == 1, err
    assert "interrupted: rerun the same command" in err
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "State:\tZ" in Path(f"/proc/{child}/status").read_text()

"""scripts/paper_ablations.py: the paper's Tables 2-6 as data, rows -> train.py flags, and the tables of a toy run.

Fast: the row -> flags mapping of all seven Table 2 rows against the data file (and the configs they resolve to),
the sweeps' values and columns, the shipped figures against ``../shared`` (skipped without it), bad input (exit 2,
one line naming the file and field, nothing written). The toy run trains every row of Tables 2-6 on tiny synthetic
shards in process, prints the tables with the paper's numbers, marks a failing row (exit 1) and resumes. Slow: a
SIGTERM stops the running train.py child.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import sigterm_when
from tests.fixtures.tiny_shards import cached_tiny_shards

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "paper_ablations.py"
DATA = REPO / "evaluation" / "paper" / "lavimo_tables.json"
SHARED = REPO.parent / "shared" / "paper" / "lavimo_tables.json"
TABLE2 = ("tmr", "row2", "row3", "row4", "row5", "row6", "ours")
TINY_SHARDS = dict(n_train=32, n_val=8, n_test=34, n_classes=4, samples_per_shard=16, size=32, frames=(42, 46))


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


@pytest.fixture
def fake_shards(tmp_path):
    """A directory that passes the runner's shard checks (manifests, no samples); nothing trains on it."""
    d = tmp_path / "shards"
    d.mkdir()
    for split in ("train", "val", "test"):
        (d / f"{split}.json").write_text('{"shards": []}')
    return d


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


# ----------------------------------------------------------------------------------------------- the data file


def test_table2_rows_map_to_the_papers_switches(fake_shards):
    raw = json.loads(DATA.read_text())
    tables, fusion, source = pa.load_tables(DATA)
    rows = tables["table2"].rows
    assert [r.name for r in rows] == list(TABLE2) and "arXiv 2403.00691" in source
    for row, r in zip(rows, raw["table2"]["rows"]):  # the switches are the data file's, the numbers the paper's
        assert row.switches == {k: r[k] for k in ("modalities", "distilbert", "negative_filtering", "reconstruction")}
        assert row.paper == r["metrics"]
    flags = {r.name: pa.switch_flags(r) for r in rows}
    assert flags["tmr"] == ["--modalities", "tm", "--freeze-text", "--negative-filtering", "tmr", "--no-fusion"]
    assert flags["row2"] == ["--modalities", "tmv", "--freeze-text", "--negative-filtering", "tmr",
                             "--set", "fusion=true"]
    assert flags["row5"][-2:] == ["--recon-weight", "0"] and flags["row4"][5] == "soft"
    # what train.py makes of them (the config each row trains with)
    res = pa.resolve_rows(tables, str(fake_shards), "tiny", [])
    cfg = {name: res[name].cfg.model for name in TABLE2}
    want = {  # modalities, frozen text, filtering, reconstruction weight > 0, fusion
        "tmr": ("tm", True, "tmr", True, False), "row2": ("tmv", True, "tmr", True, True),
        "row3": ("tmv", False, "tmr", True, True), "row4": ("tmv", False, "soft", True, True),
        "row5": ("tmv", False, "lavimo", False, True), "row6": ("tmv", False, "lavimo", True, False),
        "ours": ("tmv", False, "lavimo", True, True)}
    for name, (mod, frozen, filt, recon, fuse) in want.items():
        c = cfg[name]
        assert (c.modalities, c.freeze_text, c.negative_filtering, c.recon_weight > 0, c.fusion) == \
            (mod, frozen, filt, recon, fuse), name
    assert fusion == {"text": 0.1147, "video": 0.217, "motion": 0.6684}


def test_sweeps_have_the_papers_values_and_columns(fake_shards):
    tables, _, _ = pa.load_tables(DATA)
    values = {t: [r.value for r in tables[t].rows] for t in ("table3", "table4", "table5", "table6")}
    assert values == {"table3": [0.001, 0.01, 0.1, 1.0], "table4": [0.7, 0.75, 0.8, 0.85, 0.9],
                      "table5": [16, 32, 64, 128], "table6": [128, 256, 512, 1024]}
    for t in values:
        assert tables[t].columns == [f"{task}_{m}" for task in ("t2m", "v2m") for m in ("R1", "R2", "R3", "MedR")]
    assert tables["table2"].columns == [f"{task}_{m}" for task in ("t2m", "m2t") for m in ("R1", "R5", "R10", "MedR")]
    res = pa.resolve_rows(tables, str(fake_shards), "paper", ["--random-init"])
    # under the paper preset each sweep's default value is the Ours run (shared), every other value a run of its own
    shared = sorted(r for r, v in res.items() if v.run == "ours" and r != "ours")
    assert shared == ["batch_size-64", "latent_dim-512", "negative_threshold-0p8", "recon_weight-0p1"]
    assert res["recon_weight-0p001"].cfg.model.recon_weight == 0.001
    assert res["negative_threshold-0p7"].cfg.model.threshold == 0.7
    assert res["batch_size-16"].cfg.train.batch_size == 16 and res["latent_dim-1024"].cfg.model.latent_dim == 1024


@pytest.mark.skipif(not SHARED.is_file(), reason="../shared/paper/lavimo_tables.json is not here (a user's clone)")
def test_shipped_figures_are_the_published_ones():
    shipped, published = json.loads(DATA.read_text()), json.loads(SHARED.read_text())
    for t in ("table3", "table4", "table5", "table6"):
        assert shipped[t].pop("sweep_base") == "Ours"
    shipped["notes"] = shipped["notes"][:len(published["notes"])]
    assert shipped == published


def test_dry_run_prints_the_train_commands_and_writes_nothing(fake_shards, tmp_path, capsys):
    out = tmp_path / "runs"
    rc, stdout, err = _main(["train", "--shards", fake_shards, "--out", out, "--preset", "tiny", "--tables",
                             "table2,table4", "--random-init", "--dry-run"], capsys)
    assert rc == 0, err
    assert "[1/11] tmr: would train\n" in stdout and "ours (also negative_threshold-0p8): would train" in stdout
    assert (f"--preset tiny --modalities tm --freeze-text --negative-filtering tmr --no-fusion --random-init "
            f"--no-progress --out {out / 'tmr'}\n") in stdout
    assert "--threshold 0.7 --random-init --no-progress" in stdout and "dry run: 12 row(s)" in stdout
    assert not out.exists()


# ------------------------------------------------------------------------------------------------- bad input


def _edited(tmp_path: Path, edit) -> Path:
    data = copy.deepcopy(json.loads(DATA.read_text()))
    edit(data)
    path = tmp_path / "tables.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, field, needle", [
    (lambda d: d["table2"]["rows"][0].update(video_backbone="clip"), "table2.rows[0].video_backbone",
     "unknown switch"),
    (lambda d: d["table2"]["rows"][1].update(negative_filtering="hard"), "table2.rows[1].negative_filtering",
     "unknown switch value 'hard'"),
    (lambda d: d["table4"]["rows"][2]["metrics"].pop("v2m_R3"), "table4.rows[2].metrics.v2m_R3",
     "missing paper number"),
    (lambda d: d["table2"]["rows"][6]["metrics"].update(t2m_R1=None), "table2.rows[6].metrics.t2m_R1",
     "expected the paper's number"),
    (lambda d: d["fusion_attention_weights"].pop("video"), "fusion_attention_weights.video", "the paper's number"),
    (lambda d: d["table5"].update(parameter="dropout"), "table5.parameter", "unknown sweep parameter"),
])
def test_bad_data_file_exits_2_naming_file_and_field(edit, field, needle, fake_shards, tmp_path, capsys):
    data = _edited(tmp_path, edit)
    before = _files(tmp_path)
    rc, stdout, err = _main(["--shards", fake_shards, "--out", tmp_path / "runs", "--data", data, "--preset",
                             "tiny"], capsys)
    assert rc == 2, err
    assert f"{data}: {field}: " in err and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _files(tmp_path) == before


def test_run_directory_of_another_preset_exits_2(fake_shards, tmp_path, capsys):
    from lavimo.training.config import load_run_config

    out = tmp_path / "runs"
    (out / "tmr").mkdir(parents=True)
    (out / "tmr" / "config.json").write_text(json.dumps(load_run_config("demo").to_dict()))
    before = _files(tmp_path)
    rc, stdout, err = _main(["train", "--shards", fake_shards, "--out", out, "--preset", "tiny", "--rows",
                             "tmr,ours", "--random-init"], capsys)
    assert rc == 2 and stdout == "", stdout + err
    assert f"{out / 'tmr' / 'config.json'}: " in err and "a run of another config" in err, err
    assert len(err.strip().splitlines()) == 1 and _files(tmp_path) == before
    rc, stdout, err = _main(["table", "--shards", fake_shards, "--out", out, "--preset", "tiny", "--rows", "tmr",
                             "--random-init"], capsys)  # nor is it evaluated as the row's
    assert rc == 2 and "a run of another config" in err and _files(tmp_path) == before, err


def test_shards_of_another_dataset_exit_2(tmp_path, capsys):
    from lavimo.dataset.shards.format import write_tar

    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "train-000000.tar", [{"__key__": "000000", "meta.json": b'{"dataset": "humanml3d"}'}])
    for split in ("train", "val"):
        (shards / f"{split}.json").write_text(json.dumps({"feature_dim": 263, "shards": [
            {"name": "train-000000.tar"}]}))
    rc, stdout, err = _main(["--shards", shards, "--out", tmp_path / "runs", "--preset", "tiny", "--tables",
                             "table3"], capsys)
    assert rc == 2, err
    assert f"{shards / 'train.json'}: dataset: the shards hold humanml3d but table3 is on KIT-ML" in err, err
    assert not (tmp_path / "runs").exists()


def test_usage_errors_exit_2_with_one_line(fake_shards, tmp_path, capsys):
    out = tmp_path / "runs"
    cases = [
        (["--tables", "table9"], "--tables: unknown table table9"),
        (["--rows", "ours,row9"], "--rows: unknown row row9"),
        (["--split", "../test"], "--split"),
        (["--launcher", "torchrun", "--in-process"], "--launcher"),
        (["--preset", "nosuch"], "--preset"),
        (["--", "--out", "elsewhere"], "--out may not be given"),
        (["--", "--no-such-flag"], "unrecognized arguments"),
        (["--preset", "paper", "--rows", "ours", "--set", f"text_model={tmp_path / 'nope'}"],
         "missing pretrained weights"),
        (["--rows", "ours", "--set", "recon_weight=0"], "recon_weight 0"),  # plain/fusion rows keep their decoder
        (["--tables", "table5", "--launcher", "torchrun --nproc_per_node=4"], "batch size is per process"),
        (["--tables", "table5", "--launcher", "torchrun --nproc-per-node 2"], "batch size is per process"),
    ]
    for extra, needle in cases:
        argv = ["--shards", fake_shards, "--out", out, *extra]
        if "--preset" not in extra:
            argv[4:4] = ["--preset", "tiny"]
        rc, stdout, err = _main(argv, capsys)
        assert rc == 2, (extra, err)
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (extra, err)
    rc, _, err = _main(["--shards", tmp_path / "nope", "--out", out], capsys)
    assert rc == 2 and "train.json: not found" in err
    assert not out.exists()


def test_launcher_processes():
    assert pa.launcher_processes(None) == 1 and pa.launcher_processes("torchrun --nproc_per_node=1") == 1
    assert pa.launcher_processes("torchrun --nproc_per_node 4") == 4
    assert pa.launcher_processes("torchrun --nproc-per-node=gpu") == 2


def test_a_recorded_stop_starts_no_child_and_in_process_sees_sigint(tmp_path):
    """run_tool starts nothing once a stop was recorded; in process, SIGINT is the default handler meanwhile."""
    import signal

    from lavimo.core.stop import StopSignals

    stop = StopSignals(signals=())
    stop.request("SIGINT")
    marker = tmp_path / "ran"
    with pytest.raises(KeyboardInterrupt):
        pa.run_tool(Path("-c"), [f"open({str(marker)!r}, 'w')"], tmp_path / "log", stop)
    assert not marker.exists()
    seen = []
    module = type(sys)("fake_tool")
    module.main = lambda argv: seen.append(signal.getsignal(signal.SIGINT)) or 0
    sys.modules["lavimo.train"], saved = module, sys.modules.get("lavimo.train")
    before = signal.getsignal(signal.SIGINT)
    try:
        with open(tmp_path / "log2", "w") as fh:
            assert pa._run_in_process("train", [], fh) == 0
    finally:
        if saved is not None:
            sys.modules["lavimo.train"] = saved
        else:
            del sys.modules["lavimo.train"]
    assert seen == [signal.default_int_handler] and signal.getsignal(signal.SIGINT) is before


# ------------------------------------------------------------------------------------------------- the toy run


def _table_lines(stdout: str, caption_start: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"### {caption_start}"))
    body = lines[start + 1:]
    return body[:next(i for i, ln in enumerate(body) if ln.startswith("### "))]


def test_toy_run_prints_tables_2_to_6_beside_the_paper_and_resumes(request, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    shards = cached_tiny_shards(request, "ablation", **TINY_SHARDS)
    out = tmp_path / "ablations"
    bad = out / "row2" / "checkpoints"  # a row that fails: its run directory holds a broken checkpoint
    bad.mkdir(parents=True)
    (bad / "last.state.safetensors").write_bytes(b"junk")
    (bad / "last.safetensors").write_bytes(b"junk")
    argv = ["--shards", shards, "--out", out, "--preset", "tiny", "--epochs", "1", "--set", "epoch_batches=1",
            "--random-init", "--device", "cpu", "--in-process", "--", "--threads", "1"]
    rc, stdout, err = _main(argv, capsys)
    assert rc == 1, stdout + err
    assert "row2: FAILED, exit" in stdout and "[7/22] ours (also recon_weight-0p1, negative_threshold-0p8): done" \
        in stdout, stdout
    t2 = _table_lines(stdout, "Table 2.")
    assert t2[3] == ("| Row | modalities | distilbert | negative filtering | reconstruction |  | T→M R@1 | T→M R@5 | "
                     "T→M R@10 | T→M MedR | M→T R@1 | M→T R@5 | M→T R@10 | M→T MedR |")
    assert t2[5].startswith("| TMR | MT | frozen | tmr | plain | ours | ")
    assert t2[6] == "|  |  |  |  |  | paper | 24.58 | 50.48 | 60.36 | 5.00 | 19.64 | 41.20 | 53.01 | 9.50 |"
    assert t2[7].startswith("|  |  |  |  |  | Δ | ") and t2[8].endswith("| ours | " + " | ".join(["n/a"] * 8) + " |")
    assert any(ln.startswith("- n/a row2: ") for ln in t2)
    assert "N = 34" in t2[1] and "synthetic shards (feature_dim 263, 20.0 fps)" in t2[1]
    t3 = _table_lines(stdout, "Table 3.")
    assert t3[3] == ("| λ_recon |  | T→M R@1 | T→M R@2 | T→M R@3 | T→M MedR | V→M R@1 | V→M R@2 | V→M R@3 | "
                     "V→M MedR |")
    assert [ln.split("|")[1].strip() for ln in t3[5::3][:4]] == ["0.001", "0.01", "0.1", "1"]
    assert t3[6] == "|  | paper | 18.11 | 25.16 | 34.30 | 13.00 | 22.41 | 31.49 | 46.53 | 10.00 |"
    for caption, name, n in (("Table 4.", "ε", 5), ("Table 5.", "B", 4), ("Table 6.", "C", 4)):
        lines = _table_lines(stdout, caption)
        assert lines[3].startswith(f"| {name} |  | T→M R@1 | T→M R@2 |") and len(lines[5:5 + 3 * n]) == 3 * n
        ours = [ln for ln in lines if "| ours |" in ln]
        assert len(ours) == n and all("n/a" not in ln for ln in ours), lines
    assert "| paper | 0.1147 | 0.2170 | 0.6684 |" in stdout
    files = {p.name for p in (out / "tables").iterdir()}
    assert files == {"paper_tables.md", "paper_tables.tex", "paper_tables.json", "paper_tables.png"}
    data = json.loads((out / "tables" / "paper_tables.json").read_text())
    row = data["tables"]["table2"]["rows"][0]
    assert row["paper"]["t2m_R1"] == 24.58 and row["diff"]["t2m_R1"] == pytest.approx(row["ours"]["t2m_R1"] - 24.58,
                                                                                       abs=1e-4)
    # the printed Δ is ours - paper (sign included), from the printed cells, to the 2 decimals shown
    ours_cell, delta_cell = (float(t2[i].split("|")[7]) for i in (5, 7))
    assert ours_cell == pytest.approx(row["ours"]["t2m_R1"], abs=0.006)
    assert delta_cell == pytest.approx(ours_cell - 24.58, abs=0.011)
    assert data["fusion_weights"]["paper"]["motion"] == 0.6684 and set(data["fusion_weights"]["ours"]) == {
        "text", "video", "motion"}
    tex = (out / "tables" / "paper_tables.tex").read_text()
    assert "\\begin{tabular}{llllllrrrrrrrr}" in tex and "& paper & 24.58 & 50.48 &" in tex

    # resumable: with the broken run removed only row2 trains and is evaluated; the rest is skipped
    shutil.rmtree(out / "row2")
    rc, stdout, err = _main(argv, capsys)
    assert rc == 0, stdout + err
    assert stdout.count("skipped, complete (epoch 1/1)") == 21 and "row2: training" in stdout, stdout
    assert err.count(": evaluated") == 22 and "| Row2 | MTV | frozen | tmr | fusion | ours | " in stdout
    assert "n/a" not in stdout.split("### Fusion")[0]
    assert (out / "logs" / "ours-eval-test.log").read_text().count("\n=== ") == 1  # evaluated once


@pytest.mark.slow
def test_sigterm_stops_the_running_train_py_and_exits_1(request, tmp_path):
    """SIGTERM while a row trains: the train.py child is stopped (no orphan), the runner exits 1 and says how to
    continue. The signal is only recorded, so it cannot leave a child that Popen is starting unmanaged."""
    shards = cached_tiny_shards(request, "ablation", **TINY_SHARDS)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "train", "--shards", str(shards), "--out",
                             str(tmp_path / "r"), "--preset", "tiny", "--epochs", "50", "--random-init", "--device",
                             "cpu", "--rows", "ours"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    children: list[int] = []

    def train_py_running() -> bool:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            children[:] = [int(c) for c in fh.read().split()]
        return bool(children)

    first = proc.stdout.readline()
    rc, err = sigterm_when(proc, train_py_running)
    assert "ours" in first and "training" in first, first
    assert children, "train.py was not started"
    assert rc == 1, err
    assert "interrupted: rerun the same command" in err
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "State:\tZ" in Path(f"/proc/{child}/status").read_text()

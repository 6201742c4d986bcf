"""evaluate.py: --from-sims reproduces the reference metrics from files; bad files fail clearly.

The model path (encode a split with a trained run) is covered at the end, when a tiny run and shards can be made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluate
from model import metrics as M

from tests.test_metrics import SHUFFLE_70, _guo_probe, _unit

REPO = Path(__file__).resolve().parents[1]


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _run(args, capsys=None):
    rc = evaluate.main([str(a) for a in args])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def test_from_sims_identity(tmp_path, capsys):
    f = _save(tmp_path / "id.npz", sims=np.eye(40, dtype=np.float32))
    rc, out = _run(["--from-sims", f, "--out", tmp_path / "m.json"], capsys)
    assert rc == 0, out.err
    res = json.loads((tmp_path / "m.json").read_text())
    assert set(res) == {"all", "small-batches"}  # no text_emb -> no threshold
    for proto in res:
        for task in ("t2m", "m2t"):
            assert res[proto][task] == {"R@1": 100.0, "R@2": 100.0, "R@3": 100.0, "R@5": 100.0, "R@10": 100.0,
                                        "MedR": 1.0}
    assert res["all"]["n"] == 40 and res["small-batches"]["batches"] == 1
    md = (tmp_path / "m.md").read_text()
    assert "| all (whole split) | 40 | 100.00 |" in md and "threshold" in md  # listed under "Not computed"
    assert "small batches (1×32)" in md


def test_from_sims_tie_and_reversed(tmp_path, capsys):
    tie = np.eye(10, dtype=np.float32)
    tie[0, 3] = tie[0, 7] = 1.0
    rev = np.array([[((j - i) % 9) / 9 for j in range(9)] for i in range(9)])
    for name, sims in (("tie", tie), ("rev", rev)):
        f = _save(tmp_path / f"{name}.npz", sims=sims)
        assert _run(["--from-sims", f], capsys)[0] == 0
        res = json.loads((tmp_path / "metrics.json").read_text())  # default: next to the file
        assert res["all"]["t2m"] == M.retrieval_metrics(sims)
        assert res["all"]["m2t"] == M.retrieval_metrics(sims.T)
        if name == "tie":
            assert res["all"]["t2m"]["R@1"] == pytest.approx(90.0) and res["all"]["t2m"]["R@2"] == 100.0
        else:
            assert res["all"]["t2m"]["R@1"] == 0.0 and res["all"]["t2m"]["MedR"] == 9.0


def test_from_sims_threshold(tmp_path, capsys):
    emb = np.stack([_unit([1, 0, 0]), _unit([1, 0.05, 0]), _unit([0, 1, 0]), _unit([0, 0, 1])])
    sims = np.array([[0.7, 0.9, 0.1, 0.0], [0.2, 0.8, 0.1, 0.0], [0.1, 0.0, 0.9, 0.3], [0.0, 0.5, 0.2, 0.6]],
                    dtype=np.float32)
    f = _save(tmp_path / "thr.npz", sims=sims, text_emb=emb.astype(np.float16))
    assert _run(["--from-sims", f, "--threshold", "0.8", "--out", tmp_path / "o"], capsys)[0] == 0
    res = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert res["all"]["t2m"]["R@1"] == 75.0
    assert res["threshold"]["t2m"]["R@1"] == 100.0 and res["threshold"]["m2t"]["R@1"] == 100.0
    assert res["threshold"]["threshold"] == 0.8 and res["threshold"]["n"] == 4
    assert "small-batches" not in res


def test_from_sims_small_batches_70(tmp_path, capsys):
    sims = _guo_probe()
    f = _save(tmp_path / "guo.npz", sims=sims)
    assert _run(["--from-sims", f], capsys)[0] == 0
    res = json.loads((tmp_path / "metrics.json").read_text())
    sb = res["small-batches"]
    assert sb["batches"] == 2 and sb["n"] == 70
    assert sb["t2m"]["R@1"] == 50.0 and sb["t2m"]["MedR"] == 16.5
    # moving one sample of the first batch into the dropped remainder changes the numbers: the batches are exact
    worse = sims.copy()
    worse[SHUFFLE_70[0], SHUFFLE_70[0]] = -1.0
    f2 = _save(tmp_path / "guo2.npz", sims=worse)
    assert _run(["--from-sims", f2, "--out", tmp_path / "m2.json"], capsys)[0] == 0
    assert json.loads((tmp_path / "m2.json").read_text())["small-batches"]["t2m"]["R@1"] == pytest.approx(
        (100 * 31 / 32 + 0) / 2)
    # but a change in a dropped sample does not
    dropped = sims.copy()
    dropped[SHUFFLE_70[65], SHUFFLE_70[65]] = -5.0
    f3 = _save(tmp_path / "guo3.npz", sims=dropped)
    assert _run(["--from-sims", f3, "--out", tmp_path / "m3.json"], capsys)[0] == 0
    assert json.loads((tmp_path / "m3.json").read_text())["small-batches"] == sb


@pytest.mark.parametrize(
    "arrays, msg",
    [
        ({"sims": np.zeros((3, 4))}, "must be square"),
        ({"sims": np.eye(4), "text_emb": np.ones((3, 8))}, "text_emb: has 3 rows but the similarity matrix has N = 4"),
        ({"sims": np.array([[1.0, np.inf], [0.0, 1.0]])}, "non-finite"),
        ({"similarity": np.eye(3)}, "sims: missing"),
    ],
)
def test_from_sims_bad_files(tmp_path, capsys, arrays, msg):
    f = _save(tmp_path / "bad.npz", **arrays)
    rc, out = _run(["--from-sims", f], capsys)
    assert rc == 2
    assert msg in out.err and str(f) in out.err
    assert not (tmp_path / "metrics.json").exists()


def test_from_sims_not_an_npz(tmp_path, capsys):
    f = tmp_path / "junk.npz"
    f.write_bytes(b"not a zip")
    rc, out = _run(["--from-sims", f], capsys)
    assert rc == 2 and "not a readable .npz" in out.err
    rc, out = _run(["--from-sims", tmp_path / "missing.npz"], capsys)
    assert rc == 2 and "file not found" in out.err


@pytest.mark.slow
def test_script_entry_point(tmp_path):
    f = _save(tmp_path / "id.npz", sims=np.eye(5))
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--from-sims", str(f)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "all (n=5)" in proc.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["all"]["t2m"]["MedR"] == 1.0

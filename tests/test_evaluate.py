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

import lavimo.evaluation.cli as evaluate
from lavimo.evaluation import metrics as M
from lavimo.evaluation.encode import encode_split, first_caption_rows

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


def test_from_sims_small_batches_follow_the_files_keyids(tmp_path, capsys, caplog):
    """TMR sorts by keyid before batching: a file whose rows are in descending keyid order, with its keyids,
    scores like the same matrix stored in ascending order; without keyids it is batched in row order."""
    rng = np.random.default_rng(3)
    n = 64
    asc = rng.normal(size=(n, n)).astype(np.float32) + 1.5 * np.eye(n, dtype=np.float32)
    keys = np.array([f"{i:06d}" for i in range(n)])
    rev = np.arange(n)[::-1]
    f_asc = _save(tmp_path / "asc.npz", sims=asc)
    f_desc = _save(tmp_path / "desc.npz", sims=asc[np.ix_(rev, rev)], keyids=keys[rev])
    f_desc_nokeys = _save(tmp_path / "desc0.npz", sims=asc[np.ix_(rev, rev)])
    res = {}
    for f in (f_asc, f_desc, f_desc_nokeys):
        rc, out = _run(["--from-sims", f, "--out", tmp_path / f"{f.stem}.json"], capsys)
        assert rc == 0, out.err
        res[f.stem] = json.loads((tmp_path / f"{f.stem}.json").read_text())["small-batches"]
        if f is f_desc_nokeys:
            assert "no 'keyids'" in caplog.text
    assert res["desc"]["t2m"] == res["asc"]["t2m"] and res["desc"]["m2t"] == res["asc"]["m2t"]
    assert res["desc"]["order"] == "sorted keyids" and res["desc0"]["order"] == "file rows"
    assert res["desc0"]["t2m"] != res["asc"]["t2m"]


def test_from_sims_bad_keyids(tmp_path, capsys):
    f = _save(tmp_path / "k.npz", sims=np.eye(4), keyids=np.array(["a", "b", "c"]))
    rc, out = _run(["--from-sims", f], capsys)
    assert rc == 2 and "keyids" in out.err and str(f) in out.err


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


# ----------------------------------------------------------------------------------------------------------
# model path: a real tiny checkpoint and real (synthetic) shards
# ----------------------------------------------------------------------------------------------------------
N_TEST = 34  # >= 32 so small-batches has one batch


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    """(shards, run) with a tiny random-init LAVIMO checkpoint (tri-modal) and a test split of 34 clips."""
    from tests.fixtures.runs import random_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_eval")
    shards, ckpt, model = random_tiny_checkpoint(root, n_test=N_TEST, n_classes=4, frames=(10, 14),
                                                 samples_per_shard=16, preprocess=False)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt.rename(run / "checkpoints" / ckpt.name)
    (run / "config.json").write_text(json.dumps(model.cfg.to_dict()))
    return shards, run


@pytest.mark.slow
def test_model_path_everything(tiny_eval, tmp_path, capsys):
    shards, run = tiny_eval
    out = tmp_path / "eval"
    rc, cap = _run(["--run", run, "--shards", shards, "--split", "test", "--protocol", "everything",
                    "--build-dissimilar", "100", "--gallery", "--gallery-queries", "2", "--tsne", "--save-sims",
                    "--batch-size", "8",
                    "--device", "auto", "--no-progress", "--out", out], capsys)
    assert rc == 0, cap.err
    res = json.loads((out / "metrics.json").read_text())
    assert list(res) == ["all", "threshold", "dissimilar", "small-batches"]
    for proto, r in res.items():
        assert set(r) >= set(evaluate.P.TASKS) | {"n"}
        for t in evaluate.P.TASKS:
            assert set(r[t]) == set(M.METRIC_KEYS)
            assert all(0 <= r[t][f"R@{k}"] <= 100 for k in M.RECALL_KS) and 1 <= r[t]["MedR"] <= r["n"]
    assert res["all"]["n"] == N_TEST and res["small-batches"]["batches"] == 1
    # fewer test clips than asked: all of them are picked, and it says so
    assert res["dissimilar"]["n"] == N_TEST
    assert f"picked {N_TEST} of 100 requested" in cap.out
    ids = (out / "dissimilar_test.txt").read_text().split()
    assert len(ids) == N_TEST and ids == sorted(ids)
    info = json.loads((out / "eval_info.json").read_text())
    fw = info["fusion_weights"]
    assert set(fw) == {"text", "video", "motion"} and sum(fw.values()) == pytest.approx(1.0, abs=1e-4)
    md = (out / "metrics.md").read_text()
    assert "## Mean fusion attention weights" in md and "| threshold 0.8 | 34 |" in md
    html = (out / "gallery.html").read_text()
    assert html.count("<video") >= 5 * 2 * 3 and "Video→Motion" in html and "GT rank" in html
    srcs = [s.split('"')[0] for s in html.split('<video src="')[1:]]
    assert all((out / s).is_file() and (out / s).stat().st_size > 0 for s in srcs)
    assert (out / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved matrix reproduces the numbers through --from-sims
    rc, cap = _run(["--from-sims", out / "sims.npz", "--out", tmp_path / "fs.json"], capsys)
    assert rc == 0, cap.err
    fs = json.loads((tmp_path / "fs.json").read_text())
    for proto in ("all", "threshold", "small-batches"):
        for t in ("t2m", "m2t"):
            assert fs[proto][t] == res[proto][t], (proto, t)


@pytest.mark.slow
def test_model_path_subset_text_choice_and_errors(tiny_eval, tmp_path, capsys):
    shards, run = tiny_eval
    import tarfile

    keyids = sorted({m.split(".", 1)[0] for t in sorted(shards.glob("test-*.tar")) for m in tarfile.open(t).getnames()})
    assert len(keyids) == N_TEST
    sub = tmp_path / "sub.txt"
    # a subset id missing from the split -> a clear error naming it
    sub.write_text("000999\n")
    rc, cap = _run(["--run", run, "--shards", shards, "--protocol", "dissimilar", "--subset", sub,
                    "--no-progress", "--out", tmp_path / "e1"], capsys)
    assert rc == 2 and "000999" in cap.err and "not in the test split" in cap.err
    # --protocol dissimilar without a subset -> error before any work
    rc, cap = _run(["--run", run, "--shards", shards, "--protocol", "dissimilar", "--out", tmp_path / "e2"], capsys)
    assert rc == 2 and "--subset" in cap.err
    # every caption as its own query
    rc, cap = _run(["--run", run, "--shards", shards, "--protocol", "all", "threshold", "--tasks", "t2m,m2t",
                    "--text-choice", "all", "--no-progress", "--out", tmp_path / "tc"], capsys)
    assert rc == 0, cap.err
    res = json.loads((tmp_path / "tc" / "metrics.json").read_text())
    assert set(res["all"]) == {"t2m", "m2t", "n", "queries", "sentence_model"}
    assert res["all"]["n"] == N_TEST and res["all"]["queries"] == 2 * N_TEST  # tiny shards: 2 captions a clip
    assert "(68 texts)" in (tmp_path / "tc" / "metrics.md").read_text()
    sub.write_text("\n".join(keyids[:10]) + "\n")
    rc, cap = _run(["--run", run, "--shards", shards, "--protocol", "dissimilar", "--subset", sub,
                    "--tasks", "v2m", "--no-progress", "--out", tmp_path / "s"], capsys)
    assert rc == 0, cap.err
    res = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert set(res["dissimilar"]) == {"v2m", "n", "sentence_model"} and res["dissimilar"]["n"] == 10


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, out = _run(["--run", tmp_path, "--shards", tmp_path, "--protocol", "all", "--device", "cuda"], capsys)
    assert rc == 2 and "--device cuda was asked for but torch sees no CUDA device" in out.err


class _CountingModel:
    """Deterministic stand-in encoders (a caption's latent depends only on its text) that count text calls."""

    video = fusion = None

    def __init__(self):
        self.text_calls: list[list[str]] = []

    def eval(self):
        return self

    def encode_text(self, texts):
        import torch

        self.text_calls.append(list(texts))
        return torch.tensor([[float(len(t)), float(sum(map(ord, t)) % 97), 1.0] for t in texts])

    def encode_motion(self, motion, mask):
        return motion.sum(1)


def test_encode_split_all_captions_encodes_each_caption_once():
    torch = pytest.importorskip("torch")
    texts = [["a man walks", "someone walks forward"], ["a person jumps"], ["waving", "he waves", "a wave"]]
    batch = {"keyid": ["k0", "k1", "k2"], "texts": texts, "text": [t[0] for t in texts],
             "motion": torch.arange(18, dtype=torch.float32).reshape(3, 2, 3), "mask": torch.ones(3, 2, dtype=torch.bool)}
    model = _CountingModel()
    split, captions_of, _ = encode_split(model, [batch], "cpu", text_choice="all", with_video=False, progress=False)
    assert model.text_calls == [[c for caps in texts for c in caps]]  # one call, first captions not re-encoded
    assert split.text_owner.tolist() == [0, 0, 1, 2, 2, 2] and captions_of["k2"] == texts[2]
    first, _, _ = encode_split(_CountingModel(), [batch], "cpu", text_choice="first", with_video=False,
                               progress=False)
    # the first captions' rows of the all-captions encoding are those of the first-caption encoding: the stand-in
    # latents depend on the text alone and distinct captions differ by whole units, so a tolerance of 1e-6
    # (relative) tells the right rows from any other on every CPU
    np.testing.assert_allclose(split.text[[0, 2, 3]], first.text, rtol=1e-6, atol=0)
    # the rows of the first captions are taken from the flat encoding; a mismatch falls back to encoding them
    t = torch.arange(6.0)[:, None]
    assert first_caption_rows(t, texts, [c[0] for c in texts]).flatten().tolist() == [0.0, 2.0, 3.0]
    assert first_caption_rows(t, texts, ["a man walks", "other", "waving"]) is None
    assert first_caption_rows(t, [["x"], []], ["x", ""]) is None


def test_gallery_html_marks_ground_truth_and_escapes():
    from lavimo.evaluation import report as R

    row = R.GalleryRow(task="t2m", query_keyid="000001", query_kind="text", query_text="a <b>person</b> walks",
                       query_video=None, gt_rank=1.0,
                       items=[{"keyid": "000007", "video": "media/000007.mp4", "text": "jumps", "score": 0.9,
                               "gt": False},
                              {"keyid": "000001", "video": "media/000001.mp4", "text": "walks", "score": 0.8,
                               "gt": True}])
    page = R.gallery_html([row])
    assert page.count("<video") == 2 and 'src="media/000001.mp4"' in page
    assert "<span class='badge'>GT</span> #2" in page and "class='cell gt'" in page
    assert "&lt;b&gt;person&lt;/b&gt;" in page and "<b>person</b>" not in page


def test_metrics_markdown_rounds_to_two_decimals():
    from lavimo.evaluation import report as R

    res = {"all": {"t2m": {"R@1": 12.3456, "R@2": 50, "R@3": 60, "R@5": 70, "R@10": 80, "MedR": 2.5},
                   "m2t": {"R@1": 1 / 3, "R@2": 50, "R@3": 60, "R@5": 70, "R@10": 80, "MedR": 3.0}, "n": 9}}
    md = R.metrics_markdown(res, fusion={"text": 0.2, "video": 0.3, "motion": 0.5})
    assert "| all (whole split) | 9 | 12.35 | 50.00 | 60.00 | 70.00 | 80.00 | 2.50 | 0.33 |" in md
    assert "& 12.35 & 50.00" in md and "| 0.200 | 0.300 | 0.500 |" in md
    assert "Video" not in md.split("## Mean")[0].split("## ")[1]  # only the pairs that were computed


@pytest.mark.parametrize("args", [["--from-sims", "x.npz", "--run", "r"], ["--run", "r"], []])
def test_usage_errors_exit_2(args, capsys):
    rc, out = _run(args, capsys)
    assert rc == 2 and "evaluate.py: error:" in out.err


def test_a_split_without_usable_samples_is_one_line_exit_1(monkeypatch, capsys):
    from lavimo.dataset.shards.stream import NoUsableSamplesError

    def refuse(args):
        raise NoUsableSamplesError({"motion_shape": 34})

    monkeypatch.setattr(evaluate, "evaluate_run", refuse)
    rc, out = _run(["--run", "r", "--shards", "s"], capsys)
    assert rc == 1 and "motion_shape" in out.err and "Traceback" not in out.err


@pytest.mark.slow
def test_sentence_model_is_recorded_and_a_mismatch_warns(tiny_eval, tmp_path, capsys, caplog):
    from lavimo.model import build_model, load_preset, save_checkpoint

    shards, run = tiny_eval
    rc, cap = _run(["--run", run, "--shards", shards, "--protocol", "threshold", "--no-progress",
                    "--out", tmp_path / "same"], capsys)
    assert rc == 0, cap.err
    res = json.loads((tmp_path / "same" / "metrics.json").read_text())
    assert res["threshold"]["sentence_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "not comparable" not in caplog.text
    other = tmp_path / "run_mpnet"
    (other / "checkpoints").mkdir(parents=True)
    cfg = load_preset("tiny", sentence_model="sentence-transformers/all-mpnet-base-v2")
    save_checkpoint(build_model(cfg), other / "checkpoints" / "best.safetensors")
    rc, cap = _run(["--run", other, "--shards", shards, "--protocol", "threshold", "--no-progress",
                    "--out", tmp_path / "other"], capsys)
    assert rc == 0 and "not comparable" in caplog.text and "all-mpnet-base-v2" in caplog.text


@pytest.mark.slow
def test_evaluation_reads_each_test_motion_with_its_first_caption(tiny_eval, tmp_path, capsys, monkeypatch):
    """TMR's evaluation pairs a test motion with its first annotation whatever its length: evaluate.py's loader
    is made with min_segment_len EVAL_MIN_SEGMENT_ROWS (1 row), not training's 40 / 24 (tests/test_segments.py
    checks what the loader then gives)."""
    from lavimo.evaluation.encode import EVAL_MIN_SEGMENT_ROWS

    shards, run = tiny_eval
    seen = []
    real = evaluate.make_loader

    def spy(*a, **k):
        seen.append(k.get("min_segment_len"))
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "make_loader", spy)
    rc, cap = _run(["--run", run, "--shards", shards, "--split", "test", "--protocol", "all", "--no-progress",
                    "--out", tmp_path / "eval"], capsys)
    assert rc == 0, cap.err
    assert seen == [EVAL_MIN_SEGMENT_ROWS] and EVAL_MIN_SEGMENT_ROWS == 1

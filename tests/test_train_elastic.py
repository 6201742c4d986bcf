"""Elastic resume (training/elastic.py, dataset/shards/elastic.py): with ``--global-batch-size`` a run stopped on
2 ranks resumes on 1 (and 1 on 2, under torchrun with gloo) in the same epoch, with the same global batches
(by keyid, step by step) as an uninterrupted 1-rank run, and says what is and is not exact."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lavimo.dataset.shards.elastic import rows_of_rank
from lavimo.training.config import TrainConfig
from lavimo.training.elastic import (default_streams, layout_change, loader_layout, resume_statement,
                                     saved_loader_layout)
from tests.fixtures.runs import TINY_FLAGS, metrics_rows, run_train, train_shards

REPO = Path(__file__).resolve().parents[1]
# 32 train samples in 4 shards of 8: global batch 8 = 4 streams x 2 rows, 4 steps per epoch, 2 epochs;
# --shuffle-buffer 1: every epoch is exactly one pass over the shards (each keyid once per epoch); no dropout
# (--freeze-text also keeps the text backbone's own dropout off) and no reconstruction term (a per-rank mean): what
# is left of a rank-count change is float rounding, which Adam carries into the weights
ELASTIC = ["--epochs", "2", "--global-batch-size", "8", "--set", "loader_streams=4", "--shuffle-buffer", "1",
           "--log-keyids", "--set", "dropout=0.0", "--freeze-text", "--set", "recon_weight=0"]


def _global_batches(run: Path) -> dict[int, tuple[int, list[str]]]:
    """step -> (epoch, the global batch's keyids: rank 0's rows, then rank 1's, ...), from every session's
    RUN/debug/keyids-rank{R}.tsv; a step logged again (after a resume) replaces the earlier entry."""
    per_rank: dict[int, dict[int, tuple[int, list[str]]]] = collections.defaultdict(dict)
    for f in sorted((run / "debug").glob("keyids-rank*.tsv")):
        rank = int(f.stem.removeprefix("keyids-rank"))
        for line in f.read_text().splitlines():
            epoch, step, keys = line.split("\t")
            per_rank[int(step)][rank] = (int(epoch), keys.split(","))
    return {step: (ranks[0][0], [k for r in sorted(ranks) for k in ranks[r][1]])
            for step, ranks in sorted(per_rank.items())}


def _torchrun(nproc: int, argv: list) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "train.py"), *map(str, argv)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory) -> tuple[Path, Path]:
    """(shards, an uninterrupted 1-rank elastic run of 2 epochs)."""
    shards = train_shards(request)
    out = tmp_path_factory.mktemp("elastic") / "ref"
    assert run_train(["--shards", shards, "--out", out, *TINY_FLAGS, *ELASTIC]) == 0
    return shards, out


def _check_same_as_reference(run: Path, ref: Path, resumed_world: int, saved_world: int) -> None:
    got, want = _global_batches(run), _global_batches(ref)
    assert sorted(got) == sorted(want) == list(range(8))
    for step in want:
        assert got[step] == want[step], f"step {step}: {got[step]} != {want[step]}"
    for epoch in (0, 1):  # within each epoch, the resumed one included: every sample once, none skipped
        keys = [k for e, ks in got.values() if e == epoch for k in ks]
        assert len(keys) == len(set(keys)) == 32
    assert [int(r["step"]) for r in metrics_rows(run)] == [4, 8]
    state_cfg = json.loads((run / "config.json").read_text())
    assert state_cfg["trainer"]["world_size"] == resumed_world
    assert state_cfg["trainer"]["global_batch"] == 8 and state_cfg["train"]["batch_size"] == 8 // resumed_world
    note = json.loads((run / "run.json").read_text())["sessions"][-1]["resume_exactness"]
    assert f"resume on {resumed_world} rank(s) of a checkpoint written by {saved_world}" in note
    assert "same global sample order" in note and "not exact: dropout" in note
    # the same samples in the same order, the gradient reduced over another number of ranks: the weights differ
    # by rounding (measured: 0.5% of what the last epoch moved them; with dropout streams differing, > 100%)
    diff, moved = _weight_distance(run, ref), _weight_distance(ref, ref, "epoch-0001.safetensors")
    assert diff < 0.05 * moved, (diff, moved)


def _weight_distance(a: Path, b: Path, b_file: str = "last.safetensors") -> float:
    """The L2 distance between run ``a``'s last weights and run ``b``'s ``b_file``, over every tensor."""
    from safetensors.torch import load_file

    wa = load_file(str(a / "checkpoints" / "last.safetensors"))
    wb = load_file(str(b / "checkpoints" / b_file))
    assert wa.keys() == wb.keys()
    return sum(float(((wa[k].double() - wb[k].double()) ** 2).sum()) for k in wa) ** 0.5


@pytest.mark.slow
def test_two_ranks_resume_on_one(reference, tmp_path):
    shards, ref = reference
    out = tmp_path / "run"
    proc = _torchrun(2, ["--shards", shards, "--out", out, *TINY_FLAGS, *ELASTIC, "--max-steps", "6"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert run_train(["--shards", shards, "--out", out, *TINY_FLAGS, *ELASTIC, "--resume"]) == 0
    _check_same_as_reference(out, ref, resumed_world=1, saved_world=2)


@pytest.mark.slow
def test_one_rank_resumes_on_two(reference, tmp_path):
    shards, ref = reference
    out = tmp_path / "run"
    assert run_train(["--shards", shards, "--out", out, *TINY_FLAGS, *ELASTIC, "--max-steps", "2"]) == 0
    proc = _torchrun(2, ["--shards", shards, "--out", out, *TINY_FLAGS, *ELASTIC, "--resume"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "same global sample order" in proc.stderr
    _check_same_as_reference(out, ref, resumed_world=2, saved_world=1)


def test_global_batch_not_divisible_by_the_ranks_is_refused(request, tmp_path, capsys):
    shards = train_shards(request)
    from lavimo.training import elastic
    from lavimo.training.config import load_run_config
    from lavimo.training.loop import DistInfo
    from lavimo.core.errors import SetupError

    cfg = load_run_config("tiny", global_batch_size=9)
    with pytest.raises(SetupError, match="not a multiple of the 2 ranks"):
        elastic.apply_layout(cfg, DistInfo(0, 2), {"train": {"shards": [{}] * 4}}, batch_flag=False)
    with pytest.raises(SetupError, match="give one of --batch-size / --global-batch-size"):
        elastic.apply_layout(cfg, DistInfo(0, 1), {"train": {"shards": [{}] * 4}}, batch_flag=True)
    # train.py: exit 2 and one line
    code = run_train(["--shards", shards, "--out", tmp_path / "r", *TINY_FLAGS, "--global-batch-size", "9",
                      "--set", "loader_streams=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("train.py: error:") and "loader_streams" in err[-1]


def test_rows_of_rank_cover_the_global_batch_once():
    for g, s in ((8, 4), (8, 1), (12, 3), (12, 6), (64, 16)):
        for w in (d for d in range(1, g + 1) if g % d == 0):
            rows = []
            for r in range(w):
                for stream, (lo, hi) in sorted(rows_of_rank(g, s, r, w).items()):
                    assert 0 <= lo < hi <= g // s
                    rows += [stream * (g // s) + i for i in range(lo, hi)]
            assert rows == list(range(g)), (g, s, w)
    with pytest.raises(ValueError):
        rows_of_rank(8, 3, 0, 1)


def test_default_streams_and_statements():
    assert default_streams(64, n_shards=100, world_size=8, num_workers=4) == 32
    assert default_streams(64, n_shards=5, world_size=8, num_workers=4) == 4
    assert default_streams(12, n_shards=100, world_size=1, num_workers=0) == 1
    tc = TrainConfig(batch_size=4, global_batch_size=8, loader_streams=4)
    assert resume_statement(tc, 2, 2).startswith("resume on the same 2 rank(s): exact")
    assert "same global sample order" in resume_statement(tc, 2, 1)
    assert "read by more than one rank" in resume_statement(tc, 1, 8)
    plain = resume_statement(TrainConfig(batch_size=4), 2, 1)
    assert "NOT the same sample order" in plain and "may repeat or be missed" in plain


def test_a_changed_loader_layout_is_not_called_exact():
    """A resume that adds or changes the global batch / loader streams mid-epoch switches loaders: the statement
    says the sample order is not the same (from the checkpoint's layout, else the saved config.json's)."""
    tc = TrainConfig(batch_size=4, global_batch_size=8, loader_streams=4)
    assert loader_layout(TrainConfig(batch_size=4, loader_streams=3)) == (0, 0)
    assert layout_change((8, 4), tc) == "" and layout_change(None, tc) == ""
    assert layout_change((0, 0), tc) == "global batch 0 -> 8, loader streams 0 -> 4"
    assert saved_loader_layout({"loader_layout": [8, 2]}, (0, 0)) == (8, 2)
    assert saved_loader_layout({}, (0, 0)) == (0, 0)
    assert saved_loader_layout({"loader_layout": ["8", 2]}, None) is None  # malformed: unknown
    for saved_ranks in (2, 1):
        mid = resume_statement(tc, saved_ranks, 2, changed_layout=layout_change((8, 2), tc), batch_in_epoch=3)
        assert "NOT the same sample order (loader layout changed: loader streams 2 -> 4;" in mid
        assert "exact (" not in mid and "same global sample order" not in mid
    boundary = resume_statement(tc, 2, 2, changed_layout=layout_change((0, 0), tc), batch_in_epoch=0)
    assert "NOT the same" not in boundary and "loader layout changed at an epoch boundary" in boundary
    assert resume_statement(tc, 2, 2, changed_layout="", batch_in_epoch=3) == resume_statement(tc, 2, 2)


def test_loader_batches_do_not_depend_on_ranks_or_workers(request):
    """The elastic loader's global batches (rank 0's rows, then rank 1's, ...) are the same on 1, 2 and 8 ranks,
    with 0 or 2 worker processes, including 3 streams on 2 ranks (a stream read by both)."""
    from lavimo.dataset.shards.elastic import make_elastic_loader

    shards = train_shards(request)

    def global_batches(streams: int, world: int, workers: int = 0) -> list[list[str]]:
        per_rank = []
        for r in range(world):
            loader = make_elastic_loader(shards, global_batch=24 if streams == 3 else 8, streams=streams,
                                         epoch_batches=3, rank=r, world_size=world, num_workers=workers, seed=5,
                                         image_size=32, num_frames=2, max_motion_len=32, shuffle_buffer=4)
            loader.set_epoch(1)
            per_rank.append([b["keyid"] for b in loader])
        return [[k for r in range(world) for k in per_rank[r][i]] for i in range(3)]

    one = global_batches(4, 1)
    assert one == global_batches(4, 2) == global_batches(4, 8) == global_batches(4, 2, workers=2)
    assert all(len(b) == len(set(b)) == 8 for b in one)
    assert global_batches(3, 1) == global_batches(3, 2)


def test_default_streams_prefer_a_multiple_of_the_ranks():
    assert default_streams(6720, n_shards=39_000, world_size=64, num_workers=8) == 448  # 7 streams per rank
    assert default_streams(64, n_shards=100, world_size=8, num_workers=4) == 32


def test_workers_with_unequal_streams_stay_in_step(request):
    """3 streams on 2 workers (2 and 1): each worker hands over once per global batch, so no stream's parts pile
    up in the main process however long the epoch."""
    from lavimo.dataset.shards.elastic import make_elastic_loader

    loader = make_elastic_loader(train_shards(request), global_batch=6, streams=3, epoch_batches=12, num_workers=2,
                                 image_size=32, num_frames=2, max_motion_len=32, shuffle_buffer=1)
    assert sum(1 for _ in loader) == 12
    assert max(len(q) for q in loader.parts.values()) <= 2 * loader.prefetch_factor

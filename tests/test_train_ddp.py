"""``torchrun --nproc_per_node=2 train.py ... --device cpu`` (gloo): runs, splits the data by rank (disjoint
keyids within every epoch, the same batch count on both ranks) and validates on the whole val split."""

from __future__ import annotations

import collections
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.runs import train_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_ranks_disjoint(request, tmp_path):
    shards = train_shards(request)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # --shuffle-buffer 1: with the loader's default buffer (1000 samples, filled across passes over the rank's
    # shards) a tiny epoch would mix in samples of the next pass; shard order is still shuffled per epoch
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--shards", str(shards), "--preset", "tiny", "--device", "cpu", "--epochs", "2",
           "--out", str(out), "--no-progress", "--threads", "1", "--log-keyids", "--shuffle-buffer", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    seen: dict[int, dict[int, list[str]]] = {r: collections.defaultdict(list) for r in (0, 1)}
    batches: dict[int, collections.Counter] = {r: collections.Counter() for r in (0, 1)}
    for r in (0, 1):
        for line in (out / "debug" / f"keyids-rank{r}.tsv").read_text().splitlines():
            epoch, _step, keys = line.split("\t")
            seen[r][int(epoch)] += keys.split(",")
            batches[r][int(epoch)] += 1
    assert batches[0] == batches[1] == collections.Counter({0: 4, 1: 4})  # 32 samples / (batch 4 x 2 ranks)
    for epoch in (0, 1):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(set(a)) == 16 and len(b) == len(set(b)) == 16
        assert not set(a) & set(b), f"epoch {epoch}: ranks share {sorted(set(a) & set(b))}"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trainer"]["world_size"] == 2 and cfg["trainer"]["global_batch"] == 8
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [4, 8]
    assert all(int(r["val_samples"]) == 8 for r in rows)  # whole val split, gathered from both ranks
    assert (out / "checkpoints" / "last.safetensors").is_file()


@pytest.mark.slow
def test_tampered_shard_stops_the_rank_that_streams_it(request, tmp_path):
    """Two gloo ranks, a train shard with one byte flipped inside a member (same size, the tar still reads): no
    tar is read before training; the rank whose loader streams that shard to its end exits 2 naming it, and the
    run stops (torchrun ends the other rank)."""
    import shutil
    import tarfile

    bad = tmp_path / "shards"
    shutil.copytree(train_shards(request), bad)
    victim = bad / json.loads((bad / "train.json").read_text())["shards"][1]["name"]
    with tarfile.open(victim) as tf:
        member = next(ti for ti in tf if ti.name.endswith(".motion.npy"))
    data = bytearray(victim.read_bytes())
    data[member.offset_data + member.size - 1] ^= 0x01
    victim.write_bytes(bytes(data))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--shards", str(bad), "--preset", "tiny", "--device", "cpu", "--epochs", "1",
           "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1", "--shuffle-buffer", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train.py: error: ")]
    assert lines and lines[0] == (f"train.py: error: {victim}: sha256 differs from the manifest (modified or "
                                  "corrupt), found while streaming it for training; rebuild the shards with "
                                  "build-shards (or pass --no-verify to train on them anyway)"), proc.stderr[-5000:]
    assert "exitcode  : 2" in proc.stderr or "exitcode: 2" in proc.stderr, proc.stderr[-3000:]

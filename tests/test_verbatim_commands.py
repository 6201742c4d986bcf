"""The paper's command lines, run exactly as users copy them (only the required paths added), end to end on a
small synthetic corpus: render-amass --avatars assets/ --lights 4, build-shards, train.py --shards,
evaluate.py --protocol dissimilar. And the dissimilar protocol on KIT-ML's ids, as TMR evaluates it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = REPO.parent / "shared" / "data"
SPLITS = {"train": 6, "val": 2, "test": 4}


def _amass(path: Path, seconds: float, phase: float, fps: float = 60.0) -> None:
    t = np.arange(int(round(seconds * fps))) / fps
    poses = np.zeros((len(t), 156))
    poses[:, 0] = np.pi / 2
    poses[:, 3 * 16 + 2] = -1.1 + 0.6 * np.sin(2 * np.pi * t + phase)
    poses[:, 3 * 17 + 2] = 1.1 + 0.6 * np.sin(2 * np.pi * t + phase)
    trans = np.stack([0.4 * t, np.zeros_like(t), np.full_like(t, 0.95)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, poses=poses, trans=trans, betas=np.zeros(16), gender=np.array("neutral"),
             mocap_framerate=np.array(fps))


def _corpus(root: Path) -> None:
    ann, split_ids, k = {}, {}, 0
    for split, n in SPLITS.items():
        for _ in range(n):
            key = f"{k:06d}"
            seconds = 0.5 + 0.05 * (k % 3)
            _amass(root / "amass" / f"Synth/m{k}_poses.npz", seconds, phase=k)
            ann[key] = {"path": f"Synth/m{k}_poses", "duration": seconds,
                        "annotations": [{"seg_id": f"{key}_0", "text": f"a person waves the arms, variant {k}",
                                         "start": 0.0, "end": seconds}]}
            split_ids.setdefault(split, []).append(key)
            k += 1
    split_ids["nsim_test"] = split_ids["test"][:3]
    (root / "annotations.json").write_text(json.dumps(ann))
    (root / "splits").mkdir()
    for split, ids in split_ids.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def _run(*cmd, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_four_commands_verbatim(tmp_path):
    _corpus(tmp_path)
    a, n = tmp_path / "amass", tmp_path / "annotations.json"
    v, s, r = tmp_path / "videos", tmp_path / "shards", tmp_path / "run"
    p = _run(BIN / "render-amass", "--amass", a, "--annotations", n, "--avatars", "assets/", "--lights", "4",
             "--out", v)
    assert p.returncode == 0, p.stderr[-2000:]
    p = _run(BIN / "build-shards", "--annotations", n, "--amass", a, "--videos", v, "--out", s)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (s / "nsim_test.json").is_file() and "nsim_test: 3 of the 3 ids" in p.stdout
    # the paper preset needs DistilBERT and CLIP weights: without them, one message naming each and --random-init
    p = _run(sys.executable, "train.py", "--shards", s, "--out", tmp_path / "paper_run")
    assert p.returncode == 2 and "--random-init" in p.stderr and "distilbert" in p.stderr.lower()
    assert "Traceback" not in p.stderr and not (tmp_path / "paper_run" / "checkpoints").exists()
    p = _run(sys.executable, "train.py", "--shards", s, "--preset", "tiny", "--epochs", "1", "--out", r)
    assert p.returncode == 0, p.stderr[-2000:]
    p = _run(sys.executable, "evaluate.py", "--run", r, "--shards", s, "--protocol", "dissimilar")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "dissimilar (n=3)" in p.stdout
    res = json.loads((r / "eval" / "test" / "metrics.json").read_text())
    assert list(res) == ["dissimilar"] and res["dissimilar"]["n"] == 3 and res["dissimilar"]["split"] == "nsim_test"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "kitml").is_dir(), reason="../shared/data/kitml (the KIT-ML fixture) is absent")
def test_dissimilar_on_kit_ids_evaluates_all_101(tmp_path, capsys):
    """Shards built from the KIT-ML fixture's ids with synthetic motions and videos standing in: the nsim_test split
    holds all 101 ids of TMR's list, the 3 outside KIT-ML's test split included (TMR evaluates the list as a split
    of its own), and `evaluate.py --protocol dissimilar` scores all of them."""
    import torch

    import evaluate
    from lavimo.dataset.shards.build import BuildConfig, build_shards
    from lavimo.dataset.shards.cli import nsim_clips
    from lavimo.dataset.subsets import read_subset
    from lavimo.model import build_model, load_preset, save_checkpoint
    from tests.fixtures.shard_fixtures import fake_features, make_clip, simple_stats, write_clip_video

    kit = SHARED / "kitml"
    nsim_ids = read_subset(kit / "splits" / "nsim_test.txt")
    test_ids = set(read_subset(kit / "splits" / "test.txt"))
    outside = [k for k in nsim_ids if k not in test_ids]
    assert len(nsim_ids) == 101 and len(outside) == 3
    train_ids = read_subset(kit / "splits" / "train.txt")[:4]
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = []
    for i, keyid in enumerate(train_ids + [k for k in nsim_ids if k not in train_ids]):
        clip = make_clip(keyid, "train" if keyid in train_ids else "test", 10 + i % 5)
        write_clip_video(videos, clip, 32)
        clips.append(clip)
    nsim, note = nsim_clips(clips, kit / "annotations.json")  # ids from the fixture's splits/nsim_test.txt
    assert len(nsim) == 101 and note.startswith("101 of the 101 ids") and {c.keyid for c in nsim} >= set(outside)
    shards = tmp_path / "shards"
    build_shards(clips + nsim, BuildConfig(out=shards, videos=videos, splits=("train", "test", "nsim_test"),
                                           frame_size=32, workers=1),
                 features_fn=lambda c, cfg=None: fake_features(c), stats_fn=simple_stats)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint(build_model(load_preset("tiny")), run / "checkpoints" / "best.safetensors")
    rc = evaluate.main(["--run", str(run), "--shards", str(shards), "--protocol", "dissimilar", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    res = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert res["dissimilar"]["n"] == 101 and "dissimilar (n=101)" in out.out

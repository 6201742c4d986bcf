#!/usr/bin/env python
"""Launch-to-first-step of train.py over many shards: every tar read up front (``--verify-shards full``, the
former default: rank 0 streams each train/val tar through sha256 before training) versus each tar checked while
the loader streams it (``--verify-shards stream``, the default now: up front only the manifests and one stat per
file). Both are measured in the same run, alternating, on the same shard set.

    .venv/bin/python tests/benchmarks/bench_launch.py                  # 1,000 shards, 3 launches per mode
    .venv/bin/python tests/benchmarks/bench_launch.py --quick           # 20 shards, 1 launch per mode

The shard set: a tiny synthetic set (tests/fixtures/tiny_shards.py) whose train tars are copied to ``--shards``
train shards (real files, each with its manifest entry: the up-front check reads ``--shards`` x its size). One
launch = ``python train.py --preset tiny --device cpu --max-steps 1 --log-keyids`` in a fresh process; its
launch-to-first-step is the time from starting the process to the first line of ``RUN/debug/keyids-rank0.tsv``
(written when the first batch enters the first step). Reported: the medians per mode, their ratio (full /
stream), and the up-front verification's own time from train.py's log ("verified N shard files ... in Xs").
The files are in the page cache (just written): on a cluster file system or over http the up-front read costs
what reading the whole set costs, so the ratio here is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=1000, help="train shards in the set")
    p.add_argument("--repeats", type=int, default=3, help="launches per mode (alternating)")
    p.add_argument("--frame-size", type=int, default=64, help="stored JPEG side of the synthetic clips")
    p.add_argument("--samples-per-shard", type=int, default=16)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one launch may take")
    p.add_argument("--quick", action="store_true", help="20 shards, 1 launch per mode (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.shards, args.repeats = min(args.shards, 20), 1
    return args


def build_set(root: Path, n_shards: int, frame_size: int, per_shard: int) -> tuple[Path, int]:
    """A shard set of ``n_shards`` train tars (copies of a tiny set's, renamed, each listed with its sha256)
    and the tiny set's val split; returns (directory, total bytes of the train tars)."""
    from lavimo.core.hashing import sha256_file
    from tests.fixtures.tiny_shards import make_tiny_shards

    base = make_tiny_shards(root / "base", n_train=4 * per_shard, n_val=8, samples_per_shard=per_shard,
                            size=frame_size, frames=(16, 24))
    out = root / "set"
    shutil.copytree(base, out)
    manifest = json.loads((out / "train.json").read_text())
    originals = manifest["shards"]
    for e in originals:
        (out / e["name"]).unlink()
    entries, total, samples = [], 0, 0
    for i in range(n_shards):
        src = originals[i % len(originals)]
        name = f"train-{i:06d}.tar"
        shutil.copyfile(base / src["name"], out / name)
        sha, size = sha256_file(out / name)
        entries.append({**src, "name": name, "sha256": sha, "bytes": size})
        total += size
        samples += int(src.get("count", per_shard))
    manifest.update(shards=entries, num_shards=n_shards, num_samples=samples)
    (out / "train.json").write_text(json.dumps(manifest, indent=1))
    return out, total


def launch(shards: Path, out: Path, mode: str, timeout: float) -> tuple[float, float | None]:
    """(seconds from process start to the first step, the up-front verification's seconds from the log or None)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lavimo.train", "--shards", str(shards), "--out", str(out), "--preset", "tiny",
           "--device", "cpu", "--threads", "1", "--no-progress", "--max-steps", "1", "--batch-size", "4",
           "--epochs", "1", "--log-keyids", "--verify-shards", mode]
    keyids = out / "debug" / "keyids-rank0.tsv"
    err_path = out.parent / f"{out.name}.err"
    with open(err_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        first = None
        while first is None:
            if keyids.is_file() and keyids.stat().st_size > 0:
                first = time.perf_counter() - t0
            elif proc.poll() is not None:
                break
            elif time.perf_counter() - t0 > timeout:
                proc.kill()
                break
            else:
                time.sleep(0.01)
        rc = proc.wait(timeout=timeout)
    log = err_path.read_text()
    if first is None or rc != 0:
        raise RuntimeError(f"train.py --verify-shards {mode} exited {rc} before a step:\n{log[-3000:]}")
    m = (re.search(r"verified \d+ shard files \([\d.]+ MB\) against their manifests' sha256 in ([\d.]+)s", log)
         or re.search(r"checked the manifests' entries and the sizes of \d+ shard files in ([\d.]+)s", log))
    return first, float(m.group(1)) if m else None


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        shards, total = build_set(root, args.shards, args.frame_size, args.samples_per_shard)
        print(f"shard set: {args.shards} train shards, {total / 1e6:.1f} MB (+ val), built in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        times: dict[str, list[float]] = {"full": [], "stream": []}
        verify: dict[str, list[float]] = {"full": [], "stream": []}
        for r in range(args.repeats):
            for mode in (("full", "stream") if r % 2 == 0 else ("stream", "full")):
                out = root / f"run-{mode}-{r}"
                first, v = launch(shards, out, mode, args.timeout)
                times[mode].append(first)
                if v is not None:
                    verify[mode].append(v)
                shutil.rmtree(out, ignore_errors=True)
                print(f"  launch {r + 1} {mode:6s}: first step after {first:.2f}s"
                      + (f" (up-front shard check {v:.2f}s)" if v is not None else ""), flush=True)
    full, stream = statistics.median(times["full"]), statistics.median(times["stream"])
    print(f"launch-to-first-step, median of {args.repeats}: full {full:.2f}s, stream {stream:.2f}s, "
          f"ratio full/stream {full / stream:.2f}x", flush=True)
    if verify["full"] and verify["stream"]:
        vf, vs = statistics.median(verify["full"]), statistics.median(verify["stream"])
        print(f"up-front shard check alone, median: full {vf:.3f}s (every tar read), stream {vs:.3f}s (manifest "
              f"entries + one stat per file), ratio full/stream {vf / max(vs, 1e-3):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

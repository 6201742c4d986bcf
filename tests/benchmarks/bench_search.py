#!/usr/bin/env python
"""Benchmark search/: query latency, video-query latency, index build throughput, index memory.

1. Text query over an index of 100k motions (synthetic L2-normalised latents; the size is what matters for the
   matrix product): encode the text + exact top-5, median and p95 over the repeats after warm-up
   (target median <= 50 ms). The search alone is printed too, and in the same loop, on the same encoded query and
   index, the naive exact search it is compared with (``np.argsort(-(motion @ q))[:5]``, a full sort):
   ``ratio naive / search``.
2. Video query on a 10 s 1280x720 30 fps H.264 file (ffmpeg testsrc, x264 defaults: a keyframe every 250
   frames): ``encode_video`` with each decoding mode of search/video.py - ``select`` (one ffmpeg pass with a
   select filter over the window), ``seek`` (one ffmpeg per frame, ``-ss`` before ``-i``, 2 at a time) and
   ``auto`` (the default) - median and p95 (target <= 1.5 s), against a naive baseline in the same run: one
   ffmpeg decoding every frame of the file, keeping the same frames, then ``encode_video`` on them
   (``ratio naive / <mode>``, and ``ratio <mode> / auto`` between the modes).
3. Index build throughput on a tiny shard set: ``build_index`` (batches of 32) vs a naive baseline that encodes
   one motion at a time through the public API (``encode_motion``, ``encode_video`` on its frames,
   ``encode_text`` per clip) in the same run (target >= 10x); the same build decoding in worker processes
   (``workers=``; ``ratio parallel / serial build``), and where each build's time went (decode, encode, write).
4. Memory of a 100k index: the arrays in memory (motion + video + 3 captions per motion) and the files on disk;
   ``Index.save`` / ``Index.load`` (checksummed, validated) against a plain baseline in the same run: ``np.save``
   of the same arrays, each in its own uncompressed .npy, + ``json.dump`` of the entries, and reading them back
   (``ratio save / plain``, ``ratio load / plain``: the cost of the checks).

5. Start-up to first result and batch mode (:func:`bench_startup`): one ``lavimo-search query`` process per query
   (the baseline: before batch mode, the only way) against ``query --server`` and a refused bad input; 1,000 text
   queries through one ``batch`` process, as queries/s against one process per query (``--startup-only`` runs
   this part alone).

The model is the ``demo`` preset's architecture with random weights (``--preset``; ``--checkpoint`` for a trained
one): latency does not depend on the weights.

    .venv/bin/python tests/benchmarks/bench_search.py [--quick] [--n 100000] [--repeats 20] [--startup-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stats(times: list[float]) -> tuple[float, float]:
    t = sorted(times)
    return statistics.median(t), t[min(len(t) - 1, int(round(0.95 * (len(t) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--n", type=int, default=None, help="index size for the query benchmark (default 100000)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--preset", default=None, help="model preset (default demo; tiny with --quick)")
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of random weights")
    p.add_argument("--stats", type=Path, help="stats for a checkpoint without preprocessing")
    p.add_argument("--startup-only", action="store_true", help="only part 5: start-up to first result and batch")
    args = p.parse_args()
    n = args.n or (5000 if args.quick else 100_000)
    reps = args.repeats or (5 if args.quick else 20)
    preset = args.preset or ("tiny" if args.quick else "demo")

    import torch

    from lavimo.dataset.shards.stream import load_stats
    from tests.fixtures.tiny_shards import make_tiny_shards
    from lavimo.model import build_model, load_preset, save_checkpoint
    from lavimo.search.index import Entry, Index, build_index, shard_items
    from lavimo.search.model import load, preprocess_record
    from lavimo.search.video import ffmpeg_exe

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    shards = make_tiny_shards(tmp / "shards", n_train=2, n_val=0, n_test=16 if args.quick else 96, n_classes=8,
                              frames=(20, 40), size=64, samples_per_shard=32)
    if args.checkpoint:
        r = load(args.checkpoint, stats=args.stats)
        what = str(args.checkpoint)
    else:
        cfg = load_preset(preset, random_init=True)
        torch.manual_seed(0)
        ckpt = save_checkpoint(build_model(cfg), tmp / "model.safetensors",
                               extra={"preprocess": preprocess_record(cfg, *load_stats(shards))})
        r = load(ckpt)
        what = f"preset {preset} (random weights)"
    c = r.latent_dim
    print(f"model: {what}; latent {c}; {r.preprocess['num_frames']} frames of {r.preprocess['image_size']} px; "
          f"torch threads {torch.get_num_threads()}")
    if args.startup_only:
        bench_startup(r, shards, tmp, args.quick)
        return 0

    # 1. text query over n motions ---------------------------------------------------------------------------
    rng = np.random.default_rng(0)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, c), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    index = Index([Entry(f"{i:06d}", [], {}) for i in range(n)], unit(n), unit(n), np.ones(n, bool),
                  np.zeros((0, c), np.float32), np.zeros(0, np.int64), {})
    queries = [f"a person walks forward and turns {i} times" for i in range(reps + 3)]
    full, search_only, naive_only = [], [], []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        lat = r.encode_text([q])
        t1 = time.perf_counter()
        got = index.search(lat, 5)
        t2 = time.perf_counter()
        # the naive baseline: the same encoded query over the same index, a full sort of every score
        scores = index.vectors("motion") @ np.asarray(lat, np.float32).reshape(-1)
        naive = np.argsort(-scores)[:5]
        t3 = time.perf_counter()
        if not np.allclose([v for _, v in got], scores[naive]):  # the same top-5 (by score: ties may swap)
            raise SystemExit(f"text query {i}: search top-5 {got} != naive {naive.tolist()}")
        if i >= 3:
            full.append(t2 - t0)
            search_only.append(t2 - t1)
            naive_only.append(t3 - t2)
    med, p95 = stats(full)
    smed, sp95 = stats(search_only)
    nmed, np95 = stats(naive_only)
    print(f"text query over {n} motions: median {med * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms "
          f"(search alone: median {smed * 1e3:.2f} ms, p95 {sp95 * 1e3:.2f} ms); target <= 50 ms: "
          f"ratio target / median {0.05 / med:.2f} (a fixed target, not a same-run baseline)")
    print(f"  naive exact search (argsort of all {n} scores, same query and index): median {nmed * 1e3:.2f} ms, "
          f"p95 {np95 * 1e3:.2f} ms; ratio naive / search {nmed / smed:.2f}x (search alone, same top-5); "
          f"end to end (encode + search) {(med - smed + nmed) / med:.2f}x")

    # 2. video query on a 10 s 1280x720 30 fps file -----------------------------------------------------------
    dur = 4 if args.quick else 10
    video = tmp / "testsrc.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=1280x720:rate=30:"
                    f"duration={dur}", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=True)
    vreps = 3 if args.quick else 7
    if r.has_video:
        from lavimo.search.video import frame_numbers, probe

        def naive_encode(path: Path) -> np.ndarray:
            """The naive baseline: decode every frame of the file in one ffmpeg, keep the query's frames."""
            info = probe(path)
            keep = frame_numbers(info.frames_in(0.0, None), r.preprocess["num_frames"])
            want = set(int(j) for j in keep)
            size = info.width * info.height * 3
            got: dict[int, np.ndarray] = {}
            proc = subprocess.Popen([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-f", "rawvideo",
                                     "-pix_fmt", "rgb24", "-"], stdout=subprocess.PIPE)
            j = 0
            while True:
                buf = proc.stdout.read(size)
                if len(buf) < size:
                    break
                if j in want:
                    got[j] = np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
                j += 1
            proc.stdout.close()
            if proc.wait() != 0 or not got:
                raise SystemExit(f"naive full decode of {path} failed (ffmpeg exit {proc.returncode})")
            last = got[min(got)]
            frames = []
            for i in keep:  # a frame past the decoded end: the last one that exists (as read_frames does)
                last = got.get(int(i), last)
                frames.append(last)
            return r.encode_video(np.stack(frames))

        vmed: dict[str, float] = {}
        for mode in ("naive", "select", "seek", "auto"):
            run = (lambda: naive_encode(video)) if mode == "naive" else (lambda: r.encode_video(video, mode=mode))
            run()  # warm-up
            times = []
            for _ in range(vreps):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            med, p95 = stats(times)
            vmed[mode] = med
            what = "(full decode, same file)" if mode == "naive" else f"({dur} s 1280x720 30 fps H.264)"
            print(f"video query {mode:<6} {what}: median {med:.3f} s, p95 {p95:.3f} s; "
                  f"target <= 1.5 s: ratio target / median {1.5 / med:.2f}")
        print("  video query ratios (medians, same run): "
              + ", ".join(f"naive / {m} {vmed['naive'] / vmed[m]:.2f}x" for m in ("select", "seek", "auto"))
              + "; " + ", ".join(f"{m} / auto {vmed[m] / vmed['auto']:.2f}x" for m in ("select", "seek")))
        from lavimo.search.video import read_frames

        t0 = time.perf_counter()
        read_frames(video, r.preprocess["num_frames"])
        print(f"  of which decoding {r.preprocess['num_frames']} frames (auto): {time.perf_counter() - t0:.3f} s")
    else:
        print("video query: this model has no video encoder (modalities tm)")

    # 3. index build throughput vs one motion at a time -------------------------------------------------------
    t0 = time.perf_counter()
    built, rep = build_index(r, tmp / "index", shards=shards, splits=["test"], previews=False, progress=False,
                             batch_size=32)
    t_batch = time.perf_counter() - t0
    failed: list[str] = []
    t0 = time.perf_counter()
    naive_n = 0
    for it in shard_items(shards, ["test"], r, failed):  # the same decoded samples, each encoded on its own
        r.encode_motion_batch([it.motion])
        if it.video is not None and r.has_video:
            r.encode_video_batch(it.video[None])
        r.encode_text(it.captions)
        naive_n += 1
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = sum(1 for _ in shard_items(shards, ["test"], r, failed))  # reading + decoding alone
    t_decode = time.perf_counter() - t0
    a, b = len(built) / t_batch, naive_n / t_naive
    print(f"  reading + decoding the samples alone (no model): {decoded} in {t_decode:.2f} s = "
          f"{decoded / t_decode:.1f} samples/s")
    print(f"index build: {len(built)} motions in {t_batch:.2f} s = {a:.1f} motions/s (batches of 32); naive one at "
          f"a time: {naive_n} in {t_naive:.2f} s = {b:.1f} motions/s; ratio build / naive {a / b:.2f}x "
          f"(target >= 10x)")
    print(f"  where the build's time went: {rep.summary()}")
    workers = max(2, min(4, os.cpu_count() or 1))
    t0 = time.perf_counter()
    built_p, rep_p = build_index(r, tmp / "index-par", shards=shards, splits=["test"], previews=False,
                                 progress=False, batch_size=32, workers=workers)
    t_par = time.perf_counter() - t0
    ap = len(built_p) / t_par
    print(f"index build, decoding in {workers} worker processes: {len(built_p)} motions in {t_par:.2f} s = "
          f"{ap:.1f} motions/s; ratio parallel / serial build {ap / a:.2f}x, parallel / naive {ap / b:.2f}x")
    print(f"  where the parallel build's time went: {rep_p.summary()} (decode = waiting for the workers)")

    # 4. memory of an n-motion index ---------------------------------------------------------------------------
    k = 3 * n
    mem = 2 * n * c * 4 + k * c * 4 + k * 8 + n
    entries = [Entry(f"{i:06d}", [f"caption {i} a", f"caption {i} b", f"caption {i} c"], {"kind": "features",
               "path": f"/data/new_joint_vecs/{i:06d}.npy"}) for i in range(n)]
    motion, video, text = index.vectors("motion"), index.vectors("video"), unit(k)
    big = Index(entries, motion, video, np.ones(n, bool), text, np.repeat(np.arange(n), 3),
                {"checkpoint_sha256": "0" * 64})
    t0 = time.perf_counter()
    big.save(tmp / "big", "exact")
    t_save = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = Index.load(tmp / "big", "0" * 64)
    t_load = time.perf_counter() - t0
    del loaded
    # the plain baseline: the same arrays, uncompressed .npy files, and the entries as json, no checks
    import json

    plain = tmp / "plain"
    plain.mkdir()
    arrays = {"keyid": np.array([e.keyid for e in entries], dtype=str), "motion": motion, "video": video,
              "has_video": np.ones(n, bool), "text": text, "text_owner": np.repeat(np.arange(n), 3)}
    t0 = time.perf_counter()
    for name, arr in arrays.items():
        np.save(plain / f"{name}.npy", arr)
    with open(plain / "entries.json", "w", encoding="utf-8") as fh:
        json.dump([{"keyid": e.keyid, "captions": e.captions, "source": e.source, "preview": e.preview}
                   for e in entries], fh)
    t_psave = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = {name: np.load(plain / f"{name}.npy") for name in arrays}
    with open(plain / "entries.json", encoding="utf-8") as fh:
        rows = json.load(fh)
    t_pload = time.perf_counter() - t0
    assert len(rows) == n and back["motion"].shape == (n, c)
    del back, rows
    disk_npz = sum(f.stat().st_size for f in (tmp / "big").glob("*.npy"))
    disk_json = (tmp / "big" / "records.sqlite").stat().st_size
    print(f"memory of a {n}-motion index (latent {c}, 3 captions each): arrays {mem / 2**20:.1f} MiB in memory "
          f"(motion {n * c * 4 / 2**20:.1f} + video {n * c * 4 / 2**20:.1f} + captions {k * c * 4 / 2**20:.1f}); "
          f"on disk .npy {disk_npz / 2**20:.1f} MiB + records.sqlite {disk_json / 2**20:.1f} MiB; save {t_save:.2f} s, "
          f"load {t_load:.2f} s")
    print(f"  index save / load vs plain np.save + json.dump (same arrays and entries, no checksum or checks): "
          f"save {t_save:.2f} s vs {t_psave:.2f} s, ratio save / plain {t_save / t_psave:.2f}x; load {t_load:.2f} s "
          f"vs {t_pload:.2f} s, ratio load / plain {t_load / t_pload:.2f}x")
    bench_startup(r, shards, tmp, args.quick)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _cli_wall(args: list[str], ok: tuple[int, ...] = (0,)) -> float:
    """Wall seconds of one ``lavimo-search`` process (interpreter start, imports, model load, the query)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lavimo.search.cli", *args], capture_output=True, text=True,
                          timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise SystemExit(f"lavimo-search {' '.join(args[:1])}: exit {proc.returncode}: {proc.stderr[-500:]}")
    return wall


def bench_startup(r, shards: Path, tmp: Path, quick: bool) -> None:
    """5. Start-up to first result, and many queries for one load, on a small index of the shards' test clips.

    - before: one ``lavimo-search query --text`` process per query (the only way before batch mode): its wall
      time is the start-up to first result (imports + model load + index load + one query);
    - ``query --server URL``: one process per query against a running ``serve`` (no model load in the process);
    - a bad input (an empty text): the wall time to its exit-2 refusal (checked before torch is imported);
    - ``batch``: 1,000 text queries (100 with --quick, one process of each kind) in one process (load included)
      and in-process (``run_batch`` alone), as queries/s against the one-process-per-query rate of the same run."""
    import socket
    import threading

    import uvicorn

    from lavimo.search.batch import check_all, run_batch
    from lavimo.search.index import build_index
    from lavimo.search.server import create_app

    idx_dir = tmp / "startup-index"
    index, _ = build_index(r, idx_dir, shards=shards, splits=["test"], previews=False, progress=False)
    reps = 1 if quick else 5
    nq = 100 if quick else 1000
    texts = [f"a person walks forward and turns {i} times" for i in range(max(reps, nq))]
    ckpt = ["--checkpoint", str(r.checkpoint)]
    before = [_cli_wall(["query", "--index", str(idx_dir), *ckpt, "--text", texts[i], "--json"]) for i in range(reps)]
    bad = [_cli_wall(["query", "--index", str(idx_dir), *ckpt, "--text", " "], ok=(2,)) for _ in range(reps)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(r, index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        remote = [_cli_wall(["query", "--server", f"http://127.0.0.1:{port}", "--text", texts[i], "--json"])
                  for i in range(reps)]
    finally:
        server.should_exit = True
        thread.join(10)
    qfile = tmp / "queries.txt"
    qfile.write_text("\n".join(texts[:nq]) + "\n", encoding="utf-8")
    batch_wall = _cli_wall(["batch", "--index", str(idx_dir), *ckpt, "--queries", str(qfile), "--out",
                            str(tmp / "results.jsonl")])
    t0 = time.perf_counter()
    done, failed = run_batch(r, index, check_all(qfile), tmp, tmp / "results-inproc.jsonl")
    inproc = time.perf_counter() - t0
    assert done == nq and not failed
    b, rm, bd = statistics.median(before), statistics.median(remote), statistics.median(bad)
    per_query = 1.0 / b  # queries/s with one process per query
    print(f"start-up to first result (median of {reps}): one 'query' process {b:.2f} s; 'query --server' "
          f"{rm:.2f} s, ratio before / server {b / rm:.1f}x; a bad input refused in {bd:.2f} s "
          f"(ratio query / refusal {b / bd:.1f}x)")
    print(f"batch of {nq} text queries: one 'batch' process {batch_wall:.2f} s (load included) = "
          f"{nq / batch_wall:.1f} queries/s; in-process run_batch {nq / inproc:.1f} queries/s; one process per "
          f"query {per_query:.2f} queries/s: ratio batch / per-process {nq / batch_wall / per_query:.0f}x "
          f"(in-process {nq / inproc / per_query:.0f}x)")


if __name__ == "__main__":
    sys.exit(main())

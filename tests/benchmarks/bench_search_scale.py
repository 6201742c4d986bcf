#!/usr/bin/env python
"""Benchmark the search index at library scale: N synthetic unit latents of the model's width (256).

The latents are of a low intrinsic dimension (a 32-dimensional Gaussian through a fixed random 256 x 32 map,
plus 30 % isotropic noise, normalised), as a trained model's are; queries are other draws near stored latents.
(On i.i.d. uniform vectors no approximate index reaches a useful recall: their neighbours are barely nearer
than any other vector.) For each of ``--ann exact`` and ``--ann ivfpq`` (docs/search.md) it prints: build time
(``Index.save``: files, IVF-PQ training and the recall measurement), the files' size, load time
(``Index.load``), the process's peak RSS, search-only median and p95 over the queries, recall@10 against exact
search, and ``ratio baseline / <kind>``: the median of today's exact path measured in the same run, on the same
queries (the latents float32 in memory, ``latents @ q`` and a partial sort), over the index's median. faiss'
exhaustive kernel (``faiss.knn``, what IndexFlatIP runs) is printed too.

    .venv/bin/python tests/benchmarks/bench_search_scale.py [--quick] [--n 1000000] [--queries 200]
        [--kinds exact,ivfpq] [--tmp DIR] [--in-memory-gib 4] [--baseline-queries Q] [--text-e2e]

``--text-e2e``: the end-to-end text query on each index built: a model of the ``demo`` preset (``tiny`` with
--quick) with random weights (its text backbone the bundled MiniLM; nothing downloads) encodes each of ``--queries``
different short English texts with the product's ``Retriever.encode_text`` and the index searches it
(``Index.search``, top 10), timed per query after 3 warm-up queries: median and p95 of encode, search and total.

Large N (10 M of 256: 10 GB of float32): the latents are generated in chunks (the same generator and draws, so
the figures compare with smaller runs) into a float32 ``.npy`` memory map in ``--tmp`` when they exceed
``--in-memory-gib``, and the index is built from that map (``Index`` takes it without a copy); the ground truth
is a chunked brute force over it. The baseline is then today's exact product over the memory-mapped latents
(page cache, disk beyond it), on the first ``--baseline-queries`` queries, and also over the first 1 M latents
in memory (printed separately, so the two are not confused). docs/benchmarks.md has the 100 k, 1 M and 10 M runs.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def stats(times: list[float]) -> tuple[float, float]:
    t = sorted(times)
    return statistics.median(t), t[min(len(t) - 1, int(round(0.95 * (len(t) - 1))))]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latents(n: int, c: int, rng: np.random.Generator, basis: np.ndarray, out: np.ndarray | None = None,
            chunk: int = 1 << 17) -> np.ndarray:
    """(n, c) float32 unit latents, into ``out`` (e.g. a memory map) or a new array; drawn chunk by chunk."""
    out = np.empty((n, c), np.float32) if out is None else out
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x = rng.standard_normal((b - a, basis.shape[1]), dtype=np.float32) @ basis.T
        x += 0.3 * rng.standard_normal((b - a, c), dtype=np.float32) * np.sqrt(basis.shape[1] / c)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_parts() -> tuple[float, float]:
    """The process's resident memory now, MiB: anonymous, file-backed (memory-mapped pages); (0, 0) off Linux."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0


PEAK = [0.0, 0.0]  # the largest RssAnon and RssFile seen (sampled every 0.2 s by a daemon thread), MiB


def _sample_rss() -> None:
    while True:
        a, f = rss_parts()
        PEAK[0], PEAK[1] = max(PEAK[0], a), max(PEAK[1], f)
        time.sleep(0.2)


def rss_now() -> str:
    a, f = rss_parts()
    return f"RssAnon {a:.0f} MiB, RssFile {f:.0f} MiB now; sampled peaks RssAnon {PEAK[0]:.0f} MiB, RssFile {PEAK[1]:.0f} MiB"


def baseline(m: np.ndarray, x: np.ndarray) -> float:
    """Today's exact path, timed: float32 latents (in memory or memory-mapped), one product, a partial sort."""
    t = time.perf_counter()
    s = m @ x
    top = np.argpartition(-s, 9)[:10]
    top[np.argsort(-s[top])]
    return time.perf_counter() - t


def query_texts(n: int) -> list[str]:
    """``n`` different short English motion queries (templates over subjects, actions and manners)."""
    who = ["a person", "a man", "a woman", "someone", "a child", "an old man", "a dancer", "an athlete"]
    act = ["walks forward", "runs in a circle", "jumps up", "waves the right hand", "sits down", "kicks a ball",
           "turns around", "climbs stairs", "throws an object", "crouches", "stretches both arms", "bows",
           "spins on one foot", "steps to the left", "picks something up", "claps"]
    how = ["slowly", "quickly", "twice", "then stops", "happily", "carefully"]
    out = [f"{w} {a}" for a in act for w in who] + [f"{w} {a} {h}" for h in how for a in act for w in who]
    if n > len(out):
        raise SystemExit(f"--text-e2e: at most {len(out)} different query texts, asked for {n}")
    return out[:n]


def text_e2e(r, ix, n: int) -> None:
    """Time ``n`` text queries end to end on the opened index ``ix``: ``r.encode_text`` then ``ix.search`` (top 10)."""
    texts = query_texts(n + 3)
    enc, srch, total = [], [], []
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        lat = r.encode_text([text])
        t1 = time.perf_counter()
        got = ix.search(lat[0], 10)
        t2 = time.perf_counter()
        if len(got) != 10:
            raise SystemExit(f"text query {i}: {len(got)} results, not 10")
        if i >= 3:  # the first three warm the encoder up
            enc.append(t1 - t0)
            srch.append(t2 - t1)
            total.append(t2 - t0)
    (em, ep), (sm, sp), (tm, tp) = stats(enc), stats(srch), stats(total)
    print(f"  text end to end ({len(total)} different texts, encode_text + search top 10): median "
          f"{tm * 1e3:.1f} ms p95 {tp * 1e3:.1f} ms (encode median {em * 1e3:.1f} ms p95 {ep * 1e3:.1f} ms; "
          f"search median {sm * 1e3:.2f} ms p95 {sp * 1e3:.2f} ms); target <= 50 ms: ratio target / median "
          f"{0.05 / tm:.2f} (a fixed target, not a same-run baseline)", flush=True)


def load_retriever(preset: str, tmp: Path):
    """A :class:`Retriever` of ``preset`` with random weights (seed 0), its preprocessing from tiny shards."""
    import torch

    from lavimo.dataset.shards.stream import load_stats
    from lavimo.model import build_model, load_preset, save_checkpoint
    from lavimo.search.model import load, preprocess_record
    from tests.fixtures.tiny_shards import make_tiny_shards

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    shards = make_tiny_shards(tmp / "shards", n_train=2, n_val=0, n_test=4, n_classes=4, frames=(20, 30), size=32,
                              samples_per_shard=8)
    cfg = load_preset(preset, random_init=True)
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(cfg), tmp / "model.safetensors",
                           extra={"preprocess": preprocess_record(cfg, *load_stats(shards))})
    r = load(ckpt)
    print(f"model for --text-e2e: preset {preset} (random weights), latent {r.latent_dim}, torch threads "
          f"{torch.get_num_threads()}", flush=True)
    return r


def measure_kind(kind: str, d: Path, n: int, c: int, m: np.ndarray, q: np.ndarray, truth: np.ndarray,
                 nb: int, retriever=None) -> None:
    """Build, load and search an index of ``kind`` in ``d``; print the figures (module docstring)."""
    from lavimo.search.index import Entry, Index

    no_caps: list[str] = []
    no_source: dict = {}
    entries = [Entry(f"M{i:08d}", no_caps, no_source) for i in range(n)]  # shared empties: records only
    empty = np.zeros((0, c), np.float32)
    index = Index(entries, m, empty, np.zeros(n, bool), empty, np.zeros(0, np.int64),
                  {"checkpoint_sha256": "0" * 64, "latent_dim": c})
    del entries
    t = time.perf_counter()
    index.save(d, kind)
    t_build = time.perf_counter() - t
    del index
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"index {kind}: built in {t_build:.1f} s, peak RSS so far {peak_mib():.0f} MiB ({rss_now()})", flush=True)
    anon0 = rss_parts()[0]
    t = time.perf_counter()
    ix = Index.load(d)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    ix.search(q[0], 10)
    t_first = time.perf_counter() - t
    times, base, rec = [], [], []
    for x, want in zip(q, truth):
        t = time.perf_counter()
        got = ix.search(x, 10)
        times.append(time.perf_counter() - t)
        rec.append(len({i for i, _ in got} & set(want.tolist())) / 10)
    for x in q[:nb]:
        base.append(baseline(m, x))
    print(f"  the opened index after the searches: RssAnon +{rss_parts()[0] - anon0:.0f} MiB since before its load "
          "(faiss' structure, rebuilt at the first search; the memory-mapped latents' pages are in RssFile)")
    med, p95 = stats(times)
    b_med, b_p95 = stats(base)
    print(f"index {kind}: build {t_build:.1f} s, files {size / 2**20:.1f} MiB, load {t_load * 1e3:.1f} ms, "
          f"first search {t_first * 1e3:.1f} ms, search median {med * 1e3:.2f} ms p95 {p95 * 1e3:.2f} ms, "
          f"recall@10 {np.mean(rec):.3f} (stored at build: {ix.ann().get('recall_at_10', 1.0)}), "
          f"peak RSS so far {peak_mib():.0f} MiB ({rss_now()}); {ix.ann()}", flush=True)
    where = "memory-mapped" if isinstance(m, np.memmap) else "in memory"
    print(f"  baseline exact numpy ({where}, {len(base)} of the queries): median {b_med * 1e3:.2f} ms p95 "
          f"{b_p95 * 1e3:.2f} ms; ratio baseline / {kind} {b_med / med:.2f}x (search median)", flush=True)
    if n > 1_000_000:
        sub = np.array(m[:1_000_000])  # the first 1 M latents in memory: today's path at 1 M, same queries
        b1 = [baseline(sub, x) for x in q[:max(nb, 50)]]
        del sub
        print(f"  baseline exact numpy on the first 1 M latents (in memory, {len(b1)} queries): median "
              f"{stats(b1)[0] * 1e3:.2f} ms p95 {stats(b1)[1] * 1e3:.2f} ms; ratio (1 M baseline) / {kind} at {n} "
              f"{stats(b1)[0] / med:.2f}x", flush=True)
    if retriever is not None:
        text_e2e(retriever, ix, len(q))
    del ix


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--n", type=int, default=None, help="latents in the index (default 20000; --quick 4000)")
    p.add_argument("--dim", type=int, default=None, help="latent width (default 256; the model's with --text-e2e)")
    p.add_argument("--queries", type=int, default=None, help="timed queries (default 200; --quick 30)")
    p.add_argument("--kinds", default="exact,ivfpq")
    p.add_argument("--tmp", default=None, help="where the indexes (and a latents memory map) go (default: system)")
    p.add_argument("--in-memory-gib", type=float, default=4.0,
                   help="larger generated latents go to a float32 memory map in --tmp (default 4)")
    p.add_argument("--baseline-queries", type=int, default=None,
                   help="queries the exact baseline and faiss.knn are timed on (default: all; 20 when memory-mapped)")
    p.add_argument("--text-e2e", action="store_true",
                   help="also time text queries end to end (encode + search) on each index (module docstring)")
    args = p.parse_args()
    n = args.n or (4000 if args.quick else 20000)
    nq = args.queries or (30 if args.quick else 200)

    import faiss

    from lavimo.search.vectors import exact_top

    threading.Thread(target=_sample_rss, daemon=True).start()

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        r = load_retriever("tiny" if args.quick else "demo", Path(tmp)) if args.text_e2e else None
        c = args.dim or (r.latent_dim if r is not None else 256)
        if r is not None and r.latent_dim != c:
            raise SystemExit(f"--text-e2e: the model's latent is {r.latent_dim}, --dim {c}")
        rng = np.random.default_rng(0)
        basis = rng.standard_normal((c, 32)).astype(np.float32)
        t0 = time.perf_counter()
        mapped = n * c * 4 > args.in_memory_gib * 2**30
        out = np.lib.format.open_memmap(Path(tmp) / "latents.npy", "w+", np.float32, (n, c)) if mapped else None
        m = latents(n, c, rng, basis, out)
        if mapped:
            m.flush()
        near = m[np.sort(rng.choice(n, nq, replace=False))] if mapped else m[rng.choice(n, nq, replace=False)]
        near = near + 0.15 * rng.standard_normal((nq, c), dtype=np.float32) / np.sqrt(c) * 4
        q = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)  # float32, as the model's
        nb = min(nq, args.baseline_queries or (20 if mapped else nq))
        print(f"{n} latents of {c} (synthetic, intrinsic dimension 32; {'memory-mapped float32 in ' + tmp if mapped else 'in memory'}), "
              f"{nq} queries; generated in {time.perf_counter() - t0:.1f} s; faiss {faiss.__version__}, "
              f"{faiss.omp_get_max_threads()} threads", flush=True)
        t0 = time.perf_counter()
        truth = exact_top(m, q, 10)
        print(f"ground truth (chunked brute force, {nq} queries) in {time.perf_counter() - t0:.1f} s", flush=True)

        fk, fb = [], []
        for x in q[:min(nb, 5) if mapped else nb]:  # faiss.knn scans on one thread: seconds a query at 10 M
            t = time.perf_counter()
            faiss.knn(x[None], m, 10, metric=faiss.METRIC_INNER_PRODUCT)
            fk.append(time.perf_counter() - t)
            fb.append(baseline(m, x))
        print(f"faiss.knn exact (IndexFlatIP's kernel, {len(fk)} queries): median {stats(fk)[0] * 1e3:.2f} ms vs baseline "
              f"exact numpy {stats(fb)[0] * 1e3:.2f} ms; ratio baseline / faiss.knn {stats(fb)[0] / stats(fk)[0]:.2f}x",
              flush=True)
        for kind in args.kinds.split(","):
            d = Path(tmp) / kind
            measure_kind(kind, d, n, c, m, q, truth, nb, r)
            shutil.rmtree(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

The issue asks for 10 M; this shared 2-core host ran it at 1 M at most (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def stats(times: list[float]) -> tuple[float, float]:
    t = sorted(times)
    return statistics.median(t), t[min(len(t) - 1, int(round(0.95 * (len(t) - 1))))]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latents(n: int, c: int, rng: np.random.Generator, basis: np.ndarray, chunk: int = 1 << 17) -> np.ndarray:
    out = np.empty((n, c), np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x = rng.standard_normal((b - a, basis.shape[1]), dtype=np.float32) @ basis.T
        x += 0.3 * rng.standard_normal((b - a, c), dtype=np.float32) * np.sqrt(basis.shape[1] / c)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--n", type=int, default=None, help="latents in the index (default 20000; --quick 4000)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=None, help="timed queries (default 200; --quick 30)")
    p.add_argument("--kinds", default="exact,ivfpq")
    args = p.parse_args()
    n = args.n or (4000 if args.quick else 20000)
    nq = args.queries or (30 if args.quick else 200)
    c = args.dim

    import faiss

    from lavimo.search.index import Entry, Index
    from lavimo.search.vectors import exact_top

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((c, 32)).astype(np.float32)
    t0 = time.perf_counter()
    m = latents(n, c, rng, basis)
    near = m[rng.choice(n, nq, replace=False)] + 0.15 * rng.standard_normal((nq, c), dtype=np.float32) / np.sqrt(c) * 4
    q = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)  # float32, as the model's
    truth = exact_top(m, q, 10)
    print(f"{n} latents of {c} (synthetic, intrinsic dimension 32), {nq} queries; generated in "
          f"{time.perf_counter() - t0:.1f} s; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")

    def baseline(x: np.ndarray) -> float:
        """Today's exact path, timed: float32 latents in memory, one product and a partial sort."""
        t = time.perf_counter()
        s = m @ x
        top = np.argpartition(-s, 9)[:10]
        top[np.argsort(-s[top])]
        return time.perf_counter() - t

    fk, fb = [], []
    for x in q:
        t = time.perf_counter()
        faiss.knn(x[None], m, 10, metric=faiss.METRIC_INNER_PRODUCT)
        fk.append(time.perf_counter() - t)
        fb.append(baseline(x))
    print(f"faiss.knn exact (IndexFlatIP's kernel): median {stats(fk)[0] * 1e3:.2f} ms vs baseline exact numpy "
          f"{stats(fb)[0] * 1e3:.2f} ms; ratio baseline / faiss.knn {stats(fb)[0] / stats(fk)[0]:.2f}x")

    entries = [Entry(f"M{i:08d}", [], {}) for i in range(n)]
    empty = np.zeros((0, c), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            d = Path(tmp) / kind
            index = Index(entries, m, empty, np.zeros(n, bool), empty, np.zeros(0, np.int64),
                          {"checkpoint_sha256": "0" * 64, "latent_dim": c})
            t = time.perf_counter()
            index.save(d, kind)
            t_build = time.perf_counter() - t
            del index
            size = sum(f.stat().st_size for f in d.iterdir())
            t = time.perf_counter()
            ix = Index.load(d)
            t_load = time.perf_counter() - t
            t = time.perf_counter()
            ix.search(q[0], 10)
            t_first = time.perf_counter() - t
            times, base, rec = [], [], []
            for x, want in zip(q, truth):  # the baseline on the same query, in the same loop
                t = time.perf_counter()
                got = ix.search(x, 10)
                times.append(time.perf_counter() - t)
                base.append(baseline(x))
                rec.append(len({i for i, _ in got} & set(want.tolist())) / 10)
            med, p95 = stats(times)
            b_med, b_p95 = stats(base)
            print(f"index {kind}: build {t_build:.1f} s, files {size / 2**20:.1f} MiB, load {t_load * 1e3:.1f} ms, "
                  f"first search {t_first * 1e3:.1f} ms, search median {med * 1e3:.2f} ms p95 {p95 * 1e3:.2f} ms, "
                  f"recall@10 {np.mean(rec):.3f} (stored at build: {ix.ann().get('recall_at_10', 1.0)}), "
                  f"peak RSS so far {peak_mib():.0f} MiB; {ix.ann()}")
            print(f"  baseline exact numpy (in memory): median {b_med * 1e3:.2f} ms p95 {b_p95 * 1e3:.2f} ms; "
                  f"ratio baseline / {kind} {b_med / med:.2f}x (search median)")
            del ix
    return 0


if __name__ == "__main__":
    sys.exit(main())

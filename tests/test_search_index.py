"""search/ index storage: faiss exact and IVF-PQ search against numpy, the SQLite records read defensively,
``lavimo-search verify``, same-sample duplicates across splits (small synthetic indexes: no model)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lavimo.core.errors import BadInputError


def _index(n: int, c: int = 16, seed: int = 0, clustered: bool = False):
    from lavimo.search.index import Entry, Index

    g = np.random.default_rng(seed)

    def lat(k: int) -> np.ndarray:
        x = g.standard_normal((k, c)).astype(np.float32)
        if clustered:  # latents of a low intrinsic dimension, as a model's are
            x = g.standard_normal((k, 4)).astype(np.float32) @ g.standard_normal((4, c)).astype(np.float32) + 0.3 * x
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ents = [Entry(f"M{i:05d}", [f"caption {i}"], {"kind": "features", "path": f"/x/M{i:05d}.npy"}) for i in range(n)]
    m = lat(n)
    return Index(ents, m, lat(n), np.arange(n) % 3 == 0, lat(n), np.arange(n),
                 {"checkpoint": "x", "checkpoint_sha256": "0" * 64, "latent_dim": c, "database": {}}), m


def test_exact_search_is_numpy_top_k_and_pages(tmp_path):
    from lavimo.search.index import Index

    mem, m = _index(500)
    mem.save(tmp_path / "i", "exact")
    ix = Index.load(tmp_path / "i")
    assert ix.ann() == {"kind": "exact"} and ix.meta["vectors"]["motion"]["dtype"] == "float32"
    q = m[7] + 0.1
    q /= np.linalg.norm(q)
    scores = m @ q
    want = np.argsort(-scores, kind="stable")[:20]
    got = ix.search(q, 20)
    assert [i for i, _ in got] == want.tolist()
    np.testing.assert_allclose([s for _, s in got], scores[want], rtol=1e-5, atol=1e-6)
    assert ix.search(q, 5, offset=10) == got[10:15]
    # video: only the motions that have one, by their rows
    vrows = [i for i, _ in ix.search(q, 500, against="video")]
    assert sorted(vrows) == list(range(0, 500, 3))
    assert ix.video_vector(1) is None and ix.video_vector(3) is not None
    # row 7 read back (memory-mapped .npy, stored as float32 above) is the row written: unit vectors of random
    # directions, so rtol 1e-6 tells it from any other row on every CPU
    assert ix.motion_vector(7).dtype == np.float32
    np.testing.assert_allclose(ix.motion_vector(7), m[7], rtol=1e-6, atol=1e-7)
    assert ix.caption(9) == ("caption 9", 9) and ix.position("M00009") == 9 and ix.position("nope") is None


def test_ivfpq_recall_is_measured_and_stored(tmp_path):
    from lavimo.search.index import Index
    from lavimo.search.vectors import RECALL_TARGET, exact_top

    mem, m = _index(3000, clustered=True)
    mem.save(tmp_path / "i", "ivfpq")
    ix = Index.load(tmp_path / "i")
    ann = ix.meta["vectors"]["motion"]["ann"]
    assert ann["kind"] == "ivfpq" and ix.meta["vectors"]["motion"]["dtype"] == "float16"
    assert ann["recall_at_10"] >= RECALL_TARGET, ann
    # its recall on other queries, measured here: close to the stored one
    g = np.random.default_rng(1)
    q = m[g.choice(len(m), 50, replace=False)] + g.standard_normal((50, m.shape[1])).astype(np.float32) * 0.05
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = exact_top(m, q, 10)
    rec = np.mean([len({i for i, _ in ix.search(x, 10)} & set(t.tolist())) / 10 for x, t in zip(q, truth)])
    assert rec >= 0.85, rec
    assert ix.search(m[11], 1)[0][0] == 11  # a stored latent finds itself


def _records_edit(src: Path, dst: Path, *sql: str) -> Path:
    shutil.copytree(src, dst)
    con = sqlite3.connect(dst / "records.sqlite")
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()
    meta = json.loads((dst / "index.json").read_text())
    meta["files"]["records.sqlite"]["bytes"] = (dst / "records.sqlite").stat().st_size
    (dst / "index.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("sql,match", [
    ("UPDATE motions SET keyid = '../../etc/passwd' WHERE row = 1", "motions\\[1\\]: keyid"),
    ("UPDATE motions SET source = '[1, 2]' WHERE row = 1", "motions\\[1\\]: source"),
    ("UPDATE motions SET source = x'00ff' WHERE row = 1", "motions\\[1\\]: source"),
    ("UPDATE motions SET preview = x'2e2e' WHERE row = 1", "motions\\[1\\]: expected preview"),
    ("DELETE FROM motions WHERE row = 1", "motions\\[1\\]: missing"),
    ("UPDATE captions SET owner = 99999 WHERE row = 1", "captions\\[1\\]"),
    ("UPDATE info SET value = '0000000000000000' WHERE key = 'build_id'", "build_id"),
    ("DROP TABLE motions", "schema"),
])
def test_hostile_records_are_one_line(tmp_path, sql, match):
    from lavimo.search.index import Index

    mem, _ = _index(6)
    mem.save(tmp_path / "good", "exact")
    d = _records_edit(tmp_path / "good", tmp_path / "bad", sql)
    with pytest.raises(BadInputError, match=match) as e:
        ix = Index.load(d)
        ix.entry(1)
        ix.caption(1)
    assert str(e.value).startswith(f"{d}/records.sqlite: ") and "\n" not in str(e.value)


def test_a_view_standing_in_for_a_table_is_refused(tmp_path):
    """A records file whose ``motions`` is a view (any SQL could run on each lookup): refused by its schema."""
    from lavimo.search.index import Index

    mem, _ = _index(6)
    mem.save(tmp_path / "good", "exact")
    d = _records_edit(tmp_path / "good", tmp_path / "bad", "ALTER TABLE motions RENAME TO m2",
                      "CREATE VIEW motions AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) "
                      "SELECT x AS row, 'M00000' AS keyid, '{}' AS source, NULL AS preview FROM r")
    with pytest.raises(BadInputError, match="schema"):
        Index.load(d)


def test_verify_finds_edited_files(tmp_path):
    from lavimo.search.cli import main

    mem, _ = _index(40)
    mem.save(tmp_path / "i", "exact")
    assert main(["verify", str(tmp_path / "i")]) == 0
    f = tmp_path / "i" / "motion.npy"
    b = bytearray(f.read_bytes())
    b[-5] ^= 0x7F  # same size: only the sha256 (verify) sees it, a load does not re-hash
    f.write_bytes(bytes(b))
    from lavimo.search.index import Index, verify_index

    assert len(Index.load(tmp_path / "i")) == 40
    problems = verify_index(tmp_path / "i")
    assert any(p.startswith(f"{f}: sha256") for p in problems), problems
    assert main(["verify", str(tmp_path / "i")]) == 1
    f.write_bytes(bytes(b[:-8]))  # truncated: refused at load, verify reports it
    assert main(["verify", str(tmp_path / "i")]) == 1
    assert main(["verify", str(tmp_path / "nothing")]) == 2


def test_same_sample_across_splits():
    from lavimo.search.index import same_sample

    a = {"kind": "shard", "split": "test", "shard": "test-000000.tar", "amass_path": "CMU/01.npz",
         "frame_rule": "s", "frame_start": 0.0, "frame_end": 2.0, "fps": 20.0}
    b = dict(a, split="nsim_test", shard="nsim_test-000000.tar")
    assert same_sample(a, b) and same_sample(a, a)
    assert not same_sample(a, dict(b, frame_end=3.0))  # another window of the motion: a different sample
    assert not same_sample({"kind": "features", "path": "/a"}, {"kind": "features", "path": "/b"})


@pytest.mark.parametrize("block,faiss_max", [(128, 1 << 15), (128, 64), (1 << 20, 64)])
def test_exact_search_blocks_and_kernels_agree(tmp_path, monkeypatch, block, faiss_max):
    """Exact search over blocks of rows, with faiss' kernel or the BLAS product per block: numpy's top-k."""
    import lavimo.search.vectors as vectors
    from lavimo.search.index import Index

    monkeypatch.setattr(vectors, "EXACT_BLOCK", block)
    monkeypatch.setattr(vectors, "EXACT_FAISS_MAX", faiss_max)
    mem, m = _index(500, seed=3)
    mem.save(tmp_path / "i", "exact")
    ix = Index.load(tmp_path / "i")
    for j in (0, 250, 499):
        scores = m @ m[j]
        want = np.argsort(-scores, kind="stable")[:15]
        got = ix.search(m[j], 15)
        assert [i for i, _ in got] == want.tolist()
        np.testing.assert_allclose([s for _, s in got], scores[want], rtol=1e-5, atol=1e-6)


def test_recall_queries_of_a_set_without_captions_copy_no_set():
    """Recall queries for a set with no other modality: noise on the drawn rows only (a 10 M set of 256 values
    is 10 GB; noise over all of it was two more), unit rows near the set's own latents."""
    import tracemalloc

    from lavimo.search.index import RECALL_QUERIES, Entry, Index, _recall_queries

    n, c = 20_000, 64
    g = np.random.default_rng(1)
    m = g.standard_normal((n, c)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    empty = np.zeros((0, c), np.float32)
    ix = Index([Entry(f"M{i:05d}", [], {}) for i in range(n)], m, empty, np.zeros(n, bool), empty,
               np.zeros(0, np.int64), {"checkpoint_sha256": "0" * 64, "latent_dim": c})
    tracemalloc.start()
    q = _recall_queries(ix, "motion", m)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < m.nbytes / 4  # the set is 5 MB; the queries and their noise well under 1 MB
    assert q.shape == (RECALL_QUERIES, c) and q.dtype == np.float32
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert np.all((q @ m.T).max(axis=1) > 0.8)  # each near a stored latent

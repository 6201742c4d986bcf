"""search/: work done once and reused — a rebuilt index does not decode the samples it already holds, a feature
folder's preview is rendered once per server (outside the query lock) — plus the CLI's ``--split`` lists, the one
source formatter and the module layout (project modules imported by their own names)."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
N_TEST = 4


# ------------------------------------------------------------------------------------------------ rebuilds
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lavimo.search.model import load
    from tests.fixtures.runs import random_tiny_checkpoint

    shards, ckpt, _ = random_tiny_checkpoint(tmp_path_factory.mktemp("reuse"), n_test=N_TEST, n_classes=2,
                                             frames=(10, 12), samples_per_shard=8)
    return {"shards": shards, "r": load(ckpt)}


@pytest.fixture()
def decodes(monkeypatch):
    """Counts the loader's sample transform (motion rows + video decode) and its video decode."""
    import lavimo.dataset.shards.stream as st

    calls = {"sample": 0, "video": 0}
    call, video = st.SampleTransform.__call__, st.SampleTransform.video

    def counted_call(self, *a, **kw):
        calls["sample"] += 1
        return call(self, *a, **kw)

    def counted_video(self, *a, **kw):
        calls["video"] += 1
        return video(self, *a, **kw)

    monkeypatch.setattr(st.SampleTransform, "__call__", counted_call)
    monkeypatch.setattr(st.SampleTransform, "video", counted_video)
    return calls


def test_rebuild_decodes_nothing_already_indexed(tiny, tmp_path, decodes):
    from lavimo.search.index import Index, build_index

    r, out = tiny["r"], tmp_path / "idx"
    _, first = build_index(r, out, shards=tiny["shards"], splits=["test"], progress=False, previews=False)
    assert (first.done, first.reused, first.failed) == (N_TEST, 0, [])
    assert decodes == {"sample": N_TEST, "video": N_TEST}
    before = Index.load(out, r.sha256)
    decodes.update(sample=0, video=0)
    _, second = build_index(r, out, shards=tiny["shards"], splits=["test"], progress=False, previews=False)
    assert (second.done, second.reused, second.failed) == (0, N_TEST, [])
    assert decodes == {"sample": 0, "video": 0}
    after = Index.load(out, r.sha256)
    assert [e.keyid for e in after.iter_entries()] == [e.keyid for e in before.iter_entries()]
    assert [e.source for e in after.iter_entries()] == [e.source for e in before.iter_entries()]
    # bit for bit: a rebuild reuses the stored latents (read back, never re-encoded): docs/design.md, "Determinism"
    for name in ("motion", "video", "text"):
        np.testing.assert_array_equal(after.vectors(name), before.vectors(name), err_msg=name)


def test_a_sample_with_another_source_is_decoded(tiny, decodes):
    from lavimo.search.index import shard_items

    failed: list[str] = []
    items = list(shard_items(tiny["shards"], ["test"], tiny["r"], failed))
    assert len(items) == N_TEST and all(it.motion is not None for it in items) and decodes["sample"] == N_TEST
    indexed = {it.keyid: dict(it.source) for it in items}
    moved = items[0].keyid
    indexed[moved]["shard"] = "elsewhere.tar"
    decodes.update(sample=0, video=0)
    again = list(shard_items(tiny["shards"], ["test"], tiny["r"], failed, indexed=indexed))
    assert [it.keyid for it in again] == [it.keyid for it in items] and not failed
    assert decodes["sample"] == 1 and [it.keyid for it in again if it.motion is not None] == [moved]
    assert all(it.source == ref.source for it, ref in zip(again, items))


# ------------------------------------------------------------------------------------------------ server previews
def _feature_index(tmp_path: Path, n: int = 2):
    from lavimo.search.index import Entry, Index

    entries = []
    for k in range(n):
        f = tmp_path / "new_joint_vecs" / f"M{k:05d}.npy"
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, np.zeros((4, 263), np.float32))
        entries.append(Entry(f.stem, [], {"kind": "features", "path": str(f)}))
    z = np.zeros((n, 8), np.float32)
    return Index(entries, z, z, np.zeros(n, bool), np.zeros((0, 8), np.float32), np.zeros(0, np.int64),
                 {"database": {"kind": "features", "path": str(tmp_path)}}, tmp_path / "idx")


@pytest.fixture()
def renders(monkeypatch):
    """A fake preview renderer: counts calls, checks the query lock is free while it renders, writes bytes."""
    import lavimo.search.preview as preview

    calls: list[tuple[str, Path]] = []
    state = {"svc": None, "query_lock_free": []}

    def fake(motion, out, **kw):
        calls.append((str(motion), Path(out)))
        svc = state["svc"]
        if svc is not None:
            free = svc.lock.acquire(blocking=False)
            state["query_lock_free"].append(free)
            if free:
                svc.lock.release()
        time.sleep(0.05)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
        return Path(out)

    monkeypatch.setattr(preview, "render_preview", fake)
    state["calls"] = calls
    return state


def test_feature_preview_is_rendered_once_outside_the_query_lock(tmp_path, renders):
    """A feature index's preview is its skeleton preview: one render, one file, for ``/preview/{n}`` and
    ``/skeleton/{n}`` alike; the index's records stay as built."""
    from fastapi.testclient import TestClient

    from lavimo.search.preview import skeleton_preview_path
    from lavimo.search.server import create_app

    index = _feature_index(tmp_path)
    app = create_app(None, index)
    renders["svc"] = app.state.service
    client = TestClient(app, base_url="http://localhost")
    for _ in range(5):  # a browser's range requests
        got = client.get("/preview/0", headers={"Range": "bytes=0-99"})
        assert got.status_code in (200, 206) and got.headers["content-type"] == "video/mp4"
    assert len(renders["calls"]) == 1 and renders["query_lock_free"] == [True]
    skel = client.get("/skeleton/0")
    assert skel.status_code == 200 and skel.content == client.get("/preview/0").content
    assert len(renders["calls"]) == 1  # the same file: the skeleton URL renders nothing again
    assert index.entry(0).preview is None and index.preview_path(0) is None
    assert renders["calls"][0][1] == skeleton_preview_path(tmp_path / "idx", "M00000")
    assert renders["calls"][0][1] == tmp_path / "idx" / "previews" / "skeleton-256" / "M00000.mp4"
    # concurrent first requests of another motion: one render, every request gets the file
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(app.state.service.preview_file(1))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(renders["calls"]) == 2 and len(got) == 4 and len({str(p) for p in got}) == 1 and got[0].is_file()


# ------------------------------------------------------------------------------------------------ CLI, formatting
def test_split_accepts_comma_lists():
    from lavimo.search.cli import _parser, main

    def splits(*a: str):
        return _parser().parse_args(["index", "--checkpoint", "c.safetensors", "--shards", "s", "--out", "o",
                                     *a]).split

    assert splits() is None
    assert splits("--split", "train,test") == ["train", "test"]
    assert splits("--split", "a, b", "--split", "c") == ["a", "b", "c"]
    with pytest.raises(SystemExit):
        splits("--split", "a,,b")
    assert main(["index", "--checkpoint", "c.safetensors", "--shards", "s", "--out", "o", "--split", "all,test"]) == 2


def test_one_source_formatter():
    from lavimo.search.cli import _table
    from lavimo.search.index import source_text

    shard = {"kind": "shard", "amass_path": "CMU/01/01_01_poses.npz", "frame_start": 1.5, "frame_end": 4.0,
             "shard": "test-000000.tar"}
    assert source_text(shard) == "CMU/01/01_01_poses.npz [1.5..4.0 s] (test-000000.tar)"
    assert source_text({"kind": "features", "path": "/d/M00001.npy"}) == "/d/M00001.npy"
    res = {"query": {"against": "motion"}, "results": [{"keyid": "M00001", "score": 0.5, "captions": ["walks"],
                                                        "source": shard, "preview": None}]}
    assert source_text(shard) in _table(res)


# ------------------------------------------------------------------------------------------------ layout
PROJECT = ("core", "body", "dataset", "render", "model", "evaluation", "training")


def test_project_modules_imported_by_their_own_names():
    """search/ imports project code by the modules' own ``lavimo.`` names (no module re-exporting them, no bare
    names), and the renderer (``lavimo.render``) only inside functions: preview loads triton before it."""
    assert not (REPO / "search" / "_project.py").exists()
    bad = []
    for f in sorted((REPO / "search").glob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{f.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in PROJECT]
            bad += [f"{f.name}:{node.lineno} {n} (module level)" for n in names
                    if n.startswith("lavimo.render") and node in tree.body]
    assert not bad


def test_search_has_no_unused_imports():
    import io

    from pyflakes import api  # a test dependency (pyproject's [test] extra)
    from pyflakes.reporter import Reporter

    out = io.StringIO()
    n = api.checkRecursive([str(REPO / "search")], Reporter(out, out))
    assert n == 0, out.getvalue()


# ------------------------------------------------------------------------------------------------ --split all
def test_split_all_counts_repeated_samples_and_parallel_decoding_agrees(tiny, tmp_path):
    """A shard set whose ``nsim_test`` split repeats the test samples (as TMR's does): ``--split all`` indexes each
    sample once, counts the repeats as duplicates (no false "duplicate keyid" failure); decoding in 2 worker
    processes gives the same index as decoding here (latents within the tolerance of other batch compositions)."""
    import json
    import shutil

    from lavimo.search.index import build_index

    shards = tmp_path / "shards"
    shutil.copytree(tiny["shards"], shards)
    man = json.loads((shards / "test.json").read_text())
    for s in man["shards"]:
        new = s["name"].replace("test-", "nsim_test-")
        shutil.copyfile(shards / s["name"], shards / new)
        s["name"] = new
    man["split"] = "nsim_test"
    (shards / "nsim_test.json").write_text(json.dumps(man))
    r = tiny["r"]
    one, rep1 = build_index(r, tmp_path / "a", shards=shards, splits=["all"], progress=False, previews=False)
    two, rep2 = build_index(r, tmp_path / "b", shards=shards, splits=["all"], progress=False, previews=False,
                            workers=2)
    for rep in (rep1, rep2):
        assert (rep.done, rep.duplicates, rep.failed) == (N_TEST + 2, N_TEST, []), rep.summary()
        assert set(rep.times) == {"decode", "encode", "previews", "write"}
    assert [e.keyid for e in one.iter_entries()] == [e.keyid for e in two.iter_entries()]
    assert [e.source for e in one.iter_entries()] == [e.source for e in two.iter_entries()]
    for name in ("motion", "video", "text"):
        np.testing.assert_allclose(one.vectors(name), two.vectors(name), rtol=1e-5, atol=1e-5, err_msg=name)
    # built again: every sample reused, the repeats counted again (a keyid with a different sample stays a
    # failure: test_search_index.py's test_same_sample_across_splits)
    _, rep3 = build_index(r, tmp_path / "a", shards=shards, splits=["all"], progress=False, previews=False)
    assert (rep3.done, rep3.reused, rep3.duplicates, rep3.failed) == (0, N_TEST + 2, N_TEST, [])

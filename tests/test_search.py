"""search/: the Python API, the motion index, real video files, the CLI, the search page, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lavimo.core.errors import BadInputError  # noqa: E402

N_TEST = 12
#: docs/design.md "Determinism": float encodings of other batch compositions / hosts agree to this, not bit for bit
LATENT_RTOL, LATENT_ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(shards, checkpoint with preprocess, checkpoint without, index dir) on tiny shards and a random tiny model."""
    from lavimo.model import save_checkpoint
    from lavimo.search.index import build_index
    from lavimo.search.model import load
    from tests.fixtures.runs import random_tiny_checkpoint

    root = tmp_path_factory.mktemp("search")
    shards, ckpt, model = random_tiny_checkpoint(root, n_test=N_TEST, n_classes=4, frames=(10, 14),
                                                 samples_per_shard=8)
    old = save_checkpoint(model, root / "old.safetensors", extra={"step": 1})
    r = load(ckpt)
    index, report = build_index(r, root / "index", shards=shards, splits=["test"], progress=False, batch_size=5)
    assert not report.failed and report.done == N_TEST
    return {"root": root, "shards": shards, "ckpt": ckpt, "old": old, "r": r, "index": index}


def _raw_samples(shards: Path, split: str = "test"):
    from lavimo.dataset.shards.format import load_npy_bytes, parse_texts
    from lavimo.dataset.shards.stream import _Skips, resolve_shards, _tar_samples

    urls, _, _ = resolve_shards(shards, split)
    for u in urls:
        for raw in _tar_samples(u, _Skips()):
            yield raw["__key__"], load_npy_bytes(raw["motion.npy"]), parse_texts(raw["texts.json"])[0]


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ------------------------------------------------------------------------------------------------ exactness
def test_index_scores_are_the_models_own_encodings(tiny):
    r, index = tiny["r"], tiny["index"]
    assert len(index) == N_TEST
    for key, feats, caps in _raw_samples(tiny["shards"]):
        i = index.position(key)
        own = r.encode_motion(feats)
        np.testing.assert_allclose(index.motion_vector(i), own[0], rtol=LATENT_RTOL, atol=LATENT_ATOL)  # batch 5 vs 1
        assert index.entry(i).captions == caps
        # a motion query of an indexed motion finds itself first, with cosine 1
        top = index.search(own, k=3)
        assert top[0][0] == i and top[0][1] == pytest.approx(1.0, abs=1e-4)
        # text query: the index's scores are exactly text latent . motion latents
        t = r.encode_text([caps[0]])
        hits = index.search(t, k=N_TEST)
        np.testing.assert_allclose([s for _, s in hits], np.sort(index.vectors("motion") @ t[0])[::-1],
                                   rtol=LATENT_RTOL, atol=LATENT_ATOL)
    assert np.allclose(np.linalg.norm(index.vectors("motion"), axis=1), 1, atol=1e-5)
    assert all(index.video_vector(i) is not None for i in range(len(index)))
    assert np.allclose(np.linalg.norm(index.vectors("video"), axis=1), 1, atol=1e-5)


def test_joints_and_features_inputs_agree(tiny):
    from lavimo.dataset.features import joints_to_features

    r = tiny["r"]
    rng = np.random.default_rng(0)
    joints = np.cumsum(rng.normal(0, 0.01, (30, 22, 3)), axis=0).astype(np.float32) + _rest()
    a = r.encode_motion(joints)
    b = r.encode_motion(joints_to_features(joints))
    np.testing.assert_allclose(a, b, atol=1e-6)


def _rest() -> np.ndarray:
    from lavimo.dataset.motion import HUMANML3D

    j = np.zeros((22, 3), np.float32)
    for chain in HUMANML3D.chains:
        for p, c in zip(chain[:-1], chain[1:]):
            j[c] = j[p] + HUMANML3D.raw_offsets[c] * HUMANML3D.target_lengths[c]
    return j + np.array([0, 1.0, 0], np.float32)


def test_incremental_build_reuses_and_same_latents(tiny, tmp_path):
    """Reused latents are the stored ones, bit for bit; latents encoded in other batches (the fixture's index was
    built 5 clips per batch, this one 32) agree within docs/design.md's tolerance for float encodings, not bit
    for bit: the kernels' summation order depends on the batch's shape and on the CPU (issue 24)."""
    from lavimo.search.index import Index, build_index

    r = tiny["r"]
    out = tmp_path / "idx"
    first, rep1 = build_index(r, out, shards=tiny["shards"], splits=["test"], progress=False, previews=False)
    _, rep2 = build_index(r, out, shards=tiny["shards"], splits=["test"], progress=False, previews=False)
    assert (rep1.done, rep2.done, rep2.reused) == (N_TEST, 0, N_TEST)
    again = Index.load(out, r.sha256)
    assert [e.keyid for e in again.iter_entries()] == [e.keyid for e in first.iter_entries()]
    for name in ("motion", "video", "text"):
        np.testing.assert_array_equal(again.vectors(name), first.vectors(name), err_msg=name)
    other = tiny["index"]
    assert [e.keyid for e in other.iter_entries()] == [e.keyid for e in again.iter_entries()]
    owners = lambda ix: [ix.caption(j)[1] for j in range(len(ix.vectors("text")))]  # noqa: E731
    assert owners(again) == owners(other)  # integers: exact on any host
    for name in ("motion", "video", "text"):
        np.testing.assert_allclose(again.vectors(name), other.vectors(name), rtol=LATENT_RTOL, atol=LATENT_ATOL,
                                   err_msg=name)
    for name in ("motion", "video", "text"):  # plain arrays: readable without pickle
        assert np.load(out / f"{name}.npy", allow_pickle=False).dtype == np.float32


# ------------------------------------------------------------------------------------------------ video
def test_video_query_on_reencoded_clip(tiny, tmp_path):
    """A preview (the shard's own frames) re-encoded at another size, aspect ratio (padded) and fps, as VP9 in
    webm, encodes close to the indexed clip's video latent and finds it among the top 5 videos."""
    r, index = tiny["r"], tiny["index"]
    i = 3
    src = index.preview_path(i)
    assert src and Path(src).is_file()
    out = tmp_path / "re.webm"
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-i", src, "-vf", "scale=90:90,pad=160:90:35:0,setsar=1",
                    "-r", "25", "-c:v", "libvpx-vp9", "-b:v", "1M", str(out)], check=True)
    q = r.encode_video(out)
    assert float(q[0] @ index.video_vector(i)) > 0.9
    assert i in [j for j, _ in index.search(q, k=5, against="video")]
    # the same through both decoding paths
    a = r.encode_video(out, mode="seek")
    b = r.encode_video(out, mode="select")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_video_frame_choice_is_the_loaders(tmp_path):
    """Numbered frames: the decoded frames are exactly the loader's segment centres, also within a window."""
    from lavimo.search.video import frame_numbers, read_frames

    t = 40
    frames = np.zeros((t, 32, 48, 3), np.uint8)
    for i in range(t):
        frames[i, :, :, 0] = i * 6  # frame number in the red channel
    from lavimo.core.mp4 import write_video

    path = tmp_path / "n.mp4"
    write_video(path, frames, fps=10, crf=0)
    for mode in ("seek", "select"):
        got = read_frames(path, 8, mode=mode)
        assert got.shape == (8, 32, 48, 3)
        np.testing.assert_allclose(got[:, 16, 24, 0] / 6, frame_numbers(t, 8), atol=0.6)
        got = read_frames(path, 4, start=1.0, end=3.0, mode=mode)
        np.testing.assert_allclose(got[:, 16, 24, 0] / 6, 10 + frame_numbers(20, 4), atol=0.6)


@pytest.mark.parametrize("case", ["text", "empty", "oneframe", "missing"])
def test_bad_videos_name_the_file(tiny, tmp_path, case):
    from lavimo.core.mp4 import write_video

    path = tmp_path / f"{case}.mp4"
    if case == "text":
        path.write_text("not a video")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "oneframe":
        write_video(path, np.zeros((1, 32, 32, 3), np.uint8), fps=10)
    with pytest.raises(BadInputError) as e:
        tiny["r"].encode_video(path)
    assert str(path) in str(e.value)


def test_crop_outside_the_frame(tiny, tmp_path):
    from lavimo.search.video import model_view

    with pytest.raises(BadInputError, match="crop"):
        model_view(np.zeros((2, 40, 60, 3), np.uint8), 32, crop=(30, 0, 40))
    x = model_view(np.zeros((2, 40, 60, 3), np.uint8), 32, crop=(10, 0, 40))
    assert tuple(x.shape) == (2, 3, 32, 32)


# ------------------------------------------------------------------------------------------------ bad motions
@pytest.mark.parametrize("case", ["shape", "nan", "pickle", "dtype"])
def test_bad_motion_files(tiny, tmp_path, case):
    path = tmp_path / f"{case}.npy"
    if case == "shape":
        np.save(path, np.zeros((10, 7), np.float32))
    elif case == "nan":
        a = np.zeros((10, 263), np.float32)
        a[3, 5] = np.nan
        np.save(path, a)
    elif case == "pickle":
        marker = tmp_path / "pwned"
        np.save(path, np.array([_Exploit(str(marker))], dtype=object), allow_pickle=True)
    else:
        np.save(path, np.array(["a", "b"]))
    with pytest.raises(BadInputError) as e:
        tiny["r"].encode_motion(path)
    assert str(path) in str(e.value)
    if case == "pickle":
        assert not marker.exists()  # never unpickled: refused when read, not by the later dtype check
        assert "object array (a pickle): refused" in str(e.value)


class _Exploit:
    """Unpickling this would create a marker file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_without_preprocess(tiny):
    from lavimo.search.model import load

    with pytest.raises(BadInputError, match="stats="):
        load(tiny["old"])
    r = load(tiny["old"], stats=tiny["shards"])  # older runs: the shard set they were trained on
    np.testing.assert_array_equal(r.mean, tiny["r"].mean)


def test_index_of_another_checkpoint_is_refused(tiny):
    from lavimo.search.index import Index
    from lavimo.search.model import load

    other = load(tiny["old"], stats=tiny["shards"])
    with pytest.raises(BadInputError, match="another checkpoint"):
        Index.load(tiny["index"].root, other.sha256)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lavimo.search.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_query_and_errors(tiny, tmp_path):
    idx = tiny["index"].root
    res = _cli("query", "--index", idx, "--text", "a person walks forward", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["results"]) == 5 and {"keyid", "score", "captions", "source", "preview"} <= set(out["results"][0])
    feats = next(_raw_samples(tiny["shards"]))[1]
    np.save(tmp_path / "m.npy", feats)
    res = _cli("query", "--index", idx, "--motion", tmp_path / "m.npy", "--captions", "--k", "3")
    assert res.returncode == 0 and res.stdout.count("\n") == 4, res.stderr
    # another checkpoint, a bad video: exit 2, one line, no traceback
    res = _cli("query", "--index", idx, "--checkpoint", tiny["old"], "--stats", tiny["shards"], "--text", "x")
    assert res.returncode == 2 and "another checkpoint" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "bad.mp4").write_text("nope")
    res = _cli("query", "--index", idx, "--video", tmp_path / "bad.mp4")
    assert res.returncode == 2 and "bad.mp4" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_index_skeleton_previews_rendered_while_indexing(tiny, tmp_path):
    from lavimo.search.cli import main
    from lavimo.search.index import Index
    from lavimo.search.preview import skeleton_preview_path

    out = tmp_path / "idx"
    assert main(["index", "--checkpoint", str(tiny["ckpt"]), "--shards", str(tiny["shards"]), "--out", str(out),
                 "--workers", "1", "--skeleton-previews", "--no-progress"]) == 0
    index = Index.load(out)
    paths = [skeleton_preview_path(out, index.keyid(i)) for i in range(len(index))]
    assert len(paths) == N_TEST and all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_index_skeleton_previews_read_the_manifest_and_each_shard_once(tiny, monkeypatch):
    """``--skeleton-previews`` over a shard index reads the split's manifest once and each shard once (not once per
    motion, from the shard's start up to its member), and renders each motion from its own motion.npy member."""
    import lavimo.search.preview as preview
    from lavimo.dataset.shards import format as shard_format, stream
    from lavimo.search.cli import _skeleton_previews
    from lavimo.search.motionfile import motion_features

    index = tiny["index"]
    resolved: list[str] = []
    opened: list[str] = []
    read: list[str] = []
    rendered: dict[str, np.ndarray] = {}
    real_resolve, real_members = stream.resolve_shards, shard_format.iter_tar_members

    def resolve(*a, **kw):
        resolved.append(str(a[1] if len(a) > 1 else kw["split"]))
        return real_resolve(*a, **kw)

    def members(source, **kw):
        opened.append(Path(source).name)
        for name, data in real_members(source, **kw):
            read.append(name)
            yield name, data

    monkeypatch.setattr(stream, "resolve_shards", resolve)
    monkeypatch.setattr(shard_format, "iter_tar_members", members)
    monkeypatch.setattr(preview, "skeleton_preview", lambda m, root, keyid: rendered.setdefault(keyid, m))
    assert _skeleton_previews(index, False) == []
    shards = {index.entry(i).source["shard"] for i in range(len(index))}
    assert len(shards) > 1 and resolved == ["test"] and sorted(opened) == sorted(shards)
    assert sorted(read) == sorted(f"{index.keyid(i)}.motion.npy" for i in range(len(index)))  # no other member
    monkeypatch.setattr(stream, "resolve_shards", real_resolve)
    monkeypatch.setattr(shard_format, "iter_tar_members", real_members)
    assert set(rendered) == {index.keyid(i) for i in range(len(index))}
    for i in (0, len(index) - 1):
        np.testing.assert_array_equal(rendered[index.keyid(i)], motion_features(index, i))


# ------------------------------------------------------------------------------------------------ features folder, previews
def test_feature_folder_index_and_previews(tiny, tmp_path):
    from lavimo.search.index import build_index
    from lavimo.search.preview import render_preview

    folder = tmp_path / "hml"
    (folder / "new_joint_vecs").mkdir(parents=True)
    (folder / "texts").mkdir()
    for n, (key, feats, caps) in enumerate(_raw_samples(tiny["shards"])):
        if n == 4:
            break
        np.save(folder / "new_joint_vecs" / f"{key}.npy", feats)
        (folder / "texts" / f"{key}.txt").write_text("".join(f"{c}#a/DET#0.0#0.0\n" for c in caps))
    np.save(folder / "new_joint_vecs" / "bad.npy", np.zeros((3, 5), np.float32))
    index, rep = build_index(tiny["r"], tmp_path / "idx", folder=folder, progress=False)
    assert rep.done == 4 and len(rep.failed) == 1 and "bad.npy" in rep.failed[0]
    assert index.entry(0).source["kind"] == "features" and index.entry(0).captions
    np.testing.assert_allclose(index.vectors("motion"), tiny["index"].vectors("motion")[
        [tiny["index"].position(e.keyid) for e in index.iter_entries()]], atol=2e-5)
    out = render_preview(folder / "new_joint_vecs" / f"{index.entry(0).keyid}.npy", tmp_path / "p.mp4")
    assert out.stat().st_size > 0
    mtime = out.stat().st_mtime_ns
    render_preview(folder / "new_joint_vecs" / f"{index.entry(0).keyid}.npy", tmp_path / "p.mp4")
    assert out.stat().st_mtime_ns == mtime  # cached


# ------------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def client(tiny):
    from fastapi.testclient import TestClient

    from lavimo.search.server import create_app

    return TestClient(create_app(tiny["r"], tiny["index"], max_upload_bytes=200_000),
                      base_url="http://localhost")


def test_server_text_search_and_page(client, tiny):
    r = client.get("/")
    assert r.status_code == 200 and 'id="text"' in r.text
    r = client.post("/api/search", data={"text": "a person jumps up and down", "k": "3"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 3 and all(h["preview_url"].startswith("/preview/") for h in res)
    assert "preview" not in res[0]  # no server paths
    v = client.get(res[0]["preview_url"])
    assert v.status_code == 200 and v.headers["content-type"] == "video/mp4" and len(v.content) > 100
    # server-side rendering escapes the query
    r = client.get("/", params={"text": "<script>alert(1)</script>", "k": "2"})
    assert r.status_code == 200 and "<script>alert(1)" not in r.text and "&lt;script&gt;" in r.text


def test_server_bad_inputs_keep_serving(client, tmp_path):
    cases = [
        ({"text": ""}, None, 400),
        ({"text": "x", "k": "0"}, None, 400),
        ({"k": "3", "kind": "video"}, ("big.mp4", b"\0" * 300_000, "video/mp4"), 413),
        ({"k": "3", "kind": "video"}, ("x.exe", b"MZ", "application/octet-stream"), 415),
        ({"k": "3", "kind": "video"}, ("bad.mp4", b"not a video", "video/mp4"), 400),
        ({"k": "3", "kind": "motion"}, ("m.npy", b"\x93NUMPY garbage", "application/octet-stream"), 400),
    ]
    for data, file, status in cases:
        files = {"file": file} if file else None
        r = client.post("/api/search", data=data, files=files)
        assert r.status_code == status, (data, r.text)
        assert r.json()["error"]
        if file and file[0] == "bad.mp4":
            assert "bad.mp4" in r.json()["error"] and "lavimo-upload" not in r.json()["error"]
        ok = client.post("/api/search", data={"text": "a person walks forward"})
        assert ok.status_code == 200
    assert client.get("/preview/999").status_code == 404
    assert client.get("/preview/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)


def test_server_motion_upload(client, tiny, tmp_path):
    key, feats, _ = next(_raw_samples(tiny["shards"]))
    import io

    buf = io.BytesIO()
    np.save(buf, feats)
    r = client.post("/api/search", data={"k": "1", "kind": "motion"},
                    files={"file": ("m.npy", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 200 and r.json()["results"][0]["keyid"] == key


# ------------------------------------------------------------------------------------------------ train.py
@pytest.mark.slow
def test_train_writes_preprocess_into_checkpoints(tmp_path):
    """Every checkpoint train.py saves carries extra["preprocess"]: lavimo.search.model.load needs no stats."""
    import train as train_script
    from lavimo.dataset.shards.stream import load_stats
    from tests.fixtures.tiny_shards import make_tiny_shards
    from lavimo.search.model import PREPROCESS_KEYS, load

    torch.set_num_threads(1)
    shards = make_tiny_shards(tmp_path / "shards", n_train=8, n_val=4, n_test=0, n_classes=4, frames=(10, 12),
                              size=32, samples_per_shard=8)
    out = tmp_path / "run"
    assert train_script.main([str(a) for a in ("--shards", shards, "--out", out, "--preset", "tiny", "--device",
                                               "cpu", "--no-progress", "--threads", "1", "--epochs", 1,
                                               "--max-steps", 1, "--val-every", 1, "--batch-size", 4)]) == 0
    mean, std = load_stats(shards)
    files = sorted((out / "checkpoints").glob("*.safetensors"))
    # --max-steps 1 stops mid-epoch (2 steps per epoch): last from the stop, best from --val-every 1, and the
    # training state (also a safetensors file, not a model)
    assert {c.name for c in files} == {"best.safetensors", "last.safetensors", "last.state.safetensors"}, files
    ckpts = [c for c in files if c.name != "last.state.safetensors"]
    for ckpt in ckpts:
        r = load(ckpt)
        assert set(r.preprocess) == set(PREPROCESS_KEYS)  # exactly the record preprocess_record writes
        np.testing.assert_array_equal(r.mean, mean)
        np.testing.assert_array_equal(r.std, std)
        assert r.preprocess["num_frames"] == r.model.cfg.num_frames

"""The search page, the index and video queries on hostile input (docs/security.md, "Videos and images" and "The
search page and index"): text files posing as videos (ffconcat, HLS, image2 patterns) never make ffmpeg read
another file and answer the same whether that file exists or not; chunked uploads stop at the byte cap; a foreign
``Host`` header gets 421; previews are served only from inside the index directory; a full disk while indexing,
and truncated index files, are one line (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lavimo.core.errors import BadInputError  # noqa: E402
from tests.fixtures.untrusted import assert_clean_refusal, run_measured, run_python  # noqa: E402
from tests.fixtures.child_peak import reader_loop  # noqa: E402
from tests.fixtures.runs import start_server  # noqa: E402

CAP = 100_000  # the test server's upload cap, bytes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny checkpoint, its shards and an index with previews (the shards' own videos)."""
    from tests.fixtures.runs import random_tiny_index

    data = random_tiny_index(tmp_path_factory.mktemp("pagesafety"), n_test=4)
    index = data["index"]
    assert index.preview_path(0) and Path(index.preview_path(0)).is_file()
    return data


@pytest.fixture()
def client(tiny):
    from fastapi.testclient import TestClient

    from lavimo.search.server import create_app

    return TestClient(create_app(tiny["r"], tiny["index"], max_upload_bytes=CAP), base_url="http://localhost")


def _playlists(target: str) -> dict[str, bytes]:
    """Text files that make an unrestricted ffmpeg read ``target`` (a path relative to the upload's directory)."""
    return {"ffconcat": f"ffconcat version 1.0\nfile {target}\n".encode(),
            "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{target}\n#EXT-X-ENDLIST\n".encode()}


# -------------------------------------------------------------------------------------------- ffmpeg sees only media
def test_uploaded_playlists_never_read_local_files(client, tiny):
    """An upload named clip.mp4 that is an ffconcat list or an HLS playlist naming a real local video (the index's
    preview; relative to the upload directory, which the concat demuxer's "safe" mode allows) and one naming a
    missing file: all 400 with the same message (no results from the real file, no existence oracle)."""
    real = Path(tiny["index"].preview_path(0)).resolve()
    rel = os.path.relpath(real, tempfile.gettempdir())
    if rel.startswith(".."):
        pytest.skip("the index is not under the temporary directory")
    missing = str(Path(rel).with_name("no-such-clip.mp4"))
    answers = {}
    for kind in ("ffconcat", "hls"):
        for name, target in (("real", rel), ("missing", missing)):
            r = client.post("/api/search", data={"k": "3", "kind": "video"},
                            files={"file": ("clip.mp4", _playlists(target)[kind], "video/mp4")})
            answers[kind, name] = (r.status_code, r.json().get("error"), "results" in r.json())
    assert {a for a in answers.values()} == {(400, "clip.mp4: video: a text file, not a video (playlists, concat "
                                                    "lists and other text inputs are refused)", False)}, answers


def test_cli_video_query_on_a_concat_list_is_one_line(tiny, tmp_path):
    """``lavimo-search query --video LIST``: exit 2, one line naming LIST, the same for a list naming an existing
    video and one naming a missing file (both beside it, as the concat demuxer's "safe" mode allows)."""
    msgs = []
    for name in ("real", "missing"):
        d = tmp_path / name
        (d / "media").mkdir(parents=True)
        if name == "real":
            shutil.copyfile(tiny["index"].preview_path(0), d / "media" / "clip.mp4")
        lst = d / "list.mp4"
        lst.write_bytes(b"ffconcat version 1.0\nfile media/clip.mp4\n")
        m = run_measured([sys.executable, "-m", "lavimo.search.cli", "query", "--index", str(tiny["dir"]), "--video",
                          str(lst), "--checkpoint", str(tiny["ckpt"])], timeout=180)
        assert_clean_refusal(m, lst, codes=(2,), max_rss_mib=4096, max_seconds=180)
        assert len(m.stderr.strip().splitlines()) == 1, m.stderr
        msgs.append(m.stderr.replace(str(lst), "LIST"))
    assert msgs[0] == msgs[1], msgs


def test_image_pattern_and_other_demuxers_are_refused(tiny, tmp_path):
    """A path that is an image2 pattern (``frame%03d.png``, existing as a file, with frame001.png... beside it)
    and single images are not videos: refused by the demuxer allow-list, the numbered frames never read."""
    from PIL import Image

    for i in range(1, 6):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / f"frame{i:03d}.png")
    pattern = tmp_path / "frame%03d.png"
    shutil.copyfile(tmp_path / "frame001.png", pattern)
    for path in (pattern, tmp_path / "frame002.png"):
        with pytest.raises(BadInputError, match="not a video container this tool reads") as e:
            tiny["r"].encode_video(path)
        assert str(e.value).startswith(f"{path}: video: ")


# ------------------------------------------------------------------------------------------------ the page
def test_host_header_allow_list(client, tiny, monkeypatch):
    """DNS rebinding: a request for another host name gets 421; localhost, 127.0.0.1, [::1] (with a port) pass;
    --allow-host / $LAVIMO_SEARCH_ALLOWED_HOSTS add names."""
    from fastapi.testclient import TestClient

    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "localhost.evil", "localhost.."):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 421 and "Host" in r.json()["error"], (host, r.status_code)
        assert client.post("/api/search", data={"text": "a person walks"}, headers={"Host": host}).status_code == 421
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST", "localhost.", "localhost.:8000"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    from lavimo.search.server import allowed_hosts, create_app

    monkeypatch.setenv("LAVIMO_SEARCH_ALLOWED_HOSTS", "search.lan, other.lan")
    hosts = allowed_hosts("192.168.1.5", ["box.example"])
    assert {"localhost", "127.0.0.1", "::1", "192.168.1.5", "box.example", "search.lan", "other.lan"} == set(hosts)
    c2 = TestClient(create_app(tiny["r"], tiny["index"], hosts=hosts), base_url="http://search.lan:8000")
    assert c2.get("/").status_code == 200
    assert c2.get("/", headers={"Host": "evil.example"}).status_code == 421


def test_chunked_upload_stops_at_the_cap(tiny, monkeypatch):
    """A chunked multipart body (no Content-Length) of 8 MiB to a server with a 100 kB cap: 413 (or the connection
    closed), and the form parser's spool file never held more than the cap plus the form overhead and one chunk."""
    import httpx
    import starlette.formparsers as fp

    import lavimo.search.server as server_mod

    create_app = server_mod.create_app
    overhead = getattr(server_mod, "FORM_OVERHEAD_BYTES", 64 << 10)

    biggest = [0]
    base = fp.SpooledTemporaryFile

    class Tracked(base):  # every spool file of the form parser, with the most bytes any of them held
        def write(self, s):
            n = super().write(s)
            biggest[0] = max(biggest[0], self.tell())
            return n

    monkeypatch.setattr(fp, "SpooledTemporaryFile", Tracked)
    server, thread, port = start_server(create_app(tiny["r"], tiny["index"], max_upload_bytes=CAP))
    chunk = 64 << 10
    sent = [0]

    def body():
        yield (b"--XyZ\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nvideo\r\n--XyZ\r\nContent-Disposition: "
               b"form-data; name=\"file\"; filename=\"big.mp4\"\r\nContent-Type: video/mp4\r\n\r\n")
        for _ in range(128):  # 8 MiB
            sent[0] += chunk
            yield b"\0" * chunk
        yield b"\r\n--XyZ--\r\n"

    status = None
    try:
        with httpx.Client(timeout=30) as c:
            try:
                r = c.post(f"http://127.0.0.1:{port}/api/search", content=body(),
                           headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
                status = r.status_code
                assert r.status_code == 413, r.text
                assert "upload larger than" in r.json()["error"]
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                pass  # the server answered and closed while the client was still sending: checked below
    finally:
        server.should_exit = True
        thread.join(10)
    print(f"chunked body: {sent[0]} bytes generated, the largest spool held {biggest[0]}, answer {status}")
    # never vacuous: either the 413 was seen, or the form parser's spool did receive the upload's bytes (the cap
    # stopped a parse that was under way, not a server that refused the connection or never parsed the form)
    assert status == 413 or biggest[0] > 0, (status, biggest[0], sent[0])
    assert biggest[0] <= CAP + overhead + chunk, (biggest[0], sent[0])


def test_previews_only_from_inside_the_index(tiny, tmp_path):
    """An edited records.sqlite naming /etc/passwd, a ../ path or a symbolic link out of the directory as previews:
    404 and never the file's bytes; an honest preview is still served."""
    from fastapi.testclient import TestClient

    from lavimo.search.index import Index
    from lavimo.search.server import create_app

    d = tmp_path / "index"
    shutil.copytree(tiny["dir"], d)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret\n")
    (d / "previews" / "link.mp4").symlink_to(secret)
    depth = len(d.resolve().parts)
    con = sqlite3.connect(d / "records.sqlite")
    for row, preview in ((0, str(secret)), (1, "../" * depth + str(secret).lstrip("/")), (2, "previews/link.mp4")):
        con.execute("UPDATE motions SET preview = ? WHERE row = ?", (preview, row))
    con.commit()
    con.close()
    meta = json.loads((d / "index.json").read_text())  # the sizes it records, as a careful editor would
    meta["files"]["records.sqlite"]["bytes"] = (d / "records.sqlite").stat().st_size
    (d / "index.json").write_text(json.dumps(meta))
    index = Index.load(d, tiny["r"].sha256)
    c = TestClient(create_app(tiny["r"], index), base_url="http://localhost")
    for n in (0, 1, 2):
        r = c.get(f"/preview/{n}")
        assert r.status_code == 404 and b"secret" not in r.content, (n, r.status_code)
        assert index.preview_path(n) is None
    ok = c.get("/preview/3")
    assert ok.status_code == 200 and ok.headers["content-type"] == "video/mp4"
    assert ok.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------------------------------------ one line, exit 2
DISK_FULL = r"""
import errno, sys
import numpy as np
def full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
np.save = full
from lavimo.search.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_while_indexing_is_one_line(tiny, tmp_path):
    """``lavimo-search index`` when writing the latents (np.save) fails with ENOSPC: exit 2, one line saying so."""
    out = tmp_path / "idx"
    m = run_python(DISK_FULL, "index", "--checkpoint", tiny["ckpt"], "--shards", tiny["root"] / "shards",
                   "--out", out, "--no-progress", timeout=300)
    assert_clean_refusal(m, out, codes=(2,), max_rss_mib=4096, max_seconds=300)
    assert "no space left on device" in m.stderr and len(m.stderr.strip().splitlines()) == 1, m.stderr


@pytest.mark.parametrize("checkpoint", ["given", "recorded"])
@pytest.mark.parametrize("which", ["index.json", "motion.npy", "records.sqlite"])
def test_truncated_index_files_are_one_line(tiny, tmp_path, which, checkpoint):
    """A truncated index.json, latent file or records file: ``lavimo-search query`` exits 2 with one line naming
    that file, with ``--checkpoint`` and without (the checkpoint index.json records: the documented default)."""
    d = tmp_path / "index"
    shutil.copytree(tiny["dir"], d)
    f = d / which
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    given = ["--checkpoint", str(tiny["ckpt"])] if checkpoint == "given" else []
    m = run_measured([sys.executable, "-m", "lavimo.search.cli", "query", "--index", str(d), "--text", "a person walks",
                      *given], timeout=180)
    assert_clean_refusal(m, f, codes=(2,), max_rss_mib=4096, max_seconds=180)
    assert len(m.stderr.strip().splitlines()) == 1, m.stderr


# ------------------------------------------------------------------------------------------------ index fuzz
LOAD_INDEXES = reader_loop("""
import numpy as np
from lavimo.core.errors import BadInputError
from lavimo.search.index import Index
""", """
ix = Index.load(p)
ok = len(ix)
for i in range(ok):  # first use: every record, every search
    ix.entry(i), ix.keyid(i), ix.position(ix.keyid(i)), ix.video_vector(i)
for against in ("motion", "video", "text"):
    for i, _ in ix.search(np.ones(ix.vectors(against).shape[1], np.float32) / 4, 3, against):
        ix.caption(i) if against == "text" else ix.result(i, 0.0)
""")
INDEX_FIELDS = ["files", "count", "captions", "format", "version", "build_id", "latent_dim", "vectors"]


def _json_mutation(rng: np.random.Generator, meta: dict, text: str) -> str:
    kind = rng.choice(["cut", "flip", "nest", "field", "vectors"])
    if kind == "cut":
        return text[: int(rng.integers(0, len(text)))]
    if kind == "flip":
        i = int(rng.integers(0, len(text)))
        return text[:i] + chr((ord(text[i]) ^ int(rng.integers(1, 128))) or 65) + text[i + 1:]
    if kind == "nest":
        return "[" * 100_000 + "]" * 100_000
    m = json.loads(text)
    bad = [None, 1, 1e308, "x", [], {}, [1, 2], {"a": [[[]]]}, "/etc/passwd", "../../x", -1, 1 << 62][
        int(rng.integers(0, 12))]
    if kind == "vectors":
        name = str(rng.choice(["motion", "video", "text"]))
        field = str(rng.choice(["rows", "dtype", "ann"]))
        m["vectors"][name][field] = bad if field != "ann" else {"kind": "ivfpq", "nlist": bad, "m": 4,
                                                                "nprobe": 1, "refine": 1}
    else:
        m[str(rng.choice(INDEX_FIELDS))] = bad
    return json.dumps(m)


def _data_mutation(rng: np.random.Generator, data: bytes) -> bytes:
    """A data file (.npy or SQLite) cut, bytes flipped, or an .npy header declaring another shape."""
    b = bytearray(data)
    kind = rng.choice(["cut", "flip", "flips", "shape"])
    if kind == "cut":
        del b[int(rng.integers(0, len(b))):]
    elif kind == "flip":
        b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
    elif kind == "flips":
        for i in rng.integers(0, len(b), 20):
            b[int(i)] = int(rng.integers(0, 256))
    elif b[:6] == b"\x93NUMPY":  # an array header declaring a huge shape, in the same header length
        i = b.index(b"'shape': (") + 10
        end, nl = b.index(b")", i), b.index(b"\n", i)
        new = str(rng.choice(["99999999999, 32", "4000000000", "12, 99999999", "3, -1", "1e9, 3"])).encode()
        spaces = nl - len(bytes(b[:nl]).rstrip(b" "))  # the header's padding before its newline
        grow = len(new) - (end - i)
        if grow <= spaces:
            b[i:end] = new
            nl += grow
            if grow > 0:
                del b[nl - grow:nl]
            elif grow < 0:
                b[nl:nl] = b" " * -grow
    return bytes(b)


def _fuzz_base(tmp_path: Path, ann: str) -> Path:
    from lavimo.search.index import Entry, Index

    n, c = 1100 if ann == "ivfpq" else 6, 16
    g = np.random.default_rng(0)

    def lat(k: int) -> np.ndarray:
        x = g.standard_normal((k, c)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ents = [Entry(f"M{i:05d}", [f"caption {i}", f"other {i}"], {"kind": "features", "path": f"/x/{i}.npy"},
                  None) for i in range(n)]
    good = tmp_path / f"good-{ann}"
    Index(ents, lat(n), lat(n), g.random(n) < 0.6, lat(2 * n), np.repeat(np.arange(n), 2),
          {"checkpoint": "x", "checkpoint_sha256": "0" * 64, "latent_dim": c, "database": {}}).save(good, ann)
    return good


@pytest.mark.parametrize("ann", ["exact", "ivfpq"])
def test_fuzz_index_files(tmp_path, ann):
    """Mutated index.json (truncated, flipped, nested 100 000 deep, fields of the wrong type) and data files
    (latents, IVF-PQ arrays, records.sqlite: truncated, bytes flipped, .npy headers declaring huge shapes; sizes
    in index.json kept, so flipped files are read): Index.load and the first use of every record and of each
    search load them or refuse with one line naming a file of the index; never a crash; at most 200 MiB above
    the child's baseline (search imports torch)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = _fuzz_base(tmp_path, ann)
    meta_text = (good / "index.json").read_text()
    data = sorted(p.name for p in good.iterdir() if p.name != "index.json")

    @settings(derandomize=True, deadline=None, max_examples=2, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32 - 1))
    def run(seed):
        rng = np.random.default_rng(seed)
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        dirs = []
        for j in range(30):
            d = root / f"i{j}"
            shutil.copytree(good, d)
            if j % 3 == 0:
                (d / "index.json").write_text(_json_mutation(rng, json.loads(meta_text), meta_text))
            else:
                f = d / str(rng.choice(data))
                f.write_bytes(_data_mutation(rng, f.read_bytes()))
            dirs.append(str(d))
        m = run_python(LOAD_INDEXES, json.dumps(dirs), timeout=180)
        assert not m.timed_out and m.returncode == 0, m.stderr[-3000:]
        rows = [json.loads(line) for line in m.stdout.splitlines() if line.startswith("{")]
        assert len(rows) == len(dirs) + 1, m.stdout[-2000:]
        crashes = [r for r in rows if "crash" in r]
        assert not crashes, crashes[0]["crash"]
        for r in rows[:-1]:
            if "refused" in r:
                assert r["refused"].startswith(f"{r['file']}/") and "\n" not in r["refused"], r
        assert (rows[-1]["peak_kib"] - rows[-1]["base_kib"]) / 1024 < 200, rows[-1]
        assert m.seconds < 90

    run()


# ------------------------------------------------------------------------------------------------ review fixes
def test_npy_headers_are_checked_before_reading(tmp_path):
    """The latent files are read header first: a motion.npy whose header declares 128 MiB of header, or a
    (1, 67 M) float32 array, for an index.json of 6 motions of 16 columns is refused with one line naming
    motion.npy before any data is read (at most 100 MiB above the child's baseline); a format-1 index
    (index.npz + index.json) gets one line: rebuild."""
    good = _fuzz_base(tmp_path, "exact")
    dirs = []
    for name, data in (("hlen", b"\x93NUMPY\x02\x00" + (128 << 20).to_bytes(4, "little") + b"{" + b" " * 1000),
                       ("shape", None)):
        d = tmp_path / name
        shutil.copytree(good, d)
        if data is None:
            hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 67108864), }"
            hdr += " " * (118 - len(hdr)) + "\n"
            data = b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + b"\x00" * 4096
        (d / "motion.npy").write_bytes(data)
        dirs.append(d)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    np.savez(legacy / "index.npz", motion=np.zeros((1, 16), np.float32))
    (legacy / "index.json").write_text(json.dumps({"format": "lavimo-search-index", "version": 1, "entries": []}))
    m = run_python(LOAD_INDEXES, json.dumps([str(d) for d in dirs + [legacy]]), timeout=120)
    assert not m.timed_out and m.returncode == 0, m.stderr[-3000:]
    rows = [json.loads(line) for line in m.stdout.splitlines() if line.startswith("{")]
    assert all("refused" in r for r in rows[:-1]), rows
    assert (rows[-1]["peak_kib"] - rows[-1]["base_kib"]) / 1024 <= 100, rows
    for d, r in zip(dirs, rows):
        assert r["refused"].startswith(f"{d}/motion.npy: ") and "\n" not in r["refused"], r
    assert r"rebuild it with 'lavimo-search index'" in rows[2]["refused"] and "version 1" in rows[2]["refused"]


def test_index_files_must_have_the_jsons_shapes(tmp_path):
    """Every latent file must have the shape index.json implies (N motions, K captions, C = latent_dim) before
    its data is read."""
    from lavimo.search.index import Index

    good = _fuzz_base(tmp_path, "exact")
    n = len(Index.load(good))
    for field, value, match in (("latent_dim", 9, "motion.npy: header"), ("latent_dim", 1 << 20, "latent_dim"),
                                ("latent_dim", "8", "latent_dim"), ("captions", 13, "vectors.text.rows"),
                                ("count", n + 1, "vectors.motion.rows")):
        d = tmp_path / f"{field}-{value}"[:40]
        shutil.copytree(good, d)
        meta = json.loads((d / "index.json").read_text())
        meta[field] = value
        (d / "index.json").write_text(json.dumps(meta))
        with pytest.raises(BadInputError, match=match):
            Index.load(d)
    with pytest.raises(BadInputError, match="latent_dim"):
        Index.load(good, latent_dim=17)  # another model's latent size


def test_deeply_nested_index_json_without_checkpoint_is_one_line(tiny, tmp_path):
    """``lavimo-search query --index IDX --text walk`` (the checkpoint read from index.json, the documented default)
    on an index.json of 100 000 ``[``: exit 2, one line naming index.json, no traceback."""
    d = tmp_path / "index"
    shutil.copytree(tiny["dir"], d)
    for text in ("[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"checkpoint": ' + "[" * 100_000):
        (d / "index.json").write_text(text)
        m = run_measured([sys.executable, "-m", "lavimo.search.cli", "query", "--index", str(d), "--text", "walk"],
                         timeout=180)
        assert_clean_refusal(m, d / "index.json", codes=(2,), max_rss_mib=4096, max_seconds=180)
        assert len(m.stderr.strip().splitlines()) == 1, m.stderr


def test_nested_shard_meta_and_manifest_while_indexing(tiny, tmp_path, monkeypatch):
    """A shard sample whose meta.json nests 100 000 deep is a failed sample (the build goes on); a manifest that
    does is a BadInputError naming it, never a RecursionError."""
    import lavimo.dataset.shards.stream as st

    from lavimo.search.index import build_index, shard_items

    real = st._tar_samples
    hit = []

    def nested_first(url, skips):
        for raw in real(url, skips):
            if not hit:
                hit.append(raw["__key__"])
                raw = dict(raw, **{"meta.json": b"[" * 100_000})
            yield raw

    monkeypatch.setattr(st, "_tar_samples", nested_first)
    failed: list[str] = []
    items = list(shard_items(tiny["root"] / "shards", ["test"], tiny["r"], failed))
    assert len(items) == 3 and len(failed) == 1 and failed[0].startswith(hit[0]), failed
    monkeypatch.setattr(st, "_tar_samples", real)
    shards = tmp_path / "shards"
    shutil.copytree(tiny["root"] / "shards", shards)
    (shards / "test.json").write_text("[" * 100_000)
    with pytest.raises(BadInputError) as e:
        build_index(tiny["r"], tmp_path / "idx", shards=shards, splits=["test"], progress=False, previews=False)
    assert "test.json" in str(e.value)


def _old_style_previews(tiny, d: Path, videos: Path) -> list[str]:
    """A copy of the fixture's index in ``d`` as builds before previews were copied in wrote it: each entry's
    preview the absolute path of ``videos/<keyid>.mp4``, no ``previews/`` folder. Returns the keyids."""
    shutil.copytree(tiny["dir"], d)
    videos.mkdir(exist_ok=True)
    for p in (d / "previews").glob("*.mp4"):
        shutil.copyfile(p, videos / p.name)
    shutil.rmtree(d / "previews")
    con = sqlite3.connect(d / "records.sqlite")
    keys = [k for (k,) in con.execute("SELECT keyid FROM motions ORDER BY row")]
    for k in keys:
        con.execute("UPDATE motions SET preview = ? WHERE keyid = ?", (str(videos / f"{k}.mp4"), k))
    con.commit()
    con.close()
    meta = json.loads((d / "index.json").read_text())
    meta["files"]["records.sqlite"]["bytes"] = (d / "records.sqlite").stat().st_size
    (d / "index.json").write_text(json.dumps(meta))
    return keys


def test_rebuilding_an_old_index_restores_its_previews(tiny, tmp_path, caplog):
    """An index whose previews are absolute paths into the videos folder (built before previews were copied in):
    rebuilding it with --videos copies them into IDX/previews/ (the entries reused, nothing re-encoded); without
    --videos the outside previews are dropped with a logged note (never kept pointing outside)."""
    from lavimo.search.index import Index, build_index

    videos = tmp_path / "videos"
    d = tmp_path / "old"
    keys = _old_style_previews(tiny, d, videos)
    assert all(p is None for p in (Index.load(d).preview_path(i) for i in range(len(keys))))
    index, rep = build_index(tiny["r"], d, shards=tiny["root"] / "shards", splits=["test"], videos=videos,
                             previews=False, progress=False)
    assert (rep.done, rep.reused, rep.failed) == (0, len(keys), [])
    again = Index.load(d, tiny["r"].sha256)
    for i, k in enumerate(keys):
        assert again.entry(i).preview == f"previews/{k}.mp4"
        p = again.preview_path(i)
        assert p and Path(p).read_bytes() == (videos / f"{k}.mp4").read_bytes()
    d2 = tmp_path / "old2"
    _old_style_previews(tiny, d2, videos)
    with caplog.at_level("WARNING", logger="lavimo.search.index"):
        build_index(tiny["r"], d2, shards=tiny["root"] / "shards", splits=["test"], previews=False,
                    progress=False)
    again = Index.load(d2, tiny["r"].sha256)
    assert all(e.preview is None for e in again.iter_entries())
    assert any("outside the index directory" in r.getMessage() and "--videos" in r.getMessage()
               for r in caplog.records), caplog.text


def test_feature_previews_only_from_the_feature_folder(tmp_path, monkeypatch):
    """For an index of a feature folder the server renders ``source.path`` only when it is a string naming
    ``<keyid>.npy`` inside the folder index.json records (symbolic links resolved); another path, a link out, a
    missing or non-string path: 404, never a 500, nothing rendered."""
    import lavimo.search.preview as preview
    from fastapi.testclient import TestClient

    from lavimo.search.index import Entry, Index
    from lavimo.search.server import create_app

    rendered = []

    def fake(motion, out, **kw):
        rendered.append((np.asarray(motion).copy(), Path(out)))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
        return Path(out)

    monkeypatch.setattr(preview, "render_preview", fake)
    folder = tmp_path / "hml" / "new_joint_vecs"
    folder.mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "M00001.npy"
    outside.parent.mkdir()
    for v, f in enumerate((folder / "M00000.npy", outside, folder / "M00009.npy")):  # told apart by value
        np.save(f, np.full((4, 263), v, np.float32))
    (folder / "M00002.npy").symlink_to(outside)
    sources = [{"kind": "features", "path": str(folder / "M00000.npy")},  # the honest one
               {"kind": "features", "path": str(outside)},
               {"kind": "features", "path": str(folder / "M00002.npy")},  # a link out of the folder
               {"kind": "features"},
               {"kind": "features", "path": ["x"]},
               {"kind": "features", "path": str(folder / "M00009.npy")},  # another motion's file
               {"kind": "features", "path": str(folder / ".." / ".." / "elsewhere" / "M00001.npy")}]
    n = len(sources)
    entries = [Entry(f"M{k:05d}", [], s) for k, s in enumerate(sources)]
    z = np.zeros((n, 8), np.float32)
    index = Index(entries, z, z, np.zeros(n, bool), np.zeros((0, 8), np.float32), np.zeros(0, np.int64),
                  {"database": {"kind": "features", "path": str(tmp_path / "hml")}}, tmp_path / "idx")
    client = TestClient(create_app(None, index), base_url="http://localhost")
    assert client.get("/preview/0").status_code == 200
    for k in range(1, n):
        r = client.get(f"/preview/{k}")
        assert r.status_code == 404, (k, r.status_code, r.text)
        assert not app_can_preview(index, k)
    assert len(rendered) == 1 and rendered[0][1] == preview.skeleton_preview_path(tmp_path / "idx", "M00000")
    assert (rendered[0][0] == 0).all()  # from folder/M00000.npy, the honest file
    index.meta = {"database": {"kind": "features", "path": 7}}  # no usable feature folder recorded: nothing
    assert client.get("/preview/1").status_code == 404
    for db in (7, ["x"], {"kind": "features", "splits": [1, None]}):  # the page itself never fails on the JSON
        index.meta = {"database": db}
        assert client.get("/").status_code == 200 and client.get("/preview/1").status_code == 404, db


def app_can_preview(index, k: int) -> bool:
    """What the page offers a preview for: the index's own preview, else a feature file (SearchService.query)."""
    return index.preview_path(k) is not None or index.feature_file(k) is not None


def test_host_names_with_a_trailing_dot():
    """``localhost.`` (the fully qualified form, with or without a port) is localhost; ``localhost.evil`` and
    ``localhost..`` are not."""
    from lavimo.search.server import host_name

    assert host_name("localhost.") == host_name("LOCALHOST.:8000") == "localhost"
    assert host_name("127.0.0.1.:80") == "127.0.0.1"
    assert host_name("localhost.evil") == "localhost.evil" and host_name("localhost..") == "localhost."


# ------------------------------------------------------------------------------------------------ the page's API
WEBM = Path(__file__).resolve().parent / "fixtures" / "media" / "mediarecorder.webm"


def test_query_text_of_100k_characters_is_a_clear_400(client):
    """A pasted 100k-character text: a 400 saying how long it is and the limit (never truncated, never a 413 or a
    5xx) through the API, and the same for an over-long text in the page address; the server goes on answering."""
    from lavimo.search.inputs import MAX_TEXT

    long = "a person walks forward " * (100_000 // 23 + 1)
    r = client.post("/api/search", data={"text": long[:100_000], "k": "3"})
    assert r.status_code == 400 and r.json()["error"] == f"query text of 100000 characters: at most {MAX_TEXT} " \
                                                           "(shorten it)"
    page = client.get("/", params={"q": long[:20_000]})  # an address cannot hold 100k characters (HTTP clients)
    assert page.status_code == 400 and f"of 20000 characters: at most {MAX_TEXT}" in page.text
    assert client.post("/api/search", data={"text": "a person walks"}).status_code == 200


def test_template_syntax_in_a_query_is_text(client):
    """A query holding ``{results}``, Jinja syntax or HTML is searched and shown as typed (escaped), on the page and
    in the API: the old string-replacement page put the result cards where a query said ``{results}``."""
    q = "{results} {{ 7*7 }} {% if 1 %}x{% endif %} <b>bold</b> {summary}"
    page = client.get("/", params={"q": q, "mode": "text", "k": "2"})
    assert page.status_code == 200
    assert page.text.count('class="card"') == 2  # the results once, where they belong
    box = page.text.split('id="text"')[1].split(">")[0]
    assert "{results} {{ 7*7 }} {% if 1 %}x{% endif %} &lt;b&gt;bold&lt;/b&gt; {summary}" in box
    assert "<b>bold" not in page.text and "49" not in page.text
    r = client.post("/api/search", data={"text": q, "k": "2"})
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_text_and_file_together_is_refused(client, tiny):
    """Typed text is never silently dropped for a file: a request with both is a 400 (the page's mode picks one)."""
    r = client.post("/api/search", data={"text": "a person walks", "kind": "video"},
                    files={"file": ("clip.mp4", Path(tiny["index"].preview_path(0)).read_bytes(), "video/mp4")})
    assert r.status_code == 400 and "one query" in r.json()["error"]


def test_row_actions_paging_and_download(client, tiny):
    """"More like this" (motion -> motion by row, the row itself left out), the captions that fit a motion
    (motion -> text), similar videos over the stored video latents, paging (page 2 = ranks k+1..2k of the same
    ranking), and the .npy download (the shard's own motion; a number out of range is 404)."""
    from lavimo.search.query import motion_vector, video_vector

    index = tiny["index"]
    key = index.keyid(1)
    more = client.post("/api/search", data={"keyid": key, "k": "3"}).json()
    want = [index.keyid(i) for i, _ in index.search(motion_vector(index, 1), 4, "motion") if i != 1][:3]
    assert [h["keyid"] for h in more["results"]] == want and more["query"]["keyid"] == key
    caps = client.post("/api/search", data={"keyid": key, "k": "2", "against": "text"}).json()["results"]
    assert [h["rank"] for h in caps] == [1, 2] and all(h["caption"] for h in caps)
    vids = client.post("/api/search", data={"keyid": key, "k": "3", "against": "video"}).json()["results"]
    want = [index.keyid(i) for i, _ in index.search(video_vector(index, 1), 4, "video") if i != 1][:3]
    assert [h["keyid"] for h in vids] == want
    top4 = client.post("/api/search", data={"text": "a person walks", "k": "4"}).json()["results"]
    p2 = client.post("/api/search", data={"text": "a person walks", "k": "2", "page": "2"}).json()["results"]
    assert [(h["keyid"], h["rank"]) for h in p2] == [(h["keyid"], h["rank"]) for h in top4[2:]]
    page = client.get("/", params={"keyid": key, "mode": "more", "k": "2", "page": "2"})
    assert page.status_code == 200 and page.text.count('class="card"') == 1  # 3 others: ranks 3..3
    assert 'class="rank">#3<' in page.text
    assert client.get("/", params={"keyid": "../../etc/passwd", "mode": "more"}).status_code == 404
    npy = client.get(more["results"][0]["motion_url"])
    assert npy.status_code == 200 and npy.headers["x-content-type-options"] == "nosniff"
    from lavimo.search.motionfile import motion_features

    np.testing.assert_array_equal(np.load(__import__("io").BytesIO(npy.content)),
                                  motion_features(index, more["results"][0]["row"]))
    assert client.get(f"/motion/{len(index)}.npy").status_code == 404
    assert client.get("/motion/-1.npy").status_code in (404, 422)


def test_an_edited_shard_database_reads_nothing_else(tiny, monkeypatch):
    """The shard set and split of a motion come from index.json and records.sqlite, files from elsewhere: a
    database path that is no folder (a brace pattern the shard resolver would expand), a split that is not a name
    (``../x``) or one the index does not list reads nothing (None: the page's download is a 404)."""
    import dataclasses

    from lavimo.search.motionfile import motion_features

    index = tiny["index"]
    assert motion_features(index, 0) is not None  # the untouched index reads its motion
    db, entry = dict(index.meta["database"]), index.entry(0)
    edits = [({"path": db["path"] + "/x{0..9999999999}.tar"}, {}), ({}, {"split": "../x"}),
             ({"splits": []}, {}), ({"splits": "test"}, {})]
    for db_edit, src_edit in edits:
        monkeypatch.setitem(index.meta, "database", {**db, **db_edit})
        edited = dataclasses.replace(entry, source={**entry.source, **src_edit})
        monkeypatch.setattr(index, "entry", lambda i, edited=edited: edited)
        assert motion_features(index, 0) is None, (db_edit, src_edit)


def test_browser_webm_without_duration_is_accepted(client):
    """A WebM recorded by Chromium's MediaRecorder (tests/fixtures/media/mediarecorder.webm: "Duration: N/A",
    1k tbr) is a video query like any other: its frames are counted while reading, not taken from the header."""
    r = client.post("/api/search", data={"kind": "video", "k": "2", "start": "0.2", "end": "1.4", "crop": "0,0,64"},
                    files={"file": ("recording.webm", WEBM.read_bytes(), "video/webm")})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2 and r.json()["latency_ms"]["decode"] > 0


def test_concurrent_queries_never_wait_for_an_upload(tiny, monkeypatch):
    """50 text queries against a live server while one video upload is slow twice over: its body trickles in
    (held half-sent) and then its decoding blocks (held in the worker). Every text query is answered (no 5xx)
    while the upload is still held at each stage; the upload is answered once released. With the decode under
    the model lock the text queries would wait for it (the gates then open only when the guard times out)."""
    import concurrent.futures as cf

    import httpx

    from lavimo.search.server import create_app

    r = tiny["r"]
    decode_started, decode_gate, body_gate = threading.Event(), threading.Event(), threading.Event()
    real = r.video_tensor

    def held_decode(*a, **kw):
        decode_started.set()
        decode_gate.wait(120)  # a guard against a hang, not a timing assertion
        return real(*a, **kw)

    monkeypatch.setattr(r, "video_tensor", held_decode)
    server, thread, port = start_server(create_app(r, tiny["index"], max_upload_bytes=1 << 20))
    url = f"http://127.0.0.1:{port}/api/search"
    video = Path(tiny["index"].preview_path(0)).read_bytes()
    head = (b"--XyZ\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nvideo\r\n--XyZ\r\nContent-Disposition: "
            b"form-data; name=\"file\"; filename=\"slow.mp4\"\r\nContent-Type: video/mp4\r\n\r\n")

    def body():
        yield head + video[:len(video) // 2]
        body_gate.wait(120)
        yield video[len(video) // 2:] + b"\r\n--XyZ--\r\n"

    def text_query(n: int) -> int:
        with httpx.Client(timeout=120) as c:
            return c.post(url, data={"text": f"a person walks {n}", "k": "2"}).status_code

    pool = cf.ThreadPoolExecutor(51)
    try:
        upload = pool.submit(lambda: httpx.Client(timeout=300).post(
            url, content=body(), headers={"Content-Type": "multipart/form-data; boundary=XyZ"}))
        first = [f.result(timeout=150) for f in [pool.submit(text_query, n) for n in range(25)]]
        assert first == [200] * 25 and not upload.done() and not decode_started.is_set()
        body_gate.set()
        assert decode_started.wait(120)
        second = [f.result(timeout=150) for f in [pool.submit(text_query, n) for n in range(25, 50)]]
        assert second == [200] * 25 and not upload.done()  # the upload is still decoding: nobody waited for it
        decode_gate.set()
        answer = upload.result(timeout=300)
        assert answer.status_code == 200 and answer.json()["results"], answer.text
    finally:
        body_gate.set()
        decode_gate.set()
        pool.shutdown(wait=True)
        server.should_exit = True
        thread.join(10)


def test_motion_of_a_shard_entry_reads_only_its_member(tiny, monkeypatch):
    """The .npy download / skeleton preview reads one member of the shard (the entry's motion.npy), not every
    sample before it, and gives the loader's features for it."""
    from lavimo.dataset.shards import format as shard_format, stream
    from lavimo.search.motionfile import motion_features

    index = tiny["index"]
    n = len(index) - 1
    read: list[str] = []
    real = shard_format.iter_tar_members

    def spy(*args, **kwargs):
        for name, data in real(*args, **kwargs):
            read.append(name)
            yield name, data

    monkeypatch.setattr(shard_format, "iter_tar_members", spy)
    feats = motion_features(index, n)
    assert feats is not None and read == [f"{index.keyid(n)}.motion.npy"]
    monkeypatch.setattr(shard_format, "iter_tar_members", real)
    src, db = index.entry(n).source, index.meta["database"]
    url = next(u for u in stream.resolve_shards(Path(db["path"]), src["split"])[0] if Path(u).name == src["shard"])
    raw = next(r for r in stream._tar_samples(url, stream.SkipStats()) if r["__key__"] == index.keyid(n))
    np.testing.assert_array_equal(feats, shard_format.load_npy_bytes(raw["motion.npy"]).astype(np.float32))


def test_the_server_reads_the_shard_manifest_once(tiny, monkeypatch):
    """A service reads the shard set's manifest once (on the first motion asked for), not once per request."""
    from fastapi.testclient import TestClient

    from lavimo.dataset.shards import stream
    from lavimo.search.server import create_app

    index = tiny["index"]
    resolved: list[str] = []
    real = stream.resolve_shards
    monkeypatch.setattr(stream, "resolve_shards", lambda *a, **kw: resolved.append("x") or real(*a, **kw))
    client = TestClient(create_app(None, index), base_url="http://localhost")
    for n in (0, len(index) - 1, 0):
        got = client.get(f"/motion/{n}.npy")
        assert got.status_code == 200 and got.content.startswith(b"\x93NUMPY")
    assert resolved == ["x"]


def test_a_busy_render_lock_answers_503(client, tiny, monkeypatch):
    """A preview request that would wait for another render is answered 503 with Retry-After (bounded wait), so
    it does not hold a request thread that queries need; queries go on."""
    import lavimo.search.server as server

    monkeypatch.setattr(server, "RENDER_WAIT_S", 0.01)
    index = tiny["index"]
    p = server.preview.skeleton_preview_path(index.root, index.keyid(0))
    p.unlink(missing_ok=True)
    svc = client.app.state.service
    with svc.render_lock:  # another render in progress
        busy = client.get("/skeleton/0")
        assert busy.status_code == 503 and busy.headers["retry-after"] == str(server.RETRY_AFTER_S)
        assert "rendered" in busy.json()["error"]
        assert client.post("/api/search", data={"text": "a person walks", "k": "2"}).status_code == 200


def test_the_form_is_closed_whatever_the_answer(client, monkeypatch):
    """``POST /api/search`` closes its FormData (an upload's spooled temp file) on an answer and on a refusal."""
    from starlette.datastructures import FormData

    closed = []
    real = FormData.close

    async def close(self):
        closed.append(1)
        await real(self)

    monkeypatch.setattr(FormData, "close", close)
    assert client.post("/api/search", data={"text": "a person walks", "k": "2"}).status_code == 200
    bad = client.post("/api/search", files={"file": ("clip.txt", b"not a video", "text/plain")})
    assert bad.status_code == 415 and len(closed) == 2

"""The search page, the index and video queries on hostile input (docs/security.md, "Videos and images" and "The
search page and index"): text files posing as videos (ffconcat, HLS, image2 patterns) never make ffmpeg read
another file and answer the same whether that file exists or not; chunked uploads stop at the byte cap; a foreign
``Host`` header gets 421; previews are served only from inside the index directory; a full disk while indexing,
and truncated index files, are one line (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.errors import BadInputError  # noqa: E402
from tests.fixtures.untrusted import assert_clean_refusal, run_measured, run_python  # noqa: E402
from tests.fixtures.child_peak import reader_loop  # noqa: E402

CAP = 100_000  # the test server's upload cap, bytes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny checkpoint, its shards and an index with previews (the shards' own videos)."""
    from search.index import build_index
    from search.model import load
    from tests.fixtures.runs import random_tiny_checkpoint

    root = tmp_path_factory.mktemp("pagesafety")
    shards, ckpt, _ = random_tiny_checkpoint(root, n_test=4, n_classes=2, frames=(10, 14), samples_per_shard=4)
    r = load(ckpt)
    index, report = build_index(r, root / "index", shards=shards, splits=["test"], progress=False)
    assert not report.failed and index.preview_path(0) and Path(index.preview_path(0)).is_file()
    return {"root": root, "ckpt": ckpt, "r": r, "index": index, "dir": root / "index"}


@pytest.fixture()
def client(tiny):
    from fastapi.testclient import TestClient

    from search.server import create_app

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
        m = run_measured([sys.executable, "-m", "search.cli", "query", "--index", str(tiny["dir"]), "--video",
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

    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 421 and "Host" in r.json()["error"], (host, r.status_code)
        assert client.post("/api/search", data={"text": "a person walks"}, headers={"Host": host}).status_code == 421
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    from search.server import allowed_hosts, create_app

    monkeypatch.setenv("LAVIMO_SEARCH_ALLOWED_HOSTS", "search.lan, other.lan")
    hosts = allowed_hosts("192.168.1.5", ["box.example"])
    assert {"localhost", "127.0.0.1", "::1", "192.168.1.5", "box.example", "search.lan", "other.lan"} == set(hosts)
    c2 = TestClient(create_app(tiny["r"], tiny["index"], hosts=hosts), base_url="http://search.lan:8000")
    assert c2.get("/").status_code == 200
    assert c2.get("/", headers={"Host": "evil.example"}).status_code == 421


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chunked_upload_stops_at_the_cap(tiny, monkeypatch):
    """A chunked multipart body (no Content-Length) of 8 MiB to a server with a 100 kB cap: 413 (or the connection
    closed), and the form parser's spool file never held more than the cap plus the form overhead and one chunk."""
    import httpx
    import starlette.formparsers as fp
    import uvicorn

    import search.server as server_mod

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
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tiny["r"], tiny["index"], max_upload_bytes=CAP),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    chunk = 64 << 10
    sent = [0]

    def body():
        yield (b"--XyZ\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nvideo\r\n--XyZ\r\nContent-Disposition: "
               b"form-data; name=\"file\"; filename=\"big.mp4\"\r\nContent-Type: video/mp4\r\n\r\n")
        for _ in range(128):  # 8 MiB
            sent[0] += chunk
            yield b"\0" * chunk
        yield b"\r\n--XyZ--\r\n"

    try:
        with httpx.Client(timeout=30) as c:
            try:
                r = c.post(f"http://127.0.0.1:{port}/api/search", content=body(),
                           headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
                assert r.status_code == 413, r.text
                assert "upload larger than" in r.json()["error"]
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                pass  # the server answered and closed while the client was still sending: also a refusal
    finally:
        server.should_exit = True
        thread.join(10)
    print(f"chunked body: {sent[0]} bytes generated, the largest spool held {biggest[0]}")
    assert biggest[0] <= CAP + overhead + chunk, (biggest[0], sent[0])


def test_previews_only_from_inside_the_index(tiny, tmp_path):
    """An edited index.json naming /etc/passwd, a ../ path or a symbolic link out of the directory as previews:
    404 and never the file's bytes; an honest preview is still served."""
    from fastapi.testclient import TestClient

    from search.index import Index
    from search.server import create_app

    d = tmp_path / "index"
    shutil.copytree(tiny["dir"], d)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret\n")
    (d / "previews" / "link.mp4").symlink_to(secret)
    meta = json.loads((d / "index.json").read_text())
    depth = len(d.resolve().parts)
    meta["entries"][0]["preview"] = str(secret)
    meta["entries"][1]["preview"] = "../" * depth + str(secret).lstrip("/")
    meta["entries"][2]["preview"] = "previews/link.mp4"
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
np.savez = full
from search.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_while_indexing_is_one_line(tiny, tmp_path):
    """``lavimo-search index`` when writing index.npz fails with ENOSPC: exit 2, one line saying so."""
    out = tmp_path / "idx"
    m = run_python(DISK_FULL, "index", "--checkpoint", tiny["ckpt"], "--shards", tiny["root"] / "shards",
                   "--out", out, "--no-progress", timeout=300)
    assert_clean_refusal(m, out, codes=(2,), max_rss_mib=4096, max_seconds=300)
    assert "no space left on device" in m.stderr and len(m.stderr.strip().splitlines()) == 1, m.stderr


@pytest.mark.parametrize("which", ["index.json", "index.npz"])
def test_truncated_index_files_are_one_line(tiny, tmp_path, which):
    """A truncated index.json, or a truncated index.npz whose sha256 the JSON was edited to match: ``lavimo-search
    query`` exits 2 with one line naming that file."""
    from core.hashing import sha256_file

    d = tmp_path / "index"
    shutil.copytree(tiny["dir"], d)
    f = d / which
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    if which == "index.npz":
        meta = json.loads((d / "index.json").read_text())
        meta["npz_sha256"] = sha256_file(f)[0]
        (d / "index.json").write_text(json.dumps(meta))
    m = run_measured([sys.executable, "-m", "search.cli", "query", "--index", str(d), "--text", "a person walks",
                      "--checkpoint", str(tiny["ckpt"])], timeout=180)
    assert_clean_refusal(m, f, codes=(2,), max_rss_mib=4096, max_seconds=180)
    assert len(m.stderr.strip().splitlines()) == 1, m.stderr


# ------------------------------------------------------------------------------------------------ index fuzz
LOAD_INDEXES = reader_loop("""
from core.errors import BadInputError
from search.index import Index
""", """
ok = len(Index.load(p))
""")


def _json_mutation(rng: np.random.Generator, meta: dict, text: str) -> str:
    kind = rng.choice(["cut", "flip", "nest", "entry", "field"])
    if kind == "cut":
        return text[: int(rng.integers(0, len(text)))]
    if kind == "flip":
        i = int(rng.integers(0, len(text)))
        return text[:i] + chr((ord(text[i]) ^ int(rng.integers(1, 128))) or 65) + text[i + 1:]
    if kind == "nest":
        return "[" * 100_000 + "]" * 100_000
    m = json.loads(text)
    bad = [None, 1, 1e308, "x", [], {}, [1, 2], {"a": [[[]]]}, "/etc/passwd", "../../x"][int(rng.integers(0, 10))]
    if kind == "entry":
        j = int(rng.integers(0, len(m["entries"])))
        field = str(rng.choice(["keyid", "captions", "source", "preview", None]))
        if field == "None":
            m["entries"][j] = bad
        else:
            m["entries"][j][field] = bad
    else:
        m[str(rng.choice(["entries", "count", "format", "version", "npz_sha256", "latent_dim"]))] = bad
    return json.dumps(m)


def _npz_mutation(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["cut", "flip", "shape", "shape", "zipsize"])
    if kind == "cut":
        del b[int(rng.integers(0, len(b))):]
    elif kind == "flip":
        b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
    elif kind == "shape":  # an array header declaring a huge shape, in the same header length
        spots = [i for i in range(len(b)) if b[i:i + 10] == b"'shape': ("]
        i = spots[int(rng.integers(0, len(spots)))] + 10
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
    else:  # the zip directory's sizes of a member set huge
        spots = [i for i in range(len(b) - 4) if b[i:i + 4] == b"PK\x01\x02"]
        i = spots[int(rng.integers(0, len(spots)))]
        b[i + 20:i + 28] = (0xFFFFFFF0).to_bytes(4, "little") * 2
    return bytes(b)


def test_fuzz_index_files(tmp_path):
    """Mutated index.json (truncated, flipped, nested 100 000 deep, fields of the wrong type) and index.npz
    (truncated, flipped, headers declaring huge shapes, zip sizes set huge; the JSON's sha256 updated so the
    arrays are parsed): Index.load loads them or refuses with one line naming index.json or index.npz; never a
    crash; at most 200 MiB above the child's baseline (search imports torch)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from core.hashing import sha256_file
    from search.index import Entry, Index

    n, c = 6, 16
    g = np.random.default_rng(0)
    lat = lambda k: (g.standard_normal((k, c)) / 4).astype(np.float32)  # noqa: E731
    ents = [Entry(f"M{i:05d}", [f"caption {i}", f"other {i}"], {"kind": "features", "path": f"/x/{i}.npy"},
                  None) for i in range(n)]
    good = tmp_path / "good"
    Index(ents, lat(n), lat(n), np.ones(n, bool), lat(2 * n), np.repeat(np.arange(n), 2),
          {"checkpoint": "x", "checkpoint_sha256": "0" * 64, "latent_dim": c, "database": {}}).save(good)
    meta_text = (good / "index.json").read_text()
    npz_bytes = (good / "index.npz").read_bytes()

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
            if j % 2:
                (d / "index.json").write_text(_json_mutation(rng, json.loads(meta_text), meta_text))
            else:
                (d / "index.npz").write_bytes(_npz_mutation(rng, npz_bytes))
                if j % 4 == 0:  # the JSON names the mutated npz: its arrays are parsed
                    meta = json.loads(meta_text)
                    meta["npz_sha256"] = sha256_file(d / "index.npz")[0]
                    (d / "index.json").write_text(json.dumps(meta))
            dirs.append(str(d))
        m = run_python(LOAD_INDEXES, json.dumps(dirs), timeout=120)
        assert not m.timed_out and m.returncode == 0, m.stderr[-3000:]
        rows = [json.loads(line) for line in m.stdout.splitlines() if line.startswith("{")]
        assert len(rows) == len(dirs) + 1, m.stdout[-2000:]
        crashes = [r for r in rows if "crash" in r]
        assert not crashes, crashes[0]["crash"]
        for r in rows[:-1]:
            if "refused" in r:
                assert (r["refused"].startswith(f"{r['file']}/index.json") or
                        r["refused"].startswith(f"{r['file']}/index.npz")) and "\n" not in r["refused"], r
        assert (rows[-1]["peak_kib"] - rows[-1]["base_kib"]) / 1024 < 200, rows[-1]
        assert m.seconds < 60

    run()

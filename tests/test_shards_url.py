"""Shards from URLs (dataset/shards/source.py): ``train.py --shards`` / ``evaluate.py --shards`` read a shard set
from an http(s) base URL or a ``pipe:`` command with ``{}`` as well as from a directory.

A tiny shard set is served by ``http.server`` on 127.0.0.1 (port 0) in a thread. The end-to-end checks (marked
slow) train one epoch from the URL, from ``pipe:cat DIR/{}`` and from the directory with the same seed and compare
the weights bit for bit, and evaluate the run on the URL and on the directory (same metrics.json). The fast ones:
the location rule, a dead server and a hanging one exit 2 within seconds naming the URL, a failing command exits
2 naming it, manifests naming ``../x.tar``, ``http://evil/x.tar``, ``x.tar\\n`` or ``-Ix.tar`` are refused; a
server that stalls in a tar, or dribbles a manifest, fails within ``LAVIMO_FETCH_TIMEOUT``; closing a ``pipe:``
stream ends its processes; ``run.json`` hashes the manifest bytes training parsed without fetching them again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import lavimo.evaluation.cli as evaluate_script
from lavimo.core.errors import BadInputError
from lavimo.dataset.shards.format import read_manifest
from lavimo.dataset.shards.source import (
    FETCH_TIMEOUT, CommandFailed, FetchError, RemoteShards, fetch_bytes, fetch_timeout, is_remote, open_shard,
    shard_location, sha256_remote,
)
from lavimo.dataset.shards.stream import make_loader, resolve_shards
from tests.fixtures.runs import TINY_FLAGS, TRAIN_SET, assert_same_last_weights, metrics_rows, run_train, train_tiny

BASE = TINY_FLAGS


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextlib.contextmanager
def serve(directory: Path, handler=_QuietHandler):
    """Serve ``directory`` on http://127.0.0.1:PORT/ in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """127.0.0.1 is reached directly even where http_proxy is set (urllib and curl both read no_proxy)."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def site(shards, tmp_path_factory):
    """The tiny set served as http://127.0.0.1:PORT/data/shards (a path below the root, as on a real server)."""
    root = tmp_path_factory.mktemp("site")
    (root / "data").mkdir()
    shutil.copytree(shards, root / "data" / "shards")
    with serve(root) as base:
        yield base + "/data/shards"


_run = run_train


# ---------------------------------------------------------------------------------------------------------
# the rule


def test_location_rule(tmp_path):
    http = shard_location("http://host:8000/a/shards/")
    assert isinstance(http, RemoteShards) and str(http) == "http://host:8000/a/shards/"
    assert http.url("train.json") == "http://host:8000/a/shards/train.json"
    assert http / "train-000000.tar" == "http://host:8000/a/shards/train-000000.tar"
    assert shard_location("https://h/s").url("stats.npz") == "https://h/s/stats.npz"
    pipe = shard_location("pipe:aws s3 cp s3://bucket/shards/{} -")
    assert pipe.url("val-000001.tar") == "pipe:aws s3 cp s3://bucket/shards/val-000001.tar -"
    assert shard_location(str(tmp_path)) == tmp_path and shard_location(tmp_path) == tmp_path
    assert not is_remote(str(tmp_path)) and not is_remote("http://h/s/train-{000000..000003}.tar")
    for bad in ("pipe:cat shards/train.json", "s3://bucket/shards", "file:///data/shards", "gs://b/s",
                "http://h/s/train-000000.tar"):
        with pytest.raises(BadInputError):
            shard_location(bad)
    for bad in ("http://h/s#x", "http://h/s?token=1", "https://h/s/?", "https://h/s/#"):  # BASE/NAME impossible
        with pytest.raises(BadInputError, match="query .* or fragment"):
            shard_location(bad)
        with pytest.raises(ValueError):
            RemoteShards(bad)
    assert shard_location("pipe:curl -sf 'https://h/s/{}?token=1#x'").url("a.tar") == \
        "pipe:curl -sf 'https://h/s/a.tar?token=1#x'"
    for name in ("../x.tar", "a/b.tar", "http://evil/x.tar", "x.tar; rm -rf ~", "x.sh", "", ".tar",
                 "x.tar\n", "train.json\n", "-Ix.tar", "_x.tar", "--output=x.tar"):
        with pytest.raises(BadInputError):
            pipe.url(name)
        with pytest.raises(BadInputError):
            http.url(name)


def test_fetch_limits_and_failures():
    assert fetch_bytes("pipe:printf abc") == b"abc"
    with pytest.raises(FetchError, match="more than the 1000 bytes"):
        fetch_bytes("pipe:head -c 5000 /dev/zero", max_bytes=1000)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="did not finish within 0.5 s"):
        fetch_bytes("pipe:sleep 30", timeout=0.5)
    assert time.monotonic() - t0 < 15  # the timeout ended it, not the command (30 s); generous for a loaded machine
    with pytest.raises(CommandFailed, match=r"pipe:echo oops >&2; exit 3: the command exited with status 3 \(oops\)"):
        fetch_bytes("pipe:echo oops >&2; exit 3")


def test_manifest_and_stats_over_http_and_pipe(shards, site):
    local_urls, local_m, _ = resolve_shards(shards, "train")
    for spec in (site, f"pipe:cat {shards}/{{}}"):
        urls, m, root = resolve_shards(spec, "train")
        assert m == local_m and isinstance(root, RemoteShards)
        assert [u.rsplit("/", 1)[-1].split()[0] for u in urls] == [Path(u).name for u in local_urls]
    loader = make_loader(site, "val", batch_size=4, train=False)
    batches = list(loader)
    assert sum(len(b["keyid"]) for b in batches) == TRAIN_SET["n_val"]
    with pytest.raises(FileNotFoundError, match="HTTP 404"):
        resolve_shards(site, "test")  # the tiny set has no test split


# ---------------------------------------------------------------------------------------------------------
# failures: exit 2, quickly, naming the URL


def test_dead_server_exits_2_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/shards"
    t0 = time.monotonic()
    assert _run(["--shards", url, "--out", tmp_path / "run", "--epochs", 1, *BASE]) == 2
    err = capsys.readouterr().err
    assert f"{url}/train.json" in err and "cannot connect" in err, err
    assert not (tmp_path / "run").exists()
    code = evaluate_script.main(["--run", str(tmp_path / "nothing"), "--shards", url, "--device", "cpu",
                                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert url in err and "cannot connect" in err, err
    assert time.monotonic() - t0 < 20


def test_hanging_server_times_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAVIMO_FETCH_TIMEOUT", "1")
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/shards"
        t0 = time.monotonic()
        assert _run(["--shards", url, "--out", tmp_path / "run", "--epochs", 1, *BASE]) == 2
        assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert f"{url}/train.json" in err and "within 1 s" in err, err


def test_failing_pipe_and_bad_locations_exit_2(tmp_path, capsys):
    spec = f"pipe:cat {tmp_path}/missing/{{}}"
    assert _run(["--shards", spec, "--out", tmp_path / "run", "--epochs", 1, *BASE]) == 2
    err = capsys.readouterr().err
    assert f"pipe:cat {tmp_path}/missing/train.json" in err and "exited with status 1" in err, err
    for bad in ("pipe:cat shards/train.json", "s3://bucket/shards", "http://h/s#x", "http://h/s?token=1"):
        hint = "query (?...) or fragment (#...)" if bad.startswith("http") else ""
        assert _run(["--shards", bad, "--out", tmp_path / "run", "--epochs", 1, *BASE]) == 2
        err = capsys.readouterr().err
        assert bad in err and hint in err, err
        assert evaluate_script.main(["--run", str(tmp_path), "--shards", bad, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert bad in err and hint in err, err


@pytest.mark.parametrize("evil", ["../x.tar", "http://evil/x.tar", "pipe:touch pwned", "sub/x.tar",
                                  "x.tar\ntouch pwned", "x.tar\n", "-Ix.tar"])
def test_manifest_naming_other_files_is_refused(shards, tmp_path, capsys, evil):
    root = tmp_path / "site"
    shutil.copytree(shards, root / "shards")
    m = json.loads((root / "shards" / "train.json").read_text())
    m["shards"][0]["name"] = evil
    (root / "shards" / "train.json").write_text(json.dumps(m))
    with serve(root) as base:
        for spec in (base + "/shards", f"pipe:cat {root}/shards/{{}}"):
            with pytest.raises(BadInputError, match="not a plain '<name>.tar' file name"):
                resolve_shards(spec, "train")
            for flags in ([], ["--no-verify"]):
                assert _run(["--shards", spec, "--out", tmp_path / "run", "--epochs", 1, *flags, *BASE]) == 2
                assert "is not a plain '<name>.tar' file name" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_fetch_timeout_setting(monkeypatch, caplog):
    """inf / nan / <= 0 / not a number fall back to the default with a warning naming the variable (no
    OverflowError from a select(inf) or curl argument)."""
    monkeypatch.setenv("LAVIMO_FETCH_TIMEOUT", "Infinity")
    assert fetch_bytes("pipe:printf abc") == b"abc"
    with open_shard("pipe:printf abc") as fh:
        assert fh.read() == b"abc"
    monkeypatch.setenv("LAVIMO_FETCH_TIMEOUT", "2.5")
    assert fetch_timeout() == 2.5
    for bad in ("inf", "-inf", "nan", "0", "-1", "abc", "1e999"):
        monkeypatch.setenv("LAVIMO_FETCH_TIMEOUT", bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lavimo.dataset.shards.source"):
            assert fetch_timeout() == FETCH_TIMEOUT  # the first use of each value warns
        assert "LAVIMO_FETCH_TIMEOUT" in caplog.text and bad in caplog.text


def _stalling_handler(release: threading.Event):
    """Serves files as usual, except tars: their headers and first 1000 bytes, then nothing until ``release``."""
    class Handler(_QuietHandler):
        def do_GET(self):  # noqa: N802 - the base class's name
            if not self.path.endswith(".tar"):
                return super().do_GET()
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:1000])
            self.wfile.flush()
            release.wait(30)
            return None
    return Handler


@pytest.fixture
def stalling_site(shards):
    release = threading.Event()
    with serve(shards.parent, _stalling_handler(release)) as base:
        yield f"{base}/{shards.name}"
    release.set()


def test_stalled_tar_read_times_out(stalling_site, tmp_path, capsys, monkeypatch):
    """A server that answers the manifest but stalls inside a tar: reads fail within ~LAVIMO_FETCH_TIMEOUT naming
    the tar's URL (the loader, the sha256 check), and train.py --verify-shards full (which verifies first) exits 2
    within seconds."""
    monkeypatch.setenv("LAVIMO_FETCH_TIMEOUT", "1")
    urls, _, _ = resolve_shards(stalling_site, "val")
    t0 = time.monotonic()
    with open_shard(urls[0]) as fh:
        assert len(fh.read(1000)) == 1000
        with pytest.raises(FetchError, match=f"{urls[0]}: no data for 1 s|{urls[0]}: curl exited with status 28"):
            fh.read()
    assert time.monotonic() - t0 < 15  # the server stalls until the test ends: only the 1 s timeout ends a read
    with pytest.raises(FetchError, match=urls[0]):
        sha256_remote(urls[0])
    assert time.monotonic() - t0 < 30
    t0 = time.monotonic()
    assert _run(["--shards", stalling_site, "--out", tmp_path / "run", "--epochs", 1, "--verify-shards", "full",
                 *BASE]) == 2
    assert time.monotonic() - t0 < 20
    err = capsys.readouterr().err
    assert f"{stalling_site}/" in err and ".tar" in err, err
    assert not (tmp_path / "run").exists()


def _sleeping(tag: str) -> bytes:
    return subprocess.run(["pgrep", "-f", f"sleep {tag}"], capture_output=True).stdout


def test_pipe_stream_close_kills_the_command(monkeypatch):
    """close() of a pipe: stream whose command still runs ends its whole process group at once; a stalled
    command's read fails within the timeout; a non-zero exit at the end of the output names the command."""
    monkeypatch.setenv("LAVIMO_FETCH_TIMEOUT", "1")
    cmd = "pipe:head -c 100 /dev/zero; sleep 31.4159"
    fh = open_shard(cmd)
    assert fh.read(100) == bytes(100)
    assert _sleeping("31.4159")
    t0 = time.monotonic()
    fh.close()
    # bounds far below the command's 31 s (what waiting for it would take), far above a loaded machine's delays
    assert time.monotonic() - t0 < 10
    assert not _sleeping("31.4159")
    t0 = time.monotonic()
    with open_shard(cmd) as fh, pytest.raises(FetchError, match="no data for 1 s"):
        fh.read()
    assert time.monotonic() - t0 < 15
    assert not _sleeping("31.4159")
    with open_shard("pipe:printf abc; echo broken >&2; exit 4") as fh, \
            pytest.raises(CommandFailed, match=r"exit 4: the command exited with status 4 \(broken\)"):
        fh.read()


def test_http_tar_needs_curl(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(FetchError, match="http://h/s/a.tar: .*needs the curl program"):
        open_shard("http://h/s/a.tar")


@contextlib.contextmanager
def dribbling_server(at_once: bytes, dribbled: bytes, every: float = 0.1):
    """An http server on 127.0.0.1 that answers every request with ``at_once`` then ``dribbled`` one byte every
    ``every`` seconds; yields its base URL."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.1)
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(at_once)
                    for b in dribbled:
                        if stop.wait(every):
                            break
                        conn.sendall(bytes([b]))
                except OSError:
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        srv.close()


@pytest.mark.parametrize("part", ["body", "headers"])
def test_dribbling_server_cannot_stretch_a_fetch(part):
    """A server sending a byte every 0.1 s: the fetch of a small file fails at its overall deadline (1 s), not
    when the body (or the headers) are complete."""
    body = b"{" + b" " * 300 + b"}"
    head = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    at_once, dribbled = (head, body) if part == "body" else (b"", head + body)
    with dribbling_server(at_once, dribbled) as base:
        t0 = time.monotonic()
        with pytest.raises(FetchError, match=f"{base}/s/train.json: .*within 1 s"):
            fetch_bytes(f"{base}/s/train.json", timeout=1)
        assert time.monotonic() - t0 < 10  # dribbling the whole answer takes ~30 s


def test_run_json_hashes_the_manifest_bytes_training_parsed(shards, tmp_path, caplog):
    """run.json's manifest_sha256 of a remote set is the sha256 of the bytes read_manifest parsed, remembered
    when they were fetched: the server may be gone or serve other bytes by then; a manifest this process never
    fetched is recorded as unavailable (a warning), never as an error."""
    from lavimo.training.run_dir import RunDir, write_run_info

    root = tmp_path / "site"
    shutil.copytree(shards, root / "shards")
    original = (root / "shards" / "train.json").read_bytes()
    with serve(root) as base:
        loc = f"{base}/shards"
        manifests = {split: read_manifest(loc, split) for split in ("train", "val")}
    (root / "shards" / "train.json").write_bytes(original.replace(b"\n", b"\n\n"))  # other bytes, same JSON
    run = RunDir(tmp_path / "run").create()
    info = write_run_info(run, shards=loc, manifests=manifests)  # the server is gone: nothing is fetched
    rec = info["shards"]["splits"]["train"]
    assert rec["manifest"] == f"{loc}/train.json"
    assert rec["manifest_sha256"] == hashlib.sha256(original).hexdigest()
    assert "manifest_sha256_unavailable" not in rec
    on_disk = json.loads((run.root / "run.json").read_text())["shards"]["splits"]
    assert on_disk["val"]["manifest_sha256"] == hashlib.sha256((root / "shards" / "val.json").read_bytes()).hexdigest()
    other = {**manifests["train"], "num_samples": -1}  # not what was fetched
    with caplog.at_level(logging.WARNING, logger="lavimo.training.run_dir"):
        info = write_run_info(run, shards=loc, manifests={"train": other})
    rec = info["shards"]["splits"]["train"]
    assert rec["manifest_sha256"] is None and "fetched no manifest" in rec["manifest_sha256_unavailable"]
    assert "no sha256 for" in caplog.text
    pipe = f"pipe:cat {root}/shards/{{}}"
    m = read_manifest(pipe, "train")
    rec = write_run_info(run, shards=pipe, manifests={"train": m})["shards"]["splits"]["train"]
    assert rec["manifest_sha256"] == hashlib.sha256((root / "shards" / "train.json").read_bytes()).hexdigest()


def test_remote_tar_differing_from_its_manifest_stops_training(shards, tmp_path, capsys):
    root = tmp_path / "site"
    shutil.copytree(shards, root / "shards")
    tar = root / "shards" / "val-000000.tar"
    data = bytearray(tar.read_bytes())
    data[-2000] ^= 0xFF  # same size, other bytes
    tar.write_bytes(bytes(data))
    with serve(root) as base:
        # checked while streamed (the default): training stops when validation reads the tar's end
        assert _run(["--shards", base + "/shards", "--out", tmp_path / "streamed", "--epochs", 1, *BASE]) == 2
        err = capsys.readouterr().err
        assert f"{base}/shards/val-000000.tar: sha256 differs from the manifest" in err, err
        # --verify-shards full: before training, nothing written
        assert _run(["--shards", base + "/shards", "--out", tmp_path / "run", "--epochs", 1, "--verify-shards",
                     "full", *BASE]) == 2
    err = capsys.readouterr().err
    assert f"{base}/shards/val-000000.tar: sha256 differs from the manifest" in err, err
    assert not (tmp_path / "run").exists()


def test_gallery_clips_from_url(shards, site, tmp_path):
    from lavimo.evaluation.report import extract_shard_clips

    keys = next(iter(make_loader(shards, "val", batch_size=2, train=False)))["keyid"]
    local = extract_shard_clips(shards, "val", keys, tmp_path / "local")
    remote = extract_shard_clips(site, "val", keys, tmp_path / "url")
    assert sorted(local) == sorted(remote) == sorted(keys)
    for k in keys:
        assert remote[k].parent == tmp_path / "url" and remote[k].stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------
# end to end: one epoch from the URL / a pipe = from the directory


@pytest.fixture(scope="module")
def local_run(shards, tmp_path_factory):
    """Verified before training (--verify-shards full), so the runs compared with it (checked while streamed,
    or not at all) show that the check changes nothing."""
    return train_tiny(shards, tmp_path_factory.mktemp("local") / "run", 1, "--verify-shards", "full")


@pytest.mark.slow
def test_train_from_url_equals_local(local_run, shards, site, tmp_path):
    out = tmp_path / "run"
    assert _run(["--shards", site, "--out", out, "--epochs", 1, *BASE]) == 0
    rows, local_rows = metrics_rows(out), metrics_rows(local_run)
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0  # the epoch's loss and validation were logged
    assert_same_last_weights(local_run, out)
    for k in ("step", "lr", "train_loss", "val_t2m_R@1", "val_v2m_R@1", "val_score"):
        assert rows[0][k] == local_rows[0][k], k
    info = json.loads((out / "run.json").read_text())
    assert info["shards"]["root"] == site
    local = json.loads((local_run / "run.json").read_text())["shards"]["splits"]
    for split in ("train", "val"):  # each tar checked while streamed for training (the default)
        rec = info["shards"]["splits"][split]
        assert rec["manifest"] == f"{site}/{split}.json" and rec["verify"] == "sha256-stream"
        assert rec["manifest_sha256"] == local[split]["manifest_sha256"]
        assert {k: v["manifest_sha256"] for k, v in rec["shards"].items()} == {
            k: v["manifest_sha256"] for k, v in local[split]["shards"].items()}
        assert all(r["match"] for r in local[split]["shards"].values())
    # --verify-shards full from the URL: every tar streamed once before training and matched
    full = tmp_path / "full"
    assert _run(["--shards", site, "--out", full, "--max-steps", 1, "--verify-shards", "full", *BASE]) == 0
    for split in ("train", "val"):
        rec = json.loads((full / "run.json").read_text())["shards"]["splits"][split]
        assert rec["verify"] == "sha256" and rec["shards"] == local[split]["shards"]
    assert json.loads((out / "config.json").read_text())["trainer"]["shards"] == site


@pytest.mark.slow
def test_train_from_pipe_equals_local(local_run, shards, tmp_path):
    out = tmp_path / "run"
    assert _run(["--shards", f"pipe:cat {shards}/{{}}", "--out", out, "--epochs", 1, "--no-verify", *BASE]) == 0
    assert_same_last_weights(local_run, out)
    splits = json.loads((out / "run.json").read_text())["shards"]["splits"]
    assert splits["train"]["verify"] == "skipped"


@pytest.mark.slow
def test_evaluate_on_url_equals_local(local_run, shards, site, tmp_path):
    common = ["--run", str(local_run), "--split", "val", "--protocol", "all", "threshold", "--batch-size", "8",
              "--device", "cpu", "--no-progress"]
    assert evaluate_script.main([*common, "--shards", str(shards), "--out", str(tmp_path / "local")]) == 0
    assert evaluate_script.main([*common, "--shards", site, "--out", str(tmp_path / "url")]) == 0
    a = json.loads((tmp_path / "local" / "metrics.json").read_text())
    b = json.loads((tmp_path / "url" / "metrics.json").read_text())
    assert a == b and a["all"]["n"] == TRAIN_SET["n_val"]
    assert json.loads((tmp_path / "url" / "eval_info.json").read_text())["shards"] == site

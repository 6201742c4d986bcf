"""``lavimo-search query`` / ``batch``: every input checked before the model loads (exit 2, one line, the model
never loaded), many queries for one load (a bad line reported and counted, the others answered: exit 1), and
``query --server`` through a running page."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.fixtures.runs import random_tiny_index

    return random_tiny_index(tmp_path_factory.mktemp("batch"), n_test=6)


@pytest.fixture()
def no_model(monkeypatch):
    """Any model load fails the test: the command must have refused before it."""
    import lavimo.search.model

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(lavimo.search.model, "load", refuse)


def _main(capsys, *args) -> tuple[int, str, str]:
    from lavimo.search.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inputs_checked_before_the_model_loads(tiny, tmp_path, capsys, no_model):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "q.csv").write_text("a person walks\n")
    idx = tiny["dir"]
    cases = [
        (("query", "--index", idx, "--text", "   "), "empty query text"),
        (("query", "--index", idx, "--text", "x" * 5000), "5000 characters: at most 1000"),
        (("query", "--index", idx, "--motion", tmp_path / "missing.npy"), "missing.npy: motion: file not found"),
        (("query", "--index", idx, "--video", tmp_path / "missing.mp4"), "missing.mp4: video: file not found"),
        (("query", "--index", idx, "--video", tmp_path / "notes.txt"), "notes.txt: video: expected one of"),
        (("query", "--index", idx, "--text", "a", "--k", "0"), "--k must be >= 1"),
        (("query", "--index", idx, "--text", "a", "--offset", "-1"), "offset must be an integer >= 0"),
        (("query", "--index", idx, "--text", "a", "--against", "text"), "a text query searches motion or video"),
        (("query", "--index", idx, "--text", "a", "--start", "3", "--end", "1"), "end (1 s) must be after start"),
        (("query", "--index", tmp_path, "--text", "a"), "no index"),
        (("query", "--index", idx, "--text", "a", "--checkpoint", tmp_path / "no.safetensors"),
         "no.safetensors: no such checkpoint"),
        (("batch", "--index", idx, "--queries", tmp_path / "none.jsonl", "--out", tmp_path / "o.jsonl"),
         "none.jsonl: no such queries file"),
        (("batch", "--index", idx, "--queries", tmp_path / "q.csv", "--out", tmp_path / "o.jsonl"),
         "expected a .txt"),
        (("serve", "--index", tmp_path), "no index"),
    ]
    for args, msg in cases:
        code, out, err = _main(capsys, *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err and not out
    assert not (tmp_path / "o.jsonl").exists()


def test_batch_one_load_many_queries(tiny, tmp_path, capsys):
    """A .jsonl of text, keyid, motion-file and bad lines: one line out per query, in order; the good ones equal
    a query one at a time (same keyids and ranks), each bad one an error line; exit 1 and the count on stderr."""
    from lavimo.search.query import run_query
    from lavimo.search.motionfile import motion_features

    r, index = tiny["r"], tiny["index"]
    np.save(tmp_path / "m.npy", motion_features(index, 2))
    lines = [json.dumps({"text": "a person walks forward", "k": 3, "id": "t1"}),
             json.dumps({"keyid": index.keyid(1), "against": "text", "k": 2}),
             json.dumps({"motion": "m.npy", "k": 3, "offset": 1}),
             "",  # skipped
             json.dumps({"text": "  "}),
             json.dumps({"motion": "missing.npy"}),
             json.dumps({"text": "a", "colour": "red"}),
             "{not json",
             json.dumps(["a list"]),
             json.dumps({"keyid": "no-such-motion"})]
    lines += [json.dumps({"text": f"a person jumps {n}"}) for n in range(70)]  # more than one text batch
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "res" / "out.jsonl"
    code, stdout, err = _main(capsys, "batch", "--index", tiny["dir"], "--queries", tmp_path / "q.jsonl", "--out", out)
    assert code == 1 and "6 of 79 queries failed" in err, err
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 79 and [g["line"] for g in got[:9]] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert got[0]["id"] == "t1"
    want = run_query(r, index, text="a person walks forward", k=3)["results"]
    assert [(h["keyid"], h["rank"]) for h in got[0]["results"]] == [(h["keyid"], h["rank"]) for h in want]
    want = run_query(r, index, row=1, against="text", k=2)["results"]
    assert [h["caption"] for h in got[1]["results"]] == [h["caption"] for h in want]
    want = run_query(r, index, motion=tmp_path / "m.npy", k=3, offset=1)["results"]
    assert [(h["keyid"], h["rank"]) for h in got[2]["results"]] == [(h["keyid"], h["rank"]) for h in want]
    errors = [g["error"] for g in got[3:9]]
    assert ("empty query text" in errors[0] and "missing.npy: motion: file not found" in errors[1]
            and "unknown field(s) colour" in errors[2] and "not JSON" in errors[3] and "JSON object" in errors[4]
            and "not in the index" in errors[5]), errors
    assert all("results" in g and "error" not in g for g in got[9:])
    (tmp_path / "q.txt").write_text("# a comment\na person walks\n\na person jumps\n")
    code, stdout, err = _main(capsys, "batch", "--index", tiny["dir"], "--queries", tmp_path / "q.txt", "--out", out)
    assert code == 0 and "2 answered, 0 failed" in stdout and len(out.read_text().splitlines()) == 2


def test_batch_lines_checked_before_the_model_loads(tmp_path, no_model):
    """check_all (what batch runs before the model loads) runs every non-keyid line's real check, files
    included: a missing or wrongly typed file is that line's error before any model is loaded."""
    from lavimo.search.batch import check_all

    (tmp_path / "notes.txt").write_text("x")
    lines = [json.dumps({"text": "a person walks"}), json.dumps({"motion": "missing.npy"}),
             json.dumps({"video": "notes.txt"}), json.dumps({"keyid": "000001"}), json.dumps({"text": "a", "k": 0}),
             json.dumps({"text": "a", "against": "text"})]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    got = check_all(tmp_path / "q.jsonl")
    assert [(no, err is None) for no, _, err in got] == [(1, True), (2, False), (3, False), (4, True), (5, False),
                                                          (6, False)]
    errs = [err for _, _, err in got]
    assert "missing.npy: motion: file not found" in errs[1] and str(tmp_path) in errs[1]
    assert "notes.txt: video: expected one of" in errs[2] and "k must be" in errs[4] and "searches" in errs[5]


def test_batch_unreadable_and_failing_lines_are_reported(tiny, tmp_path, capsys, monkeypatch):
    """An input that cannot be read (OSError) or decoded (RuntimeError) is that line's error; the others are
    answered; exit 1."""
    import lavimo.search.batch as batch
    from lavimo.search.motionfile import motion_features

    for name in ("ok.npy", "locked.npy", "broken.npy"):
        np.save(tmp_path / name, motion_features(tiny["index"], 2))
    real = batch.decode_query

    def decode(retriever, index, q):
        if q.motion is not None and q.motion.name == "locked.npy":
            raise PermissionError(13, "Permission denied", str(q.motion))
        if q.motion is not None and q.motion.name == "broken.npy":
            raise RuntimeError("decoder failed")
        return real(retriever, index, q)

    monkeypatch.setattr(batch, "decode_query", decode)
    lines = [json.dumps({"motion": n}) for n in ("locked.npy", "ok.npy", "broken.npy")]
    (tmp_path / "q.jsonl").write_text("\n".join(lines + [json.dumps({"text": "a person walks"})]) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = _main(capsys, "batch", "--index", tiny["dir"], "--queries", tmp_path / "q.jsonl", "--out", out)
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert code == 1 and "2 of 4 queries failed" in err, err
    assert "Permission denied" in got[0]["error"] and "decoder failed" in got[2]["error"]
    assert "results" in got[1] and "results" in got[3]


def test_query_server_checks_the_local_file_first(tmp_path, capsys, no_model):
    """``query --server``: the local file is checked (exists, known suffix) and one the server would refuse (over
    its upload cap, found by stat on a sparse file; an AMASS .npz) is exit 2 before anything is sent (the port
    below has no server: reaching it would be another message)."""
    from lavimo.search.inputs import MAX_UPLOAD_BYTES

    url = "http://127.0.0.1:9"
    big = tmp_path / "big.mp4"
    with open(big, "wb") as fh:
        fh.truncate(MAX_UPLOAD_BYTES + 1)
    (tmp_path / "m.npz").write_bytes(b"PK")
    for args, msg in ((("--motion", tmp_path / "missing.npy"), "missing.npy: motion: file not found"),
                      (("--video", big), "over the search server's upload cap of 64 MiB"),
                      (("--motion", tmp_path / "m.npz"), "the search server takes .npy motions")):
        code, out, err = _main(capsys, "query", "--server", url, *args)
        assert code == 2 and msg in err and "cannot reach" not in err and len(err.strip().splitlines()) == 1, err


def test_query_through_a_running_server(tiny, tmp_path, capsys):
    """``query --server URL``: the same answer as the local query, without loading a model here; a motion file is
    uploaded; a refused query is exit 2 with the server's message; an unreachable server is one line."""
    import lavimo.search.cli as cli
    from lavimo.search.motionfile import motion_features
    from lavimo.search.server import create_app
    from tests.fixtures.runs import start_server

    server, thread, port = start_server(create_app(tiny["r"], tiny["index"]))
    url = f"http://127.0.0.1:{port}"
    try:
        code, out, _ = _main(capsys, "query", "--index", tiny["dir"], "--text", "a person walks", "--json", "--k", "3")
        local = json.loads(out)
        real_open = cli.open_index
        cli.open_index = None  # --server never loads a model
        try:
            code, out, err = _main(capsys, "query", "--server", url, "--text", "a person walks", "--json", "--k", "3")
            assert code == 0, err
            remote = json.loads(out)
            assert [h["keyid"] for h in remote["results"]] == [h["keyid"] for h in local["results"]]
            np.save(tmp_path / "m.npy", motion_features(tiny["index"], 0))
            code, out, err = _main(capsys, "query", "--server", url, "--motion", tmp_path / "m.npy", "--captions")
            assert code == 0 and out.count("\n") == 6, (out, err)
            code, out, err = _main(capsys, "query", "--server", url, "--keyid", "nope", "--k", "2")
            assert code == 2 and "HTTP 404" in err and len(err.strip().splitlines()) == 1
        finally:
            cli.open_index = real_open
    finally:
        server.should_exit = True
        thread.join(10)
    code, out, err = _main(capsys, "query", "--server", url, "--text", "a person walks")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


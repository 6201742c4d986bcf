"""build-shards and build-shards check on untrusted input: crafted keyids, sidecars that do not match their
video or clip, crafted tar members, temporary files of a killed run, exit codes, ENOSPC, interrupts and worker
processes that must die with their parent, and the streaming manifest verifier."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.fixtures.shard_fixtures import FakeEmbedder, fake_features, make_corpus  # noqa: E402
from tests.fixtures.child_peak import PEAK  # noqa: E402

from lavimo.dataset.clip import Text  # noqa: E402
from lavimo.core.errors import BadInputError  # noqa: E402
from lavimo.dataset.shards.format import member_name, read_manifests, write_tar  # noqa: E402
from lavimo.dataset.shards.build import BuildConfig, build_shards, temp_leftovers  # noqa: E402
from lavimo.dataset.shards.check import check_shards, verify_shards  # noqa: E402
from lavimo.dataset.shards.cli import main as cli_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"train": 4, "val": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety-corpus")
    clips, videos = make_corpus(root, COUNTS, size=16, frames=(6, 9))
    return clips, videos


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    clips, videos = corpus
    out = tmp_path_factory.mktemp("safety-shards")
    rep = _build(clips, videos, out)
    assert not rep.failed and not rep.skipped
    return out


def _build(clips, videos, out, **kw):
    cfg = BuildConfig(out=out, videos=videos, samples_per_shard=kw.pop("samples_per_shard", 2), **kw)
    return build_shards(clips, cfg, embedder=FakeEmbedder(), features_fn=fake_features, show_progress=False)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_manifest_entry(out: Path, split: str, tar: Path) -> None:
    """Make the manifest agree with a rewritten tar (so only the members are wrong, not the hash)."""
    m = json.loads((out / f"{split}.json").read_text())
    data = tar.read_bytes()
    for e in m["shards"]:
        if e["name"] == tar.name:
            e["bytes"], e["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (out / f"{split}.json").write_text(json.dumps(m))


# ------------------------------------------------------------------------------------------ 1. keyids


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "a.b", ".."])
def test_member_name_refuses_crafted_keyids(bad, tmp_path):
    with pytest.raises(BadInputError):
        member_name(bad, "motion.npy")
    with pytest.raises(BadInputError):
        member_name("000001", "../motion.npy")
    with pytest.raises(BadInputError):
        write_tar(tmp_path / "t.tar", [{"__key__": bad, "motion.npy": b"x"}])
    assert not list(tmp_path.iterdir())  # neither the tar nor its temp file
    assert member_name("000001", "motion.npy") == "000001.motion.npy"


def test_crafted_keyids_fail_per_clip_and_nothing_leaves_the_output(corpus, tmp_path):
    clips, videos = corpus
    vids = _copy_set(videos, tmp_path / "in" / "videos")
    # bait: files a naive join of videos/ with these keyids would find
    shutil.copy(vids / "000000.mp4", tmp_path / "in" / "x.mp4")
    shutil.copy(vids / "000000.json", tmp_path / "in" / "x.json")
    (vids / "a").mkdir()
    shutil.copy(vids / "000000.mp4", vids / "a" / "b.mp4")
    texts = (Text("a person walks", None, None),)
    crafted = [SimpleNamespace(keyid=k, split="train", texts=texts) for k in ("../x", "/abs", "a/b", "a.b")]
    out = tmp_path / "out"
    before = _tree(tmp_path)
    rep = _build(list(clips) + crafted, vids, out, splits=("train",))
    for k in ("../x", "/abs", "a/b", "a.b"):
        assert k in rep.failed and "keyid" in rep.failed[k], rep.failed
    assert rep.done == COUNTS["train"] and rep.not_done().keys() == {"../x", "/abs", "a/b", "a.b"}
    assert set(read_manifests(out)["train"]["failed"]) == {"../x", "/abs", "a/b", "a.b"}
    new = _tree(tmp_path) - before
    assert all(p == "out" or p.startswith("out/") for p in new), new
    for tar in out.glob("*.tar"):
        for name in tarfile.open(tar).getnames():
            assert "/" not in name and ".." not in name and name.split(".")[0].isdigit()
    assert check_shards(out).ok


# ------------------------------------------------------------------------------------------ 3. sidecars


def _side(vids: Path, key: str) -> dict:
    return json.loads((vids / f"{key}.json").read_text())


def _write_side(vids: Path, key: str, side: dict) -> None:
    (vids / f"{key}.json").write_text(json.dumps(side))


def test_sidecar_video_size_sha256_and_keyid_are_verified(corpus, tmp_path):
    clips, videos = corpus
    vids = _copy_set(videos, tmp_path / "videos")
    keys = [c.keyid for c in clips if c.split == "train"]
    good, wrong_sha, truncated, other = keys
    for k in keys:
        data = (vids / f"{k}.mp4").read_bytes()
        _write_side(vids, k, {**_side(vids, k), "video_size": len(data),
                              "video_sha256": hashlib.sha256(data).hexdigest()})
    side = _side(vids, wrong_sha)
    _write_side(vids, wrong_sha, {**side, "video_sha256": "0" * 64})
    data = (vids / f"{truncated}.mp4").read_bytes()
    (vids / f"{truncated}.mp4").write_bytes(data[: len(data) // 2])
    _write_side(vids, other, {**_side(vids, other), "keyid": good})  # a sidecar copied from another clip
    rep = _build(clips, vids, tmp_path / "out", splits=("train",))
    assert set(rep.failed) == {wrong_sha, truncated, other}, rep.failed
    assert f"{wrong_sha}.mp4" in rep.failed[wrong_sha] and "sha256" in rep.failed[wrong_sha]
    assert f"{truncated}.mp4" in rep.failed[truncated] and "bytes" in rep.failed[truncated]
    assert f"{other}.json" in rep.failed[other] and "keyid" in rep.failed[other]
    assert rep.done == 1


def test_sidecar_with_bad_fields_fails_the_clip(corpus, tmp_path):
    clips, videos = corpus
    vids = _copy_set(videos, tmp_path / "videos")
    a, b, c, d = [c.keyid for c in clips if c.split == "train"]
    _write_side(vids, a, {**_side(vids, a), "video_size": "big"})
    _write_side(vids, b, {**_side(vids, b), "frames": [-1, "x"]})
    _write_side(vids, c, {**_side(vids, c), "fps": 10 ** 400})
    (vids / f"{d}.json").write_text("[1, 2]")
    rep = _build(clips, vids, tmp_path / "out", splits=("train",))
    assert "video_size" in rep.failed[a] and "frames" in rep.failed[b] and "fps" in rep.failed[c]
    assert f"{d}.json" in rep.failed[d]


# ------------------------------------------------------------------------------------------ 2. readers (check)


def _crafted_tar(src: Path, dst: Path) -> None:
    """``src`` with extra members: traversal names, an absolute name, a nested name and a symlink."""
    with tarfile.open(src) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]
    with tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data))
        for name in ("../evil.motion.npy", "/abs.meta.json", "a/b.texts.json", "000001..x"):
            ti = tarfile.TarInfo(name)
            ti.size = 3
            tf.addfile(ti, io.BytesIO(b"bad"))
        link = tarfile.TarInfo("000099.video.jpgs")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)


def test_check_refuses_crafted_members(built, tmp_path, capsys):
    out = _copy_set(built, tmp_path / "set")
    tar = out / "train-000000.tar"
    _crafted_tar(tar, tar)
    _rewrite_manifest_entry(out, "train", tar)
    rep = check_shards(out)
    text = "\n".join(rep.problems)
    for name in ("../evil.motion.npy", "/abs.meta.json", "a/b.texts.json", "000001..x", "000099.video.jpgs"):
        assert f"member {name!r} refused" in text, text
    assert str(tar) in text and rep.samples["train"] == COUNTS["train"]  # the real samples still counted
    assert cli_main(["check", str(out)]) == 1
    assert "PROBLEM" in capsys.readouterr().out
    assert not (tmp_path / "evil.motion.npy").exists() and not Path("/abs.meta.json").exists()


def test_check_refuses_manifest_naming_a_file_outside(built, tmp_path):
    out = _copy_set(built, tmp_path / "set")
    m = json.loads((out / "val.json").read_text())
    m["shards"][0]["name"] = "../outside.tar"
    (out / "val.json").write_text(json.dumps(m))
    rep = check_shards(out)
    assert any("val.json" in p and "../outside.tar" in p for p in rep.problems), rep.problems
    with pytest.raises(BadInputError, match="val.json"):
        verify_shards(out, ["val"])


def test_check_reports_nonfinite_motion(built, tmp_path):
    out = _copy_set(built, tmp_path / "set")
    tar = out / "val-000000.tar"
    with tarfile.open(tar) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            if ti.name.endswith(".motion.npy"):
                arr = np.load(io.BytesIO(data))
                arr[0, 0] = np.nan
                buf = io.BytesIO()
                np.save(buf, arr)
                data = buf.getvalue()
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    _rewrite_manifest_entry(out, "val", tar)
    assert any("NaN" in p for p in check_shards(out).problems)


# ------------------------------------------------------------------------------------------ 7d. verify_shards


def test_verify_shards_streams_and_names_bad_files(built, tmp_path):
    res = verify_shards(built)
    assert res and all(r["ok"] and r["problem"] is None for r in res)
    assert {Path(r["file"]).name for r in res} == {e["name"] for m in read_manifests(built).values()
                                                     for e in m["shards"]}
    r0 = res[0]
    assert len(r0["sha256"]) == 64 and r0["size"] == Path(r0["file"]).stat().st_size == r0["expected_size"]
    out = _copy_set(built, tmp_path / "set")
    t0, t1 = out / "train-000000.tar", out / "train-000001.tar"
    t0.write_bytes(t0.read_bytes()[:1000])           # truncated
    data = bytearray(t1.read_bytes())
    data[600] ^= 0xFF                                 # same size, one byte flipped
    t1.write_bytes(bytes(data))
    (out / "val-000000.tar").unlink()                 # missing
    bad = {Path(r["file"]).name: r["problem"] for r in verify_shards(out, ["train", "val"]) if not r["ok"]}
    assert set(bad) == {"train-000000.tar", "train-000001.tar", "val-000000.tar"}
    assert str(t0) in bad["train-000000.tar"] and "bytes" in bad["train-000000.tar"]
    assert "sha256" in bad["train-000001.tar"] and "missing" in bad["val-000000.tar"]
    assert verify_shards(out, ["test"]) == []  # an empty split: nothing to check
    with pytest.raises(BadInputError, match="other.json"):
        verify_shards(out, ["other"])


# ------------------------------------------------------------------------------------------ 4. leftovers


def test_temp_files_of_a_killed_run_are_leftovers_then_removed(built, corpus, tmp_path, capsys, caplog):
    out = _copy_set(built, tmp_path / "set")
    n_shards = check_shards(out).shards
    junk = [out / ".train-000000.tar.ab12cd34.tmp.tar", out / ".train.json.zz99yy88.tmp.json",
            out / ".build" / ".train-000001.tar.json.q1w2e3r4.tmp.json"]
    for p in junk:
        p.write_bytes(b"partial")
    (out / ".train.json.zz99yy88.tmp.json").write_text((out / "train.json").read_text())  # a whole manifest
    mine = out / ".notes.txt"  # not one of ours: left alone
    mine.write_text("keep")
    assert sorted(temp_leftovers(out)) == sorted(junk)
    rep = check_shards(out)
    assert rep.ok and rep.shards == n_shards and sorted(rep.leftovers) == sorted(map(str, junk))
    assert set(read_manifests(out)) == {"train", "val", "test"}
    assert cli_main(["check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"LEFTOVER {p}" in printed for p in junk)
    caplog.set_level("INFO", logger="lavimo.dataset.shards.build")
    report = _build(*corpus, out)
    assert sorted(report.leftovers_removed) == sorted(map(str, junk))
    assert not any(p.exists() for p in junk) and mine.exists()
    assert "interrupted run" in caplog.text
    assert report.done == 0 and report.kept == sum(COUNTS.values())  # the set itself is untouched


# ------------------------------------------------------------------------------------------ 6. exit codes


@pytest.fixture
def cli_env(corpus, tmp_path, monkeypatch):
    """build-shards CLI with the clips of the corpus, fake features and the fake text model."""
    import lavimo.dataset.annotations
    import lavimo.dataset.shards.build
    import lavimo.dataset.text_embed
    clips, videos = corpus
    vids = _copy_set(videos, tmp_path / "videos")
    amass = tmp_path / "amass"
    amass.mkdir()
    ann = tmp_path / "annotations.json"
    ann.write_text("{}")
    state = {"clips": list(clips)}
    monkeypatch.setattr(lavimo.dataset.annotations, "load_clips", lambda *a, **k: state["clips"])
    monkeypatch.setattr(lavimo.dataset.text_embed, "SentenceEmbedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setattr(lavimo.dataset.shards.build, "default_features", lambda clip, *a, **k: fake_features(clip))
    args = ["--annotations", str(ann), "--amass", str(amass), "--videos", str(vids), "--out",
            str(tmp_path / "out"), "--workers", "1", "--samples-per-shard", "2", "--quiet"]
    return SimpleNamespace(args=args, videos=vids, out=tmp_path / "out", state=state, amass=amass, ann=ann)


def test_exit_0_only_when_every_clip_is_done(cli_env, capsys):
    assert cli_main(cli_env.args) == 0
    (cli_env.videos / "000001.mp4").write_bytes(b"not a video")      # fails
    (cli_env.videos / "000002.mp4").unlink()                         # skipped (missing input)
    assert cli_main(cli_env.args + ["--overwrite"]) == 1
    out = capsys.readouterr().out
    assert "failed 000001" in out and "skipped 000002" in out and "2 clips not written" in out
    assert read_manifests(cli_env.out)["train"]["num_samples"] == COUNTS["train"] - 2  # the rest is written


@pytest.mark.parametrize("case", ["videos", "amass", "annotations_missing", "annotations_garbage", "out_is_file"])
def test_exit_2_for_setup_errors_one_line(cli_env, case, capsys, monkeypatch):
    args = list(cli_env.args)
    if case == "videos":
        args[args.index("--videos") + 1] = str(cli_env.videos / "nope")
        name = "nope"
    elif case == "amass":
        args[args.index("--amass") + 1] = str(cli_env.amass / "nope")
        name = "nope"
    elif case == "annotations_missing":
        args[args.index("--annotations") + 1] = str(cli_env.ann.parent / "missing.json")
        name = "missing.json"
    elif case == "annotations_garbage":
        monkeypatch.undo()  # the real load_clips on a file that is not JSON
        monkeypatch.setattr("lavimo.dataset.text_embed.SentenceEmbedder", lambda *a, **k: FakeEmbedder())
        cli_env.ann.write_bytes(b"\xff\xfe{not json")
        name = "annotations.json"
    else:
        cli_env.out.write_text("a file, not a directory")
        name = "out"
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "Traceback" not in err[0], err


def test_enospc_is_a_setup_error_naming_the_file(cli_env, capsys, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    assert cli_main(cli_env.args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device" in err[0] and "train-000000.tar" in err[0], err
    assert not temp_leftovers(cli_env.out) and not list(cli_env.out.glob("*.tar"))


# ------------------------------------------------------------------------------------------ 5. signals, workers

_SCRIPT_HEAD = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import numpy as np
from tests.fixtures.shard_fixtures import fake_features, make_corpus
import lavimo.dataset.annotations, lavimo.dataset.shards.build, lavimo.dataset.text_embed

class FakeEmbedder:
    name, dim = "fake-embedder", 8
    def info(self):
        return {{"name": self.name, "dim": self.dim, "pooling": "mean", "normalized": True}}
    def encode(self, sentences):
        return np.full((len(sentences), self.dim), 8 ** -0.5, np.float32)

root = Path({root!r})
clips, videos = make_corpus(root, {{"train": 4}}, size=16, frames=(6, 8))

def features(clip, *a, **k):
    if clip.keyid >= "000002":  # the second shard never finishes
        (root / f"worker-{{os.getpid()}}").write_text("")
        time.sleep(120)
    return fake_features(clip)
"""


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "run.py"
    path.write_text(_SCRIPT_HEAD.format(repo=str(ROOT), root=str(tmp_path)) + textwrap.dedent(body))
    return path


def _wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_the_parent_is_killed(tmp_path):
    script = _script(tmp_path, """
        cfg = lavimo.dataset.shards.build.BuildConfig(out=root / "out", videos=videos, samples_per_shard=2, workers=2)
        lavimo.dataset.shards.build.build_shards(clips, cfg, embedder=FakeEmbedder(), features_fn=features, show_progress=False)
    """)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        pids = _wait_for(lambda: [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
                         if len(list(tmp_path.glob("worker-*"))) == 2 else None, 300, "two busy workers")
        assert all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        # prctl's parent-death signal is at once; the bound (a poll) only allows a loaded machine to reap them
        _wait_for(lambda: not any(_alive(p) for p in pids), 60, "the workers to die with their parent")
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in tmp_path.glob("worker-*"):  # never leave a sleeper behind, even when the test fails
            try:
                os.kill(int(p.name.split("-")[1]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_build_and_reports_what_finished(tmp_path, sig):
    script = _script(tmp_path, """
        amass = root / "amass"
        amass.mkdir()
        lavimo.dataset.annotations.load_clips = lambda *a, **k: clips
        lavimo.dataset.text_embed.SentenceEmbedder = lambda *a, **k: FakeEmbedder()
        lavimo.dataset.shards.build.default_features = features
        from lavimo.dataset.shards.cli import main
        sys.exit(main(["--annotations", str(root / "run.py"), "--amass", str(amass), "--videos", str(videos),
                       "--out", str(root / "out"), "--samples-per-shard", "2", "--workers", "2", "--quiet"]))
    """)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (tmp_path / "out" / "train-000000.tar").is_file() and list(tmp_path.glob("worker-*")),
                  300, "the first shard and a busy worker")
        pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)  # polls the exit: generous for a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    report = json.loads((tmp_path / "out" / ".build" / "report.json").read_text())
    assert report["interrupted"] == sig.name and report["done"] == 2 and report["shards_written"] == 1
    assert "interrupted" in stdout and "Traceback" not in stderr
    assert not temp_leftovers(tmp_path / "out") and not (tmp_path / "out" / "train-000001.tar").exists()
    _wait_for(lambda: not any(_alive(p) for p in pids), 60, "the pool workers to stop")


# ------------------------------------------------------------------- 7. build state and stats (issue 24)
@pytest.mark.parametrize("case", ["truncated", "not_an_object", "deep", "feature_dim"])
def test_bad_build_state_is_one_line_exit_2(cli_env, case, capsys):
    """``.build/set.json`` that is truncated, not an object, nested too deeply or with a non-integer feature_dim:
    exit 2 with one line naming it (a JSONDecodeError / AttributeError / TypeError traceback before)."""
    assert cli_main(cli_env.args) == 0
    state = cli_env.out / ".build" / "set.json"
    text = state.read_text()
    state.write_text({"truncated": text[: len(text) // 2], "not_an_object": "[1, 2]",
                      "deep": "[" * 100000 + "]" * 100000,
                      "feature_dim": json.dumps({**json.loads(text), "feature_dim": [8]})}[case])
    capsys.readouterr()
    assert cli_main(cli_env.args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set.json" in err[0] and "Traceback" not in err[0], err
    if case == "feature_dim":
        assert "feature_dim" in err[0]


@pytest.mark.parametrize("case", ["npy", "8TiB", "truncated"])
def test_check_reports_a_bad_stats_file(built, tmp_path, case, capsys):
    """A stats.npz that is really a .npy, declares 8 TiB, or is cut short: one problem naming it, exit 1 (a
    TypeError / MemoryError traceback before)."""
    from tests.fixtures import array_bombs as ab

    out = _copy_set(built, tmp_path / "set")
    stats = out / "stats.npz"
    if case == "npy":
        stats.write_bytes(ab.npy_bytes(np.ones(8, np.float32)))
    elif case == "8TiB":
        ab.huge_npz(stats, declared=1 << 43)
    else:
        stats.write_bytes(stats.read_bytes()[:-40])
    assert cli_main(["check", str(out)]) == 1
    text = capsys.readouterr().out
    assert "stats.npz" in text and "Traceback" not in text


def _test_render(vids: Path, n: int, size: int) -> None:
    """``vids/000001.mp4`` (``n`` frames of ffmpeg's ``testsrc`` at ``size`` x ``size``, 20 fps) and its sidecar."""
    import subprocess

    import imageio_ffmpeg

    vids.mkdir(exist_ok=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size={size}x{size}:rate=20", "-frames:v", str(n), "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", str(vids / "000001.mp4")], check=True, timeout=120)
    (vids / "000001.json").write_text(json.dumps({"keyid": "000001", "num_frames": n, "fps": 20.0}))


# ------------------------------------------------------------------------ issue 24: long renders are accepted
@pytest.mark.parametrize("video_format", ["jpgs", "mp4"])
def test_long_clip_is_accepted(tmp_path, video_format):
    """A 25,000-frame clip (20 min 50 s at 20 fps; 16 x 16 pixels to stay fast) is a sample in both formats: jpgs
    frames are decoded and JPEG-encoded chunk by chunk, mp4 frames are counted from the packets (before: refused
    past read_video's 20,000 frames, and in jpgs mode past 2 GiB of decoded frames, ~9 min at frame size 256)."""
    from types import SimpleNamespace

    from lavimo.dataset.shards.build import prepare_sample
    from lavimo.dataset.video_frames import jpgs_info

    n = 25_000
    vids = tmp_path / "videos"
    _test_render(vids, n, 16)
    clip = SimpleNamespace(keyid="000001", frames=None, fps=20.0, amass_path="KIT/1/walk_poses.npz",
                           dataset="kit", split="train", mirrored=False, texts=[],
                           frame_spec=SimpleNamespace(rule="all", start=None, end=None))
    cfg = SimpleNamespace(videos=vids, video_format=video_format, frame_size=16, jpeg_quality=90)
    sample = prepare_sample(clip, cfg, lambda c: np.zeros((n - 1, 8), np.float32))
    meta = json.loads(sample["meta.json"])
    assert meta["num_frames"] == n
    if video_format == "jpgs":
        assert jpgs_info(sample["video.jpgs"])[:3] == (n, 16, 16)
    else:
        assert sample["video.mp4"] == (vids / "000001.mp4").read_bytes()


_JPGS_PEAK = PEAK + r"""
import json, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from lavimo.dataset.shards.build import prepare_sample

def peak():
    return peak_kib() / 1024  # this process's and its ffmpeg's

base = peak()
n = int(sys.argv[2])
clip = SimpleNamespace(keyid="000001", frames=None, fps=20.0, amass_path="KIT/1/walk_poses.npz", dataset="kit",
                       split="train", mirrored=False, texts=[], frame_spec=SimpleNamespace(rule="all", start=None,
                                                                                          end=None))
cfg = SimpleNamespace(videos=Path(sys.argv[1]), video_format="jpgs", frame_size=256, jpeg_quality=90)
sample = prepare_sample(clip, cfg, lambda c: np.zeros((n - 1, 8), np.float32))
print(json.dumps({"frames": json.loads(sample["meta.json"])["num_frames"], "jpgs": len(sample["video.jpgs"]),
                  "growth": peak() - base}))
"""


def test_jpgs_mode_holds_one_chunk_of_decoded_frames(tmp_path):
    """2,000 frames of 256 x 256 (375 MiB decoded) become a video.jpgs member while the process grows by far less
    than the decoded clip: frames are JPEG-encoded chunk by chunk (before: all decoded at once, +436 MiB measured)."""


    from tests.fixtures.untrusted import run_python

    n = 2000
    vids = tmp_path / "videos"
    _test_render(vids, n, 256)
    m = run_python(_JPGS_PEAK, vids, n, timeout=120)
    assert m.returncode == 0 and not m.timed_out, m.stderr[-2000:]
    out = json.loads(m.stdout.strip().splitlines()[-1])
    assert out["frames"] == n, out
    decoded_mib = n * 256 * 256 * 3 / 2**20
    assert out["growth"] < decoded_mib / 3, out  # one chunk (12 MiB) + the JPEGs, not the decoded clip

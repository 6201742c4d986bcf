"""SIGTERM at random moments while the CPUs are busy (issue 24): ``render-amass`` always exits 1 (0 when it had
finished first) with a valid report, never dies by a signal or aborts; a signal that comes once the outcome is
decided (the report being written) changes neither the report nor the exit status (``render-amass`` and
``build-shards``).

The bug this guards against: under load, a SIGTERM made ``render-amass`` print ``terminate called without an
active exception`` and die by SIGABRT (exit -6). The pose-ahead thread of :func:`lavimo.render.pipeline.render_clips`
was left running (a daemon thread) when the run stopped; if it was inside a torch kernel when the interpreter
finalised, CPython ended it with ``pthread_exit`` as it re-took the GIL, and the unwind through torch's
``noexcept`` GIL guard called ``std::terminate``. See docs/rendering.md ("Signals").

Each run is pinned to one CPU beside another run and a busy-looping burner process on that same CPU (the burners
are started and stopped by the test); up to two CPUs are used. One tiny corpus is shared; the moment of
each signal is drawn (seeded) within the run's measured rendering time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
CLIPS = 8
SECONDS = 1.0       # 20 frames per clip
INTERRUPTS = 20     # signals sent in all (the acceptance bar of issue 24)
LANES_PER_CPU = 2   # runs at a time per CPU (the start-up, ~2 s of CPU, dominates: they overlap)
SEED = 24
#: generous bounds: a loaded 1-core machine may be several times slower than a quiet one; they only end a hung run
READY_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 120.0



def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), PYOPENGL_PLATFORM="egl", HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _pin(proc: subprocess.Popen, cpu: int) -> None:
    """Pin a just-started child to ``cpu`` (threads it starts later inherit it; no ``preexec_fn``, which is
    unsafe with the lanes' threads)."""
    try:
        os.sched_setaffinity(proc.pid, {cpu})
    except ProcessLookupError:
        pass


#: a busy loop that ends by itself when the test process is gone (even killed by SIGKILL) or after 10 minutes
BURN = ("import os, time\n"
        "parent, end = os.getppid(), time.monotonic() + 600\n"
        "while os.getppid() == parent and time.monotonic() < end:\n"
        "    for _ in range(200000):\n"
        "        pass\n")


class Burner:
    """One busy-looping process per CPU in ``cpus``, each pinned to its CPU, in its own process group."""

    def __init__(self, cpus: list[int]):
        self.procs: list[subprocess.Popen] = []
        try:
            for cpu in cpus:
                self.procs.append(subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True,
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
                _pin(self.procs[-1], cpu)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
        self.procs = []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(AMASS root, annotations.json of CLIPS clips of SECONDS each) of a 4-motion synthetic corpus."""
    from lavimo.dataset.synth.corpus import generate_corpus

    root = tmp_path_factory.mktemp("shutdown_stress")
    generate_corpus(root, n_motions=4, subjects=1, nsim_size=0)
    motions = json.loads((root / "annotations.json").read_text())
    paths = [motions[k]["path"] for k in sorted(motions)]
    ann = {f"c{i:03d}": {"path": paths[i % len(paths)], "duration": SECONDS,
                         "annotations": [{"seg_id": f"s{i}", "text": "a person walks", "start": 0.0,
                                          "end": SECONDS}]}
           for i in range(CLIPS)}
    (root / "ann").mkdir()  # not beside the corpus's splits/ (they would select the corpus's own keyids)
    (root / "ann" / "annotations.json").write_text(json.dumps(ann))
    yield root / "amass", root / "ann" / "annotations.json"
    shutil.rmtree(root, ignore_errors=True)


def _run(corpus, out: Path, cpu: int, delay: float | None) -> dict:
    """One ``render-amass`` run pinned to ``cpu``; with ``delay``, SIGTERM that many seconds after it logged its
    set-up line (its handlers are installed by then). Returns what the checks need."""
    amass, ann = corpus
    err_path = out.with_suffix(".stderr")
    cmd = [sys.executable, "-m", "lavimo.render.cli", "--amass", str(amass), "--annotations", str(ann), "--out", str(out),
           "--size", str(SIZE)]
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    _pin(proc, cpu)
    sent = False
    try:
        end = time.monotonic() + READY_TIMEOUT_S
        while "clips to consider" not in err_path.read_text() and proc.poll() is None:
            assert time.monotonic() < end, f"render-amass did not start within {READY_TIMEOUT_S} s"
            time.sleep(0.02)
        if delay is not None:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                sent = True
        proc.wait(EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return {"rc": proc.returncode, "err": err_path.read_text(), "sent": sent, "out": out, "delay": delay}


def _check(run: dict) -> None:
    """Exit 1 after the signal (0 when the run had finished first), one valid report whose counts add up, every
    rendered clip verified, no temporary file left."""
    from lavimo.render.pipeline import verify_outputs

    rc, err, out = run["rc"], run["err"], run["out"]
    when = "no signal" if run["delay"] is None else f"SIGTERM {run['delay']:.2f} s after set-up"
    where = f"({when}, exit {rc})\n{err[-3000:]}"
    assert rc in (0, 1), where
    assert "Traceback" not in err and "terminate called" not in err, where
    rep = json.loads((out / "render-report.json").read_text())
    assert rep["clips"] == CLIPS and rep["failed"] == {} and rep["num_failed"] == 0, where
    assert rep["rendered"] + rep["skipped"] + rep["num_not_attempted"] == CLIPS, where
    assert rep["num_not_attempted"] == len(rep["not_attempted"]), where
    if rep["interrupted"] is None:  # finished before the signal (or the signal came after the report)
        assert rc == 0 and rep["rendered"] == CLIPS, where
    else:
        assert rep["interrupted"] == "SIGTERM" and run["sent"] and rc == 1, where
        assert "interrupted by SIGTERM" in err, where
    mp4s = sorted(p.stem for p in out.glob("c*.mp4"))
    assert len(mp4s) == rep["rendered"] and not set(rep["not_attempted"]) & set(mp4s), where
    for k in mp4s:
        assert verify_outputs(out, k)[0], (k, where)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], where


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins processes to CPUs (Linux)")
def test_sigterm_at_random_moments_under_load_always_exits_with_a_report(corpus, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    lanes = cpus * LANES_PER_CPU  # runs in parallel, each pinned, beside one burner per CPU
    burner = Burner(cpus)
    try:
        # the run's rendering time under this load, measured: signals land anywhere within it (and a little after)
        base = _run(corpus, tmp_path / "base", cpus[0], None)
        _check(base)
        assert base["rc"] == 0
        t_base = time.monotonic()
        render_s = json.loads((tmp_path / "base" / "render-report.json").read_text())["seconds"]
        rng = random.Random(SEED)
        delays = [rng.uniform(0.0, 1.1 * render_s) for _ in range(INTERRUPTS)]
        runs: list[dict] = []
        problems: list[BaseException] = []

        def lane(k: int) -> None:
            try:
                for i in range(k, INTERRUPTS, len(lanes)):
                    runs.append(_run(corpus, tmp_path / f"run{i:02d}", lanes[k], delays[i]))
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                problems.append(e)

        threads = [threading.Thread(target=lane, args=(k,)) for k in range(len(lanes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if problems:
            raise problems[0]
    finally:
        burner.stop()
    print(f"base run: {render_s:.2f} s rendering; {INTERRUPTS} interrupted runs in {time.monotonic() - t_base:.1f} s; "
          f"exit codes {sorted(r['rc'] for r in runs)}")
    assert len(runs) == INTERRUPTS
    failures = []
    for run in sorted(runs, key=lambda r: str(r["out"])):
        try:
            _check(run)
        except AssertionError as e:
            failures.append(f"{run['out'].name}: {e}")
    assert not failures, f"{len(failures)} of {INTERRUPTS} runs:\n" + "\n".join(failures)
    # the signals did interrupt rendering (not only runs that had finished)
    assert sum(1 for r in runs if r["rc"] == 1) >= INTERRUPTS // 2, [(r["rc"], r["delay"]) for r in runs]


# ----------------------------------------------------------------------------------------------------
# a signal once the outcome is decided: deterministic, in-process (the stress test's late SIGTERMs hit the
# same window by chance: on the old code one of 20 runs died by SIGTERM, exit -15, after writing its report)


def _sigterm_before(module, monkeypatch, name: str) -> list[str]:
    """Make ``module.write_json`` send this process SIGTERM just before it writes a file called ``name``."""
    original, sent = module.write_json, []

    def write_json(path, obj, **kw):
        if Path(path).name == name and not sent:
            sent.append(str(path))
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, in this thread, at the next bytecode
        return original(path, obj, **kw)

    monkeypatch.setattr(module, "write_json", write_json)
    return sent


def test_render_signal_while_the_report_is_written_is_ignored(corpus, tmp_path, monkeypatch, capsys):
    import lavimo.render.cli
    from lavimo.render.cli import main

    amass, ann = corpus
    keys = tmp_path / "keys.txt"
    keys.write_text("c000\nc001\n")
    sent = _sigterm_before(lavimo.render.cli, monkeypatch, "render-report.json")
    out = tmp_path / "out"
    rc = main(["--amass", str(amass), "--annotations", str(ann), "--out", str(out), "--size", str(SIZE),
               "--keyids", str(keys)])
    err = capsys.readouterr().err
    assert sent, "the report was not written"
    rep = json.loads((out / "render-report.json").read_text())
    assert (rc, rep["interrupted"], rep["rendered"]) == (0, None, 2), err[-2000:]
    assert "interrupted" not in err and "stopping after the current frame" not in err


def test_build_shards_signal_while_the_report_is_written_is_ignored(tmp_path, monkeypatch, capsys):
    import lavimo.dataset.annotations
    import lavimo.dataset.shards.build
    import lavimo.dataset.text_embed
    from lavimo.dataset.shards.cli import main
    from tests.fixtures.shard_fixtures import FakeEmbedder, fake_features, make_corpus

    clips, videos = make_corpus(tmp_path / "corpus", {"train": 3, "val": 2}, size=16, frames=(6, 9))
    monkeypatch.setattr(lavimo.dataset.annotations, "load_clips", lambda *a, **k: clips)
    monkeypatch.setattr(lavimo.dataset.text_embed, "SentenceEmbedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setattr(lavimo.dataset.shards.build, "default_features", lambda clip, *a, **k: fake_features(clip))
    (tmp_path / "amass").mkdir()
    (tmp_path / "annotations.json").write_text("{}")
    sent = _sigterm_before(lavimo.dataset.shards.build, monkeypatch, "report.json")
    out = tmp_path / "out"
    rc = main(["--annotations", str(tmp_path / "annotations.json"), "--amass", str(tmp_path / "amass"), "--videos",
               str(videos), "--out", str(out), "--splits", "train,val", "--workers", "1", "--samples-per-shard", "2",
               "--quiet"])
    err = capsys.readouterr().err
    assert sent, "the report was not written"
    rep = json.loads((out / ".build" / "report.json").read_text())
    assert (rc, rep["interrupted"], rep["done"]) == (0, None, 5), err[-2000:]

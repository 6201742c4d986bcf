"""scripts/slurm/*.sbatch on a real single-node Slurm cluster started on localhost (tests/fixtures/slurm_cluster.py:
munged + slurmctld + slurmd, no cgroups): the render job array renders exactly what one local render-amass run
renders (byte-identical videos and sidecars, merged report counts), and train.sbatch's ``srun`` starts 2 plain
``python train.py`` tasks (rank / world size / master address from Slurm's variables, core/slurm.py; no torchrun)
that train the same weights as ``torchrun --nproc_per_node=2`` — after a SIGUSR1 mid-training, the script's
requeue (exit 75, RUN/requeue.json) and the requeued job's resume. Skipped, with the reason, where the cluster cannot
start (not root, slurm-wlm / munge not installed: ``make sysdeps`` installs them)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lavimo.render.cli import main as render_main
from tests.fixtures import slurm_cluster as sc
from tests.fixtures.slurm_cluster import ClusterUnavailable, single_node_cluster

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"
NUM_CLIPS = 4  # x2 with the script's --mirror
SIZE = 64
# the scripts ask for GPUs, 8+ CPUs and 32 GB; a job on the 2-core test node overrides that on the command line
SMALL_JOB = ["--gpus=0", "--cpus-per-task=1", "--mem=256M", "--time=10"]


@pytest.fixture(scope="module")
def cluster():
    cm = single_node_cluster()
    try:
        c = cm.__enter__()
    except ClusterUnavailable as exc:
        pytest.skip(f"no single-node Slurm cluster: {exc}")
    try:
        yield c
    finally:
        cm.__exit__(None, None, None)


def _job_env(cluster, **extra: str) -> dict[str, str]:
    """What the jobs see (sbatch exports the submitting environment): this checkout's code first (the console
    scripts of an editable install elsewhere would import another checkout), the venv's commands on PATH."""
    env = dict(cluster.env)
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _run(args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """A local command (a batch script run by bash, torchrun) in its own process group, text output; on a timeout
    the whole group is killed (no stray render / training processes) and the test fails with the output so far."""
    try:
        return sc.run_group(args, timeout=timeout, text=True, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(args)}` timed out after {timeout:g} s (its process group was killed):\n"
                    f"{sc._text(exc.stdout)[-2000:]}{sc._text(exc.stderr)[-3000:]}")


def _sbatch_wait(cluster, args: list[str], env: dict[str, str], log_glob: str, timeout: float) -> str:
    """``sbatch --wait ...`` -> the job's output; fails with the job log and the daemon logs on a non-zero exit or
    a timeout (the job is cancelled then, so that the module's node is free for the next test)."""
    def job_logs() -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((cluster.root / "log").glob(log_glob)))

    try:
        proc = cluster.run(["sbatch", "--wait", "--chdir", str(REPO), *args], env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        sc.cancel_jobs(cluster)  # sbatch --wait was killed, not its job
        pytest.fail(f"sbatch --wait did not return in {timeout:g} s (job cancelled)\n{job_logs()}\n"
                    f"--- cluster ---\n{cluster.logs()}")
    logs = job_logs()
    assert proc.returncode == 0, (f"sbatch exited {proc.returncode}: {proc.stdout}{proc.stderr}\n{logs}\n"
                                  f"--- cluster ---\n{cluster.logs()}")
    return logs


def _sbatch_until_completed(cluster, args: list[str], env: dict[str, str], log_glob: str, timeout: float) -> str:
    """``sbatch --parsable ...``, then the job's output polled until the requeued run has resumed and finished
    (train.py's "resuming at epoch", then its "done:" line), then until the job has left the queue -> the output.
    Not ``sbatch --wait``: for a job that requeues itself it may return (status 1) at the requeue, when the first
    run ends as "CANCELLED DUE TO JOB REQUEUE"; and the job leaves ``squeue`` for a moment while it is requeued.
    The caller checks the output and the weights; the timeout fails the test with the logs."""
    def job_logs() -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((cluster.root / "log").glob(log_glob)))

    proc = cluster.run(["sbatch", "--parsable", "--chdir", str(REPO), *args], env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = proc.stdout.strip().split(";")[0]
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:  # queued, running, requeued (pending on its begin time), running again
        logs = job_logs()
        resumed = logs.rfind("resuming at epoch")
        if resumed >= 0 and "INFO train: done:" in logs[resumed:]:
            while cluster.run(["squeue", "-h", "-j", job, "-o", "%T"], timeout=30).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            return job_logs()  # the requeued run finished: the test's own checks read its output and weights
        state = cluster.run(["squeue", "-h", "-j", job, "-o", "%T %r"], timeout=30).stdout.strip()
        if "held" in state.lower():  # e.g. launch_failed_requeued_held: it would never run again, fail now
            break
        time.sleep(1)
    sc.cancel_jobs(cluster)
    pytest.fail(f"job {job} did not finish in {timeout:g} s, or was held (last state: {state or 'gone'})\n"
                f"{job_logs()}\n--- cluster ---\n{cluster.logs()}")


def _write_corpus(root: Path) -> Path:
    from tests.test_render_cli import _write_npz

    ann = {}
    for i in range(NUM_CLIPS):
        rel = f"Synth/s{i % 2}/m{i}_poses"
        _write_npz(root / "amass" / f"{rel}.npz", seconds=0.4 + 0.05 * i, fps=60.0, phase=i)
        ann[f"{i:05d}"] = {"path": rel, "duration": 0.4 + 0.05 * i,
                           "annotations": [{"seg_id": f"{i:05d}_0", "text": f"a person waves {i}", "start": 0.0,
                                            "end": 0.4 + 0.05 * i}]}
    (root / "annotations.json").write_text(json.dumps(ann))
    return root


@pytest.mark.slow
def test_render_array_equals_a_local_run(cluster, tmp_path):
    corpus = _write_corpus(tmp_path / "corpus")
    common = dict(AMASS=str(corpus / "amass"), ANN=str(corpus / "annotations.json"), WORKERS="1")
    array_out, local_out = tmp_path / "array", tmp_path / "local"

    logs = _sbatch_wait(cluster, [*SMALL_JOB, "--array=0-1", f"--output={cluster.root}/log/render-%A_%a.out",
                                  str(SLURM / "render_array.sbatch"), "--size", str(SIZE)],
                        _job_env(cluster, OUT=str(array_out), PARTS="2", **common), "render-*.out", timeout=180)
    parts = [json.loads((array_out / f"render-report-part-{k}-of-2.json").read_text()) for k in (1, 2)]
    assert all(p["rendered"] > 0 and p["failed"] == {} for p in parts), logs  # each task rendered its own part
    assert render_main(["merge-reports", str(array_out)]) == 0

    # the same script run locally (no job array: no --part), one render-amass over the whole corpus
    local_env = {k: v for k, v in _job_env(cluster, OUT=str(local_out), **common).items() if k != "SLURM_CONF"}
    local = _run(["bash", str(SLURM / "render_array.sbatch"), "--size", str(SIZE)], cwd=REPO, env=local_env,
                 timeout=180)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-3000:]

    def outputs(d: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith("render-report")}

    got, want = outputs(array_out), outputs(local_out)
    keyids = [f"{i:05d}" for i in range(NUM_CLIPS)] + [f"M{i:05d}" for i in range(NUM_CLIPS)]
    assert sorted(want) == sorted(f"{k}.{ext}" for k in keyids for ext in ("json", "mp4"))
    assert sorted(got) == sorted(want)
    different = [name for name in want if got[name] != want[name]]
    assert not different, f"array and local outputs differ: {different}"
    merged = json.loads((array_out / "render-report.json").read_text())
    full = json.loads((local_out / "render-report.json").read_text())
    for key in ("clips", "rendered", "skipped", "num_failed", "frames_rendered", "num_not_attempted", "failed"):
        assert merged[key] == full[key], key
    assert full["rendered"] == 2 * NUM_CLIPS and merged["missing_parts"] == [] and sorted(merged["parts"]) == [
        "1/2", "2/2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(run: Path) -> list[dict[str, float]]:
    """metrics.csv's rows as numbers, without the throughput."""
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items() if k != "samples_per_s" and v != ""} for row in csv.DictReader(fh)]


REQUEUE_SETTLE_S = 2.5  # seconds between the requeue and the requeued job's earliest start (see below)


def _usr1_when_training(cluster, keyids: Path, timeout: float, errors: list[str]) -> None:
    """Send SIGUSR1 to the job steps of the one job in the queue (what ``--signal=USR1@180`` does before the time
    limit) once its rank 0 has started its second step (``--log-keyids``); then, once the script has requeued
    the job, make it eligible at once (Slurm holds a requeued job back for minutes: BeginTime). A problem is
    appended to ``errors`` (this runs in a thread)."""
    deadline = time.monotonic() + timeout
    while not (keyids.is_file() and keyids.read_text().count("\n") >= 2):
        if time.monotonic() > deadline:
            errors.append(f"no second training step in {timeout:g} s ({keyids})")
            return
        time.sleep(0.05)
    jobs = cluster.run(["squeue", "-h", "-o", "%A"], timeout=10).stdout.split()
    cluster.run(["scancel", "--signal=USR1", *jobs], timeout=10, check=True)
    while time.monotonic() < deadline:
        state = cluster.run(["squeue", "-h", "-o", "%A %T %r"], timeout=10).stdout.split()
        if state[1:3] == ["PENDING", "BeginTime"]:
            # not in the requeue's second: slurmd revoked the job's credential when it killed the first run, and
            # refuses ("Job N already killed, do not launch batch job") a launch whose credential was made in the
            # same second or earlier -- Slurm's own BeginTime (now + cred_expire) exists for this
            time.sleep(REQUEUE_SETTLE_S)
            cluster.run(["scontrol", "update", f"JobId={state[0]}", "StartTime=now"], timeout=10, check=True)
            return
        time.sleep(0.2)
    errors.append(f"job {jobs} was not requeued within {timeout:g} s")


@pytest.mark.slow
def test_srun_training_equals_torchrun(cluster, request, tmp_path):
    """train.sbatch's 2 srun tasks get SIGUSR1 at their second step: they checkpoint, write OUT/requeue.json and
    exit 75, the script requeues the job, the requeued job resumes (--resume auto) and finishes with the weights
    of an uninterrupted torchrun run."""
    import threading

    from tests.fixtures.runs import assert_same_last_weights, train_shards

    shards = train_shards(request)
    # appended to train.sbatch's own flags (the last of a repeated flag wins): the tiny preset on CPU
    extra = ["--preset", "tiny", "--device", "cpu", "--epochs", "1", "--workers", "0", "--threads", "1",
             "--shuffle-buffer", "1"]  # 32 samples / (2 ranks x batch 2): 8 steps, USR1 at the second
    srun_out, torchrun_out = tmp_path / "srun", tmp_path / "torchrun"
    errors: list[str] = []
    signaller = threading.Thread(target=_usr1_when_training,
                                 args=(cluster, srun_out / "debug" / "keyids-rank0.tsv", 240, errors), daemon=True)
    signaller.start()
    logs = _sbatch_until_completed(
        cluster, ["--gpus-per-node=0", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=512M",
                  "--time=10", f"--output={cluster.root}/log/train-%j.out", str(SLURM / "train.sbatch"), *extra,
                  "--log-keyids"],
        _job_env(cluster, SHARDS=str(shards), OUT=str(srun_out), BATCH_PER_GPU="2", MASTER_PORT=str(_free_port())),
        "train-*.out", timeout=300)
    signaller.join(timeout=30)
    assert not errors, errors
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((cluster.root / "log").glob("train-*.out")))
    # both ranks were srun tasks whose rank / world size / master address came from Slurm (core/slurm.py)
    for rank in (0, 1):
        assert f"srun task: rank {rank} of 2 (local {rank}), master {cluster.node}:" in logs, logs[-3000:]
    # stopped by USR1 with a checkpoint, requeued by the script, resumed by the requeued job, finished
    assert "requeueing job" in logs and "resuming at epoch" in logs, logs[-4000:]
    assert logs.count("srun task: rank 0 of 2") == 2, logs[-4000:]
    assert not (srun_out / "requeue.json").exists()  # the resumed session removed it and finished

    env = {k: v for k, v in _job_env(cluster).items() if k != "SLURM_CONF"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--shards", str(shards), "--out", str(torchrun_out), "--batch-size", "2",
           "--no-progress", *extra]  # uninterrupted
    proc = _run(cmd, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    for run in (srun_out, torchrun_out):
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["trainer"]["world_size"] == 2 and cfg["trainer"]["global_batch"] == 4
    got, want = _metrics(srun_out), _metrics(torchrun_out)
    assert len(got) == len(want) == 1 and [sorted(r) for r in got] == [sorted(r) for r in want]
    # the preempted epoch's logged means of the rank-local terms (recon loss, fusion weights) differ: on resume
    # every rank restores rank 0's running sums (last.state.safetensors holds one); the contrastive terms (gathered over
    # ranks), the validation and the weights are the uninterrupted run's
    keys = [k for k in got[0] if k not in {"train_loss", "train_recon", "fusion_text", "fusion_video",
                                             "fusion_motion"}]
    assert {k: got[0][k] for k in keys} == pytest.approx({k: want[0][k] for k in keys}, rel=1e-5, abs=1e-6)
    assert_same_last_weights(srun_out, torchrun_out, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sbatch_wait_timeout_cancels_the_job(cluster):
    """An ``sbatch --wait`` that times out fails the test and cancels its job: the module's node is free again."""
    env = _job_env(cluster)
    with pytest.raises(pytest.fail.Exception, match="did not return in 3 s \\(job cancelled\\)"):
        _sbatch_wait(cluster, [*SMALL_JOB, f"--output={cluster.root}/log/hang-%j.out", "--wrap", "sleep 300"], env,
                     "hang-*.out", timeout=3)
    assert cluster.run(["squeue", "-h", "-o", "%A"], timeout=10, check=True).stdout.split() == []
    _sbatch_wait(cluster, [*SMALL_JOB, f"--output={cluster.root}/log/next-%j.out", "--wrap", "echo next ran"], env,
                 "next-*.out", timeout=180)


def _running_with(text: str) -> list[str]:
    """Command lines of live processes that mention ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if d.name.isdigit() and text in cmd:
            found.append(cmd)
    return found


def test_cluster_unavailable_says_why(monkeypatch, tmp_path):
    """Missing packages, no root, a daemon that dies at start: ClusterUnavailable naming the cause (the
    fixture's skip reason), promptly, with nothing left running and the cluster's directory removed even when a
    teardown step raises."""
    tools = sc.DAEMONS + sc.CLIENTS + sc.MUNGE_CLIENTS
    real = {b: shutil.which(b) for b in tools}
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterUnavailable, match="munged.*unmunge not found.*make sysdeps"):
        sc.check_prerequisites()
    monkeypatch.undo()
    if real["unmunge"] is not None:  # the munge probe's second half is checked too
        only_unmunge = tmp_path / "no-unmunge"
        only_unmunge.mkdir()
        for b in tools:
            if b != "unmunge" and real[b] is not None:
                (only_unmunge / b).symlink_to(real[b])
        monkeypatch.setenv("PATH", str(only_unmunge))
        with pytest.raises(ClusterUnavailable, match="^unmunge not found"):
            sc.check_prerequisites()
        monkeypatch.undo()
    if None in real.values() or os.geteuid() != 0:
        pytest.skip("the rest needs root and slurm-wlm + munge")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="needs root"):
        sc.check_prerequisites()
    monkeypatch.undo()

    bin_dir = _stand_ins(tmp_path, {"slurmctld": "#!/bin/sh\necho 'fatal: no such plugin (stand-in)' >&2\nexit 1\n"})
    root = tmp_path / "cluster"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(sc.tempfile, "mkdtemp", lambda prefix="": (root.mkdir(), str(root))[1])
    real_stop, stopped = sc._stop, []

    def stop_then_time_out(proc, wait=10.0):  # each stop works, then raises: the later steps must run anyway
        real_stop(proc, wait)
        stopped.append(Path(proc.args[0]).name)
        raise subprocess.TimeoutExpired(proc.args, wait)

    monkeypatch.setattr(sc, "_stop", stop_then_time_out)
    with pytest.raises(ClusterUnavailable, match=r"`slurmctld -D .*` exited 1: fatal: no such plugin \(stand-in\)"):
        with single_node_cluster(start_timeout=20):
            pass
    assert stopped == ["slurmctld", "munged"]
    assert not root.exists() and not _running_with(str(root))


def test_run_group_kills_the_whole_group_on_timeout():
    """subprocess.run(timeout=...) kills only the shell; run_group kills its children too and says what ran."""
    marker = "31.7125"  # an odd duration: only this test's sleeps carry it
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        sc.run_group(["bash", "-c", f"echo started; sleep {marker} & sleep {marker}; echo never"], timeout=1)
    assert time.monotonic() - start < 10
    assert b"started" in info.value.stdout and b"never" not in info.value.stdout
    deadline = time.monotonic() + 30  # SIGKILL is delivered at once; allow a loaded machine to reap (a poll)
    while _running_with(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running_with(f"sleep {marker}")
    done = sc.run_group(["bash", "-c", "cat; echo err >&2; exit 3"], input="in", text=True, timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (3, "in", "err\n")


def test_stop_and_teardown_never_abort(monkeypatch, tmp_path):
    """A process that will not die (wait() times out even after SIGKILL) or is already gone: _stop returns; a
    teardown step that raises does not keep the later ones (munged, the directory) from running."""
    class Stuck:
        pid, returncode = -1, None

        def poll(self):
            return None

        def terminate(self):
            raise ProcessLookupError

        kill = terminate

        def wait(self, timeout=None):
            raise subprocess.TimeoutExpired("stuck", timeout)

    def gone(pgid, sig):
        raise ProcessLookupError

    monkeypatch.setattr(sc.os, "killpg", gone)
    sc._stop(Stuck(), wait=0.01)
    monkeypatch.undo()

    errors: list[BaseException] = []
    for exc in (subprocess.TimeoutExpired("x", 1), ProcessLookupError(), ValueError("bug")):
        def boom(exc=exc):
            raise exc
        sc._teardown_step(errors, boom)
    assert [type(e) for e in errors] == [ValueError]


def _stand_ins(tmp_path: Path, scripts: dict[str, str]) -> Path:
    """A bin directory with the real Slurm / munge programs, except ``scripts`` (name -> shell script text)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for b in sc.DAEMONS + sc.CLIENTS + sc.MUNGE_CLIENTS:
        if b in scripts:
            (bin_dir / b).write_text(scripts[b])
            (bin_dir / b).chmod(0o755)
        else:
            (bin_dir / b).symlink_to(shutil.which(b))
    return bin_dir


HANG = "#!/bin/sh\necho 'stand-in waiting' >&2\n/bin/sleep 47.3125 &\nwait\n"  # a child outliving a killed shell


@pytest.mark.parametrize("scripts, reason", [
    ({"unmunge": HANG}, r"`unmunge -S \S+` timed out after 1 s: stand-in waiting"),
    ({"munge": "#!/nonexistent/interpreter\n"}, r"`munge -n -S \S+` could not start: .*No such file"),
    ({"unmunge": "#!/bin/sh\necho 'unmunge: Error: Invalid credential (stand-in)' >&2\nexit 7\n"},
     r"round trip failed: `unmunge -S \S+` exited 7: unmunge: Error: Invalid credential \(stand-in\)"),
    ({"scontrol": HANG}, r"waiting for slurmctld \(scontrol ping\) \(last: `scontrol ping` timed out after 1 s"),
    ({"scontrol": "#!/nonexistent/interpreter\n"}, r"`scontrol ping` could not start: .*No such file"),
], ids=["unmunge-hangs", "munge-cannot-start", "unmunge-fails", "scontrol-hangs", "scontrol-cannot-start"])
def test_probe_failures_say_why(monkeypatch, tmp_path, scripts, reason):
    """The munge round trip and the readiness polls: a probe that hangs, cannot start or fails is
    ClusterUnavailable (the fixture's skip) naming the command and its output, never a test error; a hung probe's
    process group is killed, and nothing of the cluster is left running."""
    if os.geteuid() != 0 or None in {shutil.which(b) for b in sc.DAEMONS + sc.CLIENTS + sc.MUNGE_CLIENTS}:
        pytest.skip("needs root and slurm-wlm + munge")
    bin_dir = _stand_ins(tmp_path, scripts)
    root = tmp_path / "cluster"
    # only the stand-ins' directory: a program that cannot start must not be found again further down PATH
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(sc.tempfile, "mkdtemp", lambda prefix="": (root.mkdir(), str(root))[1])
    monkeypatch.setattr(sc, "PROBE_TIMEOUT", 1.0)
    start = time.monotonic()
    with pytest.raises(ClusterUnavailable, match=reason):
        with single_node_cluster(start_timeout=3):
            pass
    assert time.monotonic() - start < 30
    assert not root.exists() and not _running_with(str(root)) and not _running_with("sleep 47.3125")

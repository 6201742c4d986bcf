"""The project installs as ONE package, ``lavimo``: the wheel, installed with --no-deps into a fresh target, adds
exactly one top-level package to site-packages (plus its dist-info and the console scripts), finds the default
avatars and lights from any working directory, every console script answers --help, ``python -m lavimo.train`` /
``python -m lavimo.evaluate`` are the checkout's train.py / evaluate.py, the Slurm scripts run from the installed
copy, and none of it is shadowed by a user's own ``model.py`` / ``dataset/`` / ``core.py`` in the working directory
(common in motion-ML repositories)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("synth-amass", "render-amass", "build-shards", "lavimo-train", "lavimo-evaluate", "lavimo-search")


def _shadowing_cwd(tmp_path: Path) -> Path:
    """A working directory like a user's motion-ML project: its own model.py, dataset/, core.py, search.py and
    render/, each of which fails loudly if imported."""
    d = tmp_path / "user-project"
    for rel in ("model.py", "core.py", "search.py", "training.py", "dataset/__init__.py", "render/__init__.py",
                "body/__init__.py", "evaluation.py"):
        f = d / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"raise ImportError('the user project\\'s own {rel} was imported')\n")
    return d


@pytest.mark.slow
def test_wheel_installs_one_package_unshadowed(tmp_path):
    # build from a copy of the sources, so that no build/ left in the checkout (with files of modules that no
    # longer exist) can leak into the wheel, and the checkout is not written to
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "demo", "runs", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = wheels.glob("lavimo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"lavimo", wheel.name.split("-py")[0] + ".dist-info"}, \
        sorted({n.split("/")[0] for n in names})
    assert not any(n.startswith("lavimo/tests/") for n in names)
    assert "lavimo/assets/lights.json" in names and sum(n.startswith("lavimo/assets/avatars/") for n in names) == 13
    assert {"lavimo/model/presets/paper.json", "lavimo/training/presets/paper.json", "lavimo/train.py",
            "lavimo/evaluate.py", "lavimo/dataset/subsets/kitml_nsim_test.txt",
            "lavimo/evaluation/paper/lavimo_tables.json", "lavimo/scripts/slurm/train.sbatch",
            "lavimo/scripts/slurm/render_array.sbatch"} <= set(names)
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    added = {p.name for p in target.iterdir()}
    assert added == {"lavimo", "bin", wheel.name.split("-py")[0] + ".dist-info"}, sorted(added)

    elsewhere = _shadowing_cwd(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import lavimo.render.avatars as a, lavimo.render.lights as l; avs = a.load_avatars(); ls = l.load_lights(); "
            "from lavimo.training.config import load_run_config; rc = load_run_config('paper'); "
            "from lavimo.search.model import load; import lavimo.dataset.annotations, lavimo.evaluation.metrics; "
            "assert (rc.model.latent_dim, rc.train.epochs) == (512, 400); "
            "print(a.__file__, len(avs), len(ls), a.DEFAULT_AVATARS)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=elsewhere,
                       env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    module, n_avatars, n_lights, avatars_dir = p.stdout.split()
    assert module.startswith(str(target)) and avatars_dir.startswith(str(target))  # the installed copy, not the repo
    assert (int(n_avatars), int(n_lights)) == (13, 4)
    for script in SCRIPTS:
        exe = target / "bin" / script
        assert exe.is_file(), script
        p = subprocess.run([sys.executable, str(exe), "--help"], capture_output=True, text=True, timeout=300,
                           cwd=elsewhere, env=env)
        assert p.returncode == 0 and "usage:" in p.stdout, (script, p.stderr[-2000:])
    for module in ("lavimo.train", "lavimo.evaluate"):
        p = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300,
                           cwd=elsewhere, env=env)
        assert p.returncode == 0 and "--shards" in p.stdout, (module, p.stderr[-2000:])

    # the installed train.sbatch, with an srun that runs its command here (and --help appended through "$@")
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (fake / "python").write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    sbatch = target / "lavimo" / "scripts" / "slurm" / "train.sbatch"
    p = subprocess.run(["bash", str(sbatch), "--help"], capture_output=True, text=True, timeout=300, cwd=elsewhere,
                       env={**env, "PATH": f"{fake}:{os.environ['PATH']}", "SHARDS": "/s", "OUT": "/o"})
    assert p.returncode == 0 and "usage:" in p.stdout and "--resume" in p.stdout, p.stderr[-2000:]


@pytest.mark.slow
def test_the_development_install_is_not_shadowed(tmp_path):
    """The same with this environment's (editable) install: the Python API and each console script from a working
    directory holding the user's own model.py / dataset/ / core.py."""
    elsewhere = _shadowing_cwd(tmp_path)
    code = "from lavimo.search.model import load; import lavimo.dataset.annotations, lavimo.train; print('ok')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=elsewhere)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
    for script in SCRIPTS:
        exe = Path(sys.executable).parent / script
        if not exe.is_file():
            pytest.fail(f"{exe} missing: install the project (pip install -e .) into this environment")
        p = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=300, cwd=elsewhere)
        assert p.returncode == 0 and "usage:" in p.stdout, (script, p.stderr[-2000:])

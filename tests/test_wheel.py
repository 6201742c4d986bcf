"""The project installs as a package: the wheel, installed with --no-deps into a fresh target, finds the default
avatars and lights from any working directory and every console script answers --help."""

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


@pytest.mark.slow
def test_wheel_installs_assets_and_console_scripts(tmp_path):
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
    assert "assets/lights.json" in names and sum(n.startswith("assets/avatars/") for n in names) == 13
    assert {"model/presets/paper.json", "training/presets/paper.json", "dataset/subsets/kitml_nsim_test.txt"} <= set(names)
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import lavimo.render.avatars as a, lavimo.render.lights as l; avs = a.load_avatars(); ls = l.load_lights(); "
            "from lavimo.training.config import load_run_config; rc = load_run_config('paper'); "
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

"""render-amass's EGL device (render/egl_device.py) from crafted environments: --egl-devices wins, then
CUDA_VISIBLE_DEVICES / SLURM_STEP_GPUS / SLURM_JOB_GPUS mapped through EGL_NV_device_cuda when the EGL library
offers it, else the GPU's index on the node; the choice reaches the rendering processes as EGL_DEVICE_ID."""

from __future__ import annotations

import pytest

from lavimo.core.errors import SetupError
from lavimo.render.egl_device import (GPU_VARIABLES, assigned_gpus, choose_egl_devices, cuda_device_map,
                                     egl_cuda_devices)


def _choose(env, explicit=None, mapping=None):
    return choose_egl_devices(explicit, env, cuda_to_egl=lambda: mapping)


@pytest.mark.parametrize("env,want", [
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": "2"}, ("2",)),  # the node's GPU 2 (no CUDA <-> EGL query): EGL device 2
    ({"CUDA_VISIBLE_DEVICES": "3,1"}, ("3", "1")),
    ({"SLURM_STEP_GPUS": "5", "SLURM_JOB_GPUS": "4,5"}, ("5",)),  # the step's GPU before the job's
    ({"SLURM_JOB_GPUS": "4,5"}, ("4", "5")),
    ({"CUDA_VISIBLE_DEVICES": "1", "SLURM_JOB_GPUS": "6"}, ("1",)),  # CUDA_VISIBLE_DEVICES first
    ({"CUDA_VISIBLE_DEVICES": "", "SLURM_JOB_GPUS": "6"}, None),  # set empty: no GPU for this process
    ({"SLURM_JOB_GPUS": "NoDevFiles"}, None),
])
def test_gpu_index_without_the_egl_query(env, want):
    choice = _choose(env)
    assert choice.devices == want, choice
    if want is None:
        assert "default" in choice.source


def test_cuda_devices_mapped_through_egl():
    # EGL lists a software device first: CUDA device 0 is EGL device 1, CUDA 1 is EGL 3
    mapping = {0: 1, 1: 3}
    assert _choose({"CUDA_VISIBLE_DEVICES": "6"}, mapping=mapping).devices == ("1",)  # CUDA renumbers from 0
    assert _choose({"CUDA_VISIBLE_DEVICES": "GPU-8f2c,GPU-11aa"}, mapping=mapping).devices == ("1", "3")
    choice = _choose({"SLURM_JOB_GPUS": "1"}, mapping=mapping)  # no CUDA_VISIBLE_DEVICES: ordinal = index
    assert choice.devices == ("3",) and "EGL_NV_device_cuda" in choice.source
    with pytest.raises(SetupError, match="SLURM_JOB_GPUS=2: no EGL device drives CUDA device"):
        _choose({"SLURM_JOB_GPUS": "2"}, mapping=mapping)


def test_explicit_flag_wins_and_bad_values_say_what_to_do():
    assert _choose({"CUDA_VISIBLE_DEVICES": "3"}, explicit="0,2", mapping={0: 5}).devices == ("0", "2")
    with pytest.raises(SetupError, match="--egl-devices"):
        _choose({}, explicit="gpu0")
    with pytest.raises(SetupError, match="not an index.*--egl-devices"):  # a UUID and no EGL query
        _choose({"CUDA_VISIBLE_DEVICES": "GPU-8f2c"})


def test_assigned_gpus_and_the_query_here():
    assert assigned_gpus({"SLURM_STEP_GPUS": " 1, 2 "}) == ("SLURM_STEP_GPUS", ["1", "2"])
    assert assigned_gpus({}) is None and GPU_VARIABLES[0] == "CUDA_VISIBLE_DEVICES"
    mapping = egl_cuda_devices()  # Mesa / no GPU: None; NVIDIA's EGL: CUDA ordinal -> EGL index
    assert mapping is None or all(isinstance(k, int) and isinstance(v, int) for k, v in mapping.items())


def test_cuda_device_map_from_faked_egl_devices():
    """EGL devices 0 (Mesa software), 1 and 2 (NVIDIA: CUDA 1 and 0), 3 (NVIDIA, a second EGL device of CUDA 0):
    CUDA 0 -> EGL 2 (the first), CUDA 1 -> EGL 1; none with the extension -> None."""
    exts = {0: [b"EGL_MESA_device_software"], 1: [b"EGL_EXT_device_drm", b"EGL_NV_device_cuda"],
            2: [b"EGL_NV_device_cuda"], 3: [b"EGL_NV_device_cuda"]}
    ordinals = {0: None, 1: 1, 2: 0, 3: 0}
    assert cuda_device_map([0, 1, 2, 3], exts.get, ordinals.get) == {1: 1, 0: 2}
    assert cuda_device_map([0], exts.get, ordinals.get) is None
    assert cuda_device_map([1], exts.get, lambda h: None) is None  # the attribute query failed


def test_egl_query_failures_missing_is_quiet_others_warn(monkeypatch, caplog):
    import logging

    import lavimo.render.egl_device as egl_device

    def no_egl():
        raise ImportError("libEGL.so.1: cannot open shared object file")

    monkeypatch.setattr(egl_device, "_egl_device_functions", no_egl)
    with caplog.at_level(logging.DEBUG, logger="lavimo.render.egl_device"):
        assert egl_cuda_devices() is None
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] and "libEGL" in caplog.text
    caplog.clear()

    def failing_devices():
        raise RuntimeError("EGL_BAD_ALLOC")

    monkeypatch.setattr(egl_device, "_egl_device_functions", lambda: (failing_devices, None, None))
    with caplog.at_level(logging.DEBUG, logger="lavimo.render.egl_device"):
        assert egl_cuda_devices() is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and "EGL_BAD_ALLOC" in caplog.text
    nvidia = ((lambda: [7]), (lambda h: [b"EGL_NV_device_cuda"]), (lambda h: 3))
    monkeypatch.setattr(egl_device, "_egl_device_functions", lambda: nvidia)
    assert egl_cuda_devices() == {3: 0}

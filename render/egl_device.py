"""Which EGL device render-amass renders on: the GPU the job was given (docs/rendering.md, "Which GPU").

``--egl-devices I[,J...]`` (EGL device indices, handed to the workers round-robin) overrides everything. Without
it the GPUs of the process come from the first of :data:`GPU_VARIABLES` that is set: ``CUDA_VISIBLE_DEVICES``
(what Slurm's GPU plugin and most schedulers set; the process's CUDA devices are then 0..n-1 in that order),
else ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS`` (the node's GPU indices; the CUDA ordinals are the same indices).
Each CUDA device is mapped to the EGL device that drives it through ``EGL_EXT_device_query`` and
``EGL_NV_device_cuda`` (``eglQueryDeviceAttribEXT(device, EGL_CUDA_DEVICE_NV)``, :func:`egl_cuda_devices`); where
the EGL library does not offer that (Mesa, an older driver) the EGL index is taken to be the GPU's index on the
node (EGL lists the node's GPUs in that order whatever ``CUDA_VISIBLE_DEVICES`` says) — a GPU named by UUID
cannot be mapped then, and render-amass stops asking for ``--egl-devices``. No variable set: EGL's default
device (llvmpipe on a machine without GPUs). The choice reaches pyrender as ``EGL_DEVICE_ID`` in the process
that renders (render/cli.py sets it in each worker).
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping

from lavimo.core.errors import SetupError

log = logging.getLogger(__name__)

#: where the GPUs given to the process are read from, first set wins
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
#: values that mean "no GPU" (Slurm writes NoDevFiles for a job without GPUs)
_NONE = {"", "none", "nodevfiles", "-1"}
EGL_EXTENSIONS = 0x3055
EGL_CUDA_DEVICE_NV = 0x323A


@dataclass(frozen=True)
class EglChoice:
    """``devices``: EGL device indices for the rendering processes (round-robin), None = EGL's default;
    ``source``: what decided, for the log and the report."""

    devices: tuple[str, ...] | None
    source: str


def assigned_gpus(env: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """(variable, its comma-separated entries) of the first of :data:`GPU_VARIABLES` that names a GPU, or None."""
    for var in GPU_VARIABLES:
        raw = env.get(var)
        if raw is None:
            continue
        entries = [e.strip() for e in raw.split(",") if e.strip()]
        if not entries or raw.strip().lower() in _NONE:
            if var == "CUDA_VISIBLE_DEVICES":
                return var, []  # set but empty: CUDA sees no GPU (the SLURM_* variables do not count then)
            continue
        return var, entries
    return None


def choose_egl_devices(explicit: str | None, env: Mapping[str, str],
                       cuda_to_egl: Callable[[], dict[int, int] | None] | None = None) -> EglChoice:
    """The EGL devices to render on (module docstring). ``explicit``: ``--egl-devices`` (kept as given);
    ``cuda_to_egl``: CUDA ordinal -> EGL index of this process (default :func:`egl_cuda_devices`; called only
    when a GPU variable is set). Raises SetupError for entries that cannot be mapped (named in the message)."""
    if explicit:
        devices = tuple(d.strip() for d in explicit.split(",") if d.strip())
        if not devices or not all(d.isdigit() for d in devices):
            raise SetupError(f"--egl-devices {explicit!r}: expected EGL device indices, e.g. 0 or 0,1")
        return EglChoice(devices, "--egl-devices")
    found = assigned_gpus(env)
    if found is None:
        return EglChoice(None, "no GPU variable set (" + ", ".join(GPU_VARIABLES) + "): EGL's default device")
    var, entries = found
    if not entries:
        return EglChoice(None, f"{var} is empty (no GPU): EGL's default device")
    # the process's CUDA ordinal of each entry: CUDA_VISIBLE_DEVICES renumbers from 0, the SLURM_* do not
    ordinals = list(range(len(entries))) if var == "CUDA_VISIBLE_DEVICES" else [_index(var, e) for e in entries]
    mapping = (cuda_to_egl or egl_cuda_devices)()
    shown = f"{var}={','.join(entries)}"
    if mapping:
        missing = [e for e, o in zip(entries, ordinals) if o not in mapping]
        if missing:
            raise SetupError(f"{shown}: no EGL device drives CUDA device(s) {', '.join(missing)} (EGL devices "
                             f"of CUDA devices: {sorted(mapping)}); pass --egl-devices")
        return EglChoice(tuple(str(mapping[o]) for o in ordinals), f"{shown} via EGL_NV_device_cuda")
    # no CUDA <-> EGL query: EGL lists the node's GPUs in index order
    return EglChoice(tuple(str(_index(var, e)) for e in entries), f"{shown} (EGL index = GPU index)")


def _index(var: str, entry: str) -> int:
    if not entry.isdigit():
        raise SetupError(f"{var}: GPU {entry!r} is not an index and this EGL cannot map CUDA devices to EGL "
                         "devices (no EGL_NV_device_cuda); pass --egl-devices")
    return int(entry)


def egl_cuda_devices() -> dict[int, int] | None:
    """CUDA ordinal -> EGL device index for the EGL devices that offer ``EGL_NV_device_cuda`` (NVIDIA's EGL),
    or None when EGL, its device query or that extension is not there (logged at debug level: the GPU index is
    then the EGL index). A query that fails otherwise is logged as a warning and also gives None. No context or
    display is created."""
    try:
        found = _egl_device_functions()
    except _missing_egl_errors() as exc:  # no libEGL / pyrender / an old PyOpenGL without the device query
        log.debug("no EGL CUDA device query: %s: %s", type(exc).__name__, exc)
        return None
    if found is None:
        log.debug("no EGL CUDA device query: eglQueryDevicesEXT / eglQueryDeviceAttribEXT not offered")
        return None
    devices, extensions_of, cuda_ordinal_of = found
    try:
        return cuda_device_map(devices(), extensions_of, cuda_ordinal_of)
    except Exception as exc:  # noqa: BLE001 - an EGL that offers the query but fails it: say so, then fall back
        log.warning("the EGL CUDA device query failed (%s: %s): taking the GPU index as the EGL device index",
                    type(exc).__name__, exc)
        return None


def cuda_device_map(handles: list, extensions_of: Callable[[object], list[bytes]],
                    cuda_ordinal_of: Callable[[object], int | None]) -> dict[int, int] | None:
    """CUDA ordinal -> EGL device index over the EGL device ``handles`` (in EGL order): a device counts when
    ``extensions_of(handle)`` lists ``EGL_NV_device_cuda`` and ``cuda_ordinal_of(handle)`` gives an ordinal >= 0
    (the first device of an ordinal wins). None when no device does."""
    out: dict[int, int] = {}
    for i, handle in enumerate(handles):
        if b"EGL_NV_device_cuda" not in extensions_of(handle):
            continue
        ordinal = cuda_ordinal_of(handle)
        if ordinal is not None and ordinal >= 0:
            out.setdefault(int(ordinal), i)
    return out or None


def _missing_egl_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "EGL or its extension is not there": a library that does not load, a module or
    attribute an old PyOpenGL / pyrender lacks, PyOpenGL's NullFunctionError for an absent entry point."""
    errors: tuple[type[BaseException], ...] = (ImportError, OSError, AttributeError)
    try:
        from OpenGL.error import NullFunctionError
    except Exception:  # noqa: BLE001 - PyOpenGL itself missing or broken: the ImportError above covers it
        return errors
    return (*errors, NullFunctionError)


def _egl_device_functions():
    """(devices() -> EGLDeviceEXT handles, extensions_of(handle) -> list[bytes], cuda_ordinal_of(handle) -> int |
    None) through pyrender's EGL bindings, or None when the device query functions are not offered. Raises
    ImportError / OSError / AttributeError when EGL or PyOpenGL is not there."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    from pyrender.platforms import egl as pegl  # loads libEGL through PyOpenGL

    if pegl._eglQueryDevicesEXT is None:  # noqa: SLF001 - pyrender's own device query
        return None
    address = pegl.egl.eglGetProcAddress("eglQueryDeviceAttribEXT")
    string_address = pegl.egl.eglGetProcAddress("eglQueryDeviceStringEXT")
    if not address or not string_address:
        return None
    attrib = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_ssize_t))(address)
    query_string = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)(string_address)

    def devices() -> list:
        return [ctypes.cast(d._display, ctypes.c_void_p) for d in pegl.query_devices()]  # noqa: SLF001

    def extensions_of(handle) -> list[bytes]:
        return (query_string(handle, EGL_EXTENSIONS) or b"").split()

    def cuda_ordinal_of(handle) -> int | None:
        value = ctypes.c_ssize_t(-1)
        return int(value.value) if attrib(handle, EGL_CUDA_DEVICE_NV, ctypes.byref(value)) else None

    return devices, extensions_of, cuda_ordinal_of

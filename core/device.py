"""Compute devices and numeric precision: ``--device`` / ``--precision`` resolution and the autocast context
(train.py, evaluate.py and the validation encoder share them)."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available else ``cpu``; ``cuda`` without CUDA is a
    ValueError (train.py and evaluate.py print it as an error, no traceback)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r} (auto|cpu|cuda)")


def resolve_precision(name: str | None, device: torch.device, amp: bool = True) -> str:
    """``None``/``auto`` -> ``bf16`` on a GPU that supports it when ``amp`` (the config's field; the paper
    preset sets it), else ``fp32``. ``fp16`` needs CUDA."""
    if name in (None, "auto"):
        if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"unknown precision {name!r} (bf16|fp16|fp32)")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs --device cuda (use bf16 or fp32 on CPU)")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``bf16``/``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)

"""Stable per-item randomness (see docs/design.md, "Randomness").

Choices made per clip (avatar, light, crops) derive from a hash of (global seed, keyid, purpose),
never from Python's ``hash()`` or process order, so any worker, part or re-run makes the same choice.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_seed(seed: int, *keys: object) -> int:
    """A 64-bit integer derived from ``seed`` and ``keys`` by SHA-256 (platform/process independent)."""
    h = hashlib.sha256(str(int(seed)).encode())
    for k in keys:
        h.update(b"\x00")
        h.update(str(k).encode())
    return int.from_bytes(h.digest()[:8], "little")


def stable_rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator seeded by :func:`stable_seed` (e.g. ``stable_rng(0, keyid, "avatar")``)."""
    return np.random.default_rng(stable_seed(seed, *keys))


def stable_choice(seed: int, n: int, *keys: object) -> int:
    """Deterministic index in ``range(n)`` for (seed, keys)."""
    if n <= 0:
        raise ValueError("stable_choice needs n >= 1")
    return stable_seed(seed, *keys) % n

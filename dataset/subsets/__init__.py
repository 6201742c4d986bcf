"""Evaluation subsets: TMR's published dissimilar-subset lists (shipped as data) and the dissimilar builder.

``humanml3d_nsim_test.txt`` / ``kitml_nsim_test.txt`` beside this file are TMR's ``nsim_test`` id lists (ids only;
source and MIT licence in ``README.md`` here). :func:`published_subset` finds the list of a recognised dataset;
:func:`build_dissimilar_subset` picks a subset of mutually dissimilar texts for any other corpus (``synth-amass``
uses it for the synthetic corpus, ``evaluate.py --build-dissimilar K`` for any split).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lavimo.core.errors import BadInputError
from lavimo.core.keyids import check_keyid

log = logging.getLogger(__name__)

NSIM_SPLIT = "nsim_test"
_HERE = Path(__file__).resolve().parent
PUBLISHED = {"humanml3d": _HERE / "humanml3d_nsim_test.txt", "kitml": _HERE / "kitml_nsim_test.txt"}


def published_subset(dataset: str | None) -> Path | None:
    """TMR's ``nsim_test`` list for a recognised dataset name (``humanml3d``, ``kitml``), else None."""
    if not dataset:
        return None
    key = str(dataset).lower().replace("-", "").replace("_", "")
    return PUBLISHED.get(key)


def _check_emb(sent_emb: Any, n: int) -> np.ndarray:
    emb = np.asarray(sent_emb)
    if emb.ndim != 2 or emb.shape[0] != n or not np.issubdtype(emb.dtype, np.number):
        raise BadInputError(None, "sent_emb", f"expected a numeric ({n}, D) matrix, got {emb.dtype} {emb.shape}")
    emb = emb.astype(np.float32)
    if not np.isfinite(emb).all():
        raise BadInputError(None, "sent_emb", "has non-finite values (NaN or inf)")
    return emb


def read_subset(path: str | os.PathLike) -> list[str]:
    """Ids of a subset file (one id per line, blank lines ignored), e.g. HumanML3D's ``nsim_test.txt``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(path, None, f"cannot read subset file: {getattr(exc, 'strerror', None) or exc}") from exc
    ids = [ln.strip() for ln in lines if ln.strip()]
    for k, ln in enumerate(ids):
        check_keyid(ln, path, f"line {k + 1}")
    if not ids:
        raise BadInputError(path, None, "subset file lists no ids")
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)  # linear: ids.count per id was quadratic
    if dup:
        raise BadInputError(path, "ids", f"duplicate id(s): {', '.join(dup[:10])}")
    return ids


@dataclass
class DissimilarSubset:
    """Result of :func:`build_dissimilar_subset`: ``ids`` in pick order and what limited the pick."""

    ids: list[str]
    requested: int
    candidates: int
    max_pair_score: float
    stopped_by: str  # "size" | "candidates" | "max_score"

    def to_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "picked": len(self.ids), "requested": self.requested,
                "candidates": self.candidates, "max_pair_score": self.max_pair_score,
                "stopped_by": self.stopped_by,
                "method": "greedy max-min on sentence-embedding cosine of the first caption; first pick = lowest "
                          "mean similarity; ties by sorted keyid; score = (cos + 1) / 2"}


def build_dissimilar_subset(keyids: Sequence[str], sent_emb: np.ndarray, size: int = 100,
                            max_score: float | None = None) -> DissimilarSubset:
    """Pick up to ``size`` samples whose texts are mutually dissimilar, deterministically.

    Greedy farthest-point selection on the sentence-embedding cosine ``S = E E^T`` of one text per sample
    (rows of ``sent_emb``, L2-normalised, aligned with ``keyids``): candidates are taken in sorted-keyid
    order; the first pick is the text with the lowest mean similarity to all others; each next pick is the
    candidate whose highest similarity to the picks so far is lowest (first in keyid order on ties).
    Stops at ``size``, when candidates run out, or (with ``max_score``) before a pick whose score
    ``(cos + 1) / 2`` to an earlier pick would exceed ``max_score``. Returns the ids in pick order.
    """
    n = len(keyids)
    emb = _check_emb(sent_emb, n)
    if size < 1:
        raise ValueError("size must be >= 1")
    order = np.array(sorted(range(n), key=lambda i: keyids[i]), dtype=np.int64)
    e = emb[order].astype(np.float64)
    s = e @ e.T
    picked: list[int] = []
    if n == 0:
        return DissimilarSubset([], size, 0, float("nan"), "candidates")
    mean_sim = (s.sum(axis=1) - np.diag(s)) / max(n - 1, 1)
    first = int(np.argmin(mean_sim))
    picked.append(first)
    nearest = s[first].copy()  # highest similarity of each candidate to the picks so far
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    stopped = "size"
    while len(picked) < size:
        if taken.all():
            stopped = "candidates"
            break
        cand = np.where(taken, np.inf, nearest)
        j = int(np.argmin(cand))
        if max_score is not None and (cand[j] + 1) / 2 > max_score:
            stopped = "max_score"
            break
        picked.append(j)
        taken[j] = True
        nearest = np.maximum(nearest, s[j])
    sub = s[np.ix_(picked, picked)]
    if len(picked) > 1:
        off = sub[~np.eye(len(picked), dtype=bool)]
        max_pair = float(min(1.0, (off.max() + 1) / 2))
    else:
        max_pair = float("nan")
    ids = [keyids[int(order[p])] for p in picked]
    if len(ids) < size:
        why = {"candidates": f"the split has only {n} samples",
               "max_score": f"no further text has score <= {max_score} to all picks"}.get(stopped, "")
        log.warning("dissimilar subset: picked %d of the %d requested (%s)", len(ids), size, why)
    return DissimilarSubset(ids, size, n, max_pair, stopped)

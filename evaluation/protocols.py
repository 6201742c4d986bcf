"""TMR's retrieval protocols over an encoded split, for the six LAVIMO tasks.

Protocols (names as in ``evaluate.py --protocol``; TMR's names in brackets):

* ``all`` [normal]: the whole split, ground truth = the sample's own item.
* ``threshold`` [threshold]: the whole split; a gallery item whose text is similar to the query's text
  (score ``(cos + 1) / 2 > threshold`` on the sentence embeddings, default 0.8) also counts as correct, and
  the best-scored correct item is the ground truth (see :mod:`lavimo.evaluation.metrics`).
* ``dissimilar`` [nsim]: only the samples of a subset whose texts are mutually dissimilar (a list of ids such
  as HumanML3D's ``nsim_test.txt``, or one built by :func:`build_dissimilar_subset`).
* ``small-batches`` [guo]: keyids sorted, ``np.random.seed(0); np.random.shuffle(arange(N))``, batches of 32
  (remainder dropped), each batch scored on its own, metrics averaged over the batches.

Tasks: ``t2m m2t v2m m2v t2v v2t`` (query modality 2 gallery modality; t = text, v = video, m = motion).
A task and its reverse share one similarity matrix (rows of ``x2y`` are ``x`` queries; ``y2x`` uses its
transpose), as TMR computes ``m2t`` from the transposed ``t2m`` matrix.

Texts: by default one text per sample, its first caption paired with that caption's motion segment whatever its
length, as TMR evaluates (:data:`lavimo.evaluation.encode.EVAL_MIN_SEGMENT_ROWS`). With several captions per
sample (``--text-choice all``) every caption is its own text query (t2m, t2v: Q = number of captions rows,
ground truth = the caption's sample) and, in the other direction (m2t, v2t), the gallery holds every caption
and the best-scored caption of the query's sample is the ground truth. For the threshold protocol a sample's
texts are all its evaluated captions: two items are "similar" when any caption of one is similar to any
caption of the other. With one caption per sample all of this reduces exactly to TMR's square matrices.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lavimo.core.errors import BadInputError
from lavimo.dataset.subsets import build_dissimilar_subset, read_subset  # noqa: F401 (re-exported)
from lavimo.evaluation import metrics as M

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("all", "threshold", "dissimilar", "small-batches")
PROTOCOL_CHOICES: tuple[str, ...] = PROTOCOLS + ("everything",)
TASKS: tuple[str, ...] = ("t2m", "m2t", "v2m", "m2v", "t2v", "v2t")
MODALITY = {"t": "text", "v": "video", "m": "motion"}
DEFAULT_THRESHOLD = 0.8


def expand_protocols(names: str | Sequence[str]) -> list[str]:
    """Protocol names -> the ordered list to compute (``everything`` = all four). Unknown names -> ValueError."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        if name == "everything":
            wanted: Sequence[str] = PROTOCOLS
        elif name in PROTOCOLS:
            wanted = [name]
        else:
            raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOL_CHOICES)}")
        out.extend(p for p in wanted if p not in out)
    return [p for p in PROTOCOLS if p in out]


def parse_tasks(spec: str | Sequence[str] | None) -> list[str]:
    """``"t2m,m2t"`` / ``["t2m", "m2t"]`` / None (all six) -> validated task list in canonical order."""
    if spec is None:
        return list(TASKS)
    items = spec.replace(",", " ").split() if isinstance(spec, str) else [t for s in spec for t in s.replace(",", " ").split()]
    if not items or items == ["all"]:
        return list(TASKS)
    bad = [t for t in items if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {', '.join(bad)}; choose from {', '.join(TASKS)}")
    return [t for t in TASKS if t in items]


# ----------------------------------------------------------------------------------------------------------
# the encoded split
# ----------------------------------------------------------------------------------------------------------
@dataclass
class EncodedSplit:
    """Latents of one split, the input of every protocol.

    Attributes:
        keyids: N sample ids (any order; small-batches sorts them).
        motion: (N, C) motion latents or None; video: (N, C) video latents or None.
        text: (Q, C) text latents or None, one row per evaluated caption.
        text_owner: (Q,) int sample index of each text row, non-decreasing (captions of a sample are contiguous).
        captions: Q caption strings.
        sent_emb: (Q, D) L2-normalised sentence embeddings of the captions (threshold protocol), or None.
    """

    keyids: list[str]
    motion: np.ndarray | None = None
    video: np.ndarray | None = None
    text: np.ndarray | None = None
    text_owner: np.ndarray | None = None
    captions: list[str] = field(default_factory=list)
    sent_emb: np.ndarray | None = None
    sims: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = len(self.keyids)
        if len(set(self.keyids)) != n:
            raise ValueError("duplicate keyids in the encoded split")
        for name in ("motion", "video"):
            arr = getattr(self, name)
            if arr is not None and arr.shape[0] != n:
                raise ValueError(f"{name} has {arr.shape[0]} rows for {n} samples")
        if self.text is not None:
            q = self.text.shape[0]
            if self.text_owner is None:
                if q != n:
                    raise ValueError("text_owner is needed when there is not exactly one text per sample")
                self.text_owner = np.arange(n)
            self.text_owner = np.asarray(self.text_owner, dtype=np.int64)
            if self.text_owner.shape != (q,) or (q and (np.any(np.diff(self.text_owner) < 0)
                                                       or self.text_owner.min() < 0 or self.text_owner.max() >= n)):
                raise ValueError("text_owner must be (Q,) non-decreasing sample indices")
            if self.sent_emb is not None and self.sent_emb.shape[0] != q:
                raise ValueError(f"sent_emb has {self.sent_emb.shape[0]} rows for {q} texts")
            if self.captions and len(self.captions) != q:
                raise ValueError(f"{len(self.captions)} captions for {q} text rows")

    @property
    def n(self) -> int:
        return len(self.keyids)

    @property
    def num_texts(self) -> int:
        return 0 if self.text is None else int(self.text.shape[0])

    @property
    def first_rows(self) -> np.ndarray:
        """(N,) the first text row of each sample (its first caption; every sample has a text)."""
        return np.flatnonzero(np.r_[True, np.diff(self.text_owner) != 0])

    @property
    def one_text_per_sample(self) -> bool:
        return self.text_owner is None or np.array_equal(self.text_owner, np.arange(self.n))

    def subset(self, idx: Sequence[int] | np.ndarray) -> "EncodedSplit":
        """The samples at positions ``idx`` (in that order) with their texts."""
        idx = np.asarray(idx, dtype=np.int64)
        text = owner = sent = None
        caps: list[str] = []
        rows = idx
        if self.text is not None:
            if self.one_text_per_sample:
                rows = idx
            else:
                rows = (np.concatenate([np.flatnonzero(self.text_owner == i) for i in idx]) if idx.size
                        else np.zeros(0, np.int64))
            new_pos = np.empty(self.n, dtype=np.int64)
            new_pos[idx] = np.arange(idx.size)
            text = self.text[rows]
            owner = new_pos[self.text_owner[rows]]
            sent = None if self.sent_emb is None else self.sent_emb[rows]
            caps = [self.captions[r] for r in rows] if self.captions else []
        pick = {"t": rows, "v": idx, "m": idx}
        sims = {(a, b): m[np.ix_(pick[a], pick[b])] for (a, b), m in self.sims.items()}
        return EncodedSplit(
            keyids=[self.keyids[i] for i in idx],
            motion=None if self.motion is None else self.motion[idx],
            video=None if self.video is None else self.video[idx],
            text=text, text_owner=owner, captions=caps, sent_emb=sent, sims=sims,
        )

    def pair_sims(self, a: str, b: str) -> np.ndarray:
        """Cosine similarities (rows: modality ``a`` items, columns: ``b`` items), computed once and cached.

        Subsets slice the parent's cached matrix, so every protocol scores the very same numbers (and a
        matrix saved with ``--save-sims`` reproduces them through ``--from-sims``).
        """
        if (a, b) not in self.sims:
            sims = M.similarity_matrix(self.latents(a), self.latents(b))
            self.sims[(a, b)] = M.check_sims(sims, square=False, field=f"{a}2{b} similarities")
        return self.sims[(a, b)]

    def cache_sims(self, tasks: Sequence[str]) -> None:
        """Compute the similarity matrices needed by ``tasks`` (before taking subsets)."""
        for a, b in _pairs(parse_tasks(list(tasks))):
            self.pair_sims(a, b)

    def latents(self, letter: str) -> np.ndarray:
        arr = {"t": self.text, "v": self.video, "m": self.motion}[letter]
        if arr is None:
            raise ValueError(f"no {MODALITY[letter]} latents in the encoded split")
        return arr

    def sample_texts_similar(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Text similarity relations at the threshold (score ``(cos+1)/2 > threshold``).

        Returns ``(tt (Q,Q), ts (Q,N), ss (N,N))`` boolean: caption~caption, caption~any caption of a
        sample, any caption of a sample~any caption of another sample. Each includes the ground truth.
        """
        if self.sent_emb is None:
            raise ValueError("the threshold protocol needs sentence embeddings of the texts")
        emb = M.check_text_emb(self.sent_emb, self.num_texts)
        q = self.num_texts
        if self.one_text_per_sample:  # TMR's case: one full product, as TMR computes it
            tt = M.similar_text_mask(emb @ emb.T, threshold) | np.eye(q, dtype=bool)
            return tt, tt, tt
        tt = np.zeros((q, q), dtype=bool)  # row blocks: no (Q, Q) float matrix for many captions
        for start in range(0, q, 2048):
            tt[start:start + 2048] = M.similar_text_mask(emb[start:start + 2048] @ emb.T, threshold)
        tt |= np.eye(q, dtype=bool)
        starts = self.first_rows
        owners = self.text_owner[starts]
        ts = np.zeros((self.num_texts, self.n), dtype=bool)
        ts[:, owners] = np.logical_or.reduceat(tt, starts, axis=1)
        ss = np.zeros((self.n, self.n), dtype=bool)
        ss[owners] = np.logical_or.reduceat(ts, starts, axis=0)
        ss |= np.eye(self.n, dtype=bool)
        return tt, ts, ss


def _pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    """Unordered modality pairs needed for ``tasks`` as (row letter, column letter) of the shared matrix."""
    out: list[tuple[str, str]] = []
    for a, b in (("t", "m"), ("v", "m"), ("t", "v")):
        if f"{a}2{b}" in tasks or f"{b}2{a}" in tasks:
            out.append((a, b))
    return out


def task_metrics(split: EncodedSplit, tasks: Sequence[str], threshold: float | None = None) -> dict[str, dict[str, float]]:
    """Metrics of every task in ``tasks`` on ``split`` (threshold variant when ``threshold`` is given)."""
    tasks = parse_tasks(list(tasks))
    rel = split.sample_texts_similar(threshold) if threshold is not None else None
    one = split.one_text_per_sample
    out: dict[str, dict[str, float]] = {}
    for a, b in _pairs(tasks):
        sims = split.pair_sims(a, b)
        correct = _correct_mask(split, a, b, rel, one)
        if f"{a}2{b}" in tasks:
            out[f"{a}2{b}"] = M.ranks_to_metrics(M.gt_ranks(sims, correct))
        if f"{b}2{a}" in tasks:
            out[f"{b}2{a}"] = M.ranks_to_metrics(M.gt_ranks(sims.T, None if correct is None else correct.T))
    return {t: out[t] for t in TASKS if t in out}


def _correct_mask(split: EncodedSplit, a: str, b: str, rel, one: bool) -> np.ndarray | None:
    """Boolean (rows of a, columns of b) of acceptable answers; None = the plain diagonal."""
    text_rows = a == "t" and not one
    if rel is None:
        if not text_rows:
            return None
        return split.text_owner[:, None] == np.arange(split.n)[None, :]
    tt, ts, ss = rel
    if one:
        return tt
    return ts if a == "t" else ss


# ----------------------------------------------------------------------------------------------------------
# subsets
# ----------------------------------------------------------------------------------------------------------
def subset_indices(keyids: Sequence[str], ids: Sequence[str], path: str | os.PathLike | None = None,
                   split: str = "split") -> np.ndarray:
    """Positions of ``ids`` in ``keyids`` (subset order). An id missing from the split -> BadInputError."""
    pos = {k: i for i, k in enumerate(keyids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise BadInputError(path, "ids", f"{len(missing)} of {len(ids)} subset id(s) are not in the {split} "
                                         f"split ({len(keyids)} samples): {shown}")
    return np.array([pos[i] for i in ids], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# protocols
# ----------------------------------------------------------------------------------------------------------
def run_protocols(
    split: EncodedSplit,
    protocols: Sequence[str],
    tasks: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    subset_ids: Sequence[str] | None = None,
    subset_path: str | os.PathLike | None = None,
    split_name: str = "split",
) -> dict[str, dict[str, Any]]:
    """Every protocol in ``protocols`` (already expanded) x every task -> ``{protocol: {task: metrics, "n": ..}}``.

    Extra per-protocol entries: ``queries`` (number of text queries, when it differs from ``n``),
    ``threshold`` (threshold protocol), ``batches`` and ``batch_size`` (small-batches). A protocol that cannot
    run (no sentence embeddings, fewer than 32 samples, no subset) raises ValueError/BadInputError.
    """
    tasks = parse_tasks(list(tasks))
    split.cache_sims(tasks)
    results: dict[str, dict[str, Any]] = {}
    for proto in protocols:
        if proto == "all":
            res: dict[str, Any] = dict(task_metrics(split, tasks))
            res["n"] = split.n
        elif proto == "threshold":
            res = dict(task_metrics(split, tasks, threshold=threshold))
            res["n"] = split.n
            res["threshold"] = float(threshold)
        elif proto == "dissimilar":
            if subset_ids is None:
                raise ValueError("the dissimilar protocol needs --subset FILE or --build-dissimilar N")
            idx = subset_indices(split.keyids, subset_ids, subset_path, split_name)
            sub = split.subset(idx)
            res = dict(task_metrics(sub, tasks))
            res["n"] = sub.n
            if not sub.one_text_per_sample:
                res["queries"] = sub.num_texts
        elif proto == "small-batches":
            order = M.sorted_order(split.keyids, split.n)
            batches = M.small_batch_indices(split.n)
            if not batches:
                raise ValueError(f"small-batches needs at least {M.SMALL_BATCH_SIZE} samples, got {split.n}")
            per = [task_metrics(split.subset(order[b]), tasks) for b in batches]
            res = {t: M.mean_metrics(p[t] for p in per) for t in per[0]}
            res["n"] = split.n
            res["batches"] = len(batches)
            res["batch_size"] = M.SMALL_BATCH_SIZE
        else:
            raise ValueError(f"unknown protocol {proto!r}")
        if proto in ("all", "threshold", "small-batches") and not split.one_text_per_sample:
            res["queries"] = split.num_texts
        results[proto] = res
    return results


def sims_protocols(sims: np.ndarray, text_emb: np.ndarray | None = None, threshold: float = DEFAULT_THRESHOLD,
                   names: tuple[str, str] = ("t2m", "m2t"), keyids: Sequence[str] | None = None
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The protocols that a bare similarity matrix supports: all, threshold (with ``text_emb``), small-batches.

    Small batches are formed as TMR forms them: samples sorted by ``keyids`` first (row ``i`` of ``sims`` is
    sample ``keyids[i]``), then TMR's seeded shuffle; in file row order when ``keyids`` is None.
    Returns ``(results, skipped)`` with ``skipped = {protocol: reason}``."""
    arr = M.check_sims(sims)
    n = arr.shape[0]
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    results["all"] = {**M.bidirectional_metrics(arr, names=names), "n": n}
    if text_emb is not None:
        results["threshold"] = {**M.bidirectional_metrics(arr, text_emb, threshold, names=names), "n": n,
                                "threshold": float(threshold)}
    else:
        skipped["threshold"] = "no text_emb in the file"
    if n >= M.SMALL_BATCH_SIZE:
        sb, nb = M.small_batch_metrics(arr, keyids, names=names)
        results["small-batches"] = {**sb, "n": n, "batches": nb, "batch_size": M.SMALL_BATCH_SIZE,
                                    "order": "sorted keyids" if keyids is not None else "file rows"}
    else:
        skipped["small-batches"] = f"needs at least {M.SMALL_BATCH_SIZE} samples, the matrix has {n}"
    return results, skipped

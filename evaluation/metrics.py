"""Retrieval metrics computed exactly as TMR's evaluation does (Petrovich et al., Mathux/TMR).

Conventions (shared by every function here):

* a similarity matrix ``sims`` has one row per **query** and one column per **gallery** item; for the
  square case the ground truth of query ``i`` is gallery item ``i`` (the diagonal);
* the rank of the ground truth is 0-based (0 = retrieved first) and ties are broken by **averaging** the
  tied positions: if the ground-truth score equals ``k`` other scores of its row and ``b`` scores are
  strictly better, its rank is ``b + k / 2`` (the mean of positions ``b .. b+k``). This is TMR's
  ``break_ties="averaging"``;
* ``R@k`` is the percentage (0-100, unrounded) of queries whose rank is ``< k``; ``MedR`` is the median rank
  plus one (so a perfect model has ``MedR == 1``);
* the **threshold variant** (TMR's ``threshold`` protocol): given L2-normalised sentence embeddings of the
  texts, gallery item ``j`` counts as a correct answer for query ``i`` when
  ``(cos(text_i, text_j) + 1) / 2 > threshold`` (i.e. ``cos > 2 * threshold - 1``, strictly greater, as
  in TMR); the ground-truth score of the row is then the best score among its correct items. The same text
  self-similarity serves both directions (t2m and m2t), since item ``i`` of either side carries text ``i``.

Comparisons are exact float comparisons in the matrix's own dtype, as in TMR, so the numbers match TMR's
on the same matrix. Only ``numpy`` is needed; ``similarity_matrix`` also accepts torch tensors.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lavimo.core.errors import BadInputError

log = logging.getLogger(__name__)

RECALL_KS: tuple[int, ...] = (1, 2, 3, 5, 10)
METRIC_KEYS: tuple[str, ...] = tuple(f"R@{k}" for k in RECALL_KS) + ("MedR",)
SMALL_BATCH_SIZE = 32
SMALL_BATCH_SEED = 0
# Rows processed at a time when ranking (bounds the temporary boolean matrices to ~chunk * G bytes).
_ROW_CHUNK = 2048


# ----------------------------------------------------------------------------------------------------------
# similarity
# ----------------------------------------------------------------------------------------------------------
def similarity_matrix(x: Any, y: Any, eps: float = 1e-12) -> Any:
    """Cosine similarity of every row of ``x`` (N, C) with every row of ``y`` (M, C) -> (N, M).

    Rows are L2-normalised (norm clamped at ``eps``, as ``torch.nn.functional.normalize``) and multiplied.
    Torch tensors in -> a torch tensor out (same device); anything else -> a numpy array.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but the metric core does not need it
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
            raise ValueError(f"similarity_matrix needs (N,C) and (M,C); got {tuple(x.shape)} and {tuple(y.shape)}")
        xn = torch.nn.functional.normalize(x, dim=-1, eps=eps)
        yn = torch.nn.functional.normalize(y, dim=-1, eps=eps)
        return xn @ yn.T
    xa = np.asarray(x)
    ya = np.asarray(y)
    if xa.ndim != 2 or ya.ndim != 2 or xa.shape[1] != ya.shape[1]:
        raise ValueError(f"similarity_matrix needs (N,C) and (M,C); got {xa.shape} and {ya.shape}")
    dtype = np.result_type(xa.dtype, ya.dtype, np.float32)
    xa = xa.astype(dtype, copy=False)
    ya = ya.astype(dtype, copy=False)
    xn = xa / np.maximum(np.linalg.norm(xa, axis=1, keepdims=True), eps)
    yn = ya / np.maximum(np.linalg.norm(ya, axis=1, keepdims=True), eps)
    return xn @ yn.T


def text_self_similarity(text_emb: Any) -> np.ndarray:
    """``text_emb @ text_emb.T`` (N, N) for L2-normalised sentence embeddings (N, D), as TMR computes it.

    float16 embeddings are widened to float32 first.
    """
    emb = check_text_emb(text_emb)
    return emb @ emb.T


def similar_text_mask(text_selfsim: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (N, N): ``text_selfsim > 2 * threshold - 1`` (TMR's score ``(cos + 1) / 2 > threshold``)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a score in [0, 1] ((cos + 1) / 2); got {threshold}")
    real_threshold = 2 * threshold - 1
    return np.asarray(text_selfsim) > real_threshold


# ----------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------
def check_sims(sims: Any, *, square: bool = True, path: str | None = None, field: str = "sims") -> np.ndarray:
    """Validate a similarity matrix and return it as a float numpy array (float16 widened to float32).

    Raises ``BadInputError(path, field, ...)`` for non-2-D, empty, non-square (when ``square``), non-numeric
    or non-finite matrices.
    """
    try:
        arr = np.asarray(sims.detach().cpu().numpy() if hasattr(sims, "detach") else sims)
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(path, field, f"cannot read as an array: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise BadInputError(path, field, f"must be a numeric matrix, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise BadInputError(path, field, f"must be a 2-D matrix, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInputError(path, field, f"is empty (shape {arr.shape})")
    if square and arr.shape[0] != arr.shape[1]:
        raise BadInputError(
            path, field, f"must be square (N x N, ground truth on the diagonal), got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.float16:
        arr = arr.astype(np.float32 if arr.dtype in (np.float16, np.int8, np.uint8, bool) else np.float64)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise BadInputError(path, field, f"has {bad} non-finite value(s) (NaN or inf)")
    return arr


def check_text_emb(text_emb: Any, n: int | None = None, *, path: str | None = None,
                   field: str = "text_emb") -> np.ndarray:
    """Validate sentence embeddings (N, D); ``n`` = the expected number of rows. float16 -> float32."""
    try:
        emb = np.asarray(text_emb.detach().cpu().numpy() if hasattr(text_emb, "detach") else text_emb)
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(path, field, f"cannot read as an array: {exc}") from exc
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
        raise BadInputError(path, field, f"must be a numeric (N, D) matrix, got shape {emb.shape} dtype {emb.dtype}")
    if n is not None and emb.shape[0] != n:
        raise BadInputError(path, field, f"has {emb.shape[0]} rows but the similarity matrix has N = {n}")
    if not np.issubdtype(emb.dtype, np.floating) or emb.dtype == np.float16:
        emb = emb.astype(np.float32)
    if not np.isfinite(emb).all():
        raise BadInputError(path, field, "has non-finite values (NaN or inf)")
    return emb


# ----------------------------------------------------------------------------------------------------------
# ranks and metrics
# ----------------------------------------------------------------------------------------------------------
def gt_ranks(sims: Any, correct: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each query's ground truth, ties averaged -> (Q,) float64.

    Args:
        sims: (Q, G) similarity matrix, rows are queries. Without ``correct`` it must be square and the
            ground truth is the diagonal.
        correct: optional boolean (Q, G) mask of acceptable answers per query (threshold variant, several
            captions per motion). The ground-truth score of a row is its best score among the correct
            items; a row with no correct item is an error.

    The rank of ground-truth score ``g`` in a row is ``(#{s > g} + #{s >= g} - 1) / 2``: the mean of the
    positions tied with ``g`` in the row sorted by decreasing score (TMR's averaging tie-break).
    """
    arr = check_sims(sims, square=correct is None)
    q, g = arr.shape
    if correct is None:
        gt = np.diagonal(arr).copy()
    else:
        correct = np.asarray(correct, dtype=bool)
        if correct.shape != arr.shape:
            raise ValueError(f"correct mask has shape {correct.shape}, sims {arr.shape}")
        empty = ~correct.any(axis=1)
        if empty.any():
            raise ValueError(f"{int(empty.sum())} query row(s) have no correct gallery item")
        gt = np.where(correct, arr, -np.inf).max(axis=1).astype(arr.dtype)
    ranks = np.empty(q, dtype=np.float64)
    for start in range(0, q, _ROW_CHUNK):
        block = arr[start:start + _ROW_CHUNK]
        g_col = gt[start:start + _ROW_CHUNK, None]
        better = np.count_nonzero(block > g_col, axis=1)
        not_worse = np.count_nonzero(block >= g_col, axis=1)
        ranks[start:start + _ROW_CHUNK] = (better + not_worse - 1) / 2.0
    return ranks


def ranks_to_metrics(ranks: Any) -> dict[str, float]:
    """R@1, R@2, R@3, R@5, R@10 (percent, unrounded) and MedR (median 0-based rank + 1) from ranks (Q,)."""
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("no ranks (empty query set)")
    out = {f"R@{k}": 100.0 * float(np.sum(r < k)) / r.size for k in RECALL_KS}
    out["MedR"] = float(np.median(r) + 1)
    return out


def _threshold_correct(arr: np.ndarray, text_emb: Any, threshold: float | None) -> np.ndarray | None:
    """The (N, N) correct-answer mask of the threshold variant (the diagonal included); None without both
    ``text_emb`` and ``threshold`` (the plain diagonal)."""
    if text_emb is None or threshold is None:
        return None
    selfsim = text_self_similarity(check_text_emb(text_emb, arr.shape[0]))
    return similar_text_mask(selfsim, threshold) | np.eye(arr.shape[0], dtype=bool)


def retrieval_metrics(sims: Any, text_emb: Any = None, threshold: float | None = None) -> dict[str, float]:
    """Metrics of one retrieval direction of a square (N, N) matrix; rows are queries, GT on the diagonal.

    With both ``text_emb`` (N, D) L2-normalised sentence embeddings and ``threshold`` (score in [0, 1]),
    TMR's threshold variant is used (see the module docstring). Returns
    ``{"R@1","R@2","R@3","R@5","R@10","MedR"}`` (R@k in percent, unrounded).
    """
    arr = check_sims(sims)
    correct = _threshold_correct(arr, text_emb, threshold)
    return ranks_to_metrics(gt_ranks(arr, correct))


def bidirectional_metrics(
    sims: Any,
    text_emb: Any = None,
    threshold: float | None = None,
    names: tuple[str, str] = ("t2m", "m2t"),
) -> dict[str, dict[str, float]]:
    """Both directions of a square (N, N) matrix (TMR's ``all_contrastive_metrics``).

    ``names[0]`` uses ``sims`` (rows = the first modality as queries), ``names[1]`` uses ``sims.T``. The
    threshold variant uses the same text self-similarity for both directions.
    """
    arr = check_sims(sims)
    correct = _threshold_correct(arr, text_emb, threshold)
    fwd = ranks_to_metrics(gt_ranks(arr, correct))
    bwd = ranks_to_metrics(gt_ranks(arr.T, None if correct is None else correct.T))
    return {names[0]: fwd, names[1]: bwd}


def mean_metrics(metrics: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise mean of several metric dicts (unrounded), as TMR averages its small batches."""
    items = list(metrics)
    if not items:
        raise ValueError("no metrics to average")
    return {key: float(np.mean([m[key] for m in items])) for key in items[0]}


# ----------------------------------------------------------------------------------------------------------
# small batches (TMR's "guo" protocol)
# ----------------------------------------------------------------------------------------------------------
def small_batch_indices(n: int, batch_size: int = SMALL_BATCH_SIZE, seed: int = SMALL_BATCH_SEED) -> list[np.ndarray]:
    """Batches of positions into the **sorted** sample list, as TMR's ``guo`` protocol draws them.

    ``idx = arange(n)`` is shuffled by numpy's legacy generator seeded with ``seed`` (identical to
    ``np.random.seed(seed); np.random.shuffle(idx)``, without touching the global state) and cut into
    ``n // batch_size`` batches of ``batch_size``; the remainder is dropped.
    """
    idx = np.arange(int(n))
    np.random.RandomState(seed).shuffle(idx)
    return [idx[batch_size * i: batch_size * (i + 1)] for i in range(int(n) // batch_size)]


def sorted_order(keyids: Sequence[str] | None, n: int) -> np.ndarray:
    """Positions that sort ``keyids`` (TMR sorts keyids before batching); file order when ``keyids`` is None."""
    if keyids is None:
        return np.arange(n)
    if len(keyids) != n:
        raise ValueError(f"{len(keyids)} keyids for {n} samples")
    return np.array(sorted(range(n), key=lambda i: keyids[i]), dtype=np.int64)


def small_batch_metrics(
    sims: Any,
    keyids: Sequence[str] | None = None,
    names: tuple[str, str] = ("t2m", "m2t"),
    batch_size: int = SMALL_BATCH_SIZE,
    seed: int = SMALL_BATCH_SEED,
) -> tuple[dict[str, dict[str, float]], int]:
    """TMR's ``guo`` protocol on a square (N, N) matrix: metrics per batch of 32, averaged over batches.

    Samples are put in sorted-``keyids`` order (file order when ``keyids`` is None), batched by
    :func:`small_batch_indices`, and each batch's (32, 32) sub-matrix is scored in both directions.
    Returns ``({names[0]: metrics, names[1]: metrics}, number_of_batches)``. Fewer than ``batch_size``
    samples -> ``ValueError``.
    """
    arr = check_sims(sims)
    n = arr.shape[0]
    order = sorted_order(keyids, n)
    batches = small_batch_indices(n, batch_size, seed)
    if not batches:
        raise ValueError(f"small-batches needs at least {batch_size} samples, got {n}")
    per_batch = []
    for b in batches:
        pos = order[b]
        per_batch.append(bidirectional_metrics(arr[np.ix_(pos, pos)], names=names))
    out = {name: mean_metrics(m[name] for m in per_batch) for name in names}
    return out, len(batches)

"""Reference behaviour of the metric core (evaluation/metrics.py): TMR's ranks, tie-break, threshold and guo batches."""

from __future__ import annotations

import numpy as np
import pytest

from lavimo.core.errors import BadInputError
from lavimo.evaluation import metrics as M

# np.random.seed(0); np.random.shuffle(np.arange(70)) -- the permutation TMR's guo protocol draws for N = 70.
SHUFFLE_70 = [26, 27, 48, 22, 30, 51, 7, 59, 34, 69, 56, 28, 31, 42, 33, 55, 68, 62, 43, 4, 65, 50, 2, 40, 11,
              3, 54, 45, 10, 41, 49, 53, 57, 32, 14, 67, 19, 29, 52, 35, 18, 0, 15, 5, 16, 20, 66, 8, 13, 25,
              37, 17, 60, 46, 63, 39, 38, 1, 58, 12, 61, 24, 6, 23, 36, 21, 9, 64, 47, 44]


def slow_ranks(sims: np.ndarray, correct: np.ndarray | None = None) -> np.ndarray:
    """Independent reference: sort each row by decreasing score, average the positions equal to the GT score."""
    n = sims.shape[0]
    out = np.empty(n)
    for i in range(n):
        row = sims[i]
        gt = row[i] if correct is None else max(row[j] for j in range(row.size) if correct[i, j])
        order = sorted(row.tolist(), reverse=True)
        pos = [p for p, v in enumerate(order) if v == gt]
        out[i] = sum(pos) / len(pos)
    return out


def test_identity_is_perfect():
    m = M.retrieval_metrics(np.eye(12, dtype=np.float32))
    assert m == {"R@1": 100.0, "R@2": 100.0, "R@3": 100.0, "R@5": 100.0, "R@10": 100.0, "MedR": 1.0}
    both = M.bidirectional_metrics(np.eye(12))
    assert both["t2m"] == m and both["m2t"] == m


def test_three_way_tie_at_top_gives_rank_two():
    n = 10
    sims = np.eye(n, dtype=np.float32)
    # row 0: the ground truth (col 0) ties with cols 3 and 7 at the top -> positions 1, 2, 3 averaged -> rank 2
    sims[0, 3] = 1.0
    sims[0, 7] = 1.0
    ranks = M.gt_ranks(sims)
    assert ranks[0] == 1.0  # 0-based: (0 + 1 + 2) / 3
    assert np.all(ranks[1:] == 0.0)
    m = M.retrieval_metrics(sims)
    assert m["R@1"] == pytest.approx(90.0)
    assert m["R@2"] == 100.0 and m["MedR"] == 1.0
    # the tie is only in row 0: in the other direction columns 3 and 7 now see a score equal to their GT
    # columns 3 and 7 as queries (m2t): their GT ties with row 0 at the top -> positions 1, 2 -> rank 0.5,
    # which still counts for R@1 (rank < 1), as in TMR
    assert M.gt_ranks(sims.T).tolist() == [0, 0, 0, 0.5, 0, 0, 0, 0.5, 0, 0]
    assert M.bidirectional_metrics(sims)["m2t"]["R@1"] == 100.0


def test_reversed_order_is_worst():
    n = 9
    # every row: the ground truth has the lowest score, the others are all distinct
    sims = np.array([[((j - i) % n) / n for j in range(n)] for i in range(n)])
    m = M.retrieval_metrics(sims)
    assert m["R@1"] == 0.0 and m["R@5"] == 0.0
    assert m["MedR"] == float(n)
    assert np.all(M.gt_ranks(sims) == n - 1)
    # 1 - eye: all other items tie above the GT; still last
    m2 = M.retrieval_metrics(1.0 - np.eye(n))
    assert m2["R@1"] == 0.0 and m2["R@5"] == 0.0 and m2["MedR"] == float(n)
    assert m2["R@10"] == 100.0  # rank 8 (0-based) < 10


def test_recall_percent_and_median_rank():
    # ranks 0, 1, 2, 3 -> R@1 25, R@2 50, R@3 75, R@5 100, MedR = median(0,1,2,3)+1 = 2.5
    n = 4
    sims = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r, j in enumerate(others[:i]):
            sims[i, j] = 1.0 - 0.1 * r
        sims[i, i] = 0.5
    assert M.gt_ranks(sims).tolist() == [0, 1, 2, 3]
    m = M.retrieval_metrics(sims)
    assert (m["R@1"], m["R@2"], m["R@3"], m["R@5"], m["MedR"]) == (25.0, 50.0, 75.0, 100.0, 2.5)


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_threshold_near_duplicate_text_makes_off_diagonal_correct():
    # texts 0 and 1 are near duplicates ("a person walks" / "a person walks forward"), 2 and 3 unrelated
    emb = np.stack([_unit([1, 0, 0]), _unit([1, 0.05, 0]), _unit([0, 1, 0]), _unit([0, 0, 1])])
    sims = np.array(
        [
            [0.7, 0.9, 0.1, 0.0],  # text 0 retrieves motion 1 first: wrong normally, right with the threshold
            [0.2, 0.8, 0.1, 0.0],
            [0.1, 0.0, 0.9, 0.3],
            [0.0, 0.5, 0.2, 0.6],  # text 3: motion 3 is first; motion 1 is no near duplicate of text 3
        ],
        dtype=np.float32,
    )
    normal = M.retrieval_metrics(sims)
    assert normal["R@1"] == 75.0
    thr = M.retrieval_metrics(sims, emb, threshold=0.8)
    assert thr["R@1"] == 100.0 and thr["MedR"] == 1.0
    # m2t: motion 0's best text is text 1 (0.2 < 0.7? no: column 0 = [0.7,0.2,0.1,0.0] -> text 0 first)
    both = M.bidirectional_metrics(sims, emb, threshold=0.8)
    assert both["t2m"] == thr
    # column 1 = [0.9, 0.8, 0.0, 0.5]: motion 1's GT text 1 is 2nd normally, 1st with the threshold (text 0 similar)
    assert M.gt_ranks(sims.T)[1] == 1.0
    assert both["m2t"]["R@1"] == 100.0
    # a dissimilar pair (texts 2 and 3, cos 0 -> score 0.5) stays wrong even at threshold 0.5 (strictly greater)
    sims2 = sims.copy()
    sims2[2] = [0.0, 0.0, 0.5, 0.9]
    assert M.retrieval_metrics(sims2, emb, threshold=0.5)["R@1"] == 75.0
    # threshold 1.0 accepts nothing but the diagonal -> normal metrics
    assert M.retrieval_metrics(sims, emb, threshold=1.0) == normal


def test_threshold_uses_best_score_among_similar_items():
    emb = np.stack([_unit([1, 0]), _unit([1, 0.01]), _unit([1, -0.01]), _unit([0, 1])])
    # for text 0, items 0,1,2 are all acceptable; best of them is 0.6 (item 2) -> rank of 0.6 in the row
    sims = np.array([[0.1, 0.3, 0.6, 0.8], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    sel = M.similar_text_mask(M.text_self_similarity(emb), 0.8) | np.eye(4, dtype=bool)
    assert M.gt_ranks(sims, sel)[0] == 1.0
    assert M.gt_ranks(sims)[0] == 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    sims = (rng.integers(0, 5, size=(n, n)) / 4).astype(np.float32)  # heavy ties
    np.testing.assert_array_equal(M.gt_ranks(sims), slow_ranks(sims))
    np.testing.assert_array_equal(M.gt_ranks(sims.T), slow_ranks(sims.T))
    emb = rng.normal(size=(n, 3)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    correct = M.similar_text_mask(emb @ emb.T, 0.8)
    assert correct.diagonal().all()
    np.testing.assert_array_equal(M.gt_ranks(sims, correct), slow_ranks(sims, correct))


def test_rectangular_with_mask():
    # 3 captions for 2 motions: caption -> motion owner [0, 0, 1]
    sims = np.array([[0.9, 0.1], [0.2, 0.3], [0.4, 0.5]])
    correct = np.array([[1, 0], [1, 0], [0, 1]], dtype=bool)
    assert M.gt_ranks(sims, correct).tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(BadInputError):
        M.gt_ranks(sims)  # rectangular without a mask


def test_similarity_matrix_numpy_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = rng.normal(size=(7, 4)).astype(np.float32)
    s = M.similarity_matrix(x, y)
    assert s.shape == (5, 7)
    ref = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-6)
    st = M.similarity_matrix(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(st, torch.Tensor)
    np.testing.assert_allclose(st.numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diag(M.similarity_matrix(x, x)), 1.0, rtol=1e-6)


def test_small_batch_indices_are_tmr_guo():
    batches = M.small_batch_indices(70)
    assert len(batches) == 2 and all(len(b) == 32 for b in batches)
    assert batches[0].tolist() == SHUFFLE_70[:32]
    assert batches[1].tolist() == SHUFFLE_70[32:64]
    idx = np.arange(70)
    state = np.random.get_state()
    np.random.seed(0)
    np.random.shuffle(idx)
    np.random.set_state(state)
    assert idx.tolist() == SHUFFLE_70
    # the global generator is not touched by the metric core
    before = np.random.get_state()[1].copy()
    M.small_batch_indices(70)
    assert np.array_equal(np.random.get_state()[1], before)


def _guo_probe(n=70):
    """A matrix where the first guo batch is perfect, the second reversed, the 6 dropped samples irrelevant."""
    first, second = set(SHUFFLE_70[:32]), set(SHUFFLE_70[32:64])
    sims = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        sims[i, i] = 1.0 if i in first else (-1.0 if i in second else 0.0)
    return sims


def test_small_batches_on_70_uses_exactly_two_seeded_batches():
    sims = _guo_probe()
    res, nb = M.small_batch_metrics(sims)
    assert nb == 2
    for task in ("t2m", "m2t"):
        m = res[task]
        # batch 1: all rank 0; batch 2: every GT is last of 32 (rank 31, MedR 32)
        assert m["R@1"] == 50.0 and m["R@10"] == 50.0
        assert m["MedR"] == pytest.approx((1 + 32) / 2)
    # a different batching (file order) would mix the two groups and not give 50 / 16.5
    contiguous = [np.arange(0, 32), np.arange(32, 64)]
    alt = M.mean_metrics(M.retrieval_metrics(sims[np.ix_(b, b)]) for b in contiguous)
    assert alt["R@1"] != 50.0


def test_small_batches_sort_keyids_first():
    sims = _guo_probe()
    # keyids whose sorted order is the reverse of the file order: position p of the sorted list is 69 - p
    keyids = [f"{69 - i:06d}" for i in range(70)]
    rev = sims[::-1, ::-1].copy()
    res_sorted, _ = M.small_batch_metrics(rev, keyids=keyids)
    res_file, _ = M.small_batch_metrics(sims)
    assert res_sorted == res_file


def test_small_batches_needs_32():
    with pytest.raises(ValueError, match="at least 32"):
        M.small_batch_metrics(np.eye(31))


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((3, 4)), "square"),
        (np.zeros((3,)), "2-D"),
        (np.zeros((0, 0)), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "non-finite"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    ],
)
def test_bad_sims_raise(bad, msg):
    with pytest.raises(BadInputError, match=msg):
        M.retrieval_metrics(bad)


def test_text_emb_rows_must_match():
    with pytest.raises(BadInputError, match="rows"):
        M.retrieval_metrics(np.eye(4), np.eye(3, 5), threshold=0.8)
    with pytest.raises(ValueError):
        M.retrieval_metrics(np.eye(4), np.eye(4), threshold=1.5)


def test_float16_and_int_inputs_are_widened():
    m16 = M.retrieval_metrics(np.eye(5, dtype=np.float16))
    mi = M.retrieval_metrics(np.eye(5, dtype=np.int64))
    assert m16 == mi == M.retrieval_metrics(np.eye(5))

"""The four negative-filtering modes of lavimo.model.losses.contrastive_loss, pinned on hand-made batches.

Expected values are computed here independently with plain Python floats and loops.
"""

from __future__ import annotations

import math

import pytest
import torch

from lavimo.model.losses import contrastive_loss

TAU = 0.1
EPS = 0.8


def _norm(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def _cos_matrix(a, b):
    a = [_norm(r) for r in a]
    b = [_norm(r) for r in b]
    return [[sum(p * q for p, q in zip(ra, rb)) for rb in b] for ra in a]


def _log_softmax(row):
    m = max(v for v in row if v != -math.inf)
    lse = m + math.log(sum(math.exp(v - m) for v in row if v != -math.inf))
    return [v - lse if v != -math.inf else -math.inf for v in row]


def _transpose(mat):
    return [list(r) for r in zip(*mat)]


def _ce_dir(logits):
    n = len(logits)
    return sum(-_log_softmax(logits[i])[i] for i in range(n)) / n


def _kl_dir(targets, logits):
    n = len(logits)
    total = 0.0
    for i in range(n):
        lp = _log_softmax(logits[i])
        total += sum(q * (math.log(q) - lp[j]) for j, q in enumerate(targets[i]) if q > 0)
    return total / n


def expected(x, y, s, mode):
    logits = [[v / TAU for v in row] for row in _cos_matrix(x, y)]
    c = _cos_matrix(s, s)
    n = len(x)
    score = [[(c[i][j] + 1) / 2 for j in range(n)] for i in range(n)]
    if mode == "none":
        return 0.5 * (_ce_dir(logits) + _ce_dir(_transpose(logits)))
    if mode == "tmr":
        masked = [[-math.inf if (i != j and score[i][j] > EPS) else logits[i][j] for j in range(n)] for i in range(n)]
        return 0.5 * (_ce_dir(masked) + _ce_dir(_transpose(masked)))
    if mode == "lavimo":
        pos = [[1.0 if (i == j or score[i][j] > EPS) else 0.0 for j in range(n)] for i in range(n)]
        q = [[p / sum(row) for p in row] for row in pos]
    else:  # soft
        q = []
        for i in range(n):
            e = [math.exp(c[i][j] / TAU) for j in range(n)]
            q.append([v / sum(e) for v in e])
    return 0.5 * (_kl_dir(q, logits) + _kl_dir(q, _transpose(logits)))


X = [[1.0, 0.2, 0.0], [0.3, 1.0, 0.1], [0.0, -0.4, 1.0]]
Y = [[0.9, 0.0, 0.3], [0.8, 0.9, 0.0], [0.1, 0.1, 1.0]]
S_DISSIMILAR = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # cos 0 -> score 0.5
S_NEAR_DUP = [[1.0, 0.0, 0.0], [0.995, 0.0998, 0.0], [0.0, 0.0, 1.0]]  # texts 0 and 1: cos 0.995


def _loss(x, y, s, mode):
    return float(contrastive_loss(torch.tensor(x), torch.tensor(y), torch.tensor(s), mode=mode, threshold=EPS,
                                  temperature=TAU))


@pytest.mark.parametrize("mode", ["none", "tmr", "lavimo", "soft"])
@pytest.mark.parametrize("sents", [S_DISSIMILAR, S_NEAR_DUP], ids=["dissimilar", "near-duplicate"])
def test_mode_matches_formula(mode, sents):
    assert _loss(X, Y, sents, mode) == pytest.approx(expected(X, Y, sents, mode), rel=1e-5, abs=1e-6)


def test_dissimilar_texts_tmr_lavimo_none_agree():
    vals = [_loss(X, Y, S_DISSIMILAR, m) for m in ("none", "tmr", "lavimo")]
    assert vals[0] == pytest.approx(vals[1], rel=1e-6)
    assert vals[0] == pytest.approx(vals[2], rel=1e-6)
    # soft spreads a little target mass even onto dissimilar texts (cos 0 -> weight exp(-10) relative)
    assert _loss(X, Y, S_DISSIMILAR, "soft") != pytest.approx(vals[0], rel=1e-9)


def test_near_duplicates_change_the_modes_as_defined():
    none, tmr, lav, soft = (_loss(X, Y, S_NEAR_DUP, m) for m in ("none", "tmr", "lavimo", "soft"))
    # removing a negative can only lower the cross-entropy of its rows
    assert tmr < none
    # lavimo asks rows 0 and 1 to spread over both duplicates; it differs from both
    assert abs(lav - none) > 1e-3 and abs(lav - tmr) > 1e-3
    assert abs(soft - lav) > 1e-4


def test_lavimo_zero_when_predictions_match_targets():
    # two identical texts whose latents are identical: the best lavimo can do is 1/2-1/2, reached when the
    # logits of the duplicates are equal and the others are very negative
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    val = float(contrastive_loss(x, x.clone(), s, mode="lavimo", threshold=EPS, temperature=0.01))
    assert val == pytest.approx(0.0, abs=1e-6)
    assert float(contrastive_loss(x, x.clone(), s, mode="none", temperature=0.01)) == pytest.approx(math.log(2) / 1.5,
                                                                                                    rel=1e-4)


def test_symmetric_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 8, requires_grad=True)
    y = torch.randn(5, 8, requires_grad=True)
    s = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    for mode in ("none", "tmr", "soft", "lavimo"):
        a = contrastive_loss(x, y, s, mode=mode)
        b = contrastive_loss(y, x, s, mode=mode)
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)
        (gx, gy) = torch.autograd.grad(a, (x, y))
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="sent_emb"):
        contrastive_loss(x, x, None, mode="lavimo")
    with pytest.raises(ValueError, match="mode"):
        contrastive_loss(x, x, None, mode="bogus")
    with pytest.raises(ValueError):
        contrastive_loss(x, torch.randn(4, 4), None, mode="none")
    assert torch.isfinite(contrastive_loss(x, x, None, mode="none"))

"""Protocols over an encoded split (evaluation/protocols.py): tasks, subsets, dissimilar picks, several captions."""

from __future__ import annotations

import numpy as np
import pytest

from lavimo.core.errors import BadInputError
from lavimo.evaluation import metrics as M
from lavimo.evaluation import protocols as P


def _split(n=40, c=8, seed=0, noise=0.3):
    """Latents where text/video/motion of a sample share a random direction (+ noise)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, c)).astype(np.float32)
    mk = lambda: (base + noise * rng.normal(size=(n, c))).astype(np.float32)  # noqa: E731
    sent = rng.normal(size=(n, 5)).astype(np.float32)
    sent /= np.linalg.norm(sent, axis=1, keepdims=True)
    keyids = [f"{(i * 11) % n:06d}" for i in range(n)]  # a permutation (gcd(11, n) = 1)
    return P.EncodedSplit(keyids=keyids, motion=mk(), video=mk(), text=mk(), sent_emb=sent,
                          captions=[f"caption {i}" for i in range(n)])


def test_expand_and_parse():
    assert P.expand_protocols("everything") == ["all", "threshold", "dissimilar", "small-batches"]
    assert P.expand_protocols(["small-batches", "all"]) == ["all", "small-batches"]
    with pytest.raises(ValueError):
        P.expand_protocols("guo")
    assert P.parse_tasks(None) == list(P.TASKS)
    assert P.parse_tasks("m2t,t2m") == ["t2m", "m2t"]
    assert P.parse_tasks(["v2m", "t2v v2t"]) == ["v2m", "t2v", "v2t"]
    with pytest.raises(ValueError):
        P.parse_tasks("t2x")


def test_task_metrics_match_metric_core():
    s = _split()
    res = P.task_metrics(s, P.TASKS)
    assert list(res) == list(P.TASKS)
    for a, b in (("t", "m"), ("v", "m"), ("t", "v")):
        sims = M.similarity_matrix(s.latents(a), s.latents(b))
        both = M.bidirectional_metrics(sims, names=(f"{a}2{b}", f"{b}2{a}"))
        assert res[f"{a}2{b}"] == both[f"{a}2{b}"]
        assert res[f"{b}2{a}"] == both[f"{b}2{a}"]
    thr = P.task_metrics(s, ["t2m", "m2t"], threshold=0.8)
    sims = M.similarity_matrix(s.text, s.motion)
    assert thr == M.bidirectional_metrics(sims, s.sent_emb, 0.8)


def test_run_protocols_shapes_and_subsets():
    s = _split(n=70)
    subset = sorted(s.keyids)[:20]
    res = P.run_protocols(s, P.PROTOCOLS, ["t2m", "m2t", "v2m"], subset_ids=subset)
    assert list(res) == ["all", "threshold", "dissimilar", "small-batches"]
    assert res["all"]["n"] == 70 and res["dissimilar"]["n"] == 20
    assert res["threshold"]["threshold"] == 0.8
    assert res["small-batches"]["batches"] == 2 and res["small-batches"]["batch_size"] == 32
    for proto in res:
        assert set(res[proto]) >= {"t2m", "m2t", "v2m", "n"}
        assert set(res[proto]["t2m"]) == set(M.METRIC_KEYS)
    # dissimilar = the metric core on the sub-matrix of those ids
    idx = [s.keyids.index(k) for k in subset]
    sims = M.similarity_matrix(s.text, s.motion)
    assert res["dissimilar"]["t2m"] == M.retrieval_metrics(sims[np.ix_(idx, idx)])
    # small-batches sorts keyids: same as the metric core given the keyids
    sb, nb = M.small_batch_metrics(sims, keyids=s.keyids)
    assert res["small-batches"]["t2m"] == sb["t2m"] and nb == 2


def test_subset_missing_id_is_a_clear_error(tmp_path):
    s = _split(n=10)
    f = tmp_path / "nsim.txt"
    f.write_text("\n".join(s.keyids[:3] + ["999999"]) + "\n")
    ids = P.read_subset(f)
    with pytest.raises(BadInputError, match=r"1 of 4 subset id\(s\) are not in the test split.*999999"):
        P.run_protocols(s, ["dissimilar"], ["t2m"], subset_ids=ids, subset_path=f, split_name="test")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(BadInputError, match="no ids"):
        P.read_subset(tmp_path / "empty.txt")
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(BadInputError, match="duplicate"):
        P.read_subset(tmp_path / "dup.txt")
    with pytest.raises(BadInputError, match="cannot read"):
        P.read_subset(tmp_path / "nope.txt")


def test_shared_nsim_subset_file_reads(shared_data):
    ids = P.read_subset(shared_data / "humanml3d" / "splits" / "nsim_test.txt")
    assert len(ids) == 100
    test_ids = set(P.read_subset(shared_data / "humanml3d" / "splits" / "test.txt"))
    assert set(ids) <= test_ids


def test_build_dissimilar_is_deterministic_and_spread():
    rng = np.random.default_rng(0)
    # 6 well separated "topics", each with 10 near-duplicate texts
    topics = np.linalg.qr(rng.normal(size=(16, 6)))[0].T
    emb = np.concatenate([t + 0.05 * rng.normal(size=(10, 16)) for t in topics]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keyids = [f"{i:04d}" for i in range(60)]
    got = P.build_dissimilar_subset(keyids, emb, size=6)
    assert len(got.ids) == 6 and got.stopped_by == "size"
    assert sorted({int(k) // 10 for k in got.ids}) == list(range(6))  # one per topic
    # same answer whatever the input order
    perm = rng.permutation(60)
    got2 = P.build_dissimilar_subset([keyids[i] for i in perm], emb[perm], size=6)
    assert got2.ids == got.ids
    # a cap on the pairwise score stops early once only near duplicates remain
    capped = P.build_dissimilar_subset(keyids, emb, size=20, max_score=0.8)
    assert len(capped.ids) == 6 and capped.stopped_by == "max_score"
    assert capped.max_pair_score <= 0.8


def test_build_dissimilar_with_fewer_candidates_says_so(caplog):
    emb = np.eye(7, dtype=np.float32)
    with caplog.at_level("WARNING"):
        got = P.build_dissimilar_subset([str(i) for i in range(7)], emb, size=100)
    assert len(got.ids) == 7 and got.stopped_by == "candidates" and got.candidates == 7
    assert "picked 7 of the 100 requested" in caplog.text and "only 7 samples" in caplog.text


def test_all_captions_mode():
    # 3 samples, captions: sample 0 has 2, sample 1 has 1, sample 2 has 2
    owner = np.array([0, 0, 1, 2, 2])
    c = np.eye(3, dtype=np.float32)
    motion = c.copy()
    text = np.stack([c[0], c[1], c[1], c[2], c[2]])  # caption 1 (of sample 0) looks like sample 1
    sent = np.stack([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]]).astype(np.float32)
    s = P.EncodedSplit(keyids=["a", "b", "c"], motion=motion, text=text, text_owner=owner, sent_emb=sent,
                       captions=list("vwxyz"))
    assert not s.one_text_per_sample
    res = P.task_metrics(s, ["t2m", "m2t"])
    # t2m: 5 queries; caption 1 retrieves sample 1 first (its GT sample 0 is tied with sample 2 at 0 -> rank 1.5)
    assert res["t2m"]["R@1"] == pytest.approx(80.0)
    # m2t: gallery = 5 captions, GT = best caption of the query's sample. Motion 0: caption 0 alone on top
    # (rank 0); motion 1: caption 2 ties with caption 1 (rank 0.5); motion 2: its own captions 3, 4 tie (0.5)
    mt = P.task_metrics(s, ["m2t"])["m2t"]
    assert mt["R@1"] == 100.0 and mt["MedR"] == 1.5
    assert res["m2t"] == mt
    # threshold with the captions' texts: caption 1 ("sample 0") is similar to nothing of sample 1 -> unchanged
    thr = P.task_metrics(s, ["t2m"], threshold=0.8)
    assert thr["t2m"]["R@1"] == pytest.approx(80.0)
    # now caption 1 (of sample 0) says the same as caption 2 (of sample 1): motion 1 becomes a correct answer
    sent2 = np.stack([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]).astype(np.float32)
    s2 = P.EncodedSplit(keyids=["a", "b", "c"], motion=motion, text=text, text_owner=owner, sent_emb=sent2)
    tt, ts, ss = s2.sample_texts_similar(0.8)
    assert ts[1].tolist() == [True, True, False] and ss[0].tolist() == [True, True, False]
    assert P.task_metrics(s2, ["t2m"], threshold=0.8)["t2m"]["R@1"] == 100.0
    sub = s.subset([2, 0])
    assert sub.keyids == ["c", "a"] and sub.text_owner.tolist() == [0, 0, 1, 1]


def test_sims_protocols_skip_reasons():
    res, skipped = P.sims_protocols(np.eye(10))
    assert list(res) == ["all"]
    assert "threshold" in skipped and "small-batches" in skipped

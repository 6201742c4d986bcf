"""Gathered contrastive negatives (model/gather.py): 2 DDP ranks x 4 samples (gloo, CPU) give the loss and the
gradients of one process x 8 samples, for every negative-filtering mode; without gathering they do not."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODES = ("none", "tmr", "soft", "lavimo")
# samples 1 and 6 (ranks 0 and 1) share a caption: negative filtering must see the pair across ranks
TEXTS = ["a person walks forward", "a person jumps up and down", "someone waves", "a man sits down",
         "the person turns around", "a person kicks", "a person jumps up and down", "someone squats down"]
LENGTHS = [10, 7, 5, 8, 8, 5, 7, 10]  # each rank holds 30 valid frames (the recon loss is a per-rank mean)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(cfg, rows: slice) -> dict:
    g = torch.Generator().manual_seed(1)
    n, t = len(TEXTS), max(LENGTHS)
    sent = torch.randn(n, 16, generator=g)
    sent[6] = sent[1]  # same caption -> same sentence embedding
    mask = torch.arange(t)[None, :] < torch.tensor(LENGTHS)[:, None]
    full = {"text": TEXTS, "sent_emb": torch.nn.functional.normalize(sent, dim=-1),
            "motion": torch.randn(n, t, cfg.feature_dim, generator=g), "mask": mask,
            "video": torch.randn(n, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)}
    return {k: v[rows] for k, v in full.items()}


def _model(mode: str):
    from lavimo.model import build_model, load_preset

    cfg = load_preset("tiny", negative_filtering=mode)
    torch.manual_seed(0)
    # eval(): no dropout (the tiny BERT backbone has 0.1), whose random masks depend on how the batch is split
    return cfg, build_model(cfg).eval()


def _terms(out: dict) -> dict[str, float]:
    return {k: float(out[k].detach()) for k in ("loss", "tm", "vm", "tv", "recon")}


def _reference(mode: str) -> tuple[dict, dict]:
    cfg, model = _model(mode)
    out = model.compute_losses(_batch(cfg, slice(0, 8)))
    out["loss"].backward()
    return _terms(out), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from lavimo.model.ddp import needs_find_unused_parameters
        from lavimo.training.loop import LossModule

        for gather in (True, False):
            for mode in MODES:
                cfg, model = _model(mode)
                net = torch.nn.parallel.DistributedDataParallel(
                    LossModule(model, gather_negatives=gather),
                    find_unused_parameters=needs_find_unused_parameters(model))
                per = 8 // world
                out = net(_batch(cfg, slice(rank * per, (rank + 1) * per)))
                out["loss"].backward()  # DDP averages the gradients over the ranks here
                grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                torch.save({"terms": _terms(out), "grads": grads}, Path(outdir) / f"{mode}-{gather}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """One 2-rank gloo job for both tests: ``{mode}-{gather}-{rank}.pt`` for every mode, with and without
    gathered negatives."""
    outdir = tmp_path_factory.mktemp("gather")
    mp.start_processes(_worker, args=(2, _free_port(), str(outdir)), nprocs=2, join=True, start_method="spawn")
    return outdir


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[dict, dict]]:
    """mode -> (loss terms, gradients) of one process on all 8 samples."""
    torch.set_num_threads(1)
    return {mode: _reference(mode) for mode in MODES}


def _load(ranks: Path, mode: str, gather: bool, rank: int) -> dict:
    return torch.load(ranks / f"{mode}-{gather}-{rank}.pt", weights_only=True)


@pytest.mark.slow
def test_two_ranks_equal_one_process(ranks, references):
    for mode in MODES:
        ref_terms, ref_grads = references[mode]
        for rank in (0, 1):
            got = _load(ranks, mode, True, rank)
            for k in ("tm", "vm", "tv"):  # the contrastive terms: the global batch's on every rank
                assert got["terms"][k] == pytest.approx(ref_terms[k], rel=1e-5, abs=1e-6), (mode, rank, k)
            assert set(got["grads"]) == set(ref_grads), mode
            for name, g in ref_grads.items():
                torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"{mode} rank {rank} {name}: {m}")
        # recon is each rank's own mean; their average (what DDP optimises) is the one process's value
        r0, r1 = (_load(ranks, mode, True, r)["terms"] for r in (0, 1))
        assert (r0["recon"] + r1["recon"]) / 2 == pytest.approx(ref_terms["recon"], rel=1e-5)
        assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(ref_terms["loss"], rel=1e-5)


@pytest.mark.slow
def test_without_gather_ranks_see_only_their_rows(ranks, references):
    """gather_negatives=False: the old per-rank loss (4 negatives candidates), which differs from the global one."""
    for mode in MODES:
        ref_terms, _ = references[mode]
        got = _load(ranks, mode, False, 0)
        assert got["terms"]["tm"] != pytest.approx(ref_terms["tm"], rel=1e-3), mode


def _uneven_worker(rank: int, world: int, port: int, outdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from lavimo.model.gather import BatchGather

        n = 3 if rank == 0 else 5
        x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2).add(100 * rank).requires_grad_(True)
        g = BatchGather(n)
        full = g(x)
        (full * torch.arange(16, dtype=torch.float32).reshape(8, 2)).sum().backward()
        torch.save({"full": full.detach(), "grad": x.grad, "sizes": g.sizes}, Path(outdir) / f"u-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_uneven_batches_gather_in_rank_order(tmp_path):
    mp.start_processes(_uneven_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    w = torch.arange(16, dtype=torch.float32).reshape(8, 2)
    expect = torch.cat([torch.arange(6.0).reshape(3, 2), torch.arange(10.0).reshape(5, 2) + 100])
    for rank, rows in ((0, slice(0, 3)), (1, slice(3, 8))):
        got = torch.load(tmp_path / f"u-{rank}.pt", weights_only=True)
        assert got["sizes"] == [3, 5]
        torch.testing.assert_close(got["full"], expect)
        torch.testing.assert_close(got["grad"], 2 * w[rows])  # local slot only, times world size


def test_identity_without_process_group():
    from lavimo.model.gather import batch_gather

    assert batch_gather(True, 4) is None  # no process group: the losses stay on the local rows

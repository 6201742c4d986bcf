"""The shard set a run trains on: its train/val manifests checked, its files verified against their sha256,
the steps per epoch, and the loaders of one epoch (training) and of the val split (validation)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lavimo.core.errors import BadInputError, SetupError
from lavimo.dataset.shards.source import FetchError, RemoteShards, is_remote
from lavimo.dataset.text_embed import same_sentence_model
from lavimo.training.config import TrainConfig
from lavimo.training.loop import DistInfo

log = logging.getLogger("train")


def check_training_manifests(shards: Path | RemoteShards, cfg) -> dict[str, dict]:
    """Read the train/val manifests (not the tars: see :func:`verify_shards`); clear errors (BadInputError
    naming the file and field) for a missing/empty directory, an unreadable manifest or a feature-dim mismatch.
    ``shards`` may be a remote set (an http(s) base URL or ``pipe:`` command, dataset/shards/source.py): a server
    or command that fails raises its FetchError (an OSError naming the URL)."""
    from lavimo.dataset.shards.format import manifest_path, read_manifest

    remote = is_remote(shards)
    if not remote and not shards.is_dir():
        raise BadInputError(shards, None, "shard directory not found (build it with build-shards)")
    manifests = {}
    for split in ("train", "val"):
        mpath = shards.url(f"{split}.json") if remote else manifest_path(shards, split)
        if not remote and not mpath.is_file() and not any(shards.glob(f"{split}-*.tar")):
            raise BadInputError(shards, split, f"no {split} shards ({split}.json + {split}-NNNNNN.tar); "
                                               "build them with build-shards")
        try:
            m = read_manifest(shards, split)
        except (BadInputError, FetchError):
            raise
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            if remote and isinstance(exc, FileNotFoundError):  # http 404 or a failing pipe: command
                raise BadInputError(mpath, split, f"no {split} manifest at this location ({exc}); check --shards "
                                                  "(build the shards with build-shards)") from exc
            raise BadInputError(mpath, None, f"unreadable manifest ({' '.join(str(exc).split())}); rebuild the "
                                             "shards with build-shards") from exc
        if not isinstance(m, dict):
            raise BadInputError(mpath, None, "not a shard manifest (a JSON object); rebuild it with build-shards")
        if not isinstance(m.get("shards", []), list):
            raise BadInputError(mpath, "shards", "not a list; rebuild the shards with build-shards")
        try:
            n = int(m.get("num_samples", 0) or 0)
            fdim = m.get("feature_dim")
            fdim = None if fdim is None else int(fdim)
        except (TypeError, ValueError) as exc:
            raise BadInputError(mpath, "num_samples/feature_dim", f"not an integer ({exc})") from exc
        if n <= 0:
            raise BadInputError(mpath, "num_samples", f"the {split} split is empty")
        if fdim is not None and fdim != int(cfg.feature_dim):
            raise BadInputError(
                mpath, "feature_dim",
                f"the shards hold {fdim}-dim motion features but preset {cfg.name!r} expects "
                f"feature_dim={cfg.feature_dim} (use a matching preset or --set feature_dim={fdim})")
        manifests[split] = m
    return manifests


def _verify_files(shards: Path | RemoteShards, manifests: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """``{split: {shard name: {"sha256", "bytes", "match": True}}}`` from lavimo.dataset.shards.verify_shards (every
    listed file read once, streamed through sha256; for a remote set every tar is downloaded once, nothing
    stored), against ``manifests`` (those training checked: never read twice); the first file that differs from
    its manifest entry (or is missing or unreadable) raises BadInputError naming it."""
    from lavimo.dataset.shards.check import verify_shards as verify_shard_files

    out: dict[str, dict[str, dict]] = {}
    for split in manifests:
        results = verify_shard_files(shards, [split], manifests=manifests)
        bad = [r for r in results if not r["ok"]]
        if bad:
            first = bad[0]
            problem = str(first["problem"] or "differs from the manifest")
            problem = problem.removeprefix(f"{first['file']}: ")
            more = f" (and {len(bad) - 1} more {split} shard file(s))" if len(bad) > 1 else ""
            raise BadInputError(first["file"], None, f"{problem}{more}; rebuild the shards with build-shards (or "
                                                     "pass --no-verify to train on them anyway)")
        out[split] = {r.get("name") or Path(r["file"]).name: {"sha256": r["sha256"], "bytes": r["size"],
                                                              "match": True}
                      for r in results}
    return out


def check_shard_listing(shards: Path | RemoteShards, manifests: dict[str, dict]) -> None:
    """``--verify-shards stream``'s check before training (no tar is read): every train/val manifest entry
    holds a sha256 and a size to check the shard against while it is streamed, and for a local set every
    listed file exists with that size (one stat each). Raises BadInputError naming the manifest or the file."""
    from lavimo.dataset.shards.stream import expected_digests

    t0, n = time.perf_counter(), 0
    for split, manifest in manifests.items():
        for url, (_, size) in expected_digests(shards, split, manifest).items():
            if is_remote(shards):
                continue
            try:
                found = Path(url).stat().st_size
            except FileNotFoundError:
                raise BadInputError(url, None, "missing (listed in the manifest); rebuild the shards with "
                                               "build-shards") from None
            except OSError as exc:
                raise BadInputError(url, None, f"unreadable: {exc.strerror or exc}") from exc
            if found != size:
                raise BadInputError(url, None, f"{found} bytes, the manifest says {size} (truncated or modified); "
                                               "rebuild the shards with build-shards (or pass --no-verify to "
                                               "train on them anyway)")
            n += 1
    log.info("checked the manifests' entries%s in %.3fs; each shard's sha256 is checked while it is streamed",
             f" and the sizes of {n} shard files" if n else "", time.perf_counter() - t0)


def sentence_model_of(manifest: dict) -> str | None:
    """The sentence model a shard manifest records for its ``sent.npy`` embeddings (None when unrecorded)."""
    tm = manifest.get("text_model")
    return str(tm["name"]) if isinstance(tm, dict) and tm.get("name") else None


def verify_shards(shards: Path | RemoteShards, manifests: dict[str, dict], dinfo: DistInfo
                  ) -> dict[str, dict[str, dict]]:
    """Check every train/val shard file against its manifest's sha256 and size before training (one streamed
    read per file; a remote set's tars are each downloaded once more for this, see docs/scaling.md, "Shards from
    URLs"). Rank 0 reads; in DDP the outcome is broadcast so every rank stops on a mismatch. Returns
    ``{split: {name: {"sha256", "bytes", "match"}}}`` for run.json; raises BadInputError / SetupError (exit 2)
    naming the first file that differs."""
    result: Any = None
    error: str | None = None
    if dinfo.is_main:
        t0 = time.perf_counter()
        if is_remote(shards):
            log.info("verifying the remote shards %s: every train/val tar is read once over the network before "
                     "training (--no-verify skips it)", shards)
        try:
            result = _verify_files(shards, manifests)
        except BadInputError as exc:
            if not dinfo.enabled:
                raise
            error = str(exc)
        else:
            n = sum(len(v) for v in result.values())
            nbytes = sum(r["bytes"] for v in result.values() for r in v.values())
            log.info("verified %d shard files (%.1f MB) against their manifests' sha256 in %.1fs", n, nbytes / 1e6,
                     time.perf_counter() - t0)
    if dinfo.enabled:
        import torch.distributed as dist

        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        raise SetupError(error)
    return result


def train_loader(shards: Path | RemoteShards, cfg, tc: TrainConfig, epoch: int, steps: int, dinfo: DistInfo,
                 shuffle_buffer: int | None = None, verify: bool = False):
    """The training loader of one epoch: shard order, shuffle buffer and augmentation seeded by (seed, epoch,
    rank, worker) inside the loader; ``steps`` batches on every rank; shards split by rank. An elastic run
    (``global_batch_size`` set) reads the loader streams of training/elastic.py instead. ``verify``: each shard's
    sha256 is computed while it is streamed (a mismatch raises ShardChecksumError, exit 2)."""
    from lavimo.dataset.shards.stream import make_loader

    if tc.global_batch_size:
        from lavimo.training.elastic import elastic_train_loader

        return elastic_train_loader(shards, cfg, tc, epoch, steps, dinfo, shuffle_buffer, verify)
    kw = {} if shuffle_buffer is None else {"shuffle_buffer": shuffle_buffer}
    loader = make_loader(shards, "train", batch_size=tc.batch_size, train=True,
                         num_workers=tc.num_workers, seed=tc.seed, epoch_batches=steps,
                         rank=dinfo.rank, world_size=dinfo.world_size, augment=tc.augment_kwargs(),
                         verify=verify, **cfg.loader_kwargs(), **kw)
    loader.set_epoch(epoch)
    return loader


def val_loader(shards: Path | RemoteShards, cfg, tc: TrainConfig, dinfo: DistInfo, verify: bool = False):
    """Every val sample exactly once, split by rank (each rank encodes its shards; see Trainer.validate);
    ``verify`` as in :func:`train_loader` (every val shard is read to its end, so each is checked)."""
    from lavimo.dataset.shards.stream import make_loader

    return make_loader(shards, "val", batch_size=tc.batch_size, train=False, num_workers=tc.num_workers,
                       seed=tc.seed, rank=dinfo.rank, world_size=dinfo.world_size, verify=verify,
                       **cfg.loader_kwargs())


def steps_per_epoch(shards: Path | RemoteShards, manifests: dict[str, dict], tc: TrainConfig, dinfo: DistInfo) -> int:
    """Batches per epoch on every rank: the config's ``epoch_batches``, else the train split over the global
    batch; fewer than one batch is a BadInputError naming the manifest."""
    n_train = int(manifests["train"]["num_samples"])
    steps = tc.epoch_batches or n_train // (tc.batch_size * dinfo.world_size)
    if steps < 1:
        raise BadInputError(shards / "train.json", "num_samples",
                            f"{n_train} training samples are fewer than one batch of {tc.batch_size} per rank "
                            f"x {dinfo.world_size} rank(s); lower --batch-size")
    return steps


def check_sentence_model(manifest: dict, cfg) -> str | None:
    """The shards' sentence model (:func:`sentence_model_of`); a warning when negative filtering's threshold is
    defined on another model's scores."""
    shard_model = sentence_model_of(manifest)
    if cfg.negative_filtering != "none" and not same_sentence_model(shard_model, cfg.sentence_model):
        log.warning("the shards' sentence embeddings come from %s, but the threshold %.2f of %s negative filtering "
                    "is defined on %s scores (the config's sentence_model): the filtering is not the paper's; "
                    "rebuild the shards with build-shards --text-model DIR of that model, or set sentence_model",
                    shard_model or "an unrecorded model", cfg.threshold, cfg.negative_filtering, cfg.sentence_model)
    return shard_model

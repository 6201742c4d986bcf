"""``train.py``'s command line: its flags (:func:`parse_args`; flags override the preset, ``--set`` any field),
what they set (:func:`config_overrides` for the config, :func:`runtime_options` for the loop) and how the
command reports: one ``train.py: error: ...`` line, exit status 1 (no progress possible: the skip counts by
reason) or 2 (usage and set-up errors); docs/training.md, "Reliability". The run itself is ``train.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from lavimo.core.errors import SetupError, os_error_text, print_error
from lavimo.training.trainer import Options

# exit statuses (docs/training.md, "Reliability"; 75 is training/preemption.py's EXIT_PREEMPTED)
EXIT_NO_PROGRESS, EXIT_SETUP = 1, 2

#: ``--verify-shards``: checked while streamed (default), all read before training, not checked
VERIFY_MODES = ("stream", "full", "none")

#: the program name of train.py's error lines (``train.py: error: MESSAGE``, docs/design.md, "Errors")
PROG = "train.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train LAVIMO (text / video / motion retrieval) from shards.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", required=True,
                   help="shard set ({split}-NNNNNN.tar, {split}.json, stats.npz): a directory, an http(s) base URL "
                        "(http://host/shards: files at http://host/shards/NAME) or 'pipe:CMD' with {} for the "
                        "file name (e.g. 'pipe:aws s3 cp s3://bucket/shards/{} -'); see docs/scaling.md")
    p.add_argument("--preset", default="paper", help="paper | demo | tiny | path/to/config.json")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset name>)")
    p.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"], default=None,
                   help="continue the run in --out from its last checkpoint; '--resume auto': resume when --out holds "
                        "a checkpoint, else start fresh (one command line for the first launch and every requeue)")
    g = p.add_argument_group("preset overrides (default: the preset's value)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per-rank batch size")
    g.add_argument("--global-batch-size", type=int,
                   help="the global batch (all ranks together), kept when a resume changes the rank count: the "
                        "per-rank batch is it / ranks and the sample order does not depend on the ranks "
                        "(docs/training.md, 'Elastic resume')")
    g.add_argument("--lr", type=float)
    g.add_argument("--workers", type=int, help="loader worker processes per rank (config num_workers)")
    g.add_argument("--seed", type=int)
    g.add_argument("--modalities", choices=["tmv", "tm"])
    g.add_argument("--negative-filtering", choices=["lavimo", "tmr", "soft", "none"])
    g.add_argument("--threshold", type=float, help="negative-filtering epsilon on (cos+1)/2")
    g.add_argument("--recon-weight", type=float, help="lambda_recon (0 drops the decoder)")
    g.add_argument("--no-fusion", action="store_true", help="reconstruct from the motion latent alone")
    g.add_argument("--freeze-text", action="store_true", help="no gradient into the text backbone")
    g.add_argument("--random-init", action="store_true",
                   help="random backbones instead of the pretrained DistilBERT / CLIP weights (no files needed)")
    g.add_argument("--hflip-p", type=float,
                   help="probability of a horizontal flip per training clip (never for captions naming a side)")
    g.add_argument("--no-gather-negatives", action="store_true",
                   help="DDP: contrastive losses over each rank's own batch instead of the global batch "
                        "(config gather_negatives; see docs/scaling.md)")
    g.add_argument("--randaugment", type=int, metavar="N",
                   help="torchvision RandAugment operations per training clip (0 = off)")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other config field, e.g. --set temperature=0.07 (repeatable)")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto = bf16 autocast on CUDA when the preset's amp is true (paper), else fp32")
    r.add_argument("--compile", action="store_true", help="torch.compile the training step")
    r.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (0 = torch's default; torchrun sets OMP_NUM_THREADS=1)")
    r.add_argument("--val-every", type=int, default=0,
                   help="validate every N steps (0 = at the end of every eval_every-th epoch and the last)")
    r.add_argument("--save-every", type=int, default=0,
                   help="also save last checkpoint + state every N steps (0 = at epoch ends only)")
    r.add_argument("--max-steps", type=int, default=0,
                   help="stop (after saving) once the global step reaches N; the schedule still follows --epochs")
    r.add_argument("--max-nan-steps", type=int, default=20,
                   help="stop when this many consecutive steps have a non-finite loss/gradient (0 = never)")
    r.add_argument("--max-skip-fraction", type=float, default=0.5,
                   help="stop (exit 1) when the loader skips more than this fraction of an epoch's samples "
                        "(steps/epoch x batch size) within one epoch; inf = never")
    r.add_argument("--verify-shards", choices=VERIFY_MODES, default=None,
                   help="how the shard files are checked against their manifests' sha256: stream (default: "
                        "while training reads them, a mismatch stops the run with exit 2; up front only sizes), "
                        "full (every train/val tar read once before training, by rank 0), none")
    r.add_argument("--no-verify", action="store_true",
                   help="do not check the shard files against their manifests' sha256 (= --verify-shards none)")
    r.add_argument("--shuffle-buffer", type=int, default=None,
                   help="samples in the loader's shuffle buffer per worker (default: the loader's; 1 = shard "
                        "order only)")
    r.add_argument("--log-keyids", action="store_true",
                   help="debug: write the keyids of every training batch to RUN/debug/keyids-rank{R}.tsv")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    r.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def verify_mode(args: argparse.Namespace) -> str:
    """``--verify-shards`` (default ``stream``; ``--no-verify`` = ``none``); SetupError when the two disagree."""
    if args.no_verify:
        if args.verify_shards not in (None, "none"):
            raise SetupError(f"--no-verify contradicts --verify-shards {args.verify_shards}; give one of them")
        return "none"
    return args.verify_shards or "stream"


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the flags set (only those given on the command line)."""
    o: dict[str, Any] = {}
    for flag, field in (("epochs", "epochs"), ("batch_size", "batch_size"), ("global_batch_size", "global_batch_size"), ("lr", "lr"),
                        ("workers", "num_workers"), ("seed", "seed"), ("modalities", "modalities"),
                        ("negative_filtering", "negative_filtering"), ("threshold", "threshold"),
                        ("recon_weight", "recon_weight"), ("hflip_p", "hflip_p"),
                        ("randaugment", "randaugment_ops")):
        if getattr(args, flag) is not None:
            o[field] = getattr(args, flag)
    if args.no_fusion:
        o["fusion"] = False
    if args.freeze_text:
        o["freeze_text"] = True
    if args.random_init:
        o["random_init"] = True
    if args.no_gather_negatives:
        o["gather_negatives"] = False
    for item in args.set:
        if "=" not in item:
            raise SetupError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        o[k.strip().replace("-", "_")] = v
    return o


def runtime_options(args: argparse.Namespace) -> Options:
    """The loop's settings from the runtime flags."""
    return Options(val_every=args.val_every, save_every=args.save_every, max_steps=args.max_steps,
                   max_nan_steps=args.max_nan_steps, max_skip_fraction=args.max_skip_fraction,
                   shuffle_buffer=args.shuffle_buffer, log_keyids=args.log_keyids, progress=not args.no_progress,
                   compile=args.compile, verify_stream=verify_mode(args) == "stream")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(message: object, code: int) -> int:
    """Print ``train.py: error: message`` as one line on stderr; return the exit status ``code``."""
    return print_error(PROG, message, code)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the file, what happened, what to do (MissingWeightsError's message says what to
    put where)."""
    return os_error_text(exc, disk_full_hint="; free disk space (or choose another --out), then rerun (with "
                                             "--resume if RUN/checkpoints/last.state.safetensors exists)")


def main(argv: list[str] | None = None) -> int:
    """``python -m lavimo.training.cli`` is not the command: ``--help`` shows train.py's flags (this module's; an
    install whose ``lavimo-train`` still points here keeps answering it), anything else is one line pointing to
    ``python -m lavimo.train``, exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        parse_args(["--help"])  # prints the usage, exits 0
    return print_error("python -m lavimo.training.cli", "this module only parses train.py's flags; train with "
                       "python -m lavimo.train (or train.py, lavimo-train)", EXIT_SETUP)


if __name__ == "__main__":
    sys.exit(main())

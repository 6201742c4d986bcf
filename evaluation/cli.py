"""``evaluate.py``'s command: evaluate LAVIMO retrieval with TMR's protocols, or score any method from a saved
similarity matrix (the top-level ``evaluate.py`` only calls :func:`main`).

    python evaluate.py --run runs/NAME --shards SHARDS --split test --protocol everything \\
        --gallery --tsne
    python evaluate.py --run runs/NAME --shards SHARDS --protocol dissimilar         # the nsim_test split
    python evaluate.py --run runs/NAME --shards SHARDS --protocol dissimilar --build-dissimilar 100
    python evaluate.py --from-sims sims.npz [--threshold 0.8] [--out metrics.json]

The model path encodes the split once (:func:`lavimo.evaluation.encode.encode_split`: batched, no gradients, GPU when
present, tqdm) and computes every asked protocol x task from the same similarity matrices. Outputs (in ``--out``, default
``RUN/eval/<split>``): ``metrics.json``, ``metrics.md``, ``eval_info.json`` (what was evaluated, fusion weights),
and on request ``sims.npz``, ``gallery.html`` (+ ``gallery_media/``), ``tsne.png``, ``dissimilar_<split>.txt``.
See the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lavimo.core.atomic import atomic_path, write_json, write_text
from lavimo.core.device import resolve_device
from lavimo.core.errors import BadInputError, SetupError, print_error
from lavimo.core.keyids import check_keyid, child_path
from lavimo.core.restricted_unpickle import open_npz, read_npz_member
from lavimo.dataset.shards.format import manifest_path, read_manifest
from lavimo.dataset.shards.source import is_remote, shard_location
from lavimo.dataset.shards.stream import NoUsableSamplesError, make_loader
from lavimo.dataset.subsets import NSIM_SPLIT
from lavimo.dataset.text_embed import SentenceEmbedder, same_sentence_model
from lavimo.evaluation import metrics as M
from lavimo.evaluation import protocols as P
from lavimo.evaluation import report as R
from lavimo.evaluation.encode import EVAL_MIN_SEGMENT_ROWS, encode_split
from lavimo.model import load_checkpoint

PROG = "evaluate.py"
log = logging.getLogger("evaluate")

GALLERY_QUERIES = 6
TSNE_SAMPLES = 30


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="TMR retrieval protocols for LAVIMO (text / video / motion), or metrics of a saved matrix.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("what to evaluate (either --run + --shards, or --from-sims)")
    src.add_argument("--run", help="run directory written by train.py (config.json, checkpoints/)")
    src.add_argument("--checkpoint", help="weights file (default RUN/checkpoints/best.safetensors, else last)")
    src.add_argument("--shards", help="shard set ({split}-NNNNNN.tar, {split}.json, stats.npz): a directory, an "
                                      "http(s) base URL (files at URL/NAME) or 'pipe:CMD' with {} for the file "
                                      "name (e.g. 'pipe:aws s3 cp s3://bucket/shards/{} -'); see docs/scaling.md")
    src.add_argument("--split", default="test", help="split to evaluate")
    src.add_argument("--from-sims", metavar="FILE.npz",
                     help="score a saved matrix: 'sims' (N,N; rows = text queries, columns = motions; ground "
                          "truth on the diagonal) and optional 'text_emb' (N,D) L2-normalised")
    pr = p.add_argument_group("protocols")
    pr.add_argument("--protocol", nargs="+", default=["everything"], choices=P.PROTOCOL_CHOICES,
                    help="one or more of all, threshold, dissimilar, small-batches, or everything")
    pr.add_argument("--tasks", nargs="+", default=["all"],
                    help="tasks among t2m m2t v2m m2v t2v v2t (space or comma separated; 'all' = the six)")
    pr.add_argument("--threshold", type=float, default=P.DEFAULT_THRESHOLD,
                    help="threshold protocol: a gallery item whose text has score (cos+1)/2 > this counts as correct")
    pr.add_argument("--subset", metavar="FILE", help="dissimilar protocol: file of ids, one per line "
                                                      "(default: the shard set's own nsim_test split)")
    pr.add_argument("--build-dissimilar", type=int, metavar="K",
                    help="dissimilar protocol: pick K mutually dissimilar texts of the split (saved to "
                         "OUT/dissimilar_<split>.txt) instead of --subset")
    pr.add_argument("--dissimilar-max-score", type=float, default=None,
                    help="with --build-dissimilar: stop before a pick whose text score (cos+1)/2 to an earlier "
                         "pick exceeds this (default: no limit, always K picks when the split has them)")
    pr.add_argument("--text-choice", choices=["first", "all"], default="first",
                    help="texts per sample: 'first' caption (as TMR) or 'all' (every caption is its own query)")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", help="output directory (model path; default RUN/eval/<split>) or metrics.json "
                                   "path (--from-sims; default metrics.json next to the .npz)")
    out.add_argument("--save-sims", action="store_true",
                     help="write sims.npz (t2m matrix + text_emb + keyids, sorted by keyid) for --from-sims")
    out.add_argument("--gallery", action="store_true", help="write gallery.html with top-5 retrievals")
    out.add_argument("--gallery-queries", type=int, default=GALLERY_QUERIES, help="queries per gallery task")
    out.add_argument("--videos", metavar="DIR",
                     help="rendered clips DIR/<keyid>.mp4 for the gallery (default: clips taken from the shards)")
    out.add_argument("--tsne", action="store_true", help=f"write tsne.png for {TSNE_SAMPLES} samples")
    rt = p.add_argument_group("runtime")
    rt.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    rt.add_argument("--workers", type=int, default=0, help="loader worker processes")
    rt.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    rt.add_argument("--text-model", help="sentence model directory for --text-choice all with the threshold "
                                         "protocol (default: the bundled all-MiniLM-L6-v2)")
    rt.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    rt.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.from_sims and (args.run or args.shards):
            raise SetupError("--from-sims cannot be combined with --run/--shards")
        if not args.from_sims and (not args.run or not args.shards):
            raise SetupError("give --run RUN and --shards SHARDS (or --from-sims FILE.npz)")
        if args.from_sims:
            from_sims(args.from_sims, threshold=args.threshold, out=args.out)
        else:
            evaluate_run(args)
    except (SetupError, ValueError, OSError) as exc:  # BadInputError is a ValueError; missing files, disk full
        return print_error(PROG, exc)
    except NoUsableSamplesError as exc:  # every sample of the split was refused
        return print_error(PROG, exc, 1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------------
# --from-sims
# ----------------------------------------------------------------------------------------------------------
#: largest member of a ``--from-sims`` file read (bytes): 4 GiB, a float32 (32768, 32768) matrix
_MAX_SIMS_MEMBER_BYTES = 1 << 32


def load_sims_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Read and validate ``sims`` (N, N), optional ``text_emb`` (N, D) and optional ``keyids`` (N,) strings
    (row ``i`` = sample ``keyids[i]``) from an .npz file (never unpickled: object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, None, "file not found")
    try:  # the checked .npy reader: never unpickled, each header checked against the bytes present first
        with open_npz(path) as zf:
            data = {i.filename[:-4]: read_npz_member(zf, path, i.filename[:-4], max_bytes=_MAX_SIMS_MEMBER_BYTES)
                    for i in zf.infolist() if i.filename.endswith(".npy")}
    except BadInputError as exc:
        if exc.field != "archive":
            raise
        raise BadInputError(path, None, f"not a readable .npz archive of plain arrays ({exc.message})") from exc
    if "sims" not in data:
        raise BadInputError(path, "sims", f"missing (members: {', '.join(sorted(data)) or 'none'})")
    sims = M.check_sims(data["sims"], path=str(path))
    emb = data.get("text_emb")
    if emb is not None:
        emb = M.check_text_emb(emb, sims.shape[0], path=str(path))
    keyids = None
    if "keyids" in data:
        k = data["keyids"]
        if k.dtype.kind not in "US" or k.shape != (sims.shape[0],):
            raise BadInputError(path, "keyids", f"expected {sims.shape[0]} strings, got {k.dtype} {k.shape}")
        keyids = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in k.tolist()]
        if len(set(keyids)) != len(keyids):
            raise BadInputError(path, "keyids", "duplicate keyids")
    return sims, emb, keyids


def from_sims(path: str | os.PathLike, threshold: float = P.DEFAULT_THRESHOLD,
              out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of a saved matrix (all, threshold when text_emb is present, small-batches).

    Small batches follow TMR: rows sorted by the file's ``keyids`` before the seeded shuffle; a file without
    ``keyids`` is batched in row order (and says so). Writes ``out`` (default ``metrics.json`` next to the file)
    and ``metrics.md`` beside it; returns the results.
    """
    path = Path(path)
    sims, emb, keyids = load_sims_file(path)
    if keyids is None:
        log.warning("%s has no 'keyids': small batches are formed in file row order (TMR sorts by keyid first; "
                    "add a 'keyids' member to match it)", path)
    results, skipped = P.sims_protocols(sims, emb, threshold, keyids=keyids)
    out_path = Path(out) if out else path.with_name("metrics.json")
    if out_path.suffix.lower() != ".json":
        out_path = out_path / "metrics.json"
    _write_metrics_json(out_path, results)
    md = R.metrics_markdown(results, info={"from_sims": str(path)}, skipped=skipped)
    write_text(out_path.with_suffix(".md"), md)
    for proto, why in skipped.items():
        log.warning("%s not computed: %s", proto, why)
    _print_summary(results, out_path)
    return results


def _write_metrics_json(path: Path, results: dict[str, Any]) -> None:
    """metrics.json in protocol order (all, threshold, dissimilar, small-batches) and task order, unrounded."""
    write_text(path, json.dumps(results, indent=2) + "\n")


def _print_summary(results: dict[str, Any], out_path: Path) -> None:
    for proto, res in results.items():
        tasks = [t for t in P.TASKS if t in res]
        cells = ", ".join(f"{t} R@1 {res[t]['R@1']:.2f} R@10 {res[t]['R@10']:.2f} MedR {res[t]['MedR']:.1f}"
                          for t in tasks)
        print(f"{proto:>13} (n={res['n']}): {cells}")
    print(f"wrote {out_path} and {out_path.with_suffix('.md').name}")


# ----------------------------------------------------------------------------------------------------------
# model path
# ----------------------------------------------------------------------------------------------------------
def resolve_checkpoint(run: str | os.PathLike, checkpoint: str | os.PathLike | None) -> Path:
    """``--checkpoint`` if given, else RUN/checkpoints/best.safetensors, else last.safetensors."""
    if checkpoint:
        ck = Path(checkpoint)
        if not ck.is_file():
            raise FileNotFoundError(f"checkpoint {ck} not found")
        return ck
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found")
    for name in ("best.safetensors", "last.safetensors"):
        ck = run / "checkpoints" / name
        if ck.is_file():
            return ck
    raise FileNotFoundError(f"no checkpoints/best.safetensors or checkpoints/last.safetensors in {run}; "
                            "pass --checkpoint FILE")


def _has_video(model: Any) -> bool:
    """Whether the model encodes video (``modalities == "tmv"``)."""
    return getattr(model, "video", None) is not None and hasattr(model, "encode_video")


def load_model(checkpoint: Path, device: Any):
    """``model.load_checkpoint`` onto ``device`` in eval mode."""
    return load_checkpoint(checkpoint, device=device)  # moved to device and in eval mode by load_checkpoint


def evaluate_run(args: argparse.Namespace) -> dict[str, Any]:
    """The model path of the CLI: encode the split, run the protocols, write every output."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    shard_location(args.shards)  # a directory, an http(s) base URL or a pipe: command; BadInputError otherwise
    protocols = P.expand_protocols(args.protocol)
    tasks = P.parse_tasks(args.tasks)
    run = Path(args.run)
    out_dir = Path(args.out) if args.out else run / "eval" / args.split
    protocols, subset_ids, nsim_split = _dissimilar_plan(args, protocols)
    main_protocols = [p for p in protocols if not (p == "dissimilar" and nsim_split)]
    need_main = bool(main_protocols) or args.gallery or args.tsne or args.save_sims
    enc = _Encoder.load(args, run, tasks, protocols)
    tasks = enc.tasks
    nsim_results: dict[str, Any] = {}
    if nsim_split:
        nsim, _, nsim_fusion = enc.encode(nsim_split)
        nsim_results = P.run_protocols(nsim, ["all"], tasks)["all"]
        nsim_results["split"] = nsim_split
    if not need_main:  # only the dissimilar protocol, on its own split
        results = {"dissimilar": nsim_results}
        info = {"run": str(run), "checkpoint": str(enc.checkpoint), "shards": str(args.shards), "split": nsim_split,
                "n": nsim.n, "texts": nsim.num_texts, "text_choice": args.text_choice, "tasks": tasks,
                "protocols": ["dissimilar"], "subset": f"{nsim_split} split", "fusion_weights": nsim_fusion,
                "device": str(enc.device), **_text_model_info(args.shards, nsim_split)}
        _write_metrics(out_dir, results, info, nsim_fusion, {}, enc.cfg)
        _print_summary(results, out_dir / "metrics.json")
        return results
    split, captions_of, fusion = enc.encode(args.split)
    if args.text_choice == "all":
        log.info("--text-choice all: every caption is its own query (%d text queries for %d samples)",
                 split.num_texts, split.n)
    subset_path, dissimilar_info = args.subset, None
    if "dissimilar" in protocols and args.build_dissimilar:
        subset_ids, subset_path, dissimilar_info = _build_dissimilar(args, split, enc.embedder, out_dir)
    if "threshold" in protocols and split.sent_emb is None:
        raise ValueError("the threshold protocol needs sentence embeddings (the loader's sent_emb)")
    skipped: dict[str, str] = {}
    if "small-batches" in protocols and split.n < M.SMALL_BATCH_SIZE:
        skipped["small-batches"] = f"needs at least {M.SMALL_BATCH_SIZE} samples, the split has {split.n}"
        protocols = [p for p in protocols if p != "small-batches"]
    for proto, why in skipped.items():
        log.warning("%s not computed: %s", proto, why)
    main_protocols = [p for p in main_protocols if p in protocols]  # minus the skipped ones
    results = P.run_protocols(split, main_protocols, tasks, threshold=args.threshold, subset_ids=subset_ids,
                              subset_path=subset_path, split_name=args.split)
    if nsim_split:
        results = {p: (nsim_results if p == "dissimilar" else results[p]) for p in protocols}
        subset_path = f"{nsim_split} split"
    info = {
        "run": str(run), "checkpoint": str(enc.checkpoint), "shards": str(args.shards), "split": args.split,
        "n": split.n, "texts": split.num_texts, "text_choice": args.text_choice, "tasks": tasks,
        "protocols": list(results), "threshold": args.threshold if "threshold" in results else None,
        "subset": str(subset_path) if "dissimilar" in results else None, "dissimilar": dissimilar_info,
        "fusion_weights": fusion, "skipped": skipped, "device": str(enc.device),
        **_text_model_info(args.shards, args.split),
    }
    _write_metrics(out_dir, results, info, fusion, skipped, enc.cfg)
    if args.save_sims:
        save_sims(out_dir / "sims.npz", split)
    if args.gallery:
        write_gallery(out_dir, split, captions_of, tasks, args)
    if args.tsne:
        write_tsne(out_dir / "tsne.png", split)
    _print_summary(results, out_dir / "metrics.json")
    if args.text_choice == "all":
        print(f"--text-choice all: every caption is its own text query ({split.num_texts} texts for {split.n} "
              "samples); numbers are not comparable with one-text-per-sample (TMR) results")
    if fusion:
        print("mean fusion weights: " + ", ".join(f"{k} {v:.3f}" for k, v in fusion.items()))
    return results


def _dissimilar_plan(args: argparse.Namespace, protocols: list[str]
                     ) -> tuple[list[str], list[str] | None, str | None]:
    """(protocols, the ``--subset`` ids or None, the shard set's own split for the dissimilar protocol or None):
    without ``--subset`` or ``--build-dissimilar`` the dissimilar protocol runs on the shard set's
    :data:`NSIM_SPLIT` split, as TMR evaluates it, and is skipped (asked by ``everything``) or refused (asked by
    name) when there is none."""
    if args.subset and args.build_dissimilar:
        raise SetupError("give either --subset or --build-dissimilar, not both")
    if (args.subset or args.build_dissimilar) and "dissimilar" not in protocols:
        log.warning("--subset/--build-dissimilar ignored: the dissimilar protocol was not asked for")
    subset_ids = P.read_subset(args.subset) if args.subset else None
    if "dissimilar" not in protocols or subset_ids is not None or args.build_dissimilar:
        return protocols, subset_ids, None
    if has_split(args.shards, NSIM_SPLIT):
        return protocols, subset_ids, NSIM_SPLIT
    if "everything" not in args.protocol:
        raise SetupError(f"--protocol dissimilar: {args.shards} has no {NSIM_SPLIT} split (build-shards writes "
                         f"one for HumanML3D, KIT-ML and the synthetic corpus, or when the annotations' splits/ "
                         f"hold {NSIM_SPLIT}.txt); give --subset FILE or --build-dissimilar K")
    log.warning("dissimilar protocol skipped: no %s split in %s, no --subset FILE or --build-dissimilar K",
                NSIM_SPLIT, args.shards)
    return [p for p in protocols if p != "dissimilar"], subset_ids, None


@dataclass
class _Encoder:
    """A run's model, loaded for the CLI, and the loader settings it encodes a split with."""

    args: argparse.Namespace
    model: Any
    device: Any
    checkpoint: Path
    tasks: list[str]
    embedder: Any = None
    loader_kw: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> Any:
        return getattr(self.model, "cfg", None)

    @classmethod
    def load(cls, args: argparse.Namespace, run: Path, tasks: list[str], protocols: list[str]) -> "_Encoder":
        """The checkpoint on the device; the video tasks dropped (warned) for a model without video; the sentence
        embedder that ``--text-choice all`` with the threshold protocol needs."""
        device = resolve_device(args.device)
        checkpoint = resolve_checkpoint(run, args.checkpoint)
        log.info("loading %s on %s", checkpoint, device)
        model = load_model(checkpoint, device)
        if not _has_video(model):
            dropped = [t for t in tasks if "v" in t]
            tasks = [t for t in tasks if "v" not in t]
            if dropped:
                log.warning("the model has no video encoder: tasks %s skipped", ", ".join(dropped))
            if not tasks:
                raise SetupError("no task left to evaluate (the model has no video encoder)")
        enc = cls(args, model, device, checkpoint, tasks)
        enc.loader_kw = enc.cfg.loader_kwargs() if enc.cfg is not None else {}
        if args.text_choice == "all" and "threshold" in protocols:
            enc.embedder = SentenceEmbedder(args.text_model, device=str(device) if device.type == "cuda" else "cpu")
        return enc

    def encode(self, split_name: str):
        """:func:`encode_split` of ``split_name`` -> (EncodedSplit, captions per keyid, mean fusion weights)."""
        args = self.args
        loader = make_loader(args.shards, split_name, batch_size=args.batch_size, train=False,
                             num_workers=args.workers, min_segment_len=EVAL_MIN_SEGMENT_ROWS, **self.loader_kw)
        t0 = time.perf_counter()
        enc = encode_split(self.model, loader, self.device, args.text_choice, _has_video(self.model),
                           progress=not args.no_progress, embedder=self.embedder)
        log.info("encoded %d samples (%d texts) of %s in %.1fs", enc[0].n, enc[0].num_texts, split_name,
                 time.perf_counter() - t0)
        return enc


def _build_dissimilar(args: argparse.Namespace, split: P.EncodedSplit, embedder: Any, out_dir: Path
                      ) -> tuple[list[str], Path, dict[str, Any]]:
    """``--build-dissimilar K``: pick K mutually dissimilar texts of the split, written to
    ``OUT/dissimilar_<split>.txt`` (+ ``.json``) -> (ids, that file, its record)."""
    first_emb = _first_caption_emb(split, embedder)
    built = P.build_dissimilar_subset(split.keyids, first_emb, args.build_dissimilar, args.dissimilar_max_score)
    subset_path = out_dir / f"dissimilar_{args.split}.txt"
    write_text(subset_path, "".join(f"{k}\n" for k in sorted(built.ids)))
    dissimilar_info = built.to_dict()
    write_json(subset_path.with_suffix(".json"), dissimilar_info)
    print(f"dissimilar subset: picked {len(built.ids)} of {built.requested} requested from {built.candidates} "
          f"samples (max pairwise text score {built.max_pair_score:.3f}) -> {subset_path}")
    if built.max_pair_score > args.threshold:
        log.warning("the built subset holds texts with score %.3f > %.2f (near duplicates); "
                    "--dissimilar-max-score %.2f stops before them", built.max_pair_score, args.threshold,
                    args.threshold)
    return built.ids, subset_path, dissimilar_info


def _write_metrics(out_dir: Path, results: dict[str, Any], info: dict[str, Any], fusion: Any,
                   skipped: dict[str, str], cfg: Any) -> None:
    """metrics.json, eval_info.json and metrics.md in ``out_dir`` (the sentence model recorded in each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _record_sentence_model(results, info, cfg)
    _write_metrics_json(out_dir / "metrics.json", results)
    write_json(out_dir / "eval_info.json", _jsonable(info))
    write_text(out_dir / "metrics.md", R.metrics_markdown(results, info, fusion, skipped))


def _record_sentence_model(results: dict[str, Any], info: dict[str, Any], cfg: Any) -> None:
    """Put the sentence model of the evaluated embeddings into every protocol's metrics.json entry, and warn when
    the threshold protocol scores texts with another model than the one the run's config names (TMR's and the
    paper's threshold 0.8 is defined on all-mpnet-base-v2 scores)."""
    name = info.get("sentence_model")
    for res in results.values():
        res["sentence_model"] = name
    wanted = getattr(cfg, "sentence_model", None)
    if "threshold" in results and wanted and not same_sentence_model(name, wanted):
        log.warning("the threshold protocol scores texts with %s embeddings, but the run's config names %s: its "
                    "numbers are not comparable with results computed on %s scores (see the README, 'Reproducing "
                    "the paper')", name or "unrecorded", wanted, wanted)


def has_split(shards: str | os.PathLike, split: str) -> bool:
    """Whether the shard set holds ``split`` (its manifest ``{split}.json`` exists). For a remote set (an http(s)
    base URL or ``pipe:`` command, dataset/shards/source.py) the manifest is fetched: absent on an http 404 or a
    command that exits non-zero; a dead server or a timeout raises FetchError (an OSError naming the URL)."""
    if is_remote(shards):
        return shard_location(shards).exists(f"{split}.json")
    return manifest_path(shards, split).is_file()


def _text_model_info(shards: str | os.PathLike, split: str) -> dict[str, Any]:
    """The sentence model the split's embeddings came from, as its manifest records it (for metrics.json)."""
    try:
        text = read_manifest(shards, split).get("text_model") or {}
    except (OSError, ValueError):
        return {}
    return {"sentence_model": text.get("name")} if isinstance(text, dict) and text.get("name") else {}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _first_caption_emb(split: P.EncodedSplit, embedder: Any) -> np.ndarray:
    """One sentence embedding per sample (its first evaluated caption), for building the dissimilar subset."""
    if split.sent_emb is None:
        if embedder is None:
            embedder = SentenceEmbedder()
        firsts = [split.captions[int(np.flatnonzero(split.text_owner == i)[0])] for i in range(split.n)]
        return np.asarray(embedder.encode(firsts), dtype=np.float32)
    return split.sent_emb[split.first_rows]


def save_sims(path: Path, split: P.EncodedSplit) -> None:
    """``sims.npz`` for ``--from-sims``: the t2m matrix (first caption per sample), samples sorted by keyid.

    Members: ``sims`` (N, N) float32 rows = texts, columns = motions; ``text_emb`` (N, D) (when known);
    ``keyids`` (N,) str; ``v2m`` (N, N) video->motion when video latents exist.
    """
    order = M.sorted_order(split.keyids, split.n)
    first_rows = split.first_rows
    if first_rows.size != split.n:
        raise ValueError("cannot save sims: some samples have no text")
    sims_tm = split.pair_sims("t", "m")[np.ix_(first_rows[order], order)]
    members: dict[str, np.ndarray] = {"sims": sims_tm.astype(np.float32),
                                      "keyids": np.array([split.keyids[i] for i in order])}
    if split.sent_emb is not None:
        members["text_emb"] = split.sent_emb[first_rows[order]].astype(np.float32)
    if split.video is not None:
        members["v2m"] = split.pair_sims("v", "m")[np.ix_(order, order)].astype(np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **members)
    log.info("wrote %s", path)


# ----------------------------------------------------------------------------------------------------------
# gallery and t-SNE
# ----------------------------------------------------------------------------------------------------------
def _pick_queries(n: int, k: int) -> list[int]:
    """``k`` evenly spaced sample positions (deterministic)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def write_gallery(out_dir: Path, split: P.EncodedSplit, captions_of: dict[str, list[str]],
                  tasks: Sequence[str], args: argparse.Namespace) -> Path:
    """gallery.html: for text->motion and video->motion (and text->video), a few queries with their top-5."""
    gtasks = [t for t in ("t2m", "v2m", "t2v") if t in tasks]
    if not gtasks:
        gtasks = ["t2m"] if split.text is not None else []
    order = M.sorted_order(split.keyids, split.n)
    queries = [int(order[i]) for i in _pick_queries(split.n, args.gallery_queries)]
    first_rows = split.first_rows
    rows: list[R.GalleryRow] = []
    needed: set[str] = set()
    for task in gtasks:
        a, b = task.split("2")
        sims = split.pair_sims(a, b)
        for qi in queries:
            row = sims[first_rows[qi]] if a == "t" else sims[qi]
            top = np.argsort(-row, kind="stable")[:5]
            rank = float(M.gt_ranks(row[None, :], (np.arange(split.n) == qi)[None, :])[0])
            key = split.keyids[qi]
            items = [{"keyid": split.keyids[j], "text": (captions_of.get(split.keyids[j]) or [""])[0],
                      "score": float(row[j]), "gt": int(j) == qi} for j in top]
            needed.update(it["keyid"] for it in items)
            if a == "v":
                needed.add(key)
            rows.append(R.GalleryRow(task=task, query_keyid=key, query_kind="video" if a == "v" else "text",
                                     query_text=(captions_of.get(key) or [""])[0], query_video=key,
                                     gt_rank=rank, items=items))
    media = _gallery_media(out_dir, sorted(needed), args)
    for r in rows:
        r.query_video = media.get(r.query_video) if r.query_kind == "video" else None
        for it in r.items:
            it["video"] = media.get(it["keyid"])
    missing = sorted(k for k in needed if k not in media)
    note = f"{args.split} split of {args.shards}, checkpoint {resolve_checkpoint(args.run, args.checkpoint)}"
    if missing:
        note += f"; no video found for {len(missing)} clip(s)"
        log.warning("gallery: no video for %d clip(s): %s", len(missing), ", ".join(missing[:10]))
    path = out_dir / "gallery.html"
    write_text(path, R.gallery_html(rows, note=note))
    log.info("wrote %s (%d queries)", path, len(rows))
    return path


def _gallery_media(out_dir: Path, keyids: Sequence[str], args: argparse.Namespace) -> dict[str, str]:
    """keyid -> video src relative to out_dir: --videos DIR/<keyid>.mp4, else clips extracted from the shards."""
    media: dict[str, str] = {}
    if args.videos:
        vdir = Path(args.videos)
        for k in keyids:
            f = child_path(vdir, f"{check_keyid(k, args.shards)}.mp4")
            if f.is_file():
                media[k] = R.relative_src(f, out_dir)
    rest = [k for k in keyids if k not in media]
    if rest:
        written = R.extract_shard_clips(args.shards, args.split, rest, out_dir / "gallery_media")
        for k, f in written.items():
            media[k] = R.relative_src(f, out_dir)
    return media


def write_tsne(path: Path, split: P.EncodedSplit, samples: int = TSNE_SAMPLES) -> Path | None:
    """tsne.png of the text (first caption), video and motion latents of ``samples`` samples (sorted keyids)."""
    if split.video is None:
        log.warning("t-SNE skipped: the model has no video latents")
        return None
    order = M.sorted_order(split.keyids, split.n)
    pick = [int(order[i]) for i in _pick_queries(split.n, samples)]
    R.tsne_figure(path, split.text[split.first_rows[pick]], split.video[pick], split.motion[pick],
                  labels=[split.keyids[i] for i in pick])
    log.info("wrote %s", path)
    return path

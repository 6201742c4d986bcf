"""``lavimo-search``: build a motion index, query it by text / video / motion, render motion previews, serve the
search page.

    lavimo-search index --checkpoint RUN/checkpoints/best.safetensors --shards SHARDS --split test --out IDX
    lavimo-search index --checkpoint CKPT --features HumanML3D/ --out IDX          # new_joint_vecs/*.npy (+ texts/)
    lavimo-search query --index IDX --text "a person hops on the left leg" [--k 5] [--json]
    lavimo-search query --index IDX --video clip.mov [--start 2 --end 6.5] [--crop x,y,size]
    lavimo-search query --index IDX --motion motion.npy [--captions]              # motion->motion / motion->text
    lavimo-search query --index IDX --keyid 000123 [--against motion|text|video]  # more like an indexed motion
    lavimo-search query --server http://127.0.0.1:8000 --text "..."              # through a running page: no load
    lavimo-search batch --index IDX --queries queries.jsonl|.txt --out results.jsonl   # one load, many queries
    lavimo-search preview motion.npy --out motion.mp4                            # features or joints -> mp4
    lavimo-search verify IDX                                                      # sha256 + records + latents
    lavimo-search serve --index IDX [--host 127.0.0.1 --port 8000] [--allow-host NAME]

Every input is checked before the model loads (a missing file or an empty text fails at once).
``query``, ``batch`` and ``serve`` use the checkpoint recorded in the index (``--checkpoint`` to give it; it must be the
same file, by sha256). Checkpoints from before train.py recorded their preprocessing need ``--stats``.
Exit status: 0 done; 1 some items failed (index: samples skipped, listed; batch: queries that failed, each an
error line); 2 usage or set-up error (one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lavimo.core.errors import BadInputError, SetupError, os_error_text, print_error

from .batch import check_all, run_batch
from .client import remote_query
from .inputs import AGAINST, Query, check_query, parse_crop
from .query import run_query

# the rest of lavimo.search (torch, the model, the index, the renderer, the server) is imported by the commands that
# use it, after their inputs are checked: a missing file or an empty text fails in a fraction of a second, and
# `query --server` never imports torch


def open_index(index_dir: Path, checkpoint: Path | None, stats: Path | None, device: str = "cpu"):
    """:func:`lavimo.search.query.open_index`, imported when a command needs the model."""
    from .query import open_index as _open

    return _open(index_dir, checkpoint, stats, device)


def _split_list(value: str) -> list[str]:
    """``--split`` value: "test", "a,b" -> ["a", "b"] (spaces around names ignored; an empty name is an error)."""
    names = [v.strip() for v in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{value!r}: empty split name (give e.g. test or train,test)")
    return names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lavimo-search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def model_args(q: argparse.ArgumentParser, required: bool) -> None:
        q.add_argument("--checkpoint", required=required, type=Path, help="a .safetensors saved by train.py")
        q.add_argument("--stats", type=Path, help="stats.npz or shard set dir (checkpoints without preprocessing)")
        q.add_argument("--device", default="cpu")

    i = sub.add_parser("index", help="build or extend a motion index")
    model_args(i, True)
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", type=Path, help="a build-shards directory")
    src.add_argument("--features", type=Path, help="a folder of new_joint_vecs/*.npy (+ texts/*.txt)")
    i.add_argument("--split", action="extend", type=_split_list, metavar="SPLIT[,SPLIT...]",
                   help="shard split(s) to index: a comma list, repeatable, or 'all'; default test")
    i.add_argument("--videos", type=Path, help="rendered <keyid>.mp4 to use as previews")
    i.add_argument("--no-previews", action="store_true", help="do not write previews from the shards' videos")
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--batch-size", type=int, default=32)
    i.add_argument("--ann", choices=("auto", "exact", "ivfpq"), default="auto",
                   help="search: exact, ivfpq (approximate, its recall@10 measured and stored), or auto (ivfpq "
                        "from 200 000 latents in a set); docs/search.md")
    i.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes decoding shard samples (default min(4, CPUs))")
    i.add_argument("--skeleton-previews", action="store_true",
                   help="also render every motion's 256 px skeleton preview now (the page otherwise renders one on "
                        "its first view)")
    i.add_argument("--no-progress", action="store_true")

    q = sub.add_parser("query", help="top-k motions (or captions) for a text, video or motion")
    model_args(q, False)
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", type=Path)
    where.add_argument("--server", metavar="URL", help="ask a running 'lavimo-search serve' (its JSON API) instead "
                                                       "of loading the model here, e.g. http://127.0.0.1:8000")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--video", type=Path)
    what.add_argument("--motion", type=Path, help=".npy features (T, 263) / joints (T, 22, 3), or an AMASS .npz")
    what.add_argument("--keyid", help="an indexed motion: more like it (motion latents), its captions "
                                      "(--against text) or similar videos (--against video)")
    q.add_argument("--start", type=float, help="window start, seconds (video / AMASS)")
    q.add_argument("--end", type=float, help="window end, seconds (video / AMASS)")
    q.add_argument("--crop", help="video: square x,y,size in pixels (default: the centred square)")
    q.add_argument("--fps", type=float, help="AMASS motion: feature frame rate (default 20)")
    q.add_argument("--captions", action="store_true", help="motion -> text: the captions that fit the motion")
    q.add_argument("--against", choices=AGAINST, help="search motion latents (default), the stored video latents, "
                                                       "or captions (text)")
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    q.add_argument("--json", action="store_true")

    b = sub.add_parser("batch", help="many queries for one model load: a .txt (one text a line) or .jsonl file of "
                                     "queries -> one JSON line of results per query")
    model_args(b, False)
    b.add_argument("--index", type=Path, required=True)
    b.add_argument("--queries", type=Path, required=True, help="FILE.txt or FILE.jsonl (docs/search.md)")
    b.add_argument("--out", type=Path, required=True, help="RESULTS.jsonl (written atomically)")
    b.add_argument("--k", type=int, default=5, help="results per query (a line's own k wins)")

    v = sub.add_parser("preview", help="features or joints .npy -> skeleton mp4 rendered through the headless "
                                       "renderer (numpy stick figure without EGL)")
    v.add_argument("motion", type=Path)
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--fps", type=float, default=20.0)
    v.add_argument("--size", type=int, default=256)
    v.add_argument("--force", action="store_true", help="render again even when the cached preview matches")

    w = sub.add_parser("verify", help="check an index's files against the sha256 recorded at build, and every "
                                      "record and latent (exit 0 intact, 1 damaged, 2 not an index)")
    w.add_argument("index", type=Path)

    s = sub.add_parser("serve", help="the search page on http://HOST:PORT/")
    model_args(s, False)
    s.add_argument("--index", type=Path, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="answer requests whose Host header is NAME too (repeatable; default only the bound address "
                        "and localhost; also $LAVIMO_SEARCH_ALLOWED_HOSTS, a comma list)")
    return p


def _table(res: dict[str, Any]) -> str:
    rows = res["results"]
    if not rows:
        return "(no results)"
    if res["query"]["against"] == "text":
        lines = [f"{'rank':>4}  {'score':>7}  {'keyid':<10} caption"]
        lines += [f"{r.get('rank', n):>4}  {r['score']:7.3f}  {r['keyid']:<10} {r['caption']}"
                  for n, r in enumerate(rows, 1)]
        return "\n".join(lines)
    lines = [f"{'rank':>4}  {'score':>7}  {'keyid':<10} {'caption':<52} source | preview"]
    for n, r in enumerate(rows, 1):
        cap = (r["captions"][0] if r["captions"] else "-")[:52]
        lines.append(f"{r.get('rank', n):>4}  {r['score']:7.3f}  {r['keyid']:<10} {cap:<52} {_source(r)} | "
                     f"{r.get('preview') or r.get('preview_url') or '-'}")
    return "\n".join(lines)


def _source(hit: dict[str, Any]) -> str:
    if "source_text" in hit:  # an answer from a server
        return str(hit["source_text"])
    from .index import source_text

    return source_text(hit["source"])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except (BadInputError, FileNotFoundError, SetupError, ValueError) as exc:
        return print_error(f"lavimo-search {args.cmd}", exc)
    except OSError as exc:  # a full disk, an unwritable output: one line, no traceback
        return print_error(f"lavimo-search {args.cmd}", os_error_text(
            exc, getattr(args, "out", None) or getattr(args, "index", None),
            disk_full_hint=" (free some space and run it again; an existing index is left as it was)"))
    except KeyboardInterrupt:
        print("lavimo-search: interrupted", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    if args.cmd == "preview":
        from .preview import render_preview

        out = render_preview(args.motion, args.out, fps=args.fps, size=args.size, force=args.force)
        print(out)
        return 0
    if args.cmd == "index":
        if args.batch_size < 1:
            raise SetupError("--batch-size must be >= 1")
        splits = list(dict.fromkeys(args.split or ["test"]))  # in order, each once
        if "all" in splits and len(splits) > 1:
            raise SetupError("--split all already means every split; give it alone")
        from .index import build_index
        from .model import load

        if args.workers < 1:
            raise SetupError("--workers must be >= 1")
        r = load(args.checkpoint, stats=args.stats, device=args.device)
        idx, rep = build_index(r, args.out, shards=args.shards, folder=args.features,
                               splits=splits, videos=args.videos, previews=not args.no_previews,
                               batch_size=args.batch_size, progress=not args.no_progress, ann=args.ann,
                               workers=args.workers)
        print(f"index {args.out}: {len(idx)} motions; {rep.summary()}")
        if args.skeleton_previews:
            rep.failed += _skeleton_previews(idx, not args.no_progress)
        for f in rep.failed[:20]:
            print(f"  failed: {f}", file=sys.stderr)
        return 1 if rep.failed else 0
    if args.cmd == "verify":
        from .index import verify_index

        problems = verify_index(args.index)
        for line in problems:
            print(line, file=sys.stderr)
        print(f"verify {args.index}: " + (f"{len(problems)} problem(s)" if problems else "intact"))
        return 1 if problems else 0
    if args.cmd == "query":
        return _query(args)
    if args.cmd == "batch":
        return _batch(args)
    if args.cmd == "serve":
        r, idx = open_index(args.index, args.checkpoint, args.stats, args.device)
        from .server import serve

        serve(r, idx, host=args.host, port=args.port, allow_hosts=args.allow_host)
        return 0
    raise SetupError(f"unknown command {args.cmd}")


def _query_of(args: argparse.Namespace) -> Query:
    if args.captions and args.motion is None and args.keyid is None:
        raise SetupError("--captions goes with --motion or --keyid (motion -> text)")
    against = "text" if args.captions else args.against
    crop = parse_crop(args.crop)
    q = Query(text=args.text, video=args.video, motion=args.motion, row=0 if args.keyid is not None else None,
              k=args.k, offset=args.offset, against=against, start=args.start, end=args.end, crop=crop, fps=args.fps)
    check_query(q)  # the files too (--server uploads them); the row is resolved once the index is open
    if args.keyid is not None:
        q.row = None
    return q


def _skeleton_previews(idx: Any, progress: bool) -> list[str]:
    """Render every motion's skeleton preview (:func:`lavimo.search.preview.skeleton_preview`) from the index's own
    motion (:meth:`lavimo.search.motionfile.MotionReader.each`: the manifest read once, each shard read once); a
    line per motion that failed or is not held."""
    from tqdm import tqdm

    from .motionfile import MotionReader
    from .preview import skeleton_preview

    failed = []
    motions = MotionReader(idx).each(range(len(idx)))
    for i, motion in tqdm(motions, total=len(idx), desc="skeleton previews", unit="motion", disable=not progress):
        keyid = idx.keyid(i)
        try:
            if isinstance(motion, Exception):
                raise motion
            if motion is None:
                failed.append(f"{keyid}: skeleton preview: the index's database does not hold its motion")
                continue
            skeleton_preview(motion, idx.root, keyid)
        except (OSError, ValueError, RuntimeError) as exc:
            failed.append(f"{keyid}: skeleton preview: {' '.join(str(exc).split())[:200]}")
    return failed


def _query(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise SetupError("--k must be >= 1")
    q = _query_of(args)  # every input checked before the model loads
    if args.server is not None:
        res = remote_query(args.server, q, keyid=args.keyid)
    else:
        r, idx = open_index(args.index, args.checkpoint, args.stats, args.device)
        row = None
        if args.keyid is not None:
            row = idx.position(args.keyid)
            if row is None:
                raise SetupError(f"--keyid {args.keyid!r} is not in {args.index}")
        res = run_query(r, idx, text=q.text, video=q.video, motion=q.motion, row=row, k=q.k, offset=q.offset,
                        against=q.against, start=q.start, end=q.end, crop=q.crop, fps=q.fps)
    print(json.dumps(res, indent=2) if args.json else _table(res))
    return 0


def _batch(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise SetupError("--k must be >= 1")
    lines = check_all(args.queries, k=args.k)  # the whole file read and checked before the model loads
    r, idx = open_index(args.index, args.checkpoint, args.stats, args.device)
    done, failed = run_batch(r, idx, lines, args.queries.parent, args.out, k=args.k)
    print(f"batch {args.queries}: {done} answered, {failed} failed -> {args.out}")
    if failed:
        print(f"lavimo-search batch: {failed} of {done + failed} queries failed (lines with \"error\" in "
              f"{args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo's last stage (scripts/demo.sh ``search``): index the synthetic test split and run three queries.

    python -m lavimo.search.demo --demo DEMO

Builds ``DEMO/search/index`` from ``DEMO/run``'s best checkpoint and ``DEMO/shards`` (test split, previews from
``DEMO/videos``), picks the first test clip with a rendered video and runs: a text query (its first caption), a
video query (its rendered video re-encoded by ffmpeg as VP9/webm at 16:9, 1.5x the size, padded, 24 fps -
standing in for a user's file) and a motion query (its feature file). The three top-5 tables go to stdout and to
``DEMO/search/queries.txt``. Exit 0, or 2 with one line when the demo's run or shards are missing.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

from lavimo.core.errors import BadInputError
from lavimo.dataset.shards import format as shard_format, stream

from .cli import _table
from .index import build_index
from .model import load
from .query import run_query
from .video import ffmpeg_exe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lavimo.search.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True)
    p.add_argument("--k", type=int, default=5)
    args = p.parse_args(argv)
    try:
        text = run(args.demo, args.k)
    except (BadInputError, FileNotFoundError, ValueError) as exc:
        print(f"search demo: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def run(demo: Path, k: int = 5) -> str:
    ckpts = demo / "run" / "checkpoints"
    ckpt = next((c for c in (ckpts / "best.safetensors", ckpts / "last.safetensors") if c.is_file()), None)
    if ckpt is None:
        raise FileNotFoundError(f"{ckpts}: no checkpoint (run the train stage first)")
    shards = demo / "shards"
    try:
        r = load(ckpt)
    except BadInputError as exc:
        if "preprocess" not in str(exc):
            raise
        r = load(ckpt, stats=shards)  # a run trained before checkpoints carried their preprocessing
    out = demo / "search"
    index, report = build_index(r, out / "index", shards=shards, splits=["test"], videos=demo / "videos",
                                progress=False)
    pick = next((i for i in range(len(index)) if index.entry(i).captions and index.preview_path(i)
                 and Path(index.preview_path(i)).is_file()), None)
    if pick is None:
        raise FileNotFoundError(f"{demo / 'videos'}: no rendered video of a test clip")
    e = index.entry(pick)
    video = out / f"{e.keyid}-user.webm"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", index.preview_path(pick), "-vf",
                    "scale=trunc(ih*1.5/2)*2:trunc(ih*1.5/2)*2,pad=trunc(ih*16/9/2)*2:ih:(ow-iw)/2:0:gray,setsar=1",
                    "-r", "24", "-c:v", "libvpx-vp9", "-b:v", "1M", str(video)], check=True, timeout=300)
    motion = out / f"{e.keyid}-motion.npy"
    np.save(motion, _features_of(shards, e.keyid))
    buf = io.StringIO()
    with redirect_stdout(buf):
        print(f"index: {len(index)} test motions ({report.summary()}) -> {out / 'index'}")
        print(f"serve it:  lavimo-search serve --index {out / 'index'}")
        for title, kw in ((f'text query "{e.captions[0]}"', {"text": e.captions[0]}),
                          (f"video query {video} (clip {e.keyid} re-encoded: other size, 16:9, 24 fps)",
                           {"video": video}),
                          (f"motion query {motion} (clip {e.keyid}'s features)", {"motion": motion})):
            res = run_query(r, index, k=k, **kw)
            ranks = [h["keyid"] for h in res["results"]]
            found = f"clip {e.keyid} at rank {ranks.index(e.keyid) + 1}" if e.keyid in ranks else \
                f"clip {e.keyid} not in the top {k}"
            print(f"\n== {title}: {found}")
            print(_table(res))
    text = buf.getvalue()
    (out / "queries.txt").write_text(text, encoding="utf-8")
    return text


def _features_of(shards: Path, keyid: str) -> np.ndarray:
    for url in stream.resolve_shards(shards, "test")[0]:
        for raw in stream._tar_samples(url, stream._Skips()):
            if raw.get("__key__") == keyid:
                return shard_format.load_npy_bytes(raw["motion.npy"])
    raise FileNotFoundError(f"{shards}: no motion for {keyid}")


if __name__ == "__main__":
    sys.exit(main())

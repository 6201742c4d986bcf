"""Human-readable evaluation outputs: the paper-style metrics table, the retrieval gallery, the t-SNE figure.

* :func:`metrics_markdown` — ``metrics.md``: one table per modality pair (rows = protocols, columns = R@1,
  R@2, R@3, R@5, R@10, MedR for both directions, 2 decimals) plus the matching LaTeX rows.
* :func:`gallery_html` — a static HTML page: for some queries, the query (text or video) and the top-5
  retrieved items as ``<video>`` elements with their texts, the ground truth marked.
* :func:`tsne_figure` — a PNG t-SNE of the text, video and motion latents of a few samples.
"""

from __future__ import annotations

import html
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lavimo.core.atomic import atomic_path, write_text
from lavimo.core.errors import BadInputError
from lavimo.core.keyids import check_keyid, child_path
from lavimo.core.mp4 import write_video
from lavimo.dataset.shards.format import META, VIDEO_JPGS, VIDEO_MP4, iter_tar_members, SampleMeta
from lavimo.dataset.shards.source import open_shard
from lavimo.dataset.shards.stream import resolve_shards
from lavimo.dataset.video_frames import decode_jpgs
from lavimo.evaluation.metrics import METRIC_KEYS

log = logging.getLogger(__name__)

PROTOCOL_TITLES = {
    "all": "all (whole split)",
    "threshold": "threshold",
    "dissimilar": "dissimilar subset",
    "small-batches": "small batches (32)",
}
TASK_TITLES = {"t": "Text", "v": "Video", "m": "Motion"}
PAIRS = (("t2m", "m2t"), ("v2m", "m2v"), ("t2v", "v2t"))


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _task_title(task: str) -> str:
    a, b = task.split("2")
    return f"{TASK_TITLES[a]}→{TASK_TITLES[b]}"


def _task_short(task: str) -> str:
    a, b = task.split("2")
    return f"{a.upper()}→{b.upper()}"


def metrics_markdown(results: Mapping[str, Mapping[str, Any]], info: Mapping[str, Any] | None = None,
                     fusion: Mapping[str, float] | None = None, skipped: Mapping[str, str] | None = None) -> str:
    """``metrics.md`` text for ``{protocol: {task: metrics, "n": N, ...}}`` (numbers rounded to 2 decimals)."""
    info = dict(info or {})
    lines = ["# Retrieval results", ""]
    for key in ("run", "checkpoint", "from_sims", "split", "text_choice", "subset", "threshold"):
        if info.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: `{info[key]}`")
    lines.append("- R@k: % of queries whose ground truth is in the top k (ties averaged, as TMR); "
                 "MedR: median rank of the ground truth (1 = first)")
    lines.append("")
    for fwd, bwd in PAIRS:
        present = [p for p, r in results.items() if fwd in r or bwd in r]
        if not present:
            continue
        dirs = [t for t in (fwd, bwd) if any(t in results[p] for p in present)]
        lines.append(f"## {' / '.join(_task_title(t) for t in dirs)}")
        lines.append("")
        head = ["Protocol", "N"] + [f"{_task_short(t)} {k}" for t in dirs for k in METRIC_KEYS]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
        latex = []
        for p in present:
            res = results[p]
            name = PROTOCOL_TITLES.get(p, p)
            if p == "threshold" and "threshold" in res:
                name = f"threshold {res['threshold']:g}"
            if p == "small-batches" and "batches" in res:
                name = f"small batches ({res['batches']}×{res.get('batch_size', 32)})"
            cells = []
            for t in dirs:
                cells += [_fmt(res[t][k]) if t in res else "–" for k in METRIC_KEYS]
            n = str(res.get("n", ""))
            if res.get("queries"):
                n += f" ({res['queries']} texts)"
            lines.append("| " + " | ".join([name, n] + cells) + " |")
            latex.append(f"% {name}\n& " + " & ".join(cells) + r" \\")
        lines += ["", "LaTeX rows (" + ", ".join(f"{_task_title(t)} R@1 R@2 R@3 R@5 R@10 MedR" for t in dirs)
                  + "):", "", "```latex", *latex, "```", ""]
    if fusion:
        lines += ["## Mean fusion attention weights", "", "| text | video | motion |", "|---:|---:|---:|",
                  "| " + " | ".join(f"{fusion[k]:.3f}" for k in ("text", "video", "motion")) + " |", ""]
    if skipped:
        lines += ["## Not computed", ""]
        lines += [f"- {p}: {why}" for p, why in skipped.items()]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# gallery
# ----------------------------------------------------------------------------------------------------------
@dataclass
class GalleryRow:
    """One query and its top-k retrieved items.

    ``query_kind`` "text" or "video"; ``query_text`` the caption (text queries) or the sample's caption;
    ``query_video`` a path/URL of the query clip (video queries); ``items`` dicts with ``keyid``, ``video``
    (path/URL or None), ``text``, ``score``, ``gt`` (bool).
    """

    task: str
    query_keyid: str
    query_kind: str
    query_text: str
    query_video: str | None
    gt_rank: float
    items: list[dict[str, Any]] = field(default_factory=list)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h2{margin-top:1.6em}.row{display:flex;gap:12px;align-items:flex-start;margin:14px 0;padding:10px;
background:#fff;border:1px solid #ddd;border-radius:6px}.cell{width:200px;font-size:12px}
.query{width:230px;border-right:2px solid #ccc;padding-right:10px}video{width:100%;border-radius:4px;background:#000}
.gt{outline:4px solid #2a2;border-radius:4px}.badge{display:inline-block;background:#2a2;color:#fff;
padding:0 5px;border-radius:3px;font-weight:bold}.muted{color:#777}.qtext{font-size:14px;font-weight:600}
"""


def _video_tag(src: str | None) -> str:
    if not src:
        return '<div class="muted">(no video)</div>'
    return (f'<video src="{html.escape(src, quote=True)}" controls loop muted playsinline preload="metadata">'
            "</video>")


def gallery_html(rows: Sequence[GalleryRow], title: str = "LAVIMO retrieval gallery",
                 note: str | None = None) -> str:
    """A self-contained HTML page (videos referenced by relative paths) for the gallery rows."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if note:
        parts.append(f"<p class='muted'>{html.escape(note)}</p>")
    parts.append("<p class='muted'>Top-5 per query, best first; the ground truth is outlined in green. "
                 "Rank = 0-based rank of the ground truth (ties averaged).</p>")
    task = None
    for r in rows:
        if r.task != task:
            task = r.task
            parts.append(f"<h2>{html.escape(_task_title(task))} ({html.escape(task)})</h2>")
        q = [f"<div class='cell query'><div class='muted'>query {html.escape(r.query_keyid)} "
             f"(GT rank {r.gt_rank:g})</div>"]
        if r.query_kind == "video":
            q.append(_video_tag(r.query_video))
            q.append(f"<div class='muted'>{html.escape(r.query_text)}</div>")
        else:
            q.append(f"<div class='qtext'>“{html.escape(r.query_text)}”</div>")
        q.append("</div>")
        cells = []
        for i, it in enumerate(r.items):
            gt = bool(it.get("gt"))
            badge = "<span class='badge'>GT</span> " if gt else ""
            media = _video_tag(it.get("video")) if it.get("kind", "video") == "video" else ""
            cells.append(
                f"<div class='cell{' gt' if gt else ''}'>{media}<div>{badge}#{i + 1} "
                f"<b>{html.escape(str(it['keyid']))}</b> <span class='muted'>{it['score']:.3f}</span></div>"
                f"<div>{html.escape(it.get('text') or '')}</div></div>")
        parts.append("<div class='row'>" + "".join(q) + "".join(cells) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def relative_src(target: str | os.PathLike, page_dir: str | os.PathLike) -> str:
    """A URL-ish path of ``target`` relative to the directory of the HTML page (POSIX separators)."""
    rel = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    return Path(rel).as_posix()


# ----------------------------------------------------------------------------------------------------------
# t-SNE
# ----------------------------------------------------------------------------------------------------------
def tsne_figure(path: str | os.PathLike, text: np.ndarray, video: np.ndarray, motion: np.ndarray,
                labels: Sequence[str] | None = None, seed: int = 0, title: str | None = None) -> Path:
    """Write a PNG t-SNE (scikit-learn, cosine geometry via L2-normalised latents) of three modalities.

    ``text``, ``video``, ``motion``: (S, C) latents of the same S samples (row i of each = sample i). Each
    sample's three points carry its index; colours mark the modality. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    s = text.shape[0]
    if not (video.shape[0] == motion.shape[0] == s) or s < 2:
        raise ValueError("t-SNE needs the same number (>= 2) of text, video and motion rows")
    x = np.concatenate([text, video, motion]).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30.0, max(2.0, (3 * s - 1) / 3)))
    # exact t-SNE on one thread: ~100 points, deterministic, and no OpenMP oversubscription (Barnes-Hut with
    # all threads took 25x longer on a busy 2-core machine)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        y = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method="exact",
                 metric="euclidean").fit_transform(x)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=130)
    styles = (("text", "#1f77b4", "o"), ("video", "#ff7f0e", "s"), ("motion", "#2ca02c", "^"))
    for m, (name, colour, marker) in enumerate(styles):
        pts = y[m * s:(m + 1) * s]
        ax.scatter(pts[:, 0], pts[:, 1], c=colour, marker=marker, s=36, label=name, alpha=0.85,
                   edgecolors="none")
        for i, (px, py) in enumerate(pts):
            ax.annotate(str(i), (px, py), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
    ax.legend(loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of text / video / motion latents ({s} samples)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    if labels is not None:
        write_text(path.with_suffix(".txt"), "".join(f"{i}\t{k}\n" for i, k in enumerate(labels)))
    return path


# ----------------------------------------------------------------------------------------------------------
# gallery media from the shards
# ----------------------------------------------------------------------------------------------------------
def extract_shard_clips(shards: str | os.PathLike, split: str, keyids: Sequence[str],
                        out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``out_dir/<keyid>.mp4`` for the wanted clips of a shard set's split -> {keyid: path}.

    Reads the tar members directly (no loader, no decoding for ``video.mp4`` members, which are copied);
    ``video.jpgs`` members (all frames as JPEGs) are decoded and re-encoded as H.264 at the clip's fps from
    ``meta.json``. Clips already extracted are reused; a clip that cannot be read is logged and left out.

    Untrusted shards: a wanted keyid that is not a keyid, and tar members whose name is not ``<keyid>.<ext>``
    (``/``, ``..``) or that are not regular files, are refused (logged, never written); every file is written
    as ``child_path(out_dir, "<keyid>.mp4")``, so nothing lands outside ``out_dir``. An existing symlink there
    is never reused (it is replaced by the extracted file).
    """
    out_dir = Path(out_dir)
    targets: dict[str, Path] = {}
    for k in keyids:
        try:
            targets[k] = child_path(out_dir, f"{check_keyid(k)}.mp4")
        except BadInputError as exc:
            log.warning("gallery: %s: refused", exc)
    done: dict[str, Path] = {}
    for k, f in targets.items():
        if f.is_file() and not f.is_symlink() and f.stat().st_size > 0:
            done[k] = f
    wanted = set(targets) - set(done)
    if not wanted:
        return done
    urls, _, _ = resolve_shards(shards, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    for url in urls:
        if not wanted:
            break

        def refused(ti, reason: str, message: str, url: str = url) -> None:
            log.warning("gallery: %s: member %r refused: %s", url, ti.name, message)

        def want(name: str) -> bool:
            key, _, suffix = name.partition(".")
            return key in wanted and suffix in (VIDEO_MP4, VIDEO_JPGS, META)

        found: dict[str, dict[str, bytes]] = {}
        try:
            with open_shard(url) as stream:  # a local file, or an http(s) / pipe: url (dataset/shards/source.py)
                for name, data in iter_tar_members(stream, where=url, refused=refused, want=want):
                    key, _, suffix = name.partition(".")
                    found.setdefault(key, {})[suffix] = data
        except (OSError, tarfile.TarError, EOFError) as exc:
            log.warning("gallery: cannot read %s: %s", url, exc)
            continue
        for key, mem in found.items():
            try:
                if not _write_clip(targets[key], mem):
                    continue
            except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the gallery
                log.warning("gallery: cannot extract %s from %s: %s", key, url, exc)
                continue
            done[key] = targets[key]
            wanted.discard(key)
    return done


def _write_clip(target: Path, mem: Mapping[str, bytes]) -> bool:
    """``target`` from a sample's members: its ``video.mp4`` copied, else its ``video.jpgs`` encoded as H.264 at
    the fps of its ``meta.json`` (default 20); False when it has neither."""
    if VIDEO_MP4 in mem:
        with atomic_path(target) as tmp:
            tmp.write_bytes(mem[VIDEO_MP4])
        return True
    if VIDEO_JPGS not in mem:
        return False
    meta = SampleMeta.parse(mem[META]) if META in mem else None
    fps = 20.0 if meta is None or meta.fps is None else meta.frame_rate()  # ValueError unless finite and > 0
    frames = decode_jpgs(mem[VIDEO_JPGS]).permute(0, 2, 3, 1).numpy()
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sides
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    with atomic_path(target) as tmp:
        write_video(tmp, frames, fps)
    return True

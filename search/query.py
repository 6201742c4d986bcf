"""One query against an index: :func:`open_index` (the index and the model it was built with) and
:func:`run_query` (text, video or motion -> top-k motions, or captions), shared by ``lavimo-search query``, the
search page and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lavimo.core.errors import BadInputError

from .index import META, Index
from .model import load


def open_index(index_dir: Path, checkpoint: Path | None, stats: Path | None, device: str = "cpu"):
    """(Retriever, Index) for an index directory, the checkpoint defaulting to the one it records. The index is
    opened and checked first (milliseconds, whatever its size: :meth:`Index.load`), so a missing or damaged index
    fails before the model loads; then the model, whose checkpoint and latent size the index must match."""
    meta_path = index_dir / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{index_dir}: no index (build it with 'lavimo-search index')")
    index = Index.load(index_dir)
    if checkpoint is None:
        recorded = index.meta.get("checkpoint")
        if not isinstance(recorded, str) or not recorded or "\0" in recorded:
            raise BadInputError(meta_path, "checkpoint", "not a file name; pass --checkpoint")
        checkpoint = Path(recorded)
    retriever = load(checkpoint, stats=stats, device=device)
    index.check_model(retriever.sha256, retriever.latent_dim)
    return retriever, index


def run_query(retriever, index, *, text: str | None = None, video: Path | None = None,
              motion: Path | None = None, k: int = 5, captions: bool = False, start: float | None = None,
              end: float | None = None, crop=None, fps: float | None = None) -> dict[str, Any]:
    """One query -> ``{"query": {...}, "results": [...]}`` (motions; captions with ``captions``)."""
    if text is not None:
        q, kind, against = retriever.encode_text([text]), "text", "motion"
    elif video is not None:
        q, kind, against = retriever.encode_video(video, start, end, crop), "video", "motion"
    else:
        q, kind = retriever.encode_motion(motion, fps, start, end), "motion"
        against = "text" if captions else "motion"
    hits = index.search(q, k, against)
    if against == "text":
        results = []
        for i, s in hits:
            caption, owner = index.caption(i)
            results.append({"caption": caption, "keyid": index.keyid(owner), "score": round(s, 6)})
    else:
        results = [index.result(i, s) for i, s in hits]
    return {"query": {"kind": kind, "against": against, "k": k}, "results": results}

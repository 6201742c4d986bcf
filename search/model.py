"""Load a trained LAVIMO checkpoint in one call and encode raw inputs (texts, video files, motions).

    from lavimo.search.model import load
    r = load("runs/demo/checkpoints/best.safetensors")
    t = r.encode_text(["a person hops on the left leg"])          # (1, C) float32, rows of L2 norm 1
    v = r.encode_video("phone.mov", start=2.0, end=6.5)          # (1, C)
    m = r.encode_motion("new_joint_vecs/000123.npy")              # (1, C); also (T, 263) / (T, 22, 3) arrays
    scores = m @ t.T                                              # cosine similarities

Preprocessing travels with the weights: train.py writes ``extra["preprocess"]`` (:data:`PREPROCESS_KEYS`) into
every checkpoint it saves: the feature mean/std of the shard set's ``stats.npz``, the frame count and sampling
rule, image size, frame crop, CLIP mean/std, video input, text model settings, motion crop. Checkpoints saved
before that (or by other code) have no such field: pass ``stats=`` (a ``stats.npz`` or the shard set directory
they were trained on); the other settings then come from the checkpoint's config, which has always held them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lavimo.core.errors import BadInputError
from lavimo.core.hashing import sha256_file
from lavimo.core.restricted_unpickle import read_npy_file
from lavimo.dataset.clip import Clip, FrameSpec
from lavimo.dataset.features import clip_features, joints_to_features
from lavimo.dataset.shards.stream import load_stats
from lavimo.model.checkpoint import PREPROCESS_KEYS, load_checkpoint, preprocess_record  # PREPROCESS_KEYS re-exported

from .video import frame_numbers, model_view, query_frames



def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Retriever:
    """A loaded model with its preprocessing; every ``encode_*`` returns (B, C) float32 L2-normalised rows.

    Attributes: ``model`` (LavimoModel, eval mode), ``preprocess`` (dict, :data:`PREPROCESS_KEYS`),
    ``checkpoint`` (Path), ``device``, ``has_video`` (the model has a video encoder)."""

    def __init__(self, model: Any, preprocess: dict[str, Any], checkpoint: Path, device: str = "cpu",
                 sha256: str | None = None):
        self.model, self.preprocess, self.checkpoint, self.device = model, preprocess, checkpoint, device
        self.mean = np.asarray(preprocess["feature_mean"], np.float32)
        self.std = np.asarray(preprocess["feature_std"], np.float32)
        self.has_video = model.video is not None
        self._sha: str | None = sha256  # the caller's hash of this very file (open_index), else computed once

    @property
    def sha256(self) -> str:
        """The checkpoint file's sha256 (computed once)."""
        if self._sha is None:
            self._sha = sha256_file(self.checkpoint)[0]
        return self._sha

    @property
    def latent_dim(self) -> int:
        return int(self.model.latent_dim)

    # ------------------------------------------------------------------------------------------------ text
    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """A list of strings -> (B, C). Empty strings are refused (ValueError)."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings")
        texts = list(texts)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("encode_text needs a non-empty list of non-empty strings")
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                out.append(self.model.encode_text(texts[i:i + batch_size]).float().cpu().numpy())
        return _l2(np.concatenate(out))

    # ------------------------------------------------------------------------------------------------ video
    def video_tensor(self, video: Any, start: float | None = None, end: float | None = None,
                     crop: tuple[int, int, int] | None = None, mode: str = "auto"):
        """The model's input for one video: a file path (search/video.py) or (T, H, W, 3) uint8 frames (the
        loader's frame choice is applied when T > num_frames) -> (num_frames, 3, S, S) float32."""
        p = self.preprocess
        source = None
        if isinstance(video, (str, os.PathLike)):  # decoded at the size the model needs; crop in those pixels
            source = video
            frames, crop = query_frames(video, p["num_frames"], p["image_size"], p["frame_crop"], crop, start, end,
                                        mode=mode)
        else:
            frames = np.asarray(video)
            if frames.ndim != 4 or len(frames) < 2:
                raise BadInputError(None, "frames", f"expected (T >= 2, H, W, 3) uint8 frames, got {frames.shape}")
            frames = frames[frame_numbers(len(frames), p["num_frames"])]
        return model_view(frames, p["image_size"], p["frame_crop"], crop, source)

    def encode_video(self, video: Any, start: float | None = None, end: float | None = None,
                     crop: tuple[int, int, int] | None = None, mode: str = "auto") -> np.ndarray:
        """One video (path or frames; see :meth:`video_tensor`) -> (1, C)."""
        if not self.has_video:
            raise BadInputError(self.checkpoint, "modalities", "this model has no video encoder (modalities 'tm')")
        x = self.video_tensor(video, start, end, crop, mode)
        with torch.inference_mode():
            return _l2(self.model.encode_video(x[None]).float().cpu().numpy())

    def encode_video_batch(self, videos) -> np.ndarray:
        """(B, F, 3, S, S) model-ready frames (the loader's ``video``) -> (B, C)."""
        with torch.inference_mode():
            return _l2(self.model.encode_video(videos).float().cpu().numpy())

    # ------------------------------------------------------------------------------------------------ motion
    def features_of(self, motion: Any, fps: float | None = None, start: float | None = None,
                    end: float | None = None) -> np.ndarray:
        """Raw (unnormalised) feature rows (T, D) of a motion input:

        - (T, D) features (HumanML3D ``new_joint_vecs`` layout, D = the model's ``feature_dim``);
        - (T, 22, 3) joints in metres, Y up (``lavimo.dataset.features.joints_to_features``; T >= 2 -> T - 1 rows);
        - a path: ``.npy`` holding either of those (read without pickle), or an AMASS ``.npz`` (the window
          ``start``..``end`` seconds, resampled to ``fps``, default 20, posed with the procedural body:
          ``lavimo.dataset.features.clip_features``).
        Raises BadInputError naming the file: wrong shape, NaN/inf, unreadable."""
        src = None
        if isinstance(motion, (str, os.PathLike)):
            src = Path(motion)
            if not src.is_file():
                raise BadInputError(src, "motion", "file not found")
            if src.suffix.lower() == ".npz":
                return self._amass_features(src, fps, start, end)
            if src.suffix.lower() != ".npy":
                raise BadInputError(src, "motion", f"expected a .npy (features or joints) or an AMASS .npz, got "
                                                   f"{src.suffix or 'no suffix'}")
            motion = read_motion_npy(src)
        a = np.asarray(motion)
        d = int(self.preprocess["feature_dim"])
        if a.dtype.kind not in "fiu":
            raise BadInputError(src, "motion", f"expected a numeric array, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise BadInputError(src, "motion", f"holds {int((~np.isfinite(a)).sum())} NaN/inf values")
        if a.ndim == 2 and a.shape[1] == d and a.shape[0] >= 1:
            return a.astype(np.float32)
        if a.ndim == 3 and a.shape[1:] == (22, 3) and d == 263:
            try:
                return joints_to_features(a.astype(np.float32))
            except BadInputError as exc:
                raise BadInputError(src, exc.field, exc.message) from exc
        raise BadInputError(src, "motion", f"shape {a.shape}: expected features (T, {d}) or joints (T, 22, 3)")

    def _amass_features(self, path: Path, fps: float | None, start: float | None, end: float | None) -> np.ndarray:
        rate = 20.0 if fps is None else float(fps)
        clip = Clip(keyid="query", amass_path=path.name, frame_spec=FrameSpec("time", float(start or 0.0), end,
                                                                              fps=rate), fps=rate, dataset="query")
        try:
            return clip_features(clip, path.parent)
        except BadInputError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise BadInputError(path, "amass", f"cannot compute features ({exc})") from exc

    def normalise(self, feats: np.ndarray) -> np.ndarray:
        """(T, D) raw features -> the first ``max_motion_len`` rows, normalised with the training mean/std."""
        f = np.asarray(feats, np.float32)[: int(self.preprocess["max_motion_len"])]
        with np.errstate(over="ignore", invalid="ignore"):
            x = ((f - self.mean) / self.std).astype(np.float32)
        if not np.isfinite(x).all():
            raise BadInputError(None, "motion", "features overflow when normalised")
        return x

    def encode_motion(self, motion: Any, fps: float | None = None, start: float | None = None,
                      end: float | None = None) -> np.ndarray:
        """One motion (see :meth:`features_of`) -> (1, C)."""
        return self.encode_motion_batch([self.normalise(self.features_of(motion, fps, start, end))])

    def encode_motion_batch(self, normalised: Sequence[np.ndarray]) -> np.ndarray:
        """Normalised (T_i, D) arrays (:meth:`normalise`) -> (B, C); padded with a mask, one forward pass."""
        lengths = [len(x) for x in normalised]
        t = max(lengths)
        x = np.zeros((len(normalised), t, int(self.preprocess["feature_dim"])), np.float32)
        for i, a in enumerate(normalised):
            x[i, :len(a)] = a
        mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
        with torch.inference_mode():
            return _l2(self.model.encode_motion(torch.from_numpy(x), mask).float().cpu().numpy())


def read_motion_npy(path: Path) -> np.ndarray:
    """The array in a motion ``.npy`` through the checked reader (never unpickled; the header must match the file's
    size before anything is allocated). BadInputError naming the file when it cannot be read."""
    try:
        return read_npy_file(path, "motion")
    except OSError as exc:
        raise BadInputError(path, "motion", f"not a readable .npy array ({exc.strerror or exc})") from exc


def _check_preprocess(pre: Any, path: Path) -> dict[str, Any]:
    if not isinstance(pre, dict) or not set(PREPROCESS_KEYS) <= set(pre):
        missing = sorted(set(PREPROCESS_KEYS) - set(pre)) if isinstance(pre, dict) else ["all"]
        raise BadInputError(path, "lavimo_extra/preprocess", f"incomplete (missing {missing[:5]})")
    mean, std = np.asarray(pre["feature_mean"], np.float64), np.asarray(pre["feature_std"], np.float64)
    d = pre["feature_dim"]
    if mean.shape != (d,) or std.shape != (d,) or not (np.isfinite(mean).all() and np.isfinite(std).all()
                                                        and (std > 0).all()):
        raise BadInputError(path, "lavimo_extra/preprocess", f"feature_mean/std are not two finite ({d},) arrays "
                                                             "with std > 0")
    return pre


def load(checkpoint: str | os.PathLike, stats: str | os.PathLike | None = None, device: str = "cpu",
         sha256: str | None = None) -> Retriever:
    """Load a checkpoint (``.safetensors`` from train.py) with its preprocessing -> :class:`Retriever`.

    ``stats``: a ``stats.npz`` or a shard set directory; needed only for checkpoints without
    ``extra["preprocess"]`` (saved before train.py wrote it), and used instead of the checkpoint's when given.
    ``sha256``: the file's hash when the caller computed it (``open_index`` does, to refuse an index of another
    checkpoint before the model loads). Raises FileNotFoundError (no checkpoint) or BadInputError naming the file
    and the field (not a LAVIMO checkpoint, no preprocessing and no ``stats``, malformed preprocessing)."""
    path = Path(checkpoint)
    model = load_checkpoint(path, device=device)
    extra = getattr(model, "checkpoint_extra", {}) or {}
    pre = extra.get("preprocess")
    if stats is not None:
        mean, std = load_stats(stats)
        pre = preprocess_record(model.cfg, mean, std)
    elif pre is None:
        raise BadInputError(path, "lavimo_extra/preprocess", "this checkpoint does not carry its preprocessing "
                            "(saved before train.py wrote it): pass stats= (--stats) with the stats.npz or the "
                            "shard set directory it was trained on")
    pre = _check_preprocess(pre, path)
    if pre["feature_dim"] != model.cfg.feature_dim:
        raise BadInputError(stats or path, "feature_dim", f"statistics of {pre['feature_dim']} features for a model "
                                                          f"of {model.cfg.feature_dim}")
    return Retriever(model, pre, path, device, sha256)

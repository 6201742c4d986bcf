"""The one ``Clip`` type carried from annotations to shards (see docs/design.md, "One Clip type")."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from lavimo.dataset.frames import HUMANML3D_FPS, humanml3d_frame_indices, time_frame_indices
from lavimo.core.keyids import check_keyid, is_keyid


@dataclass(frozen=True)
class Text:
    """One caption of a clip. ``start``/``end`` are seconds inside the clip; ``None`` = whole clip."""

    caption: str
    start: float | None = None
    end: float | None = None
    tokens: str | None = None  # HumanML3D's "word/POS ..." string when the source has one


@dataclass(frozen=True)
class FrameSpec:
    """How a clip's frames are chosen from its AMASS sequence.

    rule "humanml3d": ``start``/``end`` are 20-fps frame numbers from index.csv (end -1 = to the end).
    rule "time": ``start``/``end`` are seconds in the AMASS sequence (end None = to the end),
    resampled to ``fps``.
    """

    rule: Literal["humanml3d", "time"]
    start: float
    end: float | None
    fps: float = HUMANML3D_FPS

    def indices(self, amass_path: str, num_frames: int, amass_fps: float) -> np.ndarray:
        """AMASS frame indices (int64) for a sequence of ``num_frames`` frames at ``amass_fps``."""
        if self.rule == "humanml3d":
            return humanml3d_frame_indices(amass_path, num_frames, amass_fps, int(self.start),
                                           -1 if self.end is None else int(self.end))
        return time_frame_indices(num_frames, amass_fps, self.fps, self.start, self.end)


@dataclass(frozen=True)
class Clip:
    """One annotated motion clip.

    Attributes:
        keyid: dataset id exactly as written by the dataset ("000123", "M000123", "00001"); it must follow
            :data:`lavimo.core.keyids.KEYID_RULE` (a name, never a path): any other value raises
            :class:`~lavimo.core.errors.BadInputError` at construction (also through ``dataclasses.replace``).
        amass_path: path of the AMASS npz relative to the AMASS root, with ".npz"
            (e.g. "KIT/3/kick_high_left02_poses.npz").
        frame_spec: the rule that selects AMASS frames.
        fps: frame rate of the clip's motion and video (20 for HumanML3D / KIT-ML via TMR).
        texts: captions (may be empty when the source has no texts; such clips are reported).
        split: "train" | "val" | "test" | None.
        mirrored: True for HumanML3D's "M" copies (left/right swapped; texts already swapped).
        frames: AMASS frame indices (int64, one per motion frame) once resolved against the AMASS
            file (``with_frames``); None before.
        dataset: short source name ("humanml3d", "kitml", "synthetic", ...).
    """

    keyid: str
    amass_path: str
    frame_spec: FrameSpec
    fps: float
    texts: tuple[Text, ...] = ()
    split: str | None = None
    mirrored: bool = False
    frames: np.ndarray | None = field(default=None, compare=False, repr=False)
    dataset: str = ""

    def __post_init__(self) -> None:
        # Defence in depth: readers check keyids first and report bad ones per item; a Clip never carries one.
        if not is_keyid(self.keyid):
            check_keyid(self.keyid, None, "Clip.keyid")

    @property
    def num_frames(self) -> int | None:
        return None if self.frames is None else int(len(self.frames))

    def resolve(self, num_amass_frames: int, amass_fps: float) -> "Clip":
        """A copy with ``frames`` computed for an AMASS sequence of that length and fps."""
        idx = self.frame_spec.indices(self.amass_path, num_amass_frames, amass_fps)
        return replace(self, frames=idx)

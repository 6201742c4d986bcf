"""Every project module ``search`` uses, imported in this one place (rename the imports here when the layout
changes: core/, body/, dataset/, model/, evaluation/). Nothing else in ``search`` imports project modules."""

from __future__ import annotations

from dataset.atomic import atomic_path, write_json  # noqa: F401  (core.atomic after the layout change)
from dataset.augment import CLIP_MEAN, CLIP_STD, center_box, clip_normalize, crop_resize, eval_view  # noqa: F401
from dataset.errors import BadInputError  # noqa: F401  (core.errors)
from dataset.hashing import sha256_file  # noqa: F401  (core.hashing)
from dataset.keyids import check_keyid, child_path, is_keyid  # noqa: F401  (core.keyids)


def stream():
    """``dataset.stream`` (the loader: SampleTransform, load_stats, resolve_shards, _tar_samples, collate)."""
    import dataset.stream as m

    return m


def shards():
    """``dataset.shards`` (parse_texts, load_npy_bytes, iter_tar_members, read_manifests)."""
    import dataset.shards as m

    return m


def features():
    """``dataset.features`` (joints_to_features, features_to_joints, clip_features)."""
    import dataset.features as m

    return m


def clip_types():
    """``dataset.clip`` (Clip, FrameSpec)."""
    import dataset.clip as m

    return m


def video_frames():
    """``dataset.video_frames`` (write_video, decode_jpgs, jpgs_info, mp4_frames; core.mp4 after the layout)."""
    import dataset.video_frames as m

    return m


def checkpoint():
    """``model.checkpoint`` (load_checkpoint, read_checkpoint_metadata)."""
    import model.checkpoint as m

    return m

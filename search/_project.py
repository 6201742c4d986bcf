"""Every project module ``search`` uses, imported in this one place (rename the imports here when the layout
changes: core/, body/, dataset/, model/, evaluation/). Nothing else in ``search`` imports project modules."""

from __future__ import annotations

from core.atomic import atomic_path, write_json  # noqa: F401
from dataset.augment import CLIP_MEAN, CLIP_STD, center_box, clip_normalize, crop_resize, eval_view  # noqa: F401
from core.errors import BadInputError, print_error  # noqa: F401
from core.hashing import sha256_file  # noqa: F401
from core.keyids import check_keyid, child_path, is_keyid  # noqa: F401
from model.checkpoint import PREPROCESS_KEYS, PREPROCESS_VERSION, preprocess_record  # noqa: F401


def stream():
    """``dataset.stream`` (the loader: SampleTransform, load_stats, resolve_shards, _tar_samples, collate)."""
    import dataset.stream as m

    return m


def shards():
    """``dataset.shard_format`` (parse_texts, load_npy_bytes, iter_tar_members, read_manifests, load_stats)."""
    import dataset.shard_format as m

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
    """JPEG frame packing (``dataset.video_frames.decode_jpgs``) and mp4 I/O (``core.mp4``) in one namespace."""
    import types

    import core.mp4 as mp4
    import dataset.video_frames as vf

    return types.SimpleNamespace(decode_jpgs=vf.decode_jpgs, jpgs_info=getattr(vf, "jpgs_info", None),
                                 write_video=mp4.write_video, mp4_frames=mp4.mp4_frames)


def checkpoint():
    """``model.checkpoint`` (load_checkpoint, read_checkpoint_metadata)."""
    import model.checkpoint as m

    return m

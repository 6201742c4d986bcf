"""Every project module ``search`` uses, imported in this one place (rename the imports here when the layout
changes: core/, dataset/, render/, model/). The other modules of ``search`` import project code only through
this module: the names below, or the functions that import a module on first use (the heavy or
order-sensitive ones: the loader, the renderer)."""

from __future__ import annotations

from core.atomic import atomic_path, write_json
from core.errors import BadInputError, os_error_text, print_error
from core.hashing import sha256_file
from core.jsonconfig import read_json_file
from core.keyids import child_path, is_keyid
from core.restricted_unpickle import open_npz, read_npy_file, read_npz_header, read_npz_member
from dataset.augment import center_box, clip_normalize, eval_view
from model.checkpoint import PREPROCESS_KEYS, preprocess_record

__all__ = ["BadInputError", "PREPROCESS_KEYS", "atomic_path", "center_box", "checkpoint", "child_path",
           "clip_normalize", "clip_types", "eval_view", "features", "is_keyid", "mp4", "open_npz",
           "os_error_text", "preprocess_record", "print_error", "read_json_file", "read_npy_file", "read_npz_header",
           "read_npz_member", "renderer", "sha256_file", "shards", "stream", "video_frames",
           "write_json"]


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
    """``dataset.video_frames`` (decode_jpgs: a shard's packed JPEG frames)."""
    import dataset.video_frames as m

    return m


def mp4():
    """``core.mp4`` (VideoWriter, write_video: H.264 mp4 files written atomically)."""
    import core.mp4 as m

    return m


def renderer():
    """The headless renderer: ``render.scene`` (SceneRenderer, RendererSetupError; importing it sets
    ``PYOPENGL_PLATFORM=egl`` unless set), ``render.lights`` (load_lights) and ``render.trajectory``
    (follow_trajectory) in one namespace. Imported on first call: ``search.preview`` loads triton first."""
    import types

    import render.lights as lights
    import render.scene as scene
    import render.trajectory as trajectory

    return types.SimpleNamespace(SceneRenderer=scene.SceneRenderer, RendererSetupError=scene.RendererSetupError,
                                 load_lights=lights.load_lights, follow_trajectory=trajectory.follow_trajectory)


def checkpoint():
    """``model.checkpoint`` (load_checkpoint, read_checkpoint_metadata)."""
    import model.checkpoint as m

    return m

"""Every project module ``search`` uses, imported in this one place (rename the imports here when the layout
changes: core/, dataset/, render/, model/). The other modules of ``search`` import project code only through
this module: the names below, or the functions that import a module on first use (the heavy or
order-sensitive ones: the loader, the renderer)."""

from __future__ import annotations

from lavimo.core.atomic import atomic_path, write_json
from lavimo.core.errors import BadInputError, os_error_text, print_error
from lavimo.core.hashing import sha256_file
from lavimo.core.jsonconfig import read_json_file
from lavimo.core.keyids import child_path, is_keyid
from lavimo.core.restricted_unpickle import open_npz, read_npy_file, read_npz_header, read_npz_member
from lavimo.dataset.augment import center_box, clip_normalize, eval_view
from lavimo.model.checkpoint import PREPROCESS_KEYS, preprocess_record

__all__ = ["BadInputError", "PREPROCESS_KEYS", "atomic_path", "center_box", "checkpoint", "child_path",
           "clip_normalize", "clip_types", "eval_view", "features", "is_keyid", "mp4", "open_npz",
           "os_error_text", "preprocess_record", "print_error", "read_json_file", "read_npy_file", "read_npz_header",
           "read_npz_member", "renderer", "sha256_file", "shards", "stream", "video_frames",
           "write_json"]


def stream():
    """``lavimo.dataset.shards.stream`` (the loader: SampleTransform, load_stats, resolve_shards, _tar_samples, collate)."""
    import lavimo.dataset.shards.stream as m

    return m


def shards():
    """``lavimo.dataset.shards.format`` (parse_texts, load_npy_bytes, iter_tar_members, read_manifests, load_stats)."""
    import lavimo.dataset.shards.format as m

    return m


def features():
    """``lavimo.dataset.features`` (joints_to_features, features_to_joints, clip_features)."""
    import lavimo.dataset.features as m

    return m


def clip_types():
    """``lavimo.dataset.clip`` (Clip, FrameSpec)."""
    import lavimo.dataset.clip as m

    return m


def video_frames():
    """``lavimo.dataset.video_frames`` (decode_jpgs: a shard's packed JPEG frames)."""
    import lavimo.dataset.video_frames as m

    return m


def mp4():
    """``lavimo.core.mp4`` (VideoWriter, write_video: H.264 mp4 files written atomically)."""
    import lavimo.core.mp4 as m

    return m


def renderer():
    """The headless renderer: ``lavimo.render.scene`` (SceneRenderer, RendererSetupError; importing it sets
    ``PYOPENGL_PLATFORM=egl`` unless set), ``lavimo.render.lights`` (load_lights) and ``lavimo.render.trajectory``
    (follow_trajectory) in one namespace. Imported on first call: ``lavimo.search.preview`` loads triton first."""
    import types

    import lavimo.render.lights as lights
    import lavimo.render.scene as scene
    import lavimo.render.trajectory as trajectory

    return types.SimpleNamespace(SceneRenderer=scene.SceneRenderer, RendererSetupError=scene.RendererSetupError,
                                 load_lights=lights.load_lights, follow_trajectory=trajectory.follow_trajectory)


def checkpoint():
    """``lavimo.model.checkpoint`` (load_checkpoint, read_checkpoint_metadata)."""
    import lavimo.model.checkpoint as m

    return m

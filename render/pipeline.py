"""Rendering clips to videos inside one worker: pose ahead on a thread, rasterise, encode on a thread.

Per clip: read the AMASS file and select the clip's frames (video frame i = motion frame i), mirror for
mirrored clips, pose the avatar's body (avatar and light drawn from ``(seed, keyid)``; a mirrored clip
``M<id>`` keeps the avatar and light of ``<id>``), compute the follow-camera trajectory, then render every
frame into ``OUT/<keyid>.mp4`` and write ``OUT/<keyid>.json``. Three stages overlap: a producer thread
loads/poses/computes normals for upcoming frames (numpy/torch release the GIL), the calling thread owns the
EGL context and rasterises, and :class:`lavimo.core.mp4.VideoWriter` pipes frames to ffmpeg on its own thread.
Whatever ends :func:`render_clips` (done, stopped, an error), both threads have ended when it returns: a thread
left inside torch when the interpreter exits aborts the process (see :func:`_stop_producer`).

Safety on untrusted input: keyids are checked (:func:`lavimo.core.keyids.check_keyid`) and every output path is
built with :func:`lavimo.core.keyids.child_path`, so no clip writes outside ``OUT``. Both outputs are written
atomically; the sidecar, written last, records the video's ``video_size`` (bytes) and ``video_sha256``, and
a clip counts as done on resume only when its mp4 still matches them (:func:`verify_outputs`). A missing or
bad body-model file and a full disk stop the whole run (:class:`FatalRenderError`); other problems fail one
clip and the rest go on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from lavimo.dataset.amass import amass_file, load_amass
from lavimo.core.atomic import write_json
from lavimo.dataset.clip import Clip
from lavimo.core.errors import BadInputError, is_disk_full
from lavimo.core.hashing import sha256_file
from lavimo.core.keyids import check_keyid, child_path
from lavimo.core.seeding import stable_choice
from lavimo.render.avatars import Avatar, load_avatars, load_texture_image, load_uv_layout, region_labels, vertex_colors
from lavimo.render.lights import LightSetup, load_lights
from lavimo.render.lod import LevelOfDetail, body_lod, full_detail, parse_lod
from lavimo.core.mp4 import DEFAULT_CRF, DEFAULT_PRESET, VideoWriter, probe_mp4

if TYPE_CHECKING:  # pyrender / scipy are imported where used (a --workers parent process needs neither)
    from lavimo.render.scene import SceneRenderer, VertexNormals

log = logging.getLogger(__name__)

RENDER_VERSION = 1
CHUNK_FRAMES = 32


@functools.lru_cache(maxsize=1)
def tool_version() -> str:
    """``lavimo <package version> render/<RENDER_VERSION>`` for sidecars."""
    try:
        from importlib.metadata import version

        v = version("lavimo")
    except Exception:  # noqa: BLE001
        v = "unknown"
    return f"lavimo {v} render/{RENDER_VERSION}"


@dataclass(frozen=True)
class RenderConfig:
    """Settings shared by every clip of a run (picklable, sent to worker processes).

    Attributes:
        amass_root: AMASS root directory; out_dir: output directory.
        avatars_dir / lights_path: asset locations; num_lights: draw from the first N setups.
        size: frame width = height in pixels (even). seed: global seed for avatar/light choices.
        body_models: smplx model directory, or None for the procedural body.
        overwrite: re-render clips whose outputs exist. crf / preset / encoder_threads: x264 settings.
        lod: level of detail of the body mesh, ``"auto"`` | ``"full"`` | a face count (see :mod:`lavimo.render.lod`).
        shading: ``"auto"`` (per vertex below :data:`lavimo.render.lod.AUTO_FULL_SIZE` px, else per pixel) | ``"pixel"``
            (pyrender's fragment shader) | ``"vertex"`` (:class:`lavimo.render.scene.VertexShading`).
    """

    amass_root: str
    out_dir: str
    avatars_dir: str | None = None
    lights_path: str | None = None
    num_lights: int = 4
    size: int = 512
    seed: int = 0
    body_models: str | None = None
    overwrite: bool = False
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    encoder_threads: int = 1
    lod: str | int = "auto"
    shading: str = "auto"


SHADINGS = ("auto", "pixel", "vertex")


def resolve_shading(shading: str, size: int, textured: bool = False) -> str:
    """"pixel" or "vertex" for a clip: ``auto`` shades per vertex below :data:`lavimo.render.lod.AUTO_FULL_SIZE` px
    (where triangles cover a few pixels each); UV-textured avatars are always shaded per pixel."""
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {', '.join(SHADINGS)}, got {shading!r}")
    if textured:
        return "pixel"
    if shading == "auto":
        from lavimo.render.lod import AUTO_FULL_SIZE

        return "vertex" if size < AUTO_FULL_SIZE else "pixel"
    return shading


@dataclass
class ClipResult:
    keyid: str
    status: str  # "rendered" | "skipped" | "failed"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0


class FatalRenderError(RuntimeError):
    """A problem that stops the whole run, not one clip: ``kind`` "setup" (a missing or malformed body-model
    file) or "disk_full" (no space left writing ``path``). The message is one line naming the file."""

    def __init__(self, kind: str, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.kind = kind
        self.path = None if path is None else os.fspath(path)


def output_paths(out_dir: str | os.PathLike, keyid: str) -> tuple[Path, Path]:
    """(``OUT/<keyid>.mp4``, ``OUT/<keyid>.json``), directly inside ``OUT`` (:func:`lavimo.core.keyids.child_path`;
    BadInputError for a name that would land elsewhere). The keyid was checked where the clip was made."""
    return child_path(out_dir, f"{keyid}.mp4"), child_path(out_dir, f"{keyid}.json")


NOT_RENDERED = "not rendered yet"


def verify_outputs(out_dir: str | os.PathLike, keyid: str) -> tuple[bool, str]:
    """Whether a clip's outputs are complete, and why (or why not).

    Complete means: ``<keyid>.json`` parses, names ``keyid`` and a frame count, and ``<keyid>.mp4`` has the
    sidecar's ``video_size`` and ``video_sha256``. Sidecars of older versions lack those two fields; their
    mp4 only has to be non-empty and a complete mp4 container (:func:`lavimo.core.mp4.probe_mp4`), and the
    reason then starts with ``"legacy"``. Returns ``(True, "verified ...")``, ``(True, "legacy ...")`` or
    ``(False, reason)``.
    """
    try:
        mp4, js = output_paths(out_dir, keyid)
    except BadInputError as e:
        return False, e.reason
    if not js.is_file():
        return False, (f"{mp4.name} has no sidecar {js.name}" if mp4.exists() else NOT_RENDERED)
    if not mp4.is_file():
        return False, f"{mp4.name} is missing"
    try:
        with open(js, encoding="utf-8") as fh:
            meta = json.load(fh)
        if not isinstance(meta, dict) or meta.get("keyid") != keyid or int(meta.get("num_frames", -1)) < 0:
            return False, f"{js.name} does not describe {keyid}"
    except (OSError, ValueError, TypeError) as e:
        return False, f"{js.name} is unreadable ({type(e).__name__})"
    try:
        size = mp4.stat().st_size
    except OSError as e:
        return False, f"{mp4.name} is unreadable ({e.strerror or e})"
    want_size, want_sha = meta.get("video_size"), meta.get("video_sha256")
    if want_size is None or want_sha is None:
        bad = "empty file" if size == 0 else probe_mp4(mp4)
        if bad is not None:
            return False, f"{mp4.name}: {bad}"
        return True, "legacy sidecar without video_sha256: only the mp4 container was checked"
    if not isinstance(want_size, int) or size != want_size:
        return False, f"{mp4.name} has {size} bytes, {js.name} records {want_size}"
    try:
        sha, _ = sha256_file(mp4)
    except OSError as e:
        return False, f"{mp4.name} is unreadable ({e.strerror or e})"
    if sha != want_sha:
        return False, f"{mp4.name}'s sha256 differs from {js.name}'s video_sha256"
    return True, "verified size and sha256"


def base_keyid(clip: Clip) -> str:
    """The keyid whose avatar/light a clip uses: a mirrored ``M<id>`` uses ``<id>``'s."""
    k = clip.keyid
    return k[1:] if clip.mirrored and k.startswith("M") and len(k) > 1 else k


def choose_avatar_light(clip: Clip, seed: int, num_avatars: int, num_lights: int) -> tuple[int, int]:
    """(avatar index, light index) for a clip from the stable hash of (seed, base keyid)."""
    k = base_keyid(clip)
    return stable_choice(seed, num_avatars, k, "avatar"), stable_choice(seed, num_lights, k, "light")


class BodyCache:
    """Body models and per-avatar region colours, loaded once per worker."""

    def __init__(self, model_dir: str | None):
        self.model_dir = model_dir
        self._bodies: dict = {}
        self._colors: dict = {}
        self._normals: dict = {}
        self._lods: dict = {}

    def body(self, model_type: str, gender: str):
        from lavimo.body.model import load_body

        key = (model_type, gender)
        if key not in self._bodies:
            # Real model files come per gender; an avatar whose gender has no file falls back (logged).
            tries = [gender] + (["male", "female"] if gender == "neutral" else ["neutral"])
            first: Exception | None = None
            for g in tries if self.model_dir is not None else [gender]:
                try:
                    self._bodies[key] = load_body(self.model_dir, model_type=model_type, gender=g)
                    if g != gender:
                        log.warning("no %s %s model in %s; avatars of that gender use the %s model",
                                    gender, model_type, self.model_dir, g)
                    break
                except FileNotFoundError as e:
                    first = first or e
                except BadInputError as e:  # a malformed model file fails every clip: stop the run
                    if self.model_dir is None:
                        raise
                    raise FatalRenderError("setup", f"--body-models: {e}", e.path or self.model_dir) from e
            else:
                assert first is not None
                raise FatalRenderError("setup", f"--body-models: {first}", self.model_dir) from first
        return self._bodies[key]

    def colors(self, body, model_type: str, avatar: Avatar, pose_width: int) -> np.ndarray:
        key = (id(body), avatar.name)
        if key not in self._colors:
            rest = body.pose(np.zeros((1, pose_width)), np.zeros((1, 3)), avatar.betas)
            labels = region_labels(np.asarray(rest.vertices[0]), np.asarray(rest.joints[0]), avatar.style)
            self._colors[key] = vertex_colors(labels, avatar)
        return self._colors[key]

    def texture(self, body, avatar: Avatar):
        """(UVLayout, image) when the avatar names a UV texture that fits this (real) body, else None."""
        if avatar.texture is None:
            return None
        key = (id(body), avatar.name, "texture")
        if key not in self._colors:
            found = None
            if getattr(body, "kind", "procedural") == "procedural":
                log.info("avatar %s: UV texture ignored on the procedural body (no SMPL UV layout); "
                         "using region colours", avatar.name)
            else:
                layout = load_uv_layout(avatar.texture.uv_path)
                if layout.num_body_vertices != body.num_vertices:
                    log.warning("avatar %s: UV layout %s has %d vertices, the %s body %d; using region colours",
                                avatar.name, avatar.texture.uv_path, layout.num_body_vertices, body.kind,
                                body.num_vertices)
                else:
                    found = (layout, load_texture_image(avatar.texture.image_path))
            self._colors[key] = found
        return self._colors[key]

    def normals(self, body) -> VertexNormals:
        from lavimo.render.scene import VertexNormals

        key = id(body)
        if key not in self._normals:
            faces = np.asarray(body.faces)
            self._normals[key] = VertexNormals(faces, int(faces.max()) + 1)
        return self._normals[key]

    def lod(self, body, lod: str | int, size: int) -> tuple[LevelOfDetail, VertexNormals]:
        """The body's level of detail for ``size``-pixel frames and the normals of the reduced mesh (computed
        once per body; see :mod:`lavimo.render.lod`)."""
        from lavimo.render.scene import VertexNormals

        key = (id(body), str(lod), int(size))
        if key not in self._lods:
            t0 = time.perf_counter()
            d = body_lod(body, lod, size)
            if d.is_full:
                normals = self.normals(body)
            else:
                normals = VertexNormals(d.local_faces, len(d.used))
                log.info("body %s: level of detail %d of %d faces (%d vertices) for %d px frames, %.2f s",
                         getattr(body, "kind", "?"), d.num_faces, d.full_faces, len(d.used), size,
                         time.perf_counter() - t0)
            self._lods[key] = (d, normals)
        return self._lods[key]


@dataclass
class PreparedClip:
    """Everything to render one clip, except the per-chunk vertices/normals (streamed)."""

    clip: Clip
    meta: dict
    faces: np.ndarray
    colors: np.ndarray
    light: LightSetup
    target_xy: np.ndarray
    floor_z: float
    texture: tuple | None = None  # (UVLayout, image) for real-SMPL UV textures
    normals: VertexNormals | None = None
    lod: LevelOfDetail | None = None
    shading: str = "pixel"


def prepare_clip(clip: Clip, cfg: RenderConfig, avatars: list[Avatar], lights: list[LightSetup],
                 bodies: BodyCache, camera: dict) -> tuple[PreparedClip, np.ndarray]:
    """Load, select frames, mirror, pose; returns the prepared clip and the vertices to draw (T, U, 3) float32:
    all V body vertices for the full mesh, else the level of detail's ``used`` vertices (``prepared.faces``,
    ``colors`` and ``normals`` then refer to those).

    Raises:
        BadInputError: bad or missing AMASS file, frames out of range, a clip selecting no frames.
    """
    from lavimo.body.model import mirror_amass
    from lavimo.render.trajectory import follow_trajectory

    _, path = amass_file(cfg.amass_root, clip.amass_path)
    motion = load_amass(path)
    if clip.frames is None:
        try:
            clip = clip.resolve(motion.num_frames, motion.fps)
        except ValueError as e:
            raise BadInputError(path, "frames", str(e)) from e
    frames = np.asarray(clip.frames, dtype=np.int64)
    if len(frames) == 0:
        raise BadInputError(path, "frames", f"clip selects no frames ({motion.num_frames} frames at {motion.fps:g} fps)")
    if frames.min() < 0 or frames.max() >= motion.num_frames:
        raise BadInputError(path, "frames", f"frame indices outside 0..{motion.num_frames - 1}")
    poses, trans = motion.poses[frames], motion.trans[frames]
    if clip.mirrored:
        poses, trans = mirror_amass(poses, trans)
    ai, li = choose_avatar_light(clip, cfg.seed, len(avatars), min(cfg.num_lights, len(lights)))
    avatar, light = avatars[ai], lights[li]
    body = bodies.body(motion.model_type, avatar.gender)
    out = body.pose(poses, trans, avatar.betas)
    verts = np.asarray(out.vertices, dtype=np.float32)
    joints = np.asarray(out.joints)
    colors = bodies.colors(body, motion.model_type, avatar, poses.shape[1])
    texture = bodies.texture(body, avatar)
    traj = follow_trajectory(joints[:, 0], verts[:, :, 2].min(axis=1), clip.fps)
    if texture is not None:  # UV layouts are split at seams over the full mesh: textured avatars stay full
        lod, normals = full_detail(body.faces), bodies.normals(body)
    else:
        lod, normals = bodies.lod(body, cfg.lod, cfg.size)
    shading = resolve_shading(cfg.shading, cfg.size, texture is not None)
    faces, num_vertices = np.asarray(body.faces), int(verts.shape[1])
    if not lod.is_full:
        verts = np.ascontiguousarray(verts[:, lod.used])
        faces, colors = lod.local_faces, colors[lod.used]
    meta = {
        "keyid": clip.keyid,
        "dataset": clip.dataset,
        "split": clip.split,
        "amass_path": clip.amass_path,
        "amass_fps": motion.fps,
        "frames": [int(f) for f in frames],
        "num_frames": int(len(frames)),
        "fps": float(clip.fps),
        "size": [cfg.size, cfg.size],
        "mirrored": bool(clip.mirrored),
        "seed": cfg.seed,
        "avatar": dict(avatar.to_dict(), index=ai, chosen_by=base_keyid(clip),
                       appearance_used="uv_texture" if texture else "region_colors"),
        "light": dict(light.to_dict(), chosen_from_first=min(cfg.num_lights, len(lights))),
        "camera": camera,
        "body_model": {"kind": getattr(body, "kind", "unknown"), "model_type": motion.model_type,
                       "gender": getattr(body, "gender", avatar.gender), "model_dir": cfg.body_models,
                       "num_vertices": num_vertices},
        "trajectory": traj.to_dict(),
        "lod": dict(lod.to_dict(), mode=parse_lod(cfg.lod), reason="uv texture" if texture is not None else None),
        "shading": shading,
        "video": {"codec": "h264", "pix_fmt": "yuv420p", "container": "mp4", "crf": cfg.crf, "preset": cfg.preset},
        "version": tool_version(),
    }
    prepared = PreparedClip(clip=clip, meta=meta, faces=faces, colors=colors, light=light,
                            target_xy=traj.target_xy, floor_z=traj.floor_z, texture=texture,
                            normals=normals, lod=lod, shading=shading)
    return prepared, verts


class _Producer(threading.Thread):
    """Pose-ahead thread: puts ("start", PreparedClip) / ("chunk", verts, normals, shaded colours or None) /
    ("end",) / ("error", ...). ``renderer`` is only read (camera record, rig, vertex shading constants)."""

    def __init__(self, clips: list[Clip], cfg: RenderConfig, avatars, lights, renderer: SceneRenderer,
                 chunk: int = CHUNK_FRAMES):
        super().__init__(name="pose-ahead", daemon=True)
        self.clips, self.cfg, self.avatars, self.lights = clips, cfg, avatars, lights
        self.camera = renderer.describe()
        self.renderer = renderer
        self.chunk = chunk
        self.q: queue.Queue = queue.Queue(maxsize=6)
        self.stop = threading.Event()
        self.bodies = BodyCache(cfg.body_models)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for clip in self.clips:
                if self.stop.is_set():
                    return
                try:
                    prepared, verts = prepare_clip(clip, self.cfg, self.avatars, self.lights, self.bodies,
                                                   self.camera)
                except FatalRenderError as e:
                    self._put(("fatal", e))
                    return
                except BadInputError as e:
                    self._put(("error", clip, str(e)))
                    continue
                except Exception as e:  # noqa: BLE001 - one clip's failure must not stop the run
                    log.debug("preparing %s failed", clip.keyid, exc_info=True)
                    self._put(("error", clip, f"{type(e).__name__}: {e}"))
                    continue
                if not self._put(("start", prepared)):
                    return
                try:
                    shade = (self.renderer.vertex_shading(prepared.light) if prepared.shading == "vertex"
                             else None)
                    for i in range(0, len(verts), self.chunk):
                        v = verts[i:i + self.chunk]
                        n = prepared.normals(v)
                        c = None
                        if shade is not None:  # in the renderer's base-rig frame (body moved, not the camera)
                            off = np.empty((len(v), 1, 3), dtype=np.float32)
                            off[:, 0, :2] = prepared.target_xy[i:i + len(v)]
                            off[:, 0, 2] = prepared.floor_z
                            c = shade(v - off, n, prepared.colors)
                        if not self._put(("chunk", v, n, c)):
                            return
                except Exception as e:  # noqa: BLE001
                    log.debug("posing %s failed", clip.keyid, exc_info=True)
                    self._put(("abort", clip, f"{type(e).__name__}: {e}"))
                    continue
                self._put(("end", clip))
        finally:
            self._put(("done",))


def render_clips(clips: Iterable[Clip], cfg: RenderConfig, renderer: SceneRenderer | None = None,
                 on_result: Callable[[ClipResult], None] | None = None,
                 on_frames: Callable[[int], None] | None = None,
                 stop: Callable[[], bool] | None = None) -> list[ClipResult]:
    """Render clips in this process (one EGL context).

    A clip whose outputs pass :func:`verify_outputs` is skipped unless ``cfg.overwrite``; one whose outputs
    exist but fail it (a truncated mp4, a sidecar that does not match) is rendered again, with the reason in
    its result (``"re-rendered: ..."``). A clip with an invalid keyid fails without touching the disk.

    Per-clip failures are returned as ``ClipResult(status="failed", reason=...)``; the others render.
    ``on_result`` is called after each clip, ``on_frames(n)`` after each rendered chunk (progress).
    ``stop`` is polled between frames: once it returns True the clip in flight is abandoned (its temporary
    file removed, no result for it) and the results so far are returned.

    Raises:
        ValueError: an invalid ``cfg.lod`` / ``cfg.shading``.
        FatalRenderError: a missing or malformed body-model file, or a full disk (the clip in flight is
            abandoned first; the results so far have been passed to ``on_result``).
    """
    from lavimo.render.scene import SceneRenderer

    parse_lod(cfg.lod)                    # bad settings stop here (ValueError), not clip by clip
    resolve_shading(cfg.shading, cfg.size)
    avatars = load_avatars(cfg.avatars_dir)
    lights = load_lights(cfg.lights_path)
    stopping = stop or (lambda: False)
    results: list[ClipResult] = []

    def emit(r: ClipResult) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    redo: dict[str, str] = {}
    todo = _clips_to_render(clips, cfg, emit, stopping, redo)
    if not todo or stopping():
        return results
    own = renderer is None
    renderer = renderer or SceneRenderer(cfg.size)
    producer = _Producer(todo, cfg, avatars, lights, renderer)
    producer.start()
    writer = _ClipWriter(renderer, cfg, emit, on_frames, stopping, redo)
    try:
        _render_produced(producer, writer, stopping)
    finally:
        _stop_producer(producer)
        writer.abort()
        if own:
            renderer.close()
    return results


def _clips_to_render(clips: Iterable[Clip], cfg: RenderConfig, emit: Callable[[ClipResult], None],
                     stopping: Callable[[], bool], redo: dict[str, str]) -> list[Clip] | None:
    """The clips to render, in order (None once ``stopping()``). A clip with an invalid keyid fails here (the one
    check of this library boundary: a :class:`Clip` checked its keyid when made, but code may have changed it),
    a clip whose outputs are complete is skipped; ``redo`` gets {keyid: why} of incomplete outputs."""
    todo: list[Clip] = []
    legacy = 0
    for c in clips:
        if stopping():
            return None
        try:
            check_keyid(c.keyid, None, "keyid")
        except BadInputError as e:
            emit(ClipResult(c.keyid, "failed", e.reason))
            continue
        if cfg.overwrite:
            todo.append(c)
            continue
        done, why = verify_outputs(cfg.out_dir, c.keyid)
        if done:
            legacy += why.startswith("legacy")
            emit(ClipResult(c.keyid, "skipped", f"outputs exist ({why})"))
        else:
            if why != NOT_RENDERED:
                redo[c.keyid] = why
                log.info("re-rendering %s: %s", c.keyid, why)
            todo.append(c)
    if legacy:
        log.warning("%d clip(s) skipped on older sidecars without video_size/video_sha256: only checked that each "
                    "mp4 is a complete container (use --overwrite to re-render and record the hashes)", legacy)
    return todo


def _render_produced(producer: _Producer, writer: _ClipWriter, stopping: Callable[[], bool]) -> None:
    """Take the producer's items until it is done (or ``stopping()``) and hand them to ``writer``."""
    while not stopping():
        try:
            item = producer.q.get(timeout=0.2)
        except queue.Empty:
            if not producer.is_alive() and producer.q.empty():
                break  # (the producer always ends with "done"; this is a safety net)
            continue
        kind = item[0]
        if kind == "done":
            break
        if kind == "fatal":
            raise item[1]
        if kind == "error":
            writer.emit(ClipResult(item[1].keyid, "failed", item[2]))
            continue
        if kind == "abort":
            writer.abort()
            writer.emit(ClipResult(item[1].keyid, "failed", writer.failed or item[2]))
            writer.current = None
            continue
        try:
            getattr(writer, kind)(*item[1:])  # start / chunk / end
        except Exception as e:  # noqa: BLE001 - fail this clip, keep going
            if writer.failed_step(e, kind):
                break


class _ClipWriter:
    """The calling thread's side of :func:`render_clips`: owns the EGL context, rasterises the producer's chunks
    and writes one clip's outputs at a time (the video, then the sidecar that marks the clip done)."""

    def __init__(self, renderer: SceneRenderer, cfg: RenderConfig, emit: Callable[[ClipResult], None],
                 on_frames: Callable[[int], None] | None, stopping: Callable[[], bool], redo: dict[str, str]):
        self.renderer, self.cfg, self.emit, self.on_frames, self.stopping, self.redo = (
            renderer, cfg, emit, on_frames, stopping, redo)
        self.video: VideoWriter | None = None
        self.current: PreparedClip | None = None
        self.failed: str | None = None  # why the clip in flight failed (its remaining chunks are dropped)
        self.writing: Path | None = None  # the output file being written (named when the disk is full)
        self.frame_i, self.t0 = 0, 0.0

    def start(self, prepared: PreparedClip) -> None:
        cfg = self.cfg
        self.current, self.failed, self.frame_i, self.t0 = prepared, None, 0, time.perf_counter()
        self.renderer.set_lights(prepared.light)
        self.writing = output_paths(cfg.out_dir, prepared.clip.keyid)[0]
        self.video = VideoWriter(self.writing, (cfg.size, cfg.size), prepared.clip.fps, crf=cfg.crf,
                                 preset=cfg.preset, threads=cfg.encoder_threads)

    def chunk(self, verts: np.ndarray, normals: np.ndarray, shaded: np.ndarray | None) -> None:
        if self.failed is not None:
            return
        current, renderer = self.current, self.renderer
        for k in range(len(verts)):
            if self.stopping():
                break
            if self.frame_i == 0:
                tex = current.texture
                renderer.set_body(current.faces, current.colors, verts[k], normals[k],
                                  *(tex if tex else (None, None)), shading=current.shading)
            target = current.target_xy[self.frame_i]
            layer = renderer.render_layer(verts[k], normals[k], target, current.floor_z,
                                          None if shaded is None else shaded[k])
            # composited on the encoder thread (constants bound now: lights may change later)
            self.video.write(functools.partial(renderer.backdrop.compose, layer, target, renderer._bg))
            self.frame_i += 1
        if self.on_frames:
            self.on_frames(len(verts))

    def end(self, clip: Clip) -> None:  # noqa: ARG002 - the producer's ("end", clip)
        keyid = self.current.clip.keyid
        if self.failed is not None:
            self.emit(ClipResult(keyid, "failed", self.failed))
        else:
            self.video.close()
            self.video = None
            video_sha, video_size = sha256_file(self.writing)
            meta = dict(self.current.meta, video_size=video_size, video_sha256=video_sha)
            self.writing = output_paths(self.cfg.out_dir, keyid)[1]
            write_json(self.writing, meta)  # written last: its presence marks the clip done
            self.emit(ClipResult(keyid, "rendered",
                                 reason=f"re-rendered: {self.redo[keyid]}" if keyid in self.redo else "",
                                 frames=self.frame_i, seconds=time.perf_counter() - self.t0))
        self.current = None

    def abort(self) -> None:
        """Drop the video being written (its temporary file is removed)."""
        if self.video is not None:
            self.video.abort()
            self.video = None

    def failed_step(self, e: Exception, kind: str) -> bool:
        """A start / chunk / end step raised ``e``: the clip in flight fails (a full disk stops the run); returns
        True when rendering should stop (the error came with a stop request)."""
        log.debug("rendering failed", exc_info=True)
        self.abort()
        if is_disk_full(e):
            raise FatalRenderError("disk_full", f"no space left on device writing {self.writing}; free some "
                                   f"space and rerun (finished clips are kept)", self.writing) from e
        if self.stopping():
            return True  # e.g. ffmpeg got the same Ctrl-C: the clip was interrupted, not failed
        if self.current is None:
            raise e
        self.failed = f"{type(e).__name__}: {e}"
        if kind == "end":
            self.emit(ClipResult(self.current.clip.keyid, "failed", self.failed))
            self.current = None
        return False


def _stop_producer(producer: _Producer) -> None:
    """Stop the pose-ahead thread and wait for it: no thread of ours may still run when render_clips returns.

    Issue 24: a daemon thread left inside a torch kernel when the interpreter exits is ended with ``pthread_exit``,
    whose unwind through torch's ``noexcept`` GIL guard calls ``std::terminate`` (SIGABRT instead of the report's
    exit 1). The wait is bounded: every put and every clip checks ``producer.stop``, and emptying the queue
    releases a put that waits for room."""
    producer.stop.set()
    while producer.is_alive():
        try:
            producer.q.get(timeout=0.05)
        except queue.Empty:
            pass
    producer.join()

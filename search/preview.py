"""Skeleton preview videos of a motion (features or joints -> mp4), rendered on demand for databases without
rendered videos, through the project's headless renderer (:mod:`lavimo.render.scene`, pyrender on EGL).

HumanML3D's 22 joints (Y up, metres; features through ``lavimo.dataset.features.features_to_joints``) become one
mesh per frame (:class:`SkeletonMesh`: a cylinder per bone of ``HUMANML3D``'s chains, right red, left blue, spine
grey; a sphere per joint), turned so the first frame faces the camera ``angle_deg`` off the front
(:func:`face_camera`, into the renderer's Z-up AMASS frame) and rendered like ``render-amass`` renders bodies: a
lighting setup of ``assets/lights.json``, the follow camera over a checker floor at the lowest joint, frames
encoded by :class:`lavimo.core.mp4.VideoWriter` (H.264, atomic).

Cache: a hidden ``.{out name}.key`` next to ``out`` holds the sha256 of the joints and every setting (size, fps,
angle, lighting, renderer, :data:`PREVIEW_VERSION`); a call whose key matches returns ``out`` without rendering.
Without an EGL/OpenGL context (or pyrender) a numpy stick figure is drawn instead (:func:`draw`, with a warning);
the key records the renderer, so a later call with a working one replaces it.

Before its first EGL context the module loads triton's native library when triton is installed: Mesa's EGL
driver and triton each bring an LLVM, and triton loaded second (e.g. by a model load after a preview in the
same process) segfaults. So ``lavimo.render`` is imported only inside the functions that render, after that.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lavimo.core import mp4
from lavimo.core.atomic import atomic_path
from lavimo.core.errors import BadInputError
from lavimo.dataset.features import AMASS_TO_HUMANML3D, features_to_joints, get_skeleton

from .model import read_motion_npy

log = logging.getLogger(__name__)

PREVIEW_VERSION = 2  # bump when the look of a preview changes (invalidates cached previews)
MIN_SIZE, MAX_SIZE = 16, 2048
MAX_FPS = 240.0
#: the most frames a preview the server renders holds (30 s at 20 fps); a longer motion is subsampled to it at a
#: lower frame rate, keeping its duration (:func:`cap_frames`)
MAX_PREVIEW_FRAMES = 600

# chain colours in the order of HUMANML3D.chains: right leg, left leg, spine, right arm, left arm
_COLOURS = ((214, 60, 60), (60, 110, 214), (90, 90, 90), (214, 60, 60), (60, 110, 214))
BONE_RADIUS_M = 0.028
JOINT_RADIUS_M = 0.042
HEAD_RADIUS_M = 0.10
_HEAD = 15
_JOINT_RGB = (235, 235, 228)


def to_joints(motion: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
    """(T, 263) features or (T, 22, 3) joints -> (T, 22, 3) float32 joints (metres, Y up). BadInputError
    otherwise."""
    a = np.asarray(motion)
    if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
        raise BadInputError(source, "motion", "expected a finite numeric array")
    if a.ndim == 3 and a.shape[1:] == (22, 3) and len(a) >= 1:
        return a.astype(np.float32)
    if a.ndim == 2 and a.shape[1] == 263 and len(a) >= 1:
        j = features_to_joints(a)
        if not np.isfinite(j).all():
            raise BadInputError(source, "motion", "features give non-finite joints")
        return np.asarray(j, np.float32)
    raise BadInputError(source, "motion", f"shape {a.shape}: expected features (T, 263) or joints (T, 22, 3)")


# ---------------------------------------------------------------------------------------------- skeleton mesh
def _skeleton():
    """``lavimo.dataset.motion.HUMANML3D`` (through ``lavimo.dataset.features``, as the rest of ``search`` does)."""
    return get_skeleton("humanml3d")


def bones() -> list[tuple[int, int, int]]:
    """The skeleton's bones as (parent joint, child joint, chain index), from ``HUMANML3D.chains``."""
    return [(p, c, k) for k, chain in enumerate(_skeleton().chains) for p, c in zip(chain[:-1], chain[1:])]


@dataclass
class SkeletonMesh:
    """A fixed-topology mesh of cylinders (bones) and spheres (joints), posed per frame by :meth:`pose`.

    Attributes:
        faces: (F, 3) int triangles; colors: (V, 4) float32 linear RGBA per vertex.
    """

    faces: np.ndarray
    colors: np.ndarray
    _cyl_v: np.ndarray
    _cyl_n: np.ndarray
    _sph_v: np.ndarray
    _sph_n: np.ndarray
    _bones: np.ndarray     # (B, 2) parent, child
    _radii: np.ndarray     # (J,) joint sphere radii

    @classmethod
    def build(cls, sections: int = 14, subdivisions: int = 2) -> "SkeletonMesh":
        import trimesh

        cyl = trimesh.creation.cylinder(radius=1.0, height=1.0, sections=sections)   # z in [-0.5, 0.5]
        sph = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
        b = bones()
        nj = _skeleton().num_joints
        pairs = np.array([(p, c) for p, c, _ in b], dtype=np.int64)
        cv, sv = len(cyl.vertices), len(sph.vertices)
        faces = [cyl.faces + i * cv for i in range(len(b))]
        faces += [sph.faces + len(b) * cv + j * sv for j in range(nj)]
        joint_chain = np.full(nj, 2)                  # root: spine colour
        for p, c, k in b:
            joint_chain[c] = k
        lin = lambda rgb: (np.asarray(rgb, np.float32) / 255.0) ** 2.2  # noqa: E731 - sRGB -> linear
        cols = [np.tile(np.r_[lin(_COLOURS[k]), 1.0], (cv, 1)) for _, _, k in b]
        cols += [np.tile(np.r_[lin(_JOINT_RGB if j != _HEAD else _COLOURS[2]), 1.0], (sv, 1)) for j in range(nj)]
        radii = np.full(nj, JOINT_RADIUS_M, np.float32)
        radii[_HEAD] = HEAD_RADIUS_M
        return cls(np.concatenate(faces).astype(np.int64), np.concatenate(cols).astype(np.float32),
                   np.asarray(cyl.vertices, np.float32), np.asarray(cyl.vertex_normals, np.float32),
                   np.asarray(sph.vertices, np.float32), np.asarray(sph.vertex_normals, np.float32), pairs, radii)

    def pose(self, joints: np.ndarray, bone_radius: float = BONE_RADIUS_M) -> tuple[np.ndarray, np.ndarray]:
        """(T, J, 3) joints (any right-handed frame, metres) -> vertices, unit normals (T, V, 3) float32."""
        j = np.asarray(joints, np.float64)
        t = len(j)
        a, c = j[:, self._bones[:, 0]], j[:, self._bones[:, 1]]                    # (T, B, 3)
        d = c - a
        length = np.linalg.norm(d, axis=-1)                                        # (T, B)
        ez = np.where(length[..., None] > 1e-9, d / np.maximum(length, 1e-9)[..., None], [0.0, 0.0, 1.0])
        helper = np.where((np.abs(ez[..., 2]) < 0.9)[..., None], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0])
        ex = np.cross(helper, ez)
        ex /= np.linalg.norm(ex, axis=-1, keepdims=True)
        ey = np.cross(ez, ex)
        rot = np.stack([ex, ey, ez], axis=-1)                                      # (T, B, 3, 3) columns
        scale = np.stack([np.full_like(length, bone_radius), np.full_like(length, bone_radius),
                          np.maximum(length, 1e-6)], axis=-1)                      # (T, B, 3)
        cv = np.einsum("tbij,tbvj->tbvi", rot, self._cyl_v[None, None] * scale[:, :, None, :])
        cv += ((a + c) / 2)[:, :, None, :]
        cn = np.einsum("tbij,tbvj->tbvi", rot, self._cyl_n[None, None] / scale[:, :, None, :])
        cn /= np.maximum(np.linalg.norm(cn, axis=-1, keepdims=True), 1e-12)
        sv = j[:, :, None, :] + self._radii[None, :, None, None] * self._sph_v[None, None]
        sn = np.broadcast_to(self._sph_n[None, None], sv.shape)
        verts = np.concatenate([cv.reshape(t, -1, 3), sv.reshape(t, -1, 3)], axis=1).astype(np.float32)
        normals = np.concatenate([cn.reshape(t, -1, 3), sn.reshape(t, -1, 3)], axis=1).astype(np.float32)
        return verts, normals


def face_camera(joints: np.ndarray, angle_deg: float = 30.0) -> np.ndarray:
    """(T, 22, 3) HumanML3D joints (Y up) -> the same rotated about the vertical through the first root so that
    the first frame faces the preview camera ``angle_deg`` off the front; then in the renderer's AMASS frame
    (Z up, the camera looks along +Y), (T, 22, 3) float64 metres."""
    sk = _skeleton()
    r_hip, l_hip, r_sh, l_sh = sk.face_joints
    j0 = np.asarray(joints[0], np.float64)
    across = (j0[r_hip] - j0[l_hip]) + (j0[r_sh] - j0[l_sh])
    fwd = np.cross([0.0, 1.0, 0.0], across)                                       # HumanML3D's facing rule
    a = np.deg2rad(angle_deg)
    want = np.array([np.sin(a), -np.cos(a), 0.0]) @ AMASS_TO_HUMANML3D             # towards the camera (AMASS -y)
    theta = np.arctan2(want[0], want[2]) - (np.arctan2(fwd[0], fwd[2]) if np.hypot(fwd[0], fwd[2]) > 1e-9 else 0.0)
    c, s = np.cos(theta), np.sin(theta)
    ry = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])                    # row vectors: (x, z) += theta
    pivot = np.array([j0[0, 0], 0.0, j0[0, 2]])
    h = (np.asarray(joints, np.float64) - pivot) @ ry + pivot
    return h @ AMASS_TO_HUMANML3D.T                                                 # HumanML3D -> AMASS


# ---------------------------------------------------------------------------------------------- renderers
def _load_triton_first() -> None:
    """Load triton's native library (and its LLVM) before Mesa's EGL driver (and its LLVM): loaded the other way
    round in one process, a later ``import triton`` (torch._dynamo, a model load) segfaults. A no-op when
    triton is not installed or already loaded; cheap once torch is imported."""
    import importlib
    import importlib.util
    import sys

    if "triton._C.libtriton" in sys.modules:
        return
    try:
        if importlib.util.find_spec("triton") is not None:
            importlib.import_module("triton._C.libtriton")
    except Exception as exc:  # noqa: BLE001 - a broken triton install only matters to its own users
        log.debug("triton not preloaded: %s", exc)


def render_frames(joints: np.ndarray, size: int = 256, fps: float = 20.0, angle_deg: float = 30.0, light: int = 0,
                  writer=None) -> np.ndarray | None:
    """(T, 22, 3) HumanML3D joints -> (T, size, size, 3) uint8 frames through :class:`lavimo.render.scene.SceneRenderer`
    (raises ``lavimo.render.scene.RendererSetupError`` without EGL). With ``writer`` (a :class:`lavimo.core.mp4.VideoWriter`)
    the frames are written to it instead and None is returned."""
    _load_triton_first()  # before the renderer's first import (lavimo.render.scene sets PYOPENGL_PLATFORM=egl)
    from lavimo.render.lights import load_lights
    from lavimo.render.scene import SceneRenderer
    from lavimo.render.trajectory import follow_trajectory

    world = face_camera(joints, angle_deg)
    mesh = SkeletonMesh.build()
    verts, normals = mesh.pose(world)
    traj = follow_trajectory(world[:, 0], verts[:, :, 2].min(axis=1), fps)
    setups = load_lights()
    setup = setups[int(light) % len(setups)]
    renderer = SceneRenderer(size)  # one EGL context per call: a context stays bound to its thread
    frames = None if writer is not None else np.empty((len(world), size, size, 3), np.uint8)
    try:
        renderer.set_lights(setup)
        renderer.set_body(mesh.faces, mesh.colors, verts[0], normals[0])
        for k in range(len(world)):
            target = traj.target_xy[k]
            layer = renderer.render_layer(verts[k], normals[k], target, traj.floor_z)
            img = renderer.compose(layer, target)
            if writer is not None:
                writer.write(img)
            else:
                frames[k] = img
    finally:
        renderer.close()
    return frames


def _line(img: np.ndarray, p0, p1, colour, width: int) -> None:
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    xs = np.linspace(p0[0], p1[0], n).round().astype(int)
    ys = np.linspace(p0[1], p1[1], n).round().astype(int)
    h, w = img.shape[:2]
    r = width // 2
    for dx in range(-r, r + 1):
        for dy in range(-r, r + 1):
            x, y = xs + dx, ys + dy
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            img[y[ok], x[ok]] = colour


def draw(joints: np.ndarray, size: int = 256, angle_deg: float = 30.0) -> np.ndarray:
    """Fallback without EGL: (T, 22, 3) joints -> (T, size, size, 3) uint8 stick-figure frames drawn in numpy
    (orthographic view ``angle_deg`` off the front, the view following the root, white background)."""
    chains = _skeleton().chains
    a = np.deg2rad(angle_deg)
    t = len(joints)
    frames = np.full((t, size, size, 3), 255, np.uint8)
    scale = size / 2.4  # 2.4 m of world across the frame
    floor = float(joints[..., 1].min())
    width = max(2, size // 80)
    for i in range(t):
        j = joints[i]
        x = (j[:, 0] - j[0, 0]) * np.cos(a) + (j[:, 2] - j[0, 2]) * np.sin(a)
        y = j[:, 1] - floor
        px = size / 2 + x * scale
        py = size * 0.92 - y * scale
        frames[i, int(size * 0.92):int(size * 0.92) + 1] = 200
        for chain, colour in zip(chains, _COLOURS):
            for p, c in zip(chain[:-1], chain[1:]):
                _line(frames[i], (px[p], py[p]), (px[c], py[c]), colour, width)
        hx, hy = int(round(px[_HEAD])), int(round(py[_HEAD]))
        rr = max(3, size // 30)
        yy, xx = np.ogrid[:size, :size]
        frames[i][(xx - hx) ** 2 + (yy - hy) ** 2 <= rr * rr] = (90, 90, 90)
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """(T, H, W, 3) uint8 -> H.264 mp4 at ``path``, atomically (``lavimo.core.mp4.write_video`` is; even sizes, so
    browsers play it)."""
    f = np.asarray(frames, np.uint8)
    f = f[:, : f.shape[1] // 2 * 2, : f.shape[2] // 2 * 2]
    path = Path(path)
    mp4.write_video(path, f, fps=fps)
    return path


# ---------------------------------------------------------------------------------------------- entry point
@functools.lru_cache(maxsize=1)
def egl_available() -> bool:
    """Whether pyrender can be imported and an EGL context created (a 16x16 test context; once per process)."""
    _load_triton_first()
    try:
        from lavimo.render import scene  # imports pyrender with PYOPENGL_PLATFORM=egl unless set

        scene.pyrender.OffscreenRenderer(16, 16).delete()
        return True
    except Exception:  # noqa: BLE001 - any import/EGL failure means "no renderer"
        return False


def _key_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.key")


def cache_key(joints: np.ndarray, settings: dict) -> str:
    """sha256 hex of the (T, 22, 3) float32 joints and the JSON of ``settings``."""
    h = hashlib.sha256()
    j = np.ascontiguousarray(joints, dtype="<f4")
    h.update(json.dumps({"shape": list(j.shape), "version": PREVIEW_VERSION, **settings}, sort_keys=True).encode())
    h.update(j.tobytes())
    return h.hexdigest()


def _cached(out: Path, key: str) -> bool:
    try:
        return out.is_file() and _key_path(out).read_text().strip() == key
    except (OSError, UnicodeDecodeError):
        return False


def cap_frames(joints: np.ndarray, fps: float, max_frames: int | None) -> tuple[np.ndarray, float]:
    """(T, ...) frames at ``fps`` -> at most ``max_frames`` of them, keeping the duration: every s-th frame, s =
    ceil(T / max_frames), at ``fps`` / s. Unchanged when ``max_frames`` is None or T fits."""
    t = len(joints)
    if max_frames is None or t <= max_frames:
        return joints, fps
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    stride = -(-t // int(max_frames))
    return joints[::stride], fps / stride


def render_preview(motion: np.ndarray | str | os.PathLike, out: str | os.PathLike, fps: float = 20.0,
                   size: int = 256, force: bool = False, angle_deg: float = 30.0, light: int = 0,
                   renderer: str = "auto", max_frames: int | None = None) -> Path:
    """Features (T, 263) or joints (T, 22, 3) (array, or ``.npy`` path read without pickle) -> a skeleton mp4
    at ``out`` (``size`` x ``size`` pixels, one frame per motion frame at ``fps``; with ``max_frames``, a longer
    motion is subsampled to at most that many frames at a lower frame rate, :func:`cap_frames`), rendered through
    :mod:`lavimo.render.scene` (module docstring); the numpy stick figure when EGL is unavailable (``renderer``:
    "auto", "egl" (no fallback) or "numpy"). An existing ``out`` whose cache key (joints and settings) matches
    is returned as is unless ``force``. Raises BadInputError for a bad motion file, ValueError for bad
    settings."""
    if renderer not in ("auto", "egl", "numpy"):
        raise ValueError(f"renderer must be 'auto', 'egl' or 'numpy', got {renderer!r}")
    if not (MIN_SIZE <= int(size) <= MAX_SIZE) or int(size) % 2:
        raise ValueError(f"--size must be an even number of pixels in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    if not (0 < float(fps) <= MAX_FPS):
        raise ValueError(f"--fps must be in (0, {MAX_FPS:g}], got {fps}")
    size, fps = int(size), float(fps)
    out = Path(out)
    src = None
    if isinstance(motion, (str, os.PathLike)):
        src = Path(motion)
        if not src.is_file():
            raise BadInputError(src, "motion", "file not found")
        motion = read_motion_npy(src)
    joints, fps = cap_frames(to_joints(motion, src), fps, max_frames)
    use = renderer
    if use == "auto":
        use = "egl" if egl_available() else "numpy"
        if use == "numpy":
            log.warning("no EGL/OpenGL context for the skeleton renderer: drawing a numpy stick figure instead "
                        "(install Mesa's EGL, libegl1 libegl-mesa0 libgl1-mesa-dri, for rendered previews)")
    settings = {"size": size, "fps": fps, "angle_deg": float(angle_deg), "light": int(light), "renderer": use}
    key = cache_key(joints, settings)
    if not force and _cached(out, key):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if use == "egl":
        with mp4.VideoWriter(out, (size, size), fps) as writer:  # atomic: ``out`` appears on close
            render_frames(joints, size, fps, angle_deg, light, writer=writer)
    else:
        write_mp4(out, draw(joints, size, angle_deg), fps)
    with atomic_path(_key_path(out)) as tmp:
        Path(tmp).write_text(key + "\n")
    return out


#: the folder of an index's previews, inside the index directory: shard videos copied at indexing time
#: (``IDX/previews/<keyid>.mp4``, :mod:`lavimo.search.index`) and skeleton previews (the page's ``/skeleton/{n}``
#: and an indexing-time render write the same files: ``IDX/previews/skeleton-<size>/<keyid>.mp4``)
PREVIEWS = "previews"
SKELETON_SIZE = 256


def skeleton_preview_path(root: str | os.PathLike, keyid: str, size: int = SKELETON_SIZE) -> Path:
    """``root/previews/skeleton-<size>/<keyid>.mp4`` (``keyid`` a plain file name:
    ``lavimo.core.keyids.child_path``)."""
    from lavimo.core.keyids import child_path

    return child_path(Path(root) / PREVIEWS / f"skeleton-{int(size)}", f"{keyid}.mp4")


def skeleton_preview(motion: np.ndarray | str | os.PathLike, root: str | os.PathLike, keyid: str,
                     size: int = SKELETON_SIZE, fps: float = 20.0, max_frames: int | None = MAX_PREVIEW_FRAMES
                     ) -> Path:
    """The skeleton preview of one indexed motion (features (T, 263) or joints (T, 22, 3)), rendered at ``size``
    pixels (>= 256 for the page: never an upscaled small video) into :func:`skeleton_preview_path` (cached by
    :func:`render_preview`'s key: a second call with the same motion returns the file), at most ``max_frames``
    frames (:func:`cap_frames`). For an indexing-time render (so no preview is black on first view) and for the
    page's on-demand one."""
    return render_preview(motion, skeleton_preview_path(root, keyid, size), fps=fps, size=size,
                          max_frames=max_frames)

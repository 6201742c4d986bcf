"""The pyrender EGL scene: fixed camera rig framing one person, checker floor, camera-frame point lights.

World frame = AMASS (Z-up, metres). The camera looks along AMASS +y from ``distance_m`` behind the
target, so the image's right is AMASS +x (a mirrored motion, x -> -x, renders as the horizontal reflection
of the image) and its up is AMASS +z. pyrender uses OpenGL camera conventions (the camera looks down its
local -z, y up); the lights of ``assets/lights.json`` are children of the camera node, so they move with the
follow camera (see :mod:`lavimo.render.trajectory`). The rasteriser keeps the camera at the base rig and
translates the body by the opposite of the follow offset instead (the same image). The body mesh is
created once per clip and its vertex buffer is rewritten in place every frame (``glBufferSubData``); after
the clip's first frame (a full pyrender render) a frame is only "upload, draw, resolve, read colour" with
the shader state pyrender left behind (see :meth:`SceneRenderer._lean_layer`), checked once against
pyrender's own render.
Anti-aliasing: pyrender renders into a 4-sample MSAA framebuffer (supported by Mesa llvmpipe and NVIDIA).
Only the avatar is rasterised per frame; the sky and the world-fixed checker floor are a precomputed
backdrop it is composited over (see :class:`Backdrop`), which halves the per-frame raster work on llvmpipe.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import numpy as np

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pyrender  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from lavimo.render.lights import LightSetup  # noqa: E402

log = logging.getLogger(__name__)


class RendererSetupError(RuntimeError):
    """The renderer cannot start (no EGL / OpenGL); the message says what to install."""


EGL_HELP = ("could not create a headless EGL OpenGL context. Install Mesa's EGL for CPU rendering "
            "(Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgl1) or the NVIDIA "
            "driver with its EGL library on GPU machines, and run with PYOPENGL_PLATFORM=egl")


@dataclass(frozen=True)
class CameraRig:
    """The fixed camera, relative to the trajectory target and the floor (metres, degrees).

    The eye is ``distance_m`` from the target along AMASS -y, ``eye_height_m`` above the floor, looking at
    the point ``look_at_height_m`` above the floor. ``yfov_deg`` frames a 1.8 m person with room for jumps
    and stretched arms at ``max_offset_m`` from the target.
    """

    distance_m: float = 5.0
    eye_height_m: float = 1.4
    look_at_height_m: float = 1.1
    yfov_deg: float = 31.0
    znear: float = 0.1
    zfar: float = 40.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(type="perspective", view_direction="AMASS +y (image right = AMASS +x, image up = AMASS +z)")
        return d

    def pose(self, target_xy: np.ndarray, floor_z: float) -> np.ndarray:
        """(4, 4) camera-to-world pose (OpenGL camera axes) for a ground-plane target (AMASS x, y)."""
        eye = np.array([target_xy[0], target_xy[1] - self.distance_m, floor_z + self.eye_height_m])
        at = np.array([target_xy[0], target_xy[1], floor_z + self.look_at_height_m])
        fwd = at - eye
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, eye
        return m

    def target_in_camera(self) -> np.ndarray:
        """(3,) the look-at point in the OpenGL camera frame (on the -z axis)."""
        dz = self.eye_height_m - self.look_at_height_m
        return np.array([0.0, 0.0, -float(np.hypot(self.distance_m, dz))])


class VertexNormals:
    """Smooth per-vertex normals for a fixed triangle list, batched over frames.

    Area-weighted face normals summed onto vertices through a sparse (V, F) incidence matrix; the arithmetic
    runs on contiguous (3, T, ...) component planes.
    """

    def __init__(self, faces: np.ndarray, num_vertices: int):
        self.faces = np.asarray(faces, dtype=np.int64)
        f = len(self.faces)
        rows = self.faces.reshape(-1)
        cols = np.repeat(np.arange(f), 3)
        self.incidence = sp.csr_matrix((np.ones(3 * f, dtype=np.float32), (rows, cols)), shape=(num_vertices, f))
        self._incidence_t = self.incidence.T.tocsr()                               # (F, V)

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        """(T, V, 3) or (V, 3) float32 positions -> unit normals of the same shape (float32)."""
        v = np.asarray(vertices, dtype=np.float32)
        single = v.ndim == 2
        if single:
            v = v[None]
        t = v.shape[0]
        p = np.ascontiguousarray(v.transpose(2, 0, 1))                             # (3, T, V)
        a, b, c = (p[:, :, self.faces[:, k]] for k in range(3))                   # (3, T, F)
        b -= a
        c -= a
        fn = np.stack([b[1] * c[2] - b[2] * c[1], b[2] * c[0] - b[0] * c[2], b[0] * c[1] - b[1] * c[0]])
        vn = np.asarray(fn.reshape(3 * t, -1) @ self._incidence_t).reshape(3, t, -1)  # area-weighted sums
        vn *= 1.0 / np.maximum(np.sqrt(vn[0] * vn[0] + vn[1] * vn[1] + vn[2] * vn[2]), 1e-12)
        out = np.ascontiguousarray(vn.transpose(1, 2, 0), dtype=np.float32)
        return out[0] if single else out


class VertexShading:
    """pyrender's metallic-roughness shading (its ``mesh.frag``) evaluated per VERTEX, in numpy.

    For small frames the fragment shader dominates llvmpipe's raster time (a triangle covers a few pixels but
    is shaded in 4x4 blocks); shading the ~1-3k vertices of a reduced body here and drawing with pyrender's
    unlit ``FLAT`` shader (colours interpolated across each triangle, Gouraud shading) costs a quarter of
    that. Same model as pyrender: point lights with 1/d² fall-off, GGX distribution, Schlick-Smith
    geometry (k = (r + 1)² / 8), Schlick Fresnel with f0 = 0.04 (dielectric), diffuse (1 - F) · 0.96 / π,
    plus ambient; the vertex colour multiplies the result, then gamma 1/2.2 and clamping, as pyrender does.
    Differences to pyrender's per-pixel result come only from interpolating across triangles.

    Positions are in the base-rig world frame (the renderer's camera at target 0, floor 0, see
    :meth:`SceneRenderer.render_layer`): pass ``vertices - offset`` for a frame's rig offset.
    """

    def __init__(self, setup: LightSetup, rig: CameraRig, roughness: float = 0.75, metallic: float = 0.0):
        cam = rig.pose(np.zeros(2), 0.0)
        self.cam_pos = cam[:3, 3].astype(np.float32)
        target = rig.target_in_camera()
        self.light_pos = np.array([cam[:3, :3] @ np.asarray(l.position_gl) + cam[:3, 3] for l in setup.lights],
                                  dtype=np.float32)                                   # (L, 3) world
        self.light_rad = np.array([np.asarray(l.color) * setup.pyrender_intensity(l, target) for l in setup.lights],
                                  dtype=np.float32)                                   # (L, 3) colour x intensity
        self.ambient = np.float32(setup.ambient)
        self.roughness = float(np.clip(roughness, 0.04, 1.0))
        self.metallic = float(np.clip(metallic, 0.0, 1.0))

    def __call__(self, vertices: np.ndarray, normals: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """vertices, normals (..., U, 3) base-rig world frame; colors (U, 4) linear RGBA -> (..., U, 4) float32
        display RGBA (what pyrender's fragment shader would output at each vertex)."""
        shape = np.shape(vertices)[:-1]
        # component planes (3, N): every step below is a contiguous float32 vector operation
        p = np.ascontiguousarray(np.asarray(vertices, dtype=np.float32).reshape(-1, 3).T)
        n = np.ascontiguousarray(np.asarray(normals, dtype=np.float32).reshape(-1, 3).T)
        n *= 1.0 / np.maximum(np.sqrt(_dot(n, n)), 1e-12)
        r, m = self.roughness, self.metallic
        f0 = 0.04 * (1 - m) + m            # grey base colour (1, 1, 1): pyrender's base_color_factor
        c_diff = (1 - 0.04) * (1 - m)
        k = (r + 1) ** 2 / 8
        a2 = (r * r) ** 2
        v = self.cam_pos[:, None] - p
        v *= 1.0 / np.sqrt(_dot(v, v))
        nv = np.clip(np.abs(_dot(n, v)), 0.001, 1.0)
        g1 = nv / (nv * (1 - k) + k)
        color = np.zeros_like(p)
        for lp, rad in zip(self.light_pos, self.light_rad):
            l = lp[:, None] - p
            d2 = _dot(l, l)
            l *= 1.0 / np.sqrt(d2)
            h = l + v
            h *= 1.0 / np.maximum(np.sqrt(_dot(h, h)), 1e-12)
            nl = np.clip(_dot(n, l), 0.001, 1.0)
            nh = np.clip(_dot(n, h), 0.0, 1.0)
            vh = np.clip(_dot(v, h), 0.0, 1.0)
            f = (1 - vh) ** 5
            f *= 1 - f0
            f += f0
            dd = nh * nh * (a2 - 1) + 1
            spec = f * (g1 * nl / (nl * (1 - k) + k)) * (a2 / np.pi) / (dd * dd * (4 * nl * nv + 0.001))
            w = (1 - f) * (c_diff / np.pi) + spec
            w *= nl / d2
            color += rad[:, None] * w[None]
        color += self.ambient
        cols = np.asarray(colors, dtype=np.float32)
        u = cols.shape[0]
        color = color.reshape(3, -1, u) * cols[:, :3].T[:, None, :]
        np.maximum(color, 0.0, out=color)
        out = np.empty((int(np.prod(shape[:-1], dtype=np.int64)), u, 4), dtype=np.float32)
        out[..., :3] = np.clip(color ** (1 / 2.2), 0.0, 1.0).transpose(1, 2, 0)
        out[..., 3] = np.clip(cols[:, 3], 0.0, 1.0)
        return out.reshape(shape + (4,))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (3, N) component planes -> (N,)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _filtered_square(x: np.ndarray, tile: float, w: np.ndarray) -> np.ndarray:
    """Box-filtered square wave (0 on [0, tile), 1 on [tile, 2 tile), period 2 tile) over width ``w``."""

    def integral(u: np.ndarray) -> np.ndarray:
        return np.floor(u / (2 * tile)) * tile + np.maximum(0.0, np.mod(u, 2 * tile) - tile)

    return (integral(x + 0.5 * w) - integral(x - 0.5 * w)) / w


class Backdrop:
    """Sky and an infinite checker floor behind the avatar, composited per frame (no floor rasterisation).

    The camera only translates with the trajectory and the lights live in the camera frame, so the floor's
    shading per pixel never changes: it is rendered once per lighting setup (a white floor, 4x MSAA) as a
    premultiplied ``shade`` (H, W, 3) plus the sky's share. Per frame only the checker albedo moves (the
    pattern is fixed in the world). The camera has no yaw or roll, so a floor pixel's depth ``y`` depends on
    its row only and its ``x`` is ``A[row] * column_offset``: the pattern is the XOR of a per-row term (from
    ``y``) and a per-row periodic function of ``x``, which is tabulated once per row at ``bins`` phases
    (box-filtered over the row's pixel footprint, i.e. anti-aliased and fading to the mean tone towards the
    horizon). A frame then costs one table gather and a few multiply-adds per floor pixel.
    """

    def __init__(self, size: int, rig: "CameraRig", tile_m: float, tones: tuple[float, float], bins: int = 512):
        self.size, self.rig, self.tile = size, rig, float(tile_m)
        self.tones = np.asarray(tones, dtype=np.float32)
        self.bins = int(bins)
        period = 2 * self.tile
        pose = rig.pose(np.zeros(2), 0.0)
        t = np.tan(np.radians(rig.yfov_deg) / 2)
        c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1
        # rays of the pixel centres; pose has no yaw/roll, so d_x = c_col * t and (d_y, d_z) depend on the row
        rows_dir = np.stack([np.zeros(size), -c * t, -np.ones(size)], -1) @ pose[:3, :3].T  # (H, 3)
        eye = pose[:3, 3]
        hit = rows_dir[:, 2] < -1e-9
        s = np.where(hit, -eye[2] / np.where(hit, rows_dir[:, 2], -1.0), np.inf)          # ray length scale
        far = s > 500.0
        y = np.where(far, 0.0, eye[1] + s * rows_dir[:, 1])                                  # depth per row
        a_row = np.where(far, 0.0, s * t)                                                   # x = a_row * c_col
        wy = np.where(far, 1e6, np.maximum(np.abs(np.gradient(y)), 1e-4))
        wx = np.where(far, 1e6, np.maximum(a_row * (2.0 / size), np.abs(np.gradient(a_row)) * 0.5) + 1e-4)
        self.row0 = int(np.argmax(hit)) if hit.any() else size                              # first floor row
        r = slice(self.row0, size)
        self._y, self._wy = y[r], wy[r]
        # x in table bins, shifted positive (the gather wraps with & (bins - 1))
        x = a_row[r, None] * c[None, :]
        self._xb = (x / period * self.bins + 64 * self.bins).astype(np.float32)
        phases = (np.arange(self.bins) + 0.5) / self.bins * period
        self._table = _filtered_square(phases[None, :], self.tile, wx[r, None]).astype(np.float32).ravel()
        self._row_off = (np.arange(size - self.row0, dtype=np.int64) * self.bins)[:, None]
        if self.bins & (self.bins - 1):
            raise ValueError("bins must be a power of two")
        self.shade: dict = {}  # LightSetup -> prepare() constants

    def prepare(self, shade: np.ndarray, sky_w: np.ndarray, sky: tuple[float, float, float]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-lighting constants: premultiplied floor shade of the floor rows (R, W, 3) * 255, the sky term of
        those rows (R, W, 3) * 255 and the finished uint8 rows above the floor (row0, W, 3)."""
        skyterm = sky_w[..., None] * np.asarray(sky, dtype=np.float32)[None, None]
        top = np.clip(skyterm[:self.row0] * 255 + 0.5, 0, 255).astype(np.uint8)
        return ((shade[self.row0:] * 255).astype(np.float32), (skyterm[self.row0:] * 255 + 0.5).astype(np.float32),
                top)

    def pattern(self, target_xy: np.ndarray) -> np.ndarray:
        """(R, W) float32 albedo factor of the floor rows (``row0`` on) for a camera target (world-fixed checker)."""
        step = 2 * self.tile
        ox, oy = (float(v) % step for v in target_xy)  # only the phase matters
        idx = (self._xb + np.float32(ox / step * self.bins)).astype(np.int64)
        idx &= self.bins - 1
        idx += self._row_off
        fx = np.take(self._table, idx)
        fy = _filtered_square(self._y + oy, self.tile, self._wy).astype(np.float32)[:, None]
        # checker = fx XOR fy (filtered) = fx * (1 - 2 fy) + fy; tone = t0 + (t1 - t0) * checker
        dt = self.tones[1] - self.tones[0]
        return fx * (dt * (1 - 2 * fy)) + (self.tones[0] + dt * fy)

    def full_pattern(self, target_xy: np.ndarray) -> np.ndarray:
        """(H, W) pattern with 1 above the floor rows (for tests and inspection)."""
        out = np.ones((self.size, self.size), dtype=np.float32)
        out[self.row0:] = self.pattern(target_xy)
        return out

    def compose(self, layer: np.ndarray, target_xy: np.ndarray, consts: tuple[np.ndarray, np.ndarray, np.ndarray]
                ) -> np.ndarray:
        """Avatar layer (H, W, 4) uint8 premultiplied RGBA over sky + floor -> (H, W, 3) uint8 RGB."""
        shade, skyterm, top = consts
        out = np.empty((self.size, self.size, 3), dtype=np.uint8)
        out[:self.row0] = top
        floor = shade * self.pattern(target_xy)[..., None]
        floor += skyterm
        np.minimum(floor, 255.0, out=floor)
        out[self.row0:] = floor.astype(np.uint8)
        alpha = layer[..., 3]
        rows = np.flatnonzero(alpha.any(axis=1))
        if len(rows):
            cols = np.flatnonzero(alpha[rows[0]:rows[-1] + 1].any(axis=0))
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            fg = layer[r0:r1, c0:c1].astype(np.uint16)
            bg = out[r0:r1, c0:c1].astype(np.uint16)
            blended = fg[..., :3] + (bg * (255 - fg[..., 3:4]) + 127) // 255
            out[r0:r1, c0:c1] = np.minimum(blended, 255).astype(np.uint8)
        return out


class SceneRenderer:
    """One EGL context + scene, reused for many clips (one per worker process).

    Usage: ``set_lights(setup)``, ``set_body(faces, colors, first_vertices, first_normals)``, then per frame
    ``render(vertices, normals, target_xy, floor_z) -> (size, size, 3) uint8``, or split across threads:
    ``layer = render_layer(...)`` on the GL thread and ``compose(layer, target_xy)`` on any thread.
    """

    FLOOR_TILE_M = 0.5
    # Floor tones as display values (pyrender's output gamma 2.2 applied to the linear tile albedo).
    FLOOR_TONES = (0.60, 0.50)
    SKY = (0.86, 0.88, 0.92)

    def __init__(self, size: int = 512, rig: CameraRig | None = None):
        self.size = int(size)
        self.rig = rig or CameraRig()
        try:
            self.renderer = pyrender.OffscreenRenderer(self.size, self.size)
        except Exception as e:  # noqa: BLE001 - any EGL/GL failure is a set-up error
            raise RendererSetupError(f"{EGL_HELP} ({type(e).__name__}: {e})") from e
        self.scene = pyrender.Scene(bg_color=(0.0, 0.0, 0.0, 0.0), ambient_light=(0.1, 0.1, 0.1))
        cam = pyrender.PerspectiveCamera(yfov=np.radians(self.rig.yfov_deg), aspectRatio=1.0,
                                         znear=self.rig.znear, zfar=self.rig.zfar)
        self.cam_node = self.scene.add(cam, pose=self.rig.pose(np.zeros(2), 0.0))
        self.light_nodes: list[pyrender.Node] = []
        self.body_node: pyrender.Node | None = None
        self._prim: pyrender.Primitive | None = None
        self._interleaved: np.ndarray | None = None
        self._vmap: np.ndarray | None = None
        self._body_args: tuple = ()
        self._fresh = False
        self.in_place_updates = True
        self.lean_redraw = True  # per-frame redraw without pyrender's scene pass (see _lean_layer)
        self.shading = "pixel"   # of the current body: "pixel" (pyrender's shader) or "vertex" (VertexShading)
        self._flags = pyrender.RenderFlags.RGBA
        self._setup: LightSetup | None = None
        self._vshading: dict[LightSetup, VertexShading] = {}
        self._albedo: np.ndarray | None = None
        self._lean_program = None
        self._lean_verified: set[int] = set()  # render flags whose lean redraw was checked against pyrender
        self._num_indices = 0
        self.backdrop = Backdrop(self.size, self.rig, self.FLOOR_TILE_M, self.FLOOR_TONES)
        self._bg: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # backdrop constants, current lights

    def describe(self) -> dict:
        """Camera and floor record for sidecars."""
        return dict(self.rig.to_dict(), floor={"pattern": "checker fixed in the world", "tile_m": self.FLOOR_TILE_M,
                                                "tones": list(self.FLOOR_TONES)}, sky=list(self.SKY))

    # -- set-up per clip ---------------------------------------------------------------------------
    def set_lights(self, setup: LightSetup) -> None:
        """Replace the lights with ``setup`` (point lights parented to the camera, OpenGL camera frame)."""
        for n in self.light_nodes:
            self.scene.remove_node(n)
        self.light_nodes = []
        target = self.rig.target_in_camera()
        for light in setup.lights:
            pl = pyrender.PointLight(color=np.asarray(light.color), intensity=setup.pyrender_intensity(light, target))
            pose = np.eye(4)
            pose[:3, 3] = light.position_gl
            node = pyrender.Node(light=pl, matrix=pose)
            self.scene.add_node(node, parent_node=self.cam_node)
            self.light_nodes.append(node)
        self.scene.ambient_light = np.full(3, setup.ambient)
        self._setup = setup
        self._lean_program = None  # the next frame goes through pyrender (sets the new lights' uniforms)
        key = setup  # by value (frozen dataclass): a new LightSetup may reuse a freed one's id()
        if key not in self.backdrop.shade:
            self.backdrop.shade[key] = self.backdrop.prepare(*self._render_floor_shade(), self.SKY)
        self._bg = self.backdrop.shade[key]

    def _render_floor_shade(self) -> tuple[np.ndarray, np.ndarray]:
        """Premultiplied shade (H, W, 3) of a white floor under the current lights and the sky weight (H, W)."""
        quad = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=np.float32) * 400.0
        mat = pyrender.MetallicRoughnessMaterial(metallicFactor=0.0, roughnessFactor=1.0,
                                                 baseColorFactor=(1.0, 1.0, 1.0, 1.0),
                                                 emissiveFactor=(0.55, 0.55, 0.55))
        prim = pyrender.Primitive(positions=quad, normals=np.tile([[0, 0, 1.0]], (4, 1)).astype(np.float32),
                                  indices=np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32), material=mat)
        hidden = self.body_node
        if hidden is not None:
            self.scene.remove_node(hidden)
        self.scene.set_pose(self.cam_node, self.rig.pose(np.zeros(2), 0.0))
        node = self.scene.add(pyrender.Mesh([prim]))
        try:
            rgba, _ = self.renderer.render(self.scene, flags=pyrender.RenderFlags.RGBA)
        finally:
            self.scene.remove_node(node)
            if hidden is not None:
                self.scene.add_node(hidden)
        rgba = rgba.astype(np.float32) / 255.0
        return rgba[..., :3], 1.0 - rgba[..., 3]

    def set_body(self, faces: np.ndarray, colors: np.ndarray | None, vertices: np.ndarray, normals: np.ndarray,
                 uv_layout=None, texture: np.ndarray | None = None, shading: str = "pixel") -> None:
        """Replace the body mesh for a new clip.

        Args:
            faces: (F, 3) triangles; colors: (V, 4) linear RGBA vertex colours (ignored with a texture).
            vertices, normals: (V, 3) the first frame (AMASS world, metres).
            uv_layout: optional :class:`lavimo.render.avatars.UVLayout` (seams split: render vertices gather body
                vertices through ``vmap``) with ``texture`` (H, W, 3) uint8 sRGB, for real SMPL UV textures.
            shading: "pixel" (pyrender's fragment shader) or "vertex" (:class:`VertexShading` per vertex, drawn
                with pyrender's unlit shader; not with a texture, which is always shaded per pixel).
        """
        if shading not in ("pixel", "vertex"):
            raise ValueError(f"shading must be 'pixel' or 'vertex', got {shading!r}")
        if self.body_node is not None:
            self.scene.remove_node(self.body_node)
        vertices = np.asarray(vertices, np.float32)
        normals = np.asarray(normals, np.float32)
        if uv_layout is not None and texture is not None:
            self._vmap = np.asarray(uv_layout.vmap, dtype=np.int64)
            tex = pyrender.Texture(source=np.ascontiguousarray(texture), source_channels="RGB")
            mat = pyrender.MetallicRoughnessMaterial(metallicFactor=0.0, roughnessFactor=0.75,
                                                     baseColorFactor=(1.0, 1.0, 1.0, 1.0), baseColorTexture=tex)
            uv = np.asarray(uv_layout.uv, np.float32)
            self._prim = pyrender.Primitive(positions=vertices[self._vmap], normals=normals[self._vmap],
                                            texcoord_0=uv, indices=np.asarray(uv_layout.faces, dtype=np.uint32),
                                            material=mat)
            inter = np.empty((len(uv), 8), dtype=np.float32)
            inter[:, 6:8] = uv
            shading = "pixel"
        else:
            self._vmap = None
            mat = pyrender.MetallicRoughnessMaterial(metallicFactor=0.0, roughnessFactor=0.75,
                                                     baseColorFactor=(1.0, 1.0, 1.0, 1.0))
            colors = np.asarray(colors, dtype=np.float32)
            self._prim = pyrender.Primitive(positions=vertices, normals=normals, color_0=colors,
                                            indices=np.asarray(faces, dtype=np.uint32), material=mat)
            inter = np.empty((len(colors), 10), dtype=np.float32)
            inter[:, 6:10] = colors
        self._body_args = (faces, colors, uv_layout, texture, shading)
        self.shading = shading
        self._flags = pyrender.RenderFlags.RGBA | (pyrender.RenderFlags.FLAT if shading == "vertex" else 0)
        self._albedo = None if self._vmap is not None else np.asarray(colors, dtype=np.float32)
        self.body_node = self.scene.add(pyrender.Mesh([self._prim]))
        self._interleaved = inter
        self._fresh = True
        self._lean_program = None

    # -- per frame ---------------------------------------------------------------------------------
    def _offset(self, target_xy: np.ndarray, floor_z: float) -> np.ndarray:
        """(3,) float32 world translation from the base rig (target 0, floor 0) to this frame's rig."""
        return np.array([target_xy[0], target_xy[1], floor_z], dtype=np.float32)

    def _upload(self, vertices: np.ndarray, normals: np.ndarray, offset: np.ndarray,
                colors: np.ndarray | None = None) -> bool:
        """Rewrite the body's interleaved vertex buffer (positions - offset, normals, colours) in place.

        Returns False when the mesh had to be re-created instead (pyrender internals changed)."""
        from OpenGL import GL

        prim = self._prim
        inter = self._interleaved
        if self._vmap is not None:
            np.subtract(vertices[self._vmap], offset, out=inter[:, 0:3])
            inter[:, 3:6] = normals[self._vmap]
        else:
            np.subtract(vertices, offset, out=inter[:, 0:3])
            inter[:, 3:6] = normals
            if colors is not None:
                inter[:, 6:10] = colors
        if self._fresh:  # not in the GL context yet: the first render uploads the primitive's arrays
            prim.positions = inter[:, 0:3]
            prim.normals = inter[:, 3:6]
            if self._vmap is None:
                prim.color_0 = inter[:, 6:10]
            return True
        if self.in_place_updates and getattr(prim, "_buffers", None):
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, prim._buffers[0])
            GL.glBufferSubData(GL.GL_ARRAY_BUFFER, 0, inter.nbytes, inter)
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, 0)
            return True
        faces, albedo, uv_layout, texture, shading = self._body_args  # fallback: re-create the mesh
        self.set_body(faces, albedo, vertices - offset, normals, uv_layout, texture, shading)
        if colors is not None and self._vmap is None:
            self._prim.color_0 = colors
        return False

    def _pyrender_layer(self) -> np.ndarray:
        rgba, _ = self.renderer.render(self.scene, flags=self._flags)
        return rgba

    def _lean_layer(self) -> np.ndarray:
        """Redraw the body with the GL state, shader program and uniforms of the previous pyrender render.

        Between frames nothing in the scene changes but the body's vertex buffer (the camera and its lights
        stay at the base rig; the body is translated instead), so pyrender's per-frame work (scene traversal,
        setting every uniform again, resolving and reading back the depth buffer) is skipped: clear the 4x
        MSAA framebuffer, draw, resolve the colour, read RGBA. Same pixels as :meth:`_pyrender_layer`."""
        from OpenGL import GL

        r = self.renderer._renderer
        w, h = r._main_fb_dims
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, r._main_fb_ms)
        GL.glViewport(0, 0, w, h)
        GL.glClearColor(0.0, 0.0, 0.0, 0.0)
        GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
        GL.glUseProgram(self._lean_program._program_id)
        GL.glBindVertexArray(self._prim._vaid)
        GL.glDrawElements(GL.GL_TRIANGLES, self._num_indices, GL.GL_UNSIGNED_INT, None)
        GL.glBindVertexArray(0)
        GL.glUseProgram(0)
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, r._main_fb_ms)
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, r._main_fb)
        GL.glBlitFramebuffer(0, 0, w, h, 0, 0, w, h, GL.GL_COLOR_BUFFER_BIT, GL.GL_LINEAR)
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, r._main_fb)
        buf = GL.glReadPixels(0, 0, w, h, GL.GL_RGBA, GL.GL_UNSIGNED_BYTE)
        return np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 4)[::-1]

    def _enable_lean(self) -> None:
        """After a pyrender render of the current body: find its shader program for :meth:`_lean_layer`
        (only for an untextured body drawn as one indexed triangle list, with pyrender's internals present)."""
        self._lean_program = None
        if not self.lean_redraw or self._vmap is not None:
            return
        try:
            from pyrender.constants import GLTF, ProgramFlags

            r = self.renderer._renderer
            prim = self._prim
            flags = self._flags | pyrender.RenderFlags.OFFSCREEN
            program = r._get_primitive_program(prim, flags, ProgramFlags.USE_MATERIAL)
            ok = (prim.mode == GLTF.TRIANGLES and prim.poses is None and prim._vaid is not None
                  and program._program_id is not None and r._main_fb_ms is not None
                  and tuple(r._main_fb_dims) == (self.size, self.size) and len(self.scene.mesh_nodes) == 1)
        except Exception as e:  # noqa: BLE001 - pyrender changed: keep its own render path
            log.warning("lean redraw unavailable (%s: %s); using pyrender's render for every frame",
                        type(e).__name__, e)
            self.lean_redraw = False
            return
        if ok:
            self._lean_program = program
            self._num_indices = int(prim.indices.size)

    def vertex_shading(self, setup: LightSetup | None = None) -> VertexShading:
        """The :class:`VertexShading` of a lighting setup (default: the current one) for this rig."""
        setup = setup or self._setup
        if setup is None:
            raise RuntimeError("set_lights() first")
        if setup not in self._vshading:
            self._vshading[setup] = VertexShading(setup, self.rig)
        return self._vshading[setup]

    def render_layer(self, vertices: np.ndarray, normals: np.ndarray, target_xy: np.ndarray,
                     floor_z: float, colors: np.ndarray | None = None) -> np.ndarray:
        """The avatar alone: vertices/normals (V, 3) AMASS world, metres -> (H, W, 4) uint8 premultiplied RGBA.

        The camera (and its lights) stay at the base rig (target 0, floor 0); the body is translated by
        ``-(target_x, target_y, floor_z)`` instead, which gives the same image as moving the rig.
        With vertex shading, ``colors`` (V, 4) are this frame's shaded display colours (computed ahead, e.g.
        on another thread, with :meth:`vertex_shading` on ``vertices - (target_x, target_y, floor_z)``);
        None computes them here."""
        offset = self._offset(target_xy, floor_z)
        if self.shading == "vertex" and colors is None:
            colors = self.vertex_shading()(np.asarray(vertices, np.float32) - offset, normals, self._albedo)
        fresh = self._fresh
        same_mesh = self._upload(vertices, normals, offset, colors if self.shading == "vertex" else None)
        if not fresh and same_mesh and self._lean_program is not None:
            layer = self._lean_layer()
            if self._flags not in self._lean_verified:  # once per renderer and shading: same pixels as pyrender
                ref = self._pyrender_layer()
                self._lean_verified.add(self._flags)
                if not np.array_equal(ref, layer):
                    log.warning("lean redraw differs from pyrender's render (max %d); using pyrender's render",
                                int(np.abs(ref.astype(np.int16) - layer).max()))
                    self.lean_redraw, self._lean_program = False, None
                    return ref
            return layer
        layer = self._pyrender_layer()
        self._fresh = False
        self._enable_lean()
        return layer

    def compose(self, layer: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
        """Avatar layer over sky + floor for a camera target -> (H, W, 3) uint8 RGB (thread-safe)."""
        if self._bg is None:
            raise RuntimeError("set_lights() first")
        return self.backdrop.compose(layer, target_xy, self._bg)

    def render(self, vertices: np.ndarray, normals: np.ndarray, target_xy: np.ndarray, floor_z: float) -> np.ndarray:
        """Render one finished frame (layer + compose) -> (H, W, 3) uint8 RGB."""
        return self.compose(self.render_layer(vertices, normals, target_xy, floor_z), target_xy)

    def close(self) -> None:
        try:
            self.renderer.delete()
        except Exception:  # noqa: BLE001
            pass

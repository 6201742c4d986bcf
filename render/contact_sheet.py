"""Contact sheets: the 13 avatars, and one avatar under the 4 lighting setups, as small PNGs.

    python -m lavimo.render.contact_sheet --out docs/img [--avatars assets/avatars] [--body-models DIR] [--tile 160]

writes ``avatars.png`` (every avatar in an A-pose, lighting setup 1, labelled) and ``lights.png`` (one avatar
in a mid-stride pose under each setup, labelled with the paper's numbers), through the same renderer as
``render-amass``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from lavimo.core.atomic import atomic_path  # noqa: E402

log = logging.getLogger(__name__)


def demo_pose(kind: str = "apose") -> tuple[np.ndarray, np.ndarray]:
    """One AMASS-style frame: poses (1, 156) axis-angle, trans (1, 3) metres; the body faces the camera.

    ``apose``: arms lowered 60 degrees; ``stride``: a walking step with swinging arms.
    """
    p = np.zeros((1, 156))
    p[0, 0:3] = [np.pi / 2, 0, 0]  # SMPL's Y-up rest frame -> AMASS Z-up, facing AMASS -y (the camera)

    def setj(j: int, rv) -> None:
        p[0, 3 * j:3 * j + 3] = rv

    if kind == "apose":
        setj(16, [0, 0, -1.05])
        setj(17, [0, 0, 1.05])
    elif kind == "stride":
        setj(16, [0, 0, -1.2]); setj(17, [0, 0, 1.2])
        setj(1, [-0.45, 0, 0]); setj(2, [0.35, 0, 0]); setj(5, [0.5, 0, 0]); setj(4, [0.15, 0, 0])
        setj(18, [0, -0.5, 0]); setj(19, [0, 0.5, 0])
        setj(16, [0.0, 0.4, -1.2]); setj(17, [0.0, 0.4, 1.2])
    else:
        raise ValueError(f"unknown demo pose {kind!r}")
    return p, np.zeros((1, 3))


def render_still(renderer, body, avatar, setup, kind: str = "apose") -> np.ndarray:
    """(size, size, 3) uint8 image of ``avatar`` posed by :func:`demo_pose` under lighting ``setup``."""
    from lavimo.render.avatars import region_labels, vertex_colors
    from lavimo.render.scene import VertexNormals

    poses, trans = demo_pose(kind)
    rest = body.pose(np.zeros_like(poses), trans, avatar.betas)
    labels = region_labels(rest.vertices[0], rest.joints[0], avatar.style)
    out = body.pose(poses, trans, avatar.betas)
    v = out.vertices[0]
    n = VertexNormals(body.faces, len(v))(v)
    renderer.set_lights(setup)
    renderer.set_body(body.faces, vertex_colors(labels, avatar), v, n)
    return renderer.render(v, n, out.joints[0, 0, :2], float(v[:, 2].min()))


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, im.width, 14], fill=(255, 255, 255))
    d.text((3, 1), text, fill=(0, 0, 0))
    return np.asarray(im)


def grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles (h, w, 3) -> one image with ``cols`` columns (blank white cells pad the last row)."""
    h, w, _ = tiles[0].shape
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return out


def _save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG", optimize=True)


def make_contact_sheets(out_dir: str | os.PathLike, avatars_dir: str | None = None, lights_path: str | None = None,
                        body_models: str | None = None, tile: int = 160, light_avatar: int = 0) -> list[Path]:
    """Write ``avatars.png`` and ``lights.png`` into ``out_dir``; returns their paths."""
    from lavimo.render.avatars import load_avatars
    from lavimo.body.model import load_body
    from lavimo.render.lights import load_lights
    from lavimo.render.scene import SceneRenderer

    avatars = load_avatars(avatars_dir)
    setups = load_lights(lights_path)
    renderer = SceneRenderer(tile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        tiles = []
        for a in avatars:
            body = load_body(body_models, "smplh", a.gender)
            tiles.append(_label(render_still(renderer, body, a, setups[0], "apose"), a.name))
        p1 = out / "avatars.png"
        _save_png(p1, grid(tiles, cols=7 if len(tiles) > 8 else len(tiles)))
        a = avatars[light_avatar % len(avatars)]
        body = load_body(body_models, "smplh", a.gender)
        tiles = [_label(render_still(renderer, body, a, s, "stride"), f"setup {s.index + 1}: {s.name}")
                 for s in setups]
        p2 = out / "lights.png"
        _save_png(p2, grid(tiles, cols=len(tiles)))
    finally:
        renderer.close()
    return [p1, p2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lavimo.render.contact_sheet", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/img", help="output directory for avatars.png and lights.png")
    ap.add_argument("--avatars", default=None, help="avatar specs directory (default: assets/avatars)")
    ap.add_argument("--lights-file", default=None, help="lighting setups (default: assets/lights.json)")
    ap.add_argument("--body-models", default=None, help="smplx model directory (default: procedural body)")
    ap.add_argument("--tile", type=int, default=160, help="tile size in pixels")
    ap.add_argument("--light-avatar", type=int, default=0, help="index of the avatar shown in lights.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = make_contact_sheets(args.out, args.avatars, args.lights_file, args.body_models, args.tile,
                                args.light_avatar)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

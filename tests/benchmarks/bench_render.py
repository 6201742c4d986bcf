"""Benchmark: frames/s of the render-amass path vs a naive per-frame-mesh loop and the raster limit.

    .venv/bin/python tests/benchmarks/bench_render.py [--quick] [--size 512] [--frames 100] [--repeats 3]

Three measurements on the same clip (the real AMASS sample from ../shared when present, else a synthetic
AMASS file), same size, avatar, materials and lights, procedural body:

* **pipeline** - ``lavimo.render.pipeline.render_clips`` end to end: npz -> frames -> posed mesh -> raster ->
  composite -> H.264 mp4 + sidecar on disk (pose-ahead thread, in-place vertex buffer, encoder thread).
* **naive** - pose the clip, then per frame build a new ``trimesh.Trimesh`` and ``pyrender.Mesh`` (floor
  as real geometry, as a straightforward implementation would), render, and append the frame to an
  ``imageio`` writer (same x264 settings).
* **raster limit** - only the per-frame GL work of the pipeline's renderer (in-place upload + raster +
  read-back) on meshes posed beforehand: no skinning, no normals, no compositing, no encoding.

Prints the median of ``--repeats`` runs of each, and the ratios pipeline/naive (target >= 2) and
pipeline/raster-limit (target >= 0.8).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SHARED_SAMPLE = Path(os.environ.get("LAVIMO_SHARED_DATA", REPO.parent / "shared" / "data")) / "amass" / "amass_sample.npz"


def synthetic_npz(path: Path, seconds: float) -> None:
    fps = 60.0
    t = np.arange(int(seconds * fps)) / fps
    poses = np.zeros((len(t), 156))
    poses[:, 0] = np.pi / 2
    poses[:, 3 * 16 + 2] = -1.1 + 0.6 * np.sin(2 * np.pi * t)
    poses[:, 3 * 17 + 2] = 1.1 + 0.6 * np.sin(2 * np.pi * t)
    poses[:, 3 * 1] = -0.4 * np.sin(2 * np.pi * t)
    poses[:, 3 * 2] = 0.4 * np.sin(2 * np.pi * t)
    trans = np.stack([0.5 * t, 0.2 * t, np.full_like(t, 0.95)], 1)
    np.savez(path, poses=poses, trans=trans, betas=np.zeros(16), gender=np.array("neutral"),
             mocap_framerate=np.array(fps))


def naive_floor():
    """The checker floor as real geometry (what the naive loop renders every frame)."""
    import pyrender
    import trimesh

    tile, n = 0.5, 40
    quads, cols = [], []
    for i in range(n):
        for j in range(n):
            x0, y0 = -n * tile / 2 + i * tile, -n * tile / 2 + j * tile
            b = trimesh.creation.box(extents=(tile, tile, 0.001))
            b.apply_translation((x0 + tile / 2, y0 + tile / 2, -0.0005))
            quads.append(b)
            cols.append(np.tile([[153, 153, 153, 255] if (i + j) % 2 else [128, 128, 128, 255]], (len(b.vertices), 1)))
    m = trimesh.util.concatenate(quads)
    m.visual.vertex_colors = np.concatenate(cols).astype(np.uint8)
    return pyrender.Mesh.from_trimesh(m, smooth=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run for the smoke test (128 px, 12 frames, 1 repeat)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=100, help="clip length in 20-fps frames")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.frames, args.repeats = 128, 12, 1
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001
        pass

    import imageio
    import pyrender
    import trimesh

    from lavimo.dataset.amass import load_amass
    from lavimo.dataset.clip import Clip, FrameSpec
    from lavimo.render.avatars import load_avatars, region_labels, vertex_colors
    from lavimo.body.model import load_body
    from lavimo.render.lights import load_lights
    from lavimo.render.pipeline import RenderConfig, choose_avatar_light, render_clips
    from lavimo.render.scene import SceneRenderer, VertexNormals
    from lavimo.render.trajectory import follow_trajectory
    from lavimo.core.mp4 import DEFAULT_CRF, DEFAULT_PRESET

    tmp = Path(tempfile.mkdtemp(prefix="bench_render_"))
    seconds = args.frames / 20.0
    if SHARED_SAMPLE.is_file() and load_amass(SHARED_SAMPLE).duration >= seconds:
        amass_root, rel, source = SHARED_SAMPLE.parent, SHARED_SAMPLE.name, "shared AMASS sample"
    else:
        amass_root, rel, source = tmp, "synthetic_poses.npz", "synthetic motion"
        synthetic_npz(tmp / rel, seconds + 0.1)
    clip = Clip(keyid="bench", amass_path=rel, frame_spec=FrameSpec("time", 0.0, seconds, 20.0), fps=20.0)
    motion = load_amass(Path(amass_root) / rel)
    clip = clip.resolve(motion.num_frames, motion.fps)
    n = clip.num_frames
    print(f"bench_render: {n} frames ({source}), {args.size}x{args.size}, repeats {args.repeats}, "
          f"cpu count {os.cpu_count()}")

    renderer = SceneRenderer(args.size)
    from OpenGL import GL

    print(f"  GL renderer: {GL.glGetString(GL.GL_RENDERER).decode()}")
    cfg = RenderConfig(amass_root=str(amass_root), out_dir=str(tmp / "out"), size=args.size, overwrite=True)
    avatars, lights = load_avatars(), load_lights()
    ai, li = choose_avatar_light(clip, cfg.seed, len(avatars), len(lights))
    avatar, setup = avatars[ai], lights[li]
    body = load_body()

    # Warm-up (body cache, shader compile, ffmpeg binary in the page cache).
    render_clips([clip], cfg, renderer=renderer)

    def run_pipeline() -> float:
        t0 = time.perf_counter()
        res = render_clips([clip], cfg, renderer=renderer)
        dt = time.perf_counter() - t0
        assert res[0].status == "rendered" and res[0].frames == n, res
        return dt

    # Pre-posed frames for the raster limit and the naive loop's meshes.
    poses, trans = motion.poses[clip.frames], motion.trans[clip.frames]
    rest = body.rest(avatar.betas)
    colors = vertex_colors(region_labels(rest.vertices[0], rest.joints[0], avatar.style), avatar)
    posed = body.pose(poses, trans, avatar.betas)
    verts = posed.vertices
    normals = VertexNormals(body.faces, body.num_vertices)(verts)
    traj = follow_trajectory(posed.joints[:, 0], verts[:, :, 2].min(axis=1), clip.fps)

    def run_raster() -> float:
        renderer.set_lights(setup)
        renderer.set_body(body.faces, colors, verts[0], normals[0])
        t0 = time.perf_counter()
        for i in range(n):
            renderer.render_layer(verts[i], normals[i], traj.target_xy[i], traj.floor_z)
        return time.perf_counter() - t0

    # Naive: its own scene with the floor as geometry, same lights (camera-parented) and camera.
    naive = pyrender.OffscreenRenderer(args.size, args.size)
    scene = pyrender.Scene(bg_color=(*SceneRenderer.SKY, 1.0), ambient_light=np.full(3, setup.ambient))
    cam = pyrender.PerspectiveCamera(yfov=np.radians(renderer.rig.yfov_deg), aspectRatio=1.0,
                                     znear=renderer.rig.znear, zfar=renderer.rig.zfar)
    cam_node = scene.add(cam)
    target_cam = renderer.rig.target_in_camera()
    for light in setup.lights:
        pose = np.eye(4)
        pose[:3, 3] = light.position_gl
        scene.add_node(pyrender.Node(light=pyrender.PointLight(color=np.asarray(light.color),
                                                               intensity=setup.pyrender_intensity(light, target_cam)),
                                     matrix=pose), parent_node=cam_node)
    floor_node = scene.add(naive_floor())
    rgba8 = (np.clip(colors, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)
    mat = pyrender.MetallicRoughnessMaterial(metallicFactor=0.0, roughnessFactor=0.75, baseColorFactor=(1, 1, 1, 1))

    def run_naive() -> float:
        t0 = time.perf_counter()
        m = load_amass(Path(amass_root) / rel)
        out = body.pose(m.poses[clip.frames], m.trans[clip.frames], avatar.betas)
        tr = follow_trajectory(out.joints[:, 0], out.vertices[:, :, 2].min(axis=1), clip.fps)
        writer = imageio.get_writer(str(tmp / "naive.mp4"), fps=clip.fps, codec="libx264", quality=None,
                                    macro_block_size=1, pixelformat="yuv420p",
                                    ffmpeg_params=["-preset", DEFAULT_PRESET, "-crf", str(DEFAULT_CRF)])
        node = None
        for i in range(n):
            tm = trimesh.Trimesh(out.vertices[i], body.faces, vertex_colors=rgba8, process=False)
            mesh = pyrender.Mesh.from_trimesh(tm, material=mat, smooth=True)
            if node is not None:
                scene.remove_node(node)
            node = scene.add(mesh)
            scene.set_pose(cam_node, renderer.rig.pose(tr.target_xy[i], tr.floor_z))
            fp = np.eye(4)
            fp[:2, 3] = np.round(tr.target_xy[i] / 1.0) * 1.0
            fp[2, 3] = tr.floor_z
            scene.set_pose(floor_node, fp)
            color, _ = naive.render(scene)
            writer.append_data(color)
        writer.close()
        scene.remove_node(node)
        return time.perf_counter() - t0

    run_naive()  # warm-up
    results = {"pipeline": [], "naive": [], "raster limit": []}
    for _ in range(args.repeats):
        results["pipeline"].append(run_pipeline())
        results["naive"].append(run_naive())
        results["raster limit"].append(run_raster())
    fps = {k: n / statistics.median(v) for k, v in results.items()}
    for k, v in results.items():
        print(f"  {k:13s}: median {statistics.median(v):7.3f} s for {n} frames = {fps[k]:7.2f} frames/s "
              f"(runs: {', '.join(f'{x:.3f}' for x in v)})")
    r_naive = fps["pipeline"] / fps["naive"]
    r_raster = fps["pipeline"] / fps["raster limit"]
    print(f"  ratio pipeline / naive       : {r_naive:.2f}x (target >= 2)")
    print(f"  ratio pipeline / raster limit: {r_raster:.2f}x (target >= 0.8)")
    size = (tmp / "out" / "bench.mp4").stat().st_size
    print(f"  mp4: {size / 1024:.1f} KiB for {n} frames")
    naive.delete()
    renderer.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

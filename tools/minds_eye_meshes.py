"""Build the Mind's Eye meshes and their Blender reference views (build time only; needs bpy).

    python3.11 -m venv /tmp/bpyenv
    /tmp/bpyenv/bin/pip install -r tools/requirements-blender.txt
    /tmp/bpyenv/bin/python tools/minds_eye_meshes.py

Writes ``assets/minds_eye/meshes.npz`` (``{name}_vertices`` (V,3) float32, ``{name}_faces`` (F,3)
int32 for monkey, penguin, aeroplane) and ``assets/minds_eye/reference/``: ``{name}.png`` at zero
rotation and ``{name}_r1.png`` .. at the angles in ``angles.json``, each 64x64 greyscale + alpha
(LA PNG) rendered by Cycles on the CPU. The app never imports bpy: at run time
``engine/minds_eye/render.py`` rasterises these meshes with torch.

Axes (the renderer's): x right, y up, z toward the camera; the camera looks along -z, orthographic,
and sees the square [-HALF_EXTENT, HALF_EXTENT]^2. Every mesh is centred on its bounding-box centre
and scaled so its farthest vertex is at radius 1, so any rotation stays inside the frame.
Zero rotation is the canonical view:

* monkey -- Blender's Suzanne, face toward the camera, top of the head up.
* penguin -- standing, facing the camera: body, head turned a little to its left (the viewer's
  right) with beak and eyes, left flipper raised, right flipper down, two feet pointing forward, a
  tail at the back.
* aeroplane -- nose up the image, seen from above and in front: the aeroplane lies with its top
  toward the camera and is pitched 0.5 rad nose-toward-the-camera, so wings, tailplane and the fin
  (which sticks out below the tail in the image) all show in the silhouette.

Rotations are Blender's 'XYZ' Euler mode, R = Rz @ Ry @ Rx, about the object's centre.
The rasteriser walks each triangle's rows of pixel centres, so large triangles cost nothing extra
and no edge is split by default (``--max-edge`` splits longer edges, for a rasteriser that would
enumerate bounding boxes instead).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import bpy  # first: bmesh and mathutils come with it
import bmesh  # noqa: E402
import numpy as np
from mathutils import Euler, Matrix, Vector

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "assets" / "minds_eye"
NAMES = ("monkey", "penguin", "aeroplane")
HALF_EXTENT = 1.1  # must equal engine/minds_eye/render.py HALF_EXTENT
SIZE = 64
# Lighting, matched to the rasteriser: grey = AMBIENT + DIFFUSE * max(0, n . LIGHT)
LIGHT = (-1.0, 1.0, 1.0)  # toward the light: upper left, in front
AMBIENT = 0.2
DIFFUSE = 0.7
ALBEDO = 0.9
REFERENCE_ANGLES = {  # extra rotated references: name suffix -> (x, y, z) radians
    "r1": (0.3, -0.2, 0.4),
    "r2": (-0.45, 0.35, -0.25),
}


# ----------------------------------------------------------------------------- scene helpers
def clear_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def add(kind: str, location=(0, 0, 0), rotation=(0, 0, 0), scale=(1, 1, 1), **kw):
    """Add one primitive in the renderer's axes; return the new object."""
    op = {
        "sphere": bpy.ops.mesh.primitive_uv_sphere_add,
        "cone": bpy.ops.mesh.primitive_cone_add,
        "cylinder": bpy.ops.mesh.primitive_cylinder_add,
        "cube": bpy.ops.mesh.primitive_cube_add,
        "monkey": bpy.ops.mesh.primitive_monkey_add,
    }[kind]
    op(location=location, rotation=rotation, scale=scale, **kw)
    return bpy.context.active_object


def join(objects):
    bpy.ops.object.select_all(action="DESELECT")
    for ob in objects:
        ob.select_set(True)
    bpy.context.view_layer.objects.active = objects[0]
    bpy.ops.object.join()
    ob = bpy.context.active_object
    bpy.ops.object.transform_apply(location=True, rotation=True, scale=True)
    return ob


# ----------------------------------------------------------------------------- the three objects
def build_monkey():
    # Suzanne faces -Y with +Z up in Blender; Rx(-90 deg) maps (x, y, z) -> (x, z, -y): face toward +z.
    return add("monkey", rotation=(-math.pi / 2, 0, 0))


def build_penguin():
    sph = dict(segments=16, ring_count=10)
    parts = [
        add("sphere", location=(0, -0.15, 0), scale=(0.55, 0.8, 0.5), segments=24, ring_count=12),  # body
        add("sphere", location=(0.04, 0.78, 0.04), scale=(0.34, 0.32, 0.32), **sph),  # head
        # beak: a cone pointing forward (+z), turned 0.3 rad toward the viewer's right
        add("cone", vertices=10, radius1=0.09, radius2=0.0, depth=0.32,
            location=(0.13, 0.74, 0.45), rotation=(0.15, 0.3, 0), scale=(1.0, 0.7, 1.0)),
        add("sphere", location=(-0.07, 0.88, 0.3), scale=(0.07, 0.07, 0.05), segments=8, ring_count=6),  # eyes
        add("sphere", location=(0.22, 0.88, 0.26), scale=(0.07, 0.07, 0.05), segments=8, ring_count=6),
        # flippers: the penguin's right one (viewer's left, -x) down, its left one (+x) raised
        add("sphere", location=(-0.58, -0.15, 0.0), rotation=(0, 0, -0.25), scale=(0.09, 0.5, 0.22), **sph),
        add("sphere", location=(0.72, 0.25, 0.0), rotation=(0, 0, -1.05), scale=(0.09, 0.5, 0.22), **sph),
        # feet pointing forward and a little out
        add("sphere", location=(-0.22, -0.93, 0.25), rotation=(0, -0.25, 0), scale=(0.16, 0.06, 0.3),
            segments=12, ring_count=6),
        add("sphere", location=(0.22, -0.93, 0.25), rotation=(0, 0.25, 0), scale=(0.16, 0.06, 0.3),
            segments=12, ring_count=6),
        # tail: a flat cone pointing back and down
        add("cone", vertices=8, radius1=0.14, radius2=0.0, depth=0.35,
            location=(0, -0.75, -0.5), rotation=(math.pi - 0.7, 0, 0), scale=(1.0, 0.4, 1.0)),
    ]
    return join(parts)


def build_aeroplane():
    # Modelled nose +y, top +z, wings along x; then pitched nose-toward-camera (Rx(+0.5)).
    parts = [
        add("cylinder", vertices=14, radius=0.13, depth=2.0, rotation=(math.pi / 2, 0, 0)),  # fuselage
        add("cone", vertices=14, radius1=0.13, radius2=0.02, depth=0.35,
            location=(0, 1.175, 0), rotation=(-math.pi / 2, 0, 0)),  # nose
        add("cone", vertices=14, radius1=0.13, radius2=0.035, depth=0.55,
            location=(0, -1.275, 0.04), rotation=(math.pi / 2 + 0.12, 0, 0)),  # tail cone, tip raised
        add("sphere", location=(0, 0.72, 0.1), scale=(0.09, 0.25, 0.08), segments=12, ring_count=6),  # canopy
        # swept main wings (tips further back)
        add("cube", location=(-0.72, -0.05, -0.03), rotation=(0, 0, 0.35), scale=(0.62, 0.19, 0.025)),
        add("cube", location=(0.72, -0.05, -0.03), rotation=(0, 0, -0.35), scale=(0.62, 0.19, 0.025)),
        # engines under the wings
        add("cylinder", vertices=10, radius=0.075, depth=0.38, location=(-0.6, 0.12, -0.12),
            rotation=(math.pi / 2, 0, 0)),
        add("cylinder", vertices=10, radius=0.075, depth=0.38, location=(0.6, 0.12, -0.12),
            rotation=(math.pi / 2, 0, 0)),
        # tailplane
        add("cube", location=(-0.3, -1.3, 0.04), rotation=(0, 0, 0.45), scale=(0.26, 0.1, 0.018)),
        add("cube", location=(0.3, -1.3, 0.04), rotation=(0, 0, -0.45), scale=(0.26, 0.1, 0.018)),
        # vertical fin, swept back (its top further back)
        add("cube", location=(0, -1.3, 0.33), rotation=(0.55, 0, 0), scale=(0.018, 0.16, 0.28)),
    ]
    ob = join(parts)
    ob.data.transform(Matrix.Rotation(0.5, 4, "X"))  # pitch: nose toward the camera
    return ob


# ----------------------------------------------------------------------------- mesh export
def to_arrays(ob, max_edge: float):
    """Triangulate, split long edges, centre, scale to the unit sphere -> (vertices, faces)."""
    bm = bmesh.new()
    bm.from_mesh(ob.data)
    bm.transform(ob.matrix_world)
    bmesh.ops.remove_doubles(bm, verts=bm.verts, dist=1e-6)
    co = np.array([v.co[:] for v in bm.verts])
    lo, hi = co.min(0), co.max(0)
    centre = (lo + hi) / 2
    scale = 1.0 / np.linalg.norm(co - centre, axis=1).max()
    bm.transform(Matrix.Diagonal((scale, scale, scale, 1.0)) @ Matrix.Translation(Vector(-centre)))
    bmesh.ops.triangulate(bm, faces=bm.faces)
    for _ in range(8 if max_edge > 0 else 0):
        long = [e for e in bm.edges if e.calc_length() > max_edge]
        if not long:
            break
        bmesh.ops.subdivide_edges(bm, edges=long, cuts=1, use_grid_fill=False)
        bmesh.ops.triangulate(bm, faces=[f for f in bm.faces if len(f.verts) > 3])
    bm.verts.index_update()
    verts = np.array([v.co[:] for v in bm.verts], dtype=np.float32)
    faces = np.array([[v.index for v in f.verts] for f in bm.faces], dtype=np.int32)
    bm.free()
    # bmesh's triangulate lists faces in a varying order: make the file byte-for-byte reproducible
    # (each triangle starts at its smallest index, winding kept; triangles sorted)
    first = faces.argmin(1)
    faces = np.stack([np.roll(f, -i) for f, i in zip(faces, first)])
    faces = faces[np.lexsort(faces.T[::-1])]
    return verts, faces


# ----------------------------------------------------------------------------- reference renders
def setup_render_scene():
    clear_scene()
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    scene.cycles.max_bounces = 0  # direct light only, like the rasteriser (no bounce light)
    scene.render.resolution_x = SIZE
    scene.render.resolution_y = SIZE
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "16"
    try:
        scene.view_settings.view_transform = "Raw"  # linear grey, comparable with the rasteriser's
    except TypeError:
        scene.view_settings.view_transform = "Standard"
    print(f"view transform: {scene.view_settings.view_transform}")
    scene.view_settings.look = "None"

    cam_data = bpy.data.cameras.new("cam")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = 2 * HALF_EXTENT
    cam_data.clip_start, cam_data.clip_end = 0.1, 20.0
    cam = bpy.data.objects.new("cam", cam_data)
    cam.location = (0, 0, 10)  # default orientation looks along -z with +y up
    scene.collection.objects.link(cam)
    scene.camera = cam

    sun_data = bpy.data.lights.new("sun", type="SUN")
    # Cycles' sun strength is irradiance and its diffuse BSDF is albedo / pi: pi * DIFFUSE / ALBEDO gives
    # DIFFUSE * cos; the uniform white world of strength AMBIENT / ALBEDO gives AMBIENT (less occlusion).
    sun_data.energy = math.pi * DIFFUSE / ALBEDO
    sun_data.angle = 0.0
    sun = bpy.data.objects.new("sun", sun_data)
    sun.rotation_euler = Vector(LIGHT).normalized().to_track_quat("Z", "Y").to_euler()  # +z toward LIGHT
    scene.collection.objects.link(sun)

    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (1, 1, 1, 1)
    bg.inputs["Strength"].default_value = AMBIENT / ALBEDO
    scene.world = world

    mat = bpy.data.materials.new("grey")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Color"].default_value = (ALBEDO, ALBEDO, ALBEDO, 1)
    out = nodes.new("ShaderNodeOutputMaterial")
    mat.node_tree.links.new(diffuse.outputs["BSDF"], out.inputs["Surface"])
    return scene, mat


def render_reference(scene, mat, name, verts, faces, angles, path):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts.tolist(), [], faces.tolist())
    mesh.update()
    mesh.materials.append(mat)
    ob = bpy.data.objects.new(name, mesh)
    ob.rotation_mode = "XYZ"
    ob.rotation_euler = Euler(angles, "XYZ")
    scene.collection.objects.link(ob)
    raw = path.with_suffix(".rgba.png")
    scene.render.filepath = str(raw)
    t0 = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    seconds = time.perf_counter() - t0
    bpy.data.objects.remove(ob)
    bpy.data.meshes.remove(mesh)
    write_la(raw, path)
    raw.unlink()
    return seconds


def write_la(src: Path, dst: Path):
    from PIL import Image

    img = np.asarray(Image.open(src)).astype(np.float64)
    img = img / (65535.0 if img.max() > 255 else 255.0)
    grey = img[..., :3].mean(-1)
    alpha = img[..., 3]
    la = np.stack([grey, alpha], -1)
    Image.fromarray(np.round(la * 255).astype(np.uint8), mode="LA").save(dst)


def main(argv=None):
    argv = sys.argv[sys.argv.index("--") + 1:] if argv is None and "--" in sys.argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-edge", type=float, default=0.0,
                        help="split edges longer than this (unit-sphere units); 0, the default, splits none")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    builders = {"monkey": build_monkey, "penguin": build_penguin, "aeroplane": build_aeroplane}
    arrays = {}
    t0 = time.perf_counter()
    for name in NAMES:
        clear_scene()
        verts, faces = to_arrays(builders[name](), args.max_edge)
        arrays[f"{name}_vertices"], arrays[f"{name}_faces"] = verts, faces
        radius = np.linalg.norm(verts, axis=1).max()
        print(f"{name}: {len(verts)} vertices, {len(faces)} triangles, max radius {radius:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "meshes.npz", **arrays)
    print(f"meshes built in {time.perf_counter() - t0:.2f} s -> {args.out / 'meshes.npz'}")

    ref = args.out / "reference"
    ref.mkdir(exist_ok=True)
    scene, mat = setup_render_scene()
    times = []
    for name in NAMES:
        verts, faces = arrays[f"{name}_vertices"], arrays[f"{name}_faces"]
        views = {"": (0.0, 0.0, 0.0), **{f"_{k}": v for k, v in REFERENCE_ANGLES.items()}}
        for suffix, angles in views.items():
            seconds = render_reference(scene, mat, name, verts, faces, angles, ref / f"{name}{suffix}.png")
            times.append(seconds)
            print(f"rendered {name}{suffix}.png at {angles} in {seconds:.3f} s")
    (ref / "angles.json").write_text(json.dumps(
        {"euler": "XYZ (R = Rz @ Ry @ Rx), radians", "half_extent": HALF_EXTENT,
         "views": {f"{n}{s}.png": list(a) for n in NAMES
                   for s, a in {"": (0.0, 0.0, 0.0), **{f"_{k}": v for k, v in REFERENCE_ANGLES.items()}}.items()}},
        indent=1) + "\n")
    # the first render pays Cycles' kernel/scene set-up; report the median as the per-frame time
    print(f"Cycles CPU, {SIZE}x{SIZE}, 8 samples: median {np.median(times):.3f} s/frame, "
          f"first {times[0]:.3f} s, total {sum(times):.2f} s for {len(times)} frames")


if __name__ == "__main__":
    main()

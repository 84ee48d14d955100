"""The three 3D objects of §3.1 and a small torch z-buffer rasteriser that draws them, fast, on the CPU.

The meshes (``assets/minds_eye/meshes.npz``) were exported once from Blender by
``tools/minds_eye_meshes.py``: Blender's Suzanne ("monkey"), and a penguin and an aeroplane built
from Blender primitives. Each is centred and scaled so its farthest vertex is at radius 1. Blender
is not needed at run time.

Axes: x right, y up, z toward the camera, which looks along -z with an orthographic projection of
the square [-HALF_EXTENT, HALF_EXTENT]^2, so every object at every rotation stays in the frame with a
margin of (HALF_EXTENT - 1) / HALF_EXTENT of the half-width (about 3 pixels at 64). Zero rotation is
each object's canonical view (monkey and penguin facing the camera, the aeroplane seen from above and
in front, nose up). Rotations are Euler angles in Blender's 'XYZ' mode: R = Rz @ Ry @ Rx.

``render`` draws a batch without a Python loop over triangles, in two variable-length expansions
(``repeat_interleave``): each front-facing triangle into its rows of pixel centres, each row into
the span of centres its three edge half-planes leave (so only covered centres are visited), and a
z-buffer keeps, per pixel, the smallest packed int64 key (quantised depth, then triangle) through
``scatter_reduce(amin)``. The winning triangle's flat Lambertian shade gives the grey; coverage,
supersampled then average-pooled, gives the alpha. Back faces are culled: the penguin and the
aeroplane are closed, and Suzanne's few open edges (around the eyes) barely show (Cycles, which draws
back faces, agrees with this renderer to an alpha IoU of about 0.99).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

OBJECTS = ("monkey", "penguin", "aeroplane")  # index = class id 0..2
SIZE = 64
ANGLE_LIMIT = 0.5
HALF_EXTENT = 1.1  # the camera sees [-1.1, 1.1]^2; tools/minds_eye_meshes.py uses the same
LIGHT = (-1.0, 1.0, 1.0)  # toward the light: upper left, in front (normalised below)
AMBIENT = 0.2  # grey = AMBIENT + DIFFUSE * max(0, n . light), in [0.2, 0.9]
DIFFUSE = 0.7
MESHES_PATH = Path(__file__).resolve().parent.parent.parent / "assets" / "minds_eye" / "meshes.npz"

_DEPTH_BITS = 20  # depth quantised to 2^20 levels over [-1, 1]: steps of 2e-6
_EPS = 1e-5  # barycentric tolerance at edges
_CHUNK_PIXELS = 64 * 128 * 128  # samples rasterised together: 64 at 64 px x 2 supersampling (~10 MB z-buffer)
_MAX_SIZE = 512
_MAX_SUPERSAMPLE = 8


# --------------------------------------------------------------------------- meshes

@functools.lru_cache(maxsize=1)
def load_meshes() -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (vertices (V,3) float32, faces (F,3) int64)}`` for the three objects, read once."""
    try:
        with np.load(MESHES_PATH) as data:
            return {name: (torch.from_numpy(np.asarray(data[f"{name}_vertices"], dtype=np.float32)),
                           torch.from_numpy(np.asarray(data[f"{name}_faces"], dtype=np.int64)))
                    for name in OBJECTS}
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"The Mind's Eye meshes cannot be read from {MESHES_PATH} ({exc}).") from exc


@functools.lru_cache(maxsize=1)
def _packed() -> tuple[Tensor, Tensor, Tensor]:
    """Per object, padded to the largest face count: corners (3, F, 3, 3), unit normals (3, F, 3), valid (3, F)."""
    meshes = load_meshes()
    fmax = max(len(f) for _, f in meshes.values())
    corners = torch.zeros(len(OBJECTS), fmax, 3, 3)
    normals = torch.zeros(len(OBJECTS), fmax, 3)
    valid = torch.zeros(len(OBJECTS), fmax, dtype=torch.bool)
    for k, name in enumerate(OBJECTS):
        v, f = meshes[name]
        tri = v[f].double()  # (F, 3 corners, 3 xyz)
        n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length = n.norm(dim=1, keepdim=True)
        corners[k, : len(f)] = tri.float()
        normals[k, : len(f)] = (n / length.clamp_min(1e-12)).float()
        valid[k, : len(f)] = length[:, 0] > 1e-12
    return corners, normals, valid


# --------------------------------------------------------------------------- rotations

def rotation_matrices(angles: Tensor) -> Tensor:
    """(B, 3) Euler angles (radians, Blender's 'XYZ' mode) -> (B, 3, 3) rotations R = Rz @ Ry @ Rx."""
    angles = torch.as_tensor(angles)
    if angles.ndim != 2 or angles.shape[1] != 3:
        raise ConfigError(f"Angles must be a (batch, 3) array of radians, not shape {tuple(angles.shape)}.")
    if not angles.is_floating_point():
        angles = angles.float()
    c, s = torch.cos(angles), torch.sin(angles)
    cx, cy, cz = c.unbind(1)
    sx, sy, sz = s.unbind(1)
    rows = [
        cy * cz, sx * sy * cz - cx * sz, cx * sy * cz + sx * sz,
        cy * sz, sx * sy * sz + cx * cz, cx * sy * sz - sx * cz,
        -sy, sx * cy, cx * cy,
    ]
    return torch.stack(rows, dim=1).reshape(-1, 3, 3)


# --------------------------------------------------------------------------- validation

def _check_objects(objects) -> Tensor:
    objects = torch.as_tensor(objects)
    if objects.ndim != 1 or objects.is_floating_point() or objects.is_complex() or objects.dtype == torch.bool:
        raise ConfigError("Objects must be a 1-D array of integer class ids "
                          f"(0 = {OBJECTS[0]}, 1 = {OBJECTS[1]}, 2 = {OBJECTS[2]}).")
    objects = objects.long()
    if len(objects) and (objects.min() < 0 or objects.max() >= len(OBJECTS)):
        raise ConfigError(f"Object ids go from 0 to {len(OBJECTS) - 1} ({', '.join(OBJECTS)}); "
                          f"got {int(objects.min())} to {int(objects.max())}.")
    return objects


def _check_angles(angles, batch: int) -> Tensor:
    angles = torch.as_tensor(angles)
    if angles.ndim != 2 or angles.shape != (batch, 3):
        raise ConfigError(f"Angles must be one row of 3 radians per object, shape ({batch}, 3); "
                          f"got {tuple(angles.shape)}.")
    if not angles.is_floating_point():
        angles = angles.double()
    if not torch.isfinite(angles).all():
        raise ConfigError("Rotation angles must be finite numbers.")
    if len(angles) and angles.abs().max() > ANGLE_LIMIT + 1e-6:
        raise ConfigError(f"Each rotation angle must lie between -{ANGLE_LIMIT} and {ANGLE_LIMIT} radians; "
                          f"got {float(angles.abs().max()):.4g}.")
    return angles.float().clamp(-ANGLE_LIMIT, ANGLE_LIMIT)


def _check_int(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"The {name} must be a whole number from {low} to {high}; got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------- rasteriser

def _rasterise(objects: Tensor, rot: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """Coverage (B, side, side) bool and shade (B, side, side) float32 of one chunk, one sample per pixel."""
    corners, normals, valid = _packed()
    batch = len(objects)
    tri = torch.einsum("bfkj,bij->bfki", corners[objects], rot)  # (B, F, 3, 3) rotated corners
    nrm = torch.einsum("bfj,bij->bfi", normals[objects], rot)  # (B, F, 3)
    light = torch.tensor(LIGHT) / torch.tensor(LIGHT).norm()
    shade = AMBIENT + DIFFUSE * (nrm @ light).clamp_min(0)  # (B, F)

    # Pixel coordinates: pixel (row i, column j) has its centre at X = j, Y = i.
    half = side / 2
    px = tri[..., 0] * (half / HALF_EXTENT) + (half - 0.5)  # (B, F, 3)
    py = tri[..., 1] * (-half / HALF_EXTENT) + (half - 0.5)
    pz = tri[..., 2]
    # Front-facing (counter-clockwise seen from +z): n_z > 0. Closed parts lose nothing by culling.
    keep = valid[objects] & (nrm[..., 2] > 1e-6)
    lo_y = torch.ceil(py.amin(-1)).clamp_min(0)
    hi_y = torch.floor(py.amax(-1)).clamp_max(side - 1)
    height = ((hi_y - lo_y + 1).clamp_min(0).long() * keep).view(-1)
    flat = torch.nonzero(height).squeeze(1)  # the triangles that may cover a pixel centre, as b * F + f
    n_tri = len(flat)
    tri_bits = int(n_tri).bit_length()  # 2^tri_bits > n_tri: the all-ones low bits name no triangle
    t_b = torch.div(flat, px.shape[1], rounding_mode="floor")
    height = height.index_select(0, flat)

    def take(t: Tensor) -> Tensor:
        return t.reshape(batch * t.shape[1], *t.shape[2:]).index_select(0, flat)

    X, Y, Z = take(px).double(), take(py).double(), take(pz).double()  # (T, 3)

    # Edge i (opposite corner i) as a half-plane u_i X + v_i Y + w_i >= 0, scaled so it is corner i's
    # barycentric coordinate; a pixel centre is inside when all three are >= -EPS (a centre on a shared
    # edge belongs to both triangles: no cracks; the z-buffer picks one).
    j, k = [1, 2, 0], [2, 0, 1]
    area = (X[:, 1] - X[:, 0]) * (Y[:, 2] - Y[:, 0]) - (X[:, 2] - X[:, 0]) * (Y[:, 1] - Y[:, 0])
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    u = (Y[:, j] - Y[:, k]) / area[:, None]
    v = (X[:, k] - X[:, j]) / area[:, None]
    w = (X[:, j] * Y[:, k] - X[:, k] * Y[:, j]) / area[:, None]
    # Along a row Y, edge i bounds X from below (u > 0) or above (u < 0) at X = p + q Y.
    u = torch.where(u.abs() < 1e-12, torch.full_like(u, 1e-12), u)
    p, q = (-_EPS - w) / u, -v / u
    inf = torch.full_like(p, float("inf"))
    zero = torch.zeros_like(q)
    low = u > 0
    rows_tab = torch.cat([
        torch.where(low, p, -inf), torch.where(low, q, zero),  # lower bounds (T, 3) + (T, 3)
        torch.where(low, inf, p), torch.where(low, zero, q),  # upper bounds
        take(lo_y)[:, None].double(),
    ], dim=1).float()

    # Depth is a plane over the pixel grid, z = zx X + zy Y + zc; quantised so nearer (larger z) is smaller.
    zx = (Z * u).sum(1)
    zy = (Z * v).sum(1)
    zc = (Z * w).sum(1)
    scale = -((1 << _DEPTH_BITS) - 1) / 2  # key depth = (1 - z) * scale', in [0, 2^DEPTH_BITS)
    qx, qy, qc = zx * scale, zy * scale, (zc - 1) * scale

    # Stage 1: one entry per (triangle, row): the row's span of pixel centres [x_lo, x_hi].
    owner = torch.repeat_interleave(torch.arange(n_tri), height)
    start = torch.cumsum(height, 0) - height
    dy = (torch.arange(len(owner)) - start.index_select(0, owner)).float()
    r = rows_tab.index_select(0, owner)  # (R, 13)
    row_y = r[:, 12] + dy
    x_lo = torch.ceil(torch.amax(torch.addcmul(r[:, 0:3], r[:, 3:6], row_y[:, None]), 1)).clamp_min(0)
    x_hi = torch.floor(torch.amin(torch.addcmul(r[:, 6:9], r[:, 9:12], row_y[:, None]), 1)).clamp_max(side - 1)
    width = (x_hi - x_lo + 1).clamp_min(0).long()
    row_tri = owner
    first_pixel = (t_b.index_select(0, row_tri) * side + row_y.long()) * side + x_lo.long()
    q_row = torch.stack([qx, qy, qc], 1).float().index_select(0, row_tri)
    q_step = q_row[:, 0].contiguous()
    q_first = q_step * x_lo + q_row[:, 1] * row_y + q_row[:, 2]

    # Stage 2: one entry per covered pixel centre; the z-buffer keeps the smallest (depth, triangle) key.
    owner = torch.repeat_interleave(torch.arange(len(width)), width)
    start = torch.cumsum(width, 0) - width
    dx = torch.arange(len(owner)) - start.index_select(0, owner)
    pixel = first_pixel.index_select(0, owner) + dx
    depth = torch.addcmul(q_first.index_select(0, owner), q_step.index_select(0, owner), dx.float())
    depth = depth.round_().clamp_(0, (1 << _DEPTH_BITS) - 1)
    key = (depth.long() << tri_bits) | row_tri.index_select(0, owner)
    empty = torch.iinfo(torch.int64).max
    zbuf = torch.full((batch * side * side,), empty, dtype=torch.int64)
    zbuf.scatter_reduce_(0, pixel, key, reduce="amin")

    covered = zbuf != empty
    tri_shade = torch.zeros(1 << tri_bits)  # entries from n_tri on (the empty key's low bits) stay 0
    tri_shade[:n_tri] = shade.reshape(-1).index_select(0, flat)
    grey = tri_shade.index_select(0, zbuf & ((1 << tri_bits) - 1))
    return covered.view(batch, side, side), grey.view(batch, side, side)


def render(objects: Tensor, angles: Tensor, size: int = SIZE, supersample: int = 2) -> tuple[Tensor, Tensor]:
    """Draw each object at its rotation: ``(grey, alpha)``, each float32 (B, 1, size, size) in [0, 1].

    ``objects`` are class ids (0 monkey, 1 penguin, 2 aeroplane), ``angles`` (B, 3) radians in
    [-0.5, 0.5] (Euler 'XYZ', R = Rz @ Ry @ Rx). ``alpha`` is the coverage, antialiased with
    ``supersample`` x ``supersample`` samples per pixel; ``grey`` is the mean flat Lambertian shade of
    the covered samples (not premultiplied; 0 where alpha is 0). Deterministic.
    """
    objects = _check_objects(objects)
    angles = _check_angles(angles, len(objects))
    size = _check_int(size, "image size", 1, _MAX_SIZE)
    supersample = _check_int(supersample, "supersampling factor", 1, _MAX_SUPERSAMPLE)
    side = size * supersample
    rot = rotation_matrices(angles)
    chunk = max(1, min(64, _CHUNK_PIXELS // (side * side)))
    greys, alphas = [], []
    with torch.no_grad():
        for lo in range(0, len(objects), chunk):
            covered, shade = _rasterise(objects[lo: lo + chunk], rot[lo: lo + chunk], side)
            cov = covered.float()[:, None]
            shade = shade[:, None]
            if supersample > 1:
                cov = F.avg_pool2d(cov, supersample)
                total = F.avg_pool2d(shade, supersample)  # shade is 0 where not covered
                shade = torch.where(cov > 0, total / cov.clamp_min(1e-12), torch.zeros(()))
            greys.append(shade.clamp(0, 1))
            alphas.append(cov)
    if not greys:
        empty = torch.zeros(0, 1, size, size)
        return empty, empty.clone()
    return torch.cat(greys), torch.cat(alphas)


def render_one(name: str, angles: tuple[float, float, float], size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One object by name at one rotation: ``(grey, alpha)`` as (size, size) float32 arrays."""
    if name not in OBJECTS:
        raise ConfigError(f"There is no object called {name!r}; choose one of {', '.join(OBJECTS)}.")
    try:
        row = [float(a) for a in angles]
    except (TypeError, ValueError) as exc:
        raise ConfigError("Angles must be three numbers (radians about x, y and z).") from exc
    if len(row) != 3:
        raise ConfigError(f"Angles must be three numbers (radians about x, y and z); got {len(row)}.")
    grey, alpha = render(torch.tensor([OBJECTS.index(name)]), torch.tensor([row], dtype=torch.float64), size)
    return grey[0, 0].numpy(), alpha[0, 0].numpy()

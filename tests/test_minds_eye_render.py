"""The Mind's Eye rasteriser: deterministic, in range, faithful to Blender's views, and strict on input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import ConfigError, GlassboxError
from engine.minds_eye import render

REFERENCE = Path(__file__).resolve().parent.parent / "assets" / "minds_eye" / "reference"


def reference(file: str) -> tuple[np.ndarray, np.ndarray]:
    la = np.asarray(Image.open(REFERENCE / file).convert("LA"), dtype=np.float64) / 255
    return la[..., 0], la[..., 1]


def iou(a: np.ndarray, b: np.ndarray, strict: bool = False) -> float:
    a, b = (a > 0.5, b > 0.5) if strict else (a >= 0.5, b >= 0.5)
    return float((a & b).sum() / (a | b).sum())


def random_angles(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g) - 0.5) * (2 * render.ANGLE_LIMIT)


def test_meshes_are_unit_sized_triangle_meshes():
    meshes = render.load_meshes()
    assert tuple(meshes) == render.OBJECTS
    for name, (v, f) in meshes.items():
        assert v.dtype == torch.float32 and v.shape[1] == 3
        assert f.shape[1] == 3 and 0 <= int(f.min()) and int(f.max()) < len(v)
        assert len(f) <= 2000, name
        assert v.norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)


def test_render_is_deterministic_and_in_range():
    objects = torch.tensor([0, 1, 2, 2, 0, 1])
    angles = random_angles(6, 1)
    g1, a1 = render.render(objects, angles)
    g2, a2 = render.render(objects.clone(), angles.clone())
    assert g1.shape == a1.shape == (6, 1, render.SIZE, render.SIZE)
    assert g1.dtype == a1.dtype == torch.float32
    assert torch.equal(g1, g2) and torch.equal(a1, a2)
    for t in (g1, a1):
        assert t.min() >= 0 and t.max() <= 1
    assert torch.all(g1[a1 == 0] == 0)
    # antialiased: some partial coverage, and every object fully inside the frame (margin of empty pixels)
    assert ((a1 > 0) & (a1 < 1)).any()
    border = torch.ones(render.SIZE, render.SIZE, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    assert a1[:, 0, border].max() == 0
    # shading is not flat: each object shows a spread of grey levels (eyes, flippers, wings)
    for k in range(6):
        inside = g1[k, 0][a1[k, 0] == 1]
        assert inside.std() > 0.05 and inside.max() - inside.min() > 0.3
    # a batch gives the same images as one at a time
    g3, a3 = render.render(objects[3:4], angles[3:4])
    assert torch.equal(g3, g1[3:4]) and torch.equal(a3, a1[3:4])


@pytest.mark.parametrize("name", render.OBJECTS)
def test_zero_rotation_matches_blender_reference(name):
    ref_grey, ref_alpha = reference(f"{name}.png")
    # default supersampling (2x2): a pixel half covered is exactly 0.5, so compare strictly above 0.5
    grey, alpha = render.render_one(name, (0.0, 0.0, 0.0))
    assert iou(alpha, ref_alpha, strict=True) >= 0.9
    # an odd factor samples the pixel centre, as does the reference's box filter
    _, alpha3 = render.render(torch.tensor([render.OBJECTS.index(name)]), torch.zeros(1, 3), supersample=3)
    assert iou(alpha3[0, 0].numpy(), ref_alpha) >= 0.95
    # the same lighting: Cycles adds shadows and occlusion, so only roughly the same greys
    both = (alpha > 0.99) & (ref_alpha > 0.99)
    assert np.corrcoef(grey[both], ref_grey[both])[0, 1] > 0.7
    assert abs(grey[both].mean() - ref_grey[both].mean()) < 0.1


def test_rotated_views_match_blender_references():
    views = json.loads((REFERENCE / "angles.json").read_text())["views"]
    rotated = {f: a for f, a in views.items() if any(a)}
    assert rotated
    for file, angles in rotated.items():
        name = file.split("_")[0]
        _, alpha = render.render(torch.tensor([render.OBJECTS.index(name)]), torch.tensor([angles]), supersample=3)
        assert iou(alpha[0, 0].numpy(), reference(file)[1]) >= 0.95, file


def test_objects_have_different_silhouettes():
    angles = torch.cat([torch.zeros(1, 3), random_angles(3, 2)])
    for row in angles:
        _, alpha = render.render(torch.arange(3), row.expand(3, 3))
        a = alpha[:, 0].numpy()
        for i in range(3):
            for j in range(i + 1, 3):
                assert iou(a[i], a[j]) < 0.75, (row, i, j)


def test_rotation_moves_the_silhouette():
    for k in range(3):
        base = render.render(torch.tensor([k]), torch.zeros(1, 3))[1][0, 0].numpy()
        for axis in range(3):
            angles = torch.zeros(1, 3)
            angles[0, axis] = 0.3
            moved = render.render(torch.tensor([k]), angles)[1][0, 0].numpy()
            assert iou(base, moved) < 0.95, (k, axis)
        # opposite signs differ too (the objects are not mirror images of themselves along the axes)
        plus = render.render(torch.tensor([k]), torch.tensor([[0.4, 0.0, 0.0]]))[1][0, 0].numpy()
        minus = render.render(torch.tensor([k]), torch.tensor([[-0.4, 0.0, 0.0]]))[1][0, 0].numpy()
        assert iou(plus, minus) < 0.95


def test_sizes_and_supersampling():
    g, a = render.render(torch.tensor([0]), torch.zeros(1, 3), size=32, supersample=1)
    assert g.shape == (1, 1, 32, 32) and set(a.unique().tolist()) <= {0.0, 1.0}
    g0, a0 = render.render(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3))
    assert g0.shape == a0.shape == (0, 1, render.SIZE, render.SIZE)
    grey, alpha = render.render_one("penguin", (0.1, -0.2, 0.3))
    assert isinstance(grey, np.ndarray) and grey.shape == alpha.shape == (render.SIZE, render.SIZE)


@pytest.mark.parametrize("call", [
    lambda: render.render_one("cat", (0, 0, 0)),
    lambda: render.render_one("monkey", (0.6, 0, 0)),
    lambda: render.render_one("monkey", (0, 0)),
    lambda: render.render_one("monkey", (0, float("nan"), 0)),
    lambda: render.render(torch.tensor([3]), torch.zeros(1, 3)),
    lambda: render.render(torch.tensor([-1]), torch.zeros(1, 3)),
    lambda: render.render(torch.tensor([0.0]), torch.zeros(1, 3)),
    lambda: render.render(torch.tensor([0, 1]), torch.zeros(1, 3)),
    lambda: render.render(torch.tensor([0]), torch.tensor([[0.0, -0.51, 0.0]])),
    lambda: render.render(torch.tensor([0]), torch.tensor([[float("inf"), 0.0, 0.0]])),
    lambda: render.render(torch.tensor([0]), torch.zeros(1, 3), size=0),
    lambda: render.render(torch.tensor([0]), torch.zeros(1, 3), supersample=2.5),
])
def test_bad_input_raises_a_sentence(call):
    with pytest.raises(ConfigError) as info:
        call()
    assert isinstance(info.value, GlassboxError)
    message = str(info.value)
    assert message[0].isupper() and message.endswith(".")


def test_rotation_matrices():
    angles = random_angles(16, 3).double()
    r = render.rotation_matrices(angles)
    assert r.shape == (16, 3, 3)
    eye = torch.eye(3, dtype=r.dtype).expand(16, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(16, dtype=r.dtype), atol=1e-12)

    x, y, z = 0.3, -0.2, 0.4
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    got = render.rotation_matrices(torch.tensor([[x, y, z]], dtype=torch.float64))[0].numpy()
    np.testing.assert_allclose(got, rz @ ry @ rx, atol=1e-12)
    # Blender's Euler((0.3, -0.2, 0.4), 'XYZ').to_matrix(), printed by bpy 5.0.1
    blender = np.array([[0.9027, -0.4261, -0.0597], [0.3817, 0.8571, -0.3461], [0.1987, 0.2896, 0.9363]])
    np.testing.assert_allclose(got, blender, atol=1e-4)

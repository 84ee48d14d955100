"""Relabelling engine core (issue 4, first part): eq. 3 by brute force, the grid and cap, real targets.

FGSM, PGD and least-likely (the other entries of the attack registry) are tested in test_attacks.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import attacks, classify, images
from engine import relabel
from engine.errors import ConfigError


def test_distortion_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    total, count = 0.0, 0
    for i in range(7):
        for j in range(5):
            for c in range(3):
                total += (a[i, j, c] / 255 - b[i, j, c] / 255) ** 2
                count += 1
    assert relabel.distortion_rms(a, b) == pytest.approx(math.sqrt(total / count), rel=1e-12)
    ta, tb = (torch.from_numpy(v).permute(2, 0, 1)[None].double() / 255 for v in (a, b))
    assert relabel.distortion_rms(ta, tb) == pytest.approx(math.sqrt(total / count), rel=1e-12)
    one_level = torch.full((1, 3, 4, 4), 1 / 255)
    assert relabel.distortion_rms(one_level, torch.zeros_like(one_level)) == pytest.approx(1 / 255)
    with pytest.raises(ConfigError):
        relabel.distortion_rms(a, b[:3])


@pytest.mark.parametrize("target", ["half track", "espresso", "goldfish"])
def test_relabelled_png_reloads_with_the_target_label(lite0, chelsea_tensor, target):
    result = relabel.relabel(lite0, chelsea_tensor, lite0.class_index(target), relabel.RelabelConfig(cap=0.01))
    assert isinstance(result, attacks.AttackResult) and result.attack == "relabel"
    assert result.succeeded, (result.outcome, result.steps)
    assert result.distortion[-1] <= 0.01 and result.steps >= 1
    assert result.original_class == 285 and result.top1[-1] == result.target
    reloaded = images.decode_image(images.to_png_bytes(result.image))
    assert classify.classify_image(lite0, reloaded, top_k=1).indices[0] == result.target
    # On the 8-bit grid, and eq. 3 of the saved PNG equals the recorded last distortion.
    start = images.to_uint8(chelsea_tensor)
    assert np.array_equal(result.original, start)
    assert relabel.distortion_rms(result.image, start) == pytest.approx(result.distortion[-1], abs=1e-9)
    assert len(result.target_prob) == len(result.distortion) == result.steps + 1


def test_the_cap_is_respected_and_reported_as_an_outcome(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    start = int(tiny.probabilities(x).argmin())
    result = relabel.relabel(tiny, x, start, relabel.RelabelConfig(cap=0.005, max_steps=100, at_cap="stop"))
    assert result.outcome == "cap reached" and not result.succeeded
    assert (result.distortion <= 0.005).all()
    fitted = relabel.relabel(tiny, x, start, relabel.RelabelConfig(cap=0.005, max_steps=100))  # at_cap="fit"
    assert (fitted.distortion <= 0.005 + 1e-12).all() and fitted.steps > result.steps
    levels = fitted.image.astype(int) - images.to_uint8(x).astype(int)
    assert np.abs(levels).max() <= fitted.steps  # whole levels, at most one per step
    stepped = relabel.relabel(tiny, x, start, relabel.RelabelConfig(cap=None, max_steps=3))
    assert stepped.steps == 3 and stepped.outcome in ("step limit reached", "relabelled")
    # every step moves every value by at most alpha levels and stays on the grid
    assert np.abs(stepped.image.astype(int) - images.to_uint8(x).astype(int)).max() <= 3


def test_raw_gradient_step_concentrates_the_change(lite0, chelsea_tensor):
    """Fig. 3: the sign step moves every value; the raw step leaves most of them in place."""
    config = dict(cap=None, max_steps=1)
    sign = relabel.relabel(lite0, chelsea_tensor, 11, relabel.RelabelConfig(step="sign", **config))
    raw = relabel.relabel(lite0, chelsea_tensor, 11, relabel.RelabelConfig(step="raw", alpha=8, **config))
    start = images.to_uint8(chelsea_tensor).astype(float)
    moved_sign = (sign.image.astype(float) != start).mean()
    moved_raw = (raw.image.astype(float) != start).mean()
    assert moved_sign > 0.95 and moved_raw < 0.5
    assert np.abs(raw.image.astype(float) - start).max() == 8


def test_bad_requests_get_sentences(tiny):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ConfigError, match="no class called"):
        relabel.relabel(tiny, x, "unicorn")
    with pytest.raises(ConfigError, match="one image at a time"):
        relabel.relabel(tiny, torch.rand(2, 3, 64, 64), 1)
    with pytest.raises(ConfigError, match="Unknown step"):
        relabel.relabel(tiny, x, 1, relabel.RelabelConfig(step="zigzag"))
    with pytest.raises(ConfigError, match="needs a target class"):
        relabel.relabel(tiny, x, None)
    with pytest.raises(ConfigError, match="takes a RelabelConfig"):
        relabel.relabel(tiny, x, 1, attacks.PGDConfig())


def test_gaussian_start_is_on_the_grid_and_seeded():
    a, b = relabel.gaussian_start(32, seed=3), relabel.gaussian_start(32, seed=3)
    assert torch.equal(a, b) and torch.equal(a, torch.round(a * 255) / 255)


def test_limit_checks_on_a_relabelled_photo(lite0, chelsea_tensor):
    from engine import models

    result = relabel.relabel(lite0, chelsea_tensor, lite0.class_index("half track"))
    second = models.load_model("efficientnet_lite1")
    rows = {row.check: row for row in relabel.limit_checks(lite0, result.image, result.target, result.original_class, second)}
    assert set(rows) == {"as relabelled", "mirror", "crop 90 %", "shift 8 px", "another network"}
    assert rows["as relabelled"].keeps_target
    assert rows["another network"].model == "efficientnet_lite1" and not rows["another network"].keeps_target
    assert sum(not rows[c].keeps_target for c in relabel.CHECKS) >= 2  # the paper: transforms undo the label


def test_sweep_counts_are_exact_on_the_tiny_model(tiny):
    named = {f"img{i}": torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)}
    result = relabel.sweep(tiny, named, 4, cap=0.02, max_steps=40, seed=1)
    assert len(result.pairs) == 12
    for name, target, outcome, steps, distortion in result.pairs:
        again = relabel.relabel(tiny, named[name], target, relabel.RelabelConfig(cap=0.02, max_steps=40))
        assert (again.outcome, again.steps) == (outcome, steps)
        assert target != int(tiny.probabilities(named[name])[0].argmax())
    done = [p for p in result.pairs if p[2] == "relabelled"]
    assert result.success_rate == len(done) / 12
    assert sum(result.steps_histogram().values()) == len(done)


def test_fit_under_cap_spends_the_budget_on_the_largest_gradients():
    original = torch.zeros(1, 3, 2, 2)
    current = original.clone()
    gradient = torch.arange(1.0, 13.0).view(1, 3, 2, 2)  # value 11 has the largest |gradient|
    candidate = current - gradient.sign() / 255
    level = float(torch.tensor(1 / 255))  # one level as the float32 image holds it
    cap = math.sqrt(2 * level ** 2 / 12)  # room for exactly two one-level moves out of twelve
    fitted = relabel.fit_under_cap(current, candidate, original, gradient, cap, min_share=0)
    moved = torch.nonzero((fitted != current).flatten()).flatten().tolist()
    assert moved == [10, 11]
    assert relabel.distortion_rms(fitted, original) <= cap + 1e-15
    assert relabel.fit_under_cap(current, candidate, original, gradient, cap / 10, min_share=0) is None
    assert relabel.fit_under_cap(current, candidate, original, gradient, cap, min_share=0.5) is None


def test_image_quality_numbers():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    same = relabel.image_quality(a, a)
    assert same["distortion"] == 0 and same["linf_levels"] == 0 and same["psnr_db"] == float("inf")
    assert same["ssim"] == pytest.approx(1.0)
    b = np.clip(a.astype(int) + 2, 0, 255).astype(np.uint8)
    q = relabel.image_quality(b, a)
    mse = ((b.astype(float) - a) / 255) ** 2
    assert q["linf_levels"] == 2 and q["psnr_db"] == pytest.approx(10 * math.log10(1 / mse.mean()))
    assert 0.9 < q["ssim"] < 1.0

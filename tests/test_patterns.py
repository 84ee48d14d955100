"""Pattern generation (issue 7, first part): f(t), the losses of sec. 3 against their formulas, G and D shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.patterns import losses, networks


def test_tiled_class_input_shape_and_distribution():
    active = torch.zeros(4000, 5)
    active[:, 2] = 1.0
    tiles = networks.tiled_class_input(active, generator=torch.Generator().manual_seed(0))
    assert tiles.shape == (4000, 5, 8, 8)
    assert torch.count_nonzero(tiles[:, [0, 1, 3, 4]]) == 0  # inactive classes: all-zero tiles
    values = tiles[:, 2].flatten().double()
    # The union of N(1, 2) and N(-1, 2), equally likely: mean 0, variance 1 + 2 = 3, and each half
    # of the mixture shows its own mean: E[x | x > 0] for the mixture, computed by integration below.
    assert abs(values.mean().item()) < 0.02 and values.var().item() == pytest.approx(3.0, rel=0.02)
    sigma = math.sqrt(2.0)

    def normal_pdf(x, mu):
        return np.exp(-((x - mu) ** 2) / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))

    grid = np.linspace(-12, 12, 200001)
    pdf = 0.5 * normal_pdf(grid, 1.0) + 0.5 * normal_pdf(grid, -1.0)
    expected_positive_share = np.trapezoid(pdf[grid > 0], grid[grid > 0])
    expected_abs_mean = np.trapezoid(np.abs(grid) * pdf, grid)
    assert (values > 0).double().mean().item() == pytest.approx(expected_positive_share, abs=0.01)
    assert values.abs().mean().item() == pytest.approx(expected_abs_mean, rel=0.02)
    mixed = networks.tiled_class_input(torch.tensor([[0.5, 0.0, 0.25]]), generator=torch.Generator().manual_seed(1))
    same = networks.tiled_class_input(torch.tensor([[1.0, 0.0, 1.0]]), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mixed[0, 0], 0.5 * same[0, 0]) and torch.allclose(mixed[0, 2], 0.25 * same[0, 2])


@pytest.mark.parametrize("size", [128, 256, 512])
def test_generator_and_discriminator_shapes(size):
    generator = networks.Generator(5, size=size)
    discriminator = networks.Discriminator()
    substrate = torch.rand(1, 3, size, size) * 2 - 1
    tiles = networks.tiled_class_input(torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]))
    with torch.no_grad():
        image = generator(substrate, tiles)
        patches = discriminator(substrate, image)
    assert image.shape == substrate.shape and image.abs().max() <= 1.0
    assert patches.shape == (1, 1, size // 8 - 2, size // 8 - 2)  # 70 x 70 PatchGAN receptive fields
    prelus = [m for m in generator.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus and all(torch.allclose(p.weight, torch.full_like(p.weight, 0.2)) for p in prelus)
    assert any("parametrizations" in name for name, _ in generator.named_parameters())  # weight norm
    with pytest.raises(ConfigError):
        networks.Generator(5, size=100)
    with pytest.raises(ConfigError):
        generator(torch.zeros(1, 3, size // 2, size // 2), tiles)


def test_cgan_loss_is_the_formula():
    real, fake = torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5)
    d_real, d_fake = torch.sigmoid(real.double()), torch.sigmoid(fake.double())
    expected = torch.log(d_real).mean() + torch.log(1 - d_fake).mean()
    assert losses.cgan_loss(real.double(), fake.double()).item() == pytest.approx(expected.item(), rel=1e-12)
    assert losses.generator_adversarial_loss(fake.double()).item() == pytest.approx(torch.log(1 - d_fake).mean().item())


def test_mask_loss_penalises_anything_but_white_on_the_background():
    background = torch.zeros(1, 1, 4, 4)
    background[..., :2] = 1.0
    white = torch.ones(1, 3, 4, 4)
    assert losses.mask_loss(white, background).item() == 0.0
    black_background = white.clone()
    black_background[..., :2] = -1.0
    assert losses.mask_loss(black_background, background).item() == pytest.approx(1.0)
    black_figure = white.clone()
    black_figure[..., 2:] = -1.0  # the garment may take any colour
    assert losses.mask_loss(black_figure, background).item() == 0.0
    grey = torch.zeros(1, 3, 4, 4)
    assert losses.mask_loss(grey, background).item() == pytest.approx(0.5)


def test_classifier_loss_is_the_formula():
    rng = np.random.default_rng(0)
    t = np.array([[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]], float)
    resized = rng.uniform(0, 0.99, (2, 5))
    crops = rng.uniform(0, 0.99, (2, 3, 5))

    def l_of(x):
        return np.mean(x - np.log(1 - x))

    expected = np.mean([l_of(np.abs(t[b] - resized[b]) * t[b])
                        + max(l_of(np.abs(t[b] - crops[b, k]) * (1 - t[b])) for k in range(3)) for b in range(2)])
    got = losses.classifier_loss(torch.from_numpy(resized), torch.from_numpy(crops), torch.from_numpy(t))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    perfect = losses.classifier_loss(torch.from_numpy(t), torch.from_numpy(np.repeat(t[:, None], 3, 1) * 0), torch.from_numpy(t))
    assert perfect.item() == 0.0


def test_substrate_loss_is_the_formula():
    rng = np.random.default_rng(1)
    target, image = rng.uniform(-1, 1, (2, 3, 4, 4)), rng.uniform(-1, 1, (2, 3, 4, 4))
    d = target - image
    expected = np.mean(np.abs(d) - np.log(1 - np.abs(d / 2) ** 2))
    assert losses.substrate_loss(torch.from_numpy(target), torch.from_numpy(image)).item() == pytest.approx(expected, rel=1e-12)
    same = torch.from_numpy(target)
    assert losses.substrate_loss(same, same).item() == 0.0
    assert torch.isfinite(losses.substrate_loss(torch.ones(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)))  # |T-G|/2 = 1: clamped


def test_random_crops_are_distinct_and_in_place():
    images = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).view(2, 3, 64, 64)
    crops, corners = losses.random_crops(images, generator=torch.Generator().manual_seed(0))
    side = round(64 * 224 / 512)
    assert crops.shape == (2, 3, 3, side, side) and len(set(corners)) == 3
    y, x = corners[1]
    assert torch.equal(crops[1, 1], images[1, :, y:y + side, x:x + side])
    assert losses.PatternLossWeights().as_dict() == {"cgan": 3.0, "mask": 10.0, "classifier": 50.0, "substrate": 150.0,
                                                     "colour": 0.0}  # the paper's four; our colour term off


def test_substrates_are_garments_on_white_with_exact_backgrounds():
    from engine.patterns import substrates

    batch = substrates.substrate_batch(24, 128, seed=3)
    assert batch[5].image.tobytes() == substrates.substrate_batch(6, 128, seed=3)[5].image.tobytes()  # by (seed, index)
    assert {s.garment for s in substrates.substrate_batch(80, 64)} == set(substrates.GARMENTS)
    for substrate in batch:
        assert substrate.image.shape == (128, 128, 3) and substrate.image.dtype == np.uint8
        assert (substrate.image[substrate.background] == 255).all()  # the background is white
        assert 0.1 < (~substrate.background).mean() < 0.8 and not (substrate.image[~substrate.background] == 255).all()
    images, background = substrates.substrate_tensors(batch[:2])
    assert images.shape == (2, 3, 128, 128) and images.min() >= -1 and images.max() <= 1 and background.shape == (2, 1, 128, 128)
    with pytest.raises(ConfigError, match="No garment called"):
        substrates.draw_substrate("cape", 64, (1, 2, 3))


def test_the_papers_augmentations():
    from engine.patterns import substrates

    plain = substrates.draw_substrate("t-shirt", 64, (200, 40, 90))
    swapped = substrates.swap_colour_axes(plain.image, (2, 0, 1))
    assert tuple(swapped[~plain.background][0]) == (90, 200, 40)
    shifted = substrates.shift_colour(plain.image, 1)
    assert tuple(shifted[~plain.background][0]) == (200, 255, 90) and (shifted[plain.background] == 255).all()
    two_tone = plain.image.copy()
    two_tone[:, :32][~plain.background[:, :32]] = (200, 90, 90)  # differs from the rest only in green
    assert substrates.shift_colour(two_tone, 1) is None  # setting green to 255 would merge the two colours
    # The left half's tone is brighter (sum 380 against 330); swaps keep the sums and a shift that
    # would merge the tones is refused, so the brighter tone sits on the right only after a flip.
    flips = [substrates.augment(substrates.Substrate(two_tone, plain.background, "t-shirt"), np.random.default_rng(i))
             for i in range(40)]
    flipped = [int(f.image[40, 24].astype(int).sum()) < int(f.image[40, 40].astype(int).sum()) for f in flips]
    assert 5 < sum(flipped) < 35
    assert all((f.image[f.background] == 255).all() for f in flips)


def test_quick_mode_paints_the_class_onto_one_substrate(lite0):
    from engine.patterns import quick
    from engine.patterns import substrates

    substrate = substrates.draw_substrate("t-shirt", 128, (90, 120, 200))
    result = quick.quick_pattern(lite0, substrate.image, substrate.background, ["zebra"], config=quick.QuickConfig(steps=25))
    assert result.total[-1] < result.total[0] and result.target_prob[-1] > 5 * result.target_prob[0]
    assert result.image.shape == (128, 128, 3)
    with pytest.raises(ConfigError, match="one to three"):
        quick.quick_pattern(lite0, substrate.image, substrate.background, [1, 2, 3, 4])


def test_constant_class_tiles_carry_the_weights():
    from engine.patterns.networks import tiled_class_input

    active = torch.tensor([[0.0, 1.0, 0.5]])
    tiles = tiled_class_input(active, noise=False)
    assert tiles.shape == (1, 3, 8, 8)
    assert torch.equal(tiles[0, 0], torch.zeros(8, 8)) and torch.equal(tiles[0, 1], torch.ones(8, 8))
    assert torch.equal(tiles[0, 2], torch.full((8, 8), 0.5))


def test_the_critic_is_vgg16_when_its_weights_are_here(monkeypatch):
    from engine import models
    from engine.patterns import training

    monkeypatch.setattr(models, "torchvision_weights_cached", lambda name: name == "vgg16")
    assert training.default_classifier() == "vgg16"
    monkeypatch.setattr(models, "torchvision_weights_cached", lambda name: False)
    assert training.default_classifier() == models.DEFAULT_MODEL

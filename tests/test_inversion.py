"""Class inversion engine (issue 5): the five losses by brute force, masks, jitter, the loop's properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import hooks, images
from engine import inversion
from engine.errors import ConfigError, ImageError


def brute_tv(image: np.ndarray) -> float:
    """The paper's sec. 2.2 definition, literally: per channel, flatten row-major and column-major."""
    total = 0.0
    for channel in image:
        for flat in (channel.flatten(order="C"), channel.flatten(order="F")):
            for i in range(len(flat) - 1):
                total += abs(float(flat[i + 1]) - float(flat[i]))
    return total


def test_total_variation_is_the_papers_flattened_sum():
    rng = np.random.default_rng(0)
    image = rng.random((3, 5, 7))
    assert float(inversion.total_variation(torch.from_numpy(image)[None])) == pytest.approx(brute_tv(image), rel=1e-12)
    # The flattening counts the jump from the end of a row to the start of the next one.
    ramp = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    # row-major 0,1,0,1 -> 3; column-major 0,0,1,1 -> 1
    assert float(inversion.total_variation(ramp)) == pytest.approx(4.0)
    assert brute_tv(ramp[0].numpy()) == pytest.approx(float(inversion.total_variation(ramp)))


def test_colour_term_counts_only_differences_above_30_percent():
    original = torch.zeros(1, 3, 2, 2)
    changed = original.clone()
    changed[0, 0, 0, 0] = 0.29  # under the threshold: free
    changed[0, 1, 0, 1] = 0.31  # over: counted
    changed[0, 2, 1, 1] = -0.5  # over, either sign
    expected = sum(d * d for d in (0.31, -0.5))
    assert float(inversion.colour_similarity(changed, original)) == pytest.approx(expected, rel=1e-6)
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 3, 4, 4)), rng.random((1, 3, 4, 4))
    brute = sum((x - y) ** 2 for x, y in zip(a.ravel(), b.ravel()) if abs(x - y) > 0.3)
    measured = float(inversion.colour_similarity(torch.from_numpy(a), torch.from_numpy(b)))
    assert measured == pytest.approx(brute, rel=1e-12)


def test_gram_matrix_and_style_loss_match_loops():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((1, 3, 2, 4))
    gram = inversion.gram_matrix(torch.from_numpy(f))[0].numpy()
    for i in range(3):
        for j in range(3):
            assert gram[i, j] == pytest.approx(sum(f[0, i].ravel()[k] * f[0, j].ravel()[k] for k in range(8)))
    g = rng.standard_normal((1, 3, 2, 4))
    other = rng.standard_normal((1, 5, 3, 3))
    target_f = inversion.gram_matrix(torch.from_numpy(g))
    target_o = inversion.gram_matrix(torch.from_numpy(rng.standard_normal((1, 5, 3, 3))))
    loss = float(inversion.style_loss([torch.from_numpy(f), torch.from_numpy(other)], [target_f, target_o]))
    e1 = ((inversion.gram_matrix(torch.from_numpy(f)) - target_f) ** 2).sum().item() / (4 * 3 ** 2 * 8 ** 2)
    e2 = ((inversion.gram_matrix(torch.from_numpy(other)) - target_o) ** 2).sum().item() / (4 * 5 ** 2 * 9 ** 2)
    assert loss == pytest.approx((e1 + e2) / 2, rel=1e-12)
    content = float(inversion.content_loss(torch.from_numpy(f), torch.from_numpy(g)))
    assert content == pytest.approx(0.5 * ((f - g) ** 2).sum())


def test_paper_weights_convert_exactly_for_the_pixel_terms():
    """w_paper * TV(image in 0-255) equals w_here * TV(image in [0, 1]); the same for colour."""
    rng = np.random.default_rng(3)
    x, x0 = torch.from_numpy(rng.random((1, 3, 6, 6))), torch.from_numpy(rng.random((1, 3, 6, 6)))
    ours = inversion.LossWeights.from_paper(0, 0, 2e-6, 3e-8)
    paper_tv = float(inversion.total_variation(x * 255))
    assert 2e-6 * paper_tv == pytest.approx(ours.tv * float(inversion.total_variation(x)), rel=1e-9)
    paper_colour = float(inversion.colour_similarity(x * 255, x0 * 255, threshold=0.3 * 255))
    assert 3e-8 * paper_colour == pytest.approx(ours.colour * float(inversion.colour_similarity(x, x0)), rel=1e-9)
    negative = inversion.LossWeights.from_paper(-6e-11, 1e-13, 0, 0)
    assert negative.content < 0 < negative.style


def test_masks_from_shapes_and_pixels():
    ellipse = inversion.ellipse_mask(200, (0.0, 0.0, 1.0, 1.0))
    assert ellipse.mean() == pytest.approx(math.pi / 4, abs=0.01)
    rect = inversion.rectangle_mask(100, (0.1, 0.2, 0.5, 0.6))
    assert rect.sum() == 40 * 40 and rect[20, 10] == 1 and rect[19, 10] == 0
    drawing = np.zeros((50, 50, 4), np.uint8)
    drawing[10:20, 30:40] = (255, 0, 0, 200)  # a painted patch on a transparent canvas
    mask = inversion.mask_from_pixels(drawing, 100)
    assert mask[30, 70] == 1 and mask[5, 5] == 0 and 300 <= mask.sum() <= 500
    grey = np.zeros((10, 10), np.uint8)
    grey[:, 5:] = 255
    assert inversion.mask_from_pixels(grey, 10)[:, 5:].all() and not inversion.mask_from_pixels(grey, 10)[:, :5].any()
    with pytest.raises(ConfigError, match="empty"):
        inversion.mask_from_pixels(np.zeros((10, 10, 4), np.uint8), 10)
    with pytest.raises(ConfigError, match="no area"):
        inversion.rectangle_mask(10, (0.5, 0.5, 0.5, 0.9))
    with pytest.raises(ImageError):
        inversion.mask_from_pixels(np.zeros((2, 2, 2, 2)), 10)
    with pytest.raises(ConfigError, match="must match"):
        inversion.validate_mask(np.ones((5, 5)), 10)


def test_jitter_shifts_and_restores():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float64).view(2, 3, 5, 6)
    shifted = inversion.jitter(x, (2, -3))
    assert shifted[0, 0, 2, 0] == x[0, 0, 0, 3] and torch.equal(inversion.unjitter(shifted, (2, -3)), x)
    generator = torch.Generator().manual_seed(0)
    shifts = [inversion.random_shift(generator, 16) for _ in range(300)]
    assert max(max(abs(a), abs(b)) for a, b in shifts) == 16 and len(set(shifts)) > 100
    assert inversion.random_shift(generator, 0) == (0, 0)
    # The gradient through the roll lands on the unshifted pixels: d/dx f(roll(x)) = unroll(f'(roll(x))).
    weights = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    image = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad((inversion.jitter(image, (1, 2)) * weights).square().sum(), image)
    expected = inversion.unjitter(2 * inversion.jitter(image.detach(), (1, 2)) * weights ** 2, (1, 2))
    assert torch.allclose(gradient, expected)


def tiny_image(tiny, seed=0):
    """A smooth random photo stand-in: 8 x 8 noise blown up to the tiny net's 64 px."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=tiny.input_size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("optimizer,jitter", [("lbfgs", 0), ("adam", 0), ("gd", 0), ("adam", 8)])
def test_total_loss_goes_down_and_nothing_is_left_on_the_model(tiny, optimizer, jitter):
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    weights = inversion.LossWeights(content=1e-2, style=1e-1, tv=1e-3, colour=1.0)
    config = inversion.InversionConfig(weights=weights, optimizer=optimizer, steps=25, jitter=jitter,
                                       require_change=False)
    result = inversion.invert(tiny, tiny_image(tiny), 3, config)
    assert result.outcome == "done" and len(result.total) == 26
    assert result.total[-1] < result.total[0] - 0.1
    if not jitter:  # without jitter each step sees the same function: (almost) every step goes down
        assert np.mean(np.diff(result.total) <= 1e-6) >= 0.9
    assert set(result.terms) == {"classification", "content", "style", "tv", "colour"}
    assert hooks.count_hooks(tiny.model) == 0
    assert all(torch.equal(v, state[k]) for k, v in tiny.model.state_dict().items())
    assert result.image.dtype == np.uint8 and [s for s, _ in result.snapshots][0] == 0


@pytest.mark.parametrize("optimizer,jitter", [("lbfgs", 0), ("adam", 8), ("gd", 4)])
def test_pixels_outside_the_mask_stay_bit_for_bit(tiny, optimizer, jitter):
    x = images.quantize(tiny_image(tiny, 1))
    mask = inversion.ellipse_mask(tiny.input_size, (0.2, 0.2, 0.7, 0.8))
    config = inversion.InversionConfig(weights=inversion.LossWeights(tv=1e-3, colour=1.0), optimizer=optimizer,
                                       steps=15, jitter=jitter, require_change=False)
    result = inversion.invert(tiny, x, 5, config, mask=mask)
    before, after = images.to_uint8(x), result.image
    outside = mask == 0
    assert np.array_equal(before[outside], after[outside])
    assert (before[~outside] != after[~outside]).mean() > 0.2  # the inside did change


def test_chelsea_becomes_a_tiger_with_the_default_budget(lite0, chelsea_tensor):
    result = inversion.invert(lite0, chelsea_tensor, "tiger")
    assert lite0.class_names[result.final_class] == "tiger", lite0.class_names[result.final_class]
    assert result.total[-1] < result.total[0]
    assert result.evaluations <= result.steps * 2 + 1  # about one pass per L-BFGS iteration
    assert hooks.count_hooks(lite0.model) == 0


def test_exploding_weights_stop_with_the_last_good_image(tiny):
    x = tiny_image(tiny, 2)
    config = inversion.InversionConfig(weights=inversion.LossWeights(content=-1e6), optimizer="adam", steps=50, lr=0.5,
                               require_change=False)
    result = inversion.invert(tiny, x, 1, config)
    assert result.outcome == "diverged" and "exploded" in result.message
    assert result.steps < 50 and np.isfinite(result.total).all()
    nan = inversion.invert(tiny, x, 1, inversion.InversionConfig(weights=inversion.LossWeights(tv=float("nan")),
                                                               require_change=False))
    assert nan.outcome == "diverged" and "not a finite number" in nan.message
    assert np.array_equal(nan.image, images.to_uint8(x))  # nothing good came after the start


def test_bad_requests_are_sentences(tiny, lite0, chelsea_tensor):
    x = tiny_image(tiny)
    with pytest.raises(ConfigError, match="L-BFGS cannot take jitter"):
        inversion.invert(tiny, x, 1, inversion.InversionConfig(jitter=16))
    with pytest.raises(ConfigError, match="already calls this image a Egyptian cat"):
        inversion.invert(lite0, chelsea_tensor, "Egyptian cat")
    with pytest.raises(ConfigError, match="Unknown optimiser"):
        inversion.invert(tiny, x, 1, inversion.InversionConfig(optimizer="sgd2", require_change=False))
    with pytest.raises(ConfigError, match="no class called"):
        inversion.invert(lite0, chelsea_tensor, "tigger")
    with pytest.raises(ConfigError, match="empty"):
        inversion.invert(tiny, x, 1, inversion.InversionConfig(require_change=False), mask=np.zeros((64, 64)))
    with pytest.raises(ConfigError, match="model's"):
        inversion.invert(tiny, torch.rand(1, 3, 32, 32), 1)


def test_feature_inversion_reconstructs_from_noise(tiny):
    x = tiny_image(tiny, 3)
    result = inversion.invert_features(tiny, x, inversion.FeatureInversionConfig(steps=60, lr=0.05))
    representation = result.raw_terms["representation"]
    assert result.target is None and representation[-1] < 0.3 * representation[0]
    assert np.array_equal(result.original, images.to_uint8(x))
    assert hooks.count_hooks(tiny.model) == 0


def test_start_from_noise_and_snapshots(tiny):
    config = inversion.InversionConfig(start="noise", steps=12, snapshots=4, optimizer="adam")
    result = inversion.invert(tiny, tiny_image(tiny), 2, config)
    assert [step for step, _ in result.snapshots] == [0, 4, 8, 12]
    assert not np.array_equal(result.original, images.to_uint8(tiny_image(tiny)))
    listed = inversion.InversionConfig(steps=12, snapshots=(3, 5, 99), optimizer="adam", require_change=False)
    chosen = inversion.invert(tiny, tiny_image(tiny), 2, listed)
    assert [step for step, _ in chosen.snapshots] == [3, 5, 12]
    rows = inversion.loss_log_rows(result)
    assert len(rows) == 13 and {"step", "total", "classification", "target_prob", "top1"} <= set(rows[0])


def test_cancel_stops_the_run(tiny):
    from engine.errors import Cancelled

    calls = []

    def progress(fraction, message):
        calls.append(fraction)
        return len(calls) < 3

    with pytest.raises(Cancelled):
        inversion.invert(tiny, tiny_image(tiny), 1, inversion.InversionConfig(steps=30, require_change=False),
                         progress=progress)
    assert hooks.count_hooks(tiny.model) == 0


def test_presets_build_configs_and_masks(lite0):
    for preset in inversion.PRESETS.values():
        config = preset.config(lite0)
        assert (config.jitter == 0) == (config.optimizer == "lbfgs")
        assert config.content_loss == "mse"  # every preset: the feature MSE, as the paper's code
        mask = inversion.preset_mask(preset, lite0.input_size)
        assert (mask is None) == (preset.mask is None)
        assert not preset.hole or mask is not None


def test_every_row_of_the_results_figure_is_a_preset():
    """The figure's 17 rows, in its order: six from the dog photo, four from the cat, three holes, four jittered."""
    groups = [preset.group for preset in inversion.PRESETS.values()]
    assert len(groups) == 17 and groups == ["dog"] * 6 + ["cat"] * 4 + ["holes"] * 3 + ["jitter"] * 4
    labels = [preset.label for preset in inversion.PRESETS.values()]
    assert labels[3] == "Brown bear (-1e-11, 0, 1e-6)" and labels[10:13] == [
        "Hole-filling with tiger label", "Hole-filling with bear label", "Hole-filling with gecko label"]
    for preset in inversion.PRESETS.values():
        printed = preset.label.rsplit("(", 1)[-1].rstrip(")") if "(" in preset.label else None
        if printed is not None:  # the label prints the paper's numbers; the weights are those numbers
            numbers = [float(v) for v in printed.split(",")]
            assert tuple(numbers) == preset.paper_weights[:len(numbers)]
        if preset.group == "dog":
            assert "dog" in preset.note and "cat photo" in preset.note  # why it runs on the cat
        if preset.jitter:
            assert preset.optimizer == "gd"  # the paper's jittered rows: simple gradient descent (sec. 4)


@pytest.mark.parametrize("name", list(inversion.PRESETS))
def test_every_preset_reaches_its_target_within_its_steps(lite0, name):
    """Each row, as the page runs it, on the bundled model: top-1 is its target after its step budget.
    (About 5-10 s each on one CPU thread; 17 rows.)"""
    preset = inversion.PRESETS[name]
    result = inversion.run_preset(lite0, preset)
    # "stalled": L-BFGS stopped moving, which a row whose loss reaches ~0 in two steps (tabby) may do
    # under another thread count; never "diverged", never past its budget
    assert result.outcome in ("done", "stalled") and result.steps <= preset.steps
    assert result.final_class == preset.target, lite0.class_names[result.final_class]
    if preset.hole:
        outside = inversion.preset_mask(preset, lite0.input_size) == 0
        assert np.array_equal(result.image[outside], result.original[outside])


# -- the content loss two ways (issue 15) ------------------------------------------------------------


def brute_gram_content(f: np.ndarray, p: np.ndarray) -> float:
    """The paper's sec. 2.2 text with Gatys eq. 3-4's normalisation, by loops: 1/(4 N^2 M^2) sum (G - A)^2."""
    channels = f.shape[0]
    positions = f.shape[1] * f.shape[2]
    ff, pp = f.reshape(channels, positions), p.reshape(channels, positions)
    total = 0.0
    for i in range(channels):
        for j in range(channels):
            g = sum(ff[i, k] * ff[j, k] for k in range(positions))
            a = sum(pp[i, k] * pp[j, k] for k in range(positions))
            total += (g - a) ** 2
    return total / (4 * channels ** 2 * positions ** 2)


def test_gram_content_loss_is_the_formula_and_ignores_where_features_are():
    rng = np.random.default_rng(7)
    f, p = rng.standard_normal((1, 4, 3, 5)), rng.standard_normal((1, 4, 3, 5))
    target = inversion.gram_matrix(torch.from_numpy(p))
    loss = float(inversion.gram_content_loss(torch.from_numpy(f), target))
    assert loss == pytest.approx(brute_gram_content(f[0], p[0]), rel=1e-12)
    # Move the image's features to other positions (one permutation for every channel): the Gram
    # distance is the same, Gatys' feature MSE is not.
    order = rng.permutation(15)
    moved = torch.from_numpy(f).flatten(2)[..., order].view(1, 4, 3, 5)
    assert float(inversion.gram_content_loss(moved, target)) == pytest.approx(loss, rel=1e-12)
    mse = float(inversion.content_loss(torch.from_numpy(f), torch.from_numpy(p)))
    assert float(inversion.content_loss(moved, torch.from_numpy(p))) != pytest.approx(mse, rel=1e-3)
    assert float(inversion.gram_content_loss(torch.from_numpy(p), target)) == 0.0


def test_the_content_loss_choice_builds_its_term(tiny):
    x, original = tiny_image(tiny, 8), tiny_image(tiny, 9)
    layer, _ = inversion.default_layers(tiny)
    weights = inversion.LossWeights(content=1e-2)
    gram = inversion.class_objective(tiny, original, 3, weights, content_layer=layer, style_layers=(),
                                     content_loss="gram")
    term = gram.terms[1]
    assert isinstance(term, inversion.GramContentTerm) and term.name == "content"
    with torch.no_grad(), hooks.capture(tiny, [layer]) as features:
        tiny.logits(x)
    with torch.no_grad(), hooks.capture(tiny, [layer]) as reference:
        tiny.logits(original)
    expected = 1e-2 * float(inversion.gram_content_loss(features[layer], inversion.gram_matrix(reference[layer])))
    assert float(gram.evaluate(tiny, x).weighted["content"]) == pytest.approx(expected, rel=1e-6)
    mse = inversion.class_objective(tiny, original, 3, weights, content_layer=layer, style_layers=())
    assert isinstance(mse.terms[1], inversion.ContentTerm)
    # Paper weights: the Gram distance converts as style does (a Gram matrix, squared), MSE as features squared.
    assert inversion.LossWeights.from_paper(1e-10, 1e-7, 0, 0, content_loss="gram").content == pytest.approx(
        inversion.LossWeights.from_paper(0, 1e-10, 0, 0).style)
    with pytest.raises(ConfigError, match="Unknown content loss"):
        inversion.invert(tiny, x, 1, inversion.InversionConfig(content_loss="l1", require_change=False))
    result = inversion.invert(tiny, x, 1, inversion.InversionConfig(content_loss="gram", steps=5,
                                                                    require_change=False))
    assert result.config["content_loss"] == "gram" and "content" in result.terms


# -- hole-filling (issue 15) -------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer,jitter", [("lbfgs", 0), ("adam", 8), ("gd", 4)])
def test_hole_filling_changes_only_the_hole(tiny, optimizer, jitter):
    x = images.quantize(tiny_image(tiny, 10))
    hole = inversion.ellipse_mask(tiny.input_size, (0.3, 0.25, 0.75, 0.7))
    config = inversion.InversionConfig(weights=inversion.LossWeights(tv=1e-3, style=1e-1, content=1e-2),
                                       optimizer=optimizer, steps=12, jitter=jitter, require_change=False)
    result = inversion.fill_hole(tiny, x, 5, config, hole=hole)
    photo, outside = images.to_uint8(x), hole == 0
    assert np.array_equal(result.original, photo)
    assert np.array_equal(result.image[outside], photo[outside])  # exactly the photo outside the hole
    assert all(np.array_equal(pixels[outside], photo[outside]) for _, pixels in result.snapshots)
    assert (result.image[~outside] != photo[~outside]).mean() > 0.5  # the hole was erased and refilled
    assert np.array_equal(result.start[outside], photo[outside]) and result.config["mode"] == "hole"
    assert result.original_class == int(tiny.logits(x).argmax()) and hooks.count_hooks(tiny.model) == 0


def test_the_hole_is_erased_from_its_surroundings_only():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hole = inversion.rectangle_mask(32, (0.25, 0.25, 0.75, 0.75))
    other = x.clone()
    other[..., 8:24, 8:24] = torch.rand(1, 3, 16, 16)  # another picture inside the hole
    smooth = inversion.erase_hole(x, hole, "smooth")
    assert torch.equal(smooth, inversion.erase_hole(other, hole, "smooth"))  # nothing of the hole leaks in
    inside = torch.from_numpy(hole).bool().expand_as(x[0])[None]
    assert torch.equal(smooth[~inside], x[~inside])
    assert smooth[inside].min() >= x[~inside].min() and smooth[inside].max() <= x[~inside].max()
    assert torch.equal(inversion.erase_hole(x, hole, "grey")[inside], torch.full((int(inside.sum()),), 0.5))
    noise = inversion.erase_hole(x, hole, "noise", seed=3)
    assert torch.equal(noise, inversion.erase_hole(x, hole, "noise", seed=3)) and noise[inside].std() > 0


def test_bad_holes_are_sentences(tiny, lite0, chelsea_tensor):
    x, size = tiny_image(tiny, 11), tiny.input_size
    config = inversion.InversionConfig(require_change=False, steps=2)
    with pytest.raises(ConfigError, match="The hole is empty"):
        inversion.fill_hole(tiny, x, 1, config, hole=np.zeros((size, size)))
    with pytest.raises(ConfigError, match="covers the whole image"):
        inversion.fill_hole(tiny, x, 1, config, hole=np.ones((size, size)))
    with pytest.raises(ConfigError, match="must match the model's 64 x 64"):
        inversion.fill_hole(tiny, x, 1, config, hole=np.ones((10, 10)))
    with pytest.raises(ConfigError, match="needs a hole"):
        inversion.fill_hole(tiny, x, 1, config, hole=None)
    hole = inversion.rectangle_mask(size, (0.2, 0.2, 0.6, 0.6))
    with pytest.raises(ConfigError, match="Unknown fill"):
        inversion.fill_hole(tiny, x, 1, config, hole=hole, fill="sand")
    with pytest.raises(ConfigError, match="cannot start from noise"):
        inversion.fill_hole(tiny, x, 1, inversion.InversionConfig(start="noise"), hole=hole)
    face = inversion.preset_mask(inversion.PRESETS["hole-tiger"], lite0.input_size)
    with pytest.raises(ConfigError, match="already calls this image a Egyptian cat"):
        inversion.fill_hole(lite0, chelsea_tensor, "Egyptian cat", hole=face)


# -- the objective as a sum of terms, jitter as a transform (issue 11) -----------------------------


class Brightness(inversion.Term):
    """A term written outside the engine: the mean pixel value."""

    name = "brightness"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, image, features):
        return image.mean()


def test_the_objective_is_the_sum_of_its_terms(tiny):
    x, original = tiny_image(tiny, 4), tiny_image(tiny, 5)
    content_layer, style_layers = inversion.default_layers(tiny)
    weights = inversion.LossWeights(content=1e-2, style=1e-1, tv=1e-3, colour=1.0)
    objective = inversion.class_objective(tiny, original, 3, weights, content_layer=content_layer,
                                          style_layers=style_layers)
    assert [term.name for term in objective.terms] == ["classification", "content", "style", "tv", "colour"]
    evaluation = objective.evaluate(tiny, x)
    with torch.no_grad(), hooks.capture(tiny, objective.layers) as activations:
        logits = tiny.logits(x)
    features = inversion.Features(logits, dict(activations))
    one_by_one = {term.name: term.weight * float(term(x, features)) for term in objective.terms}
    assert float(evaluation.total()) == pytest.approx(sum(one_by_one.values()), rel=1e-6)
    assert {name: float(value) for name, value in evaluation.weighted.items()} == pytest.approx(one_by_one, rel=1e-6)
    # Each term is its formula of sec. 2.2, on the image or on the features of the image and the original.
    with torch.no_grad(), hooks.capture(tiny, objective.layers) as reference:
        tiny.logits(original)
    expected = {
        "classification": float(torch.nn.functional.cross_entropy(logits, torch.tensor([3]))),
        "content": 1e-2 * float(inversion.content_loss(activations[content_layer], reference[content_layer])),
        "style": 1e-1 * float(inversion.style_loss([activations[n] for n in style_layers],
                                                   [inversion.gram_matrix(reference[n]) for n in style_layers])),
        "tv": 1e-3 * float(inversion.total_variation(x)),
        "colour": float(inversion.colour_similarity(x, original)),
    }
    assert one_by_one == pytest.approx(expected, rel=1e-6)
    # Composing: one more term adds exactly its weighted value; a term of weight 0 is measured, not added.
    extended = objective + Brightness(2.0)
    assert float(extended.evaluate(tiny, x).total()) == pytest.approx(float(evaluation.total()) + 2 * float(x.mean()),
                                                                      rel=1e-6)
    silent = (objective + Brightness(0.0)).evaluate(tiny, x)
    assert "brightness" in silent.raw and "brightness" not in silent.weighted
    assert hooks.count_hooks(tiny.model) == 0


def test_a_composed_objective_runs_through_the_loop(tiny):
    objective = inversion.Objective([inversion.ClassificationTerm(4), inversion.TotalVariationTerm(weight=1e-3),
                                     Brightness(-0.5)], target=4)
    loop = inversion.LoopConfig(optimizer="adam", lr=0.02, steps=15, snapshots=2)
    result = inversion.optimise(tiny, tiny_image(tiny, 6), objective, loop)
    assert set(result.terms) == {"classification", "tv", "brightness"} and len(result.total) == 16
    assert result.total[-1] < result.total[0] and result.target == 4
    assert hooks.count_hooks(tiny.model) == 0
    with pytest.raises(ConfigError, match="own name"):
        inversion.Objective([inversion.TotalVariationTerm(weight=1.0), inversion.TotalVariationTerm(weight=2.0)])
    with pytest.raises(ConfigError, match="step size must be positive"):
        inversion.LoopConfig(lr=0)


def test_jitter_is_a_transform_that_rolls_the_image_and_aligns_the_features():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).view(2, 3, 8, 8)
    transform = inversion.Jitter(3, seed=11)
    shift = inversion.random_shift(torch.Generator().manual_seed(11), 3)
    seen = transform(x)
    assert torch.equal(seen.image, torch.roll(x, shift, dims=(2, 3)))
    features = torch.randn(2, 4, 4, 4)  # a layer at half the resolution: the shift, halved
    assert torch.equal(seen.align(features), torch.roll(features, tuple(round(s / 2) for s in shift), dims=(2, 3)))
    # Two rolls are one roll by their sum; the alignments compose the same way.
    first, second = inversion.Jitter(4, seed=1), inversion.Jitter(4, seed=2)
    both = inversion.apply_transforms(x, [first, second])
    shifts = [inversion.random_shift(torch.Generator().manual_seed(seed), 4) for seed in (1, 2)]
    total = tuple(a + b for a, b in zip(*shifts))
    assert torch.equal(both.image, torch.roll(x, total, dims=(2, 3)))
    assert torch.equal(both.align(x), torch.roll(x, total, dims=(2, 3)))
    with pytest.raises(ConfigError, match="Jitter is a shift of 0 to 64"):
        inversion.Jitter(65)


@pytest.mark.parametrize("content", [0.0, 1e-2])
def test_jitter_as_a_transform_is_the_old_roll_before_each_forward_pass(tiny, content):
    """Same seed, same result: Adam with 6 px jitter against a hand-written loop that rolls the image
    before each forward pass (and the original's features with it) as the engine did before."""
    x, target, steps, seed = tiny_image(tiny, 7), 2, 10, 5
    weights = inversion.LossWeights(content=content, tv=1e-3, colour=1.0)
    config = inversion.InversionConfig(weights=weights, optimizer="adam", steps=steps, jitter=6, seed=seed,
                                       require_change=False)
    result = inversion.invert(tiny, x, target, config)

    layer = inversion.default_layers(tiny)[0]
    with torch.no_grad(), hooks.capture(tiny, [layer]) as reference:
        tiny.logits(x)
    generator = torch.Generator().manual_seed(seed)
    image = x.clone().requires_grad_(True)
    adam = torch.optim.Adam([image], lr=config.learning_rate())
    totals = []
    for _ in range(steps):
        dy, dx = inversion.random_shift(generator, 6)
        seen = image.clamp(0.0, 1.0)
        with hooks.capture(tiny, [layer]) as features:
            logits = tiny.logits(torch.roll(seen, (dy, dx), dims=(2, 3)) if dy or dx else seen)
        parts = [torch.nn.functional.cross_entropy(logits, torch.tensor([target]))]
        if content:
            scale = features[layer].shape[2] / seen.shape[2]
            rolled = torch.roll(reference[layer], (round(dy * scale), round(dx * scale)), dims=(2, 3))
            parts.append(inversion.content_loss(features[layer], rolled) * content)
        parts += [inversion.total_variation(seen) * 1e-3, inversion.colour_similarity(seen, x) * 1.0]
        total = torch.stack(parts).sum()
        totals.append(sum(float(part.detach()) for part in parts))  # the record sums the terms as numbers
        (image.grad,) = torch.autograd.grad(total, image)
        adam.step()
        with torch.no_grad():
            image.clamp_(0.0, 1.0)
    assert result.total[:steps].tolist() == totals
    assert np.array_equal(result.image, images.to_uint8(image.detach()))

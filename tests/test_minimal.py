"""Minimal perturbations (engine.minimal) against closed forms, the new registry entries' own
behaviour, and ``python -m engine attack``.

On an affine classifier DeepFool's linearisation is exact, so its first step must land on the
nearest class boundary, at the analytic distance ``min_k |f_k - f_o| / |w_k - w_o|``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from engine import attacks, images, lab, minimal, models
from engine.__main__ import main
from engine.errors import ConfigError

CLASSES, SHAPE = 6, (3, 2, 2)


@pytest.fixture(scope="module")
def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), CLASSES)).double().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def interior() -> torch.Tensor:
    """Points well inside the box, so no clamp touches the first steps."""
    return 0.45 + 0.1 * torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny64(tiny):
    """The tiny net in float64 (its own copy): batched and per-image passes agree to rounding."""
    model = copy.deepcopy(tiny.model).double()
    return lambda x: model((x.double() - 0.5) / 0.5)


def nearest_boundary(model: nn.Module, x: torch.Tensor) -> tuple[int, int, float, torch.Tensor]:
    """The affine case by hand: (own class, nearest class, distance, unit direction)."""
    weight, bias = model[1].weight, model[1].bias
    scores = weight @ x.flatten() + bias
    own = int(scores.argmax())
    rows = [(abs(float(scores[k] - scores[own])) / float((weight[k] - weight[own]).norm()), k)
            for k in range(CLASSES) if k != own]
    distance, nearest = min(rows)
    direction = (weight[nearest] - weight[own]) / (weight[nearest] - weight[own]).norm()
    return own, nearest, distance, direction.view(SHAPE)


# ---------------------------------------------------------------------------------------------
# DeepFool


def test_deepfool_on_an_affine_classifier_is_the_closed_form(linear, interior):
    for overshoot in (0.0, 0.02):
        result = minimal.deepfool(linear, interior, overshoot=overshoot)
        for i, x in enumerate(interior):
            own, nearest, distance, direction = nearest_boundary(linear, x)
            # one step: onto the nearest hyperplane (plus the reference code's 1e-4), then overshoot
            expected = (1 + overshoot) * (distance + 1e-4) * direction
            assert torch.allclose(result.perturbation[i], expected, atol=1e-10)
            assert result.iterations[i] == 1 and result.original[i] == own and result.final[i] == nearest
            assert result.flipped[i]
            assert result.norms[i] == pytest.approx((1 + overshoot) * (distance + 1e-4), abs=1e-10)
            assert distance <= result.norms[i] <= (1 + overshoot) * distance + (1 + overshoot) * 1e-4 + 1e-12
            # without the nudge the step ends exactly on the boundary: two classes tie
            on_boundary = linear((x + distance * direction).unsqueeze(0))[0]
            assert float(on_boundary[own] - on_boundary[nearest]) == pytest.approx(0.0, abs=1e-9)
        assert torch.allclose(result.adversarial, (interior + result.perturbation).clamp(0, 1))


def test_deepfool_moves_only_towards_its_candidates(linear, interior):
    result = minimal.deepfool(linear, interior, candidates=2)
    weight = linear[1].weight
    for i, x in enumerate(interior):
        own, runner_up = linear(x.unsqueeze(0))[0].topk(2).indices.tolist()
        direction = (weight[runner_up] - weight[own]).view(SHAPE)
        cosine = float((result.perturbation[i] * direction).sum() / (result.perturbation[i].norm() * direction.norm()))
        assert cosine == pytest.approx(1.0, abs=1e-9)  # every step along the runner-up's boundary normal
    with pytest.raises(ConfigError, match="at least 2 candidate"):
        minimal.deepfool(linear, interior, candidates=1)


# images flip at different iterations: (2, 4, 4) takes the second forward pass of the kept images,
# (3, 6, 2) the slice of the first one's graph
@pytest.mark.parametrize("seed,count,k", [(2, 4, 4), (3, 6, 2)])
def test_deepfool_batched_is_deepfool_per_image_and_costs_one_forward_plus_k_backwards(tiny64, seed, count, k):
    x = torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    batched = minimal.deepfool(tiny64, x, candidates=k)
    assert len(set(batched.iterations.tolist())) > 1
    for i in range(len(x)):
        forwards, backwards = [], []

        def counting(images: torch.Tensor) -> torch.Tensor:
            logits = tiny64(images)
            forwards.append(len(images))
            logits.register_hook(lambda grad: backwards.append(1))  # once per backward pass through it
            return logits

        alone = minimal.deepfool(counting, x[i:i + 1], candidates=k)
        assert torch.allclose(batched.perturbation[i], alone.perturbation[0], atol=1e-9)
        assert batched.iterations[i] == alone.iterations[0] and batched.final[i] == alone.final[0]
        steps = int(alone.iterations[0])
        assert alone.flipped[0] and steps >= 1
        assert len(forwards) == steps + 1 and len(backwards) == k * steps  # the floor, nothing more
    assert torch.equal(batched.flipped, batched.final != batched.original)
    assert torch.allclose(batched.norms, batched.perturbation.flatten(1).norm(dim=1))


def test_deepfool_stops_at_max_iter_and_reports_progress(tiny64):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls: list[float] = []
    result = minimal.deepfool(tiny64, x, overshoot=0.0, max_iter=1, progress=lambda f, m: calls.append(f))
    assert (result.iterations <= 1).all() and calls[0] == 0.0 and calls[-1] == 1.0
    assert torch.equal(result.final, torch.as_tensor(lab.predict(tiny64, result.adversarial)[0]))
    with torch.inference_mode():  # a caller that turned autograd off still gets gradients inside
        inside = minimal.deepfool(tiny64, x.clone(), overshoot=0.0, max_iter=1)
    assert torch.equal(inside.perturbation, result.perturbation)


# ---------------------------------------------------------------------------------------------
# L-BFGS (Szegedy et al.)


def test_lbfgs_flips_inside_the_box_on_the_grid(tiny):
    x = images.quantize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    result = minimal.lbfgs(tiny, x)
    adversarial = result.adversarial
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert torch.equal(adversarial, torch.round(adversarial * 255) / 255)  # on the 8-bit grid
    top1 = torch.as_tensor(tiny.probabilities(adversarial).argmax(1))
    assert torch.equal(top1, result.final) and result.flipped.all() and (result.final != result.original).all()
    assert torch.allclose(result.norms, (adversarial - x).flatten(1).norm(dim=1))
    assert torch.allclose(result.norms_levels, result.norms * 255)
    assert (result.evaluations > 0).all() and torch.isfinite(result.c).all() and (result.target == -1).all()


def test_lbfgs_hits_a_target_and_a_larger_c_gives_a_smaller_perturbation(linear, interior):
    x = interior[:1]
    own, target = linear(x)[0].argsort()[[-1, 0]].tolist()  # the least likely class as the target
    norms = []
    for c in (0.01, 0.1, 1.0, 10.0):  # a convex problem: the one minimiser's norm falls as c grows
        solution = minimal.penalty_minimizer(linear, x, c, original=own, target=target, max_iter=200)
        norms.append(float((solution.image - x).norm()))
    assert all(a >= b - 1e-6 for a, b in zip(norms, norms[1:])) and norms[0] > norms[-1]
    with torch.no_grad():
        result = minimal.lbfgs(linear, x, target, c_init=1.0, max_iter=100)
    assert result.flipped[0] and result.final[0] == target == int(linear(result.adversarial).argmax())
    assert torch.equal(result.adversarial, torch.round(result.adversarial * 255) / 255)


# ---------------------------------------------------------------------------------------------
# The new registry entries (the shared checks are in tests/test_attacks.py)


def test_most_likely_raises_the_top_class_probability(lite0, chelsea_tensor):
    result = attacks.get_attack("mostlikely").run(lite0, chelsea_tensor, None, attacks.FGSMConfig(epsilon=2))
    before = lite0.probabilities(chelsea_tensor)[0]
    assert result.target == result.original_class == int(before.argmax()) == 285
    assert result.final_probs[285] > before[285] and result.final_class == 285
    assert result.outcome == attacks.CONFIDENCE_RAISED and result.linf_levels == 2
    assert "went up from" in attacks.MostLikely.verdict(result, lite0.class_names).text


@pytest.mark.parametrize("key", ["bim", "ll"])
def test_kurakin_methods_stay_in_the_epsilon_ball(tiny, key):
    x = images.quantize(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)))
    attack = attacks.get_attack(key)
    result = attack.run(tiny, x, None, attack.make_config(epsilon=3))
    assert result.steps == lab.kurakin_steps(3) == 3 and result.linf_levels <= 3
    assert np.abs(result.image.astype(int) - images.to_uint8(x).astype(int)).max() <= 3
    if key == "ll":
        assert result.target == attacks.least_likely_class(tiny, x)
        assert result.target_prob[-1] > result.target_prob[0]
    else:
        assert result.target is None and result.original_prob[-1] < result.original_prob[0]


def test_deepfool_entry_lands_on_the_grid_with_a_new_label(lite0, chelsea_tensor):
    result = attacks.get_attack("deepfool").run(lite0, chelsea_tensor)
    assert result.outcome == attacks.LABEL_CHANGED and result.final_class != 285
    again = lite0.probabilities(images.to_tensor(result.image))[0]
    assert int(again.argmax()) == result.final_class  # the PNG itself keeps the new label
    assert 0 < attacks.l2_levels(result) < 100 and result.linf_levels <= 8
    assert "L2 norm" in attacks.DeepFool.verdict(result, lite0.class_names).text
    with pytest.raises(ConfigError, match="takes no target"):
        attacks.DeepFool.run(lite0, chelsea_tensor, 3)


# ---------------------------------------------------------------------------------------------
# The CLI


def test_attack_cli_writes_the_image_steps_and_manifest(tmp_path, capsys):
    assert main(["attack", "chelsea", "--method", "deepfool", "--model", models.TEST_MODEL, "--out", str(tmp_path)]) == 0
    assert "deepfool:" in capsys.readouterr().out
    picture = images.decode_image((tmp_path / "chelsea_deepfool.png").read_bytes())
    assert picture.size == (64, 64)
    steps = json.loads((tmp_path / "chelsea_deepfool_steps.json").read_text())
    manifest = json.loads((tmp_path / "chelsea_deepfool_manifest.json").read_text())
    assert steps["attack"] == manifest["method"] == "deepfool" and manifest["model"] == models.TEST_MODEL
    assert manifest["final_top1"]["id"] != manifest["original_class"]["id"] and manifest["l2_levels"] > 0
    assert main(["attack", "chelsea", "--method", "bim", "--epsilon", "2", "--model", models.TEST_MODEL,
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "chelsea_bim_manifest.json").read_text())["config"] == {"epsilon": 2, "steps": None}


def test_attack_cli_errors_are_sentences(tmp_path, capsys):
    assert main(["attack", "chelsea", "--method", "deepfoo", "--model", models.TEST_MODEL, "--out", str(tmp_path)]) == 2
    assert "no attack called 'deepfoo'. Did you mean deepfool?" in capsys.readouterr().err
    assert main(["attack", "chelsea", "--method", "deepfool", "--target", "3", "--model", models.TEST_MODEL,
                 "--out", str(tmp_path)]) == 2
    assert "takes no --target" in capsys.readouterr().err
    assert main(["attack", "chelsea", "--method", "fgsm", "--epsilon", "0", "--out", str(tmp_path)]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

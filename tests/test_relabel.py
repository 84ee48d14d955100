"""Relabelling engine core (issue 4, first part): eq. 3 by brute force, the grid and cap, real targets.

FGSM, PGD and least-likely (the other entries of the attack registry) are tested in test_attacks.py.
"""

from __future__ import annotations

import json
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


class MeanLevel(torch.nn.Module):
    """Two classes, logits (0, 255 * mean(x) - bias): every sign step towards class 1 raises the
    mean by exactly one level, so the steps each pair needs can be counted by hand."""

    def __init__(self, bias: float):
        super().__init__()
        self.bias = bias

    def forward(self, x):
        margin = 255 * x.mean(dim=(1, 2, 3)) - self.bias
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def planted_handle(bias: float = 128.2):
    import dataclasses

    from engine import models

    spec = dataclasses.replace(models.test_spec(), name="mean_level", input_size=8, mean=(0.0, 0.0, 0.0),
                               std=(1.0, 1.0, 1.0))
    return models.make_handle(spec, MeanLevel(bias), ("dark", "bright"), torch.device("cpu"))


def grey(level: int) -> torch.Tensor:
    return torch.full((1, 3, 8, 8), level / 255)


def test_both_sweep_rules_count_exactly_as_worked_out_by_hand():
    """Class 1 needs 255 * mean > 128.2. From a flat grey of level L that is 129 - L one-level steps
    (L = 127: 2, 125: 4, 122: 7, 120: 9). The cap 0.025 is 6.375 levels RMS: the paper's rule
    fits 6 full steps, so 2 of 4 pairs succeed; the fit rule can raise the mean by at most 6.375
    levels (an RMS bound), so it also gets L = 122 (6.2 needed) and no more: 3 of 4. Class 0 from
    level 140 needs 11.8 levels down: it fails under both."""
    handle = planted_handle()
    named = {"127": grey(127), "125": grey(125), "122": grey(122), "120": grey(120), "140": grey(140)}
    both = relabel.sweep_both(handle, named, 1, cap=0.025, max_steps=50, seed=0)
    paper, fit = both.paper, both.fit
    assert [(p.image, p.target) for p in paper.pairs] == [("127", 1), ("125", 1), ("122", 1), ("120", 1), ("140", 0)]
    assert [(p.outcome, p.steps) for p in paper.pairs] == [
        ("relabelled", 2), ("relabelled", 4), ("cap reached", 6), ("cap reached", 6), ("cap reached", 6)]
    assert [p.distortion for p in paper.pairs] == pytest.approx([2 / 255, 4 / 255, 6 / 255, 6 / 255, 6 / 255], rel=1e-5)  # float32 levels
    assert (paper.successes, paper.success_rate) == (2, 2 / 5)
    assert paper.mean_distortion == pytest.approx(3 / 255, rel=1e-5)
    assert paper.steps_histogram() == {2: 1, 4: 1}
    assert [p.outcome for p in fit.pairs] == ["relabelled", "relabelled", "relabelled", "cap reached", "cap reached"]
    assert fit.pairs[:2] == paper.pairs[:2]  # the rules differ only once a full step would pass the cap
    assert fit.pairs[2].steps == 7 and 6 / 255 < fit.pairs[2].distortion <= 0.025 + 1e-12
    assert fit.successes == 3 and fit.steps_histogram() == {2: 1, 4: 1, 7: 1}
    edges, counts = paper.distortion_histogram(bins=5)
    assert edges[-1] == pytest.approx(0.025) and counts.tolist() == [0, 1, 0, 1, 0]  # 0.0078 and 0.0157 in bins of 0.005
    assert both.headline is paper and list(relabel.sweep_summary(both.by_rule())["rules"]) == ["paper", "fit"]


def paper_rule_by_hand(handle, x, target, cap, max_steps):
    """Eq. 1-2 with the paper's stop, written out without the engine's relabelling code."""
    original = torch.round(x.clamp(0, 1) * 255) / 255
    current = original.clone()
    for step in range(max_steps + 1):
        image = current.clone().requires_grad_(True)
        logits = handle.model(handle.normalize(image))
        if int(logits.argmax()) == target:
            return "relabelled", step
        if step == max_steps:
            return "step limit reached", step
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([target]))
        (gradient,) = torch.autograd.grad(loss, image)
        candidate = torch.round((current - gradient.sign() / 255).clamp(0, 1) * 255) / 255
        if math.sqrt(float(((candidate.double() - original.double()) ** 2).mean())) > cap:
            return "cap reached", step
        current = candidate


def test_sweep_counts_are_exact_on_the_tiny_model(tiny):
    """Both rules against a brute force: every pair run again on its own (and, for the paper's rule,
    by a loop written out here), the counts recounted, the plan's targets checked."""
    named = {f"img{i}": torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)}
    both = relabel.sweep_both(tiny, named, 4, cap=0.12, max_steps=40, seed=1)
    for rule, result in both.by_rule().items():
        assert len(result.pairs) == 12 and result.rule == rule
        config = relabel.RelabelConfig(cap=0.12, max_steps=40, at_cap=relabel.SWEEP_RULES[rule])
        for pair in result.pairs:
            again = relabel.relabel(tiny, named[pair.image], pair.target, config)
            assert (again.outcome, again.steps) == (pair.outcome, pair.steps)
            assert again.final_distortion == pytest.approx(pair.distortion, abs=1e-12)
            if rule == "paper":
                assert paper_rule_by_hand(tiny, named[pair.image], pair.target, 0.12, 40) == (pair.outcome, pair.steps)
        assert result.successes == sum(p.outcome == "relabelled" for p in result.pairs)
        assert sum(result.steps_histogram().values()) == result.successes
        assert result.distortion_histogram()[1].sum() == result.successes
    outcomes = {p.outcome for p in both.paper.pairs}
    assert "relabelled" in outcomes and outcomes - {"relabelled"}, outcomes  # a count that could fail
    for name, x in named.items():
        targets = [p.target for p in both.paper.pairs if p.image == name]
        assert len(set(targets)) == 4 and int(tiny.probabilities(x)[0].argmax()) not in targets
    assert both.fit.successes >= both.paper.successes
    alone = relabel.sweep(tiny, named, 4, rule="fit", cap=0.12, max_steps=40, seed=1)
    assert alone.pairs == both.fit.pairs  # sweep_both's shortcut changes nothing


def test_sweep_bad_input_gets_sentences(tiny):
    named = {"a": torch.rand(1, 3, 64, 64)}
    with pytest.raises(ConfigError, match="Unknown sweep rule 'greedy'"):
        relabel.sweep(tiny, named, 2, rule="greedy")
    with pytest.raises(ConfigError, match="Unknown sweep rule"):
        relabel.sweep_rules(tiny, named, 2, rule="greedy")
    with pytest.raises(ConfigError, match="at least 1 target"):
        relabel.sweep_both(tiny, named, 0)
    for cap in (0, -0.01, float("nan")):
        with pytest.raises(ConfigError, match="cap above 0"):
            relabel.sweep(tiny, named, 2, cap=cap)
    with pytest.raises(ConfigError, match="at least one image"):
        relabel.sweep(tiny, {}, 2)
    with pytest.raises(ConfigError, match="does not land on the 8-bit grid"):
        relabel.sweep(tiny, named, 2, alpha=1.5)
    with pytest.raises(ConfigError, match="turn snapping off"):
        relabel.sweep(tiny, named, 2, alpha=0.2)
    with pytest.raises(ConfigError, match="No bundled photo called 'unicorn'"):
        relabel.sample_inputs(tiny, ["chelsea", "unicorn"])


def test_fractional_steps_without_snapping_move_alpha_levels_a_step(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    config = relabel.RelabelConfig(alpha=0.2, snap=False, cap=None, max_steps=3)
    gradient = relabel.cross_entropy_gradient(tiny, images.quantize(x), 8)[1]
    one = relabel.sign_step(images.quantize(x), gradient, config)
    moved = (one - images.quantize(x)).abs() * 255
    inside = (images.quantize(x) > 0.01) & (images.quantize(x) < 0.99)  # away from the clip
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], 0.2), atol=1e-4)
    result = relabel.relabel(tiny, x, 8, config)
    assert result.steps == 3 and result.distortion[-1] <= 3 * 0.2 / 255 + 1e-9
    swept = relabel.sweep(tiny, {"x": x}, 2, cap=0.2, max_steps=60, alpha=0.5, snap=False)
    assert swept.config["snap"] is False and swept.config["alpha"] == 0.5
    for pair in swept.pairs:  # the 8-bit check classifies the rounded image on its own
        again = relabel.relabel(tiny, x, pair.target, relabel.RelabelConfig(alpha=0.5, snap=False, cap=0.2,
                                                                            max_steps=60, at_cap="stop"))
        assert pair.saved_top1 == int(tiny.probabilities(images.to_tensor(again.image))[0].argmax())


def test_sweep_csv_and_json_hold_every_pair_of_both_rules(tiny):
    named = {"a": torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    both = relabel.sweep_both(tiny, named, 3, cap=0.12, max_steps=40)
    lines = both.csv().strip().splitlines()
    assert lines[0] == "rule,image,target,outcome,steps,distortion,saved_top1" and len(lines) == 1 + 6
    assert [line.split(",")[0] for line in lines[1:]] == ["paper"] * 3 + ["fit"] * 3
    summary = json.loads(json.dumps(both.summary()))
    assert summary["headline"] == "paper" and summary["paper_reported"]["success_rate"] == 0.987
    assert summary["rules"]["paper"]["pairs"] == 3 and len(summary["rules"]["fit"]["pairs_detail"]) == 3


def test_relabel_sweep_cli_reports_both_rules(tmp_path, capsys):
    from engine.__main__ import main

    code = main(["relabel-sweep", "--images", "chelsea", "coffee", "--targets", "2", "--cap", "0.12", "--steps", "30",
                 "--model", "tiny_test_cnn", "--out", str(tmp_path / "both")])
    assert code == 0
    payload = json.loads((tmp_path / "both" / "sweep.json").read_text())
    assert payload["headline"] == "paper" and list(payload["rules"]) == ["paper", "fit"]
    assert payload["rules"]["paper"]["pairs"] == 4 and payload["rules"]["paper"]["config"]["at_cap"] == "stop"
    assert payload["rules"]["fit"]["config"]["at_cap"] == "fit"
    out = capsys.readouterr().out
    assert "paper rule:" in out and "fit rule:" in out and "98.7 %" in out
    assert main(["relabel-sweep", "--images", "chelsea", "--targets", "1", "--rule", "fit", "--steps", "5",
                 "--model", "tiny_test_cnn", "--out", str(tmp_path / "fit")]) == 0
    assert list(json.loads((tmp_path / "fit" / "sweep.json").read_text())["rules"]) == ["fit"]
    assert main(["relabel-sweep", "--images", "chelsea", "--targets", "0", "--model", "tiny_test_cnn",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "at least 1 target" in capsys.readouterr().err


def test_one_big_step_does_not_relabel_the_cat_but_small_steps_do(lite0, chelsea_tensor):
    """Sec. 3.1, the page's preset: the whole cap in one sign step (2 levels) along the first
    gradient leaves the cat a cat; the iterative method under the paper's rule gets a half-track,
    and no single step of 1 to 5 levels does."""
    compared = relabel.single_step_vs_iterative(lite0, chelsea_tensor, 586, cap=0.01)
    assert compared.iterative_relabels and compared.iterative.config["at_cap"] == "stop"
    assert compared.iterative.final_distortion <= 0.01
    assert compared.epsilon == 2 and not compared.single_relabels and compared.single_distortion <= 0.01
    assert not compared.ladder_reaches_target and len(compared.ladder) >= compared.iterative.steps
    assert compared.first_two_sign_agreement < 0.75  # one step of one level already turns the gradient


def test_single_step_properties_on_the_tiny_model(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    compared = relabel.single_step_vs_iterative(tiny, x, 8, cap=0.05, max_steps=20, ladder_to=6)
    original = images.quantize(x)
    gradient = relabel.cross_entropy_gradient(tiny, original, 8)[1]
    expected = images.to_uint8(images.quantize(original - compared.epsilon * gradient.sign() / 255))
    assert compared.epsilon == relabel.cap_levels(0.05) == 12 and np.array_equal(compared.single_image, expected)
    assert [row[0] for row in compared.ladder] == list(range(1, 13))  # at least up to the big step
    distortions = [row[3] for row in compared.ladder]
    assert distortions == sorted(distortions) and distortions[-1] <= 12 / 255 + 1e-9
    assert compared.single_distortion == pytest.approx(relabel.distortion_rms(expected, images.to_uint8(original)))
    assert 0.0 <= compared.first_last_sign_agreement <= 1.0 and relabel.cap_levels(0.001) == 1
    with pytest.raises(ConfigError, match="cap above 0"):
        relabel.single_step_vs_iterative(tiny, x, 8, cap=0)


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

"""The attack registry: one shared test for every entry, cancel mid-run, the CLI's choices.

Adding an attack to ``engine.attacks`` puts it through every test parametrised over ``ATTACKS``
below without touching this file; its own behaviour (what it does to an image) gets one test.
"""

from __future__ import annotations

import argparse
import json
import threading

import numpy as np
import pytest
import torch

from engine import attacks, hooks, images, io, jobs
from engine import relabel as R
from engine.errors import Cancelled, ConfigError

KEYS = list(attacks.ATTACKS)


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# The target each entry that picks its own should pick (every other entry takes the test's).
OWN_TARGETS = {
    "leastlikely": attacks.least_likely_class,
    "ll": attacks.least_likely_class,
    "mostlikely": attacks.most_likely_class,
}


def target_for(attack: type[attacks.Attack], handle, x: torch.Tensor) -> int | None:
    """A class other than the image's own (None for an attack that picks its own or takes none)."""
    if attack.own_target or not attack.targeted:
        return None
    return (int(handle.probabilities(x)[0].argmax()) + 1) % handle.num_classes


def state(handle) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in handle.model.state_dict().items()}


@pytest.mark.parametrize("key", KEYS)
def test_every_attack_runs_through_the_one_verb(tiny, noise, key):
    attack = attacks.get_attack(key)
    x = noise.clone()
    before = state(tiny)
    config = attack.Config()
    records: list = []
    result = attack.run(tiny, x, target_for(attack, tiny, x), config, observer=records)
    # one result type, plain numbers
    assert type(result) is attacks.AttackResult and result.attack == key
    assert result.image.dtype == np.uint8 and result.image.shape == (64, 64, 3)
    assert np.array_equal(result.original, images.to_uint8(x))
    count = result.steps + 1  # one record before each step and one at the end
    for series in (result.target_prob, result.original_prob, result.top1, result.distortion):
        assert isinstance(series, np.ndarray) and len(series) == count
    assert [r["distortion"] for r in records] == pytest.approx(list(result.distortion))  # the live curve
    assert {"target", "original", "top1", "distortion"} <= set(records[0])
    # the last record is the image itself, on the 8-bit grid: what the model classified at the end
    assert R.distortion_rms(result.image, result.original) == pytest.approx(result.final_distortion, abs=1e-9)
    again = tiny.probabilities(images.to_tensor(result.image))[0]
    assert np.allclose(result.final_probs, again, atol=1e-5)
    assert result.final_class == result.top1[-1] == int(np.argmax(again))
    assert result.original_class == int(tiny.probabilities(x)[0].argmax())
    assert result.linf_levels == np.abs(result.image.astype(int) - result.original.astype(int)).max()
    if attack.own_target:
        assert result.target == OWN_TARGETS[key](tiny, x)
    # config round trip, and the fields `python -m engine methods --json` lists
    assert attack.Config(**result.config) == config and attack.make_config(**result.config) == config
    described = next(entry for entry in attacks.describe() if entry["key"] == key)
    assert described["label"] == attack.label
    assert {field["name"]: field["default"] for field in described["fields"]} == attack.Config().as_dict()
    json.dumps(attacks.describe())
    # one manifest, JSON-ready
    record = attacks.manifest(result, tiny, image_name="noise", image_sha256="abc")
    assert {"glassbox", "manifest_version", "created", "image", "image_sha256", "model", "method", "method_label",
            "target", "original_class", "final_top1", "outcome", "steps", "distortion_eq3", "quality",
            "config"} <= set(record)
    assert record["glassbox"] == "relabel" and record["method"] == key and record["config"] == result.config
    assert record["final_top1"]["id"] == result.final_class and record["distortion_eq3"] == result.final_distortion
    assert json.loads(io.manifest_json(record))["quality"]["linf_levels"] == result.linf_levels
    assert attacks.step_log(result)["steps"] == result.steps
    verdict = attack.verdict(result, tiny.class_names)
    assert verdict.tone in ("success", "warning", "info") and verdict.text
    # no trace on the shared model or on the caller's tensor
    assert hooks.count_hooks(tiny.model) == 0
    assert torch.equal(x, noise) and not x.requires_grad
    assert all(torch.equal(value, state(tiny)[name]) for name, value in before.items())


@pytest.mark.parametrize("key", KEYS)
def test_no_hook_is_left_after_an_error(tiny, noise, key):
    attack = attacks.get_attack(key)

    def failing(fraction: float, message: str) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        attack.run(tiny, noise, target_for(attack, tiny, noise), progress=failing)
    assert hooks.count_hooks(tiny.model) == 0 and not noise.requires_grad
    with pytest.raises(ConfigError, match="one image at a time"):
        attack.run(tiny, torch.rand(2, 3, 64, 64), target_for(attack, tiny, noise))
    assert hooks.count_hooks(tiny.model) == 0


@pytest.mark.parametrize("key", KEYS)
def test_every_attack_reports_progress_before_its_end_and_stops_when_told(tiny, noise, key):
    attack = attacks.get_attack(key)
    calls: list[float] = []
    with pytest.raises(Cancelled):
        attack.run(tiny, noise, target_for(attack, tiny, noise), progress=lambda f, m: calls.append(f) or False)
    assert calls and calls[0] < 1.0 and len(calls) == 1


@pytest.mark.parametrize("key", [key for key in KEYS if not attacks.ATTACKS[key].needs_target
                                 and not attacks.ATTACKS[key].own_target])
def test_untargeted_attacks_push_away_from_the_own_class(tiny, noise, key):
    result = attacks.get_attack(key).run(tiny, noise)
    assert result.target is None and result.outcome in (attacks.LABEL_CHANGED, attacks.LABEL_KEPT)
    assert result.succeeded == (result.final_class != result.original_class)
    assert result.original_prob[-1] < result.original_prob[0]  # the own class lost ground


# ---------------------------------------------------------------------------------------------
# Cancel stops an attack mid-run, directly and as a job


FAR_RUNS = {  # planned records (steps + 1) of a run that cannot end early
    "relabel": (R.RelabelConfig(cap=None, max_steps=40), 41),
    "fgsm": (attacks.FGSMConfig(epsilon=4), 2),
    "pgd": (attacks.PGDConfig(steps=40), 41),
    "bim": (attacks.BIMConfig(epsilon=4, steps=40), 41),
    "lbfgs": (attacks.LBFGSConfig(c_steps=4, max_iter=10), 1 + 4 * (2 * 10 + 1) + 1),  # evaluations, grid checks
}


def far_target(handle, x) -> int:
    return attacks.least_likely_class(handle, x)


@pytest.mark.parametrize("key", list(FAR_RUNS))
def test_cancel_stops_the_run_mid_way(tiny, noise, key):
    config, planned = FAR_RUNS[key]
    records: list = []
    calls: list[float] = []

    def stop_on_second_call(fraction: float, message: str) -> bool:
        calls.append(fraction)
        return len(calls) < 2 if key != "fgsm" else False

    with pytest.raises(Cancelled):
        attacks.get_attack(key).run(tiny, noise, far_target(tiny, noise), config, stop_on_second_call, records)
    assert 1 <= len(records) < planned and max(calls) < 1.0
    assert hooks.count_hooks(tiny.model) == 0


@pytest.mark.parametrize("key", list(FAR_RUNS))
def test_cancel_stops_an_attack_job_mid_run(tiny, noise, key):
    config, planned = FAR_RUNS[key]
    registry = jobs.JobRegistry()
    started, release = threading.Event(), threading.Event()

    def gated(*args, progress, observer):
        def slow(fraction: float, message: str) -> bool:
            started.set()  # the run is under way: hold it here until the test has pressed Cancel
            release.wait(10)
            return progress(fraction, message)
        return attacks.get_attack(key).run(*args, progress=slow, observer=observer)

    status = registry.find_or_start(f"cancel-{key}", gated, tiny, noise, far_target(tiny, noise), config,
                                    title=key, records=True)
    assert started.wait(30)
    registry.cancel(status.id)
    release.set()
    final = registry.wait(status.id, timeout=60)
    assert final.state is jobs.JobState.CANCELLED and final.result is None
    assert 1 <= len(final.records) < planned
    assert hooks.count_hooks(tiny.model) == 0


# ---------------------------------------------------------------------------------------------
# What each entry does


@pytest.mark.parametrize("key", ["fgsm", "pgd", "leastlikely"])
def test_budget_attacks_respect_epsilon_and_the_grid(lite0, chelsea_tensor, key):
    attack = attacks.get_attack(key)
    config = attack.make_config(epsilon=3, step=1, steps=6, random_start=(key == "pgd"))
    target = None if key != "leastlikely" else 1  # a target is ignored by least-likely
    result = attack.run(lite0, chelsea_tensor, target, config)
    start = images.to_uint8(chelsea_tensor).astype(float)
    change = np.abs(result.image.astype(float) - start)
    assert change.max() <= 3 and result.linf_levels <= 3
    assert result.original_class == 285
    if key == "fgsm":
        assert change.max() == 3 and result.steps == 1  # one full step of size eps
    if key == "leastlikely":
        probs_before = lite0.probabilities(chelsea_tensor)[0]
        assert result.target == int(probs_before.argmin())
        assert result.final_probs[result.target] > probs_before[result.target]
        assert result.target_prob[-1] > result.target_prob[0]
    if key == "pgd":
        assert result.final_class != 285 and result.succeeded  # 6 steps of 1 level inside a 3-level ball
        assert result.steps == 6


def test_pgd_is_captums_pgd_on_the_grid(tiny, noise):
    """The watched forward function changes nothing: the result is captum's own PGD, rounded."""
    from captum.robust import PGD

    config = attacks.PGDConfig(epsilon=6, step=2, steps=5)
    x = images.quantize(noise)
    target = far_target(tiny, x)
    ours = attacks.PGD.run(tiny, x, target, config)
    with torch.enable_grad():
        theirs = PGD(tiny.logits, attacks._cross_entropy, 0.0, 1.0).perturb(x, 6 / 255, 2 / 255, 5, target, targeted=True)
    assert np.array_equal(ours.image, images.to_uint8(attacks.on_grid_within(theirs, x, 6)))


def test_pgd_random_start_is_seeded_and_leaves_the_global_generator_alone(tiny, noise):
    config = attacks.PGDConfig(random_start=True, seed=5, steps=3)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = attacks.PGD.run(tiny, noise, None, config)
    assert torch.equal(torch.rand(3), expected_next)
    second = attacks.PGD.run(tiny, noise, None, config)
    assert np.array_equal(first.image, second.image) and first.distortion[0] > 0
    targeted = attacks.PGD.run(tiny, noise, 3, config)  # the original class is the clean image's, not the start's
    assert targeted.original_class == first.original_class == int(tiny.probabilities(noise)[0].argmax())


def test_least_likely_is_the_argmin_and_unknown_attacks_get_sentences(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    probs = tiny.probabilities(x)[0]
    assert attacks.least_likely_class(tiny, x) == int(np.argmin(probs))
    with pytest.raises(ConfigError, match="no attack called 'carliniwagner'"):
        attacks.get_attack("carliniwagner")
    with pytest.raises(ConfigError, match="Did you mean pgd"):
        attacks.get_attack("pgdd")
    assert attacks.get_attack("FGSM") is attacks.FGSM
    with pytest.raises(ConfigError, match="at least 1"):
        attacks.PGD.run(tiny, x, None, attacks.PGDConfig(steps=0))


def test_the_cli_offers_exactly_the_registry():
    from engine.__main__ import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    method = next(action for action in commands.choices["relabel"]._actions if action.dest == "method")
    assert list(method.choices) == list(attacks.ATTACKS) and method.default == attacks.Relabel.key

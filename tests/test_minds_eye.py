"""The Mind's Eye engine: data, networks, decision rule, attack, training and the CLI's JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.errors import ConfigError, ModelError
from engine.images import quantize
from engine.minds_eye import attack, data, evaluate, nets, train, weights

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data

def test_samples_are_a_function_of_seed_split_and_index():
    a = data.make_batch("train", [5, 6, 7, 8])
    b = data.make_batch("train", [7, 8, 5, 6])
    assert torch.equal(a.image[2:], b.image[:2]) and torch.equal(a.image[:2], b.image[2:])
    other = data.make_batch("train", [5, 6, 7, 8], seed=1)
    assert not torch.equal(a.image, other.image)
    assert a.label.tolist() == [1, 2, 3, 0]  # class = index % 4: exactly balanced
    assert a.image.shape == (4, 1, 64, 64)
    levels = a.image * 255
    assert torch.equal(levels, levels.round()) and a.image.min() >= 0 and a.image.max() <= 1  # 8-bit grey


def test_test_backgrounds_come_from_photos_training_never_sees():
    assert not set(data.TRAIN_PHOTOS) & set(data.TEST_PHOTOS)
    train_photos, test_photos = data.photos("train"), data.photos("test")
    for photo in test_photos:
        assert all((photo - seen).abs().mean() > 0.02 for seen in train_photos)


def test_none_samples_are_background_only_and_objects_are_composited():
    batch = data.make_batch("test", range(8))
    none = batch.label == data.NONE
    assert torch.equal(batch.image[none], quantize(batch.background[none]))
    assert batch.alpha[none].sum() == 0 and batch.angles[none].abs().sum() == 0
    assert (batch.alpha[~none].flatten(1).mean(1) > 0.05).all()
    assert batch.angles.abs().max() <= 0.5


# ---------------------------------------------------------------- networks

def brute_force_score(comparator: nets.Comparator, query, image, alpha) -> float:
    """Fig. 2 by hand: the patch network on every 10x10 patch, weighted by that patch's mean alpha."""
    h, w = query.shape[-2:]
    total = weight_sum = 0.0
    for i in range(h - nets.PATCH + 1):
        for j in range(w - nets.PATCH + 1):
            cut = (slice(None), slice(None), slice(i, i + nets.PATCH), slice(j, j + nets.PATCH))
            similarity = comparator.similarity(query[cut], image[cut], alpha[cut]).item()  # one output per patch
            weight = alpha[cut].mean().item()
            total += similarity * weight
            weight_sum += weight
    return total / weight_sum


def test_comparator_score_equals_a_loop_over_every_patch():
    torch.manual_seed(0)
    comparator = nets.Comparator().eval()
    query, image = torch.rand(1, 1, 17, 15), torch.rand(1, 1, 17, 15)
    alpha = torch.zeros(1, 1, 17, 15)
    alpha[..., 3:12, 2:9] = torch.rand(9, 7)
    with torch.no_grad():
        fast = comparator(query, image, alpha)
        assert fast.similarity.shape == (1, 1, 8, 6)
        assert fast.score.item() == pytest.approx(brute_force_score(comparator, query, image, alpha), rel=1e-5)
        empty = comparator(query, image, torch.zeros_like(alpha))
    assert empty.score.item() == 0.0  # nothing projected: no evidence, not a division by zero


def test_triple_staged_runs_each_class_with_its_class_hard_coded():
    torch.manual_seed(1)
    triple = nets.TripleStaged(nets.Estimator(), nets.Projector(), nets.Comparator()).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = triple(x)
        for c in range(3):
            classes = torch.full((2,), c)
            angles = triple.estimator.estimate(x, classes)
            image, alpha = triple.projector(classes, angles)
            assert torch.allclose(out.angles[:, c], angles, atol=1e-6)
            assert torch.allclose(out.image[:, c], image[:, 0], atol=1e-6)
            assert torch.allclose(out.scores[:, c], triple.comparator(x, image, alpha).score, atol=1e-6)
    assert out.angles.abs().max() <= 0.5  # the estimator's output is clipped to the valid range


def test_decision_rule_at_theta_edges():
    scores = torch.tensor([[0.45, 0.2, 0.1],    # exactly Θ: not above it -> None
                           [0.46, 0.2, 0.1],    # just above -> monkey
                           [0.3, 0.9, 0.9],     # a tie goes to the first of the highest
                           [0.0, 0.0, 0.0],
                           [0.1, 0.2, 0.8]])
    assert nets.verdict(scores, 0.45).tolist() == [3, 0, 1, 3, 2]
    assert nets.verdict(scores, 0.0).tolist() == [0, 0, 1, 3, 2]  # 0 never exceeds 0
    assert nets.verdict(scores, 0.95).tolist() == [3, 3, 3, 3, 3]


# ---------------------------------------------------------------- attack

class Brightness(nn.Module):
    """A toy 4-way net whose 'penguin' logit grows with the mean grey level: flips are predictable."""

    def forward(self, x):
        level = x.flatten(1).mean(1, keepdim=True) * 255
        logits = torch.cat([torch.full_like(level, 100.0), level, torch.zeros_like(level), torch.zeros_like(level)], 1)
        return {"logits": logits}


def test_attack_steps_one_grey_level_clipped_and_each_image_stops_at_its_own_flip():
    contender = attack.Contender("direct", Brightness())
    x = torch.zeros(3, 1, 64, 64)
    x[0] += 90 / 255
    x[0, 0, 0, 0] = 1.0  # one pixel at 255: it cannot go up, it is clipped there
    x[1] += 60 / 255
    x[1, 0, 0, 0] = 0  # one pixel lags behind by 60 levels
    x[2] += 20 / 255   # needs 81 steps: never flips within 60
    log = []
    outcome = attack.run_attack(contender, x, torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long),
                                max_steps=60, observer=log)
    # every step raises every pixel one level; the verdict flips once the mean level passes 100
    assert outcome.steps[:, 0].tolist() == [10, 41, -1]
    frozen = outcome.images[0, 0]
    assert frozen[0, 0] == 255 and frozen.flatten()[1:].min() == 100 and frozen.flatten()[1:].max() == 100
    assert outcome.images[1, 0].flatten()[1:].max() == 101  # image 1 kept going after image 0 stopped
    assert outcome.images[2, 0].max() == 80  # the last state of the one that never flipped
    assert outcome.distortion[0, 0] == pytest.approx(math.sqrt(4095 * 100 / 4096) / 255)
    running = [r["running"] for r in log]
    assert running[10] == 2 and running[41] == 1 and len(log) == 61
    summary = outcome.summary("direct")
    assert summary["flipped"] == 2 and summary["n"] == 3 and summary["steps"]["median"] == 41  # 10, 41, cap 60


def test_sign_step_is_exactly_one_level_and_stays_in_range():
    levels = torch.tensor([0.0, 0.0, 128.0, 255.0, 255.0, 7.0])
    grad = torch.tensor([1.0, -3.0, 1e-9, -1e-3, 2.0, 0.0])
    assert attack.sign_step(levels, grad).tolist() == [0.0, 1.0, 127.0, 255.0, 254.0, 7.0]


def test_attack_excludes_images_already_wrong_and_the_triple_stops_when_every_theta_flipped():
    torch.manual_seed(0)
    triple = nets.TripleStaged(nets.Estimator(), nets.Projector(), nets.Comparator()).eval()
    contender = attack.Contender("triple", triple, (0.2, 0.45))
    batch = data.make_batch("test", [0, 1])
    with torch.no_grad():
        before = contender.verdicts(contender.scores(batch.image))
    outcome = attack.run_attack(contender, batch.image, batch.label, torch.tensor([1, 0]), max_steps=3)
    assert outcome.names == ["triple@0.2", "triple@0.45"]
    assert (outcome.excluded == (before.numpy() != batch.label.numpy()[:, None])).all()
    flipped = outcome.steps >= 0
    assert not (flipped & outcome.excluded).any()


def test_triple_loss_pushes_the_target_up_and_the_others_down():
    contender = attack.Contender("triple", nets.TripleStaged(nets.Estimator(), nets.Projector(), nets.Comparator()),
                                 (0.5,))
    scores = torch.tensor([[0.2, 0.7, 0.1]], requires_grad=True)  # the triple's raw output is its scores
    contender.loss(scores, torch.tensor([0])).sum().backward()
    assert scores.grad[0, 0] < 0 and scores.grad[0, 1] > 0 and scores.grad[0, 2] > 0
    scores.grad = None
    contender.loss(scores, torch.tensor([data.NONE])).sum().backward()
    assert (scores.grad > 0).all()  # toward None: every score down


def test_attack_targets_follow_fig4_and_fig6():
    label = torch.tensor([0, 1, 2])
    index, target = attack.attack_targets(label, "false-positive")
    assert index.tolist() == [0, 0, 1, 1, 2, 2] and target.tolist() == [1, 2, 2, 0, 0, 1]
    index, target = attack.attack_targets(label, "false-negative")
    assert target.tolist() == [3, 3, 3]
    with pytest.raises(ConfigError):
        attack.attack_targets(label, "sideways")
    with pytest.raises(ConfigError):
        attack.check_thetas([1.2])


def test_distortion_is_the_papers_formula():
    a = torch.zeros(1, 1, 64, 64)
    b = a.clone()
    b[..., :32, :] = 10
    assert attack.distortion(b, a).item() == pytest.approx(math.sqrt(100 / 2) / 255)


# ---------------------------------------------------------------- training

def test_training_lowers_the_loss_and_an_interrupted_run_resumes_exactly(tmp_path):
    from engine.errors import Cancelled

    settings = train.TrainSettings(steps=40, batch=16, checkpoint_every=20, lr=1e-3)
    through = train.train("projector", tmp_path / "a", settings)
    rows = train.read_log(through.log)
    assert rows[-1]["loss"] < rows[0]["loss"]
    with pytest.raises(Cancelled):  # stopped (as by the page's Stop) just after the step-20 checkpoint
        train.train("projector", tmp_path / "b", settings, progress=lambda f, m: f < 20 / 40)
    resumed = train.train("projector", tmp_path / "b", settings)
    a = torch.load(through.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in train.read_log(resumed.log)] == [20.0, 40.0]


def test_training_batches_cover_the_set_and_positive_batches_have_no_none():
    settings = train.TrainSettings(steps=1, batch=64)
    positive = train.batch_indices(settings, 3, positive_only=True)
    assert len(positive) == 64 and not (positive % 4 == data.NONE).any()
    first = np.concatenate([train.batch_indices(settings, s) for s in range(train.TRAIN_SIZE // 64)])
    assert len(np.unique(first)) == train.TRAIN_SIZE


def test_unknown_network_and_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(ConfigError, match="Unknown network"):
        train.build("alexnet")
    with pytest.raises(ModelError, match="minds-eye train --net comparator"):
        weights.load_state("comparator", tmp_path)


# ---------------------------------------------------------------- shipped weights and CLI

TABLE1 = weights.ASSETS / "table1.json"


@pytest.mark.skipif(not (weights.WEIGHTS_DIR / "comparator.pt").exists(), reason="no shipped weights yet")
def test_shipped_weights_reach_their_documented_error_rates_on_a_fresh_test_set(tmp_path, monkeypatch):
    """A test set drawn with another seed than the documented one: the rates hold within sampling error."""
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path))
    monkeypatch.delenv("GLASSBOX_MINDS_EYE_WEIGHTS", raising=False)
    documented = json.loads(TABLE1.read_text())["error_rate"]
    n = 150
    scores = evaluate.test_scores(n, seed=12345, use_cache=False)
    for name, rate in scores.table().items():
        sigma = math.sqrt(max(documented[name], 0.01) * (1 - documented[name]) / (4 * n))
        assert rate <= documented[name] + 4 * sigma + 0.01, (name, rate, documented[name])


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine", "minds-eye", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


def test_cli_render_writes_a_png_and_refuses_bad_input(tmp_path):
    out = tmp_path / "x.png"
    done = run_cli("render", "--object", "monkey", "--angles", "0.1,-0.2,0.3", "--out", str(out))
    assert done.returncode == 0 and out.stat().st_size > 100
    bad = run_cli("render", "--object", "monkey", "--angles", "0.1,-0.2,0.9", "--out", str(out))
    assert bad.returncode == 2 and "between -0.5 and 0.5" in bad.stderr
    bad = run_cli("render", "--object", "walrus", "--out", str(out))
    assert bad.returncode == 2 and "monkey" in bad.stderr


@pytest.mark.skipif(not (weights.WEIGHTS_DIR / "comparator.pt").exists(), reason="no shipped weights yet")
def test_cli_evaluate_and_attack_print_the_documented_json(tmp_path):
    import os

    env = {**os.environ, "GLASSBOX_CACHE": str(tmp_path)}
    env.pop("GLASSBOX_MINDS_EYE_WEIGHTS", None)
    done = run_cli("evaluate", "--n", "3", "--json", env=env)
    assert done.returncode == 0, done.stderr
    rates = json.loads(done.stdout)["error_rate"]
    assert set(rates) == {"direct", "direct_params", "direct_adv", "triple@0.2", "triple@0.45", "triple@0.7"}
    assert all(0 <= v <= 1 for v in rates.values())
    done = run_cli("attack", "--kind", "false-negative", "--n", "2", "--max-steps", "3", "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary) == set(rates)
    for row in summary.values():
        assert set(row) >= {"steps", "distortion", "flipped", "n"}
        assert set(row["steps"]) == {"median", "p2", "p98"} and row["n"] + row["excluded"] == 2


def test_live_attack_keeps_every_steps_image_and_stops_at_the_flip():
    contenders = {"direct": attack.Contender("direct", Brightness())}
    x = torch.full((1, 1, 64, 64), 95 / 255)
    log = []
    result = attack.live_attack(contenders, "direct", x, 1, max_steps=20, observer=log)
    assert result.flipped_at == 6 and result.steps == 6  # mean 101 > 100 after 6 steps
    assert [r["step"] for r in log] == list(range(7))
    frames = [attack.snapshot(r) for r in log]
    assert all(int(f.max()) == 95 + i and int(f.min()) == 95 + i for i, f in enumerate(frames))  # one level a step
    assert np.array_equal(frames[-1], result.final) and log[-1]["verdicts"] == {"direct": 1}
    assert log[0]["scores"]["direct"][0] == pytest.approx(1 / (1 + math.exp(-5)), abs=1e-5)  # logits 100 vs 95
    with pytest.raises(ConfigError):
        attack.live_attack(contenders, "triple", x, 1)

"""The attacks lab's shared plumbing (engine.lab) and the held-out photo set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import attacks, imagesets, lab
from engine.errors import ConfigError


def brute_sign_steps(forward, x, label, *, epsilon, step, steps, targeted):
    """One image at a time, the textbook loop: x <- clip_eps(x +/- step sgn dL/dx), in levels."""
    start = torch.round(x * 255)
    levels = start.clone()
    for _ in range(steps):
        leaf = (levels / 255).requires_grad_(True)
        loss = F.cross_entropy(forward(leaf), torch.tensor([label]))
        (grad,) = torch.autograd.grad(loss, leaf)
        levels = levels + (-1 if targeted else 1) * step * grad.sign()
        levels = torch.minimum(torch.maximum(levels, start - epsilon), start + epsilon).clamp(0, 255)
    return levels / 255


@pytest.fixture(scope="module")
def batch(tiny):
    generator = torch.Generator().manual_seed(3)
    x = torch.round(torch.rand(5, 3, tiny.input_size, tiny.input_size, generator=generator) * 255) / 255
    return x


@pytest.mark.parametrize("targeted", [False, True])
def test_batched_sign_attack_equals_one_image_at_a_time(tiny, batch, targeted):
    labels = torch.tensor([0, 1, 2, 3, 4]) % tiny.num_classes
    got = lab.sign_attack(tiny, batch, labels, epsilon=6, step=2, steps=4, targeted=targeted, batch_size=2)
    for i in range(len(batch)):
        want = brute_sign_steps(tiny.logits, batch[i:i + 1], int(labels[i]), epsilon=6, step=2, steps=4,
                                targeted=targeted)
        assert torch.equal(got[i:i + 1], want)
    assert float((got - batch).abs().max()) * 255 <= 6 + 1e-4  # inside the ball
    assert torch.equal(torch.round(got * 255) / 255, got)  # on the 8-bit grid


def test_set_fgsm_matches_the_registry_entry(tiny, batch):
    """The same step as the single-image entry (through captum): values whose gradient is within float
    noise of zero (about 1e-7 on the tiny net) may round to 'no move' in one and not the other."""
    clean, _ = lab.predict(tiny, batch)
    got = lab.set_attack(tiny, batch, "fgsm", 4, clean=clean)
    for i in range(len(batch)):
        one = attacks.FGSM.run(tiny, batch[i:i + 1], None, attacks.FGSMConfig(epsilon=4))
        ours = (got[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.mean(one.image == ours) > 0.98


def test_kurakin_steps_and_least_likely(tiny, batch):
    assert [lab.kurakin_steps(e) for e in (2, 4, 8, 16, 128)] == [2, 5, 10, 20, 132]
    least = lab.least_likely(tiny, batch)
    with torch.no_grad():
        assert torch.equal(least, tiny.logits(batch).argmin(1))
    with pytest.raises(ConfigError, match="Unknown set attack"):
        lab.set_attack(tiny, batch, "carlini", 4)


def test_fooling_rate_is_a_hand_count():
    assert lab.fooling_rate([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert lab.fooling_rate(np.array([7]), np.array([7])) == 0.0
    with pytest.raises(ConfigError):
        lab.fooling_rate([1, 2], [1])


def test_predict_top1_and_topk(tiny, batch):
    top1, top3 = lab.predict(tiny, batch, batch_size=2, k=3)
    with torch.no_grad():
        logits = tiny.logits(batch)
    assert torch.equal(top1, logits.argmax(1))
    assert torch.equal(top3, logits.topk(3, dim=1).indices)


def test_held_out_photos_are_not_bundled():
    held = imagesets.held_out_photos(size=64)
    bundled = imagesets.bundled_photos(size=64)
    assert len(held) == imagesets.HELD_OUT_PHOTOS and held.source == "heldout"
    assert not {label.split(" crop")[0] for label in held.labels} & set(bundled.labels)
    ours = {held.image(i).tobytes() for i in range(len(held))}
    assert len(ours) == len(held)  # every picture differs
    assert not ours & {bundled.image(i).tobytes() for i in range(len(bundled))}
    assert imagesets.open_set("heldout", size=64).key == held.key
    assert "4 photos outside the bundled set" in held.describe()


def test_results_are_kept_by_their_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path))
    a = lab.result_dir("uap", "lite0", "bundled", {"xi": 10})
    assert a == lab.result_dir("uap", "lite0", "bundled", {"xi": 10})
    assert a != lab.result_dir("uap", "lite0", "bundled", {"xi": 8})
    assert lab.load_json(a) is None
    lab.save_json(a, {"fooling_rate": 0.5})
    assert lab.load_json(a) == {"fooling_rate": 0.5}

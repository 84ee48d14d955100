"""Saliency: exact values on a hand-weighted net, oracles (captum, pytorch-grad-cam), properties."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from torch import nn

from engine import hooks, models
from engine import saliency as S
from engine.errors import Cancelled, ConfigError
from tests.concurrency import assert_threads_match_serial

SMALL = {
    "occlusion": S.OcclusionConfig(patch=8, stride=8, batch_size=5),
    "rise": S.RISEConfig(masks=24, grid=4, batch_size=10, resolution=16),
    "ig": S.IntegratedGradientsConfig(steps=4, batch_size=4),
}


# --- a network whose Grad-CAM can be worked out by hand ----------------------------------------


class HandNet(nn.Module):
    """conv1x1 copies R and G into two channels, ReLU, global average pool, then
    class 0 = mean(R) and class 1 = 2 mean(G) - mean(R)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 2.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def hand():
    spec = models.ModelSpec(name="hand", label="hand", source="test", arch="hand", input_size=4,
                            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return models.make_handle(spec, HandNet(), ("red", "green"), torch.device("cpu"))


def test_gradcam_exact_values_on_a_hand_weighted_net(hand):
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    red, green = x[0, 0], x[0, 1]
    cam = S.GradCAM(hand, S.CAMConfig(layer="relu")).cam(x, [1])[0]
    # d y1 / d A = fc row / 16 at every position: weights (-1/16, 2/16).
    assert torch.allclose(cam, torch.relu(-red / 16 + 2 * green / 16), atol=1e-7)
    cam0 = S.GradCAM(hand, S.CAMConfig(layer="relu")).cam(x, [0])[0]
    assert torch.allclose(cam0, red / 16, atol=1e-7)
    gradient = S.GradientSaliency(hand).attribute(x, 1)[0]
    assert np.allclose(gradient, np.full((4, 4), 2 / 16), atol=1e-7)  # |d y1/dx| max over channels


# --- oracles ---------------------------------------------------------------------------------


def test_gradcam_matches_captum(lite0, chelsea_tensor):
    from captum.attr import LayerGradCam

    x = torch.cat([chelsea_tensor, chelsea_tensor.flip(-1)])
    ours = S.GradCAM(lite0).cam(x, [285, 281])
    wrapped = S._Normalized(lite0)
    layer = lite0.module(lite0.default_layer)
    with lite0.lock:
        theirs = LayerGradCam(wrapped, layer).attribute(x.clone(), target=[285, 281], relu_attributions=True)
    assert hooks.count_hooks(lite0.model) == 0
    assert torch.allclose(ours, theirs[:, 0], rtol=1e-4, atol=1e-6 * float(theirs.detach().abs().max()))


def test_gradcam_plusplus_matches_pytorch_grad_cam(lite0, chelsea_tensor):
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # pytorch-grad-cam back-propagates into the weights, so it gets its own trainable copy.
    class Normalize(nn.Module):
        def forward(self, x):
            return (x - 0.5) / 0.5

    oracle_net = nn.Sequential(Normalize(), copy.deepcopy(lite0.model)).requires_grad_(True)
    layer = dict(oracle_net.named_modules())[f"1.{lite0.default_layer}"]
    with GradCAMPlusPlus(model=oracle_net, target_layers=[layer]) as oracle:
        theirs = oracle(input_tensor=chelsea_tensor.clone(), targets=[ClassifierOutputTarget(285)])
    ours = S.GradCAMPlusPlus(lite0).cam(chelsea_tensor, [285]).numpy()
    ours_scaled = scale_cam_image(scale_cam_image(ours, (224, 224)))  # their per-layer, then final scaling
    assert np.abs(ours_scaled - theirs).max() < 1e-3


def test_occlusion_matches_captum(tiny):
    from captum.attr import Occlusion

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    config = S.OcclusionConfig(patch=16, stride=8, fill="grey", batch_size=7)
    scan = S.occlusion_scan(tiny, x, config)
    ours = scan.importance(4)

    def prob_of_class(images):
        return tiny.logits(images).softmax(1)

    theirs = Occlusion(prob_of_class).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                baselines=0.5, target=4, perturbations_per_eval=16)
    assert np.allclose(ours, theirs[0].mean(0).numpy(), atol=1e-6)
    assert scan.probability_map(4).shape == (7, 7)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(S.METHODS))
@pytest.mark.parametrize("batch,size", [(1, 32), (2, 48)])
@pytest.mark.parametrize("target", [None, 3, "list"])
def test_shape_grid(tiny, key, batch, size, target):
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch * size))
    target = list(range(batch)) if target == "list" else target
    maps = S.make_method(tiny, key, SMALL.get(key)).attribute(x, target)
    assert maps.shape == (batch, size, size) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    if not S.METHODS[key].signed:
        assert (maps >= 0).all()


def test_occlusion_does_not_depend_on_batch_size(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    scans = [S.occlusion_scan(tiny, x, S.OcclusionConfig(patch=12, stride=6, fill=fill, batch_size=b))
             for b in (1, 7, 200) for fill in ("blur",)]
    for scan in scans[1:]:
        assert np.allclose(scan.probs, scans[0].probs, atol=1e-6)


def test_rise_all_class_maps_equal_a_per_class_computation(tiny):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    config = S.RISEConfig(masks=40, grid=4, keep=0.4, batch_size=16, seed=11, resolution=32)
    scan = S.rise_scan(tiny, x, config)
    generator = torch.Generator().manual_seed(config.seed)
    masks = torch.cat([S.rise_masks(min(16, 40 - s), (32, 32), grid=4, keep=0.4, generator=generator)
                       for s in range(0, 40, 16)])
    probs = tiny.probabilities(x * masks[:, None])
    for c in range(tiny.num_classes):
        expected = sum(probs[i, c] * masks[i].numpy() for i in range(40)) / (40 * 0.4)
        assert np.allclose(scan.maps[c], expected, atol=1e-5), c
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6


def test_rise_masks_keep_the_requested_share():
    masks = S.rise_masks(400, (56, 56), grid=7, keep=0.3, generator=torch.Generator().manual_seed(0))
    assert abs(float(masks.mean()) - 0.3) < 0.03


def test_deletion_insertion_against_a_brute_force_loop(tiny):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    saliency = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    config = S.FaithfulnessConfig(steps=8, deletion_fill="grey", insertion_fill="black", batch_size=4)
    result = S.deletion_insertion(tiny, x, saliency, 2, config)
    order = np.argsort(-saliency.ravel(), kind="stable")
    for k in range(9):
        keep = np.ones(256)
        keep[order[: round(k * 256 / 8)]] = 0
        keep_t = torch.from_numpy(keep.reshape(1, 1, 16, 16)).float()
        deleted = x * keep_t + 0.5 * (1 - keep_t)
        inserted = x * (1 - keep_t)
        assert abs(tiny.probabilities(deleted)[0, 2] - result.deletion[k]) < 1e-6
        assert abs(tiny.probabilities(inserted)[0, 2] - result.insertion[k]) < 1e-6
    assert result.deletion_auc == pytest.approx(np.trapezoid(result.deletion, np.linspace(0, 1, 9)))


def test_bad_settings_get_sentences(tiny, lite0, chelsea_tensor):
    with pytest.raises(ConfigError, match="larger than the image"):
        S.occlusion_scan(lite0, chelsea_tensor, S.OcclusionConfig(patch=300))
    with pytest.raises(ConfigError, match="no spatial output"):
        S.make_method(lite0, "gradcam", S.CAMConfig(layer="_fc")).attribute(chelsea_tensor)
    with pytest.raises(ConfigError, match="Unknown saliency method"):
        S.make_method(lite0, "magic")
    with pytest.raises(ConfigError, match="0 to 999"):
        S.explain(lite0, chelsea_tensor, "gradcam", target=1000)
    flat = models.make_handle(models.ModelSpec("mlp", "mlp", "test", "mlp", 8, (0,) * 3, (1,) * 3),
                              nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), ("a", "b", "c"), torch.device("cpu"))
    assert "gradcam" not in S.available_methods(flat) and "occlusion" in S.available_methods(flat)
    with pytest.raises(ConfigError, match="convolutional layer"):
        S.make_method(flat, "gradcampp")


def test_progress_and_cancel(tiny):
    x = torch.rand(1, 3, 64, 64)
    seen = []
    S.occlusion_scan(tiny, x, S.OcclusionConfig(patch=8, stride=8, batch_size=16), lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) == 4
    calls = []
    with pytest.raises(Cancelled):
        S.rise_scan(tiny, x, S.RISEConfig(masks=100, batch_size=10), lambda f, m: calls.append(f) or len(calls) < 3)
    assert len(calls) == 3


# --- shared-model safety ------------------------------------------------------------------------


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("key", list(S.METHODS))
def test_no_hooks_left_after_success_and_injected_error(tiny, key, monkeypatch):
    before = snapshot(tiny.model)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    S.make_method(tiny, key, SMALL.get(key)).attribute(x, 1)
    assert hooks.count_hooks(tiny.model) == 0

    def broken(self, images):
        raise RuntimeError("injected")

    monkeypatch.setattr(S._Normalized, "forward", broken)
    monkeypatch.setattr(models.ModelHandle, "normalize", lambda self, images: broken(self, images))
    with pytest.raises(RuntimeError, match="injected"):
        S.make_method(tiny, key, SMALL.get(key)).attribute(x, 1)
    assert hooks.count_hooks(tiny.model) == 0
    assert not tiny.lock._is_owned()
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


@pytest.mark.parametrize("key", list(S.METHODS))
def test_eight_threads_give_the_serial_answers_for_every_method(tiny, key):
    inputs = [torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    calls = [(i % 5, i % 10) for i in range(25)]
    method = S.make_method(tiny, key, SMALL.get(key))

    def run(call):
        image, target = call
        return method.attribute(inputs[image], target)

    assert_threads_match_serial(run, calls, np.array_equal)
    assert hooks.count_hooks(tiny.model) == 0


# --- faithfulness on the real model ---------------------------------------------------------------


def coarse_random_map(seed: int, cells: int = 7, size: int = 224) -> np.ndarray:
    """A random map at Grad-CAM's own resolution (7 x 7 on lite0), upsampled the same way."""
    grid = torch.from_numpy(np.random.default_rng(seed).random((1, cells, cells)).astype(np.float32))
    return S.upsample(grid, (size, size))[0].numpy()


def test_gradcam_is_more_faithful_than_random_maps(lite0, chelsea_tensor):
    """Averaged over 5 random maps. Deletion (lower is better) on coffee/espresso, a confident class;
    insertion (higher is better) on chelsea. Chelsea's deletion score does not separate the two: its
    top class (Egyptian cat, 36 %) *rises* as the face is blacked out, at the expense of tiger cat and
    tabby, so every method we have scores worse than random there (see the issue notes)."""
    from engine import classify, images

    config = S.FaithfulnessConfig(steps=16)
    coffee = classify.image_tensor(lite0, images.load_sample("coffee"))
    cam = S.explain(lite0, coffee, "gradcam")
    assert cam.target_label == "espresso"
    ours = S.deletion_insertion(lite0, coffee, cam.saliency, cam.target, config).deletion_auc
    chance = np.mean([S.deletion_insertion(lite0, coffee, coarse_random_map(s), cam.target, config).deletion_auc
                      for s in range(5)])
    assert ours < chance

    cam = S.explain(lite0, chelsea_tensor, "gradcam")
    ours = S.deletion_insertion(lite0, chelsea_tensor, cam.saliency, cam.target, config).insertion_auc
    chance = np.mean([S.deletion_insertion(lite0, chelsea_tensor, coarse_random_map(s), cam.target, config).insertion_auc
                      for s in range(5)])
    assert ours > chance


def test_a_scan_explains_any_class_without_new_passes(tiny):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    for method in ("occlusion", "rise"):
        first = S.explain(tiny, x, method, 1, SMALL[method])
        other = first.for_class(6, "class 6")
        direct = S.explain(tiny, x, method, 6, SMALL[method])
        assert other.target == 6 and np.allclose(other.saliency, direct.saliency, atol=1e-6)
    with pytest.raises(ConfigError, match="run again"):
        S.explain(tiny, x, "gradcam", 1).for_class(2, "class 2")

"""Saliency: exact values on a hand-weighted net, oracles (captum, pytorch-grad-cam), properties."""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from engine import hooks, io, models
from engine import saliency
from engine.errors import Cancelled, ConfigError
from tests.concurrency import assert_threads_match_serial

SMALL = {
    "occlusion": saliency.OcclusionConfig(patch=8, stride=8, batch_size=5),
    "rise": saliency.RISEConfig(masks=24, grid=4, batch_size=10, resolution=16),
    "ig": saliency.IntegratedGradientsConfig(steps=4, batch_size=4),
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
    cam = saliency.GradCAM(hand, saliency.CAMConfig(layer="relu")).cam(x, [1])[0]
    # d y1 / d A = fc row / 16 at every position: weights (-1/16, 2/16).
    assert torch.allclose(cam, torch.relu(-red / 16 + 2 * green / 16), atol=1e-7)
    cam0 = saliency.GradCAM(hand, saliency.CAMConfig(layer="relu")).cam(x, [0])[0]
    assert torch.allclose(cam0, red / 16, atol=1e-7)
    gradient = saliency.GradientSaliency(hand).attribute(x, 1)[0]
    assert np.allclose(gradient, np.full((4, 4), 2 / 16), atol=1e-7)  # |d y1/dx| max over channels


# --- oracles ---------------------------------------------------------------------------------


def test_gradcam_matches_captum(lite0, chelsea_tensor):
    from captum.attr import LayerGradCam

    x = torch.cat([chelsea_tensor, chelsea_tensor.flip(-1)])
    ours = saliency.GradCAM(lite0).cam(x, [285, 281])
    wrapped = saliency._Normalized(lite0)
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
    ours = saliency.GradCAMPlusPlus(lite0).cam(chelsea_tensor, [285]).numpy()
    ours_scaled = scale_cam_image(scale_cam_image(ours, (224, 224)))  # their per-layer, then final scaling
    assert np.abs(ours_scaled - theirs).max() < 1e-3


def test_occlusion_matches_captum(tiny):
    from captum.attr import Occlusion

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    config = saliency.OcclusionConfig(patch=16, stride=8, fill="grey", batch_size=7)
    scan = saliency.occlusion_scan(tiny, x, config)
    ours = scan.importance(4)

    def prob_of_class(images):
        return tiny.logits(images).softmax(1)

    theirs = Occlusion(prob_of_class).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                baselines=0.5, target=4, perturbations_per_eval=16)
    assert np.allclose(ours, theirs[0].mean(0).numpy(), atol=1e-6)
    assert scan.probability_map(4).shape == (7, 7)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(saliency.METHODS))
@pytest.mark.parametrize("batch,size", [(1, 32), (2, 48)])
@pytest.mark.parametrize("target", [None, 3, "list"])
def test_shape_grid(tiny, key, batch, size, target):
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch * size))
    target = list(range(batch)) if target == "list" else target
    maps = saliency.make_method(tiny, key, SMALL.get(key)).attribute(x, target)
    assert maps.shape == (batch, size, size) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    if not saliency.METHODS[key].signed:
        assert (maps >= 0).all()


def test_occlusion_does_not_depend_on_batch_size(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    scans = [saliency.occlusion_scan(tiny, x, saliency.OcclusionConfig(patch=12, stride=6, fill=fill, batch_size=b))
             for b in (1, 7, 200) for fill in ("blur",)]
    for scan in scans[1:]:
        assert np.allclose(scan.probs, scans[0].probs, atol=1e-6)


def test_rise_all_class_maps_equal_a_per_class_computation(tiny):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    config = saliency.RISEConfig(masks=40, grid=4, keep=0.4, batch_size=16, seed=11, resolution=32)
    scan = saliency.rise_scan(tiny, x, config)
    generator = torch.Generator().manual_seed(config.seed)
    masks = torch.cat([saliency.rise_masks(min(16, 40 - s), (32, 32), grid=4, keep=0.4, generator=generator)
                       for s in range(0, 40, 16)])
    probs = tiny.probabilities(x * masks[:, None])
    for c in range(tiny.num_classes):
        expected = sum(probs[i, c] * masks[i].numpy() for i in range(40)) / (40 * 0.4)
        assert np.allclose(scan.maps[c], expected, atol=1e-5), c
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6


def test_rise_masks_keep_the_requested_share():
    masks = saliency.rise_masks(400, (56, 56), grid=7, keep=0.3, generator=torch.Generator().manual_seed(0))
    assert abs(float(masks.mean()) - 0.3) < 0.03


def test_deletion_insertion_against_a_brute_force_loop(tiny):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    saliency_map = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    config = saliency.FaithfulnessConfig(steps=8, deletion_fill="grey", insertion_fill="black", batch_size=4)
    result = saliency.deletion_insertion(tiny, x, saliency_map, 2, config)
    order = np.argsort(-saliency_map.ravel(), kind="stable")
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
        saliency.occlusion_scan(lite0, chelsea_tensor, saliency.OcclusionConfig(patch=300))
    with pytest.raises(ConfigError, match="no spatial output"):
        saliency.make_method(lite0, "gradcam", saliency.CAMConfig(layer="_fc")).attribute(chelsea_tensor)
    with pytest.raises(ConfigError, match="Unknown saliency method"):
        saliency.make_method(lite0, "magic")
    with pytest.raises(ConfigError, match="0 to 999"):
        saliency.explain(lite0, chelsea_tensor, "gradcam", target=1000)
    flat = models.make_handle(models.ModelSpec("mlp", "mlp", "test", "mlp", 8, (0,) * 3, (1,) * 3),
                              nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), ("a", "b", "c"), torch.device("cpu"))
    assert "gradcam" not in saliency.available_methods(flat) and "occlusion" in saliency.available_methods(flat)
    with pytest.raises(ConfigError, match="convolutional layer"):
        saliency.make_method(flat, "gradcampp")


def test_progress_and_cancel(tiny):
    x = torch.rand(1, 3, 64, 64)
    seen = []
    saliency.occlusion_scan(tiny, x, saliency.OcclusionConfig(patch=8, stride=8, batch_size=16), lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) == 4
    calls = []
    with pytest.raises(Cancelled):
        saliency.rise_scan(tiny, x, saliency.RISEConfig(masks=100, batch_size=10), lambda f, m: calls.append(f) or len(calls) < 3)
    assert len(calls) == 3


# --- shared-model safety ------------------------------------------------------------------------


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("key", list(saliency.METHODS))
def test_no_hooks_left_after_success_and_injected_error(tiny, key, monkeypatch):
    before = snapshot(tiny.model)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    saliency.make_method(tiny, key, SMALL.get(key)).attribute(x, 1)
    assert hooks.count_hooks(tiny.model) == 0

    def broken(self, images):
        raise RuntimeError("injected")

    monkeypatch.setattr(saliency._Normalized, "forward", broken)
    monkeypatch.setattr(models.ModelHandle, "normalize", lambda self, images: broken(self, images))
    with pytest.raises(RuntimeError, match="injected"):
        saliency.make_method(tiny, key, SMALL.get(key)).attribute(x, 1)
    assert hooks.count_hooks(tiny.model) == 0
    assert not tiny.lock._is_owned()
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


@pytest.mark.parametrize("key", list(saliency.METHODS))
def test_eight_threads_give_the_serial_answers_for_every_method(tiny, key):
    inputs = [torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    calls = [(i % 5, i % 10) for i in range(25)]
    method = saliency.make_method(tiny, key, SMALL.get(key))

    def run(call):
        image, target = call
        return method.attribute(inputs[image], target)

    assert_threads_match_serial(run, calls, np.array_equal)
    assert hooks.count_hooks(tiny.model) == 0


# --- the registry: every entry through one shared test, one dispatch for all -----------------------


def expected_config(key: str) -> dict:
    return (SMALL.get(key) or saliency.METHODS[key].Config()).as_dict()


@pytest.mark.parametrize("key", list(saliency.METHODS))
def test_every_registry_entry_explains_with_a_manifest_and_leaves_no_hook(tiny, key, monkeypatch):
    """The shared test of issue 11: result type, manifest, no hook left after success or an error."""
    method = saliency.METHODS[key]
    before = snapshot(tiny.model)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    result = saliency.explain(tiny, x, key, 3, SMALL.get(key))
    assert hooks.count_hooks(tiny.model) == 0
    assert isinstance(result, saliency.Explanation)
    assert (result.method, result.label, result.target, result.target_label) == (key, method.label, 3, tiny.class_names[3])
    assert result.saliency.shape == (32, 32) and result.saliency.dtype == np.float32 and np.isfinite(result.saliency).all()
    assert result.signed == method.signed and result.config == expected_config(key)
    assert (result.layer == tiny.default_layer) if method.uses_layer else result.layer is None
    assert result.covers_every_class == method.covers_every_class == (result.scan is not None)

    record = saliency.manifest(result, tiny, image_sha256="0" * 64, image_name="noise.png")
    assert record == json.loads(io.manifest_json(record)), "the manifest is plain JSON"
    assert record["glassbox"] == "saliency" and record["manifest_version"] == io.MANIFEST_VERSION
    assert record["method"] == key and record["method_label"] == method.label and record["layer"] == result.layer
    assert record["class"] == {"id": 3, "name": tiny.class_names[3]} and record["parameters"] == result.config
    assert record["model"]["name"] == tiny.name and record["image"]["sha256"] == "0" * 64
    assert record["map"]["shape"] == [32, 32] and record["signed"] == method.signed and "torch" in record["versions"]

    def broken(self, images):
        raise RuntimeError("injected")

    monkeypatch.setattr(saliency._Normalized, "forward", broken)
    monkeypatch.setattr(models.ModelHandle, "normalize", lambda self, images: broken(self, images))
    with pytest.raises(RuntimeError, match="injected"):
        saliency.explain(tiny, x, key, 3, SMALL.get(key))
    assert hooks.count_hooks(tiny.model) == 0
    assert not tiny.lock._is_owned()
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


SCAN_FUNCTIONS = {"occlusion": lambda handle, x, config: saliency.occlusion_scan(handle, x, config),
                  "rise": lambda handle, x, config: saliency.rise_scan(handle, x, config)}


def test_the_scan_methods_are_occlusion_and_rise():
    assert [key for key, cls in saliency.METHODS.items() if cls.covers_every_class] == list(SCAN_FUNCTIONS)
    assert all(issubclass(saliency.METHODS[key], saliency.ScanMethod) for key in SCAN_FUNCTIONS)


@pytest.mark.parametrize("key", list(SCAN_FUNCTIONS))
def test_occlusion_and_rise_go_through_the_same_dispatch_as_every_method(tiny, key, monkeypatch):
    """explain() dispatches to the method; its map is the raw_maps path's map and the scan's map."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    cls = saliency.METHODS[key]
    scans = []
    real_scan = cls.scan
    monkeypatch.setattr(cls, "scan", lambda self, *args, **kwargs: scans.append(key) or real_scan(self, *args, **kwargs))
    explained = saliency.explain(tiny, x, key, 5, SMALL[key])
    assert scans == [key], "the app's call runs the method's own scan, once"
    raw = saliency.make_method(tiny, key, SMALL[key]).attribute(x, 5)  # attribute -> raw_maps
    assert scans == [key, key]
    assert np.array_equal(explained.saliency, raw[0])
    scan = SCAN_FUNCTIONS[key](tiny, x, SMALL[key])
    assert np.array_equal(explained.saliency, scan.saliency(5))
    assert type(explained.scan) is type(scan)
    assert np.array_equal(explained.for_class(7, "seven").saliency, saliency.make_method(tiny, key, SMALL[key]).attribute(x, 7)[0])
    assert (explained.occlusion is not None) == (key == "occlusion")


class FlatScan:
    def __init__(self, classes: int, size: tuple[int, int]):
        self.maps = np.arange(classes, dtype=np.float32)[:, None, None] * np.ones((1, *size), np.float32)

    def saliency(self, target: int) -> np.ndarray:
        return self.maps[target]


class ToyScanMethod(saliency.ScanMethod):
    """A scan whose map of class c is the constant c: enough to see the dispatch."""

    key, label = "toyscan", "Toy scan"

    def scan(self, x, progress=None):
        return FlatScan(self.handle.num_classes, tuple(x.shape[-2:]))


def test_a_new_scan_method_is_one_class_in_the_registry(tiny, monkeypatch):
    monkeypatch.setitem(saliency.METHODS, ToyScanMethod.key, ToyScanMethod)
    x = torch.rand(1, 3, 16, 16)
    result = saliency.explain(tiny, x, "toyscan", 4)
    assert result.covers_every_class and np.all(result.saliency == 4)
    assert np.all(result.for_class(2, "two").saliency == 2)
    assert np.all(saliency.make_method(tiny, "toyscan").attribute(torch.cat([x, x]), [1, 6]) == np.array([1, 6])[:, None, None])
    assert next(entry for entry in saliency.describe() if entry["key"] == "toyscan")["covers_every_class"]


def test_describe_lists_every_entry_with_its_config_fields():
    described = saliency.describe()
    assert json.loads(json.dumps(described)) == described
    assert [entry["key"] for entry in described] == list(saliency.METHODS)
    by_key = {entry["key"]: entry for entry in described}
    assert by_key["gradcam"] == {"key": "gradcam", "label": "Grad-CAM", "covers_every_class": False,
                                 "fields": [{"name": "layer", "type": "str | None", "default": None}]}
    assert {"name": "patch", "type": "int", "default": 32} in by_key["occlusion"]["fields"]
    assert by_key["rise"]["covers_every_class"] and by_key["occlusion"]["covers_every_class"]
    assert by_key["gradient"]["fields"] == []


def test_config_from_flat_settings_takes_the_fields_each_method_has():
    settings = {"layer": "features", "patch": 8, "stride": 4, "masks": 64, "steps": 6, "baseline": "grey"}
    assert saliency.config_from("occlusion", settings) == saliency.OcclusionConfig(patch=8, stride=4)
    assert saliency.config_from("rise", settings) == saliency.RISEConfig(masks=64)
    assert saliency.config_from("ig", settings) == saliency.IntegratedGradientsConfig(steps=6, baseline="grey")
    assert saliency.config_from("gradcampp", settings) == saliency.CAMConfig(layer="features")
    with pytest.raises(ConfigError, match="Unknown saliency method"):
        saliency.config_from("magic", settings)


def test_cli_method_choices_are_the_registry_keys():
    from engine.__main__ import build_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    method = next(action for action in commands.choices["saliency"]._actions if action.dest == "method")
    assert list(method.choices) == list(saliency.METHODS)


def test_scoring_several_maps_is_one_call_with_one_progress(tiny):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    maps = {"a": np.random.default_rng(0).random((16, 16)), "b": np.random.default_rng(1).random((16, 16))}
    config = saliency.FaithfulnessConfig(steps=4, batch_size=3)
    seen = []
    scores = saliency.score_maps(tiny, x, maps, 2, config, lambda fraction, message: seen.append((fraction, message)))
    assert list(scores) == ["a", "b"]
    for name, saliency_map in maps.items():
        alone = saliency.deletion_insertion(tiny, x, saliency_map, 2, config)
        assert np.array_equal(scores[name].deletion, alone.deletion) and scores[name].insertion_auc == alone.insertion_auc
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[0][1].startswith("a: ") and seen[-1][1].startswith("b: ")


# --- faithfulness on the real model ---------------------------------------------------------------


def coarse_random_map(seed: int, cells: int = 7, size: int = 224) -> np.ndarray:
    """A random map at Grad-CAM's own resolution (7 x 7 on lite0), upsampled the same way."""
    grid = torch.from_numpy(np.random.default_rng(seed).random((1, cells, cells)).astype(np.float32))
    return saliency.upsample(grid, (size, size))[0].numpy()


def test_gradcam_is_more_faithful_than_random_maps(lite0, chelsea_tensor):
    """Averaged over 5 random maps. Deletion (lower is better) on coffee/espresso, a confident class;
    insertion (higher is better) on chelsea. Chelsea's deletion score does not separate the two: its
    top class (Egyptian cat, 36 %) *rises* as the face is blacked out, at the expense of tiger cat and
    tabby, so every method we have scores worse than random there (see the issue notes)."""
    from engine import classify, images

    config = saliency.FaithfulnessConfig(steps=16)
    coffee = classify.image_tensor(lite0, images.load_sample("coffee"))
    cam = saliency.explain(lite0, coffee, "gradcam")
    assert cam.target_label == "espresso"
    ours = saliency.deletion_insertion(lite0, coffee, cam.saliency, cam.target, config).deletion_auc
    chance = np.mean([saliency.deletion_insertion(lite0, coffee, coarse_random_map(s), cam.target, config).deletion_auc
                      for s in range(5)])
    assert ours < chance

    cam = saliency.explain(lite0, chelsea_tensor, "gradcam")
    ours = saliency.deletion_insertion(lite0, chelsea_tensor, cam.saliency, cam.target, config).insertion_auc
    chance = np.mean([saliency.deletion_insertion(lite0, chelsea_tensor, coarse_random_map(s), cam.target, config).insertion_auc
                      for s in range(5)])
    assert ours > chance


def test_a_scan_explains_any_class_without_new_passes(tiny):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    for method in ("occlusion", "rise"):
        first = saliency.explain(tiny, x, method, 1, SMALL[method])
        other = first.for_class(6, "class 6")
        direct = saliency.explain(tiny, x, method, 6, SMALL[method])
        assert other.target == 6 and np.allclose(other.saliency, direct.saliency, atol=1e-6)
    with pytest.raises(ConfigError, match="run again"):
        saliency.explain(tiny, x, "gradcam", 1).for_class(2, "class 2")

"""Shared-model safety: exact gradients, no hooks left behind, threads cannot mix results."""

from __future__ import annotations

import pytest
import torch

from engine import hooks, models
from engine.errors import ConfigError
from tests.concurrency import assert_threads_match_serial


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(handle, before: dict[str, torch.Tensor]) -> None:
    assert hooks.count_hooks(handle.model) == 0
    assert all(p.grad is None and not p.requires_grad for p in handle.model.parameters())
    after = handle.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_layer_gradient_matches_a_hand_written_split_of_the_tiny_net(tiny):
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = hooks.layer_gradient(tiny, x, "features", target=[1, 4, 7])
    # Independent path: run the trunk, then differentiate the head by hand.
    features = tiny.model.features(tiny.normalize(x)).detach().requires_grad_(True)
    logits = tiny.model.fc(tiny.model.pool(features).flatten(1))
    scores = logits[torch.arange(3), torch.tensor([1, 4, 7])]
    (expected,) = torch.autograd.grad(scores.sum(), features)
    assert torch.allclose(result.activations, features.detach())
    assert torch.allclose(result.gradients, expected, atol=1e-7)
    # The head is global-average-pool + linear, so d score / d A is the class weight spread evenly.
    weight = tiny.model.fc.weight[1] / (32 * 32)
    assert torch.allclose(result.gradients[0, :, 5, 9], weight, atol=1e-7)


def test_default_target_is_top1_and_input_gradient_is_exact(tiny):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    top1 = tiny.logits(x).argmax(1).tolist()
    assert torch.equal(hooks.layer_gradient(tiny, x).gradients, hooks.layer_gradient(tiny, x, target=top1).gradients)
    image = x.clone().requires_grad_(True)
    score = tiny.model(tiny.normalize(image))[:, 2].sum()
    (expected,) = torch.autograd.grad(score, image)
    got = hooks.input_gradient(tiny, x, target=2)
    assert torch.allclose(got, expected, atol=1e-7)
    assert not x.requires_grad and x.grad is None  # the caller's tensor is untouched


def test_no_hook_left_after_success_and_after_errors(lite0, chelsea_tensor):
    before = snapshot(lite0.model)
    hooks.layer_gradient(lite0, chelsea_tensor)
    hooks.input_gradient(lite0, chelsea_tensor, target=3)
    assert_untouched(lite0, before)
    with pytest.raises(RuntimeError, match="injected"):
        with hooks.capture(lite0, [lite0.default_layer, "_blocks.3"]):
            lite0.logits(chelsea_tensor)
            raise RuntimeError("injected")
    with pytest.raises(RuntimeError):  # an error inside the forward pass itself
        hooks.layer_gradient(lite0, chelsea_tensor[:, :, :, :5])
    with pytest.raises(Exception):  # a target that does not exist fails in the backward step
        hooks.layer_gradient(lite0, chelsea_tensor, target=5000)
    with pytest.raises(ConfigError):
        hooks.layer_gradient(lite0, chelsea_tensor, layer="_fc")
    assert_untouched(lite0, before)
    assert not lite0.lock._is_owned()


def test_eight_threads_give_the_serial_answers(lite0):
    """8 threads x 25 gradient calls on one shared handle == the same calls run one by one."""
    generator = torch.Generator().manual_seed(7)
    inputs = [torch.rand(1, 3, 224, 224, generator=generator) for _ in range(4)]
    jobs = [(i % 4, (37 * i) % 1000, ["_bn1", "_blocks.10"][i % 2]) for i in range(25)]

    def call(job):
        image, target, layer = job
        if layer == "_bn1":
            return hooks.layer_gradient(lite0, inputs[image], layer, target).gradients
        return hooks.input_gradient(lite0, inputs[image], target)

    before = snapshot(lite0.model)
    assert_threads_match_serial(call, jobs, torch.equal)
    assert_untouched(lite0, before)


@pytest.mark.parametrize("arch,layer", [("vgg11", "features.18"), ("resnet18", "layer4.1.bn2"), ("alexnet", "features.10")])
def test_layers_followed_by_in_place_operations(arch, layer):
    """A conv before ReLU(inplace=True), or a BN before ResNet's in-place residual add."""
    net = models.build_architecture(arch)  # random weights: only the mechanics are under test
    handle = models.make_handle(models.torchvision_spec(arch), net, models.imagenet_classes(), torch.device("cpu"))
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = hooks.layer_gradient(handle, x, layer, 3)
    with torch.inference_mode():
        logits = handle.logits(x)
    assert torch.allclose(result.logits, logits, atol=1e-5)  # the copy did not change the forward pass
    assert (result.activations < 0).any()  # the cut leaf kept the pre-ReLU values
    assert hooks.count_hooks(handle.model) == 0

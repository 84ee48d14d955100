"""The one scoped way to read activations and gradients out of a shared model.

Streamlit serves every browser session from a thread over the same cached model. A forward hook
registered by one session would also fire on another session's forward pass, so everything here
runs under the handle's lock, held for one step (one forward/backward), never for a whole job.
Hooks are removed in ``finally`` and gradients come from ``torch.autograd.grad`` on the captured
tensors, so parameters never receive ``.grad`` and nothing is swapped in the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .models import ModelHandle


@contextmanager
def capture(handle: ModelHandle, layers: Sequence[str], *, cut: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during forward passes run inside the block.

    With ``cut=True`` each captured output is replaced by a detached leaf that requires grad, so
    a backward from the class score stops at that layer: the head-only backward that makes
    Grad-CAM cost about one extra forward instead of a full backward into the input.

    The handle's lock is held for the whole block; other sessions wait for this step to end.
    """
    modules = [(name, handle.module(name)) for name in layers]
    captured: dict[str, torch.Tensor] = {}
    registered = []
    with handle.lock:
        try:
            for name, module in modules:
                registered.append(module.register_forward_hook(_recorder(name, captured, cut)))
            yield captured
        finally:
            for hook in registered:
                hook.remove()


def _recorder(name: str, captured: dict[str, torch.Tensor], cut: bool):
    def hook(module: nn.Module, args, output):
        if not torch.is_tensor(output):
            raise ConfigError(f"Layer '{name}' does not output a single tensor, so it cannot be inspected.")
        if not cut:
            captured[name] = output
            return None
        leaf = output.detach().requires_grad_(True)
        captured[name] = leaf
        # The next module may work in place (ReLU(inplace=True), ResNet's `out += identity`): hand
        # it a copy, so the leaf keeps the layer's own values and autograd accepts the graph.
        return leaf.clone()
    return hook


@dataclass(frozen=True)
class LayerGradient:
    """Activations of one layer, d(score)/d(activations), and the logits (all detached)."""

    activations: torch.Tensor
    gradients: torch.Tensor
    logits: torch.Tensor


def _scores(logits: torch.Tensor, target: int | Sequence[int] | None) -> torch.Tensor:
    """Per-image score of the target class (top-1 when target is None); summed to one scalar."""
    if target is None:
        index = logits.argmax(1)
    elif isinstance(target, int):
        index = torch.full((logits.shape[0],), target, device=logits.device, dtype=torch.long)
    else:
        index = torch.as_tensor(list(target), device=logits.device, dtype=torch.long)
    return logits.gather(1, index.view(-1, 1)).sum()


def layer_gradient(handle: ModelHandle, x: torch.Tensor, layer: str | None = None,
                   target: int | Sequence[int] | None = None) -> LayerGradient:
    """Activations and class-score gradients at ``layer`` (default: the handle's CAM layer).

    Images are independent in a batch, so summing the per-image scores gives each image's own
    gradient in one backward.
    """
    name = handle.layer(layer).name
    with torch.enable_grad(), capture(handle, [name], cut=True) as captured:
        logits = handle.logits(x)
        activations = captured[name]
        (gradients,) = torch.autograd.grad(_scores(logits, target), activations)
    return LayerGradient(activations.detach(), gradients.detach(), logits.detach())


def input_gradient(handle: ModelHandle, x: torch.Tensor, target: int | Sequence[int] | None = None) -> torch.Tensor:
    """d(class score)/d(image) for images in [0, 1]; the caller's tensor is left untouched."""
    image = x.detach().to(handle.device).requires_grad_(True)
    with torch.enable_grad(), handle.lock:
        logits = handle.logits(image)
        (gradient,) = torch.autograd.grad(_scores(logits, target), image)
    return gradient.detach()


def count_hooks(model: nn.Module) -> int:
    """Hooks of every kind left on any module (tests assert this stays 0)."""
    total = 0
    for module in model.modules():
        for attribute in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                          "_backward_pre_hooks"):
            total += len(getattr(module, attribute, {}) or {})
    return total

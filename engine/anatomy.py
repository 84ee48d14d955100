"""Anatomy: what a trained network has learned (the lecture's opening part).

Lecture: "What has been learned by ConvNets?" in
shared/papers/lecture-visualizing-and-fooling-convnets.txt, slide by slide:

* "Visualize first-layer weights directly" -- :func:`first_layer_filters`;
* "Visualize activations for an image" -- :func:`image_activations`;
* "Visualize maximally activating patches: pick a unit; run many images through the network;
  visualize patches that produce the highest output values" -- :func:`top_patches`, each crop cut
  to the unit's exact receptive field (:func:`receptive_field`), and "A tour through the
  network!" -- :func:`tour_layers` / :func:`tour`;
* "FC layers? Visualize nearest neighbors according to activation vectors" -- :class:`NeighbourIndex`,
  :func:`neighbours` (beside the nearest by raw pixels: the two differ);
* "Fancy dimensionality reduction, e.g., t-SNE" -- :func:`embed` (openTSNE, and PCA);
* "Going back to image? [Zeiler and Fergus]" -- :func:`project_back`: the deconvnet
  (M. Zeiler and R. Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, Sec. 2.1)
  beside guided backprop (Springenberg et al., Striving for Simplicity, ICLR 2015 workshop, Sec. 3.4)
  and the plain gradient (Simonyan et al. 2014).

How the backward rules are changed (receptive fields and the deconvnet): a forward hook on every
activation module (and on max-pools for the receptive field) replaces the module's output by the
same values produced by a small ``torch.autograd.Function`` whose backward applies the rule. A
forward pre-hook keeps the module's input (and hands an in-place module a copy, so ``ReLU(inplace=
True)`` cannot overwrite it). Hooks fire on every call, so a shared activation module (EfficientNet-
Lite calls one ``ReLU6`` several times per block) gets the rule every time. All of it runs under the
handle's lock and the hooks are removed in ``finally``; no module is swapped and no parameter
receives a gradient. A model with no activation modules at all (torchvision's GoogLeNet and
Inception v3 call ``F.relu`` in their code) gets the rule on its functional ReLUs through a
thread-local ``TorchFunctionMode`` scoped the same way; a model that mixes both is not detected.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import plots
from .errors import ConfigError, DatasetError
from .models import ModelHandle

# Rectifiers: the deconvnet and guided backprop rules are defined for these (ReLU6 = Hardtanh(0, 6)).
_RECTIFIERS = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU)
# Other element-wise activations whose output is > 0 exactly where their input is > 0: they are
# opened for the receptive field and treated as ReLUs by the deconvnet / guided rules.
_SMOOTH = (nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Softplus)
_SMOOTH_NAMES = ("Swish", "MemoryEfficientSwish")  # efficientnet_pytorch's own swish modules
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
              nn.AdaptiveMaxPool3d)
PROJECTION_METHODS = ("deconvnet", "guided", "gradient")
EMBED_METHODS = ("tsne", "pca")
MIN_TSNE_IMAGES = 5
DEFAULT_PERPLEXITY = 30.0
EXACT_NEIGHBOURS = 5000


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class FilterGrid:
    """The first layer's filters, each normalised on its own, as tiles and as one picture.

    ``normalisation`` says how: "per filter min-max" maps each filter's smallest weight to 0 and
    its largest to 255 (the CS231n slides' convention), so colours compare within a tile, not
    across tiles.
    """

    layer: str
    shape: tuple[int, int, int, int]  # (out, in, kh, kw) of the weight tensor
    tiles: np.ndarray  # (out, kh, kw, 3) uint8
    grid: np.ndarray  # (H, W, 3) uint8: tiles enlarged ``scale`` times, 1-px gaps between them
    scale: int
    columns: int
    normalisation: str = "per filter min-max"
    note: str = ""


@dataclass(frozen=True)
class LayerActivations:
    """One image's feature maps at one layer, channels ranked by their strongest response."""

    layer: str
    maps: np.ndarray  # (C, h, w) float32
    order: np.ndarray  # (C,) int64 channel ids, strongest first
    strength: np.ndarray  # (C,) float32 each channel's maximum over positions
    input_size: int

    def strongest(self, count: int) -> np.ndarray:
        """The ``count`` strongest channels' ids (for a grid)."""
        return self.order[:max(0, int(count))]


@dataclass(frozen=True)
class Patches:
    """A unit's top-k images over a set, each cropped to the unit's receptive field at its argmax.

    ``boxes`` are (top, left, bottom, right), bottom/right exclusive, in the set's image pixels;
    ``field_size`` is the unclipped field's (height, width) in the model's input pixels at the
    map's centre: how far the unit sees.
    """

    layer: str
    unit: int
    indices: np.ndarray  # (k,) int64 set indices, best first (ties: lower index first)
    values: np.ndarray  # (k,) float32 the unit's maximum in each image
    positions: np.ndarray  # (k, 2) int64 (y, x) of that maximum in the layer's map
    boxes: np.ndarray  # (k, 4) int64 in the set's image pixels
    crops: tuple[np.ndarray, ...]  # k uint8 crops (sizes differ where a field is clipped at a border)
    labels: tuple[str, ...]
    image_size: int
    field_size: tuple[int, int]


@dataclass(frozen=True)
class TourStop:
    layer: str
    unit: int
    score: float  # the mean of the unit's top-k per-image maxima (how it was picked)
    patches: Patches


@dataclass(frozen=True)
class Neighbours:
    """The query's nearest images by penultimate features (cosine) and by raw pixels (euclidean)."""

    feature_indices: np.ndarray  # (k,) int64
    feature_distances: np.ndarray  # (k,) float32 cosine distances (1 - cos)
    pixel_indices: np.ndarray  # (k,) int64
    pixel_distances: np.ndarray  # (k,) float32 euclidean distances of 0-255 thumbnails
    excluded: int | None  # the set index left out because it is the query itself

    @property
    def features(self) -> list[tuple[int, float]]:
        return [(int(i), float(d)) for i, d in zip(self.feature_indices, self.feature_distances)]

    @property
    def pixels(self) -> list[tuple[int, float]]:
        return [(int(i), float(d)) for i, d in zip(self.pixel_indices, self.pixel_distances)]

    @property
    def shared(self) -> int:
        """How many images both lists hold (the lecture's point: usually few)."""
        return len(set(self.feature_indices.tolist()) & set(self.pixel_indices.tolist()))


@dataclass(frozen=True)
class Embedding:
    method: str
    points: np.ndarray  # (n, 2) float32
    kl: float | None  # t-SNE's KL(P || Q) at the end; None for PCA
    seconds: float
    perplexity: float | None
    explained: tuple[float, float] | None  # PCA: share of the variance along each axis
    note: str = ""

    @property
    def label(self) -> str:
        return {"tsne": "t-SNE", "pca": "PCA"}.get(self.method, self.method)


@dataclass(frozen=True)
class Projection:
    """One unit's strongest activation projected back to pixels (Zeiler & Fergus Sec. 2.1)."""

    method: str
    layer: str
    unit: int
    position: tuple[int, int]  # (y, x) of the unit's maximum in the layer's map
    box: tuple[int, int, int, int]  # the unit's receptive field there (top, left, bottom, right), input pixels
    value: float  # the activation there (the backward seed)
    image: np.ndarray  # (S, S, 3) float32, signed
    display: np.ndarray  # (S, S, 3) uint8: 128 + 127 * image / max|image|
    note: str = ""


# ---------------------------------------------------------------------------------------------
# 1. First-layer filters


def first_conv(handle: ModelHandle) -> tuple[str, nn.Conv2d]:
    """The first ``Conv2d`` (in definition order) that takes the 3-channel image."""
    for name, module in handle.model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name, module
    raise ConfigError("This model has no convolution on the image (no Conv2d with 3 input channels), "
                      "so there are no first-layer filters to show.")


def first_layer_filters(handle: ModelHandle, *, scale: int | None = None, gap: int = 255) -> FilterGrid:
    """Lecture slide "Visualize first-layer weights directly": every filter of the first conv as a
    small RGB picture, normalised per filter (min-max to 0-255), laid out in a grid with 1-px gaps.

    ``scale`` enlarges each tile (nearest neighbour) before the gaps are drawn, so a 3x3 filter is
    visible while the gaps stay one pixel (default: tiles of about 24 px). A depthwise first layer
    (``groups=3``, one input channel per filter) is shown in grey, one tile per filter.
    """
    name, conv = first_conv(handle)
    weight = conv.weight.detach().float().cpu().numpy()  # (out, in/groups, kh, kw)
    out, per_group, kh, kw = weight.shape
    note = ""
    if per_group == 3:
        pictures = weight.transpose(0, 2, 3, 1)
    else:  # depthwise or grouped: each filter sees one channel (or a few): show its mean in grey
        pictures = np.repeat(weight.mean(axis=1)[..., None], 3, axis=-1)
        note = (f"The first convolution is grouped ({conv.groups} groups), so each filter sees "
                f"{per_group} channel(s); tiles are shown in grey.")
    low = pictures.reshape(out, -1).min(axis=1).reshape(out, 1, 1, 1)
    high = pictures.reshape(out, -1).max(axis=1).reshape(out, 1, 1, 1)
    span = np.where(high - low > 0, high - low, 1.0)
    tiles = np.rint((pictures - low) / span * 255).astype(np.uint8)
    scale = int(scale) if scale else max(1, math.ceil(24 / max(kh, kw)))
    columns = max(1, math.ceil(math.sqrt(out)))
    grid = plots.tile([plots.enlarge(tile, scale) for tile in tiles], columns, gap=1, background=gap)
    return FilterGrid(layer=name, shape=(int(out), int(per_group), int(kh), int(kw)), tiles=tiles, grid=grid,
                      scale=scale, columns=columns, note=note)


# ---------------------------------------------------------------------------------------------
# 2. Activations for an image


def image_activations(handle: ModelHandle, x: torch.Tensor, layer: str | None) -> LayerActivations:
    """Lecture slide "Visualize activations for an image": the layer's maps for one image
    ``x`` (1, 3, S, S) in [0, 1], channels ordered by their maximum (strongest first)."""
    info = handle.layer(layer)
    with torch.inference_mode():
        maps = forward_to(handle, info.name, x[:1])[0].float().cpu().numpy()
    strength = maps.reshape(maps.shape[0], -1).max(axis=1)
    order = np.argsort(-strength, kind="stable").astype(np.int64)
    return LayerActivations(layer=info.name, maps=maps.astype(np.float32), order=order,
                            strength=strength.astype(np.float32), input_size=int(x.shape[-1]))


# ---------------------------------------------------------------------------------------------
# Forward to a layer, backward rules through hooks


class _Reached(Exception):
    """Raised by :func:`forward_to`'s hook once the layer has run: the rest of the net is not needed."""


def forward_to(handle: ModelHandle, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` for images ``x`` in [0, 1], running the model only up to it (the
    forward is stopped by an exception from a scoped hook, removed in ``finally``)."""
    module = handle.module(layer)
    found: list[torch.Tensor] = []

    def hook(module, args, output):
        if not torch.is_tensor(output):
            raise ConfigError(f"Layer '{layer}' does not output a single tensor, so it cannot be inspected.")
        found.append(output)
        raise _Reached

    with handle.lock:
        registered = module.register_forward_hook(hook)
        try:
            handle.logits(x.to(handle.device))
        except _Reached:
            pass
        finally:
            registered.remove()
    if not found:
        raise ConfigError(f"Layer '{layer}' did not run in the forward pass.")
    return found[0]



def is_activation(module: nn.Module) -> bool:
    return isinstance(module, _RECTIFIERS + _SMOOTH) or type(module).__name__ in _SMOOTH_NAMES


def has_max_pools(handle: ModelHandle) -> bool:
    """Whether the model has max-pooling modules (where the deconvnet records its switches)."""
    return any(isinstance(m, _MAX_POOLS) for m in handle.model.modules())


def _gate_limits(module: nn.Module) -> tuple[float, float]:
    """The open interval of outputs where the forward pass lets the gradient through."""
    if isinstance(module, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
        return float(module.min_val), float(module.max_val)
    return 0.0, math.inf


class _Rule(torch.autograd.Function):
    """Values of the activation's output; backward: the chosen rule, sent to the activation's input.

    rule "open": the gradient passes unchanged (every gate open: a structural receptive field);
    "deconvnet": ReLU of the backward signal (Zeiler & Fergus: "rectification");
    "guided": ReLU of the backward signal AND the forward gate (Springenberg et al.).
    """

    @staticmethod
    def forward(ctx, inputs, output, rule, low, high):
        ctx.rule = rule
        if rule == "guided":
            ctx.save_for_backward((output > low) & (output < high))
        return output.clone()

    @staticmethod
    def backward(ctx, grad):
        if ctx.rule == "open":
            result = grad
        elif ctx.rule == "deconvnet":
            result = grad.clamp(min=0)
        else:
            (gate,) = ctx.saved_tensors
            result = grad.clamp(min=0) * gate
        return result, None, None, None, None


class _Spread(torch.autograd.Function):
    """A max-pool's values; backward spreads each gradient over its whole window, as an average
    pool would, so the receptive field does not depend on which input won (structural field)."""

    @staticmethod
    def forward(ctx, inputs, output, pool):
        ctx.shape = inputs.shape
        ctx.pool = pool
        return output.clone()

    @staticmethod
    def backward(ctx, grad):
        pool = ctx.pool
        with torch.enable_grad():
            leaf = torch.zeros(ctx.shape, dtype=grad.dtype, device=grad.device, requires_grad=True)
            pooled = F.avg_pool2d(leaf, pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode,
                                  count_include_pad=True)
            (spread,) = torch.autograd.grad(pooled, leaf, grad)
        return spread, None, None


@dataclass
class _RuleHooks:
    fired: int = 0


@contextmanager
def _backward_rules(handle: ModelHandle, rule: str, *, spread_max_pools: bool) -> Iterator[_RuleHooks]:
    """Scoped hooks (under the handle's lock, removed in ``finally``) that give every activation
    module the backward ``rule`` and, if asked, every 2-D max-pool the spreading backward.

    A model with no activation modules at all (torchvision's GoogLeNet and Inception v3 call
    ``F.relu`` inside their code) gets the rule on those functional ReLUs instead, through a
    ``TorchFunctionMode`` that lives only in this thread and only for this block.
    """
    state = _RuleHooks()
    registered = []
    with handle.lock:
        try:
            activations = 0
            for module in handle.model.modules():
                if is_activation(module):
                    activations += 1
                    low, high = _gate_limits(module)
                    kept: list[torch.Tensor] = []
                    registered.append(module.register_forward_pre_hook(_keep_input(kept)))
                    registered.append(module.register_forward_hook(_apply_rule(kept, rule, low, high, state)))
                elif spread_max_pools and isinstance(module, nn.MaxPool2d) and _dilation_one(module):
                    registered.append(module.register_forward_hook(_spread_hook))
            if activations:
                yield state
            else:
                with _FunctionalRules(rule, state):
                    yield state
        finally:
            for hook in registered:
                hook.remove()


_RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", torch.Tensor.relu: "relu",
                   torch.Tensor.relu_: "relu", F.relu_: "relu", F.relu6: "relu6", F.hardtanh: "hardtanh",
                   F.hardtanh_: "hardtanh"}


class _FunctionalRules(TorchFunctionMode):
    """The same rule for ReLUs applied as functions (``F.relu(x, inplace=True)`` and friends)."""

    def __init__(self, rule: str, state: _RuleHooks):
        super().__init__()
        self.rule, self.state = rule, state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _RELU_FUNCTIONS.get(func)
        x = args[0] if args else None
        if kind is None or not (torch.is_tensor(x) and torch.is_grad_enabled() and x.requires_grad):
            return func(*args, **kwargs)
        if kind == "relu":
            low, high, out = 0.0, math.inf, F.relu(x)
        elif kind == "relu6":
            low, high, out = 0.0, 6.0, F.relu6(x)
        else:
            low = float(args[1] if len(args) > 1 else kwargs.get("min_val", -1.0))
            high = float(args[2] if len(args) > 2 else kwargs.get("max_val", 1.0))
            out = F.hardtanh(x, low, high)
        self.state.fired += 1
        # An in-place call returns a new tensor here: the rule needs the input left as it was.
        return _Rule.apply(x, out.detach(), self.rule, low, high)


def _dilation_one(pool: nn.MaxPool2d) -> bool:
    return pool.dilation in (1, (1, 1))


def _keep_input(kept: list):
    def hook(module, args):
        kept.append(args[0])
        if getattr(module, "inplace", False):
            # An in-place activation would overwrite its input, and the rule needs that input as
            # the place where the gradient goes: hand the module a copy instead.
            return (args[0].clone(),) + tuple(args[1:])
        return None
    return hook


def _apply_rule(kept: list, rule: str, low: float, high: float, state: _RuleHooks):
    def hook(module, args, output):
        inputs = kept.pop()
        if not (torch.is_tensor(output) and torch.is_grad_enabled() and inputs.requires_grad):
            return None
        state.fired += 1
        return _Rule.apply(inputs, output.detach(), rule, low, high)
    return hook


def _spread_hook(module, args, output):
    if not (torch.is_tensor(output) and torch.is_grad_enabled() and args[0].requires_grad):
        return None
    return _Spread.apply(args[0], output.detach(), module)


# ---------------------------------------------------------------------------------------------
# 3. Receptive fields


def receptive_field(handle: ModelHandle, layer: str, x: torch.Tensor | None, positions, *,
                    unit: int | None = None, batch_size: int = 8) -> np.ndarray:
    """Exact receptive field of the layer's units at ``positions`` ((N, 2) map coordinates y, x).

    The field is the support of d(activation at (y, x))/d(image) -- summed over channels, or of one
    ``unit`` -- with every activation's gate opened (the backward passes the gradient whatever its
    sign) and max-pools spreading the gradient over their window like average pools. The field is
    then structural: it does not depend on the image (``x`` only fixes the input size; None: the
    model's input size). Returns (N, 4) int64 boxes (top, left, bottom, right), bottom/right
    exclusive, the bounding box of the nonzero support, clipped to the image by construction.
    Positions are batched (images are independent), ``batch_size`` per backward.
    """
    info = handle.layer(layer)
    points = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    if len(points) and (points[:, 0].min() < 0 or points[:, 0].max() >= info.height
                        or points[:, 1].min() < 0 or points[:, 1].max() >= info.width):
        raise ConfigError(f"Positions must lie inside layer {info.name}'s {info.height} x {info.width} map.")
    if unit is not None and not 0 <= unit < info.channels:
        raise ConfigError(f"Layer {info.name} has units 0 to {info.channels - 1}; there is no unit {unit}.")
    if x is None:
        # Any image gives the same structural field; a fixed mid-grey with a little noise keeps
        # every value away from exact zeros.
        generator = torch.Generator().manual_seed(0)
        x = 0.5 + 0.1 * torch.rand(1, 3, handle.input_size, handle.input_size, generator=generator)
    image = x[:1].detach().to(handle.device, torch.float32)
    boxes = np.zeros((len(points), 4), dtype=np.int64)
    for start in range(0, len(points), batch_size):
        chunk = points[start:start + batch_size]
        gradient = _seeded_input_gradient(handle, info.name, image.expand(len(chunk), -1, -1, -1), chunk, unit,
                                          rule="open", spread=True)
        boxes[start:start + len(chunk)] = support_boxes(gradient.abs().sum(1) != 0)
    return boxes


def support_boxes(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) bounding boxes (top, left, bottom, right) of the True pixels
    (bottom/right exclusive; an empty mask gives an empty box at 0)."""
    mask = mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    boxes = np.zeros((mask.shape[0], 4), dtype=np.int64)
    for i, m in enumerate(mask):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


def _seeded_input_gradient(handle: ModelHandle, layer: str, x: torch.Tensor, positions: np.ndarray,
                           unit: int | None, *, rule: str | None, spread: bool,
                           scale: torch.Tensor | None = None) -> torch.Tensor:
    """d(seed . layer output)/d(image) for a batch, the seed being one-hot per image at its
    position (all channels, or one unit), optionally times ``scale``; backward ``rule`` on every
    activation (None: the plain gradient)."""
    image = x.detach().clone().requires_grad_(True)
    rules = _backward_rules(handle, rule, spread_max_pools=spread) if rule else _no_rules(handle)
    with torch.enable_grad(), rules:
        output = forward_to(handle, layer, image)
        seed = torch.zeros_like(output)
        rows = torch.arange(len(positions), device=output.device)
        ys = torch.as_tensor(positions[:, 0], device=output.device)
        xs = torch.as_tensor(positions[:, 1], device=output.device)
        if unit is None:
            seed[rows, :, ys, xs] = 1.0
        else:
            seed[rows, unit, ys, xs] = 1.0 if scale is None else scale.to(seed.dtype)
        (gradient,) = torch.autograd.grad(output, image, seed)
    return gradient.detach()


@contextmanager
def _no_rules(handle: ModelHandle):
    with handle.lock:
        yield _RuleHooks()


def field_size(handle: ModelHandle, layer: str) -> tuple[int, int]:
    """(height, width) of the receptive field of the map's centre unit, in input pixels."""
    info = handle.layer(layer)
    top, left, bottom, right = receptive_field(handle, info.name, None, [(info.height // 2, info.width // 2)])[0]
    return int(bottom - top), int(right - left)


# ---------------------------------------------------------------------------------------------
# 4. Maximally activating patches and the tour


def _check_features(handle: ModelHandle, imageset, features) -> None:
    if getattr(features, "kind", "spatial") != "spatial" or getattr(features, "argmax", None) is None:
        raise ConfigError("A layer with no spatial output has no patches; pick a convolutional layer.")
    if getattr(features, "model", handle.name) != handle.name:
        raise ConfigError(f"These features come from {features.model}, not {handle.name}; compute them again.")
    set_key = getattr(imageset, "key", None)
    if set_key is not None and getattr(features, "set_key", set_key) != set_key:
        raise ConfigError("These features were computed on another image set; compute them again for this one.")


def top_patches(handle: ModelHandle, imageset, features, unit: int, *, k: int = 9) -> Patches:
    """Lecture slide "Visualize maximally activating patches": the ``k`` images of the set where
    ``unit`` responds most (its per-image maximum, ``features.values[:, unit]``; ties go to the
    lower index), each cropped to the unit's receptive field at the position of that maximum
    (``features.argmax``). Fields are computed in the model's input pixels and scaled to the set's
    image size (the feature pass resizes set images to the model's input size)."""
    _check_features(handle, imageset, features)
    info = handle.layer(features.layer)
    if not 0 <= unit < info.channels:
        raise ConfigError(f"Layer {info.name} has units 0 to {info.channels - 1}; there is no unit {unit}.")
    count = len(imageset)
    if k < 1:
        raise ConfigError("Ask for at least one patch.")
    if count < k:
        raise DatasetError(f"The set has only {count} images, fewer than the {k} patches asked for; "
                           "use a larger set or a smaller k.")
    values = np.asarray(features.values[:count, unit], dtype=np.float32)
    indices = np.argsort(-values, kind="stable")[:k].astype(np.int64)
    flat = np.asarray(features.argmax[indices, unit], dtype=np.int64)
    positions = np.stack([flat // features.width, flat % features.width], axis=1)
    fields = receptive_field(handle, info.name, None, positions)
    boxes = scale_boxes(fields, handle.input_size, imageset.size)
    crops, labels = [], []
    for index, (top, left, bottom, right) in zip(indices, boxes):
        crops.append(np.ascontiguousarray(imageset.image(int(index))[top:bottom, left:right]))
        labels.append(imageset.labels[int(index)] if getattr(imageset, "labels", None) else str(int(index)))
    return Patches(layer=info.name, unit=int(unit), indices=indices, values=values[indices], positions=positions,
                   boxes=boxes, crops=tuple(crops), labels=tuple(labels), image_size=int(imageset.size),
                   field_size=field_size(handle, info.name))


def scale_boxes(boxes: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Boxes in a from_size square -> the smallest covering boxes in a to_size square."""
    if from_size == to_size:
        return boxes.copy()
    factor = to_size / from_size
    scaled = np.empty_like(boxes)
    scaled[:, :2] = np.floor(boxes[:, :2] * factor + 1e-9)
    scaled[:, 2:] = np.ceil(boxes[:, 2:] * factor - 1e-9)
    return np.clip(scaled, 0, to_size)


_NOT_TOUR = ("BatchNorm", "GroupNorm", "LayerNorm", "Pad", "Identity", "Dropout")


def tour_layers(handle: ModelHandle, count: int = 5) -> list[str]:
    """Lecture slide "A tour through the network!": one layer per resolution stage, from the
    edges of the first stage to the parts of the last.

    The layers are grouped by map size in forward order; in each group the last block output is
    taken (a layer that is a direct child of a ``Sequential``/``ModuleList`` near the top, such as
    EfficientNet-Lite's ``_blocks.N``, ResNet's ``layer2.3`` or VGG's ``features.8``), else the
    group's last shallowest layer (GoogLeNet's ``inception3b``).
    With more stages than ``count``, evenly spaced stages are kept, always the first and the last.
    """
    modules = dict(handle.model.named_modules())
    containers = {name for name, m in modules.items() if isinstance(m, (nn.Sequential, nn.ModuleList))}
    groups: list[list] = []
    for info in handle.layers:
        if any(word in info.kind for word in _NOT_TOUR) or (info.channels == 3 and info.height >= handle.input_size):
            continue
        if groups and (groups[-1][-1].height, groups[-1][-1].width) == (info.height, info.width):
            groups[-1].append(info)
        else:
            groups.append([info])
    picks = []
    for group in groups:
        depth = {i.name: i.name.count(".") for i in group}
        blocks = [i for i in group if "." in i.name and i.name.rpartition(".")[0] in containers]
        top = min(depth.values())
        if blocks and min(depth[i.name] for i in blocks) <= top + 1:
            chosen = [i for i in blocks if depth[i.name] == min(depth[b.name] for b in blocks)]
        else:  # no block list near the top (GoogLeNet's inception modules): the shallowest layers
            chosen = [i for i in group if depth[i.name] == top]
        picks.append(chosen[-1].name)
    if count < 1:
        raise ConfigError("The tour needs at least one stop.")
    if len(picks) > count:
        keep = sorted(set(np.linspace(0, len(picks) - 1, count).round().astype(int).tolist()))
        picks = [picks[i] for i in keep]
    return picks


def strongest_unit(values: np.ndarray, k: int) -> tuple[int, float]:
    """The unit with the highest mean of its top-k per-image maxima (ties: lower unit)."""
    values = np.asarray(values, dtype=np.float64)
    k = max(1, min(k, values.shape[0]))
    top = -np.sort(-values, axis=0)[:k]
    scores = top.mean(axis=0)
    unit = int(np.argmax(scores))
    return unit, float(scores[unit])


def tour(handle: ModelHandle, imageset, features_by_layer: dict, *, k: int = 9) -> list[TourStop]:
    """One strong unit per layer of ``features_by_layer`` (in its order, e.g. :func:`tour_layers`)
    and its top-k patches: the receptive fields, and so the patches, grow from stop to stop."""
    stops = []
    for layer, features in features_by_layer.items():
        _check_features(handle, imageset, features)
        unit, score = strongest_unit(features.values[:len(imageset)], k)
        stops.append(TourStop(layer=layer, unit=unit, score=score,
                              patches=top_patches(handle, imageset, features, unit, k=k)))
    return stops


# ---------------------------------------------------------------------------------------------
# 5. Nearest neighbours


class NeighbourIndex:
    """Lecture slide "Visualize nearest neighbors according to activation vectors".

    ``metric="cosine"``: rows are normalised once, so a query is one matrix-vector product
    (distance = 1 - cos); ``"euclidean"``: squared norms are kept, d^2 = |a|^2 - 2 a.b + |b|^2.
    Results are exact and ordered by (distance, index), like a brute-force sort.
    """

    def __init__(self, vectors: np.ndarray, metric: str = "cosine"):
        if metric not in ("cosine", "euclidean"):
            raise ConfigError(f"Unknown metric '{metric}'; use cosine or euclidean.")
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or len(matrix) == 0:
            raise DatasetError("Nearest neighbours need a non-empty set of vectors.")
        self.metric = metric
        if metric == "cosine":
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            self.matrix = np.ascontiguousarray(matrix / np.where(norms > 0, norms, 1.0))
            self.norms = None
        else:
            self.matrix = np.ascontiguousarray(matrix)
            self.norms = np.einsum("ij,ij->i", matrix, matrix)

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def distances(self, vector: np.ndarray) -> np.ndarray:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.matrix.shape[1]:
            raise ConfigError(f"The query has {q.shape[0]} values but the indexed vectors have {self.matrix.shape[1]}.")
        if self.metric == "cosine":
            norm = float(np.linalg.norm(q))
            return 1.0 - self.matrix @ (q / norm if norm > 0 else q)
        return np.sqrt(np.maximum(self.norms - 2.0 * (self.matrix @ q) + float(q @ q), 0.0))

    def query(self, vector: np.ndarray, k: int, *, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        available = len(self) - (exclude is not None and 0 <= exclude < len(self))
        if k < 1:
            raise ConfigError("Ask for at least one neighbour.")
        if available < k:
            raise DatasetError(f"The set has only {available} other images, fewer than the {k} neighbours asked for.")
        d = self.distances(vector)
        if exclude is not None and 0 <= exclude < len(self):
            d = d.copy()
            d[exclude] = np.inf
        # argpartition finds the k-th distance; every index at or under it is then sorted by
        # (distance, index), so ties break exactly as a brute-force stable sort does.
        kth = d[np.argpartition(d, k - 1)[k - 1]]
        candidates = np.flatnonzero(d <= kth)
        order = candidates[np.lexsort((candidates, d[candidates]))][:k]
        return order.astype(np.int64), d[order].astype(np.float32)


def _vectors(values) -> np.ndarray:
    return np.asarray(getattr(values, "values", values))


def neighbours(query_features: np.ndarray, set_features, query_pixels: np.ndarray, set_pixels: np.ndarray,
               k: int = 8, *, query_index: int | None = None) -> Neighbours:
    """The query's ``k`` nearest set images by penultimate features (cosine distance) and by raw
    pixels (euclidean distance of small thumbnails, ``imagesets.pixel_vectors``). ``query_index``:
    the query's own index when it is a member of the set; only that entry is left out (a different
    image with identical pixels stays)."""
    features = _vectors(set_features)
    pixels = _vectors(set_pixels)
    if len(features) != len(pixels):
        raise ConfigError(f"The set has {len(features)} feature vectors but {len(pixels)} pixel vectors.")
    return neighbours_from(NeighbourIndex(features, "cosine"), NeighbourIndex(pixels, "euclidean"),
                           query_features, query_pixels, k, query_index=query_index)


def neighbours_from(by_features: NeighbourIndex, by_pixels: NeighbourIndex, query_features: np.ndarray,
                    query_pixels: np.ndarray, k: int = 8, *, query_index: int | None = None,
                    skip_copy: bool = False) -> Neighbours:
    """:func:`neighbours` with indexes built once (and cached by the caller) for many queries.
    ``skip_copy``: when the query is itself in the set (the first image whose thumbnail equals the
    query's exactly), leave that one out, so the list shows other images."""
    if len(by_features) != len(by_pixels):
        raise ConfigError(f"The set has {len(by_features)} feature vectors but {len(by_pixels)} pixel vectors.")
    if skip_copy and query_index is None:
        same = np.flatnonzero(by_pixels.distances(_vectors(query_pixels)) == 0)
        query_index = int(same[0]) if len(same) else None
    f_idx, f_dist = by_features.query(_vectors(query_features), k, exclude=query_index)
    p_idx, p_dist = by_pixels.query(_vectors(query_pixels), k, exclude=query_index)
    return Neighbours(feature_indices=f_idx, feature_distances=f_dist, pixel_indices=p_idx, pixel_distances=p_dist,
                      excluded=query_index)


# ---------------------------------------------------------------------------------------------
# 6. Embeddings


def pca(vectors: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the centred data X (n x d), returned as (points, the share of the
    variance each axis explains).

    Equivalent to numpy's SVD X = U S V^T (points = U S), computed from the smaller of the two
    symmetric matrices X^T X (d x d) or X X^T (n x n) with LAPACK's ``eigh`` restricted to the
    top ``dims`` eigenpairs: 0.25 s instead of 1.6 s for 2000 x 1280 here. Each axis's sign is
    fixed so its largest |loading| is positive (deterministic across runs and libraries).
    """
    import scipy.linalg

    data = np.asarray(vectors, dtype=np.float64)
    centred = data - data.mean(axis=0)
    n, d = centred.shape
    dims = max(1, min(int(dims), n, d))
    small = centred.T @ centred if d <= n else centred @ centred.T
    size = small.shape[0]
    values, vectors_ = scipy.linalg.eigh(small, subset_by_index=[size - dims, size - 1], driver="evr")
    values, vectors_ = np.maximum(values[::-1], 0.0), vectors_[:, ::-1]
    if d <= n:
        axes = vectors_  # (d, dims) principal axes
        points = centred @ axes
    else:  # X X^T = U S^2 U^T: points = U S, axes = X^T U / S
        singular = np.sqrt(values)
        points = vectors_ * singular
        axes = (centred.T @ vectors_) / np.where(singular > 0, singular, 1.0)
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(dims)])
    signs[signs == 0] = 1.0
    total = float(np.einsum("ij,ij->", centred, centred))
    explained = values / total if total > 0 else np.zeros(dims)
    return points * signs, explained


def tsne_perplexity(n: int, wanted: float = DEFAULT_PERPLEXITY) -> float:
    """t-SNE needs perplexity < n / 3 (each point's 3 x perplexity nearest neighbours must exist)."""
    return float(min(wanted, (n - 1) / 3.0 - 1e-3))


def embed(vectors, method: str = "tsne", *, seed: int = 0, perplexity: float = DEFAULT_PERPLEXITY,
          n_jobs: int = 1) -> Embedding:
    """Lecture slide "Fancy dimensionality reduction, e.g., t-SNE" (van der Maaten & Hinton 2008).

    PCA: :func:`pca`. t-SNE: PCA to 50 dimensions first (fewer for small sets), then openTSNE
    (Policar et al. 2019) with its defaults -- PCA initialisation, 250 early-exaggeration and 500
    normal iterations -- and Barnes-Hut gradients with exact nearest neighbours below 1000 points
    (openTSNE's ``auto``). For small sets the perplexity is lowered below n/3 and ``note`` says so;
    fewer than 5 images are refused.
    """
    data = _vectors(vectors).astype(np.float32)
    n = len(data)
    if method not in EMBED_METHODS:
        raise ConfigError(f"Unknown embedding '{method}'; use tsne or pca.")
    started = time.perf_counter()
    if method == "pca":
        if n < 3:
            raise DatasetError(f"A map of the set needs at least 3 images; this set has {n}.")
        points, explained = pca(data, 2)
        return Embedding(method="pca", points=points.astype(np.float32), kl=None, seconds=time.perf_counter() - started,
                         perplexity=None, explained=(float(explained[0]), float(explained[-1])))
    if n < MIN_TSNE_IMAGES:
        raise DatasetError(f"t-SNE needs at least {MIN_TSNE_IMAGES} images; this set has {n}. Use PCA or a larger set.")
    from openTSNE import TSNE

    used = tsne_perplexity(n, perplexity)
    note = ""
    if used < perplexity:
        note = (f"Only {n} images, so the perplexity was lowered from {perplexity:g} to {used:.2f} "
                f"(t-SNE needs it below a third of the set).")
    reduced, _ = pca(data, min(50, n - 1, data.shape[1]))
    reduced = np.ascontiguousarray(reduced, dtype=np.float64)
    # Exact nearest neighbours for the affinities: 0.09 s for 2000 points here against 0.5 s for
    # openTSNE's default (Annoy, approximate, above 1000 points); O(n^2) so only up to 5000.
    model = TSNE(perplexity=used, random_state=seed, n_jobs=n_jobs, verbose=False,
                 neighbors="exact" if n <= EXACT_NEIGHBOURS else "auto")
    embedding = model.fit(reduced)
    points = np.asarray(embedding, dtype=np.float32)
    return Embedding(method="tsne", points=points, kl=float(embedding.kl_divergence),
                     seconds=time.perf_counter() - started, perplexity=used, explained=None, note=note)


# ---------------------------------------------------------------------------------------------
# 7. Going back to images


def project_back(handle: ModelHandle, x: torch.Tensor, layer: str | None, unit: int,
                 method: str = "deconvnet") -> Projection:
    """Lecture "Visualizing ConvNets: Going back to images [Zeiler and Fergus]".

    Start from the unit's strongest activation in ``layer`` with every other activation of the
    layer set to zero (Zeiler & Fergus, Sec. 2.1: "to examine a given convnet activation, we set
    all other activations in the layer to zero"): the backward seed is a one-hot at the unit's
    argmax times its value. Then, back to the pixels:

    * ``deconvnet``: filtering -> the same filters transposed (autograd's conv backward);
      rectification -> ReLU of the backward signal, whatever the forward input was; pooling ->
      max-pool switches, the positions of the forward maxima (autograd's max-pool backward routes
      the signal exactly there, so it is kept);
    * ``guided``: the backward signal ReLU'd *and* gated where the forward input was in the
      activation's linear range (x > 0; 0 < x < 6 for ReLU6) -- Springenberg et al. 2015;
    * ``gradient``: the plain gradient, no rule changed.

    ``x``: (1, 3, S, S) in [0, 1]. Returns the signed pixel image and a display version.
    """
    if method not in PROJECTION_METHODS:
        raise ConfigError(f"Unknown method '{method}'; use deconvnet, guided or gradient.")
    info = handle.layer(layer)
    if not 0 <= unit < info.channels:
        raise ConfigError(f"Layer {info.name} has units 0 to {info.channels - 1}; there is no unit {unit}.")
    image = x[:1].detach().to(handle.device, torch.float32)
    with torch.inference_mode():
        unit_map = forward_to(handle, info.name, image)[0, unit].float()
        flat = int(torch.argmax(unit_map))
        value = float(unit_map.flatten()[flat])
    position = divmod(flat, unit_map.shape[1])
    rule = None if method == "gradient" else method
    gradient = _seeded_input_gradient(handle, info.name, image, np.array([position]), unit, rule=rule, spread=False,
                                      scale=torch.tensor(value))
    signed = gradient[0].permute(1, 2, 0).float().cpu().numpy()
    notes = []
    if method == "deconvnet" and not has_max_pools(handle):
        notes.append("This model has no max-pooling layers, so there are no switches to record: the deconvnet "
                     "here differs from guided backprop only in its ReLU rule (it ignores the forward pass's signs).")
    if method != "gradient" and _smooth_activations(handle):
        notes.append("Its smooth activations (such as swish) are treated as ReLUs by this rule.")
    if value <= 0:
        notes.append(f"Unit {unit}'s strongest activation here is {value:.3g} (not positive), so there is little "
                     "to project back.")
    box = receptive_field(handle, info.name, image, [position], unit=unit)[0]
    return Projection(method=method, layer=info.name, unit=int(unit), position=(int(position[0]), int(position[1])),
                      box=tuple(int(b) for b in box), value=value, image=signed.astype(np.float32), display=signed_to_uint8(signed),
                      note=" ".join(notes))


def _smooth_activations(handle: ModelHandle) -> bool:
    return any(isinstance(m, _SMOOTH) or type(m).__name__ in _SMOOTH_NAMES for m in handle.model.modules())


def signed_to_uint8(values: np.ndarray) -> np.ndarray:
    """Signed values around mid-grey: 128 + 127 * v / max|v| (0 stays grey)."""
    peak = float(np.abs(values).max()) if values.size else 0.0
    scaled = values / peak if peak > 0 else np.zeros_like(values)
    return np.clip(np.rint(128.0 + 127.0 * scaled), 0, 255).astype(np.uint8)

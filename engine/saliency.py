"""Saliency maps: which pixels made the network say what it said?

Background: "Visualizing ConvNets: Saliency Maps" in the lecture notes (shared/papers/
lecture-visualizing-and-fooling-convnets.txt):

* **white box, gradients** -- Simonyan et al. 2014: the max over colour channels of
  |d score / d x| (:class:`GradientSaliency`); integrated gradients (:class:`IntegratedGradientsMap`);
* **class-discriminative maps** -- Grad-CAM (Selvaraju et al. 2017, eq. 1-2: channel weights are the
  spatial mean of the gradients, map = ReLU(sum_k w_k A^k)); Grad-CAM++ (Chattopadhyay et al. 2018,
  eq. 19 closed form of the alpha coefficients); guided Grad-CAM (guided backprop x Grad-CAM);
* **black box, masking** -- a sliding square occluder: the target probability as a function of the
  occluder position (Zeiler & Fergus 2014) (:func:`occlusion_scan`), and RISE (Petsiuk et al. 2018,
  eq. 5-6: the probability-weighted average of N random masks) (:func:`rise_scan`);
* **faithfulness** -- deletion and insertion curves and their AUC (Petsiuk et al. 2018, sec. 4.1)
  (:func:`deletion_insertion`).

Every method shares one verb: ``attribute(x, target=None, progress=None) -> (N, H, W)`` numpy maps at
input resolution, for images ``x`` in [0, 1]. A target of None explains each image's top-1 class.
Captum supplies guided Grad-CAM, gradient saliency and integrated gradients (called under the
handle's lock, because they register hooks); Grad-CAM and Grad-CAM++ share one head-only backward
(:func:`engine.hooks.layer_gradient`) and differ only in :meth:`GradCAM.cam_weights`.

The page and the CLI call one more verb, :meth:`SaliencyMethod.explain` (one image -> an
:class:`Explanation`), through :func:`explain`, which never looks at the method's key. Occlusion and
RISE are :class:`ScanMethod` s (``covers_every_class = True``): one scan holds every class's map,
their ``explain`` keeps it so another class costs no forward pass, and their ``raw_maps`` read the
same scan. :data:`METHODS` is the one registry (key, label, Config); :func:`describe` lists it for
``python -m engine methods --json`` and the CLI's ``--method`` choices come from it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import configs, hooks, io
from .errors import ConfigError
from .models import ModelHandle
from .progress import Progress, report, within

Target = int | Sequence[int] | None


# ---------------------------------------------------------------------------------------------
# Shared plumbing


def resolve_targets(handle: ModelHandle, x: torch.Tensor, target: Target) -> list[int]:
    """One class id per image: the given one(s), or each image's top-1 class."""
    if target is None:
        return [int(i) for i in handle.probabilities(x).argmax(1)]
    targets = [int(target)] * x.shape[0] if isinstance(target, (int, np.integer)) else [int(t) for t in target]
    if len(targets) != x.shape[0]:
        raise ConfigError(f"Got {len(targets)} target classes for {x.shape[0]} images.")
    for t in targets:
        handle.class_index(t)  # raises a sentence for ids out of range
    return targets


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, H, W), bilinear: a coarse map shown over the image it explains."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"Expected images of shape (N, 3, H, W), got {tuple(x.shape)}.")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's settings; frozen so it can key a cache."""

    def as_dict(self) -> dict:
        return asdict(self)


class SaliencyMethod:
    """Base class: resolves targets, moves data, upsamples; subclasses compute raw maps.

    A new method is one subclass with ``key``, ``label``, ``Config`` and :meth:`raw_maps`, added to
    :data:`METHODS`; the page, the CLI, ``methods --json`` and the shared tests pick it up from there.
    """

    key: ClassVar[str] = ""
    label: ClassVar[str] = ""
    signed: ClassVar[bool] = False  # True when the map has meaningful negative values
    uses_layer: ClassVar[bool] = False
    slow: ClassVar[bool] = False
    covers_every_class: ClassVar[bool] = False  # True: one run holds every class's map (a scan)
    Config: ClassVar[type] = MethodConfig

    def __init__(self, handle: ModelHandle, config: MethodConfig | None = None):
        self.handle = handle
        self.config = config if config is not None else self.Config()

    def attribute(self, x: torch.Tensor, target: Target = None, *, progress: Progress | None = None) -> np.ndarray:
        _check_images(x)
        x = x.detach().to(self.handle.device, torch.float32)
        targets = resolve_targets(self.handle, x, target)
        maps = self.raw_maps(x, targets, progress)
        return upsample(maps.detach(), tuple(x.shape[-2:])).cpu().numpy().astype(np.float32)

    def raw_maps(self, x: torch.Tensor, targets: list[int], progress: Progress | None) -> torch.Tensor:
        raise NotImplementedError

    def explain(self, x: torch.Tensor, target: int | None = None, *,
                progress: Progress | None = None) -> "Explanation":
        """One image (1, 3, H, W): the map of ``target`` (default: the top-1 class), packaged for
        plots and downloads. Scan methods override this to keep their every-class scan."""
        started = time.perf_counter()
        x, target = self._one_image(x, target)
        saliency = self.attribute(x, target, progress=progress)[0]
        return self._explanation(target, saliency, started)

    def _one_image(self, x: torch.Tensor, target: int | None) -> tuple[torch.Tensor, int]:
        _check_images(x)
        x = x[:1].detach().to(self.handle.device, torch.float32)
        (target,) = resolve_targets(self.handle, x, target)
        return x, target

    def _explanation(self, target: int, saliency: np.ndarray, started: float,
                     scan: "ClassScan | None" = None) -> "Explanation":
        layer = self.handle.layer(self.config.layer).name if self.uses_layer else None
        return Explanation(method=self.key, label=self.label, target=target,
                           target_label=self.handle.class_names[target], layer=layer, saliency=saliency,
                           signed=self.signed, config=self.config.as_dict(),
                           seconds=time.perf_counter() - started, scan=scan)


class ClassScan(Protocol):
    """What a scan method keeps: every class's map from one set of forward passes."""

    def saliency(self, target: int) -> np.ndarray:
        """(H, W) float32 map of ``target`` at input resolution."""


class ScanMethod(SaliencyMethod):
    """A black-box scan (occlusion, RISE): its forward passes do not depend on the class, so one
    :meth:`scan` per image serves every class. Subclasses implement :meth:`scan` only."""

    covers_every_class = True
    slow = True

    def scan(self, x: torch.Tensor, progress: Progress | None = None) -> ClassScan:
        """Scan one image (1, 3, H, W) on the handle's device."""
        raise NotImplementedError

    def raw_maps(self, x, targets, progress):
        maps = []
        for i, target in enumerate(targets):
            scan = self.scan(x[i:i + 1], _sub_progress(progress, i, len(targets)))
            maps.append(torch.from_numpy(scan.saliency(target)))
        return torch.stack(maps)

    def explain(self, x, target=None, *, progress=None):
        """Scan once and keep the scan in the result, so :meth:`Explanation.for_class` is free."""
        started = time.perf_counter()
        x, target = self._one_image(x, target)
        scan = self.scan(x, progress)
        return self._explanation(target, scan.saliency(target), started, scan=scan)


# ---------------------------------------------------------------------------------------------
# Grad-CAM family


@dataclass(frozen=True)
class CAMConfig(MethodConfig):
    layer: str | None = None  # None: the handle's default CAM layer (the last feature map)


class GradCAM(SaliencyMethod):
    """Grad-CAM (Selvaraju et al. 2017, eq. 1-2): w_k = mean_ij dy^c/dA^k_ij, map = ReLU(sum_k w_k A^k).

    The backward runs from the class score down to the layer only (parameters frozen), so the
    whole method costs about one forward plus a small head backward.
    """

    key, label, uses_layer, Config = "gradcam", "Grad-CAM", True, CAMConfig

    def cam(self, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
        """Maps at the layer's own resolution, (N, h, w)."""
        result = hooks.layer_gradient(self.handle, x, self.config.layer, targets)
        weights = self.cam_weights(result.activations, result.gradients)
        return torch.relu((weights[:, :, None, None] * result.activations).sum(1))

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3))

    def raw_maps(self, x, targets, progress):
        return self.cam(x, targets)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential-score closed form):

    alpha = g^2 / (2 g^2 + sum_ab A_ab * g^3), w_k = sum_ij alpha_ij * ReLU(g_ij).
    """

    key, label = "gradcampp", "Grad-CAM++"

    def cam_weights(self, activations, gradients):
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        summed = activations.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + summed * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(gradients)).sum(dim=(2, 3))


class _Normalized(torch.nn.Module):
    """The handle's model with its normalisation in front, for captum (which wants an nn.Module).

    Wrapping registers nothing on the shared model; it only holds a reference to it.
    """

    def __init__(self, handle: ModelHandle):
        super().__init__()
        self.net = handle.model
        self.handle = handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.handle.normalize(x))


class _LockedEachForward(torch.nn.Module):
    """The handle's model for captum methods that register no hooks (integrated gradients): each
    forward takes the lock itself (:meth:`ModelHandle.logits`), so interactive calls get the model
    between its batches instead of after the whole attribution (bench/bench_interactive.py)."""

    def __init__(self, handle: ModelHandle):
        super().__init__()
        self.handle = handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.handle.logits(x)


def _captum(handle: ModelHandle, build, x: torch.Tensor, targets: list[int], **kwargs) -> torch.Tensor:
    """Run a captum attribution under the handle's lock (captum registers hooks on the model)."""
    with handle.lock, torch.enable_grad():
        return build(_Normalized(handle)).attribute(x.clone(), target=targets, **kwargs).detach()


class GuidedGradCAM(SaliencyMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017, sec. 3.1): guided backprop times upsampled Grad-CAM.

    Captum's GuidedGradCam; shown as the max over colour channels of the absolute value. Guided
    backprop rewires ``nn.ReLU`` modules only: on EfficientNet-Lite (ReLU6) its guided part is the
    plain gradient.
    """

    key, label, uses_layer, Config = "guided", "Guided Grad-CAM", True, CAMConfig

    def raw_maps(self, x, targets, progress):
        from captum.attr import GuidedGradCam

        layer = self.handle.module(self.handle.layer(self.config.layer).name)
        maps = _captum(self.handle, lambda model: GuidedGradCam(model, layer), x, targets,
                       interpolate_mode="bilinear")
        return maps.abs().amax(dim=1)


@dataclass(frozen=True)
class GradientConfig(MethodConfig):
    pass


class GradientSaliency(SaliencyMethod):
    """Simonyan et al. 2014 (lecture, "White box saliency"): max over channels of |d score / d x|."""

    key, label, Config = "gradient", "Gradient saliency", GradientConfig

    def raw_maps(self, x, targets, progress):
        from captum.attr import Saliency

        maps = _captum(self.handle, lambda model: Saliency(model), x, targets, abs=True)
        return maps.amax(dim=1)


@dataclass(frozen=True)
class IntegratedGradientsConfig(MethodConfig):
    steps: int = 32
    baseline: str = "black"  # black | grey
    batch_size: int = 16


class IntegratedGradientsMap(SaliencyMethod):
    """Integrated gradients (Sundararajan et al. 2017, eq. 1), captum's Gauss-Legendre version.

    Signed: the sum over colour channels of (x - x') * average gradient along the path.
    """

    key, label, signed, slow, Config = "ig", "Integrated gradients", True, True, IntegratedGradientsConfig

    def raw_maps(self, x, targets, progress):
        from captum.attr import IntegratedGradients

        if self.config.steps < 2:
            raise ConfigError("Integrated gradients needs at least 2 steps.")
        baseline = torch.zeros_like(x) if self.config.baseline == "black" else torch.full_like(x, 0.5)
        report(progress, 0.0, "integrating gradients")
        with torch.enable_grad():  # no hooks: the lock is taken per forward, not around the whole integral
            maps = IntegratedGradients(_LockedEachForward(self.handle)).attribute(
                x.clone(), target=targets, baselines=baseline, n_steps=self.config.steps,
                internal_batch_size=self.config.batch_size).detach()
        report(progress, 1.0, "done")
        return maps.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Occlusion (a sliding square occluder)


@dataclass(frozen=True)
class OcclusionConfig(MethodConfig):
    patch: int = 32
    stride: int = 16
    fill: str = "grey"  # grey | black | blur
    batch_size: int = 32


@dataclass(frozen=True)
class OcclusionScan:
    """The target-probability map over occluder positions, for every class at once.

    ``probs[i, j, c]`` is p(c) with the occluder's top-left corner at (ys[i], xs[j]); ``base`` is
    p(c) of the untouched image. The importance of a pixel is the mean drop p_base - p_occluded over
    all occluder positions that cover it (captum's Occlusion convention).
    """

    probs: np.ndarray  # (rows, cols, classes)
    base: np.ndarray  # (classes,)
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    patch: int
    size: tuple[int, int]

    def probability_map(self, target: int) -> np.ndarray:
        return self.probs[:, :, target]

    def saliency(self, target: int) -> np.ndarray:
        return self.importance(target)

    def importance(self, target: int) -> np.ndarray:
        height, width = self.size
        total = np.zeros((height, width), np.float64)
        count = np.zeros((height, width), np.float64)
        drops = self.base[target] - self.probs[:, :, target]
        for i, y in enumerate(self.ys):
            for j, x in enumerate(self.xs):
                total[y:y + self.patch, x:x + self.patch] += drops[i, j]
                count[y:y + self.patch, x:x + self.patch] += 1
        return (total / np.maximum(count, 1)).astype(np.float32)


def fill_image(x: torch.Tensor, fill: str, blur_sigma: float = 8.0) -> torch.Tensor:
    """What the occluder (or a deleted pixel) shows: grey, black, or a blurred copy of the image."""
    if fill == "grey":
        return torch.full_like(x, 0.5)
    if fill == "black":
        return torch.zeros_like(x)
    if fill == "blur":
        from torchvision.transforms.functional import gaussian_blur

        radius = max(1, min(int(3 * blur_sigma), (min(x.shape[-2:]) - 1) // 2))
        return gaussian_blur(x, [2 * radius + 1] * 2, [blur_sigma] * 2)
    raise ConfigError(f"Unknown fill '{fill}'; use grey, black or blur.")


def occluder_positions(size: int, patch: int, stride: int) -> tuple[int, ...]:
    return tuple(range(0, size - patch + 1, stride))


def occlusion_scan(handle: ModelHandle, x: torch.Tensor, config: OcclusionConfig = OcclusionConfig(),
                   progress: Progress | None = None) -> OcclusionScan:
    """Slide the occluder over one image (1, 3, H, W); evaluate the positions in batches."""
    _check_images(x)
    x = x[:1].detach().to(handle.device, torch.float32)
    height, width = x.shape[-2:]
    if config.patch < 1 or config.stride < 1:
        raise ConfigError("The occluder's patch size and stride must be at least 1 pixel.")
    if config.patch > min(height, width):
        raise ConfigError(f"The occluder ({config.patch} px) is larger than the image the model sees "
                          f"({width}×{height} px); choose a smaller patch.")
    filler = fill_image(x, config.fill)
    ys, xs = occluder_positions(height, config.patch, config.stride), occluder_positions(width, config.patch, config.stride)
    corners = [(y, x0) for y in ys for x0 in xs]
    base = handle.probabilities(x)[0]
    chunks = []
    for start in range(0, len(corners), config.batch_size):
        batch = x.repeat(min(config.batch_size, len(corners) - start), 1, 1, 1)
        for k, (y, x0) in enumerate(corners[start:start + config.batch_size]):
            batch[k, :, y:y + config.patch, x0:x0 + config.patch] = filler[0, :, y:y + config.patch, x0:x0 + config.patch]
        chunks.append(handle.probabilities(batch, batch_size=config.batch_size))
        done = start + batch.shape[0]
        report(progress, done / len(corners), f"occluder position {done} of {len(corners)}")
    probs = np.concatenate(chunks).reshape(len(ys), len(xs), -1)
    return OcclusionScan(probs=probs, base=base, ys=ys, xs=xs, patch=config.patch, size=(height, width))


class OcclusionMap(ScanMethod):
    """Lecture, "Black box saliency via masking": importance = mean probability drop under the occluder."""

    key, label, Config = "occlusion", "Occlusion", OcclusionConfig
    signed = True  # occluding can also raise the probability

    def scan(self, x, progress=None) -> OcclusionScan:
        return occlusion_scan(self.handle, x, self.config, progress)


# ---------------------------------------------------------------------------------------------
# RISE (random masks)


@dataclass(frozen=True)
class RISEConfig(MethodConfig):
    masks: int = 1000
    grid: int = 7  # s: masks are s x s binary grids, upsampled with a random shift
    keep: float = 0.5  # p: probability that a grid cell is kept
    batch_size: int = 32
    seed: int = 0
    resolution: int = 56  # side of the stored all-class maps (upsampled for display)


@dataclass(frozen=True)
class RISEScan:
    """Maps for every class from one set of masked forward passes (eq. 6 as one matrix product)."""

    maps: np.ndarray  # (classes, r, r) at the stored resolution
    size: tuple[int, int]

    def saliency(self, target: int) -> np.ndarray:
        return upsample(torch.from_numpy(self.maps[target:target + 1]), self.size)[0].numpy()


def rise_masks(count: int, size: tuple[int, int], *, grid: int, keep: float, generator: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """(count, H, W) soft masks in [0, 1] (Petsiuk et al. 2018, sec. 3.2)."""
    height, width = size
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    cells = (torch.rand(count, 1, grid, grid, generator=generator) < keep).float()
    big = F.interpolate(cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear", align_corners=False)
    dy = torch.randint(0, cell_h, (count,), generator=generator).tolist()
    dx = torch.randint(0, cell_w, (count,), generator=generator).tolist()
    crops = [big[i, 0, dy[i]:dy[i] + height, dx[i]:dx[i] + width] for i in range(count)]
    return torch.stack(crops).to(device)


def rise_scan(handle: ModelHandle, x: torch.Tensor, config: RISEConfig = RISEConfig(),
              progress: Progress | None = None) -> RISEScan:
    """RISE on one image: S_c = sum_i p_c(x * M_i) M_i / (N p), for every class c at once."""
    _check_images(x)
    if config.masks < 1 or not 0 < config.keep < 1 or config.grid < 1:
        raise ConfigError("RISE needs at least one mask, a grid of at least 1 and a keep probability in (0, 1).")
    x = x[:1].detach().to(handle.device, torch.float32)
    size = tuple(x.shape[-2:])
    generator = torch.Generator().manual_seed(config.seed)
    resolution = min(config.resolution, *size)
    total = torch.zeros(handle.num_classes, resolution * resolution, dtype=torch.float64)
    for start in range(0, config.masks, config.batch_size):
        count = min(config.batch_size, config.masks - start)
        masks = rise_masks(count, size, grid=config.grid, keep=config.keep, generator=generator)
        probs = handle.probabilities(x * masks[:, None].to(handle.device), batch_size=config.batch_size)
        small = F.adaptive_avg_pool2d(masks[:, None], resolution).reshape(count, -1)
        total += torch.from_numpy(probs).double().T @ small.double()
        report(progress, (start + count) / config.masks, f"mask {start + count} of {config.masks}")
    maps = (total / (config.masks * config.keep)).float().reshape(-1, resolution, resolution)
    return RISEScan(maps=maps.numpy(), size=size)


class RISEMap(ScanMethod):
    """RISE (Petsiuk et al. 2018): probability-weighted average of random masks."""

    key, label, Config = "rise", "RISE", RISEConfig

    def scan(self, x, progress=None) -> RISEScan:
        return rise_scan(self.handle, x, self.config, progress)


def _sub_progress(progress: Progress | None, index: int, count: int) -> Progress | None:
    """Map one image's progress onto its share of a batch."""
    return within(progress, index / count, (index + 1) / count)


# ---------------------------------------------------------------------------------------------
# Registry


METHODS: dict[str, type[SaliencyMethod]] = {
    cls.key: cls for cls in (GradCAM, GradCAMPlusPlus, GuidedGradCAM, GradientSaliency,
                             IntegratedGradientsMap, OcclusionMap, RISEMap)
}


def available_methods(handle: ModelHandle) -> list[str]:
    """Method keys that make sense for this model: CAM methods need a spatial conv layer."""
    return [key for key, cls in METHODS.items() if not cls.uses_layer or handle.layers]


def method_class(key: str) -> type[SaliencyMethod]:
    """The method registered under ``key``; a sentence naming close ones when there is none."""
    if key not in METHODS:
        raise ConfigError(f"Unknown saliency method '{key}'; choose one of {', '.join(METHODS)}.")
    return METHODS[key]


def make_method(handle: ModelHandle, key: str, config: MethodConfig | None = None) -> SaliencyMethod:
    cls = method_class(key)
    if cls.uses_layer and not handle.layers:
        raise ConfigError(f"{cls.label} needs a convolutional layer with a spatial output, and this model has none.")
    return cls(handle, config)


def config_from(key: str, settings: Mapping[str, Any]) -> MethodConfig:
    """The method's Config from the settings it has a field for (a page's or a CLI's flat settings:
    ``patch`` goes to occlusion, ``masks`` to RISE, ``layer`` to the CAM methods); the rest default."""
    return configs.config_from(method_class(key).Config, settings)


def describe() -> list[dict]:
    """The registry as plain data, for ``python -m engine methods --json``."""
    return [{"key": cls.key, "label": cls.label, "fields": configs.config_fields(cls.Config),
             "covers_every_class": cls.covers_every_class}
            for cls in METHODS.values()]


# ---------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion


@dataclass(frozen=True)
class FaithfulnessConfig(MethodConfig):
    steps: int = 32
    deletion_fill: str = "black"  # what a deleted pixel becomes (Petsiuk et al.: black)
    insertion_fill: str = "blur"  # where insertion starts from (Petsiuk et al.: a blurred copy)
    batch_size: int = 33
    seed: int = 0  # breaks ties in the pixel order (a constant map becomes a random order)


@dataclass(frozen=True)
class Faithfulness:
    fractions: np.ndarray  # (steps + 1,) share of pixels deleted / inserted
    deletion: np.ndarray  # target probability as the most salient pixels are removed
    insertion: np.ndarray  # target probability as the most salient pixels are put back
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better
    target: int


def pixel_order(saliency: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pixel indices from most to least salient; ties broken at random (seeded)."""
    flat = np.asarray(saliency, np.float64).ravel()
    tie_break = np.random.default_rng(seed).random(flat.size)
    return np.lexsort((tie_break, -flat))


def deletion_insertion(handle: ModelHandle, x: torch.Tensor, saliency: np.ndarray, target: int,
                       config: FaithfulnessConfig = FaithfulnessConfig(),
                       progress: Progress | None = None) -> Faithfulness:
    """Deletion/insertion curves (Petsiuk et al. 2018, sec. 4.1), evaluated in batches."""
    _check_images(x)
    x = x[:1].detach().to(handle.device, torch.float32)
    height, width = x.shape[-2:]
    if saliency.shape != (height, width):
        raise ConfigError(f"The saliency map is {saliency.shape}, but the image is {(height, width)}.")
    if config.steps < 1:
        raise ConfigError("Deletion and insertion need at least one step.")
    order = torch.from_numpy(pixel_order(saliency, config.seed)).to(handle.device)
    # rank[p] = position of pixel p in the order; a pixel is "switched" at step k if rank < n_k
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=handle.device)
    counts = [round(k * height * width / config.steps) for k in range(config.steps + 1)]
    curves = {}
    for name, start, end, fill in (("deletion", x, None, config.deletion_fill),
                                   ("insertion", None, x, config.insertion_fill)):
        substrate = fill_image(x, fill)
        source, destination = (x, substrate) if name == "deletion" else (substrate, x)
        probs = []
        for first in range(0, len(counts), config.batch_size):
            chunk = torch.tensor(counts[first:first + config.batch_size], device=handle.device)
            switched = (rank.view(1, 1, height, width) < chunk.view(-1, 1, 1, 1)).float()
            images = source * (1 - switched) + destination * switched
            probs.append(handle.probabilities(images, batch_size=config.batch_size)[:, target])
            done = first + chunk.numel() + (len(counts) if name == "insertion" else 0)
            report(progress, done / (2 * len(counts)), f"{name}: step {first + chunk.numel()} of {len(counts)}")
        curves[name] = np.concatenate(probs)
    fractions = np.array(counts, np.float64) / (height * width)
    return Faithfulness(fractions=fractions, deletion=curves["deletion"], insertion=curves["insertion"],
                        deletion_auc=float(np.trapezoid(curves["deletion"], fractions)),
                        insertion_auc=float(np.trapezoid(curves["insertion"], fractions)), target=target)


def score_maps(handle: ModelHandle, x: torch.Tensor, maps: Mapping[str, np.ndarray], target: int,
               config: FaithfulnessConfig = FaithfulnessConfig(),
               progress: Progress | None = None) -> dict[str, Faithfulness]:
    """:func:`deletion_insertion` for several named maps of one image, as one piece of work (one job,
    so one progress bar covers the whole scoring)."""
    scores = {}
    for i, (name, saliency_map) in enumerate(maps.items()):
        share = None
        if progress is not None:
            share = (lambda fraction, message, i=i, name=name:
                     progress((i + fraction) / len(maps), f"{name}: {message}"))
        scores[name] = deletion_insertion(handle, x, saliency_map, target, config, share)
    return scores


# ---------------------------------------------------------------------------------------------
# One engine call for the page and the CLI


@dataclass(frozen=True)
class Explanation:
    """One method's map of one image, as plain numbers (cacheable, picklable)."""

    method: str
    label: str
    target: int
    target_label: str
    layer: str | None
    saliency: np.ndarray  # (H, W) float32 at input resolution
    signed: bool
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    scan: ClassScan | None = None  # a scan method's every-class data (OcclusionScan, RISEScan)

    @property
    def covers_every_class(self) -> bool:
        """A scan keeps every class's map, so explaining another class is free."""
        return self.scan is not None

    @property
    def occlusion(self) -> OcclusionScan | None:
        """The probability map over occluder positions, when this is an occlusion map."""
        return self.scan if isinstance(self.scan, OcclusionScan) else None

    def for_class(self, target: int, target_label: str) -> "Explanation":
        """The same scan explaining another class, without a single extra forward pass."""
        if not self.covers_every_class:
            raise ConfigError(f"{self.label} has to be run again to explain another class.")
        return replace(self, target=target, target_label=target_label, saliency=self.scan.saliency(target))


def explain(handle: ModelHandle, x: torch.Tensor, method: str, target: int | None = None,
            config: MethodConfig | None = None, progress: Progress | None = None) -> Explanation:
    """Run one method on one image (1, 3, H, W) and package the result for plots and downloads.

    Dispatch is the method's own :meth:`SaliencyMethod.explain`: no key is special here."""
    return make_method(handle, method, config).explain(x, target, progress=progress)


# ---------------------------------------------------------------------------------------------
# Downloads: overlay PNG, raw map, manifest


def manifest(explanation: Explanation, handle: ModelHandle, *, image_sha256: str, image_name: str) -> dict:
    """Everything needed to reproduce a map: model, layer, method, class, parameters, versions."""
    import platform
    from importlib.metadata import version  # the installed versions, without importing torchvision

    return io.manifest(
        "saliency",
        image={"name": image_name, "sha256": image_sha256, "model_input": [handle.input_size] * 2},
        model={"name": handle.name, "source": handle.spec.source, "arch": handle.spec.arch,
               "mean": list(handle.spec.mean), "std": list(handle.spec.std)},
        method=explanation.method, method_label=explanation.label, layer=explanation.layer,
        **{"class": {"id": explanation.target, "name": explanation.target_label}},
        parameters=explanation.config, signed=explanation.signed,
        map={"shape": list(explanation.saliency.shape), "min": float(explanation.saliency.min()),
             "max": float(explanation.saliency.max())},
        seconds=round(explanation.seconds, 4),
        versions={"python": platform.python_version(), "torch": torch.__version__,
                  "torchvision": version("torchvision"), "captum": version("captum"), "numpy": np.__version__},
    )


def npy_bytes(saliency: np.ndarray) -> bytes:
    import io as bytes_io

    buffer = bytes_io.BytesIO()
    np.save(buffer, saliency.astype(np.float32))
    return buffer.getvalue()


def file_stem(explanation: Explanation, image_name: str) -> str:
    """A file name that says what the map is: image, method, class."""
    import re

    label = re.sub(r"[^A-Za-z0-9]+", "-", explanation.target_label).strip("-").lower()
    image = re.sub(r"[^A-Za-z0-9]+", "-", image_name.rsplit(".", 1)[0]).strip("-").lower()
    return f"{image}_{explanation.method}_{explanation.target}-{label}"

"""Class inversion: change an image until it strongly classifies as a target class (Anosheh et al.).

Paper: shared/papers/anosheh-image-transformation-via-inversion.txt. Composed the way lucent
composes a visualisation: an image parameterisation (:func:`start_image`), an objective made of
weighted terms (:class:`ClassObjective`, :class:`FeatureObjective`) and an optimisation loop that
keeps snapshots (:func:`optimise`).

The five losses of sec. 2.2, on images in [0, 1] (the loss is a function of the image only; how the
paper's Caffe weights map onto it is :meth:`LossWeights.from_paper`):

* **classification** -- softmax cross-entropy to the target, unscaled (x1);
* **content** -- ``1/2 sum (F - P)^2`` over one layer's features F of the image and P of the
  original (Gatys et al. eq. 1; the paper's implementation follows Liu's port of Gatys);
* **style** -- ``sum_l 1/L * 1/(4 N_l^2 M_l^2) sum (G_l - A_l)^2``, G and A the Gram matrices
  ``F F^T`` of the image and the original at L layers (Gatys eq. 3-5, equal layer weights);
* **total variation** -- the paper's own definition: each channel flattened row-major, the sum of
  |I(x_{i+1}) - I(x_i)|, plus the same for the column-major flattening (so the step from the end
  of one row to the start of the next counts too, exactly as a flattening gives it);
* **colour similarity** -- ``sum (x - x0)^2`` over the values whose difference from the original
  is greater than 30 % of the range (0.3 here).

Sec. 2.3: the **mask** multiplies the gradient before each update, so pixels outside it never move
(bit for bit, for every optimiser here); **jitter** rolls the image by up to 16 px before each
forward pass (the gradient flows back through the roll, so it lands on the unshifted pixels). As
the paper found (sec. 4), L-BFGS cannot take jitter: its line search needs one fixed function.
Sec. 6: starting from noise. Feature inversion (Mahendran & Vedaldi 2015, in the lecture) shares
the loop with its own objective.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, ImageError
from .hooks import capture
from .images import to_uint8
from .models import LayerInfo, ModelHandle
from .progress import Progress, report

MAX_JITTER = 64
OPTIMIZERS = ("lbfgs", "adam", "gd")


# ---------------------------------------------------------------------------------------------
# The losses of sec. 2.2


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sec. 2.2: V(I) = sum_i |I(x_{i+1}) - I(x_i)| over each channel flattened row-major, plus the
    same over the column-major flattening. ``x`` is (N, C, H, W); the result sums every image."""
    rows = x.flatten(2)
    columns = x.transpose(2, 3).flatten(2)
    # l1_loss(a[1:], a[:-1]) is sum |a_{i+1} - a_i| as one fused operation (forward and backward).
    return (F.l1_loss(rows[..., 1:], rows[..., :-1], reduction="sum")
            + F.l1_loss(columns[..., 1:], columns[..., :-1], reduction="sum"))


def colour_similarity(x: torch.Tensor, original: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Sec. 2.2: squared difference to the original, counted only where it is greater than 30 %."""
    difference = x - original
    return (difference.square() * (difference.abs() > threshold)).sum()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gatys eq. 3: G = F F^T with F the (C, H*W) feature matrix; (N, C, H, W) -> (N, C, C)."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2)


def style_loss(features: list[torch.Tensor], target_grams: list[torch.Tensor]) -> torch.Tensor:
    """Gatys eq. 4-5: sum over layers of 1/L * 1/(4 N^2 M^2) * ||G - A||^2 (N channels, M positions)."""
    total = features[0].new_zeros(())
    for feature, target in zip(features, target_grams):
        channels, positions = feature.shape[1], feature.shape[2] * feature.shape[3]
        total = total + F.mse_loss(gram_matrix(feature), target, reduction="sum") / (4 * channels ** 2 * positions ** 2)
    return total / len(features)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gatys eq. 1: 1/2 * sum (F - P)^2."""
    return 0.5 * F.mse_loss(features, target, reduction="sum")


# Mahendran & Vedaldi (2015), sec. 2 and 3: normalised representation loss and two image priors.
PIXEL_RANGE_B = 80 / 255  # their B: the typical norm of a mean-subtracted pixel, here in [0, 1] units


def representation_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||Phi(x) - Phi0||^2 / ||Phi0||^2 (their eq. 1 with the normalised Euclidean loss)."""
    return (features - target).square().sum() / target.square().sum().clamp_min(1e-12)


def alpha_norm(x: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """R_alpha(x) = ||x - mean||_alpha^alpha / (H W B^alpha): keeps values in a natural range."""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    return centred.abs().pow(alpha).sum() / (x.shape[2] * x.shape[3] * PIXEL_RANGE_B ** alpha)


def tv_beta(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """R_V^beta(x) = sum ((dx)^2 + (dy)^2)^(beta/2) / (H W V^beta), V = B / 6.5 (their sec. 3)."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    variation = (PIXEL_RANGE_B / 6.5) ** beta
    return (dx.square() + dy.square()).pow(beta / 2).sum() / (x.shape[2] * x.shape[3] * variation)


# ---------------------------------------------------------------------------------------------
# Weights, and how the paper's Caffe numbers map onto them


# Calibration of the feature terms on the bundled model (see LossWeights.from_paper).
FEATURE_GAIN = {"content": 1.0, "style": 0.01}


@dataclass(frozen=True)
class LossWeights:
    """Multipliers of the four regularising terms (classification is always x1). Negative is allowed."""

    content: float = 0.0
    style: float = 0.0
    tv: float = 0.0
    colour: float = 0.0

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.content, self.style, self.tv, self.colour)

    @classmethod
    def from_paper(cls, content: float, style: float, tv: float, colour: float, *,
                   std: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> "LossWeights":
        """Convert a row of the paper's results, e.g. tiger (1e-10, 1e-7, 1e-9, 1e-8), to these units.

        The paper ran Caffe's VGG-19 on 0-255 images (mean subtracted), with the losses as sums. The
        losses here are the same sums on [0, 1] images, so each weight absorbs the unit change:

        * TV is linear in the pixel scale: x 255. Colour is quadratic: x 255^2. These are exact.
        * Content and style are measured on features. VGG is piecewise linear, so its features scale
          with its input; one unit of the network input here is ``255 * std`` levels (127.5 for the
          bundled mean = std = 0.5), so content (quadratic in features) takes ``(255 std)^2`` and
          style (Gram, quadratic; its loss, quadratic again) takes ``(255 std)^4``. This part is an
          assumption: a different network's features have their own magnitudes. On the bundled
          model the unit change alone left the tiger face-masked row stuck on the style term (p(tiger)
          1e-4 after 150 L-BFGS steps, style 100x the classification term's pull), while 1/100 of it
          gives the paper's outcome (p(tiger) 0.89 in 40 steps); that measured gain is
          :data:`FEATURE_GAIN`. Content needed none (the brown bear row's negative content weight
          behaves as in the paper).
        """
        scale = 255.0 * float(np.mean(std))
        return cls(content=content * scale ** 2 * FEATURE_GAIN["content"],
                   style=style * scale ** 4 * FEATURE_GAIN["style"], tv=tv * 255.0, colour=colour * 255.0 ** 2)


# ---------------------------------------------------------------------------------------------
# Masks (sec. 2.3)


def rectangle_mask(size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """A size x size mask that is 1 inside ``box`` = (left, top, right, bottom) as fractions of the side."""
    left, top, right, bottom = _pixel_box(size, box)
    mask = np.zeros((size, size), np.float32)
    mask[top:bottom, left:right] = 1.0
    return validate_mask(mask, size)


def ellipse_mask(size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """A size x size mask that is 1 inside the ellipse inscribed in ``box`` (fractions, as above)."""
    left, top, right, bottom = (v * size for v in box)
    if right <= left or bottom <= top:
        raise ConfigError("The ellipse has no area: its right/bottom edge must lie past its left/top edge.")
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    inside = (((xs - (left + right) / 2) / ((right - left) / 2)) ** 2
              + ((ys - (top + bottom) / 2) / ((bottom - top) / 2)) ** 2) <= 1.0
    return validate_mask(inside.astype(np.float32), size)


def _pixel_box(size: int, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    if len(box) != 4 or not all(0.0 <= v <= 1.0 for v in box):
        raise ConfigError("A mask box is four fractions of the image side between 0 and 1: left, top, right, bottom.")
    left, top, right, bottom = (int(round(v * size)) for v in box)
    if right <= left or bottom <= top:
        raise ConfigError("The rectangle has no area: its right/bottom edge must lie past its left/top edge.")
    return left, top, right, bottom


def mask_from_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """A mask from a drawing or an uploaded image, resized to size x size.

    RGBA (a canvas drawing): painted where alpha > 0. Grey or RGB: white (> 50 %) is the area that
    may change, as in an image editor's layer mask. The result must not be empty.
    """
    from PIL import Image

    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] == 4:
        level = array[..., 3].astype(np.float32) / 255.0
    elif array.ndim == 3 and array.shape[2] == 3:
        level = array.astype(np.float32).mean(axis=2) / 255.0
    elif array.ndim == 2:
        level = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else max(float(array.max()), 1.0))
    else:
        raise ImageError(f"A mask must be a grey, RGB or RGBA image; this one has shape {array.shape}.")
    resized = Image.fromarray((level * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    threshold = 0.0 if array.ndim == 3 and array.shape[2] == 4 else 0.5
    return validate_mask((np.asarray(resized, np.float32) / 255.0 > threshold).astype(np.float32), size)


def validate_mask(mask: np.ndarray | None, size: int) -> np.ndarray | None:
    """A float32 size x size mask with values in [0, 1], or a sentence saying what is wrong."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != (size, size):
        raise ConfigError(f"The mask is {mask.shape[1] if mask.ndim > 1 else '?'} x {mask.shape[0]} pixels; "
                          f"it must match the model's {size} x {size} view.")
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ConfigError("Mask values must lie between 0 and 1.")
    if not mask.any():
        raise ConfigError("The mask is empty: paint or choose the area that may change.")
    return mask


# ---------------------------------------------------------------------------------------------
# Jitter (sec. 2.3)


def jitter(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Roll the image by (dy, dx) pixels, wrapping around (Deepdream's jitter)."""
    return torch.roll(x, shifts=shift, dims=(2, 3))


def unjitter(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`jitter`."""
    return torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(2, 3))


def random_shift(generator: torch.Generator, limit: int) -> tuple[int, int]:
    """A shift of up to ``limit`` pixels in each direction, drawn uniformly."""
    if limit <= 0:
        return (0, 0)
    dy, dx = torch.randint(-limit, limit + 1, (2,), generator=generator).tolist()
    return (int(dy), int(dx))


# ---------------------------------------------------------------------------------------------
# Objectives: image -> named, weighted terms


def default_layers(handle: ModelHandle) -> tuple[str | None, tuple[str, ...]]:
    """(content layer, style layers) like Gatys' VGG choice: the end of each resolution stage.

    VGG's conv1_1..conv5_1 are one layer per resolution and conv4_2 sits at 1/8 of the input;
    here each stage's last feature map (not padding, a bare convolution or a batch norm) stands for
    its resolution, up to five, and the content layer is the stage at 1/8 (or the middle one).
    """
    stages: dict[int, LayerInfo] = {}
    for layer in handle.layers:
        if layer.kind in ("ZeroPad2d", "Identity", "BatchNorm2d") or layer.kind.startswith("Conv"):
            continue
        if layer.height < handle.input_size:
            stages[layer.height] = layer  # the last module at each resolution wins
    if not stages:
        return None, ()
    chosen = [stages[h] for h in sorted(stages, reverse=True)][:5]
    eighth = [layer for layer in chosen if layer.height <= handle.input_size / 8]
    content = eighth[0] if eighth else chosen[len(chosen) // 2]
    return content.name, tuple(layer.name for layer in chosen)


class Objective:
    """Named terms of one image; ``evaluate`` returns (weighted terms, raw terms, logits)."""

    layers: tuple[str, ...] = ()
    setup_forwards = 0  # forward passes spent on the original before the loop

    def evaluate(self, handle: ModelHandle, x: torch.Tensor, shift: tuple[int, int] = (0, 0)
                 ) -> tuple[dict, dict, torch.Tensor]:
        """The network sees ``x`` rolled by ``shift`` (jitter); pixel terms see ``x`` itself."""
        with capture(handle, self.layers) as features:
            logits = handle.logits(jitter(x, shift) if any(shift) else x)
            raw = self.raw_terms(x, logits, features, shift)
        weighted = {name: value * self.weight(name) for name, value in raw.items() if self.weight(name) != 0}
        return weighted, raw, logits

    def raw_terms(self, x, logits, features, shift) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def weight(self, name: str) -> float:
        raise NotImplementedError


def _rolled_like(features: torch.Tensor, shift: tuple[int, int], image_size: int) -> torch.Tensor:
    """The original's features as the jittered image's would be: rolled by the shift at their scale.

    Exact where the shift is a multiple of the layer's stride (away from the wrapped border), the
    nearest whole feature position otherwise. Gram matrices need no such care: they ignore position.
    """
    if not any(shift):
        return features
    scale = features.shape[2] / image_size
    return torch.roll(features, shifts=(round(shift[0] * scale), round(shift[1] * scale)), dims=(2, 3))


class ClassObjective(Objective):
    """Sec. 2.2: cross-entropy to the target (x1) + the weighted content, style, TV and colour terms."""

    def __init__(self, handle: ModelHandle, original: torch.Tensor, target: int, weights: LossWeights, *,
                 content_layer: str | None, style_layers: tuple[str, ...], colour_threshold: float = 0.3):
        self.target = torch.tensor([target], device=handle.device)
        self.weights = weights
        self.original = original
        self.colour_threshold = colour_threshold
        self.content_layer = content_layer if weights.content else None
        self.style_layers = tuple(style_layers) if weights.style else ()
        if weights.content and not content_layer:
            raise ConfigError("This model has no spatial layer to measure content on; set the content weight to 0.")
        if weights.style and not style_layers:
            raise ConfigError("Pick at least one layer for the style term, or set its weight to 0.")
        self.layers = tuple(dict.fromkeys(([self.content_layer] if self.content_layer else []) + list(self.style_layers)))
        self.content_target, self.style_targets = None, []
        if self.layers:  # the original's features, once
            self.setup_forwards = 1
            with torch.no_grad(), capture(handle, self.layers) as features:
                handle.logits(original)
            if self.content_layer:
                self.content_target = features[self.content_layer].detach().clone()
            self.style_targets = [gram_matrix(features[name]).detach() for name in self.style_layers]

    def weight(self, name: str) -> float:
        return 1.0 if name == "classification" else getattr(self.weights, name)

    def raw_terms(self, x, logits, features, shift):
        terms = {"classification": F.cross_entropy(logits, self.target)}
        if self.weights.content:
            current = features[self.content_layer]
            terms["content"] = content_loss(current, _rolled_like(self.content_target, shift, x.shape[2]))
        if self.weights.style:
            terms["style"] = style_loss([features[n] for n in self.style_layers], self.style_targets)
        if self.weights.tv:
            terms["tv"] = total_variation(x)
        if self.weights.colour:
            terms["colour"] = colour_similarity(x, self.original, self.colour_threshold)
        return terms


class FeatureObjective(Objective):
    """Mahendran & Vedaldi: reconstruct an image from one layer's features of the original."""

    def __init__(self, handle: ModelHandle, original: torch.Tensor, layer: str, *, alpha_weight: float, tv_weight: float):
        self.layers = (layer,)
        self.alpha_weight, self.tv_weight = alpha_weight, tv_weight
        self.setup_forwards = 1
        with torch.no_grad(), capture(handle, self.layers) as features:
            handle.logits(original)
        self.target_features = features[layer].detach().clone()

    def weight(self, name: str) -> float:
        return {"representation": 1.0, "alpha_norm": self.alpha_weight, "tv_beta": self.tv_weight}[name]

    def raw_terms(self, x, logits, features, shift):
        target = _rolled_like(self.target_features, shift, x.shape[2])
        return {"representation": representation_loss(features[self.layers[0]], target),
                "alpha_norm": alpha_norm(x), "tv_beta": tv_beta(x)}


# ---------------------------------------------------------------------------------------------
# Configuration and result


@dataclass(frozen=True)
class InversionConfig:
    """Settings of one run. ``steps`` counts updates (L-BFGS iterations, each with its line search).

    Defaults are the tiger face-masked row of the paper's results converted to these units
    (:meth:`LossWeights.from_paper`) with L-BFGS, which turns chelsea into a tiger on the bundled model.
    """

    weights: LossWeights = field(default_factory=lambda: LossWeights.from_paper(1e-10, 1e-7, 1e-9, 1e-8))
    optimizer: str = "lbfgs"  # lbfgs (no jitter) | adam | gd (gradient descent, step scaled by the mean |gradient|)
    steps: int = 40
    lr: float | None = None  # None: 1 for L-BFGS, 0.01 for Adam, 0.004 for gd (in [0, 1] pixel units)
    jitter: int = 0  # largest random shift in pixels before each forward pass (the paper: 16)
    start: str = "image"  # image | noise (sec. 6: the losses then refer to the noise image)
    seed: int = 0
    content_layer: str | None = None  # None: default_layers(handle)
    style_layers: tuple[str, ...] | None = None
    colour_threshold: float = 0.3
    snapshots: int | tuple[int, ...] = 8  # how many images to keep, evenly spaced (ends included), or which steps
    require_change: bool = True  # refuse a target the image already has as top-1
    divergence: float = 1e4  # stop when |total| grows past this times its start (or is not finite)

    def as_dict(self) -> dict:
        return asdict(self)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else {"lbfgs": 1.0, "adam": 0.01, "gd": 0.004}[self.optimizer]


@dataclass(frozen=True)
class FeatureInversionConfig:
    """Mahendran & Vedaldi's inversion of one layer, from noise, with Adam."""

    layer: str | None = None  # None: the default content layer
    steps: int = 200
    lr: float = 0.05
    alpha_weight: float = 1e-3  # lambda_alpha of R_alpha, alpha = 6
    tv_weight: float = 1e-2  # lambda_V of R_V^beta, beta = 2
    jitter: int = 0
    seed: int = 0
    snapshots: int = 8

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InversionResult:
    """The final image, snapshots and the record of every step (plain numbers, cacheable)."""

    image: np.ndarray  # H x W x 3 uint8
    original: np.ndarray  # H x W x 3 uint8: the starting image (the photo, or the noise)
    target: int | None  # None for feature inversion
    original_class: int
    final_class: int
    outcome: str  # "done" | "diverged" | "stalled"
    message: str
    steps: int
    terms: dict[str, np.ndarray]  # weighted term per step, as it entered the total
    raw_terms: dict[str, np.ndarray]  # the same before weighting
    total: np.ndarray
    target_prob: np.ndarray  # per step (nan for feature inversion)
    top1: np.ndarray
    snapshots: tuple[tuple[int, np.ndarray], ...]
    final_probs: np.ndarray  # every class, at the end
    evaluations: int  # forward+backward passes the run needed
    forward_passes: int  # forwards without a backward: the original's features, the end record
    config: dict

    @property
    def reached_target(self) -> bool:
        return self.target is not None and self.final_class == self.target


class Diverged(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The loop


def start_image(x: torch.Tensor, start: str, seed: int) -> torch.Tensor:
    """The pixel parameterisation's starting values: the photo itself, or uniform noise around grey."""
    if start == "image":
        return x.detach().clone()
    if start == "noise":
        generator = torch.Generator().manual_seed(seed)
        return (0.5 + 0.2 * (torch.rand(x.shape, generator=generator) - 0.5)).to(x.device)
    raise ConfigError(f"Unknown start '{start}'; use image or noise.")


def invert(handle: ModelHandle, x: torch.Tensor, target: int | str, config: InversionConfig = InversionConfig(), *,
           mask: np.ndarray | None = None, progress: Progress | None = None,
           observer: list | None = None) -> InversionResult:
    """Sec. 2: optimise the image so the model calls it ``target``, under the weighted constraints."""
    _check_image(x, handle)
    target = handle.class_index(target)
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimiser '{config.optimizer}'; use one of {', '.join(OPTIMIZERS)}.")
    if config.jitter and config.optimizer == "lbfgs":
        raise ConfigError("L-BFGS cannot take jitter (the paper found the same, sec. 4): its line search needs "
                          "the same function at every try. Use Adam or gradient descent with jitter.")
    original = start_image(x.to(handle.device, torch.float32), config.start, config.seed)
    content_default, style_default = default_layers(handle)
    objective = ClassObjective(
        handle, original, target, config.weights,
        content_layer=config.content_layer or content_default,
        style_layers=config.style_layers if config.style_layers is not None else style_default,
        colour_threshold=config.colour_threshold)
    return optimise(handle, original, objective, target=target, optimizer=config.optimizer, steps=config.steps,
                    lr=config.learning_rate(), jitter_limit=config.jitter, seed=config.seed, snapshots=config.snapshots,
                    divergence=config.divergence, mask=mask, config=config.as_dict(), progress=progress,
                    observer=observer, refuse_top1=config.require_change and config.start == "image")


def invert_features(handle: ModelHandle, x: torch.Tensor, config: FeatureInversionConfig = FeatureInversionConfig(), *,
                    progress: Progress | None = None, observer: list | None = None) -> InversionResult:
    """Mahendran & Vedaldi: an image whose features at ``config.layer`` match the photo's, from noise."""
    _check_image(x, handle)
    layer = config.layer or default_layers(handle)[0]
    if layer is None:
        raise ConfigError("This model has no spatial layer to invert.")
    handle.layer(layer)  # a sentence for an unknown layer
    photo = x.to(handle.device, torch.float32)
    objective = FeatureObjective(handle, photo, layer, alpha_weight=config.alpha_weight, tv_weight=config.tv_weight)
    return optimise(handle, start_image(photo, "noise", config.seed), objective, target=None, optimizer="adam",
                    steps=config.steps, lr=config.lr, jitter_limit=config.jitter, seed=config.seed,
                    snapshots=config.snapshots, divergence=1e4, mask=None, config=config.as_dict(),
                    progress=progress, observer=observer, reference=photo)


def _check_image(x: torch.Tensor, handle: ModelHandle) -> None:
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ConfigError("Inversion works on one RGB image at a time, shape (1, 3, H, W).")
    if x.shape[2] != handle.input_size or x.shape[3] != handle.input_size:
        raise ConfigError(f"The image must be the model's {handle.input_size} x {handle.input_size} view.")


def snapshot_steps(steps: int, chosen: int | tuple[int, ...]) -> set[int]:
    """The steps whose image is kept: ``chosen`` evenly spread over 0..steps (both ends included),
    or the listed steps (those past the end are dropped; the final image is always kept)."""
    if not isinstance(chosen, int):
        return {int(s) for s in chosen if 0 <= int(s) <= steps} | {steps}
    if chosen <= 1 or steps == 0:
        return {steps}
    return {int(round(i * steps / (chosen - 1))) for i in range(chosen)}


class _Evaluator:
    """One forward+backward of the objective, with the gradient masked and the last point cached.

    torch's L-BFGS calls its closure again at the point where the previous line search ended; the
    cache answers that call without a second pass, so every pass counted here is a new point.
    """

    def __init__(self, handle: ModelHandle, objective: Objective, image: torch.Tensor, mask: torch.Tensor | None,
                 jitter_limit: int, generator: torch.Generator, normalise: bool, use_cache: bool):
        self.handle, self.objective, self.image, self.mask = handle, objective, image, mask
        self.use_cache = use_cache
        self.jitter_limit, self.generator, self.normalise = jitter_limit, generator, normalise
        self.passes = 0
        self.cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # point, loss, grad
        self.last: tuple[dict, dict, torch.Tensor] | None = None

    def __call__(self) -> torch.Tensor:
        # The network sees the pixels clamped to [0, 1], so a line search's trial points are images
        # too; after each update the loop projects the pixels themselves, which leaves this view
        # (and so the cache key) unchanged.
        view = None
        if self.use_cache:
            with torch.no_grad():
                view = self.image.clamp(0.0, 1.0)
            if self.cached is not None and torch.equal(self.cached[0], view):
                self.image.grad = self.cached[2].clone()
                return self.cached[1]
        shift = random_shift(self.generator, self.jitter_limit)
        with torch.enable_grad():
            weighted, raw, logits = self.objective.evaluate(self.handle, self.image.clamp(0.0, 1.0), shift)
            total = torch.stack(list(weighted.values())).sum()
            (gradient,) = torch.autograd.grad(total, self.image)
        self.passes += 1
        if self.mask is not None:
            gradient = gradient * self.mask
        if self.normalise:  # gradient descent as Deepdream takes it: steps in units of the mean |gradient|
            inside = gradient.abs().sum() / (self.mask.sum() * 3 if self.mask is not None else gradient.numel())
            gradient = gradient / inside.clamp_min(1e-12)
        self.image.grad = gradient
        loss = total.detach()
        if self.use_cache:
            self.cached = (view, loss, gradient.detach().clone())
        self.last = ({k: float(v.detach()) for k, v in weighted.items()}, {k: float(v.detach()) for k, v in raw.items()},
                     logits.detach().softmax(1)[0])
        return loss


def optimise(handle: ModelHandle, start: torch.Tensor, objective: Objective, *, target: int | None, optimizer: str,
             steps: int, lr: float, jitter_limit: int, seed: int, snapshots: int | tuple[int, ...], divergence: float,
             mask: np.ndarray | None, config: dict, progress: Progress | None = None, observer: list | None = None,
             reference: torch.Tensor | None = None, refuse_top1: bool = False) -> InversionResult:
    """The loop: ``steps`` updates of the pixels in [0, 1], recording each term before each update.

    After every update the pixels are projected back into [0, 1]. A non-finite or exploding total
    stops the run and restores the last image whose loss was finite (outcome "diverged").
    """
    if steps < 0 or lr <= 0:
        raise ConfigError("The number of steps must not be negative and the step size must be positive.")
    if not 0 <= jitter_limit <= MAX_JITTER:
        raise ConfigError(f"Jitter is a shift of 0 to {MAX_JITTER} pixels.")
    size = handle.input_size
    mask_tensor = None
    if mask is not None:
        mask_tensor = torch.from_numpy(validate_mask(mask, size)).to(handle.device).view(1, 1, size, size)
    image = start.detach().clone().to(handle.device).requires_grad_(True)
    original_pixels = to_uint8(reference if reference is not None else start)
    evaluator = _Evaluator(handle, objective, image, mask_tensor, jitter_limit,
                           torch.Generator().manual_seed(seed), normalise=optimizer == "gd",
                           use_cache=optimizer == "lbfgs")
    opt = _make_optimizer(optimizer, image, lr)
    keep = snapshot_steps(steps, snapshots)
    records: dict[str, list] = {"total": [], "target": [], "top1": []}
    terms: dict[str, list] = {}
    raw_terms: dict[str, list] = {}
    shots: list[tuple[int, np.ndarray]] = []
    last_good = image.detach().clone()
    outcome, message, step, first_total, stalls = "done", "", 0, None, 0
    probs, forwards = None, objective.setup_forwards
    original_class = None
    try:
        for step in range(steps + 1):
            final = step == steps
            if final:  # the end point: one forward, no jitter, no backward
                weighted, raw, probs = _measure(handle, objective, image)
                forwards += 1
            else:
                evaluator()
                weighted, raw, probs = evaluator.last
            total = float(sum(weighted.values()))
            first_total = total if first_total is None else first_total
            if not math.isfinite(total) or abs(total) > divergence * max(1.0, abs(first_total)):
                raise Diverged(f"the loss {'is not a finite number' if not math.isfinite(total) else 'exploded'} "
                               f"at step {step}")
            last_good = image.detach().clone()
            if original_class is None:
                original_class = int(probs.argmax())
                if refuse_top1 and original_class == target:  # known from the first pass, no extra forward
                    raise ConfigError(f"The model already calls this image a {handle.class_names[target]}: "
                                      "pick another class to change it into.")
            _append(records, terms, raw_terms, total, weighted, raw, probs, target)
            if step in keep:
                shots.append((step, to_uint8(image.detach())))
            if observer is not None:
                observer.append({"step": step, "total": total, **weighted, "target": records["target"][-1],
                                 "top1": records["top1"][-1], **({"image": shots[-1][1]} if step in keep else {})})
            report(progress, step / max(steps, 1),
                   f"step {step} of {steps}: loss {total:.4g}"
                   + (f", p({handle.class_names[target]}) {records['target'][-1]:.3f}" if target is not None else ""))
            if final:
                break
            if optimizer == "lbfgs":
                opt.step(evaluator)
            else:
                opt.step()
            with torch.no_grad():
                image.clamp_(0.0, 1.0)
            if optimizer == "lbfgs" and _lbfgs_stalled(opt, image):
                stalls += 1
                opt.state.clear()  # restart from a clean history
                if stalls == 2:
                    weighted, raw, probs = _measure(handle, objective, image)
                    forwards += 1
                    _append(records, terms, raw_terms, float(sum(weighted.values())), weighted, raw, probs, target)
                    step += 1
                    shots.append((step, to_uint8(image.detach())))
                    outcome = "stalled"
                    message = (f"L-BFGS stopped after {step} steps: two line searches in a row found no lower loss "
                               "(a minimum, or a kink of the TV term).")
                    break
            else:
                stalls = 0
    except Diverged as reason:
        with torch.no_grad():
            image.copy_(last_good)
        outcome = "diverged"
        message = (f"Stopped: {reason}. The last image with a finite loss is kept; lower the extreme weights "
                   "(or the step size) and run again.")
        step = max(step - 1, 0)
        if not shots or not np.array_equal(shots[-1][1], to_uint8(image.detach())):
            shots.append((step, to_uint8(image.detach())))
    final_image = to_uint8(image.detach())
    with torch.no_grad():
        if outcome == "diverged" or probs is None:  # the restored image was measured before its step
            final_probs = handle.logits(image.detach()).softmax(1)[0].cpu().numpy()
            forwards += 1
        else:  # the end record's forward already classified this image
            final_probs = probs.detach().cpu().numpy()
        if reference is not None:  # feature inversion: "before" is the photo, not the starting noise
            original_class = int(handle.logits(reference).argmax())
            forwards += 1
    report(progress, 1.0, message or "done")
    return InversionResult(
        image=final_image, original=original_pixels, target=target,
        original_class=original_class if original_class is not None else int(final_probs.argmax()),
        final_class=int(final_probs.argmax()), outcome=outcome, message=message, steps=step,
        terms={k: np.array(v) for k, v in terms.items()}, raw_terms={k: np.array(v) for k, v in raw_terms.items()},
        total=np.array(records["total"]), target_prob=np.array(records["target"]), top1=np.array(records["top1"]),
        snapshots=tuple(shots), final_probs=final_probs, evaluations=evaluator.passes, forward_passes=forwards,
        config=config)


def _append(records, terms, raw_terms, total, weighted, raw, probs, target) -> None:
    records["total"].append(total)
    records["target"].append(float(probs[target]) if target is not None else float("nan"))
    records["top1"].append(int(probs.argmax()))
    for name, value in weighted.items():
        terms.setdefault(name, []).append(value)
    for name, value in raw.items():
        raw_terms.setdefault(name, []).append(value)


def _measure(handle: ModelHandle, objective: Objective, image: torch.Tensor):
    with torch.no_grad():
        weighted, raw, logits = objective.evaluate(handle, image.detach())
    return ({k: float(v) for k, v in weighted.items()}, {k: float(v) for k, v in raw.items()},
            logits.softmax(1)[0])


def _make_optimizer(name: str, image: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    if name == "lbfgs":
        # One iteration per call so every step can be recorded, cancelled and snapshotted; the
        # evaluator's cache makes the call's opening evaluation free after a line search.
        return torch.optim.LBFGS([image], lr=lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe",
                                 tolerance_grad=1e-9, tolerance_change=1e-12)
    if name == "adam":
        return torch.optim.Adam([image], lr=lr)
    return torch.optim.SGD([image], lr=lr)


def _lbfgs_stalled(opt: torch.optim.LBFGS, image: torch.Tensor) -> bool:
    """True when the last line search found no lower loss (step size 0).

    The TV term is an L1 sum with kinks, where a quasi-Newton model can go wrong; the first stall
    restarts L-BFGS from a clean history, a second one in a row ends the run.
    """
    state = opt.state[image]
    step_size = state.get("t")
    return step_size is not None and float(step_size) == 0.0


# ---------------------------------------------------------------------------------------------
# Presets: the paper's rows (sec. 3), on the photos this app ships


@dataclass(frozen=True)
class Preset:
    """One row of the paper's results figure as a one-click setting."""

    name: str
    label: str
    image: str
    target: int
    paper_weights: tuple[float, float, float, float]  # (content, style, TV, colour) as printed in the paper
    mask: str | None = None  # "face" | "body" | None
    jitter: int = 0
    optimizer: str = "lbfgs"
    steps: int = 40
    note: str = ""

    def config(self, handle: ModelHandle | None = None, **changes) -> InversionConfig:
        std = handle.spec.std if handle is not None else (0.5, 0.5, 0.5)
        settings = dict(weights=LossWeights.from_paper(*self.paper_weights, std=std), optimizer=self.optimizer,
                        steps=self.steps, jitter=self.jitter)
        settings.update(changes)
        return InversionConfig(**settings)


# Chelsea's face and body as fractions of the square model view (looked up on the 224 px view).
CHELSEA_MASKS = {"face": ("ellipse", (0.28, 0.18, 0.78, 0.80)), "body": ("rectangle", (0.0, 0.35, 1.0, 1.0))}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("tiger-face", "Tiger [face-masked] (1e-10, 1e-7, 1e-9, 1e-8)", "chelsea", 292, (1e-10, 1e-7, 1e-9, 1e-8),
           mask="face", note="The cat photo's tiger row: only the face may change."),
    Preset("tiger-face-plain", "Tiger [face-masked] (0, 0, 0, 0)", "chelsea", 292, (0, 0, 0, 0), mask="face",
           note="The same mask with the classification loss alone: noisier."),
    Preset("hyena", "Hyena [unmasked] (0, 1e-9, 5e-6, 1e-8)", "chelsea", 276, (0, 1e-9, 5e-6, 1e-8)),
    Preset("hyena-body", "Hyena [body-masked] (0, 1e-10, 1e-7, 1e-6)", "chelsea", 276, (0, 1e-10, 1e-7, 1e-6),
           mask="body"),
    Preset("tabby", "Tabby cat (0, 0, 0, 1e-6)", "chelsea", 281, (0, 0, 0, 1e-6),
           note="The paper's dog photo is not shipped; its rows run on the cat photo."),
    Preset("brown-bear", "Brown bear (-6e-11, 1e-13, 1e-7, 1e-6)", "chelsea", 294, (-6e-11, 1e-13, 1e-7, 1e-6),
           note="A negative content weight pushes the features away from the original."),
    Preset("dalmatian", "Dalmatian (0, 1e-11, 1e-6, 0)", "chelsea", 251, (0, 1e-11, 1e-6, 0)),
    Preset("tiger-jitter", "Tiger [jittered] (1e-10, 0, -1e-12, 1e-11)", "chelsea", 292, (1e-10, 0, -1e-12, 1e-11),
           jitter=16, optimizer="adam", steps=60, note="Jitter needs Adam or gradient descent (sec. 4)."),
    Preset("tiger-body-jitter", "Tiger [body-masked, jittered] (1e-10, -1e-12, 0, 1e-11)", "chelsea", 292,
           (1e-10, -1e-12, 0, 1e-11), mask="body", jitter=16, optimizer="adam", steps=60),
)}


def preset_mask(preset: Preset, size: int) -> np.ndarray | None:
    if preset.mask is None:
        return None
    shape, box = CHELSEA_MASKS[preset.mask]
    return ellipse_mask(size, box) if shape == "ellipse" else rectangle_mask(size, box)


def loss_log_rows(result: InversionResult) -> list[dict]:
    """One row per recorded step: total, each weighted term, target probability and top-1."""
    rows = []
    for i in range(len(result.total)):
        row = {"step": i, "total": float(result.total[i])}
        row.update({name: float(values[i]) for name, values in result.terms.items()})
        row.update({f"raw_{name}": float(values[i]) for name, values in result.raw_terms.items()})
        row.update({"target_prob": float(result.target_prob[i]), "top1": int(result.top1[i])})
        rows.append(row)
    return rows



def loss_log_csv(result: InversionResult) -> str:
    """The per-step record as CSV text (the download and the CLI's loss log)."""
    rows = loss_log_rows(result)
    columns = list(rows[0]) if rows else ["step"]
    lines = [",".join(columns)]
    lines += [",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def manifest(result: InversionResult, handle: ModelHandle, *, image_name: str, preset: str | None = None,
             mask_pixels: int | None = None) -> dict:
    """What was run and what came out, for the JSON download and the CLI."""
    top = np.argsort(result.final_probs)[::-1][:5]
    name = (lambda i: None if i is None else {"id": int(i), "name": handle.class_names[int(i)]})
    return {
        "glassbox": "inversion" if result.target is not None else "feature-inversion",
        "paper": "Anosheh, Kapadia & Rulison, Image Transformation via Neural Network Inversion",
        "image": image_name, "model": handle.name, "preset": preset, "target": name(result.target),
        "original_top1": name(result.original_class), "final_top1": name(result.final_class),
        "final_target_prob": None if result.target is None else float(result.final_probs[result.target]),
        "final_top5": [{**name(i), "prob": float(result.final_probs[i])} for i in top],
        "outcome": result.outcome, "message": result.message, "steps": result.steps,
        "forward_backward_passes": result.evaluations, "mask_pixels": mask_pixels,
        "snapshot_steps": [step for step, _ in result.snapshots], "config": result.config,
        "weights_note": "weights are in this app's units (LossWeights.from_paper converts the paper's Caffe numbers)",
    }

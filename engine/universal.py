"""Universal adversarial perturbations: one image-independent ``v`` that changes most images' labels.

Moosavi-Dezfooli, Fawzi, Fawzi & Frossard, "Universal adversarial perturbations", CVPR 2017,
Algorithm 1 (the lecture's "Universal Adversarial Perturbations" slides):

    v = 0
    while the fooling rate on the training images X is below 1 - delta (and passes are left):
        for x_i in X, shuffled:
            if k(x_i + v) = k(x_i):                        # x_i + v still has x_i's label
                dv = DeepFool(x_i + v)                     # minimal perturbation to another class
                v = P_{p,xi}(v + dv)                       # projection onto the l_p ball of radius xi

``method="sgd"`` is a variant that spends the whole budget instead: stochastic sign-gradient ascent
of each image's clean-label cross-entropy (capped, so images already fooled stop pulling) over
minibatches of randomly cropped, flipped and shifted training images ("expectation over
transformation"), projected into the ball after every step, so ``v`` does not fit the handful of
training photos themselves (Shafahi et al., "Universal adversarial training", AAAI 2020, use the
same kind of minibatch ascent).

Here "x_i + v keeps its label" is judged on the 8-bit picture (``apply``), which is also what
DeepFool starts from. DeepFool's steps are often far below one level (most bundled photos are less
than one level, in L2, from a boundary), and a change a PNG cannot hold fools nothing: so each step
is stretched along its own direction until the 8-bit picture of x_i + v + t dv changes label
(``stretch=True``, :func:`_stretch`, a few forward passes; ``stretch=False`` is the plain
algorithm). ``v`` itself accumulates unrounded.

Units: ``xi`` is in 8-bit levels. For l-inf, ``xi=10`` means every pixel moves at most 10/255; for
l2, ``xi`` is the L2 norm of ``255 v`` (the paper's xi=2000 on 224x224 images in [0, 255]). A
perturbation is applied as ``round(255 clamp(x + v, 0, 1)) / 255`` (:func:`apply`), and the ``v``
returned is on the 8-bit grid and still inside its ball (:func:`to_grid`).

Also here: :func:`fooling_vs_size` (the lecture's plot of held-out fooling rate against the number
of training images) and :func:`transfer_matrix` (the lecture's table: a perturbation made on one
model, rows, evaluated on others, columns). Results are cached on disk (:func:`engine.lab.result_dir`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import lab
from .errors import ConfigError, DatasetError
from .imagesets import ImageSet
from .models import ModelHandle
from .progress import Progress, report, within

UNIVERSAL_VERSION = 1  # bump when a change makes cached perturbations stale
NORMS = ("inf", "2")
METHODS = {"deepfool": "Algorithm 1 (DeepFool steps, Moosavi-Dezfooli et al.)",
           "sgd": "Minibatch sign-gradient ascent over augmented images (whole budget)"}
MIN_TRAIN = 2  # images a universal perturbation is trained on, at least
MIN_SPLIT = 4  # images a set needs to be split into training and held-out halves
DOMINANT = 5  # dominant labels listed

Forward = lab.Forward
Observer = Callable[["Update"], None]


# ---------------------------------------------------------------------------------------------
# Settings and results


@dataclass(frozen=True)
class UniversalConfig:
    """Settings of a universal perturbation. Defaults: l-inf, xi = 10 levels (the paper's 10 on
    [0, 255] images), target fooling rate 1 - delta = 0.8 (the paper's delta = 0.2), DeepFool with
    10 candidate classes and overshoot 0.02 (the DeepFool paper's)."""

    xi: float = 10.0  # radius in 8-bit levels (l-inf: per pixel; l2: norm of 255 v)
    norm: str = "inf"  # "inf" | "2"
    target: float = 0.8  # stop when the training fooling rate reaches this (1 - delta)
    max_passes: int = 5  # passes over the training images at most (Alg. 1)
    candidates: int = 10  # DeepFool's candidate classes
    overshoot: float = 0.02  # DeepFool's overshoot
    max_iter: int = 50  # DeepFool's iterations per image at most
    stretch: bool = True  # lengthen each DeepFool step until the 8-bit picture changes label
    seed: int = 0  # shuffling, the split, the sgd minibatches and augmentations
    method: str = "sgd"  # "sgd" (the whole budget; generalises to held-out photos) | "deepfool" (Alg. 1)
    # method="sgd" only:
    steps: int = 60  # minibatch steps
    batch_size: int = 10  # images per step
    loss_cap: float = 6.0  # cross-entropy counted at most this much (a fooled image stops pulling)
    augment: bool = True  # random resized crops, flips and shifts of the training images

    def as_dict(self) -> dict:
        return asdict(self)

    def settings(self) -> dict:
        """What the result depends on (the sgd knobs only for sgd, DeepFool's only for deepfool)."""
        record = self.as_dict()
        drop = ("steps", "batch_size", "loss_cap", "augment") if self.method == "deepfool" else \
               ("target", "max_passes", "candidates", "overshoot", "max_iter", "stretch")
        return {k: v for k, v in record.items() if k not in drop}

    def check(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"The norm must be 'inf' or '2', not {self.norm!r}.")
        if self.method not in METHODS:
            raise ConfigError(f"Unknown method {self.method!r}; use deepfool (the paper's Algorithm 1) or sgd.")
        if self.norm == "inf" and not 1 <= self.xi <= 128:
            raise ConfigError(f"For the L-inf norm, xi must be between 1 and 128 levels (of 255), not {self.xi:g}.")
        if self.norm == "2" and not 1 <= self.xi <= 100_000:
            raise ConfigError(f"For the L2 norm, xi must be between 1 and 100000 levels, not {self.xi:g}.")
        if not 0 < self.target <= 1:
            raise ConfigError(f"The target fooling rate must be above 0 and at most 1, not {self.target:g}.")
        if not 1 <= self.max_passes <= 100:
            raise ConfigError(f"The number of passes must be between 1 and 100, not {self.max_passes}.")
        if self.candidates < 2:
            raise ConfigError("DeepFool needs at least 2 candidate classes (the image's own and one other).")
        if not 0 <= self.overshoot <= 1:
            raise ConfigError(f"The overshoot must be between 0 and 1, not {self.overshoot:g}.")
        if self.max_iter < 1:
            raise ConfigError("DeepFool needs at least 1 iteration per image.")
        if not 1 <= self.steps <= 10_000:
            raise ConfigError(f"The number of steps must be between 1 and 10000, not {self.steps}.")
        if self.batch_size < 1:
            raise ConfigError("The minibatch must hold at least 1 image.")
        if self.loss_cap <= 0:
            raise ConfigError("The loss cap must be above 0.")


@dataclass(frozen=True)
class Update:
    """One change of ``v`` (what ``observer`` receives): the norm right after the projection."""

    index: int  # 1, 2, ... over the run
    pass_index: int  # 0-based pass (deepfool) or step (sgd)
    image: int  # the training image it came from (deepfool), -1 for a minibatch step (sgd)
    norm: float  # ||v|| in levels after the projection (l-inf: max |255 v|; l2: ||255 v||_2)


@dataclass(frozen=True)
class Fit:
    """A perturbation fitted on a tensor of training images (:func:`fit_universal`)."""

    perturbation: torch.Tensor  # (3, H, W) in [0, 1] units, on the 8-bit grid, inside the ball
    clean: np.ndarray  # (N,) clean top-1 of the training images
    attacked: np.ndarray  # (N,) top-1 with the perturbation
    pass_fooling: tuple[float, ...]  # training fooling rate after each pass (sgd: each tenth of the steps)
    updates: int
    passes: int  # passes over the set (sgd: steps)
    update_norms: tuple[float, ...]  # every update's norm in levels, in order
    seconds: float

    @property
    def fooling_rate(self) -> float:
        return lab.fooling_rate(self.clean, self.attacked)


@dataclass(frozen=True)
class DominantLabel:
    class_id: int
    name: str
    count: int


@dataclass(frozen=True)
class UniversalResult:
    """A universal perturbation and how it fools: on its training images and on held-out ones."""

    perturbation: np.ndarray  # (3, H, W) float32 in [0, 1] units, on the 8-bit grid
    model: str
    config: dict  # UniversalConfig.as_dict()
    train_set: str  # set names (for the screen)
    heldout_set: str
    split: str  # how the training and held-out images were chosen, one sentence
    train_indices: tuple[int, ...]
    heldout_indices: tuple[int, ...]
    norm_levels: float  # ||v|| in levels (l-inf or l2, as the config says)
    fooling_rate_train: float
    pass_fooling: tuple[float, ...]  # training fooling rate after each pass
    updates: int
    passes: int
    update_norms: tuple[float, ...]
    seconds: float  # fitting and evaluating (the first time; a cached result keeps it)
    fooling_rate_heldout: float
    dominant: tuple[DominantLabel, ...]  # where the fooled held-out images went, most common first
    train_clean: np.ndarray  # (N,) class ids
    train_attacked: np.ndarray
    heldout_clean: np.ndarray  # (M,) class ids
    heldout_attacked: np.ndarray
    heldout_labels: tuple[str, ...]  # the held-out images' names in the set
    cached: bool = False

    @property
    def image(self) -> np.ndarray:
        """The perturbation as H x W x 3 float32 in [0, 1] units (what the CLI saves as uap.npy)."""
        return np.ascontiguousarray(self.perturbation.transpose(1, 2, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# The ball, the grid, applying a perturbation


def norm_levels(v: torch.Tensor, norm: str) -> float:
    """||v|| in 8-bit levels: max |255 v| (l-inf) or ||255 v||_2 (l2)."""
    v = v.detach().double() * 255
    return float(v.abs().max()) if norm == "inf" else float(v.norm())


def project(v: torch.Tensor, xi: float, norm: str) -> torch.Tensor:
    """P_{p,xi}: the nearest point to ``v`` (in [0, 1] units) in the l_p ball of radius ``xi`` levels.
    l-inf: clip every value to [-xi, xi]; l2: scale down to norm xi when outside."""
    radius = xi / 255
    if norm == "inf":
        return v.clamp(-radius, radius)
    if norm == "2":
        length = float(v.detach().double().norm())
        return v * (radius / length) if length > radius else v
    raise ConfigError(f"The norm must be 'inf' or '2', not {norm!r}.")


def to_grid(v: torch.Tensor, xi: float, norm: str) -> torch.Tensor:
    """``v`` on the 8-bit grid and still inside its ball: each value rounded to the nearest level,
    except that l-inf values are kept within floor(xi) levels and, for l2, the values rounded
    away from zero that gained most are pulled back one level until the norm is within xi."""
    levels = v.detach() * 255
    grid = torch.round(levels)
    if norm == "inf":
        return grid.clamp(-math.floor(xi + 1e-9), math.floor(xi + 1e-9)) / 255
    excess = float(grid.double().pow(2).sum()) - (xi + 1e-9) ** 2
    if excess > 0:
        flat, magnitude = grid.flatten(), levels.abs().flatten()
        gained = flat.abs() - magnitude  # > 0 where rounding went away from zero
        order = gained.argsort(descending=True)
        order = order[gained[order] > 0]
        relief = (2 * flat[order].abs() - 1).double().cumsum(0)  # pulling one back lowers the sum by 2|g| - 1
        enough = int(torch.searchsorted(relief, torch.tensor([excess], dtype=torch.float64))[0]) + 1
        if enough <= len(order):
            pulled = order[:enough]
            flat[pulled] -= torch.sign(flat[pulled])
            grid = flat.view_as(grid)
        else:  # cannot happen (rounding gains no more than it gives back), but stay inside all the same
            grid = torch.trunc(levels)
    return grid / 255


def apply(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Images with the perturbation, as a PNG would hold them: round(255 clamp(x + v, 0, 1)) / 255."""
    return torch.round((x + v.to(x.device, x.dtype)).clamp(0, 1) * 255) / 255


def attacked_labels(forward: Forward | ModelHandle, x: torch.Tensor, v: torch.Tensor, *, batch_size: int = 32
                    ) -> np.ndarray:
    """Top-1 of every image with the perturbation applied, batch by batch (never the whole set at once)."""
    out = []
    for first in range(0, len(x), batch_size):
        top1, _ = lab.predict(forward, apply(x[first:first + batch_size], v), batch_size=batch_size, k=1)
        out.append(top1.numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def dominant_labels(clean: np.ndarray, attacked: np.ndarray, class_names: Sequence[str], *, k: int = DOMINANT
                    ) -> tuple[DominantLabel, ...]:
    """The labels the fooled images were pushed into, most common first (the paper's "dominant labels")."""
    fooled = np.asarray(attacked)[np.asarray(clean) != np.asarray(attacked)]
    counts = Counter(int(c) for c in fooled)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]
    return tuple(DominantLabel(c, class_names[c] if c < len(class_names) else str(c), n) for c, n in ranked)


# ---------------------------------------------------------------------------------------------
# Fitting on a tensor of images


def fit_universal(forward: Forward | ModelHandle, x: torch.Tensor, config: UniversalConfig = UniversalConfig(), *,
                  clean: torch.Tensor | np.ndarray | None = None, progress: Progress | None = None,
                  observer: Observer | None = None) -> Fit:
    """A universal perturbation for the images ``x`` ((N, 3, H, W) in [0, 1]), by ``config.method``.

    ``observer`` receives an :class:`Update` after every change of ``v`` (its norm right after the
    projection, so a test can see that ``v`` never leaves its ball)."""
    config.check()
    forward = forward.logits if isinstance(forward, ModelHandle) else forward
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"Expected a batch of RGB images (N, 3, H, W), got shape {tuple(x.shape)}.")
    if len(x) < MIN_TRAIN:
        raise DatasetError(f"A universal perturbation needs at least {MIN_TRAIN} training images; "
                           f"there {'is' if len(x) == 1 else 'are'} {len(x)}.")
    started = time.perf_counter()
    x = x.detach()
    if clean is None:
        clean, _ = lab.predict(forward, x, k=1)
    clean = torch.as_tensor(np.asarray(clean), dtype=torch.long)
    fitter = _fit_deepfool if config.method == "deepfool" else _fit_sgd
    v, pass_fooling, update_norms, passes = fitter(forward, x, clean, config, progress, observer)
    v = to_grid(v, config.xi, config.norm)
    attacked = attacked_labels(forward, x, v)
    return Fit(perturbation=v.cpu(), clean=clean.numpy(), attacked=attacked, pass_fooling=tuple(pass_fooling),
               updates=len(update_norms), passes=passes, update_norms=tuple(update_norms),
               seconds=time.perf_counter() - started)


def _notify(observer: Observer | None, norms: list[float], v: torch.Tensor, config: UniversalConfig,
            pass_index: int, image: int) -> None:
    norms.append(norm_levels(v, config.norm))
    if observer is not None:
        observer(Update(index=len(norms), pass_index=pass_index, image=image, norm=norms[-1]))


def _fit_deepfool(forward: Forward, x: torch.Tensor, clean: torch.Tensor, config: UniversalConfig,
                  progress: Progress | None, observer: Observer | None):
    """Algorithm 1: sequential DeepFool steps on the images ``v`` does not fool yet, each projected."""
    from .minimal import deepfool

    n = len(x)
    generator = torch.Generator().manual_seed(config.seed)
    v = torch.zeros_like(x[0])
    norms: list[float] = []
    pass_fooling: list[float] = []
    passes = 0
    for passes in range(1, config.max_passes + 1):
        order = torch.randperm(n, generator=generator).tolist()
        for done, i in enumerate(order):
            base = ((passes - 1) + done / n) / config.max_passes
            span = 1 / (n * config.max_passes)
            report(progress, base, f"pass {passes} of {config.max_passes}: image {done + 1} of {n}, "
                                   f"{len(norms)} updates")
            shifted = apply(x[i:i + 1], to_grid(v, config.xi, config.norm))  # what a PNG of x_i + v holds
            with torch.no_grad():
                label = int(forward(shifted).argmax(1)[0])
            if label != int(clean[i]):
                continue  # x_i + v is already fooled
            inner = None if progress is None else (
                lambda fraction, message, base=base: progress(base + fraction * span, f"pass {passes}: {message}"))
            step = deepfool(forward, shifted, candidates=config.candidates, overshoot=config.overshoot,
                            max_iter=config.max_iter, progress=inner)
            if not bool(step.flipped[0]):
                continue  # DeepFool found no way out within its iterations: nothing to add
            delta = step.perturbation[0].to(v.dtype)
            if config.stretch:
                delta = delta * _stretch(forward, x[i:i + 1], v, delta, int(clean[i]), config)
            v = project(v + delta, config.xi, config.norm)
            _notify(observer, norms, v, config, passes - 1, i)
        rate = lab.fooling_rate(clean.numpy(), attacked_labels(forward, x, to_grid(v, config.xi, config.norm)))
        pass_fooling.append(rate)
        if rate >= config.target:
            break
    return v, pass_fooling, norms, passes


def _stretch(forward: Forward, image: torch.Tensor, v: torch.Tensor, delta: torch.Tensor, label: int,
             config: UniversalConfig) -> float:
    """How far to go along DeepFool's step so that the 8-bit picture of x_i + v + t * delta changes
    label: the first of t = 1, 2, 4, ... that does (one forward pass each), at most the t where the
    step alone is twice the ball's radius. DeepFool's steps are often far below one level, and a
    change that rounds away fools nothing. (Halving the last doubling, tried on a split of the
    bundled photos, fooled no more held-back photos and cost more passes.)"""
    size = norm_levels(delta, config.norm)
    if size <= 0:
        return 1.0
    limit = max(1.0, 2 * config.xi / size)
    t = 1.0
    while True:
        with torch.no_grad():
            if int(forward(apply(image, v + t * delta)).argmax(1)[0]) != label or t >= limit:
                return t
        t = min(2 * t, limit)


def augment(x: torch.Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.35, 1.0),
            ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5) -> torch.Tensor:
    """Random resized crops (a share ``scale`` of the area, aspect ``ratio``, anywhere: the shifts) and
    horizontal flips, back at the same size, on the 8-bit grid: new pictures of the same scenes."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for j in range(n):
        u = torch.rand(5, generator=generator).tolist()
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
        ch = max(8, min(h, int(round(math.sqrt(area / aspect)))))
        cw = max(8, min(w, int(round(math.sqrt(area * aspect)))))
        top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
        crop = x[j:j + 1, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=ch > h or cw > w)
        out[j] = crop[0].flip(-1) if u[4] < flip else crop[0]
    return torch.round(out.clamp(0, 1) * 255) / 255


def _fit_sgd(forward: Forward, x: torch.Tensor, clean: torch.Tensor, config: UniversalConfig,
             progress: Progress | None, observer: Observer | None):
    """Minibatch sign-gradient ascent of the capped cross-entropy of each (augmented) image's clean
    label, projected after every step; the step shrinks (cosine) from xi/4 to 1/4 level (l-inf) or
    from xi/4 to xi/40 (l2)."""
    n = len(x)
    generator = torch.Generator().manual_seed(config.seed)
    v = torch.zeros_like(x[0])
    norms: list[float] = []
    pass_fooling: list[float] = []
    every = max(1, config.steps // 10)
    batch = min(config.batch_size, n)
    for step in range(config.steps):
        fooled = pass_fooling[-1] if pass_fooling else 0.0
        report(progress, step / config.steps, f"step {step + 1} of {config.steps}, fooling {fooled:.0%} of the "
                                              "training images")
        picked = torch.randperm(n, generator=generator)[:batch].to(x.device)
        images = augment(x[picked], generator) if config.augment else x[picked]
        with torch.no_grad():
            labels = forward(images).argmax(1) if config.augment else clean[picked.cpu()].to(x.device)
        leaf = v.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = forward((images + leaf).clamp(0, 1))
            loss = F.cross_entropy(logits, labels, reduction="none").clamp(max=config.loss_cap).sum()
            (grad,) = torch.autograd.grad(loss, leaf)
        fade = 0.5 * (1 + math.cos(math.pi * step / config.steps))  # 1 -> 0 (cosine)
        if config.norm == "inf":  # every value moves xi/4 levels at first, 1/4 level at the end
            move = grad.sign() * ((0.25 + (config.xi / 4 - 0.25) * fade) / 255)
        else:  # a step of a quarter of the radius at first, a fortieth at the end
            move = grad / grad.norm().clamp_min(1e-12) * ((0.025 + 0.225 * fade) * config.xi / 255)
        v = project(v + move, config.xi, config.norm)
        _notify(observer, norms, v, config, step, -1)
        if (step + 1) % every == 0 or step + 1 == config.steps:
            grid = to_grid(v, config.xi, config.norm)
            pass_fooling.append(lab.fooling_rate(clean.numpy(), attacked_labels(forward, x, grid)))
    return v, pass_fooling, norms, config.steps


# ---------------------------------------------------------------------------------------------
# On image sets, cached


def split_indices(count: int, seed: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A seeded random split of ``count`` images: (training, held-out), the larger half for training."""
    if count < MIN_SPLIT:
        raise DatasetError(f"The set has {count} image{'s' if count != 1 else ''}, too few to split into "
                           f"training and held-out images; give at least {MIN_SPLIT} images or a separate "
                           "held-out set.")
    order = np.random.default_rng([seed, count]).permutation(count)
    held = count // 2
    return tuple(sorted(int(i) for i in order[held:])), tuple(sorted(int(i) for i in order[:held]))


def universal_perturbation(handle: ModelHandle, train: ImageSet, heldout: ImageSet | None = None,
                           config: UniversalConfig = UniversalConfig(), *,
                           train_indices: Sequence[int] | None = None, heldout_indices: Sequence[int] | None = None,
                           progress: Progress | None = None, observer: Observer | None = None,
                           use_cache: bool = True) -> UniversalResult:
    """Fit a universal perturbation on ``train`` (or the images ``train_indices`` of it) for
    ``handle`` and evaluate it on ``heldout`` (or its images ``heldout_indices``). Without
    ``heldout`` the set is split at random (:func:`split_indices`) and the other half is held out.
    Cached on disk by (model, sets, indices, settings): a second call returns the stored result
    (``cached=True``) without computing."""
    config.check()
    if heldout is None:
        if train_indices is not None or heldout_indices is not None:
            raise ConfigError("Choose the training and held-out images, or a split of the set, not both.")
        train_indices, heldout_indices = split_indices(len(train), config.seed)
        heldout = train
        split = (f"trained on {len(train_indices)} of the {len(train)} images of {train.name} and held out the "
                 f"other {len(heldout_indices)} (a random split, seed {config.seed})")
    else:
        train_indices = tuple(range(len(train))) if train_indices is None else tuple(int(i) for i in train_indices)
        heldout_indices = (tuple(range(len(heldout))) if heldout_indices is None
                           else tuple(int(i) for i in heldout_indices))
        split = (f"trained on {len(train_indices)} images of {train.name}, measured on {len(heldout_indices)} "
                 f"images of {heldout.name}")
    if len(train_indices) < MIN_TRAIN:
        raise DatasetError(f"A universal perturbation needs at least {MIN_TRAIN} training images; "
                           f"{train.name} gives {len(train_indices)}.")
    if not heldout_indices:
        raise DatasetError(f"The held-out set {heldout.name} has no images.")
    folder = lab.result_dir("universal", UNIVERSAL_VERSION, handle.name, train.key, list(train_indices),
                            heldout.key, list(heldout_indices), config.settings())
    if use_cache:
        stored = _load(folder)
        if stored is not None:
            report(progress, 1.0, "found a stored result")
            return stored
    started = time.perf_counter()
    report(progress, 0.0, "reading the images")
    x = lab.set_tensor(handle, train, indices=train_indices)
    fitted = fit_universal(handle, x, config, progress=within(progress, 0.0, 0.95), observer=observer)
    del x
    report(progress, 0.95, "evaluating on the held-out images")
    held = lab.set_tensor(handle, heldout, indices=heldout_indices)
    held_clean, _ = lab.predict(handle, held, k=1)
    held_attacked = attacked_labels(handle, held, fitted.perturbation)
    held_clean = held_clean.numpy()
    result = UniversalResult(
        perturbation=fitted.perturbation.numpy().astype(np.float32), model=handle.name, config=config.as_dict(),
        train_set=train.name, heldout_set=heldout.name, split=split, train_indices=tuple(train_indices),
        heldout_indices=tuple(heldout_indices), norm_levels=norm_levels(fitted.perturbation, config.norm),
        fooling_rate_train=fitted.fooling_rate, pass_fooling=fitted.pass_fooling, updates=fitted.updates,
        passes=fitted.passes, update_norms=fitted.update_norms, seconds=time.perf_counter() - started,
        fooling_rate_heldout=lab.fooling_rate(held_clean, held_attacked),
        dominant=dominant_labels(held_clean, held_attacked, handle.class_names),
        train_clean=fitted.clean, train_attacked=fitted.attacked, heldout_clean=held_clean,
        heldout_attacked=held_attacked, heldout_labels=tuple(heldout.labels[i] for i in heldout_indices))
    _save(folder, result)
    report(progress, 1.0, f"fooling {result.fooling_rate_heldout:.0%} of the held-out images")
    return result




_ARRAYS = ("train_clean", "train_attacked", "heldout_clean", "heldout_attacked")


def _save(folder, result: UniversalResult) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    from .io import atomic_path

    with atomic_path(folder / "perturbation.npy") as path:
        with open(path, "wb") as file:
            np.save(file, result.perturbation)
    record = {k: v for k, v in asdict(result).items() if k not in ("perturbation", "cached")}
    record["dominant"] = [asdict(d) for d in result.dominant]
    for name in _ARRAYS:
        record[name] = [int(c) for c in getattr(result, name)]
    lab.save_json(folder, record)


def _load(folder) -> UniversalResult | None:
    record = lab.load_json(folder)
    if record is None:
        return None
    try:
        perturbation = np.load(folder / "perturbation.npy")
    except (OSError, ValueError):
        return None
    record["dominant"] = tuple(DominantLabel(**d) for d in record["dominant"])
    for name in _ARRAYS:
        record[name] = np.asarray(record[name], dtype=np.int64)
    for name in ("train_indices", "heldout_indices", "pass_fooling", "update_norms", "heldout_labels"):
        record[name] = tuple(record[name])
    return UniversalResult(perturbation=perturbation, cached=True, **record)


# ---------------------------------------------------------------------------------------------
# The lecture's plot: held-out fooling rate against the number of training images


@dataclass(frozen=True)
class FoolingVsSize:
    sizes: tuple[int, ...]
    fooling_rate_heldout: tuple[float, ...]
    fooling_rate_train: tuple[float, ...]
    seconds: tuple[float, ...]
    model: str
    config: dict


def fooling_vs_size(handle: ModelHandle, train: ImageSet, heldout: ImageSet, sizes: Sequence[int],
                    config: UniversalConfig = UniversalConfig(), *, progress: Progress | None = None) -> FoolingVsSize:
    """The held-out fooling rate of perturbations trained on the first ``n`` images of a seeded
    shuffle of ``train``, for each ``n`` in ``sizes`` (the paper's Fig. 6). Each point is cached."""
    sizes = tuple(sorted({int(n) for n in sizes}))
    if not sizes:
        raise ConfigError("Give at least one training-set size.")
    if sizes[0] < MIN_TRAIN or sizes[-1] > len(train):
        raise ConfigError(f"Training-set sizes must be between {MIN_TRAIN} and {len(train)} (the set's size).")
    order = np.random.default_rng([config.seed, len(train)]).permutation(len(train))
    results = []
    for j, n in enumerate(sizes):
        results.append(universal_perturbation(handle, train, heldout, config,
                                              train_indices=sorted(int(i) for i in order[:n]),
                                              progress=within(progress, j / len(sizes), (j + 1) / len(sizes))))
    return FoolingVsSize(sizes=sizes, fooling_rate_heldout=tuple(r.fooling_rate_heldout for r in results),
                         fooling_rate_train=tuple(r.fooling_rate_train for r in results),
                         seconds=tuple(r.seconds for r in results), model=handle.name, config=config.as_dict())


# ---------------------------------------------------------------------------------------------
# The lecture's table: perturbations made on one model (rows), evaluated on others (columns)


KINDS = ("universal", "per-image")
PER_IMAGE_ATTACK = "pgd"  # lab.set_attack's PGD: 10 steps of max(1, eps // 4) levels


@dataclass(frozen=True)
class TransferResult:
    rows: tuple[str, ...]  # source models
    cols: tuple[str, ...]  # target models
    fooling_rate: np.ndarray  # (rows, cols): share of eval images whose target top-1 changed
    kind: str  # "universal" | "per-image"
    settings: dict
    eval_set: str
    eval_count: int
    seconds: float
    cached: bool = False

    def as_json(self) -> dict:
        return {"rows": list(self.rows), "cols": list(self.cols),
                "fooling_rate": [[round(float(v), 6) for v in row] for row in self.fooling_rate],
                "kind": self.kind, "settings": self.settings, "eval_set": self.eval_set,
                "eval_count": self.eval_count, "seconds": round(self.seconds, 3)}


def default_transfer_models() -> list[str]:
    """The bundled EfficientNet-Lites that are installed, then every torchvision net whose weights
    are already on this machine (none are downloaded for the table)."""
    from . import models

    names = [name for name in models.LITE_SIZES if models.lite_available(name)]
    names += [name for name in models.SEED_PAPER_NETS if models.torchvision_weights_cached(name)]
    return names


def transfer_matrix(model_names: Sequence[str], train: ImageSet | None, eval_set: ImageSet, *,
                    kind: str = "universal", config: UniversalConfig = UniversalConfig(), epsilon: int = 10,
                    attack: str = PER_IMAGE_ATTACK, train_indices: Sequence[int] | None = None,
                    eval_indices: Sequence[int] | None = None, loader: Callable[[str], ModelHandle] | None = None,
                    progress: Progress | None = None, use_cache: bool = True) -> TransferResult:
    """How perturbations made on one model fool the others (the lecture's table).

    ``kind="universal"``: a universal perturbation is fitted on each source model over ``train``
    (its images ``train_indices``; ``config``; :func:`universal_perturbation`, cached) and added to
    every ``eval_set`` image (its images ``eval_indices``) at the source's input size.
    ``kind="per-image"``: each evaluation image is attacked on the source with ``lab.set_attack``
    (``attack``, default PGD: 10 steps of max(1, eps // 4) levels within ``epsilon`` levels l-inf;
    ``"fgsm"`` transfers better, Kurakin et al. 2017). Either way the clean and the attacked images
    are resized to each target's input size with ``lab.resize_to``, and fooling means the target's
    top-1 on the attacked image differs from its top-1 on the clean one resized the same way. The
    diagonal is each model's own held-out fooling rate. ``loader`` builds a handle from a name
    (default :func:`engine.models.load_model`).
    """
    from . import models

    names = list(dict.fromkeys(model_names))
    if not names:
        raise ConfigError("Name at least one model for the transfer table.")
    if kind not in KINDS:
        raise ConfigError(f"Unknown kind {kind!r}; use universal or per-image.")
    if kind == "universal":
        config.check()
        if train is None:
            raise ConfigError("A universal transfer table needs a training set.")
        settings = {"xi": config.xi, "norm": config.norm, **config.settings()}
    else:
        if attack not in lab.SET_METHODS or not 1 <= int(epsilon) <= 128:
            raise ConfigError(f"The per-image attack must be one of {', '.join(lab.SET_METHODS)} with epsilon "
                              "between 1 and 128 levels.")
        settings = {"attack": attack, "epsilon": int(epsilon)}
    eval_indices = tuple(range(len(eval_set))) if eval_indices is None else tuple(int(i) for i in eval_indices)
    if not eval_indices:
        raise DatasetError(f"The set {eval_set.name} has no images to measure on.")
    if kind == "universal":
        train_indices = tuple(range(len(train))) if train_indices is None else tuple(int(i) for i in train_indices)
        sources = [train.key, list(train_indices)]
    else:
        sources = [None, None]
    folder = lab.result_dir("transfer", UNIVERSAL_VERSION, names, kind, *sources, eval_set.key, list(eval_indices),
                            settings)
    if use_cache:
        record = lab.load_json(folder)
        if record is not None:
            report(progress, 1.0, "found a stored table")
            return TransferResult(rows=tuple(record["rows"]), cols=tuple(record["cols"]),
                                  fooling_rate=np.asarray(record["fooling_rate"], dtype=np.float64),
                                  kind=record["kind"], settings=record["settings"], eval_set=record["eval_set"],
                                  eval_count=record["eval_count"], seconds=record["seconds"], cached=True)
    started = time.perf_counter()
    loader = loader or models.load_model
    handles = {name: loader(name) for name in names}
    table = np.zeros((len(names), len(names)))
    for row, source in enumerate(names):
        span = (row / len(names), (row + 1) / len(names))
        handle = handles[source]
        clean = lab.set_tensor(handle, eval_set, indices=eval_indices)
        if kind == "universal":
            fitted = universal_perturbation(handle, train, eval_set, config, train_indices=train_indices,
                                            heldout_indices=eval_indices, progress=within(progress, *span),
                                            use_cache=use_cache)
            attacked = apply(clean, torch.as_tensor(fitted.perturbation))
        else:
            attacked = lab.set_attack(handle, clean, attack, int(epsilon), progress=within(progress, *span))
        for col, target in enumerate(names):
            size = handles[target].input_size
            before, _ = lab.predict(handles[target], lab.resize_to(clean, size), k=1)
            after, _ = lab.predict(handles[target], lab.resize_to(attacked, size), k=1)
            table[row, col] = lab.fooling_rate(before, after)
        report(progress, span[1], f"{source}: done")
    result = TransferResult(rows=tuple(names), cols=tuple(names), fooling_rate=table, kind=kind, settings=settings,
                            eval_set=eval_set.name, eval_count=len(eval_indices), seconds=time.perf_counter() - started)
    lab.save_json(folder, result.as_json())
    return result

"""Relabelling: make a photo take any label while it looks unchanged (Robinson & Graham 2015).

Paper: shared/papers/robinson-graham-2015-relabelling.txt.

* **Eq. 1-2** -- starting from the image X in [0, 1], step
  ``X <- clip(X - alpha * sgn(dL/dX) / 255, 0, 1)`` where L is the softmax cross-entropy to the
  target label and alpha is in 8-bit levels (default 1). With an integer alpha every step lands on
  the 8-bit grid, so a downloaded PNG classifies exactly as shown.
* **Eq. 3** -- ``distortion(x', x) = sqrt(sum_i (x'_i - x_i)^2 / n)`` in [0, 1] units, the sum and
  n over every value, colour channels included (:func:`distortion_rms`). The paper writes
  "n = 50176 is the number of pixels"; dividing 3 channels' sum by the pixel count would make one
  1-level step alone cost 0.0068 and leave room for one step under the 0.01 cap. Per value, 18 of
  18 random relabellings of three bundled photos succeeded under the cap with a mean distortion of
  0.0079, next to the paper's reported mean of 0.00814, so the per-value reading is the one used.
* **Fig. 3** -- the raw-gradient variant (``step="raw"``) for the "hot spots versus sign" comparison.
* **Sec. 3.2** -- Gaussian image synthesis: the same process started from a random Gaussian image.

Each step is exactly one forward and one backward pass to the image: the forward pass that gives
the step's record (target probability, top-1) is the one the gradient comes from.

Beyond the paper: when the next full step would pass the distortion cap, the default
``at_cap="fit"`` takes the part of it that fits (see :func:`fit_under_cap`); ``at_cap="stop"`` is
the paper's plain stop. The sweep (sec. 3.1) reports both as named rules, the paper's first
(:data:`SWEEP_RULES`, :func:`sweep_both`); docs/benchmarks.md has the figures and what closes the gap.

The paper's own step is fractional: alpha = 50 with f = sgn / 255 in Caffe's 0-255 units is 0.2 of
a grey level per step, on a float image. ``RelabelConfig(alpha=0.2, snap=False)`` runs it that way;
whole levels on the 8-bit grid (``snap=True``) are the default.

Sec. 3.1 also says the gradient is not stationary: one large step along the first gradient does
not relabel (:func:`single_step_vs_iterative`).

The loop of eq. 1-2 is the ``relabel`` entry of the attack registry (:class:`engine.attacks.Relabel`,
built from the pieces here); :func:`relabel` runs it. This module keeps the paper's experiments:
eq. 3, the limits, the sweep, the Gaussian start, Fig. 1's difference and Fig. 3's gradients.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError
from . import images
from .images import fit_square, quantize, to_tensor
from .models import ModelHandle
from .progress import Progress, report, within


def distortion_rms(changed: np.ndarray | torch.Tensor, original: np.ndarray | torch.Tensor) -> float:
    """Eq. 3: sqrt(sum of (x' - x)^2 / n) over every value n, images in [0, 1] (see the module note).

    Accepts (3, H, W), (1, 3, H, W) tensors or H x W x 3 arrays (uint8 arrays are divided by 255).
    """
    if torch.is_tensor(changed) and torch.is_tensor(original) and changed.shape == original.shape:
        # every attack step records it: stay on the tensor's device (no copy to numpy), in float64
        squared = (changed.detach().double() - original.detach().double()).pow_(2).sum()
        return float(math.sqrt(float(squared) / changed.numel()))
    a, b = (_as_unit_array(v) for v in (changed, original))
    if a.shape != b.shape:
        raise ConfigError(f"Cannot compare images of shapes {a.shape} and {b.shape}.")
    return float(math.sqrt(float(((a - b) ** 2).sum()) / a.size))


def _as_unit_array(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """H x W x C float64 in [0, 1] from a CHW/NCHW tensor or an HWC array."""
    if torch.is_tensor(image):
        array = image.detach().cpu().double().numpy()
        array = array[0] if array.ndim == 4 else array
        return np.transpose(array, (1, 2, 0))
    array = np.asarray(image)
    return array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)


def linf_levels(changed: torch.Tensor, original: torch.Tensor) -> int:
    """Largest change of any value, in 8-bit levels."""
    return int(round(float((changed - original).abs().max()) * 255))


def image_quality(changed: np.ndarray, original: np.ndarray) -> dict[str, float]:
    """How different two uint8 H x W x 3 images are: eq. 3, L-inf in levels, PSNR (dB) and SSIM."""
    from skimage.metrics import structural_similarity

    a, b = _as_unit_array(changed), _as_unit_array(original)
    mse = float(((a - b) ** 2).mean())
    return {
        "distortion": distortion_rms(changed, original),
        "linf_levels": int(round(float(np.abs(a - b).max()) * 255)),
        "psnr_db": float("inf") if mse == 0 else 10 * math.log10(1.0 / mse),
        "ssim": float(structural_similarity(a, b, channel_axis=2, data_range=1.0)),
    }


@dataclass(frozen=True)
class RelabelConfig:
    """Settings of eq. 1-2. ``cap`` is the largest distortion (eq. 3) allowed; None means no cap."""

    alpha: float = 1  # step in 8-bit levels (the paper's alpha = 50 in Caffe's units is 0.2 level)
    max_steps: int = 300
    cap: float | None = 0.01
    confidence: float | None = None  # also require this target probability, not just top-1
    step: str = "sign"  # sign (eq. 2) | raw (Fig. 3's raw gradient, scaled to the same L-inf step)
    at_cap: str = "fit"  # fit: take the part of the step that fits under the cap | stop: the paper's plain stop
    snap: bool = True  # round every step to the 8-bit grid; False keeps a float image (the paper's Caffe run)

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0) \
                or self.max_steps < 0:
            raise ConfigError("The step size must be above 0 levels and the step limit not negative.")
        if self.snap and self.alpha < 1:
            raise ConfigError(f"A step of {self.alpha} level would round away on the 8-bit grid: use at least "
                              "1 level, or turn snapping off (snap=False) for fractional steps.")
        if self.snap and float(self.alpha) != int(self.alpha):
            raise ConfigError(f"A step of {self.alpha} levels does not land on the 8-bit grid: use whole levels, "
                              "or turn snapping off (snap=False).")
        if self.step not in ("sign", "raw"):
            raise ConfigError(f"Unknown step '{self.step}'; use sign or raw.")
        if self.at_cap not in ("fit", "stop"):
            raise ConfigError(f"Unknown at_cap '{self.at_cap}'; use fit or stop.")
        if self.cap is not None and self.cap <= 0:
            raise ConfigError("The distortion cap must be above 0 (or None for no cap).")


def relabel(handle: ModelHandle, x: torch.Tensor, target: int | str, config: RelabelConfig = RelabelConfig(),
            progress: Progress | None = None, observer=None):
    """Eq. 1-2 until the target is top-1 (and confident enough), the cap or the step limit.

    The ``relabel`` entry of the attack registry (:class:`engine.attacks.Relabel`); returns its
    :class:`engine.attacks.AttackResult`. ``observer``, if given, receives each step's record.
    """
    from .attacks import Relabel  # the registry builds on this module, so it is imported here

    return Relabel.run(handle, x, target, config, progress, observer)


def cross_entropy_gradient(handle: ModelHandle, image: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and one backward pass to the image: the logits and dL/dX of eq. 1, L the
    softmax cross-entropy to ``target``. The caller's tensor is left untouched."""
    leaf = image.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = handle.logits(leaf)
        loss = F.cross_entropy(logits, torch.tensor([int(target)], device=logits.device))
        (gradient,) = torch.autograd.grad(loss, leaf)
    return logits.detach(), gradient


def target_reached(probs: torch.Tensor, target: int, confidence: float | None) -> bool:
    """The stopping rule: the target is top-1 (and at least ``confidence`` likely, if given)."""
    return int(probs.argmax()) == target and (confidence is None or float(probs[target]) >= confidence)


def fit_under_cap(current: torch.Tensor, candidate: torch.Tensor, original: torch.Tensor,
                  gradient: torch.Tensor, cap: float, min_share: float = 0.01) -> torch.Tensor | None:
    """The part of a full step that keeps eq. 3 under the cap; None when no useful part fits.

    Moves back towards the original cost nothing and are always taken; the others are taken in
    order of gradient magnitude per unit of squared distortion until the budget is spent. Every
    value still moves by the step of eq. 2 or not at all, so the image stays on the 8-bit grid.
    When less than ``min_share`` of the values can move, the run stops ("cap reached").
    Measured: 50 of 50 random pairs relabelled under 0.01 (mean 0.00796) against 43 of 50 when
    the run simply stops at the cap.
    """
    before = (current - original).double()
    after = (candidate - original).double()
    cost = (after ** 2 - before ** 2).flatten()  # change of the sum of squares, per value
    budget = cap ** 2 * cost.numel() - float((before ** 2).sum())
    free = cost <= 0
    budget -= float(cost[free].sum())
    paid = torch.nonzero(~free).flatten()
    order = paid[torch.argsort(gradient.flatten()[paid].abs() / cost[paid], descending=True)]
    spend = torch.cumsum(cost[order], 0)
    take = order[: int((spend <= budget * (1 + 1e-12)).sum())]
    if take.numel() < max(1, min_share * cost.numel()):  # too little fits to make progress
        return None
    chosen = free.clone()
    chosen[take] = True
    mask = chosen.view_as(current)
    return torch.where(mask, candidate, current)


def sign_step(current: torch.Tensor, gradient: torch.Tensor, config: RelabelConfig) -> torch.Tensor:
    """One update of eq. 1, snapped to the 8-bit grid unless ``config.snap`` is off (then only
    clipped to [0, 1]); Fig. 3's raw gradient with ``step="raw"``."""
    if config.step == "sign":
        direction = gradient.sign()
    else:  # raw gradient, scaled so its largest value moves alpha levels: hot spots, Fig. 3
        direction = gradient / gradient.abs().max().clamp_min(1e-12)
    stepped = current - config.alpha * direction / 255.0
    return quantize(stepped) if config.snap else stepped.clamp(0, 1)


GAUSSIAN_SEED = 0  # the seed of the page's and the CLI's Gaussian start image


def gaussian_start(size: int, *, seed: int = GAUSSIAN_SEED, mean: float = 0.5, std: float = 0.15) -> torch.Tensor:
    """Sec. 3.2: a random Gaussian image on the 8-bit grid, the start of image synthesis."""
    generator = torch.Generator().manual_seed(seed)
    noise = mean + std * torch.randn(1, 3, size, size, generator=generator)
    return quantize(noise)


# ---------------------------------------------------------------------------------------------
# Limits (sec. 3.1): does the new label survive a crop, a shift, a mirror, another network?


@dataclass(frozen=True)
class LimitCheck:
    check: str  # what was done to the relabelled image
    model: str
    top1: int
    label: str
    target_prob: float
    keeps_target: bool  # still the relabelled class
    reverted: bool  # back to the original class


def _centre_crop(image: torch.Tensor) -> torch.Tensor:
    """The centre 90 % of a (1, 3, S, S) image, scaled back to S x S."""
    size = image.shape[-1]
    margin = round(size * 0.05)
    inner = image[..., margin:size - margin, margin:size - margin]
    return F.interpolate(inner, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# What sec. 3.1 does to the relabelled image (1, 3, S, S), each at the same size.
CHECKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mirror": lambda image: image.flip(-1),
    "crop 90 %": _centre_crop,
    "shift 8 px": lambda image: torch.roll(image, shifts=(8, 8), dims=(-2, -1)),
}


def limit_checks(handle: ModelHandle, relabelled: np.ndarray, target: int, original_class: int,
                 second: ModelHandle | None = None) -> list[LimitCheck]:
    """Sec. 3.1's limits: transforms on this model, and the untouched image on a second network."""
    image = to_tensor(relabelled, device=handle.device)
    rows = []
    candidates = [("as relabelled", handle, image)]
    candidates += [(check, handle, transform(image)) for check, transform in CHECKS.items()]
    if second is not None:
        resized = to_tensor(fit_square(relabelled, second.input_size), device=second.device)
        candidates.append(("another network", second, resized))
    for check, model, batch in candidates:
        probs = model.probabilities(batch)[0]
        top1 = int(probs.argmax())
        rows.append(LimitCheck(check=check, model=model.name, top1=top1, label=model.class_names[top1],
                               target_prob=float(probs[target]), keeps_target=top1 == target,
                               reverted=top1 == original_class))
    return rows


# ---------------------------------------------------------------------------------------------
# Sec. 3.1 "How robust is this process?": images x random targets under a cap


PAPER_SUCCESS_RATE = 0.987
PAPER_MEAN_DISTORTION = 0.00814
PAPER_CAP = 0.01
PAPER_REPORTED = {"success_rate": PAPER_SUCCESS_RATE, "mean_distortion": PAPER_MEAN_DISTORTION, "cap": PAPER_CAP,
                  "model": "GoogLeNet (Caffe)"}

# The sweep's two rules, by name -> RelabelConfig.at_cap. Both stop as soon as the target is top-1.
SWEEP_RULES = {"paper": "stop", "fit": "fit"}
RULE_LABELS = {
    "paper": "the paper's rule: stop at top-1; the pair fails when the next step would pass the cap",
    "fit": "fit: when the next step would pass the cap, take the part of it that fits (beyond the paper)",
}
SWEEP_FIELDS = ("image", "target", "outcome", "steps", "distortion", "saved_top1")


class SweepPair(NamedTuple):
    """One (image, target) pair of the sweep."""

    image: str
    target: int
    outcome: str  # relabelled | cap reached | step limit reached
    steps: int
    distortion: float  # eq. 3 of the final image, as the model saw it
    saved_top1: int  # top-1 of the final image saved on the 8-bit grid (what a PNG would show)

    @property
    def succeeded(self) -> bool:
        return self.outcome == "relabelled"


@dataclass(frozen=True)
class SweepResult:
    """Sec. 3.1 under one rule: each image towards random targets, each under the distortion cap."""

    rule: str  # a key of SWEEP_RULES
    model: str
    images: tuple[str, ...]
    pairs: tuple[SweepPair, ...]
    cap: float
    config: dict  # the RelabelConfig every pair ran with
    seed: int = 0
    targets_per_image: int = 0

    @property
    def successes(self) -> int:
        return sum(p.succeeded for p in self.pairs)

    @property
    def success_rate(self) -> float:
        return self.successes / max(len(self.pairs), 1)

    @property
    def saved_success_rate(self) -> float:
        """Pairs whose 8-bit image (a saved PNG) still has the target as top-1, within the cap."""
        kept = sum(p.succeeded and p.saved_top1 == p.target for p in self.pairs)
        return kept / max(len(self.pairs), 1)

    @property
    def distortions(self) -> np.ndarray:
        """Eq. 3 of every relabelled pair (failures are left out, as the paper's mean does)."""
        return np.array([p.distortion for p in self.pairs if p.succeeded], dtype=float)

    @property
    def steps(self) -> np.ndarray:
        """Steps of every relabelled pair."""
        return np.array([p.steps for p in self.pairs if p.succeeded], dtype=int)

    @property
    def mean_distortion(self) -> float:
        done = self.distortions
        return float(done.mean()) if done.size else float("nan")

    def steps_histogram(self) -> dict[int, int]:
        """Relabelled pairs per number of steps."""
        values, counts = np.unique(self.steps, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def distortion_histogram(self, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Relabelled pairs per distortion bin: ``bins`` equal bins from 0 to the cap (edges, counts)."""
        edges = np.linspace(0.0, self.cap, bins + 1)
        counts, _ = np.histogram(np.clip(self.distortions, 0.0, self.cap), bins=edges)
        return edges, counts

    def rows(self) -> list[dict]:
        """One plain dict per pair (the CSV and the JSON), with the rule."""
        return [{"rule": self.rule, **p._asdict()} for p in self.pairs]

    def summary(self) -> dict:
        edges, counts = self.distortion_histogram()
        return {"rule": self.rule, "rule_label": RULE_LABELS[self.rule], "model": self.model, "cap": self.cap,
                "images": list(self.images), "targets_per_image": self.targets_per_image, "seed": self.seed,
                "config": self.config, "pairs": len(self.pairs), "relabelled": self.successes,
                "success_rate": self.success_rate, "saved_success_rate": self.saved_success_rate,
                "mean_distortion": self.mean_distortion,
                "steps_histogram": {str(k): v for k, v in self.steps_histogram().items()},
                "distortion_histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
                "pairs_detail": [p._asdict() for p in self.pairs]}


@dataclass(frozen=True)
class SweepComparison:
    """The same pairs under both rules; the paper's rule is the headline."""

    paper: SweepResult
    fit: SweepResult

    @property
    def headline(self) -> SweepResult:
        return self.paper

    def by_rule(self) -> dict[str, SweepResult]:
        return {"paper": self.paper, "fit": self.fit}

    def csv(self) -> str:
        return sweep_csv(self.by_rule())

    def summary(self) -> dict:
        return sweep_summary(self.by_rule())


def sweep_csv(results: dict[str, SweepResult]) -> str:
    """Every pair of every rule as CSV: rule, image, target, outcome, steps, distortion, saved_top1."""
    import csv
    import io as text_io

    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("rule",) + SWEEP_FIELDS)
    for result in results.values():
        for row in result.rows():
            writer.writerow([f"{row[name]:.8f}" if isinstance(row[name], float) else row[name]
                             for name in ("rule",) + SWEEP_FIELDS])
    return buffer.getvalue()


def sweep_summary(results: dict[str, SweepResult]) -> dict:
    """The JSON of a sweep: each rule's summary and pairs, the headline rule (the first: the paper's
    when it ran) and the paper's reported figures."""
    return {"headline": next(iter(results)), "rules": {name: result.summary() for name, result in results.items()},
            "paper_reported": dict(PAPER_REPORTED)}


def _sweep_config(rule: str, cap: float, max_steps: int, alpha: float, snap: bool) -> RelabelConfig:
    if rule not in SWEEP_RULES:
        raise ConfigError(f"Unknown sweep rule '{rule}'; use one of {', '.join(SWEEP_RULES)}.")
    if cap is None or not math.isfinite(cap) or cap <= 0:
        raise ConfigError("The sweep needs a distortion cap above 0 (the paper's is 0.01).")
    config = RelabelConfig(cap=float(cap), max_steps=int(max_steps), alpha=alpha, snap=snap, at_cap=SWEEP_RULES[rule])
    config.check()
    return config


def sweep_plan(handle: ModelHandle, named_images: dict[str, torch.Tensor], targets_per_image: int,
               seed: int = 0) -> list[tuple[str, int]]:
    """The (image, target) pairs: per image, in order, ``targets_per_image`` random classes other than
    its own top-1, drawn without replacement from one generator seeded with ``seed``."""
    if not named_images:
        raise ConfigError("Pick at least one image to sweep.")
    if int(targets_per_image) < 1:
        raise ConfigError("Each image needs at least 1 target class.")
    rng = np.random.default_rng(seed)
    plan = []
    for name, x in named_images.items():
        own = int(handle.probabilities(x)[0].argmax())
        choices = np.array([c for c in range(handle.num_classes) if c != own])
        count = min(int(targets_per_image), len(choices))
        plan += [(name, int(t)) for t in rng.choice(choices, count, replace=False)]
    return plan


def _pair(handle: ModelHandle, name: str, x: torch.Tensor, target: int, config: RelabelConfig,
          progress: Progress | None) -> SweepPair:
    result = relabel(handle, x, target, config, progress)
    saved_top1 = result.final_class
    if not config.snap:  # the float image was classified; the PNG of it is rounded
        saved_top1 = int(handle.probabilities(to_tensor(result.image, device=handle.device))[0].argmax())
    return SweepPair(name, int(target), result.outcome, int(result.steps), float(result.final_distortion),
                     int(saved_top1))


def sweep(handle: ModelHandle, named_images: dict[str, torch.Tensor], targets_per_image: int, *,
          rule: str = "paper", cap: float = PAPER_CAP, max_steps: int = 300, seed: int = 0, alpha: float = 1,
          snap: bool = True, progress: Progress | None = None) -> SweepResult:
    """Sec. 3.1: each image towards ``targets_per_image`` random classes (never its own top-1),
    each under the distortion cap, under one rule of :data:`SWEEP_RULES` ("paper": stop at top-1,
    fail when the next step would pass the cap; "fit": take the part of that step that fits)."""
    config = _sweep_config(rule, cap, max_steps, alpha, snap)
    plan = sweep_plan(handle, named_images, targets_per_image, seed)
    pairs = []
    for i, (name, target) in enumerate(plan):
        stage = within(progress, i / len(plan), (i + 1) / len(plan), f"pair {i + 1} of {len(plan)}")
        pairs.append(_pair(handle, name, named_images[name], target, config, stage))
    report(progress, 1.0, f"{len(plan)} pairs")
    return SweepResult(rule=rule, model=handle.name, images=tuple(named_images), pairs=tuple(pairs), cap=float(cap),
                       config=config.as_dict(), seed=int(seed), targets_per_image=int(targets_per_image))


def sweep_both(handle: ModelHandle, named_images: dict[str, torch.Tensor], targets_per_image: int, *,
               cap: float = PAPER_CAP, max_steps: int = 300, seed: int = 0, alpha: float = 1, snap: bool = True,
               progress: Progress | None = None) -> SweepComparison:
    """The same pairs under both rules. The rules differ only once a full step would pass the cap,
    where the paper's stops ("cap reached"): every other pair's run is the same step for step, so
    only the paper rule's "cap reached" pairs are run again under "fit"."""
    configs = {rule: _sweep_config(rule, cap, max_steps, alpha, snap) for rule in SWEEP_RULES}
    plan = sweep_plan(handle, named_images, targets_per_image, seed)
    paper, fit = [], []
    for i, (name, target) in enumerate(plan):
        stage = within(progress, i / len(plan), (i + 1) / len(plan), f"pair {i + 1} of {len(plan)}")
        first = _pair(handle, name, named_images[name], target, configs["paper"], stage)
        paper.append(first)
        fit.append(first if first.outcome != "cap reached"
                   else _pair(handle, name, named_images[name], target, configs["fit"], stage))
    report(progress, 1.0, f"{len(plan)} pairs, both rules")
    common = dict(model=handle.name, images=tuple(named_images), cap=float(cap), seed=int(seed),
                  targets_per_image=int(targets_per_image))
    return SweepComparison(
        paper=SweepResult(rule="paper", pairs=tuple(paper), config=configs["paper"].as_dict(), **common),
        fit=SweepResult(rule="fit", pairs=tuple(fit), config=configs["fit"].as_dict(), **common))


SWEEP_CHOICES = ("both", *SWEEP_RULES)  # what a page or the CLI may ask for


def sweep_rules(handle: ModelHandle, named_images: dict[str, torch.Tensor], targets_per_image: int, *,
                rule: str = "both", progress: Progress | None = None, **settings: Any) -> dict[str, SweepResult]:
    """``rule="both"``: :func:`sweep_both` (the paper's rule first); otherwise :func:`sweep` under that
    one rule. By rule name, in the order to report them."""
    if rule == "both":
        return sweep_both(handle, named_images, targets_per_image, progress=progress, **settings).by_rule()
    if rule not in SWEEP_RULES:
        raise ConfigError(f"Unknown sweep rule '{rule}'; use {', '.join(SWEEP_CHOICES)}.")
    return {rule: sweep(handle, named_images, targets_per_image, rule=rule, progress=progress, **settings)}


def sweep_samples(handle: ModelHandle, names: list[str] | tuple[str, ...], targets_per_image: int, *,
                  rule: str = "both", progress: Progress | None = None, **settings: Any) -> dict[str, SweepResult]:
    """:func:`sweep_rules` on bundled photos by name (the page's job)."""
    return sweep_rules(handle, sample_inputs(handle, names), targets_per_image, rule=rule, progress=progress,
                       **settings)


def sample_inputs(handle: ModelHandle, names: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Bundled photos by name, as the model sees them (its square crop), for a sweep."""
    unknown = [name for name in names if name not in images.list_samples()]
    if unknown:
        raise ConfigError(f"No bundled photo called {', '.join(map(repr, unknown))}; "
                          f"the photos are {', '.join(images.list_samples())}.")
    return {name: to_tensor(fit_square(images.load_sample(name), handle.input_size), device=handle.device)
            for name in names}


# ---------------------------------------------------------------------------------------------
# Sec. 3.1: "the gradient is not stationary" -- one large step versus the iterative method


@dataclass(frozen=True)
class OneStepComparison:
    """One sign step of ``epsilon`` levels along the first gradient, next to the iterative method
    (the paper's rule) on the same image and target, and single steps of 1..N levels (the ladder)."""

    target: int
    original_class: int
    cap: float
    epsilon: int  # the big step: the most whole levels one sign step can take under the cap
    single_image: np.ndarray  # uint8: the photo after the one big step
    single_top1: int
    single_target_prob: float
    single_distortion: float
    iterative: Any  # engine.attacks.AttackResult of the iterative run
    ladder: tuple[tuple[int, int, float, float], ...]  # (levels, top-1, p(target), distortion) per single step
    first_two_sign_agreement: float  # share of values where the gradient's sign after one 1-level step is the first's
    first_last_sign_agreement: float  # ... and at the iterative run's end

    @property
    def single_relabels(self) -> bool:
        return self.single_top1 == self.target

    @property
    def iterative_relabels(self) -> bool:
        return self.iterative.succeeded

    @property
    def ladder_reaches_target(self) -> bool:
        return any(top1 == self.target for _, top1, _, _ in self.ladder)

    @property
    def single_changes_label(self) -> bool:
        return self.single_top1 != self.original_class


def cap_levels(cap: float) -> int:
    """The most whole levels one sign step can move every value and stay under ``cap`` (at least 1)."""
    return max(1, int(math.floor(cap * 255 + 1e-9)))


def single_step_vs_iterative(handle: ModelHandle, x: torch.Tensor, target: int | str, *, cap: float = PAPER_CAP,
                             max_steps: int = 300, epsilon: int | None = None, ladder_to: int | None = None,
                             progress: Progress | None = None) -> OneStepComparison:
    """Sec. 3.1: "simply taking the first gradient and moving an equivalent distance in image space
    that would have arisen from many smaller steps does not successfully re-label the image".

    The big step is ``epsilon`` levels (default :func:`cap_levels`: the whole cap in one step); the
    ladder tries one step of every 1..``ladder_to`` levels (default: as many as the iterative run
    took steps, at least ``epsilon``, at most 16). The iterative run uses the paper's rule.
    """
    if cap is None or not math.isfinite(cap) or cap <= 0:
        raise ConfigError("The comparison needs a distortion cap above 0 (the paper's is 0.01).")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ConfigError(f"The comparison works on one image at a time, shape (1, 3, H, W), not {tuple(x.shape)}.")
    epsilon = cap_levels(cap) if epsilon is None else int(epsilon)
    if epsilon < 1:
        raise ConfigError("The single step must be at least 1 level.")
    target = handle.class_index(target)
    original = quantize(x.detach().to(handle.device, torch.float32))
    config = RelabelConfig(cap=float(cap), max_steps=int(max_steps), at_cap="stop")
    iterative = relabel(handle, original, target, config, within(progress, 0.0, 0.8, "iterative"))
    report(progress, 0.85, "one big step")
    _, first = cross_entropy_gradient(handle, original, target)
    _, second = cross_entropy_gradient(handle, sign_step(original, first, RelabelConfig()), target)
    final = to_tensor(iterative.image, device=handle.device)
    _, last = cross_entropy_gradient(handle, final, target)
    top = ladder_to if ladder_to is not None else min(16, max(epsilon, iterative.steps))
    levels = list(range(1, max(int(top), epsilon) + 1))
    batch = torch.cat([quantize(original - level * first.sign() / 255.0) for level in levels])
    probs = handle.probabilities(batch)
    ladder = tuple((level, int(p.argmax()), float(p[target]), distortion_rms(image[None], original))
                   for level, p, image in zip(levels, probs, batch))
    _, top1, target_prob, distortion = ladder[epsilon - 1]
    report(progress, 1.0, "done")

    def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.sign() == b.sign()).double().mean())

    return OneStepComparison(
        target=target, original_class=iterative.original_class, cap=float(cap), epsilon=epsilon,
        single_image=images.to_uint8(batch[epsilon - 1]), single_top1=top1, single_target_prob=target_prob,
        single_distortion=distortion, iterative=iterative, ladder=ladder,
        first_two_sign_agreement=agreement(first, second), first_last_sign_agreement=agreement(first, last))


def first_gradients(handle: ModelHandle, x: torch.Tensor, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 3: the first step's raw gradient and its sign, as H x W x 3 images in [0, 1] (grey = 0)."""
    image = quantize(x[:1].detach().to(handle.device, torch.float32))
    _, gradient = cross_entropy_gradient(handle, image, handle.class_index(target))
    raw = 0.5 + 0.5 * gradient / gradient.abs().max().clamp_min(1e-12)
    sign = 0.5 + 0.5 * gradient.sign()
    return tuple(v[0].permute(1, 2, 0).cpu().numpy() for v in (raw, sign))


difference_image = images.difference_image  # Fig. 1's centre column (one implementation, in images)

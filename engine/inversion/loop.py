"""The loop: update the pixels to lower an objective, recording every term before each update.

:func:`optimise` takes an objective (a sum of terms), the transforms the network sees the image
through (jitter), a :class:`LoopConfig` (the optimiser and its budget) and an optional mask; it
returns an :class:`InversionResult` of plain numbers. Sec. 2.3: the mask multiplies the gradient
before each update. Sec. 4: L-BFGS (the paper's), Adam, or gradient descent in Deepdream's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..images import to_uint8
from ..models import ModelHandle
from ..progress import Progress, report
from .config import OPTIMIZERS
from .masks import validate_mask
from .objective import Evaluation, Objective
from .transforms import Transform


@dataclass(frozen=True)
class LoopConfig:
    """How the pixels are updated: the optimiser, its step size and number of updates, which
    snapshots to keep, when the loss counts as diverged, and whether a start that already is the
    objective's target is refused (known from the first pass, so it costs no extra forward)."""

    optimizer: str = "lbfgs"
    lr: float = 1.0
    steps: int = 40
    snapshots: int | tuple[int, ...] = 8
    divergence: float = 1e4
    refuse_top1: bool = False

    def __post_init__(self) -> None:
        check_optimizer(self.optimizer)
        if self.steps < 0 or self.lr <= 0:
            raise ConfigError("The number of steps must not be negative and the step size must be positive.")

    def build(self, image: torch.Tensor) -> torch.optim.Optimizer:
        if self.optimizer == "lbfgs":
            # One iteration per call so every step can be recorded, cancelled and snapshotted; the
            # evaluator's cache makes the call's opening evaluation free after a line search.
            return torch.optim.LBFGS([image], lr=self.lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe",
                                     tolerance_grad=1e-9, tolerance_change=1e-12)
        if self.optimizer == "adam":
            return torch.optim.Adam([image], lr=self.lr)
        return torch.optim.SGD([image], lr=self.lr)


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimiser '{name}'; use one of {', '.join(OPTIMIZERS)}.")


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
    start: np.ndarray | None = None  # H x W x 3 uint8 when the run started elsewhere: hole-filling's erased photo

    @property
    def reached_target(self) -> bool:
        return self.target is not None and self.final_class == self.target


class Diverged(Exception):
    pass


def start_image(x: torch.Tensor, start: str, seed: int) -> torch.Tensor:
    """The pixel parameterisation's starting values: the photo itself, or uniform noise around grey (sec. 6)."""
    if start == "image":
        return x.detach().clone()
    if start == "noise":
        generator = torch.Generator().manual_seed(seed)
        return (0.5 + 0.2 * (torch.rand(x.shape, generator=generator) - 0.5)).to(x.device)
    raise ConfigError(f"Unknown start '{start}'; use image or noise.")


def snapshot_steps(steps: int, chosen: int | tuple[int, ...]) -> set[int]:
    """The steps whose image is kept: ``chosen`` evenly spread over 0..steps (both ends included),
    or the listed steps (those past the end are dropped; the final image is always kept)."""
    if not isinstance(chosen, int):
        return {int(s) for s in chosen if 0 <= int(s) <= steps} | {steps}
    if chosen <= 1 or steps == 0:
        return {steps}
    return {int(round(i * steps / (chosen - 1))) for i in range(chosen)}


@dataclass(frozen=True)
class Measured:
    """One evaluation as plain numbers: each term weighted and raw, and every class's probability."""

    weighted: dict[str, float]
    raw: dict[str, float]
    probs: torch.Tensor

    @classmethod
    def of(cls, evaluation: Evaluation) -> "Measured":
        return cls({k: float(v.detach()) for k, v in evaluation.weighted.items()},
                   {k: float(v.detach()) for k, v in evaluation.raw.items()},
                   evaluation.logits.detach().softmax(1)[0])

    @property
    def total(self) -> float:
        return float(sum(self.weighted.values()))


def measure(handle: ModelHandle, objective: Objective, image: torch.Tensor) -> Measured:
    """The objective at ``image`` as the network sees it untransformed: one forward, no backward."""
    with torch.no_grad():
        return Measured.of(objective.evaluate(handle, image.detach()))


def optimise(handle: ModelHandle, start: torch.Tensor, objective: Objective, loop: LoopConfig, *,
             transforms: Sequence[Transform] = (), mask: np.ndarray | None = None,
             progress: Progress | None = None, observer=None) -> InversionResult:
    """``loop.steps`` updates of the pixels in [0, 1]; each step's terms are recorded before its update.

    After every update the pixels are projected back into [0, 1]. A non-finite or exploding total
    stops the run and restores the last image whose loss was finite (outcome "diverged"). The end
    point is measured once more without transforms. ``observer.append(dict)`` receives each step's
    record (and the snapshot image at the kept steps). The result's ``config`` is left empty for the
    caller to fill in.
    """
    run = _Run(handle, start, objective, loop, transforms, _mask_tensor(mask, handle), progress, observer)
    try:
        run.iterate()
    except Diverged as reason:
        run.restore_last_good(reason)
    return run.result()


def _mask_tensor(mask: np.ndarray | None, handle: ModelHandle) -> torch.Tensor | None:
    if mask is None:
        return None
    size = handle.input_size
    return torch.from_numpy(validate_mask(mask, size)).to(handle.device).view(1, 1, size, size)


class _Evaluator:
    """One forward+backward of the objective, with the gradient masked and the last point cached.

    torch's L-BFGS calls its closure again at the point where the previous line search ended; the
    cache answers that call without a second pass, so every pass counted here is a new point.
    """

    def __init__(self, handle: ModelHandle, objective: Objective, image: torch.Tensor, *,
                 transforms: Sequence[Transform], mask: torch.Tensor | None, normalise: bool, use_cache: bool):
        self.handle, self.objective, self.image, self.mask = handle, objective, image, mask
        self.transforms, self.normalise, self.use_cache = tuple(transforms), normalise, use_cache
        self.passes = 0
        self.cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # point, loss, grad
        self.last: Measured | None = None

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
        with torch.enable_grad():
            evaluation = self.objective.evaluate(self.handle, self.image.clamp(0.0, 1.0), self.transforms)
            total = evaluation.total()
            (gradient,) = torch.autograd.grad(total, self.image)
        self.passes += 1
        self.image.grad = self._masked(gradient)
        loss = total.detach()
        if self.use_cache:
            self.cached = (view, loss, self.image.grad.detach().clone())
        self.last = Measured.of(evaluation)
        return loss

    def _masked(self, gradient: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            gradient = gradient * self.mask
        if self.normalise:  # gradient descent as Deepdream takes it: steps in units of the mean |gradient|
            inside = gradient.abs().sum() / (self.mask.sum() * 3 if self.mask is not None else gradient.numel())
            gradient = gradient / inside.clamp_min(1e-12)
        return gradient


class _Record:
    """What the loop keeps of each step: the total, each term weighted and raw, p(target), top-1,
    and the snapshots; each step is also told to the observer and the progress callback."""

    def __init__(self, handle: ModelHandle, target: int | None, keep: set[int], steps: int,
                 progress: Progress | None, observer) -> None:
        self.handle, self.target, self.keep, self.steps = handle, target, keep, steps
        self.progress, self.observer = progress, observer
        self.total: list[float] = []
        self.target_prob: list[float] = []
        self.top1: list[int] = []
        self.terms: dict[str, list[float]] = {}
        self.raw_terms: dict[str, list[float]] = {}
        self.snapshots: list[tuple[int, np.ndarray]] = []

    def append(self, measured: Measured) -> None:
        self.total.append(measured.total)
        self.target_prob.append(float(measured.probs[self.target]) if self.target is not None else float("nan"))
        self.top1.append(int(measured.probs.argmax()))
        for name, value in measured.weighted.items():
            self.terms.setdefault(name, []).append(value)
        for name, value in measured.raw.items():
            self.raw_terms.setdefault(name, []).append(value)

    def snapshot(self, step: int, image: torch.Tensor) -> None:
        self.snapshots.append((step, to_uint8(image.detach())))

    def step(self, step: int, measured: Measured, image: torch.Tensor) -> None:
        """The record of one step of the loop: appended, snapshotted if kept, observed, reported."""
        self.append(measured)
        kept = step in self.keep
        if kept:
            self.snapshot(step, image)
        if self.observer is not None:
            self.observer.append({"step": step, "total": self.total[-1], **measured.weighted,
                                  "target": self.target_prob[-1], "top1": self.top1[-1],
                                  **({"image": self.snapshots[-1][1]} if kept else {})})
        detail = (f", p({self.handle.class_names[self.target]}) {self.target_prob[-1]:.3f}"
                  if self.target is not None else "")
        message = f"step {step} of {self.steps}: loss {self.total[-1]:.4g}{detail}"
        report(self.progress, step / max(self.steps, 1), message)


class _Run:
    """One run of :func:`optimise`: the pixels, the optimiser, the record, and how the run ended."""

    def __init__(self, handle: ModelHandle, start: torch.Tensor, objective: Objective, loop: LoopConfig,
                 transforms: Sequence[Transform], mask: torch.Tensor | None, progress: Progress | None, observer):
        self.handle, self.objective, self.loop, self.progress = handle, objective, loop, progress
        self.image = start.detach().clone().to(handle.device).requires_grad_(True)
        self.original_pixels = to_uint8(start)
        self.lbfgs = loop.optimizer == "lbfgs"
        self.evaluator = _Evaluator(handle, objective, self.image, transforms=transforms, mask=mask,
                                    normalise=loop.optimizer == "gd", use_cache=self.lbfgs)
        self.optimizer = loop.build(self.image)
        self.record = _Record(handle, objective.target, snapshot_steps(loop.steps, loop.snapshots), loop.steps,
                              progress, observer)
        self.last_good = self.image.detach().clone()
        self.outcome, self.message, self.step = "done", "", 0
        self.first_total: float | None = None
        self.stalls = 0
        self.probs: torch.Tensor | None = None
        self.forwards = objective.setup_forwards
        self.original_class: int | None = None

    def iterate(self) -> None:
        for step in range(self.loop.steps + 1):
            self.step = step
            final = step == self.loop.steps
            measured = self._measure() if final else self._evaluate()  # the end point: no transform, no backward
            self._check_finite(measured.total, step)
            self.last_good = self.image.detach().clone()
            self._check_start(measured)
            self.record.step(step, measured, self.image)
            if final or self._update_and_stall():
                return

    def _evaluate(self) -> Measured:
        self.evaluator()
        self.probs = self.evaluator.last.probs
        return self.evaluator.last

    def _measure(self) -> Measured:
        measured = measure(self.handle, self.objective, self.image)
        self.forwards += 1
        self.probs = measured.probs
        return measured

    def _check_finite(self, total: float, step: int) -> None:
        self.first_total = total if self.first_total is None else self.first_total
        if not math.isfinite(total):
            raise Diverged(f"the loss is not a finite number at step {step}")
        if abs(total) > self.loop.divergence * max(1.0, abs(self.first_total)):
            raise Diverged(f"the loss exploded at step {step}")

    def _check_start(self, measured: Measured) -> None:
        if self.original_class is not None:
            return
        self.original_class = int(measured.probs.argmax())
        target = self.objective.target
        if self.loop.refuse_top1 and self.original_class == target:
            raise ConfigError(f"The model already calls this image a {self.handle.class_names[target]}: "
                              "pick another class to change it into.")

    def _update_and_stall(self) -> bool:
        """One update, the projection into [0, 1]; True when L-BFGS stalled twice in a row.

        The TV term is an L1 sum with kinks, where a quasi-Newton model can go wrong; the first stall
        restarts L-BFGS from a clean history, a second one in a row ends the run (outcome "stalled").
        """
        if self.lbfgs:
            self.optimizer.step(self.evaluator)
        else:
            self.optimizer.step()
        with torch.no_grad():
            self.image.clamp_(0.0, 1.0)
        if not (self.lbfgs and _lbfgs_stalled(self.optimizer, self.image)):
            self.stalls = 0
            return False
        self.stalls += 1
        self.optimizer.state.clear()  # restart from a clean history
        if self.stalls < 2:
            return False
        self.record.append(self._measure())
        self.step += 1
        self.record.snapshot(self.step, self.image)
        self.outcome = "stalled"
        self.message = (f"L-BFGS stopped after {self.step} steps: two line searches in a row found no lower loss "
                        "(a minimum, or a kink of the TV term).")
        return True

    def restore_last_good(self, reason: Diverged) -> None:
        with torch.no_grad():
            self.image.copy_(self.last_good)
        self.outcome = "diverged"
        self.message = (f"Stopped: {reason}. The last image with a finite loss is kept; lower the extreme weights "
                        "(or the step size) and run again.")
        self.step = max(self.step - 1, 0)
        shots = self.record.snapshots
        if not shots or not np.array_equal(shots[-1][1], to_uint8(self.image.detach())):
            self.record.snapshot(self.step, self.image)

    def result(self) -> InversionResult:
        final_image = to_uint8(self.image.detach())
        with torch.no_grad():
            if self.outcome == "diverged" or self.probs is None:  # the restored image was measured before its step
                final_probs = self.handle.logits(self.image.detach()).softmax(1)[0].cpu().numpy()
                self.forwards += 1
            else:  # the end record's forward already classified this image
                final_probs = self.probs.detach().cpu().numpy()
        report(self.progress, 1.0, self.message or "done")
        record = self.record
        return InversionResult(
            image=final_image, original=self.original_pixels, target=self.objective.target,
            original_class=self.original_class if self.original_class is not None else int(final_probs.argmax()),
            final_class=int(final_probs.argmax()), outcome=self.outcome, message=self.message, steps=self.step,
            terms={k: np.array(v) for k, v in record.terms.items()},
            raw_terms={k: np.array(v) for k, v in record.raw_terms.items()},
            total=np.array(record.total), target_prob=np.array(record.target_prob), top1=np.array(record.top1),
            snapshots=tuple(record.snapshots), final_probs=final_probs, evaluations=self.evaluator.passes,
            forward_passes=self.forwards, config={})


def _lbfgs_stalled(optimizer: torch.optim.LBFGS, image: torch.Tensor) -> bool:
    """True when the last line search found no lower loss (step size 0)."""
    step_size = optimizer.state[image].get("t")
    return step_size is not None and float(step_size) == 0.0

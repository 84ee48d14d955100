"""Attacks as a registry with one verb: ``run(handle, x, target, config, progress, observer)``.

Every entry is a class with a ``key``, a ``label`` and a frozen ``Config`` of keyword settings with
the paper's defaults; :meth:`Attack.run` owns the plumbing (one image, the 8-bit grid, the target,
the per-step record, progress and cancellation, the result) and an entry overrides one small
function, :meth:`Attack.perturb`. Every run returns the same :class:`AttackResult`, and
:func:`manifest` is the one manifest the page's download and the CLI's file share.

* ``relabel`` -- Robinson & Graham (2015), eq. 1-2: one-level sign-gradient steps until the target
  is top-1, under the distortion cap of eq. 3 (the paper's experiments live in
  :mod:`engine.relabel`).
* ``fgsm`` / ``pgd`` -- the lecture's ("Fooling ConvNets") FGSM and PGD, through captum, in 8-bit
  levels; untargeted (away from the image's own class) or towards a target.
* ``leastlikely`` -- targeted PGD towards the class the model finds least likely.
* ``mostlikely`` -- the lecture's "Adversarial samples vs. interpretability": one step *down* the
  loss of the image's own top class, ``x <- x - eps sgn(dL(x, y_top)/dx)``; it shows the pixels that
  support the label the model already gives.
* ``bim`` / ``ll`` -- Kurakin, Goodfellow & Bengio (ICLR 2017 workshop): the basic iterative method
  and the iterative least-likely class method, steps of one level, ``min(eps + 4, 1.25 eps)`` steps.
* ``deepfool`` / ``lbfgs`` -- minimal L2 perturbations (:mod:`engine.minimal`): DeepFool
  (Moosavi-Dezfooli et al. 2016) and Szegedy et al.'s box-constrained L-BFGS (2014), put on the
  8-bit grid so that the saved image keeps its new label.

Each step's record (target and original probability, top-1, distortion) comes from the forward
pass the step's gradient comes from, so watching a run costs nothing extra; ``observer`` (a page's
job record log) receives each record as it happens.

Adding an attack is one class (decorated with :func:`register`) plus one line in the shared test's
expectations: ``tests/test_attacks.py`` runs every entry through the same checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from . import configs, images, io, relabel
from .errors import ConfigError
from .models import ModelHandle, Prediction
from .progress import Progress, report

# Outcomes. A targeted run succeeds when the target is top-1, an untargeted one when the top-1
# is no longer the image's own class.
RELABELLED = "relabelled"
CAP_REACHED = "cap reached"
STEP_LIMIT = "step limit reached"
LABEL_CHANGED = "label changed"
LABEL_KEPT = "label kept"
CONFIDENCE_RAISED = "confidence raised"  # the most-likely method: the own label got surer
CONFIDENCE_NOT_RAISED = "confidence not raised"
SUCCEEDED = (RELABELLED, LABEL_CHANGED, CONFIDENCE_RAISED)

Observer = Any  # anything with .append(dict): a list, or a job's RecordLog


@dataclass(frozen=True)
class AttackResult:
    """What every attack returns: the attacked image and the record of every step (plain numbers).

    The per-step arrays have one entry per forward pass, before each step and at the end
    (``steps + 1`` entries; FGSM has two). For an untargeted run ``target`` is None and
    ``target_prob`` holds the strongest other class's probability.
    """

    attack: str  # the registry key
    image: np.ndarray  # H x W x 3 uint8: exactly what the model classified at the end
    original: np.ndarray  # H x W x 3 uint8: the image the run started from
    original_class: int
    final_class: int
    target: int | None
    outcome: str
    steps: int
    target_prob: np.ndarray
    original_prob: np.ndarray
    top1: np.ndarray
    distortion: np.ndarray  # eq. 3 against the original, per step
    linf_levels: int  # largest change of any value, in 8-bit levels
    final_probs: np.ndarray  # (classes,) of the final image
    config: dict

    @property
    def succeeded(self) -> bool:
        return self.outcome in SUCCEEDED

    @property
    def final_distortion(self) -> float:
        return float(self.distortion[-1])


@dataclass(frozen=True)
class Verdict:
    """How a result reads to a person: a tone (success, warning or info) and one markdown sentence."""

    tone: str
    text: str


# ---------------------------------------------------------------------------------------------
# The record of one run


class Trail:
    """One run's per-step records: the curve a page draws live and the result keeps.

    :meth:`observe` takes a forward pass's logits on the image they came from and records the step;
    an attack calls it once per forward pass it makes anyway.
    """

    def __init__(self, original: torch.Tensor, target: int | None, progress: Progress | None,
                 observer: Observer | None) -> None:
        self.original = original
        self.target = target
        self.original_class: int | None = None
        self.progress, self.observer = progress, observer
        self.columns: dict[str, list] = {"target": [], "original": [], "top1": [], "distortion": []}
        self.last_image: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return len(self.columns["top1"])

    def observe(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Record the step whose forward pass gave ``logits``; return its probabilities."""
        probs = logits.detach()[:1].float().softmax(1)[0]
        top1 = int(probs.argmax())
        if self.original_class is None:
            self.original_class = top1
        record = {"target": self._target_prob(probs), "original": float(probs[self.original_class]),
                  "top1": top1, "distortion": relabel.distortion_rms(image, self.original)}
        for name, value in record.items():
            self.columns[name].append(value)
        if self.observer is not None:  # a page plots the run live from the job's records
            self.observer.append(record)
        self.last_image, self.last_probs = image.detach(), probs
        return probs

    def _target_prob(self, probs: torch.Tensor) -> float:
        if self.target is not None:
            return float(probs[self.target])
        rivals = probs.clone()
        rivals[self.original_class] = -1.0
        return float(rivals.max())

    def report(self, fraction: float, message: str) -> None:
        """Progress; raises :class:`~engine.errors.Cancelled` when the callback says stop."""
        report(self.progress, fraction, message)

    def watched(self, handle: ModelHandle, total_steps: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """A forward function that records each step and reports progress before it (for captum)."""
        def forward(image: torch.Tensor) -> torch.Tensor:
            logits = handle.logits(image)
            self.observe(image, logits)
            done = self.count - 1
            self.report(done / max(total_steps, 1),
                        f"step {done + 1} of {total_steps}: p(target) {self.columns['target'][-1]:.3f}")
            return logits
        return forward

    def finish(self, handle: ModelHandle, image: torch.Tensor) -> None:
        """Make sure the last record is of ``image`` itself (one more forward pass if it is not)."""
        if self.last_image is None or not torch.equal(self.last_image, image):
            with torch.inference_mode():
                self.observe(image, handle.logits(image))

    def outcome(self) -> str:
        """The outcome of a run with a fixed budget, read from its last record."""
        top1 = self.columns["top1"][-1]
        if self.target is not None:
            return RELABELLED if top1 == self.target else STEP_LIMIT
        return LABEL_CHANGED if top1 != self.original_class else LABEL_KEPT

    def result(self, key: str, image: torch.Tensor, outcome: str, config: Any) -> AttackResult:
        columns = {name: np.array(values) for name, values in self.columns.items()}
        return AttackResult(
            attack=key, image=images.to_uint8(image), original=images.to_uint8(self.original),
            original_class=int(self.original_class), final_class=int(columns["top1"][-1]), target=self.target,
            outcome=outcome, steps=self.count - 1, target_prob=columns["target"], original_prob=columns["original"],
            top1=columns["top1"], distortion=columns["distortion"], linf_levels=relabel.linf_levels(image, self.original),
            final_probs=self.last_probs.cpu().numpy(), config=config.as_dict())


# ---------------------------------------------------------------------------------------------
# The base class and the registry


class Attack:
    """Base of every attack: validates, puts the image on the 8-bit grid, picks the target, keeps
    the record and builds the result. An entry sets the class attributes and overrides
    :meth:`perturb` (and :meth:`choose_target` if it picks its own target)."""

    key: ClassVar[str] = ""
    label: ClassVar[str] = ""
    Config: ClassVar[type]  # a frozen dataclass with as_dict() and check()
    needs_target: ClassVar[bool] = False  # True: cannot run without a target class (relabel)
    own_target: ClassVar[str | None] = None  # the target it picks for itself, e.g. "least likely"
    targeted: ClassVar[bool] = True  # False: it never takes a target (DeepFool crosses the nearest boundary)

    @classmethod
    def run(cls, handle: ModelHandle, x: torch.Tensor, target: int | str | None = None, config: Any = None,
            progress: Progress | None = None, observer: Observer | None = None) -> AttackResult:
        """Attack one image (1, 3, H, W) in [0, 1]; the caller's tensor is left untouched."""
        config = cls.check_config(config)
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ConfigError(f"{cls.label} works on one image at a time, shape (1, 3, H, W), "
                              f"not {tuple(x.shape)}.")
        original = images.quantize(x.detach().to(handle.device, torch.float32))
        target = cls.choose_target(handle, original, target)
        trail = Trail(original, target, progress, observer)
        final, outcome = cls.perturb(handle, original, target, config, trail)
        final = final.detach()
        trail.finish(handle, final)
        outcome = outcome or trail.outcome()
        trail.report(1.0, outcome)
        return trail.result(cls.key, final, outcome, config)

    @classmethod
    def perturb(cls, handle: ModelHandle, original: torch.Tensor, target: int | None, config: Any,
                trail: Trail) -> tuple[torch.Tensor, str | None]:
        """The attack itself: the final image on the 8-bit grid and its outcome (None: read it from
        the last record). Call ``trail.observe`` on each forward pass and ``trail.report`` each step."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config: Any) -> Any:
        config = cls.Config() if config is None else config
        if not isinstance(config, cls.Config):
            raise ConfigError(f"{cls.label} takes a {cls.Config.__name__}, not a {type(config).__name__}.")
        config.check()
        return config

    @classmethod
    def choose_target(cls, handle: ModelHandle, x: torch.Tensor, target: int | str | None) -> int | None:
        """The class to push towards (an id), or None for an untargeted run."""
        if target is not None and not cls.targeted:
            raise ConfigError(f"{cls.label} takes no target: it crosses the nearest boundary, whichever class lies there.")
        if target is None:
            if cls.needs_target:
                raise ConfigError(f"{cls.label} needs a target class.")
            return None
        return handle.class_index(target)

    @classmethod
    def make_config(cls, **values: Any) -> Any:
        """The config from the values that name its fields; others are ignored (a page's or the CLI's
        cap, step limit and epsilon serve every attack)."""
        return configs.config_from(cls.Config, values)

    @classmethod
    def verdict(cls, result: AttackResult, class_names: tuple[str, ...]) -> Verdict:
        return Verdict("info", f"{cls.label}: the model now says **{class_names[result.final_class]}**; "
                               f"distortion {result.final_distortion:.5f}, largest change {result.linf_levels} levels.")


ATTACKS: dict[str, type[Attack]] = {}


def register(attack: type[Attack]) -> type[Attack]:
    """Class decorator: add an attack to :data:`ATTACKS` under its key."""
    if not attack.key or attack.key in ATTACKS:
        raise ValueError(f"An attack needs a unique key; {attack.__name__} has {attack.key!r}.")
    ATTACKS[attack.key] = attack
    return attack


def get_attack(key: str) -> type[Attack]:
    """The attack registered under ``key``; a sentence naming close ones when there is none."""
    names = list(ATTACKS)
    return ATTACKS[names[io.find_name(key, names, what="attack", error=ConfigError)]]


def describe() -> list[dict]:
    """Every attack with its key, label and config fields (``python -m engine methods --json``)."""
    return [{"key": attack.key, "label": attack.label, "fields": configs.config_fields(attack.Config)}
            for attack in ATTACKS.values()]


# ---------------------------------------------------------------------------------------------
# Relabelling (Robinson & Graham 2015)


@register
class Relabel(Attack):
    """Eq. 1-2 until the target is top-1 (and confident enough), the cap or the step limit.

    Each step is one forward and one backward pass to the image; the step that would pass the
    distortion cap is not taken (or, with ``at_cap="fit"``, only the part that fits), so the
    result always respects it.
    """

    key, label, Config, needs_target = "relabel", "Relabel (sign gradient, eq. 1-2)", relabel.RelabelConfig, True

    @classmethod
    def perturb(cls, handle, original, target, config, trail):
        current, step = original.clone(), 0
        while True:
            logits, gradient = relabel.cross_entropy_gradient(handle, current, target)
            probs = trail.observe(current, logits)
            if relabel.target_reached(probs, target, config.confidence):
                return current, RELABELLED
            if step >= config.max_steps:
                return current, STEP_LIMIT
            candidate = relabel.sign_step(current, gradient, config)
            if config.cap is not None and relabel.distortion_rms(candidate, original) > config.cap:
                candidate = (relabel.fit_under_cap(current, candidate, original, gradient, config.cap)
                             if config.at_cap == "fit" else None)
                if candidate is None:
                    return current, CAP_REACHED
            current, step = candidate, step + 1
            trail.report(step / max(config.max_steps, 1), f"step {step}: p(target) {trail.columns['target'][-1]:.3f}, "
                                                          f"distortion {trail.columns['distortion'][-1]:.4f}")

    @classmethod
    def verdict(cls, result, class_names):
        target = class_names[result.target]
        if result.succeeded:
            return Verdict("success", f"Relabelled to **{target}** in {result.steps} steps; distortion "
                                      f"{result.final_distortion:.5f} (eq. 3, cap {result.config['cap']}).")
        return Verdict("warning", f"Outcome: {result.outcome} after {result.steps} steps (distortion "
                                  f"{result.final_distortion:.5f}); {target} reached p = {result.target_prob[-1]:.3f}. "
                                  "Raise the cap or the step limit to go further.")


# ---------------------------------------------------------------------------------------------
# The lecture's attacks ("Fooling ConvNets"): captum's FGSM and PGD, in 8-bit levels


@dataclass(frozen=True)
class FGSMConfig:
    """FGSM: one step of ``epsilon`` 8-bit levels along the gradient's sign."""

    epsilon: int = 4  # L-inf radius in levels

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.epsilon < 1:
            raise ConfigError("Epsilon must be at least 1 level.")


@dataclass(frozen=True)
class PGDConfig:
    """PGD: ``steps`` steps of ``step`` levels, projected into the L-inf ball of ``epsilon`` levels.
    Whole levels keep every result on the 8-bit grid."""

    epsilon: int = 4  # L-inf radius in levels
    step: int = 1  # step size in levels
    steps: int = 10
    random_start: bool = False
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.epsilon < 1 or self.step < 1 or self.steps < 1:
            raise ConfigError("Epsilon, step and the number of steps must each be at least 1.")


def _cross_entropy(logits: torch.Tensor, wanted: int) -> torch.Tensor:
    """Per-image loss as captum expects it (its default, -log(output), assumes probabilities)."""
    wanted = torch.full((logits.shape[0],), int(wanted), device=logits.device)
    return F.cross_entropy(logits, wanted, reduction="none")


def on_grid_within(adversarial: torch.Tensor, original: torch.Tensor, epsilon: int) -> torch.Tensor:
    """Back on the 8-bit grid, inside the L-inf ball of ``epsilon`` levels, in whole levels."""
    levels = torch.round(adversarial.detach().clamp(0, 1) * 255)
    start = torch.round(original * 255)
    return torch.minimum(torch.maximum(levels, start - epsilon), start + epsilon).clamp(0, 255) / 255


class _BudgetAttack(Attack):
    """FGSM and PGD share this: the label to push away from or towards, captum's loop on a watched
    forward function (records, progress and cancel at every step), the result put on the grid."""

    @classmethod
    def perturb(cls, handle, original, target, config, trail):
        # the clean image's own class, before the first step (a random start may already differ)
        trail.original_class = int(handle.probabilities(original)[0].argmax())
        label = trail.original_class if target is None else target
        forward = trail.watched(handle, cls.planned_steps(config))
        with torch.enable_grad():
            adversarial = cls.captum_attack(forward, original, label, target is not None, config)
        return on_grid_within(adversarial, original, config.epsilon), None

    @classmethod
    def planned_steps(cls, config) -> int:
        return 1

    @classmethod
    def captum_attack(cls, forward, x: torch.Tensor, label: int, targeted: bool, config) -> torch.Tensor:
        """captum's attack on ``forward`` (images in [0, 1] -> logits), from ``x``."""
        raise NotImplementedError


@register
class FGSM(_BudgetAttack):
    """Goodfellow et al. (2015): x <- x + eps sgn(dL/dx) (or minus, towards a target)."""

    key, label, Config = "fgsm", "FGSM (one step)", FGSMConfig

    @classmethod
    def captum_attack(cls, forward, x, label, targeted, config):
        from captum.robust import FGSM as CaptumFGSM

        return CaptumFGSM(forward, _cross_entropy, 0.0, 1.0).perturb(x, config.epsilon / 255, label, targeted=targeted)


@register
class PGD(_BudgetAttack):
    """Madry et al. (2018): repeated FGSM steps of ``step`` levels, projected into the eps-ball."""

    key, label, Config = "pgd", "PGD (steps in an ε-ball)", PGDConfig

    @classmethod
    def planned_steps(cls, config):
        return config.steps

    @classmethod
    def captum_attack(cls, forward, x, label, targeted, config):
        from captum.robust import PGD as CaptumPGD

        # captum draws the random start from the global generator: seed it, then give its state back
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            return CaptumPGD(forward, _cross_entropy, 0.0, 1.0).perturb(
                x, config.epsilon / 255, config.step / 255, config.steps, label, targeted=targeted,
                random_start=config.random_start)


def least_likely_class(handle: ModelHandle, x: torch.Tensor) -> int:
    """The class the model finds least likely for this image (the lecture's least-likely target)."""
    return int(handle.probabilities(x[:1])[0].argmin())


class _TowardsLeastLikely:
    """Mixin: the attack picks the class the model finds least likely as its own target."""

    own_target = "least likely"

    @classmethod
    def choose_target(cls, handle, x, target):
        return least_likely_class(handle, x)


@register
class LeastLikely(_TowardsLeastLikely, PGD):
    """Targeted PGD towards the class the model finds least likely: the hardest label to reach."""

    key, label = "leastlikely", "Least-likely class (targeted PGD)"


# ---------------------------------------------------------------------------------------------
# The lecture's most-likely method, and Kurakin et al.'s iterative methods


def most_likely_class(handle: ModelHandle, x: torch.Tensor) -> int:
    """The class the model is most confident of for this image (the most-likely method's label)."""
    return int(handle.probabilities(x[:1])[0].argmax())


@register
class MostLikely(FGSM):
    """The lecture's "Adversarial samples vs. interpretability": one step of ``epsilon`` levels down
    the loss of the image's own top class, ``x <- x - eps sgn(dL(x, y_top)/dx)``. It changes the
    pixels that support the current label, so the model grows surer of it."""

    key, label, own_target = "mostlikely", "Most likely class (the pixels behind the label)", "most likely"

    @classmethod
    def choose_target(cls, handle, x, target):
        return most_likely_class(handle, x)

    @classmethod
    def perturb(cls, handle, original, target, config, trail):
        final, _ = super().perturb(handle, original, target, config, trail)
        trail.finish(handle, final)
        kept = trail.columns["top1"][-1] == target
        raised = trail.columns["original"][-1] > trail.columns["original"][0]
        return final, CONFIDENCE_RAISED if kept and raised else CONFIDENCE_NOT_RAISED

    @classmethod
    def verdict(cls, result, class_names):
        name = class_names[result.original_class]
        before, after = result.original_prob[0], result.original_prob[-1]
        if result.succeeded:
            return Verdict("success", f"The model's confidence in **{name}** went up from {before:.3f} to {after:.3f}: "
                                      f"the {result.linf_levels}-level change strengthens the pixels that support this label.")
        return Verdict("warning", f"The model's confidence in **{name}** did not go up ({before:.3f} → {after:.3f}, "
                                  f"top-1 now {class_names[result.final_class]}); try a smaller ε.")


@dataclass(frozen=True)
class BIMConfig:
    """Kurakin et al.'s iterative methods: steps of one level inside the L-inf ball of ``epsilon``
    levels; ``steps=None`` takes their ``min(eps + 4, 1.25 eps)``."""

    epsilon: int = 4  # L-inf radius in levels
    steps: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.epsilon < 1 or (self.steps is not None and self.steps < 1):
            raise ConfigError("Epsilon and the number of steps must each be at least 1.")

    @property
    def step_count(self) -> int:
        from .lab import kurakin_steps

        return self.steps or kurakin_steps(self.epsilon)


@register
class BIM(_BudgetAttack):
    """Kurakin et al. (2017), basic iterative method: ``x <- Clip_eps(x + 1 level sgn(dL(x, y_true)/dx))``,
    PGD without a random start, with step and step count set by the paper."""

    key, label, Config = "bim", "BIM (basic iterative method, Kurakin et al.)", BIMConfig

    @classmethod
    def planned_steps(cls, config):
        return config.step_count

    @classmethod
    def captum_attack(cls, forward, x, label, targeted, config):
        steps = PGDConfig(epsilon=config.epsilon, step=1, steps=config.step_count)
        return PGD.captum_attack(forward, x, label, targeted, steps)


@register
class IterativeLeastLikely(_TowardsLeastLikely, BIM):
    """Kurakin et al. (2017), iterative least-likely class method: BIM's steps *down* the loss of the
    class the model finds least likely, ``x <- Clip_eps(x - 1 level sgn(dL(x, y_LL)/dx))``."""

    key, label = "ll", "Iterative least-likely class (Kurakin et al.)"


# ---------------------------------------------------------------------------------------------
# Minimal perturbations (engine.minimal): DeepFool and L-BFGS, on the 8-bit grid


@dataclass(frozen=True)
class DeepFoolConfig:
    """DeepFool (Moosavi-Dezfooli et al. 2016, Alg. 2): the ``candidates`` most likely classes, each
    step overshot by ``overshoot``, at most ``max_iter`` steps."""

    candidates: int = 10
    overshoot: float = 0.02
    max_iter: int = 50

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.candidates < 2 or self.max_iter < 1 or self.overshoot < 0:
            raise ConfigError("DeepFool needs at least 2 candidate classes, at least 1 iteration and an overshoot of 0 or more.")


@dataclass(frozen=True)
class LBFGSConfig:
    """Szegedy et al. (2014), sec. 4.1: ``c_steps`` values of the penalty weight c from ``c_init``,
    at most ``max_iter`` L-BFGS-B iterations each."""

    c_init: float = 10.0
    c_steps: int = 8
    max_iter: int = 30

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.c_init <= 0 or self.c_steps < 1 or self.max_iter < 1:
            raise ConfigError("L-BFGS needs c above 0, at least 1 value of c and at least 1 iteration.")


# DeepFool stops just past the boundary, often less than half a level per value, so rounding to the
# 8-bit grid can undo it: these extra overshoots are tried in turn (one forward pass each).
GRID_FACTORS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def l2_levels(result: AttackResult) -> float:
    """The L2 norm of the final change, in 8-bit levels (divide by 255 for [0, 1] units)."""
    return float(np.linalg.norm(result.image.astype(np.float64) - result.original.astype(np.float64)))


class _MinimalAttack(Attack):
    """DeepFool and L-BFGS: the :mod:`engine.minimal` function on a forward function that records
    every pass it makes (one record per forward pass, as for every attack)."""

    @classmethod
    def watching(cls, handle: ModelHandle, trail: Trail) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(image: torch.Tensor) -> torch.Tensor:
            logits = handle.logits(image)
            trail.observe(image, logits)
            return logits
        return forward

    @classmethod
    def verdict(cls, result, class_names):
        size = f"L2 norm {l2_levels(result) / 255:.4f} ({l2_levels(result):.1f} levels)"
        if result.succeeded:
            return Verdict("success", f"{cls.label}: the model now says **{class_names[result.final_class]}** "
                                      f"instead of {class_names[result.original_class]}, after a change of {size}, "
                                      f"largest {result.linf_levels} levels.")
        return Verdict("warning", f"{cls.label} did not change the label (still **{class_names[result.final_class]}**, "
                                  f"change of {size}); allow more iterations.")


@register
class DeepFool(_MinimalAttack):
    """DeepFool (:func:`engine.minimal.deepfool`), untargeted: the nearest boundary of the linearised
    classifier, step after step; then onto the 8-bit grid with the smallest extra overshoot of
    :data:`GRID_FACTORS` that keeps the new label."""

    key, label, Config, targeted = "deepfool", "DeepFool (minimal L2, untargeted)", DeepFoolConfig, False

    @classmethod
    def perturb(cls, handle, original, target, config, trail):
        from .minimal import deepfool

        found = deepfool(cls.watching(handle, trail), original, candidates=config.candidates,
                         overshoot=config.overshoot, max_iter=config.max_iter, progress=trail.progress)
        image = None
        for factor in GRID_FACTORS:
            candidate = images.quantize(original + factor * found.perturbation)
            if image is not None and torch.equal(candidate, image):
                continue
            image = candidate
            with torch.inference_mode():
                probs = trail.observe(image, handle.logits(image))
            if int(probs.argmax()) != trail.original_class:
                break
        return image, None


@register
class LBFGS(_MinimalAttack):
    """Szegedy et al. (2014), box-constrained L-BFGS (:func:`engine.minimal.lbfgs`): the smallest
    ``c |r|^2 + loss`` minimiser that still has the wanted label on the 8-bit grid. Untargeted by
    default (any label but the image's own); give a target to aim at one class."""

    key, label, Config = "lbfgs", "L-BFGS (Szegedy et al., minimal L2)", LBFGSConfig

    @classmethod
    def perturb(cls, handle, original, target, config, trail):
        from .minimal import lbfgs

        found = lbfgs(cls.watching(handle, trail), original, target, c_init=config.c_init, c_steps=config.c_steps,
                      max_iter=config.max_iter, progress=trail.progress)
        return found.adversarial, None


# ---------------------------------------------------------------------------------------------
# Reading a result: ranking, per-step log, manifest


def final_ranking(result: AttackResult, handle: ModelHandle, top_k: int = 5) -> Prediction:
    """The final image's top classes, from the probabilities the run already computed."""
    return Prediction.from_probs(result.final_probs, handle.class_names, handle.name, top_k)


def step_log(result: AttackResult) -> dict:
    """Every step's numbers, for a JSON file beside the image."""
    top5 = np.argsort(-result.final_probs, kind="stable")[:5]
    return {"attack": result.attack, "outcome": result.outcome, "steps": result.steps,
            "target_prob": result.target_prob.tolist(), "original_prob": result.original_prob.tolist(),
            "top1": result.top1.tolist(), "distortion": result.distortion.tolist(),
            "final_probs_top5": [[float(result.final_probs[i]), int(i)] for i in top5]}


def _class(handle: ModelHandle, index: int | None) -> dict | None:
    return None if index is None else {"id": int(index), "name": handle.class_names[index]}


def manifest(result: AttackResult, handle: ModelHandle, *, image_name: str, image_sha256: str | None = None) -> dict:
    """What ran, on what, with which settings and how it ended: the page's JSON download and the
    CLI's manifest file are this dict."""
    return io.manifest(
        "relabel", image=image_name, image_sha256=image_sha256, model=handle.name, method=result.attack,
        method_label=get_attack(result.attack).label, target=_class(handle, result.target),
        original_class=_class(handle, result.original_class), final_top1=_class(handle, result.final_class),
        outcome=result.outcome, steps=result.steps, distortion_eq3=result.final_distortion,
        quality=relabel.image_quality(result.image, result.original), config=result.config)

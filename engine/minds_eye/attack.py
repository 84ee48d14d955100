"""The attack of §3.2 and the effort measure of §4, batched.

The paper perturbs an 8-bit grey image by x̃ = clip(x − sign ∇ₓJ(θ, x, y), 0, 255), one grey level
per pixel per step, "as often as needed to flip the classification of the network to the target y",
and measures the effort as the number of steps and the distortion (1/255)·√(Σ(x̃ − x)²/n).

Here a whole batch is attacked at once and each image stops at its own flip. The loss J does not
depend on Θ, so the triple-staged network's path through image space is the same for every
threshold: one run records, for each Θ, the first step at which the verdict becomes the target, and
an image stops once it has flipped at every Θ asked for (or at the step cap). Each step costs one
forward and one backward pass of the images still running; the verdict comes from the forward pass
that also gives the gradient, so there is no extra pass.

Contenders:

* direct nets: J is the cross-entropy of the 4-way softmax toward the target (None for a false
  negative), and the verdict is the arg-max;
* the triple-staged net: each class score s_c is a probability that class c is drawn correctly, so
  J = −log s_y − Σ_{c≠y} log(1 − s_c) toward an object y, and J = −Σ_c log(1 − s_c) toward None;
  the verdict is §2.1's rule at Θ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..progress import Progress, report
from . import data, nets

KINDS = ("false-positive", "false-negative")
MAX_STEPS = 1500  # Fig. 4 clips the steps at 1500
PAPER_THETAS = (0.2, 0.45, 0.7)


@dataclass(frozen=True)
class Contender:
    """A network under attack, with its verdict rule and its loss J."""

    key: str                 # "direct", "direct_params", "direct_adv" or "triple"
    net: torch.nn.Module
    thetas: tuple = (None,)  # Θ values for the triple-staged net; (None,) for a direct net

    @property
    def triple(self) -> bool:
        return isinstance(self.net, nets.TripleStaged)

    def names(self) -> list[str]:
        """One name per verdict rule: 'direct', or 'triple@0.45'."""
        return [self.key] if not self.triple else [f"{self.key}@{theta:g}" for theta in self.thetas]

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Direct nets: log-probabilities (B, 4), exact even where a softmax underflows. Triple: scores (B, 3)."""
        if self.triple:
            return self.net(x).scores
        return F.log_softmax(self.net(x)["logits"], 1)

    def probabilities(self, raw: torch.Tensor) -> torch.Tensor:
        return raw if self.triple else raw.exp()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Direct nets: softmax probabilities (B, 4). Triple: per-class scores (B, 3)."""
        return self.probabilities(self.raw(x))

    def verdicts(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, len(thetas)) class ids, 3 meaning None."""
        if not self.triple:
            return scores.argmax(1, keepdim=True)
        return torch.stack([nets.verdict(scores, theta) for theta in self.thetas], 1)

    def loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """J per image (B,) from :meth:`raw`: what one sign step descends."""
        if not self.triple:
            return F.nll_loss(raw, target, reduction="none")
        s = raw.clamp(1e-6, 1 - 1e-6)
        wanted = F.one_hot(target.clamp_max(nets.OBJECT_COUNT - 1), nets.OBJECT_COUNT).to(s)
        wanted = wanted * (target != data.NONE).to(s)[:, None]  # None: every class score wanted at 0
        return F.binary_cross_entropy(s, wanted, reduction="none").sum(1)


def net_device(net: torch.nn.Module) -> torch.device:
    return next(iter(net.parameters()), torch.empty(0)).device


def check_thetas(thetas) -> tuple:
    thetas = tuple(float(t) for t in thetas)
    if not thetas or any(not 0.0 <= t < 1.0 for t in thetas):
        raise ConfigError("Θ must lie in [0, 1): the comparator's score is a probability.")
    return thetas


def distortion(adversarial: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """§4's distortion, (1/255)·√(Σ(x̃ − x)²/n), for images in grey levels 0..255; one value per image."""
    return (adversarial - original).pow(2).flatten(1).mean(1).sqrt() / 255.0


def sign_step(levels: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """§3.2's step on grey levels: x − sign ∇J, clipped to [0, 255]."""
    return (levels - grad.sign()).clamp(0, 255)


@dataclass
class AttackOutcome:
    """Per image and per verdict rule (name): the step of the flip, its distortion, the image then."""

    names: list[str]
    target: np.ndarray            # (B,)
    steps: np.ndarray             # (B, R) int; −1: not flipped within the cap
    distortion: np.ndarray        # (B, R) float; NaN where not flipped
    excluded: np.ndarray          # (B, R) bool: wrong before the attack, left out as in Fig. 6
    images: np.ndarray            # (B, R, 64, 64) uint8, the image at its flip (the last one if none)
    max_steps: int
    original: np.ndarray = field(repr=False, default=None)  # (B, 64, 64) uint8

    def summary(self, name: str) -> dict:
        """The CLI's JSON for one verdict rule: steps and distortion quantiles over the flipped images."""
        r = self.names.index(name)
        used = ~self.excluded[:, r]
        flipped = used & (self.steps[:, r] >= 0)
        # Unflipped images count at the cap in the step quantiles (Fig. 4 clips at 1500).
        steps = np.where(self.steps[used, r] >= 0, self.steps[used, r], self.max_steps)
        dist = self.distortion[flipped, r]

        def quantiles(values):
            if len(values) == 0:
                return {"median": None, "p2": None, "p98": None}
            p2, median, p98 = np.percentile(values, [2, 50, 98])
            return {"median": float(median), "p2": float(p2), "p98": float(p98)}

        return {"steps": quantiles(steps), "distortion": quantiles(dist),
                "flipped": int(flipped.sum()), "n": int(used.sum()), "excluded": int((~used).sum())}


def run_attack(contender: Contender, x: torch.Tensor, label: torch.Tensor, target: torch.Tensor, *,
               max_steps: int = MAX_STEPS, progress: Progress | None = None, observer=None,
               every: int = 1) -> AttackOutcome:
    """Attack a batch (B, 1, 64, 64) in [0, 1] toward ``target`` (B,), each image until its own flip.

    ``label`` is the truth: an image already judged wrong (≠ label) before any step is excluded, as
    the paper filtered misclassified images out. ``observer.append`` receives, every ``every`` steps,
    ``{"step", "running", "flipped", "scores"}`` (scores of the first image, for the live page).
    """
    if max_steps < 1:
        raise ConfigError("The attack needs at least one step.")
    device = net_device(contender.net)
    original = torch.round(x.detach().to(device) * 255.0)
    levels = original.clone()
    label, target = label.to(device), target.to(device)
    names = contender.names()
    batch, rules = len(levels), len(names)
    steps = torch.full((batch, rules), -1, dtype=torch.long)
    dist = torch.full((batch, rules), float("nan"))
    excluded = torch.zeros(batch, rules, dtype=torch.bool)
    frozen = torch.zeros(batch, rules, 64, 64, dtype=torch.uint8)
    active = torch.arange(batch, device=device)
    for step in range(max_steps + 1):
        current = levels[active].requires_grad_(True)
        with torch.enable_grad():
            raw = contender.raw(current / 255.0)
            loss = contender.loss(raw, target[active]).sum()
        scores = contender.probabilities(raw.detach())
        verdicts = contender.verdicts(scores).cpu()
        rows = active.cpu()
        if step == 0:
            excluded[rows] = verdicts != label[active].cpu()[:, None]
        hit = (verdicts == target[active].cpu()[:, None]) & (steps[rows] < 0) & ~excluded[rows]
        if hit.any():
            where = hit.nonzero()
            b, r = rows[where[:, 0]], where[:, 1]
            steps[b, r] = step
            d = distortion(current.detach()[where[:, 0]], original[b.to(device)]).cpu()
            dist[b, r] = d
            frozen[b, r] = current.detach()[where[:, 0], 0].round().byte().cpu()
        finished = ((steps[rows] >= 0) | excluded[rows]).all(1)
        if observer is not None and step % every == 0:
            observer.append({"step": step, "running": int((~finished).sum()), "flipped": int((steps >= 0).sum()),
                             "scores": scores.detach()[0].cpu().tolist() if len(rows) else []})
        if step == max_steps or finished.all():
            break
        grad, = torch.autograd.grad(loss, current)
        keep = (~finished).to(device)
        levels[active[keep]] = sign_step(current.detach()[keep], grad[keep])
        active = active[keep]
        report(progress, (step + 1) / max_steps, f"step {step + 1}: {len(active)} of {batch} images still running")
    # Images that never flipped keep their last state, so a gallery can still show how far they went.
    missing = (steps < 0) & ~excluded
    if missing.any():
        b, r = missing.nonzero(as_tuple=True)
        frozen[b, r] = levels[b.to(device), 0].round().byte().cpu()
    return AttackOutcome(names=names, target=target.cpu().numpy(), steps=steps.numpy(), distortion=dist.numpy(),
                         excluded=excluded.numpy(), images=frozen.numpy(), max_steps=max_steps,
                         original=original[:, 0].byte().cpu().numpy())


def attack_targets(label: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 4: each object image toward each other object (2 attacks per image); Fig. 6: toward None.

    Returns (index into the batch, target) for every attack.
    """
    if kind not in KINDS:
        raise ConfigError(f"Unknown attack kind '{kind}': use {' or '.join(KINDS)}.")
    index = torch.arange(len(label))
    if kind == "false-negative":
        return index, torch.full_like(label, data.NONE)
    shifts = torch.arange(1, nets.OBJECT_COUNT)
    index = index.repeat_interleave(len(shifts))
    target = (label[index] + shifts.repeat(len(label))) % nets.OBJECT_COUNT
    return index, target


def snapshot(record: dict) -> np.ndarray:
    """A live record's image as a (64, 64) uint8 array."""
    return np.frombuffer(record["image"], dtype=np.uint8).reshape(data.SIZE, data.SIZE)


@dataclass(frozen=True)
class LiveResult:
    """One image attacked live: the image at each recorded step and every network's view of it."""

    attacked: str              # the contender attacked ("direct", ..., "triple")
    target: int
    flipped_at: int | None     # the step the attacked network's verdict became the target, if it did
    steps: int
    original: np.ndarray       # (64, 64) uint8
    final: np.ndarray          # (64, 64) uint8
    distortion: float


def live_attack(contenders: dict[str, Contender], attacked: str, image: torch.Tensor, target: int, *,
                max_steps: int = MAX_STEPS, snapshot_every: int = 1, progress: Progress | None = None,
                observer=None) -> LiveResult:
    """Attack one image (1, 1, 64, 64) against ``contenders[attacked]`` with §3.2's steps until it flips.

    After every step ``observer.append`` gets ``{"step", "scores": {name: [...]}, "verdicts": {name: id},
    "distortion"}`` for every contender (each verdict rule of the triple-staged net by name), and every
    ``snapshot_every`` steps (and at the end) also ``"image"``: the current image as 64·64 bytes (uint8,
    row by row; :func:`snapshot` turns it back into an array). 1 500 steps keep 6 MB.
    """
    if attacked not in contenders:
        raise ConfigError(f"Unknown network '{attacked}': use one of {', '.join(contenders)}.")
    if not 0 <= int(target) <= data.NONE:
        raise ConfigError(f"The target must be a class id from 0 to {data.NONE}.")
    chosen = contenders[attacked]
    device = net_device(chosen.net)
    original = torch.round(image.detach().to(device)[:1] * 255.0)
    levels = original.clone()
    goal = torch.tensor([int(target)], device=device)
    flipped_at, step = None, 0
    for step in range(max_steps + 1):
        current = levels.clone().requires_grad_(True)
        with torch.enable_grad():
            raw = chosen.raw(current / 255.0)
            loss = chosen.loss(raw, goal).sum()
        scores = chosen.probabilities(raw.detach())
        record = {"step": step, "distortion": float(distortion(current.detach(), original)[0]),
                  "scores": {}, "verdicts": {}}
        with torch.no_grad():
            for key, contender in contenders.items():
                s = scores.detach() if key == attacked else contender.scores(current.detach() / 255.0)
                v = contender.verdicts(s)[0]
                record["scores"][key] = [round(float(p), 5) for p in s[0]]
                for name, verdict in zip(contender.names(), v.tolist()):
                    record["verdicts"][name] = int(verdict)
        done = all(record["verdicts"][name] == int(target) for name in chosen.names())
        if done and flipped_at is None:
            flipped_at = step
        if observer is not None:
            if step % snapshot_every == 0 or done or step == max_steps:
                record["image"] = current.detach()[0, 0].round().byte().cpu().numpy().tobytes()
            observer.append(record)
        if done or step == max_steps:
            break
        grad, = torch.autograd.grad(loss, current)
        levels = sign_step(current.detach(), grad)
        report(progress, (step + 1) / max_steps, f"step {step + 1}, distortion {record['distortion']:.4f}")
    final = levels[0, 0].round().byte().cpu().numpy()
    return LiveResult(attacked, int(target), flipped_at, step, original[0, 0].byte().cpu().numpy(), final,
                      float(distortion(levels, original)[0]))

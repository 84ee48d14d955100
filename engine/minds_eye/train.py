"""Training each network of §3.1, resumable from a checkpoint, with a CSV log.

* ``direct``: cross-entropy over the 4 classes on all samples.
* ``direct-params``: the same plus the 3-angle regression (Caffe's EuclideanLoss, ½‖·‖²), masked
  for None, whose parameters the paper left undefined.
* ``direct-adv``: beyond the paper, Madry et al.'s PGD adversarial training of the direct net
  (ℓ∞ ball ε = 8/255, random start, ``pgd_steps`` steps of size 2.5·ε/steps), trained on the
  adversarial images only, starting from the direct net's weights.
* ``estimator``: stage 1, on positive samples only, ½‖angles − truth‖² with the true class planes.
* ``projector``: stage 2, from (class, angles) to the renderer's image (premultiplied) and alpha.
* ``comparator``: stage 3, on stage 1–2 outputs: balanced same/different pairs, loss on every 10×10
  patch whose projected alpha covers ≥ 1 % (the paper samples such patches; we use all of them).

Deviations, chosen for a CPU budget of minutes rather than a GPU's hours: Adam (lr 1e-3, ×0.1 at 70 %
of the steps) instead of SGD with momentum, PyTorch's default initialisation, and ~10⁵ samples seen
per stage instead of the paper's 40–500 k iterations. The data is generated on the fly, each sample
a pure function of its index, so a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..errors import ConfigError
from ..images import quantize
from ..progress import Progress, report
from . import data, nets, weights

NET_KEYS = ("direct", "direct-params", "direct-adv", "estimator", "projector", "comparator")
TRIPLE_STAGES = ("estimator", "projector", "comparator")
LOG_FIELDS = ("step", "seen", "loss", "accuracy", "seconds", "images_per_s")
TRAIN_SIZE = 160_000  # the paper's 16·10⁴ training samples (4·10⁴ per class), generated on demand
PGD_EPSILON = 8 / 255


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch: int = 64
    lr: float = 1e-3
    decay_at: float = 0.7
    seed: int = 0
    checkpoint_every: int = 100
    pgd_steps: int = 3

    def check(self) -> None:
        if self.steps < 1 or self.batch < 2:
            raise ConfigError("Training needs at least 1 step and a batch of at least 2.")


DEFAULT_STEPS = {"direct": 1500, "direct-params": 1500, "direct-adv": 500, "estimator": 1500,
                 "projector": 2500, "comparator": 800}


def default_settings(net: str) -> TrainSettings:
    check_net(net)
    return TrainSettings(steps=DEFAULT_STEPS[net])


def check_net(net: str) -> None:
    if net not in NET_KEYS:
        raise ConfigError(f"Unknown network '{net}': use one of {', '.join(NET_KEYS)} (or 'triple').")


def build(net: str) -> torch.nn.Module:
    check_net(net)
    if net in ("direct", "direct-adv"):
        return nets.Direct()
    if net == "direct-params":
        return nets.Direct(with_params=True)
    return {"estimator": nets.Estimator, "projector": nets.Projector, "comparator": nets.Comparator}[net]()


def batch_indices(settings: TrainSettings, step: int, positive_only: bool = False) -> np.ndarray:
    """The data indices of ``step``: epochs are seeded permutations of the training set."""
    size = TRAIN_SIZE // 4 * 3 if positive_only else TRAIN_SIZE
    picked, first = [], step * settings.batch
    while sum(map(len, picked)) < settings.batch:  # a batch may straddle two epochs
        epoch, offset = divmod(first, size)
        order = np.random.default_rng([settings.seed, epoch]).permutation(size)
        picked.append(order[offset:offset + settings.batch - sum(map(len, picked))])
        first += len(picked[-1])
    picked = np.concatenate(picked)
    if positive_only:  # map 0..3N/4 onto the indices whose class (index % 4) is an object
        picked = picked // 3 * 4 + picked % 3
    return picked


def checkpoint_path(out: Path, net: str) -> Path:
    return Path(out) / f"{net}.ckpt"


@dataclass
class Stepper:
    """One net's training: model, optimiser and the loss of a step."""

    net: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: TrainSettings
    helpers: dict

    def loss(self, step: int) -> tuple[torch.Tensor, float]:
        net, s = self.net, self.settings
        if net == "estimator":
            batch = data.make_batch("train", batch_indices(s, step, positive_only=True), s.seed)
            predicted = self.model.forward_raw(batch.image, batch.label)
            loss = 0.5 * (predicted - batch.angles).pow(2).sum(1).mean()
            return loss, float((predicted.detach() - batch.angles).abs().mean())
        if net == "projector":
            batch = data.make_batch("train", batch_indices(s, step, positive_only=True), s.seed)
            image, alpha = self.model(batch.label, batch.angles)
            target = batch.grey * batch.alpha
            loss = F.mse_loss(image, target) + F.binary_cross_entropy(alpha, batch.alpha)
            return loss, float((image.detach() - target).abs().mean())
        batch = data.make_batch("train", batch_indices(s, step), s.seed)
        if net == "comparator":
            return comparator_loss(self.model, batch, self.helpers, step, s.seed)
        x = batch.image
        if net == "direct-adv":
            x = pgd(self.model, x, batch.label, PGD_EPSILON, s.pgd_steps)
        out = self.model(x)
        loss = F.cross_entropy(out["logits"], batch.label)
        if "angles" in out:
            positive = batch.positive.float()
            squared = 0.5 * (out["angles"] - batch.angles).pow(2).sum(1)
            loss = loss + (squared * positive).sum() / positive.sum().clamp_min(1)
        return loss, float((out["logits"].detach().argmax(1) == batch.label).float().mean())


def pgd(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, epsilon: float, steps: int) -> torch.Tensor:
    """Madry et al.'s PGD in the ℓ∞ ball (random start), returned detached and 8-bit quantised."""
    was_training = model.training
    model.eval()
    delta = (torch.rand_like(x) * 2 - 1) * epsilon
    step = 2.5 * epsilon / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1))["logits"], label)
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-epsilon, epsilon)
    model.train(was_training)
    return quantize(x + delta)


def comparator_pairs(batch: data.Batch, step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which class to project for each query, and whether that pair is 'the same' (balanced 50/50)."""
    rng = np.random.default_rng([seed, 7, step])
    label = batch.label.numpy()
    want_same = rng.random(len(label)) < 0.5
    other = rng.integers(0, nets.OBJECT_COUNT - 1, len(label))
    projected = np.where(label == data.NONE, rng.integers(0, nets.OBJECT_COUNT, len(label)),
                         np.where(want_same, label, (label + 1 + other) % nets.OBJECT_COUNT))
    same = (projected == label)
    # None queries can only be 'different': draw the object queries' 'same' share up to one half.
    return torch.as_tensor(projected), torch.as_tensor(same, dtype=torch.float32)


def comparator_loss(model: nets.Comparator, batch: data.Batch, helpers: dict, step: int, seed: int):
    projected, same = comparator_pairs(batch, step, seed)
    with torch.no_grad():
        angles = helpers["estimator"].estimate(batch.image, projected)
        image, alpha = helpers["projector"](projected, angles)
    similarity = model.similarity(batch.image, image, alpha)
    valid = (F.avg_pool2d(alpha, nets.PATCH, stride=1) >= 0.01).float()
    target = same[:, None, None, None].expand_as(similarity)
    per_patch = F.binary_cross_entropy(similarity, target, reduction="none") * valid
    loss = per_patch.sum() / valid.sum().clamp_min(1)
    with torch.no_grad():
        score = (similarity * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
        accuracy = float(((score > 0.5).float() == same).float().mean())
    return loss, accuracy


def stage_helpers(net: str, out: Path) -> dict:
    """The comparator learns on the outputs of stages 1–2: the ones in ``out`` if trained there, else the shipped ones."""
    if net != "comparator":
        return {}
    found = {}
    for stage in ("estimator", "projector"):
        ckpt = checkpoint_path(out, stage)
        model = build(stage)
        if ckpt.exists():
            model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
        else:
            model.load_state_dict(weights.load_state(stage))
        found[stage] = model.eval()
    return found


def initial_state(net: str, out: Path) -> dict | None:
    """direct-adv starts from the direct net (trained in ``out``, else shipped)."""
    if net != "direct-adv":
        return None
    ckpt = checkpoint_path(out, "direct")
    if ckpt.exists():
        return torch.load(ckpt, weights_only=True)["model"]
    return weights.load_state("direct")


def lr_at(settings: TrainSettings, step: int) -> float:
    return settings.lr * (0.1 if step >= math.ceil(settings.decay_at * settings.steps) else 1.0)


@dataclass(frozen=True)
class TrainOutcome:
    net: str
    steps: int
    seconds: float
    checkpoint: Path
    log: Path
    last_loss: float
    last_accuracy: float


def train(net: str, out: str | Path, settings: TrainSettings | None = None, *, resume: bool = True,
          progress: Progress | None = None, observer=None) -> TrainOutcome:
    """Train ``net`` into ``out/<net>.ckpt`` (+ ``<net>-log.csv``); resume from the checkpoint there.

    ``observer.append`` receives each logged row (a dict with :data:`LOG_FIELDS`).
    """
    settings = settings or default_settings(net)
    settings.check()
    check_net(net)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    model = build(net)
    start = initial_state(net, out)
    if start is not None:
        model.load_state_dict(start)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    ckpt, log = checkpoint_path(out, net), out / f"{net}-log.csv"
    step, seconds = 0, 0.0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = int(state["step"]), float(state["seconds"])
        torch.set_rng_state(state["torch_rng"])
    elif log.exists():
        log.unlink()
    _truncate_log(log, step)
    stepper = Stepper(net, model, optimizer, settings, stage_helpers(net, out))
    model.train()
    loss_value = accuracy = float("nan")
    began, window = time.perf_counter(), []
    while step < settings.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(settings, step)
        tick = time.perf_counter()
        loss, accuracy = stepper.loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        window.append(time.perf_counter() - tick)
        if step % 20 == 0 or step == settings.steps:
            elapsed = seconds + time.perf_counter() - began
            row = {"step": step, "seen": step * settings.batch, "loss": round(loss_value, 5),
                   "accuracy": round(accuracy, 4), "seconds": round(elapsed, 1),
                   "images_per_s": round(settings.batch * len(window) / sum(window), 1)}
            window = []
            _append_log(log, row)
            if observer is not None:
                observer.append(row)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _save(ckpt, net, model, optimizer, step, seconds + time.perf_counter() - began, settings)
        report(progress, step / settings.steps, f"{net}: step {step}/{settings.steps}, loss {loss_value:.4f}")
    total = seconds + time.perf_counter() - began
    return TrainOutcome(net, step, total, ckpt, log, loss_value, accuracy)


def _save(path: Path, net: str, model, optimizer, step: int, seconds: float, settings: TrainSettings) -> None:
    state = {"net": net, "step": step, "seconds": seconds, "settings": asdict(settings),
             "model": model.state_dict(), "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    with io.atomic_path(path) as temporary:
        torch.save(state, temporary)


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows beyond the checkpoint's step (written after it by a run that then died)."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
    with io.atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_log(path: Path) -> list[dict]:
    with Path(path).open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]

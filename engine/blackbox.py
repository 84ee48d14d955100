"""A black-box attack through a substitute: Papernot, McDaniel, Goodfellow, Jha, Celik & Swami,
"Practical Black-Box Attacks against Machine Learning" (ASIA CCS 2017); the lecture's "Black Box
Adversarial Attacks" slide ("learn substitute for target network using synthetic input data, use
substitute network to craft adversarial examples").

The target ("oracle" Õ) is the Mind's Eye direct classifier (:mod:`engine.minds_eye`: 64x64 grey
renders of a monkey, a penguin, an aeroplane or nothing over photo crops), reached only through
:class:`Oracle`, which answers a batch of images with their top-1 labels and counts the queries.

* **Alg. 1** (substitute training): S_0 is a small set of renders the attacker owns, from the data's
  ``train`` split under a seed of its own (the evaluation renders are the ``test`` split's). For
  rho = 0 .. max_rho - 1: label S_rho with the oracle, train the substitute F on it, then
  S_{rho+1} = S_rho U {x + lambda_rho sgn(J_F[Õ(x)]) : x in S_rho}, clipped to [0, 1]. J_F[Õ(x)] is
  the gradient of F's output for the oracle's label; its sign is taken from the log-softmax, which
  has the probability's sign and does not underflow. lambda = 0.1 (Papernot's); with ``tau`` > 0 it
  flips sign every tau substitute epochs (their sec. 5 "periodic step size", tau = 3). Each new point
  is labelled once, so the queries are |S_0| + sum of the new points = |S_{max_rho - 1}|; the last
  augmentation of Alg. 1 would never be labelled and is not made.
* **Sec. 4.1** (crafting): FGSM on the substitute, x + eps sgn(grad_x of F's loss), away from the
  substitute's own label (as cleverhans' tutorial does: the attacker does not spend queries on the
  images it attacks), in whole 8-bit levels (eps = round(255 eps) levels), for held-out renders that
  the oracle classifies correctly. The transfer rate is the share of them the oracle then gets wrong.

Papernot used eps = 0.3 on MNIST, whose digits are near-binary strokes on black; on these renders
(natural photo backgrounds, the objects' shading a few tens of levels deep) 0.3 = 77 levels
would smear the object itself, so the default is eps = 0.1 (26 levels), and the result carries the
whole curve over :data:`CURVE_EPSILONS` beside two baselines at the same eps: white-box FGSM with
the oracle's own gradient (the most one step can do) and random-sign noise (what any change of that
size does).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import lab
from .errors import ConfigError
from .progress import Progress, report

TARGETS = {"direct": "direct", "direct-adv": "direct_adv"}  # oracle name -> key of weights.contenders()
TARGET_LABELS = {"direct": "Mind's Eye direct classifier", "direct-adv": "Mind's Eye direct classifier, adversarially trained (PGD)"}
S0_SPLIT, S0_SEED = "train", 1  # the attacker's own renders: not the evaluation's split, not the training seed
EVAL_SPLIT, EVAL_SEED = "test", 0  # the renders the attack is measured on (Table 1's test split)
CURVE_EPSILONS = (0.02, 0.05, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class BlackboxConfig:
    """Settings of Alg. 1 and the crafting, with Papernot et al.'s defaults where they apply."""

    target: str = "direct"  # the oracle: "direct" or "direct-adv"
    initial: int = 100  # |S_0| (Papernot: 150 MNIST test images)
    substitute_epochs: int = 6  # max rho (Papernot: 6)
    lam: float = 0.1  # lambda, the augmentation step (Papernot: 0.1)
    tau: int = 0  # > 0: lambda changes sign every tau substitute epochs (Papernot sec. 5: 3); 0: plain Alg. 1
    train_epochs: int = 3  # passes over S_rho per substitute epoch (the substitute carries on from the last)
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam
    epsilon: float = 0.1  # FGSM's L-inf radius in [0, 1] units, rounded to whole levels
    n_eval: int = 100  # held-out renders (a quarter of each class)
    curve_epsilons: tuple[float, ...] = CURVE_EPSILONS  # the transfer-against-epsilon curve (epsilon is added)
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def epsilon_levels(self) -> int:
        return int(round(self.epsilon * 255))

    def check(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"Unknown target '{self.target}'; use {' or '.join(TARGETS)}.")
        if self.initial < 4 or self.n_eval < 4:
            raise ConfigError("The initial set and the evaluation set need at least 4 images each.")
        if not 1 <= self.substitute_epochs <= 10:
            raise ConfigError("The substitute epochs must be between 1 and 10 (the set doubles each epoch).")
        if self.train_epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError("Training needs at least one pass, a batch of at least 1 and a positive learning rate.")
        if not 0 < self.lam <= 1:
            raise ConfigError("Lambda must be above 0 and at most 1.")
        if self.tau < 0:
            raise ConfigError("Tau must be 0 (off) or positive.")
        if not all(1 <= round(e * 255) <= 255 for e in (self.epsilon, *self.curve_epsilons)):
            raise ConfigError("Epsilon must be at least one 8-bit level (0.004) and at most 1.")


class Oracle:
    """The target as the attacker sees it: images in, top-1 labels out, and a count of the images asked.

    Nothing else is exposed -- no logits, no probabilities, no gradients, no network."""

    __slots__ = ("_answer", "queries")

    def __init__(self, net: nn.Module):
        def answer(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return net(x.detach().float())["logits"].argmax(1).cpu()

        self._answer = answer
        self.queries = 0

    def __call__(self, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """The oracle's label (int64, on the CPU) of each image (N, 1, 64, 64) in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ConfigError(f"The oracle takes grey images (N, 1, 64, 64), not {tuple(x.shape)}.")
        self.queries += len(x)
        return torch.cat([self._answer(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
            if len(x) else torch.zeros(0, dtype=torch.long)


class Substitute(nn.Module):
    """The attacker's own small CNN (after Papernot's MNIST substitute: two convolutions, two hidden
    layers) for 64x64 grey images: three 3x3 convolutions each halving the size, then 128 units."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.5) / 0.25))


def make_substitute(seed: int) -> Substitute:
    """A fresh substitute with weights drawn from ``seed`` (the global random state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Substitute()


def train_substitute(substitute: nn.Module, x: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                     *, epochs: int, batch_size: int, generator: torch.Generator,
                     progress: Progress | None = None) -> float:
    """``epochs`` shuffled passes of cross-entropy training on (x, labels); the final training agreement."""
    substitute.train()
    for done in range(epochs):
        report(progress, done / epochs, f"training pass {done + 1} of {epochs} over {len(x)} images")
        order = torch.randperm(len(x), generator=generator)
        for first in range(0, len(x), batch_size):
            rows = order[first:first + batch_size]
            loss = F.cross_entropy(substitute(x[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    substitute.eval()
    return agreement(predict(substitute, x), labels)


@torch.no_grad()
def predict(substitute: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([substitute(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def agreement(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The share of images on which two labellings agree."""
    a, b = np.asarray(a), np.asarray(b)
    return float((a == b).mean()) if a.size else float("nan")


def jacobian_sign(substitute: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sgn(J_F[Õ(x)]): the sign of the gradient of the substitute's output for each image's oracle label
    (taken through log-softmax: the same sign as the probability's, without underflow)."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        chosen = F.log_softmax(substitute(leaf), 1).gather(1, labels.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(chosen, leaf)
    return grad.sign()


def jacobian_augment(substitute: nn.Module, x: torch.Tensor, labels: torch.Tensor, lam: float, *,
                     clip: bool = True) -> torch.Tensor:
    """Alg. 1, line 5's new points x + lambda sgn(J_F[Õ(x)]), one per point of ``x`` (clipped to [0, 1])."""
    new = x + lam * jacobian_sign(substitute, x, labels)
    return new.clamp(0, 1) if clip else new


def step_size(lam: float, rho: int, tau: int) -> float:
    """lambda_rho: Papernot's periodic step size lambda (-1)^floor(rho / tau), or plain lambda when tau = 0."""
    return lam * (-1) ** (rho // tau) if tau > 0 else lam


def fgsm_levels(x: torch.Tensor, direction: torch.Tensor, epsilon_levels: int) -> torch.Tensor:
    """x + eps sgn(direction) in whole 8-bit levels, clipped to [0, 255]: the image stays on the grid."""
    return (torch.round(x * 255) + epsilon_levels * direction.sign()).clamp(0, 255) / 255


def loss_sign(forward, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sgn of the cross-entropy's gradient away from ``labels`` (FGSM's direction), for a logits function."""
    _, grad = lab.loss_gradient(forward, x, labels)
    return grad.sign()


def transfer_rate(labels: np.ndarray, oracle_on_adversarial: np.ndarray) -> float:
    """The share of adversarial images the oracle labels differently from the (correct) clean label."""
    labels, said = np.asarray(labels), np.asarray(oracle_on_adversarial)
    return float((labels != said).mean()) if labels.size else float("nan")


@dataclass(frozen=True)
class BlackboxResult:
    """One black-box run against one oracle, and its baselines at the same epsilon."""

    target: str
    target_label: str
    config: dict
    queries: int  # oracle queries of the attack (= |S_{max_rho - 1}|): each point of the last S labelled once
    set_sizes: tuple[int, ...]  # |S_rho| for rho = 0 .. max_rho - 1
    train_agreement: tuple[float, ...]  # the substitute on S_rho after training, per rho
    eval_agreement: tuple[float, ...]  # the substitute vs the oracle on the evaluation renders, per rho
    substitute_agreement: float  # the final substitute vs the oracle on the evaluation renders
    n_eval: int
    oracle_accuracy: float  # the oracle on the evaluation renders (true labels)
    epsilon: float
    epsilon_levels: int
    transfer_rate: float  # substitute FGSM: the share of correctly classified renders the oracle now gets wrong
    whitebox_rate: float  # FGSM with the oracle's own gradient (white box), same images and epsilon
    random_rate: float  # random-sign noise of the same epsilon
    curve_epsilons: tuple[float, ...]
    curve_transfer: np.ndarray
    curve_whitebox: np.ndarray
    curve_random: np.ndarray
    labels: np.ndarray  # (M,) true label of each correctly classified evaluation render
    said: np.ndarray  # (M,) the oracle's label of its substitute-FGSM adversarial at epsilon
    original: np.ndarray  # (M, 64, 64) uint8
    adversarial: np.ndarray  # (M, 64, 64) uint8, substitute FGSM at epsilon
    seconds: float
    evaluation_queries: int = 0  # the oracle's answers used only to measure (not part of the attack)
    note: str = field(default="")


def _nets(folder):
    from .minds_eye import weights

    return weights.contenders(folder)


def run_blackbox(config: BlackboxConfig = BlackboxConfig(), *, folder: str | None = None,
                 progress: Progress | None = None, use_cache: bool = True) -> BlackboxResult:
    """Papernot et al.'s attack on a Mind's Eye network (Alg. 1, then FGSM on the substitute), measured on
    held-out renders; cached by (target, weights, settings). Seeded: the same settings give the same numbers."""
    from .minds_eye import data, evaluate

    if not isinstance(config, BlackboxConfig):
        raise ConfigError(f"The black-box attack takes a BlackboxConfig, not a {type(config).__name__}.")
    config.check()
    folder_dir = lab.result_dir("blackbox", config.target, evaluate.weights_digest(folder), config.as_dict())
    if use_cache and (stored := lab.load_json(folder_dir)) is not None:
        result = _from_record(stored, folder_dir)
        if result is not None:
            return result
    began = time.perf_counter()
    net = _nets(folder)[TARGETS[config.target]]
    oracle = Oracle(net)
    generator = torch.Generator().manual_seed(config.seed)
    substitute = make_substitute(config.seed)
    optimizer = torch.optim.Adam(substitute.parameters(), lr=config.learning_rate)

    # Measuring needs the oracle's answers on the evaluation renders; they are not part of the attack.
    judge = Oracle(net)
    evaluation = data.make_batch(EVAL_SPLIT, range(config.n_eval), EVAL_SEED)
    eval_x, eval_truth = evaluation.image, evaluation.label
    eval_oracle = judge(eval_x)

    # Alg. 1
    s = data.make_batch(S0_SPLIT, range(config.initial), S0_SEED).image
    labels = oracle(s)
    sizes, train_agree, eval_agree = [], [], []
    rounds = config.substitute_epochs
    cost = [2 ** rho for rho in range(rounds)]
    for rho in range(rounds):
        def part(fraction, message, rho=rho, size=len(s)):
            return progress(0.9 * (sum(cost[:rho]) + fraction * cost[rho]) / sum(cost),
                            f"substitute epoch {rho + 1} of {rounds} ({size} images, {oracle.queries} queries): "
                            f"{message}") if progress else None

        sizes.append(len(s))
        train_agree.append(train_substitute(substitute, s, labels, optimizer, epochs=config.train_epochs,
                                            batch_size=config.batch_size, generator=generator, progress=part))
        eval_agree.append(agreement(predict(substitute, eval_x), eval_oracle))
        if rho < rounds - 1:  # the augmentation after the last epoch would never be labelled
            new = jacobian_augment(substitute, s, labels, step_size(config.lam, rho, config.tau))
            s, labels = torch.cat([s, new]), torch.cat([labels, oracle(new)])
    report(progress, 0.9, f"substitute trained: {oracle.queries} queries; crafting")

    # Crafting on held-out renders the oracle gets right
    correct = (eval_oracle == eval_truth).numpy()
    x, truth = eval_x[torch.as_tensor(correct)], eval_truth[torch.as_tensor(correct)]
    substitute.requires_grad_(False)
    substitute_direction = loss_sign(substitute, x, predict(substitute, x))
    whitebox_direction = loss_sign(lambda images: net(images)["logits"], x, truth)
    noise = torch.randint(0, 2, x.shape, generator=generator).float() * 2 - 1
    epsilons = tuple(sorted({*map(float, config.curve_epsilons), config.epsilon}))
    curves = {"transfer": [], "whitebox": [], "random": []}
    said = None
    for e in epsilons:
        levels = int(round(e * 255))
        for name, direction in (("transfer", substitute_direction), ("whitebox", whitebox_direction),
                                ("random", noise)):
            answer = judge(fgsm_levels(x, direction, levels)).numpy()
            curves[name].append(transfer_rate(truth.numpy(), answer))
            if name == "transfer" and e == config.epsilon:
                said = answer
    at = epsilons.index(config.epsilon)
    to_uint8 = lambda t: torch.round(t[:, 0] * 255).to(torch.uint8).numpy()  # noqa: E731
    result = BlackboxResult(
        target=config.target, target_label=TARGET_LABELS[config.target], config=config.as_dict(),
        queries=oracle.queries, set_sizes=tuple(sizes), train_agreement=tuple(train_agree),
        eval_agreement=tuple(eval_agree), substitute_agreement=eval_agree[-1], n_eval=config.n_eval,
        oracle_accuracy=float(correct.mean()), epsilon=config.epsilon, epsilon_levels=config.epsilon_levels,
        transfer_rate=curves["transfer"][at], whitebox_rate=curves["whitebox"][at], random_rate=curves["random"][at],
        curve_epsilons=epsilons, curve_transfer=np.asarray(curves["transfer"]),
        curve_whitebox=np.asarray(curves["whitebox"]), curve_random=np.asarray(curves["random"]),
        labels=truth.numpy(), said=said, original=to_uint8(x),
        adversarial=to_uint8(fgsm_levels(x, substitute_direction, config.epsilon_levels)),
        seconds=time.perf_counter() - began, evaluation_queries=judge.queries, note=_note(config))
    _save(result, folder_dir)
    report(progress, 1.0, f"transfer rate {result.transfer_rate:.0%} after {result.queries} queries")
    return result


def _note(config: BlackboxConfig) -> str:
    return (f"The attacker sees only the oracle's top-1 label. Its substitute learned from {config.initial} renders of "
            f"its own, doubled {config.substitute_epochs - 1} times by Jacobian augmentation (lambda = {config.lam}); "
            f"FGSM on the substitute at eps = {config.epsilon} ({config.epsilon_levels} levels) attacks held-out "
            f"renders the oracle classifies correctly. The white-box row uses the oracle's own gradient; the random "
            f"row adds noise of the same size. These are 64x64 grey renders (the Mind's Eye data), not photos.")


_ARRAYS = ("curve_transfer", "curve_whitebox", "curve_random", "labels", "said", "original", "adversarial")


def _save(result: BlackboxResult, folder) -> None:
    from .io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "arrays.npz", suffix=".npz") as temporary:
        np.savez_compressed(temporary, **{name: getattr(result, name) for name in _ARRAYS})
    record = {k: v for k, v in asdict(result).items() if k not in _ARRAYS}
    lab.save_json(folder, record)


def _from_record(record: dict, folder) -> BlackboxResult | None:
    try:
        with np.load(folder / "arrays.npz") as stored:
            arrays = {name: stored[name] for name in _ARRAYS}
    except (OSError, KeyError, ValueError):
        return None
    tuples = ("set_sizes", "train_agreement", "eval_agreement", "curve_epsilons")
    return BlackboxResult(**{k: tuple(v) if k in tuples else v for k, v in record.items()}, **arrays)

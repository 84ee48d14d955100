"""Minimal perturbations: the smallest change (in L2) that changes a label.

* :func:`deepfool` -- Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool" (CVPR 2016), Alg. 2 (the
  multi-class case), batched. At each iteration the classifier is linearised around the current
  image and the image moves onto the nearest linearised boundary among the ``candidates`` most
  likely classes; the loop stops for each image as soon as its label changes.
* :func:`lbfgs` -- Szegedy et al., "Intriguing properties of neural networks" (ICLR 2014), sec. 4.1:
  minimise ``c |r|^2 + loss_f(x + r, l)`` subject to ``x + r`` in [0, 1] with box-constrained
  L-BFGS, searching over ``c`` for the smallest perturbation that still changes the label.

The lecture (shared/papers/lecture-visualizing-and-fooling-convnets.txt, "How to Find Adversarial
Samples?"): "find perturbation r minimizing |r|_2 such that x + r is misclassified and all values of
x + r are in the valid range ... can be done using L-BFGS".

Both take ``forward``, a :class:`~engine.models.ModelHandle` or any callable images -> logits, and
images (N, 3, H, W) in [0, 1]. Results hold detached tensors on the images' device (the registry
entries in :mod:`engine.attacks` turn them into numpy). Images must be independent in the forward
pass (eval mode), so that a gradient of a sum over the batch is each image's own gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError
from .models import ModelHandle
from .progress import Progress, report

Forward = Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] -> logits


def _forward(forward: Forward | ModelHandle) -> Forward:
    return forward.logits if isinstance(forward, ModelHandle) else forward


def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"{what} works on a batch of images shaped (N, 3, H, W), not {shape}.")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


# ---------------------------------------------------------------------------------------------
# DeepFool (Moosavi-Dezfooli et al. 2016)


@dataclass(frozen=True)
class DeepFoolResult:
    """DeepFool on a batch. ``perturbation`` is ``(1 + overshoot) r_tot`` (before clamping);
    ``adversarial`` is ``clamp(x + perturbation, 0, 1)``, the image whose label is ``final``.
    ``iterations`` counts the steps each image took (0 if it never moved); ``norms`` is the L2 norm
    of ``perturbation`` in [0, 1] units (x 255 for 8-bit levels)."""

    perturbation: torch.Tensor  # (N, 3, H, W)
    adversarial: torch.Tensor  # (N, 3, H, W) in [0, 1]
    iterations: torch.Tensor  # (N,) long
    original: torch.Tensor  # (N,) long: the clean top-1
    final: torch.Tensor  # (N,) long: top-1 of ``adversarial``
    flipped: torch.Tensor  # (N,) bool: final != original
    norms: torch.Tensor  # (N,) float


def deepfool(forward: Forward | ModelHandle, x: torch.Tensor, *, candidates: int = 10, overshoot: float = 0.02,
             max_iter: int = 50, progress: Progress | None = None) -> DeepFoolResult:
    """Multi-class DeepFool (Alg. 2 of the paper, as its reference code runs it), batched.

    The candidate classes are each image's ``candidates`` most likely by its clean logits (the
    original class among them). Each iteration makes one forward pass of the images whose label
    has not changed yet and one backward pass per candidate class (when some images of a batch
    have just changed, a second forward pass of the others, cheaper than k backward passes through
    the flipped ones), then for each image
    ``w_k = grad f_k - grad f_orig``, ``f'_k = f_k - f_orig``, ``l = argmin_k |f'_k| / |w_k|_2`` and
    ``r_i = (|f'_l| / |w_l| + 1e-4) w_l / |w_l|`` (the reference code's 1e-4 nudge, an L2 distance),
    ``r_tot += r_i``. The image tested and linearised at each iteration is
    ``clamp(x + (1 + overshoot) r_tot, 0, 1)``. An image stops when its top-1 (over all classes)
    changes, or after ``max_iter`` steps.
    """
    _check_images(x, "DeepFool")
    if candidates < 2:
        raise ConfigError("DeepFool needs at least 2 candidate classes (the image's own and one other).")
    if max_iter < 1:
        raise ConfigError("DeepFool needs at least 1 iteration.")
    if overshoot < 0:
        raise ConfigError("The overshoot cannot be negative.")
    with torch.inference_mode(False), torch.enable_grad():  # gradients even under a caller's no_grad
        return _deepfool(_forward(forward), _plain(x), candidates, overshoot, max_iter, progress)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached, as a tensor autograd can use (a copy when it was made under inference_mode)."""
    return x.detach().clone() if x.is_inference() else x.detach()


def _deepfool(forward: Forward, x: torch.Tensor, candidates: int, overshoot: float, max_iter: int,
              progress: Progress | None) -> DeepFoolResult:
    n = x.shape[0]
    scale = 1.0 + overshoot
    r_tot = torch.zeros_like(x)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    original = torch.zeros(n, dtype=torch.long, device=x.device)
    final = torch.zeros(n, dtype=torch.long, device=x.device)
    classes: torch.Tensor | None = None  # (N, k) candidate ids, the original class first
    active = torch.arange(n, device=x.device)  # images whose label has not changed yet
    for step in range(max_iter + 1):
        report(progress, step / (max_iter + 1), f"DeepFool iteration {step}: {len(active)} of {n} images unchanged")
        leaf = (x[active] + scale * r_tot[active]).clamp(0, 1).requires_grad_(True)
        logits = forward(leaf)
        top1 = logits.detach().argmax(1)
        if classes is None:  # the clean forward pass picks the candidates
            k = min(candidates, logits.shape[1])
            if k < 2:
                raise ConfigError("DeepFool needs a classifier with at least 2 classes.")
            classes = logits.detach().topk(k, dim=1).indices
            original = classes[:, 0].clone()
            final = original.clone()
        final[active] = top1
        changed = top1 != original[active]
        if step == max_iter:
            break
        keep = ~changed
        kept = int(keep.sum())
        if kept == 0:
            break
        active = active[keep]
        leaf_rows = None
        if kept < len(keep):
            # k backward passes through the whole batch would pay for the flipped images too: a
            # second forward pass of the kept ones costs less (a backward is about two forwards)
            if 2 * classes.shape[1] * (len(keep) - kept) > kept:
                leaf = leaf.detach()[keep].requires_grad_(True)
                logits = forward(leaf)
            else:
                logits, leaf_rows = logits[keep], keep.nonzero().squeeze(1)
        scores = logits.gather(1, classes[active])  # (n, k)
        grads = []
        for j in range(scores.shape[1]):
            (grad,) = torch.autograd.grad(scores[:, j].sum(), leaf, retain_graph=j < scores.shape[1] - 1)
            grads.append(grad if leaf_rows is None else grad[leaf_rows])
        scores = scores.detach()
        w = torch.stack(grads[1:], 1) - grads[0].unsqueeze(1)  # (n, k-1, 3, H, W)
        f = scores[:, 1:] - scores[:, :1]  # (n, k-1)
        w_norm = w.flatten(2).norm(dim=2)  # (n, k-1)
        distance = f.abs() / w_norm
        distance = torch.where(w_norm > 0, distance, torch.full_like(distance, math.inf))
        nearest = distance.argmin(1)
        rows = torch.arange(len(active), device=x.device)
        w_l, w_l_norm, d_l = w[rows, nearest], w_norm[rows, nearest], distance[rows, nearest]
        movable = torch.isfinite(d_l)  # a zero gradient difference gives no direction to move in
        step_size = torch.where(movable, (d_l + 1e-4) / w_l_norm.clamp_min(1e-30), torch.zeros_like(d_l))
        r_tot[active] += step_size.view(-1, 1, 1, 1).to(x.dtype) * w_l
        iterations[active] += 1
    perturbation = scale * r_tot
    adversarial = (x + perturbation).clamp(0, 1)
    report(progress, 1.0, f"DeepFool: {int((final != original).sum())} of {n} labels changed")
    return DeepFoolResult(perturbation=perturbation, adversarial=adversarial, iterations=iterations,
                          original=original, final=final, flipped=final != original, norms=_flat_norm(perturbation))


# ---------------------------------------------------------------------------------------------
# Box-constrained L-BFGS (Szegedy et al. 2014)


@dataclass(frozen=True)
class LBFGSResult:
    """Szegedy et al.'s attack on a batch, every image on the 8-bit grid.

    ``adversarial`` is what a PNG would hold; ``perturbation = adversarial - x``; ``flipped`` says
    whether the *rounded* image has the wanted label (``target``, or any label but ``original``
    when untargeted). ``c`` is the penalty weight of the reported solution (NaN when no ``c``
    tried changed the label); ``evaluations`` counts objective evaluations (one forward and one
    backward pass each); ``norms`` is the L2 norm of ``perturbation`` in [0, 1] units and
    ``norms_levels`` the same in 8-bit levels."""

    adversarial: torch.Tensor  # (N, 3, H, W) on the 8-bit grid
    perturbation: torch.Tensor  # (N, 3, H, W)
    original: torch.Tensor  # (N,) long
    target: torch.Tensor  # (N,) long, -1 for an untargeted run
    final: torch.Tensor  # (N,) long
    flipped: torch.Tensor  # (N,) bool
    norms: torch.Tensor  # (N,) float
    norms_levels: torch.Tensor  # (N,) float
    c: torch.Tensor  # (N,) float64
    evaluations: torch.Tensor  # (N,) long


@dataclass(frozen=True)
class PenaltySolution:
    """One box-constrained L-BFGS minimisation at one ``c``: the minimiser ``image`` (floats),
    ``rounded`` (on the 8-bit grid), the L2 norm of ``rounded - x``, and whether ``rounded`` has the
    wanted label."""

    c: float
    image: torch.Tensor  # (1, 3, H, W)
    rounded: torch.Tensor  # (1, 3, H, W)
    norm: float
    label: int
    flipped: bool
    evaluations: int


def _loss(logits: torch.Tensor, original: int, target: int | None) -> torch.Tensor:
    """The paper's ``loss_f(x + r, l)``: cross-entropy towards ``target``; untargeted, the
    cross-entropy of "any class but the original", ``-log(1 - p_original)``, which lets the optimiser
    pick the nearest other class instead of forcing the runner-up."""
    logits = logits.float()
    if target is not None:
        return torch.logsumexp(logits, 1).sum() - logits[:, target].sum()
    others = torch.cat([logits[:, :original], logits[:, original + 1:]], 1)
    return (torch.logsumexp(logits, 1) - torch.logsumexp(others, 1)).sum()


def _succeeds(label: int, original: int, target: int | None) -> bool:
    return label == target if target is not None else label != original


def penalty_minimizer(forward: Forward | ModelHandle, x: torch.Tensor, c: float, *, original: int,
                      target: int | None = None, start: torch.Tensor | None = None, max_iter: int = 30,
                      on_evaluation: Callable[[], None] | None = None) -> PenaltySolution:
    """Minimise ``c |r|_2^2 + loss_f(x + r, l)`` over ``x + r`` in [0, 1] with scipy's L-BFGS-B
    (float64, gradients from one forward and one backward pass each), from ``start`` (default
    ``x``); then round to the 8-bit grid and check the label there (one more forward pass)."""
    from scipy.optimize import fmin_l_bfgs_b

    forward = _forward(forward)
    x = _plain(x[:1])
    shape, device, dtype = x.shape, x.device, x.dtype
    base = x.double().cpu().numpy().ravel()
    evaluations = 0

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evaluations
        if on_evaluation is not None:
            on_evaluation()
        evaluations += 1
        with torch.inference_mode(False), torch.enable_grad():
            leaf = torch.from_numpy(z).view(shape).to(device, dtype).requires_grad_(True)
            loss = _loss(forward(leaf), original, target)
            (grad,) = torch.autograd.grad(loss, leaf)
        r = z - base
        value = c * float(r @ r) + float(loss.detach())
        return value, 2 * c * r + grad.double().cpu().numpy().ravel()

    z0 = (x if start is None else start.detach()[:1]).double().cpu().numpy().ravel()
    # fmin_l_bfgs_b converts the bounds once; minimize(method="L-BFGS-B") converts them three times,
    # a Python loop over every value each time (seconds per call on a 224 px image)
    found, _, _ = fmin_l_bfgs_b(objective, z0, bounds=[(0.0, 1.0)] * base.size, maxiter=max_iter, maxfun=2 * max_iter)
    image = torch.from_numpy(np.clip(found, 0, 1)).view(shape).to(device, dtype)
    rounded = torch.round(image * 255) / 255
    with torch.no_grad():
        label = int(forward(rounded).argmax(1)[0])
    return PenaltySolution(c=c, image=image, rounded=rounded, norm=float(_flat_norm(rounded - x)[0]), label=label,
                           flipped=_succeeds(label, original, target), evaluations=evaluations)


def lbfgs(forward: Forward | ModelHandle, x: torch.Tensor, target: int | torch.Tensor | None = None, *,
          c_init: float = 10.0, c_steps: int = 8, max_iter: int = 30, progress: Progress | None = None) -> LBFGSResult:
    """Szegedy et al. (2014), sec. 4.1: the smallest L2 perturbation that changes the label, found as
    the minimiser of ``c |r|^2 + loss_f(x + r, l)`` in the box [0, 1] for the *largest* ``c`` whose
    minimiser still has the wanted label (a larger ``c`` weighs the perturbation more, so it ends
    smaller). ``target``: one class for every image, one per image, or None (untargeted: any label
    but the clean top-1, see :func:`_loss`).

    The search over ``c`` tries ``c_steps`` values: from ``c_init`` it multiplies (or divides) by
    10 until the outcome turns, then bisects in log space between the largest ``c`` that succeeded
    and the smallest that failed, each minimisation starting where the last successful one ended.
    Success is judged on the image rounded to the 8-bit grid, so the reported image always keeps
    its new label as a PNG; when no ``c`` succeeds, the image comes back unchanged (rounded to the
    grid) with ``flipped`` False and ``c`` NaN. Each minimisation runs at most ``max_iter`` L-BFGS
    iterations (and at most ``2 max_iter`` evaluations).
    """
    _check_images(x, "L-BFGS")
    if c_init <= 0 or c_steps < 1 or max_iter < 1:
        raise ConfigError("L-BFGS needs c above 0, at least 1 value of c and at least 1 iteration.")
    forward = _forward(forward)
    x = x.detach()
    n = x.shape[0]
    with torch.no_grad():
        original = torch.cat([forward(x[i:i + 1]).argmax(1) for i in range(n)])
    targets = _targets(target, n, x.device)
    total = n * c_steps * max_iter
    done = 0

    def tick() -> None:
        nonlocal done
        report(progress, done / total, f"L-BFGS: {done} evaluations")
        done += 1

    rows = [_search_c(forward, x[i:i + 1], int(original[i]), None if targets[i] < 0 else int(targets[i]),
                      c_init, c_steps, max_iter, tick) for i in range(n)]
    adversarial = torch.cat([row[0] for row in rows])
    perturbation = adversarial - x
    norms = _flat_norm(perturbation)
    with torch.no_grad():
        final = torch.cat([forward(adversarial[i:i + 1]).argmax(1) for i in range(n)])
    flipped = torch.tensor([_succeeds(int(final[i]), int(original[i]), None if targets[i] < 0 else int(targets[i]))
                            for i in range(n)], device=x.device)
    report(progress, 1.0, f"L-BFGS: {int(flipped.sum())} of {n} images changed")
    return LBFGSResult(adversarial=adversarial, perturbation=perturbation, original=original, target=targets,
                       final=final, flipped=flipped, norms=norms, norms_levels=norms * 255,
                       c=torch.tensor([row[1] for row in rows], dtype=torch.float64),
                       evaluations=torch.tensor([row[2] for row in rows], dtype=torch.long))


def _targets(target, n: int, device) -> torch.Tensor:
    if target is None:
        return torch.full((n,), -1, dtype=torch.long, device=device)
    if isinstance(target, torch.Tensor) and target.ndim == 1:
        if len(target) != n:
            raise ConfigError(f"L-BFGS got {len(target)} targets for {n} images.")
        return target.to(device, torch.long)
    return torch.full((n,), int(target), dtype=torch.long, device=device)


def _search_c(forward: Forward, x: torch.Tensor, original: int, target: int | None, c_init: float, c_steps: int,
              max_iter: int, tick: Callable[[], None]) -> tuple[torch.Tensor, float, int]:
    """One image's search over c: (the best image on the grid, its c or NaN, evaluations)."""
    if target is not None and target == original:  # already there: nothing to change
        return torch.round(x.clamp(0, 1) * 255) / 255, math.nan, 0
    best: PenaltySolution | None = None
    last: PenaltySolution | None = None
    low, high = None, None  # the largest c that succeeded, the smallest that failed
    c, evaluations = c_init, 0
    for _ in range(c_steps):
        start = best.image if best is not None else (last.image if last is not None else None)
        last = penalty_minimizer(forward, x, c, original=original, target=target, start=start, max_iter=max_iter,
                                 on_evaluation=tick)
        evaluations += last.evaluations
        if last.flipped:
            if best is None or last.norm < best.norm:
                best = last
            low = c if low is None else max(low, c)
        else:
            high = c if high is None else min(high, c)
        if low is not None and high is not None:
            c = math.sqrt(low * high)
        else:
            c = c * 10 if high is None else c / 10
    if best is None:  # no c changed the label on the grid: report no change rather than a failed one
        return torch.round(x.clamp(0, 1) * 255) / 255, math.nan, evaluations
    return best.rounded, best.c, evaluations

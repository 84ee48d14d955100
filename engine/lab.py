"""The attacks lab's shared plumbing: a set as a tensor at a model's size, batched predictions, the
fooling rate, and one batched sign-gradient loop that FGSM, BIM (Kurakin et al.), iterative
least-likely, PGD and the defences' adaptive attacks all run on.

Lecture (shared/papers/lecture-visualizing-and-fooling-convnets.txt, "Adversarial Samples for
ConvNets"): FGSM ``x <- x + eps sgn(dL(x, y*)/dx)``; PGD/BIM takes small steps and clips to the
eps-neighbourhood after each; the least-likely method steps *down* the loss of the least likely
class ``x <- x - eps sgn(dL(x, y_LL)/dx)``. Kurakin, Goodfellow & Bengio (ICLR 2017 workshop) run
BIM and iterative least-likely with step alpha = 1 level and ``min(eps + 4, 1.25 eps)`` steps
(:func:`kurakin_steps`).

Everything here works in whole 8-bit levels, so every adversarial image is exactly what a PNG
would hold. Images are (N, 3, S, S) float tensors in [0, 1].
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError
from .images import fit_square, to_tensor
from .imagesets import ImageSet
from .models import ModelHandle
from .progress import Progress, report

Forward = Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] -> logits

EPSILON_LEVELS = (2, 4, 8, 16, 32, 64, 128)  # Kurakin et al.'s Fig. 2 axis, in 8-bit levels


def kurakin_steps(epsilon: int) -> int:
    """Kurakin et al.'s iteration count for BIM and iterative least-likely: min(eps + 4, 1.25 eps),
    eps in levels (rounded down, at least 1)."""
    return max(1, int(math.floor(min(epsilon + 4, 1.25 * epsilon))))


def set_tensor(handle: ModelHandle, imageset: ImageSet, *, start: int = 0, stop: int | None = None,
               indices: Iterable[int] | None = None) -> torch.Tensor:
    """Pictures of a set as (N, 3, S, S) in [0, 1] at the model's input size, on its device."""
    if indices is not None:
        indices = [int(i) for i in indices]
        if not indices:
            raise ConfigError("No images were chosen from the set.")
        pictures = np.stack([imageset.image(i) for i in indices])
    else:
        pictures = np.concatenate([block for block, _ in imageset.batches(64, start, stop)])
    return pictures_tensor(handle, pictures)


def pictures_tensor(handle: ModelHandle, pictures: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, S, S) in [0, 1] at the model's input size (resized when needed)."""
    size = handle.input_size
    if pictures.shape[1] != size or pictures.shape[2] != size:
        pictures = np.stack([fit_square(p, size) for p in pictures])
    return to_tensor(pictures, device=handle.device)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images at another model's input size, on the 8-bit grid (antialiased bilinear)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    resized = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return torch.round(resized.clamp(0, 1) * 255) / 255


@torch.no_grad()
def predict(forward: Forward | ModelHandle, x: torch.Tensor, *, batch_size: int = 32, k: int = 5
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 (N,) and top-k (N, k) class ids of a batch of images, ``batch_size`` at a time."""
    forward = forward.logits if isinstance(forward, ModelHandle) else forward
    top1, topk = [], []
    for first in range(0, len(x), batch_size):
        logits = forward(x[first:first + batch_size])
        topk.append(logits.topk(min(k, logits.shape[1]), dim=1).indices.cpu())
        top1.append(topk[-1][:, 0])
    return torch.cat(top1), torch.cat(topk)


def fooling_rate(clean: torch.Tensor | np.ndarray, attacked: torch.Tensor | np.ndarray) -> float:
    """Moosavi-Dezfooli et al.'s fooling rate: the share of images whose top-1 label changed."""
    clean, attacked = np.asarray(clean), np.asarray(attacked)
    if clean.shape != attacked.shape or clean.size == 0:
        raise ConfigError("The fooling rate needs the same, non-zero number of clean and attacked labels.")
    return float((clean != attacked).mean())


def sign_attack(forward: Forward | ModelHandle, x: torch.Tensor, labels: torch.Tensor, *, epsilon: int,
                step: int, steps: int, targeted: bool = False, batch_size: int = 32,
                progress: Progress | None = None, gradient: Callable | None = None) -> torch.Tensor:
    """Batched FGSM / BIM / PGD / iterative least-likely in whole 8-bit levels.

    Each step moves every value ``step`` levels along the sign of the cross-entropy's gradient (up
    for an untargeted attack away from ``labels``, down towards ``labels`` when ``targeted``), then
    clips to the L-inf ball of ``epsilon`` levels around ``x`` and to [0, 255]. ``steps=1`` with
    ``step=epsilon`` is FGSM. ``gradient(images, labels) -> (logits, dL/dx)`` replaces the plain
    backward pass (the defences' BPDA and EOT). Each step is one forward and one backward pass.
    """
    if epsilon < 1 or step < 1 or steps < 1:
        raise ConfigError("Epsilon, the step and the number of steps must each be at least 1 level.")
    forward = forward.logits if isinstance(forward, ModelHandle) else forward
    gradient = gradient or (lambda images, wanted: loss_gradient(forward, images, wanted))
    out = []
    total = steps * math.ceil(len(x) / batch_size)
    done = 0
    for first in range(0, len(x), batch_size):
        start = torch.round(x[first:first + batch_size].detach() * 255)
        wanted = labels[first:first + batch_size].to(x.device)
        levels = start.clone()
        for _ in range(steps):
            _, grad = gradient(levels / 255, wanted)
            direction = -grad.sign() if targeted else grad.sign()
            levels = levels + step * direction
            levels = torch.minimum(torch.maximum(levels, start - epsilon), start + epsilon).clamp_(0, 255)
            done += 1
            report(progress, done / total, f"step {done} of {total}")
        out.append(levels / 255)
    return torch.cat(out)


def loss_gradient(forward: Forward, images: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and one backward pass: the logits and d(sum of cross-entropies)/d images."""
    leaf = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(leaf)
        loss = F.cross_entropy(logits, labels.to(logits.device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
    return logits.detach(), grad


def least_likely(forward: Forward | ModelHandle, x: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
    """Each image's least likely class (the lecture's least-likely target)."""
    forward = forward.logits if isinstance(forward, ModelHandle) else forward
    with torch.no_grad():
        return torch.cat([forward(x[i:i + batch_size]).argmin(1).cpu() for i in range(0, len(x), batch_size)])


def set_attack(forward: Forward | ModelHandle, x: torch.Tensor, method: str, epsilon: int, *,
               clean: torch.Tensor | None = None, batch_size: int = 32, progress: Progress | None = None,
               gradient: Callable | None = None, steps: int | None = None) -> torch.Tensor:
    """The lecture's three methods over a batch, as Kurakin et al. ran them: ``fgsm`` (one step of
    eps, away from the clean top-1), ``bim`` (alpha = 1 level, :func:`kurakin_steps`, away from the
    clean top-1) and ``ll`` (the same steps towards each image's least likely class). ``pgd`` is BIM
    with ``steps`` of your choosing (default 10, step max(1, eps // 4))."""
    if clean is None:
        clean, _ = predict(forward, x, batch_size=batch_size)
    if method == "fgsm":
        return sign_attack(forward, x, clean, epsilon=epsilon, step=epsilon, steps=1, batch_size=batch_size,
                           progress=progress, gradient=gradient)
    if method == "bim":
        return sign_attack(forward, x, clean, epsilon=epsilon, step=1, steps=steps or kurakin_steps(epsilon),
                           batch_size=batch_size, progress=progress, gradient=gradient)
    if method == "ll":
        targets = least_likely(forward, x, batch_size=batch_size)
        return sign_attack(forward, x, targets, epsilon=epsilon, step=1, steps=steps or kurakin_steps(epsilon),
                           targeted=True, batch_size=batch_size, progress=progress, gradient=gradient)
    if method == "pgd":
        return sign_attack(forward, x, clean, epsilon=epsilon, step=max(1, epsilon // 4), steps=steps or 10,
                           batch_size=batch_size, progress=progress, gradient=gradient)
    raise ConfigError(f"Unknown set attack '{method}'; use fgsm, bim, ll or pgd.")


SET_METHODS = {"fgsm": "FGSM (one step)", "bim": "BIM (iterative, Kurakin et al.)",
               "ll": "Iterative least-likely (Kurakin et al.)", "pgd": "PGD (10 steps)"}


# ---------------------------------------------------------------------------------------------
# Results cached on disk by (kind, model, set, settings)

LAB_VERSION = 1


def result_dir(kind: str, *parts) -> "Path":
    """The folder that holds one cached lab result: ``cache_root()/lab/<kind>/<digest of parts>``.
    ``parts`` name everything the result depends on (model names, set keys, settings as a dict)."""
    import hashlib
    import json
    from pathlib import Path  # noqa: F401  (the annotation)

    from .io import cache_root

    digest = hashlib.sha256(json.dumps([LAB_VERSION, kind, *parts], sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_root() / "lab" / kind / digest


def load_json(folder) -> dict | None:
    """``result.json`` of a cached result, or None when it was never written (or is damaged)."""
    import json

    path = folder / "result.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_json(folder, record: dict) -> None:
    """Write ``result.json`` atomically (a reader sees the whole result or none); write any .npy/.npz
    beside it *before* this, so a result.json always has its arrays."""
    from .io import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "result.json", record)

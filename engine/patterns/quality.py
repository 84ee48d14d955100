"""How well a trained generator restores its classes (the issue's quality report, sec. 4's claim).

For every class of a generator, patterns are painted on ``count`` held-out substrates -- garments
drawn from seeds the trainer never uses -- and scored by

* the training classifier: its mean probability of the target class, on the image as the user sees
  it (colour) and as training showed it (grey, when the run was trained in grey);
* a second network (another bundled net): how often the target class is in its top 5. A pattern that
  also fools a network it was never trained against is more than adversarial noise for one network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import images
from ..models import ModelHandle
from .generate import LoadedGenerator
from .networks import tiled_class_input
from .substrates import substrate_batch, substrate_tensors
from .training import classifier_view

HELD_OUT_SEED = 2_000_000_011  # training draws substrate seeds from seed * 1_000_003 + step * 64 + rank


@dataclass(frozen=True)
class ClassQuality:
    name: str
    class_id: int
    mean_prob: float  # training classifier, colour image
    mean_prob_grey: float  # training classifier, grey image
    top5_rate: float | None  # second network, colour image; None when none was given
    top5_rate_grey: float | None  # second network, grey image
    substrate_prob: float  # the training classifier's mean probability of the class on the bare substrates


def held_out_substrates(count: int, size: int) -> torch.Tensor:
    pictures, _ = substrate_tensors(substrate_batch(count, size, seed=HELD_OUT_SEED, augmented=True))
    return pictures


def as_saved(pictures: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] snapped to what a saved 8-bit PNG holds."""
    return images.to_tensor(images.to_uint8(pictures, value_range=images.SIGNED), value_range=images.SIGNED)


def _probs(handle: ModelHandle, images_pm1: torch.Tensor, *, grayscale: bool) -> torch.Tensor:
    x = classifier_view(handle, images_pm1, grayscale=grayscale)
    with torch.inference_mode():
        return handle.logits(x.to(handle.device)).softmax(1).cpu()


def evaluate(loaded: LoadedGenerator, handle: ModelHandle, second: ModelHandle | None = None, *,
             count: int = 20, seed: int = 0) -> list[ClassQuality]:
    """One :class:`ClassQuality` per class of ``loaded`` (see the module docstring)."""
    substrates = held_out_substrates(count, loaded.size)
    bare = _probs(handle, substrates, grayscale=False)
    results = []
    for index, (name, class_id) in enumerate(zip(loaded.class_names, loaded.class_ids)):
        target = torch.zeros(count, len(loaded.class_names))
        target[:, index] = 1.0
        tiles = tiled_class_input(target, generator=torch.Generator().manual_seed(seed + index),
                                  noise=loaded.class_noise)
        with torch.inference_mode():
            patterns = loaded.generator(substrates, tiles)
        patterns = as_saved(patterns)
        colour = _probs(handle, patterns, grayscale=False)[:, class_id]
        greyed = _probs(handle, patterns, grayscale=True)[:, class_id]
        top5 = top5_grey = None
        if second is not None:
            top5, top5_grey = (float((_probs(second, patterns, grayscale=g).topk(5, dim=1).indices == class_id)
                                     .any(1).float().mean()) for g in (False, True))
        results.append(ClassQuality(name, class_id, float(colour.mean()), float(greyed.mean()), top5, top5_grey,
                                    float(bare[:, class_id].mean())))
    return results


def markdown_table(results: list[ClassQuality], *, model: str, second: str | None, count: int) -> str:
    second = second or "second net"
    head = (f"| class | p(target), {model}, colour | p(target), {model}, grey | {second} top-5 rate, colour | "
            f"{second} top-5 rate, grey | p(target) on the bare substrates |\n|---|---|---|---|---|---|\n")

    def rate(value: float | None) -> str:
        return "—" if value is None else f"{value:.0%}"

    rows = [f"| {r.name} | {r.mean_prob:.3f} | {r.mean_prob_grey:.3f} | {rate(r.top5_rate)} | "
            f"{rate(r.top5_rate_grey)} | {r.substrate_prob:.4f} |" for r in results]

    def mean(field: str) -> float | None:
        values = [getattr(r, field) for r in results]
        return None if None in values else float(np.mean(values))

    rows.append(f"| **mean of {len(results)}** | **{mean('mean_prob'):.3f}** | **{mean('mean_prob_grey'):.3f}** | "
                f"{rate(mean('top5_rate'))} | {rate(mean('top5_rate_grey'))} | {mean('substrate_prob'):.4f} |")
    return head + "\n".join(rows) + "\n"

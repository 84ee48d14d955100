"""Quick mode without a GAN: optimise one substrate directly with the GAN's own classifier, substrate
and mask losses (sec. 3), for a pattern in well under a minute on a CPU.

The pixels are the parameters (in [-1, 1], projected after each Adam step); the objective is
``50 L_VGG + 150 L_s + 10 L_m`` -- the generator's objective without the adversarial term, which
needs a discriminator. L_VGG, the loss against the frozen critic (VGG16 in the paper), is weighted by
``classifier``. Every step sees the whole image resized (the positive class) and three fresh
random crops (the others).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import images
from ..errors import ConfigError
from ..models import ModelHandle
from ..progress import Progress, report
from . import losses
from .training import class_probabilities


@dataclass(frozen=True)
class QuickConfig:
    steps: int = 80
    lr: float = 0.03
    classifier: float = 50.0  # the paper's L_VGG
    substrate: float = 150.0
    mask: float = 10.0
    grayscale: bool = False
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QuickResult:
    image: np.ndarray  # H x W x 3 uint8
    target_prob: np.ndarray  # per step, on the whole image
    total: np.ndarray
    config: dict


def quick_pattern(handle: ModelHandle, substrate: np.ndarray, background: np.ndarray, classes: list[int],
                  weights: list[float] | None = None, config: QuickConfig = QuickConfig(), *,
                  progress: Progress | None = None) -> QuickResult:
    """Paint up to three classes onto one substrate (H x W x 3 uint8). The mixing weights, normalised
    to sum 1, are the target vector t of L_VGG: one class aims at probability 1, two equal ones at 0.5
    each."""
    if not 1 <= len(classes) <= 3:
        raise ConfigError("Mix one to three classes.")
    weights = weights or [1.0] * len(classes)
    if len(weights) != len(classes) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError("Give one non-negative mixing weight per class, not all zero.")
    target = (torch.tensor([weights], dtype=torch.float32) / sum(weights)).to(handle.device)
    ids = torch.tensor([handle.class_index(c) for c in classes])
    original = images.to_tensor(substrate, device=handle.device, value_range=images.SIGNED)
    mask = torch.from_numpy(np.ascontiguousarray(background))[None, None].float().to(handle.device)
    image = original.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    probs_log, totals = [], []
    for step in range(config.steps):
        with torch.enable_grad():
            resized = class_probabilities(handle, image, ids, grayscale=config.grayscale)
            crops, _ = losses.random_crops(image, generator=generator)
            crop_probs = class_probabilities(handle, crops.flatten(0, 1), ids, grayscale=config.grayscale)
            total = (config.classifier * losses.classifier_loss(resized, crop_probs.view(1, 3, -1), target)
                     + config.substrate * losses.substrate_loss(original, image)
                     + config.mask * losses.mask_loss(image, mask))
            optimiser.zero_grad(set_to_none=True)
            total.backward()
        optimiser.step()
        with torch.no_grad():
            image.clamp_(-1.0, 1.0)
        probs_log.append(float(resized.detach()[0].max()))
        totals.append(float(total.detach()))
        report(progress, (step + 1) / config.steps, f"step {step + 1}: loss {totals[-1]:.3f}")
    pixels = images.to_uint8(image.detach()[0], value_range=images.SIGNED)
    return QuickResult(pixels, np.array(probs_log), np.array(totals), config.as_dict())

"""The networks of §2.1 (Fig. 1–3), with the layer sizes of the authors' Caffe definitions.

* :class:`AlexNetSmall`: the reduced AlexNet of Berntsen's thesis that every direct network and the
  estimator share: conv 16·3×3 → LRN → max-pool → conv 64 → LRN → max-pool → conv 96 → 96 → 64 →
  max-pool → fc 1024 → fc 1024 (dropout 0.5), then one linear head per output.
* :class:`Projector`: a downscaled 1s-S network of Dosovitskiy et al.: class one-hot + 3 angles →
  fc 512 → 512 → 384 → 384 → 96·8·8 → three 4×4 stride-2 deconvolutions → a grey image and a sigmoid
  alpha, 64×64; the image is multiplied by the alpha ("in front of a black background").
* :class:`Comparator`: Zagoruyko & Komodakis's 2-channel patch network adapted to 10×10 patches of
  (query, projected image, projected alpha): conv 64·10×10 → 1×1 64 → 1×1 64 → 1×1 1 → sigmoid, run
  convolutionally with stride 1; the similarity map is weighted by the 10×10 average of the projected
  alpha and normalised by that weight's sum (Fig. 2).
* :class:`TripleStaged`: the three stages run once per class with the class hard-coded (Fig. 3); the
  verdict is the class with the highest score if it exceeds Θ, else None (§2.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data, render

PATCH = 10
CLASS_COUNT = len(data.CLASSES)     # 4: three objects and None
OBJECT_COUNT = len(render.OBJECTS)  # 3


class AlexNetSmall(nn.Module):
    """The reduced AlexNet (input 64×64) with named linear heads on fc7."""

    def __init__(self, in_channels: int = 1, heads: dict[str, int] | None = None):
        super().__init__()
        lrn = dict(size=5, alpha=1e-4, beta=0.75)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(96, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 6 * 6, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(1024, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(1024, size) for name, size in (heads or {}).items()})

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - 0.5) / 0.25))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.trunk(x)
        return {name: head(hidden) for name, head in self.heads.items()}


class Direct(AlexNetSmall):
    """Direct classification: image → logits over (monkey, penguin, aeroplane, None)."""

    def __init__(self, with_params: bool = False):
        heads = {"logits": CLASS_COUNT}
        if with_params:  # Direct classification + parameter estimation: fc8_params beside fc8
            heads["angles"] = 3
        super().__init__(1, heads)


class Estimator(AlexNetSmall):
    """Stage 1: image + one binary plane per object class → the object's 3 angles, clipped (§2.1)."""

    def __init__(self):
        super().__init__(1 + OBJECT_COUNT, {"angles": 3})

    def forward_raw(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        planes = data.class_planes(classes, x.shape[-1]).to(x)
        hidden = self.classifier(self.features(torch.cat([(x - 0.5) / 0.25, planes], 1)))
        return self.heads["angles"](hidden)

    def estimate(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.forward_raw(x, classes).clamp(-render.ANGLE_LIMIT, render.ANGLE_LIMIT)


class Projector(nn.Module):
    """Stage 2: class one-hot + angles → (image premultiplied by alpha, alpha), each (B, 1, 64, 64)."""

    def __init__(self):
        super().__init__()
        leaky = lambda: nn.LeakyReLU(0.1, inplace=True)  # noqa: E731 - the prototxt's negative_slope
        self.fc = nn.Sequential(
            nn.Linear(3 + OBJECT_COUNT, 512), leaky(), nn.Linear(512, 512), leaky(),
            nn.Linear(512, 384), leaky(), nn.Linear(384, 384), leaky(), nn.Linear(384, 96 * 8 * 8), leaky(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(96, 96, 4, 2, 1), leaky(), nn.ConvTranspose2d(96, 32, 4, 2, 1), leaky(),
        )
        self.image = nn.ConvTranspose2d(32, 1, 4, 2, 1)
        self.alpha = nn.ConvTranspose2d(32, 1, 4, 2, 1)

    def forward(self, classes: torch.Tensor, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.one_hot(classes.long(), OBJECT_COUNT).to(angles)
        hidden = self.up(self.fc(torch.cat([angles, onehot], 1)).view(-1, 96, 8, 8))
        alpha = torch.sigmoid(self.alpha(hidden))
        return self.image(hidden) * alpha, alpha


class Comparator(nn.Module):
    """Stage 3: 10×10 patches of (query, projection, alpha) → p(same), run with stride 1 (Fig. 2)."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Sequential(
            nn.Conv2d(3, 64, PATCH), nn.ReLU(inplace=True), nn.Conv2d(64, 64, 1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 1), nn.ReLU(inplace=True), nn.Conv2d(64, 1, 1),
        )

    def similarity(self, query: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The convoluted similarity map, (B, 1, H−9, W−9), each value in (0, 1)."""
        return torch.sigmoid(self.patch(torch.cat([(query - 0.5) / 0.25, (image - 0.5) / 0.25, alpha], 1)))

    def forward(self, query: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor) -> "Comparison":
        similarity = self.similarity(query, image, alpha)
        weight = F.avg_pool2d(alpha, PATCH, stride=1)  # the convoluted, projected alpha channel
        total = weight.flatten(1).sum(1)
        score = (similarity * weight).flatten(1).sum(1) / total.clamp_min(1e-6)
        return Comparison(score=torch.where(total > 0, score, torch.zeros_like(score)),
                          similarity=similarity, weight=weight)


@dataclass
class Comparison:
    score: torch.Tensor       # (B,) Σ(similarity · weight) / Σ weight
    similarity: torch.Tensor  # (B, 1, 55, 55)
    weight: torch.Tensor      # (B, 1, 55, 55)


@dataclass
class TripleOutput:
    scores: torch.Tensor      # (B, 3) one score per object class
    angles: torch.Tensor      # (B, 3, 3) the estimator's clipped angles per class
    image: torch.Tensor       # (B, 3, 64, 64) the projector's drawing per class (premultiplied)
    alpha: torch.Tensor       # (B, 3, 64, 64)
    similarity: torch.Tensor  # (B, 3, 55, 55)
    weight: torch.Tensor      # (B, 3, 55, 55)


class TripleStaged(nn.Module):
    """Estimator → projector → comparator, once per object class with the class hard-coded (Fig. 3)."""

    def __init__(self, estimator: Estimator, projector: Projector, comparator: Comparator):
        super().__init__()
        self.estimator, self.projector, self.comparator = estimator, projector, comparator

    def forward(self, x: torch.Tensor) -> TripleOutput:
        batch = x.shape[0]
        classes = torch.arange(OBJECT_COUNT, device=x.device).repeat_interleave(batch)
        queries = x.repeat(OBJECT_COUNT, 1, 1, 1)  # class-major: rows [c·B, (c+1)·B) are class c
        angles = self.estimator.estimate(queries, classes)
        image, alpha = self.projector(classes, angles)
        compared = self.comparator(queries, image, alpha)

        def per_class(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(OBJECT_COUNT, batch, *t.shape[1:]).transpose(0, 1).squeeze(2) \
                if t.dim() > 2 else t.reshape(OBJECT_COUNT, batch, *t.shape[1:]).transpose(0, 1)

        return TripleOutput(scores=per_class(compared.score), angles=per_class(angles),
                            image=per_class(image), alpha=per_class(alpha),
                            similarity=per_class(compared.similarity), weight=per_class(compared.weight))


def verdict(scores: torch.Tensor, theta: float) -> torch.Tensor:
    """§2.1's decision rule: the highest-scoring class if its score exceeds Θ, else None (3)."""
    best, index = scores.max(1)
    return torch.where(best > theta, index, torch.full_like(index, data.NONE))


def verdict_array(scores, theta: float):
    """:func:`verdict` for a numpy array of scores, (B, 3) or one row (3,): the same rule, one place."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float32)
    said = verdict(torch.from_numpy(scores.reshape(-1, scores.shape[-1])), theta).numpy()
    return said if scores.ndim > 1 else int(said[0])

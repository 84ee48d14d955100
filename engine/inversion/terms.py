"""Loss terms: the small objects an objective adds up (lucent composes its objectives the same way).

A term has a ``name``, a ``weight``, the ``layers`` it reads, and ``term(image, features) -> loss``
(unweighted). ``image`` is the pixels in [0, 1] before any transform; ``features`` is what the
network made of the transformed image: its logits, the captured layers, and ``align`` to bring the
original's features into the same frame (see :mod:`.transforms`).

Anosheh et al. sec. 2.2: classification (x1), content, style, total variation, colour.
Mahendran & Vedaldi (2015): the normalised representation loss, the alpha-norm and TV^beta priors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .losses import (alpha_norm, colour_similarity, content_loss, gram_content_loss, representation_loss,
                     style_loss, total_variation, tv_beta)
from .transforms import Align, same_frame


@dataclass(frozen=True)
class Features:
    """What the network made of the (transformed) image: logits and the captured layer outputs."""

    logits: torch.Tensor
    layers: Mapping[str, torch.Tensor] = field(default_factory=dict)
    align: Align = same_frame

    def __getitem__(self, layer: str) -> torch.Tensor:
        return self.layers[layer]


class Term:
    """One weighted part of an objective: it adds ``weight * term(image, features)`` to the total."""

    name: str = "term"
    weight: float = 1.0
    layers: tuple[str, ...] = ()

    def __call__(self, image: torch.Tensor, features: Features) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight:g})"


class ClassificationTerm(Term):
    """Sec. 2.2: softmax cross-entropy of the logits to the target class (unscaled, x1)."""

    name = "classification"

    def __init__(self, target: int, *, device: torch.device | str | None = None, weight: float = 1.0) -> None:
        self.target = int(target)
        self.weight = weight
        self._target = torch.tensor([self.target], device=device)

    def __call__(self, image, features):
        return F.cross_entropy(features.logits, self._target)


class ContentTerm(Term):
    """Sec. 2.2 (Gatys eq. 1): 1/2 sum (F - P)^2 at one layer, P the original's features."""

    name = "content"

    def __init__(self, layer: str, reference: torch.Tensor, *, weight: float) -> None:
        self.layers, self.reference, self.weight = (layer,), reference, weight

    def __call__(self, image, features):
        return content_loss(features[self.layers[0]], features.align(self.reference))


class GramContentTerm(Term):
    """Sec. 2.2 as the paper's text words it: the Gram matrices' squared distance at the content layer
    (:func:`~.losses.gram_content_loss`). It is the content term (its name is "content"), measured
    the other way; Gram matrices ignore position, so jitter needs no alignment."""

    name = "content"

    def __init__(self, layer: str, reference_gram: torch.Tensor, *, weight: float) -> None:
        self.layers, self.reference_gram, self.weight = (layer,), reference_gram, weight

    def __call__(self, image, features):
        return gram_content_loss(features[self.layers[0]], self.reference_gram)


class StyleTerm(Term):
    """Sec. 2.2 (Gatys eq. 4-5): the Gram matrices' squared distance to the original's, averaged over layers."""

    name = "style"

    def __init__(self, layers: Sequence[str], reference_grams: Sequence[torch.Tensor], *, weight: float) -> None:
        self.layers, self.reference_grams, self.weight = tuple(layers), list(reference_grams), weight

    def __call__(self, image, features):
        return style_loss([features[layer] for layer in self.layers], self.reference_grams)


class TotalVariationTerm(Term):
    """Sec. 2.2: the paper's total variation, each channel flattened row- and column-major."""

    name = "tv"

    def __init__(self, *, weight: float) -> None:
        self.weight = weight

    def __call__(self, image, features):
        return total_variation(image)


class ColourTerm(Term):
    """Sec. 2.2: squared difference to the original where it is greater than ``threshold`` (30 %)."""

    name = "colour"

    def __init__(self, original: torch.Tensor, *, weight: float, threshold: float = 0.3) -> None:
        self.original, self.weight, self.threshold = original, weight, threshold

    def __call__(self, image, features):
        return colour_similarity(image, self.original, self.threshold)


class RepresentationTerm(Term):
    """Mahendran & Vedaldi eq. 1: ||Phi(x) - Phi0||^2 / ||Phi0||^2 at one layer."""

    name = "representation"

    def __init__(self, layer: str, reference: torch.Tensor, *, weight: float = 1.0) -> None:
        self.layers, self.reference, self.weight = (layer,), reference, weight

    def __call__(self, image, features):
        return representation_loss(features[self.layers[0]], features.align(self.reference))


class AlphaNormTerm(Term):
    """Mahendran & Vedaldi sec. 3: the alpha-norm prior R_alpha (alpha = 6)."""

    name = "alpha_norm"

    def __init__(self, *, weight: float, alpha: float = 6.0) -> None:
        self.weight, self.alpha = weight, alpha

    def __call__(self, image, features):
        return alpha_norm(image, self.alpha)


class TVBetaTerm(Term):
    """Mahendran & Vedaldi sec. 3: the TV^beta prior R_V^beta (beta = 2)."""

    name = "tv_beta"

    def __init__(self, *, weight: float, beta: float = 2.0) -> None:
        self.weight, self.beta = weight, beta

    def __call__(self, image, features):
        return tv_beta(image, self.beta)

"""Objectives: a sum of weighted terms, total = sum_t weight_t * term_t(image, features).

:func:`class_objective` is Anosheh et al.'s (sec. 2.2), :func:`feature_objective` Mahendran &
Vedaldi's. Both are plain :class:`Objective` s; a new experiment composes its own list of terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConfigError
from ..hooks import capture
from ..models import LayerInfo, ModelHandle
from .config import check_content_loss
from .losses import gram_matrix
from .terms import (AlphaNormTerm, ClassificationTerm, ColourTerm, ContentTerm, Features, GramContentTerm,
                    RepresentationTerm, StyleTerm, Term, TotalVariationTerm, TVBetaTerm)
from .transforms import Transform, apply_transforms


@dataclass(frozen=True)
class Evaluation:
    """One pass of an objective: each term as it enters the total, each term unweighted, the logits."""

    weighted: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]
    logits: torch.Tensor

    def total(self) -> torch.Tensor:
        return torch.stack(list(self.weighted.values())).sum()


class Objective:
    """A sum of terms. ``target`` is the class it aims at (None when it aims at no class);
    ``setup_forwards`` counts the forward passes spent on the original to build its terms."""

    def __init__(self, terms: Sequence[Term], *, target: int | None = None, setup_forwards: int = 0) -> None:
        names = [term.name for term in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"Each term of an objective needs its own name; these repeat: {', '.join(names)}.")
        self.terms = tuple(terms)
        self.target = target
        self.setup_forwards = setup_forwards
        self.layers = tuple(dict.fromkeys(layer for term in self.terms for layer in term.layers))

    def evaluate(self, handle: ModelHandle, image: torch.Tensor, transforms: Sequence[Transform] = ()) -> Evaluation:
        """The network sees ``image`` after ``transforms``; pixel terms see ``image`` itself.
        Terms of weight 0 are measured (``raw``) but left out of the total."""
        seen = apply_transforms(image, transforms)
        with capture(handle, self.layers) as activations:
            logits = handle.logits(seen.image)
            features = Features(logits, activations, seen.align)
            raw = {term.name: term(image, features) for term in self.terms}
        weighted = {term.name: raw[term.name] * term.weight for term in self.terms if term.weight != 0}
        return Evaluation(weighted, raw, logits)

    def __add__(self, term: Term) -> "Objective":
        return Objective(self.terms + (term,), target=self.target, setup_forwards=self.setup_forwards)

    def __repr__(self) -> str:
        return " + ".join(repr(term) for term in self.terms)


def default_layers(handle: ModelHandle) -> tuple[str | None, tuple[str, ...]]:
    """(content layer, style layers) like Gatys' VGG choice: the end of each resolution stage.

    VGG's conv1_1..conv5_1 are one layer per resolution and conv4_2 sits at 1/8 of the input;
    here each stage's last feature map (not padding, a bare convolution or a batch norm) stands for
    its resolution, up to five, and the content layer is the stage at 1/8 (or the middle one).
    """
    stages: dict[int, LayerInfo] = {}
    for layer in handle.layers:
        if layer.kind in ("ZeroPad2d", "Identity", "BatchNorm2d") or layer.kind.startswith("Conv"):
            continue
        if layer.height < handle.input_size:
            stages[layer.height] = layer  # the last module at each resolution wins
    if not stages:
        return None, ()
    chosen = [stages[h] for h in sorted(stages, reverse=True)][:5]
    eighth = [layer for layer in chosen if layer.height <= handle.input_size / 8]
    content = eighth[0] if eighth else chosen[len(chosen) // 2]
    return content.name, tuple(layer.name for layer in chosen)


def reference_features(handle: ModelHandle, original: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The original's outputs at ``layers``, from one forward pass without a gradient."""
    with torch.no_grad(), capture(handle, tuple(layers)) as features:
        handle.logits(original)
    return {name: features[name].detach() for name in layers}


def class_objective(handle: ModelHandle, original: torch.Tensor, target: int, weights, *,
                    content_layer: str | None, style_layers: Sequence[str], colour_threshold: float = 0.3,
                    content_loss: str = "mse") -> Objective:
    """Sec. 2.2: cross-entropy to the target (x1) + the weighted content, style, TV and colour terms.

    ``weights`` is a :class:`~.config.LossWeights`; a term of weight 0 is left out altogether.
    ``content_loss`` is "mse" (Gatys' feature MSE, :class:`ContentTerm`) or "gram" (the Gram
    distance of the paper's text, :class:`GramContentTerm`).
    """
    check_content_loss(content_loss)
    if weights.content and not content_layer:
        raise ConfigError("This model has no spatial layer to measure content on; set the content weight to 0.")
    if weights.style and not style_layers:
        raise ConfigError("Pick at least one layer for the style term, or set its weight to 0.")
    content_layer = content_layer if weights.content else None
    style_layers = tuple(style_layers) if weights.style else ()
    layers = tuple(dict.fromkeys(([content_layer] if content_layer else []) + list(style_layers)))
    reference = reference_features(handle, original, layers) if layers else {}
    terms: list[Term] = [ClassificationTerm(target, device=handle.device)]
    if weights.content and content_loss == "gram":
        terms.append(GramContentTerm(content_layer, gram_matrix(reference[content_layer]).detach(),
                                     weight=weights.content))
    elif weights.content:
        terms.append(ContentTerm(content_layer, reference[content_layer].clone(), weight=weights.content))
    if weights.style:
        terms.append(StyleTerm(style_layers, [gram_matrix(reference[name]).detach() for name in style_layers],
                               weight=weights.style))
    if weights.tv:
        terms.append(TotalVariationTerm(weight=weights.tv))
    if weights.colour:
        terms.append(ColourTerm(original, weight=weights.colour, threshold=colour_threshold))
    return Objective(terms, target=target, setup_forwards=1 if layers else 0)


def feature_objective(handle: ModelHandle, photo: torch.Tensor, layer: str, *, alpha_weight: float,
                      tv_weight: float) -> Objective:
    """Mahendran & Vedaldi: match one layer's features of the photo, under the alpha-norm and TV^beta priors."""
    reference = reference_features(handle, photo, (layer,))[layer].clone()
    terms = [RepresentationTerm(layer, reference), AlphaNormTerm(weight=alpha_weight), TVBetaTerm(weight=tv_weight)]
    return Objective(terms, target=None, setup_forwards=1)

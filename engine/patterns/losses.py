"""The four losses of sec. 3, on images in [-1, 1] (the generator's tanh range).

* ``L_cGAN = E[log D(x, y)] + E[log(1 - D(x, G(x, z)))]`` -- D maximises it, G minimises its second
  term (:func:`cgan_loss`, :func:`generator_adversarial_loss`), from D's logits through log-sigmoid;
* ``L_m = 1 - M(G)`` -- the background should stay white: the mean over background pixels of how far
  the output is from white, in [0, 1] (:func:`mask_loss`);
* ``L_VGG = L_p + L_n`` with ``L(x) = 1/n sum (x_i - log(1 - x_i))``, ``P(v) = |t - v| * t`` on the
  whole image resized and ``N(v) = |t - v| * (1 - t)`` on three distinct random crops, the max over
  the crops (:func:`classifier_loss`). The paper calls it L_VGG because its critic is VGG16; here the
  critic is whichever frozen classifier the run trains against (EfficientNet-Lite0 for the shipped
  generator), so the code calls it the *classifier* loss;
* ``L_s = |T - G| - log(1 - |(T - G) / 2|^2)`` -- stay close to the substrate (:func:`substrate_loss`),
  averaged over pixels.

The total is ``3 L_cGAN + 10 L_m + 50 L_VGG + 150 L_s`` (:class:`PatternLossWeights`), editable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

EPS = 1e-6


LEGACY_NAMES = {"vgg": "classifier"}  # what older checkpoints, config.json and log.csv files call a term


@dataclass(frozen=True)
class PatternLossWeights:
    """The weights of sec. 3's total, ``3 L_cGAN + 10 L_m + 50 L_VGG + 150 L_s``.

    ``classifier`` weighs the paper's L_VGG (the loss against the frozen critic, VGG16 in the paper).
    """

    cgan: float = 3.0
    mask: float = 10.0
    classifier: float = 50.0
    substrate: float = 150.0
    colour: float = 0.0  # our extension: the substrate's colour at low resolution (:func:`colour_loss`); 0 = off

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PatternLossWeights":
        """From :meth:`as_dict`'s shape, or an older file's (where ``classifier`` was ``vgg``)."""
        return cls(**current_names(values))


def current_names(values: dict) -> dict:
    """``values`` with older term names (``vgg``) renamed to today's (``classifier``)."""
    return {LEGACY_NAMES.get(name, name): value for name, value in values.items()}


def cgan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_cGAN = E[log D(x, y)] + E[log(1 - D(x, G(x, z)))], D = sigmoid(logits): the value D maximises."""
    return F.logsigmoid(real_logits).mean() + F.logsigmoid(-fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's part of L_cGAN, which it minimises: E[log(1 - D(x, G(x, z)))]."""
    return F.logsigmoid(-fake_logits).mean()


def mask_loss(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """L_m = 1 - M(G): 1 minus the whiteness of the output where the substrate is background.

    ``image`` (B, 3, H, W) in [-1, 1]; ``background`` (B, 1, H, W) in {0, 1}. White (1) costs 0,
    black (-1) costs 1.
    """
    whiteness = (image + 1) / 2
    area = background.sum().clamp_min(1.0)
    return ((1 - whiteness) * background).sum() / (area * image.shape[1])


def paper_l(x: torch.Tensor) -> torch.Tensor:
    """L(x) = 1/n sum_i (x_i - log(1 - x_i)) over the last axis, for x in [0, 1]."""
    x = x.clamp(0.0, 1.0 - EPS)
    return (x - torch.log1p(-x)).mean(dim=-1)


def positive_term(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """P(v) = |t - v| * t."""
    return (target - probs).abs() * target


def negative_term(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """N(v) = |t - v| * (1 - t)."""
    return (target - probs).abs() * (1 - target)


def classifier_loss(resized_probs: torch.Tensor, crop_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's L_VGG (its critic is VGG16): L(P(c_r)) + max over crops of L(N(c_k)), averaged
    over the batch.

    ``resized_probs`` (B, n): the classifier's probabilities of the n classes on the whole image;
    ``crop_probs`` (B, crops, n) on each crop; ``target`` (B, n) in {0, 1}.
    """
    positive = paper_l(positive_term(resized_probs, target))
    negative = paper_l(negative_term(crop_probs, target[:, None, :])).amax(dim=1)
    return (positive + negative).mean()


def substrate_loss(target: torch.Tensor, image: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_s = |T - G| - log(1 - |(T - G) / 2|^2), averaged over every value (images in [-1, 1]).

    ``weight`` (B, 1, H, W), optional: a per-pixel factor (the Grad-CAM masking extension)."""
    difference = target - image
    inside = (1 - (difference / 2).square()).clamp_min(EPS)
    values = difference.abs() - torch.log(inside)
    if weight is not None:
        values = values * weight
    return values.mean()


def colour_loss(target: torch.Tensor, image: torch.Tensor, *, cell: int = 16) -> torch.Tensor:
    """Our extension (issue 15): the substrate's colour should survive where the pattern goes. The mean
    absolute difference of the two images averaged over ``cell`` x ``cell`` blocks: a pattern (finer
    than a block) costs nothing, a garment repainted in another colour costs its full difference.
    L_s, by contrast, charges every pixel the pattern changes."""
    return (F.avg_pool2d(target, cell) - F.avg_pool2d(image, cell)).abs().mean()


def random_crops(images: torch.Tensor, *, count: int = 3, fraction: float = 224 / 512,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``count`` distinct square crops per batch (the same positions for every image), each a
    ``fraction`` of the side -- 224 of the paper's 512. Returns (B, count, 3, c, c) and the corners."""
    size = images.shape[-1]
    side = max(1, round(size * fraction))
    span = size - side + 1
    if span * span < count:
        raise ValueError(f"A {size} px image has fewer than {count} distinct {side} px crops.")
    chosen = torch.randperm(span * span, generator=generator)[:count].tolist()
    corners = [(c // span, c % span) for c in chosen]
    crops = torch.stack([images[..., y:y + side, x:x + side] for y, x in corners], 1)
    return crops, corners

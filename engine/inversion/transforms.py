"""Transforms: what the network sees is the image after these (lucent's split of transforms from objectives).

Sec. 2.3's **jitter** rolls the image by up to 16 px before each forward pass; the gradient flows
back through the roll, so it lands on the unshifted pixels. Pixel terms (TV, colour) see the image
itself; terms that compare features with the original's ask :attr:`Transformed.align` to move the
original's features into the transformed image's frame. As the paper found (sec. 4), L-BFGS cannot
take jitter: its line search needs one fixed function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Protocol, Sequence

import torch

from ..errors import ConfigError

MAX_JITTER = 64

Align = Callable[[torch.Tensor], torch.Tensor]


def same_frame(features: torch.Tensor) -> torch.Tensor:
    """The alignment of an untransformed image: the original's features as they are."""
    return features


@dataclass(frozen=True)
class Transformed:
    """The image the network sees, and how the original's features map onto its frame."""

    image: torch.Tensor
    align: Align = same_frame


class Transform(Protocol):
    def __call__(self, image: torch.Tensor) -> Transformed: ...


def jitter(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Roll the image by (dy, dx) pixels, wrapping around (Deepdream's jitter)."""
    return torch.roll(x, shifts=shift, dims=(2, 3))


def unjitter(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`jitter`."""
    return torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(2, 3))


def random_shift(generator: torch.Generator, limit: int) -> tuple[int, int]:
    """A shift of up to ``limit`` pixels in each direction, drawn uniformly."""
    if limit <= 0:
        return (0, 0)
    dy, dx = torch.randint(-limit, limit + 1, (2,), generator=generator).tolist()
    return (int(dy), int(dx))


def roll_features(features: torch.Tensor, *, shift: tuple[int, int], image_size: int) -> torch.Tensor:
    """The original's features as the jittered image's would be: rolled by the shift at their scale.

    Exact where the shift is a multiple of the layer's stride (away from the wrapped border), the
    nearest whole feature position otherwise. Gram matrices need no such care: they ignore position.
    """
    scale = features.shape[2] / image_size
    return torch.roll(features, shifts=(round(shift[0] * scale), round(shift[1] * scale)), dims=(2, 3))


class Jitter:
    """Sec. 2.3: a random roll of up to ``limit`` px in each direction before every forward pass.

    The shifts come from its own generator seeded with ``seed``, so one seed gives one run.
    """

    def __init__(self, limit: int, *, seed: int = 0) -> None:
        if not 0 <= limit <= MAX_JITTER:
            raise ConfigError(f"Jitter is a shift of 0 to {MAX_JITTER} pixels.")
        self.limit = int(limit)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image: torch.Tensor) -> Transformed:
        shift = random_shift(self.generator, self.limit)
        if not any(shift):
            return Transformed(image)
        return Transformed(jitter(image, shift), partial(roll_features, shift=shift, image_size=image.shape[2]))

    def __repr__(self) -> str:
        return f"Jitter({self.limit})"


def apply_transforms(image: torch.Tensor, transforms: Sequence[Transform]) -> Transformed:
    """The image through each transform in turn; the alignments compose in the same order."""
    seen = Transformed(image)
    for transform in transforms:
        step = transform(seen.image)
        if seen.align is same_frame:
            seen = step
        elif step.align is same_frame:
            seen = Transformed(step.image, seen.align)
        else:
            seen = Transformed(step.image, _composed(seen.align, step.align))
    return seen


def _composed(first: Align, then: Align) -> Align:
    return lambda features: then(first(features))

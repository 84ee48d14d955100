"""What every concept source produces: :class:`Concept`, :class:`Sample` and :class:`ConceptSet`.

A concept set is read on demand (``read(index) -> Sample``), so it holds no pixels itself and its
memory stays bounded whatever its length. The sources are :mod:`.bundled` (the drawn set, kept on
disk by :mod:`.store`), :mod:`.broden` and :mod:`.folder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..errors import DatasetError
from ..io import find_name

MAX_IMAGES = 10_000
MIN_SIZE, MAX_SIZE = 64, 512


@dataclass(frozen=True)
class Concept:
    """One labelled concept; ``id`` is its index in :attr:`ConceptSet.concepts`."""

    id: int
    name: str
    category: str


@dataclass(frozen=True, eq=False)  # arrays: compare with np.array_equal
class Sample:
    """One image and the masks of the concepts present in it.

    ``categories`` names the categories annotated in this image: a concept of another category
    may be present unlabelled, so dissection should count this image only for those categories.
    """

    image: np.ndarray        # H x W x 3 uint8, H = W = ConceptSet.image_size
    concept_ids: np.ndarray  # (k,) int64, ascending
    masks: np.ndarray        # (k, m, m) bool at ConceptSet.mask_size
    categories: tuple[str, ...]


class ConceptSet:
    """A sequence of :class:`Sample` with its concept list; samples are read on demand.

    ``read(index)`` gives one sample; the sources supply it, so this class holds no pixels
    and memory stays bounded whatever the set's length.
    """

    def __init__(self, *, name: str, key: str, concepts: tuple[Concept, ...], image_size: int,
                 mask_size: int, length: int, read: Callable[[int], Sample]):
        self.name = name
        self.key = key
        self.concepts = concepts
        self.image_size = image_size
        self.mask_size = mask_size
        self._length = length
        self._read = read

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"ConceptSet({self.name!r}, key={self.key!r}, {len(self.concepts)} concepts)"

    def sample(self, index: int) -> Sample:
        """The sample at ``index`` (0 <= index < len)."""
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"Sample {index} is outside 0..{self._length - 1}.")
        return self._read(index)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[np.ndarray, list[Sample]]]:
        """Yield (N x H x W x 3 uint8 images, their N samples) over ``start:stop``.

        Only one batch is alive at a time, so memory is bounded by ``batch_size``.
        """
        stop = self._length if stop is None else int(stop)
        if int(batch_size) < 1:
            raise DatasetError(f"The batch size must be at least 1, not {batch_size}.")
        if not 0 <= start <= stop <= self._length:
            raise DatasetError(f"The range {start}:{stop} does not fit in the {self._length} "
                               f"images of {self.name}.")
        for first in range(start, stop, int(batch_size)):
            samples = [self._read(i) for i in range(first, min(first + int(batch_size), stop))]
            yield np.stack([sample.image for sample in samples]), samples

    def concept_index(self, name: str) -> int:
        """The id of the concept called ``name``: exact, else case-insensitive, else a unique
        case-insensitive prefix ("stripes h" finds "stripes horizontal")."""
        return find_name(name, [concept.name for concept in self.concepts], what="concept",
                         error=DatasetError, prefix=True)


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source pixel sampled by each target pixel: floor((j + 0.5) * source / target).

    Every mask smaller than its image is taken with this one rule (see the package note).
    """
    return ((np.arange(target) * 2 + 1) * source // (2 * target)).astype(np.intp)


def is_whole_number(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

"""The bundled concept set: the painter's images (:mod:`.painter`), kept on disk by :mod:`.store`."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..io import cache_root
from ..progress import Progress
from .base import MAX_IMAGES, MAX_SIZE, MIN_SIZE, ConceptSet, is_whole_number
from .painter import GENERATOR_VERSION, concept_list
from .store import ShardStore


def bundled_key(n: int = 2000, *, size: int = 224, mask_size: int = 112, seed: int = 0) -> str:
    """The bundled set's cache key (what a dissection result is stored under), without drawing it."""
    return f"bundled-v{GENERATOR_VERSION}-n{int(n)}-s{int(size)}-m{int(mask_size)}-seed{int(seed)}"


def bundled_concepts(n: int = 2000, *, size: int = 224, mask_size: int = 112, seed: int = 0,
                     cache_dir: str | Path | None = None, progress: Progress | None = None
                     ) -> ConceptSet:
    """The bundled concept set: ``n`` drawn images with colour, texture and shape masks.

    Missing images are drawn now (reported through ``progress``) into
    ``cache_dir/<folder>/``, ``cache_dir`` defaulting to ``cache_root()/"concepts"``; the
    folder is shared by every ``n`` with the same size, mask size and seed.
    """
    _check_bundled_arguments(n, size, mask_size, seed)
    n, size, mask_size, seed = int(n), int(size), int(mask_size), int(seed)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "concepts"
    folder = f"bundled-v{GENERATOR_VERSION}-s{size}-m{mask_size}-seed{seed}"
    store = ShardStore(root / folder, length=n, seed=seed, size=size, mask_size=mask_size)
    store.ensure_all(progress)
    return ConceptSet(name=f"bundled ({n} images, {size} px)",
                      key=bundled_key(n, size=size, mask_size=mask_size, seed=seed),
                      concepts=concept_list(), image_size=size, mask_size=mask_size,
                      length=n, read=store.sample)


def _check_bundled_arguments(n: int, size: int, mask_size: int, seed: int) -> None:
    if not is_whole_number(n) or not 1 <= n <= MAX_IMAGES:
        raise DatasetError(f"The bundled concept set holds 1 to {MAX_IMAGES} images, not {n}.")
    if not is_whole_number(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise DatasetError(f"The image size must be {MIN_SIZE} to {MAX_SIZE} pixels, not {size}.")
    if not is_whole_number(mask_size) or not 1 <= mask_size <= size:
        raise DatasetError(f"The mask size must be 1 to the image size ({size}) pixels, "
                           f"not {mask_size}.")
    if not is_whole_number(seed) or not 0 <= seed < 2 ** 63:
        raise DatasetError(f"The seed must be a whole number of 0 or more, not {seed}.")

"""Concept data for Network Dissection: images, each with pixel masks of the concepts it shows.

Network Dissection (Bau et al., CVPR 2017; the NetDissect-Lite code) scores every unit of a network
by the IoU between its thresholded activation maps and the masks of labelled concepts over a data
set. Its data set, Broden, cannot be downloaded here, so there are three sources, all read through
one :class:`ConceptSet` (:mod:`.base`):

* :func:`bundled_concepts` (:mod:`.bundled`) draws a concept set: 11 colours (Broden's colour
  names), 10 textures and 7 shapes, composited on random crops of the sample photos
  (:mod:`.painter`). Drawing is deterministic per (seed, image index) and the result is cached on
  disk in shards (:mod:`.store`). As in Broden, colour is labelled on every pixel (see
  :data:`COLOUR_RGB`), photo included; textures and shapes are labelled where they were painted.
* :func:`load_broden` (:mod:`.broden`) reads a Broden folder as NetDissect-Lite ships it
  (``broden1_224``).
* :func:`load_folder` (:mod:`.folder`) reads ``images/<stem>.<ext>`` plus
  ``masks/<stem>/<concept>.png``.

Masks smaller than the image are taken by nearest sampling, everywhere in this package: mask pixel
``(j, i)`` is source pixel ``(floor((j + 0.5) * S / m), floor((i + 0.5) * S / m))`` of the centred
square of side ``S``. A nearest sample never invents a label, so a bundled colour mask holds only
pixels of that colour at every mask size, and at ``mask_size == size`` the masks are exactly the
pixels of each colour and the painted regions of each texture and shape.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..io import cache_root
from .base import MAX_IMAGES, MAX_SIZE, MIN_SIZE, Concept, ConceptSet, Sample
from .broden import load_broden
from .bundled import bundled_concepts
from .folder import IMAGE_EXTENSIONS, load_folder
from .painter import (BACKGROUND_SAMPLES, CATEGORIES, COLOUR_RADIUS, COLOUR_RGB, GENERATOR_VERSION,
                      NOISE_LEVELS, SHAPE_NAMES, TEXTURE_NAMES, TINT_LEVELS, colour_labels)
from .store import SHARD_BYTES, SHARD_SIZE

__all__ = [
    "BACKGROUND_SAMPLES", "CATEGORIES", "COLOUR_RADIUS", "COLOUR_RGB", "GENERATOR_VERSION",
    "IMAGE_EXTENSIONS", "MAX_IMAGES", "MAX_SIZE", "MIN_SIZE", "NOISE_LEVELS", "SHAPE_NAMES",
    "SHARD_BYTES", "SHARD_SIZE", "TEXTURE_NAMES", "TINT_LEVELS", "Concept", "ConceptSet", "Sample",
    "bundled_concepts", "cache_root", "colour_labels", "load_broden", "load_folder", "open_concepts",
]


def open_concepts(spec: str, **kwargs) -> ConceptSet:
    """``"bundled"`` -> :func:`bundled_concepts` (``kwargs`` passed on); a folder with
    ``index.csv`` -> :func:`load_broden`; a folder with ``images/`` or ``masks/`` ->
    :func:`load_folder`. Options a source has no use for are ignored (a Broden folder fixes its
    own sizes), so a caller can pass the same options whatever the spec names.
    """
    if spec.strip().lower() == "bundled":
        return bundled_concepts(**kwargs)
    path = Path(spec).expanduser()
    progress = kwargs.get("progress")
    if (path / "index.csv").is_file():
        return load_broden(path, progress=progress)
    if (path / "images").is_dir() or (path / "masks").is_dir():
        return load_folder(path, size=kwargs.get("size", 224), progress=progress)
    if not path.is_dir():
        raise DatasetError(f"There is no folder at {path}; give \"bundled\", a Broden folder "
                           "(with index.csv) or a folder with images/ and masks/.")
    raise DatasetError(f"The folder {path} holds neither a Broden index.csv nor images/ and "
                       "masks/ folders, so Glassbox cannot read concepts from it.")

"""Concept data for Network Dissection: images, each with pixel masks of the concepts it shows.

Network Dissection (Bau et al., CVPR 2017; the NetDissect-Lite code) scores every unit of a network
by the IoU between its thresholded activation maps and the masks of labelled concepts over a data
set. Its data set, Broden, cannot be downloaded here, so there are three sources, all read through
one :class:`ConceptSet`:

* :func:`bundled_concepts` draws a concept set: 11 colours (Broden's colour names), 10 textures and
  7 shapes, composited on random crops of the sample photos. Drawing is deterministic per
  (seed, image index) and the result is cached on disk in shards. As in Broden, colour is
  labelled on every pixel (see :data:`COLOUR_RGB`), photo included; textures and shapes are
  labelled where they were painted.
* :func:`load_broden` reads a Broden folder as NetDissect-Lite ships it (``broden1_224``).
* :func:`load_folder` reads ``images/<stem>.<ext>`` plus ``masks/<stem>/<concept>.png``.

Masks smaller than the image are taken by nearest sampling, everywhere in this module: mask pixel
``(j, i)`` is source pixel ``(floor((j + 0.5) * S / m), floor((i + 0.5) * S / m))`` of the centred
square of side ``S``. A nearest sample never invents a label, so a bundled colour mask holds only
pixels of that colour at every mask size, and at ``mask_size == size`` the masks are exactly the
pixels of each colour and the painted regions of each texture and shape.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import math
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .errors import DatasetError, GlassboxError
from .images import decode_image, fit_square, list_samples, load_sample
from .progress import Progress, report

CATEGORIES = ("colour", "texture", "shape")

# Broden's 11 colour names. A pixel, painted or photographed, is labelled with a colour when it
# lies within COLOUR_RADIUS (Euclidean, in 8-bit levels) of that colour's RGB here. The closest
# pair (orange-yellow) is 85.6 apart, so the balls are disjoint: a pixel has at most one colour,
# and it is the nearest of the 11. Each painted pixel is its colour plus a per-image tint and a
# per-pixel noise of at most TINT_LEVELS + NOISE_LEVELS = 22 levels per channel, so it lies within
# 22 * sqrt(3) = 38.1 < COLOUR_RADIUS of its colour, even after clipping to 0..255 (a projection
# towards it): painted pixels are always labelled with the colour they were painted.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "blue": (35, 75, 215),
    "brown": (125, 75, 35),
    "green": (40, 155, 50),
    "grey": (128, 128, 128),
    "orange": (245, 140, 25),
    "pink": (245, 155, 195),
    "purple": (125, 40, 165),
    "red": (215, 30, 35),
    "white": (240, 240, 240),
    "yellow": (245, 225, 35),
}
COLOUR_RADIUS = 40
TINT_LEVELS = 12
NOISE_LEVELS = 10

TEXTURE_NAMES = ("stripes horizontal", "stripes vertical", "stripes diagonal up",
                 "stripes diagonal down", "dots", "checkerboard", "zigzag", "waves", "grid",
                 "crosshatch")
SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent")

# Backdrops: the gallery's photos and textures (assets/CREDITS.md).
BACKGROUND_SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "brick",
                      "grass", "gravel")

GENERATOR_VERSION = 1  # bump when the drawing changes: it names the cache folders and keys
SHARD_SIZE = 256  # images per shard file, fewer for large images (see SHARD_BYTES)
SHARD_BYTES = 48 * 1024 * 1024  # the pixels one shard may hold; two stay loaded at a time
MAX_IMAGES = 10_000
MIN_SIZE, MAX_SIZE = 64, 512
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_PALETTE = np.array(list(COLOUR_RGB.values()), dtype=np.int16)
_TEXTURE_BASE = len(COLOUR_RGB)
_SHAPE_BASE = _TEXTURE_BASE + len(TEXTURE_NAMES)
_KINDS = ("colour", "texture", "shape")
_KIND_WEIGHTS = (0.3, 0.3, 0.4)
_STALE_TEMP_SECONDS = 3600


# --------------------------------------------------------------------------- the data types

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

    ``read(index)`` gives one sample; the sources below supply it, so this class holds no pixels
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
        names = [concept.name for concept in self.concepts]
        if name in names:
            return names.index(name)
        wanted = name.strip().lower()
        folded = [n.lower() for n in names]
        if wanted in folded:
            return folded.index(wanted)
        starting = [i for i, n in enumerate(folded) if wanted and n.startswith(wanted)]
        if len(starting) == 1:
            return starting[0]
        if len(starting) > 1:
            shown = ", ".join(names[i] for i in starting[:8])
            raise DatasetError(f"The name {name!r} fits several concepts ({shown}); "
                              "please give more of it.")
        close = difflib.get_close_matches(wanted, folded, n=5, cutoff=0.5)
        hint = (f"; did you mean {', '.join(names[folded.index(c)] for c in close)}?" if close
                else f"; {self.name} has {len(names)} concepts, such as "
                     f"{', '.join(names[:5])}.")
        raise DatasetError(f"There is no concept called {name!r}{hint}")


def cache_root() -> Path:
    """Where Glassbox keeps generated data: ``$GLASSBOX_CACHE``, else ``~/.cache/glassbox``."""
    configured = os.environ.get("GLASSBOX_CACHE", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "glassbox"


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


# --------------------------------------------------------------------------- bundled: the plan

@dataclass(frozen=True)
class _Element:
    """One painted layer of a bundled image, in pixels of the full-size image.

    ``colours`` holds one palette index for a flat fill, or (ink, ground) for a pattern.
    """

    kind: str            # "colour" (flat blob), "texture" (patterned blob) or "shape"
    outline: str         # a SHAPE_NAMES entry, or "blob"
    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float = 1.0  # blob: minor / major axis
    wobble: tuple[float, ...] = ()  # blob: amplitudes and phases of the rim's 2nd and 3rd harmonic
    colours: tuple[int, ...] = (0,)
    texture: int = -1    # TEXTURE_NAMES index, -1 for a flat fill
    period: float = 0.0
    phase: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class _Backdrop:
    photo: int           # index into _background_photos()
    box: tuple[float, float, float, float]
    mirrored: bool


@dataclass(frozen=True)
class _Plan:
    backdrop: _Backdrop
    elements: tuple[_Element, ...]  # back to front


def _plan_image(rng: np.random.Generator, size: int) -> _Plan:
    """Every random choice of one image, drawn in a fixed order so a seed gives one picture."""
    elements = tuple(_plan_element(rng, size) for _ in range(int(rng.integers(1, 4))))
    return _Plan(_plan_backdrop(rng), elements)


def _plan_element(rng: np.random.Generator, size: int) -> _Element:
    kind = _KINDS[int(rng.choice(len(_KINDS), p=_KIND_WEIGHTS))]
    cx, cy = (float(c) for c in rng.uniform(0.12, 0.88, 2) * size)
    angle = float(rng.uniform(0.0, 2 * math.pi))
    if kind == "shape":
        outline = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
        geometry = dict(outline=outline, radius=float(rng.uniform(0.16, 0.32) * size))
    else:
        geometry = dict(outline="blob", radius=float(rng.uniform(0.2, 0.4) * size),
                        aspect=float(rng.uniform(0.6, 1.0)),
                        wobble=tuple(float(w) for w in np.concatenate(
                            [rng.uniform(0.06, 0.18, 2), rng.uniform(0.0, 2 * math.pi, 2)])))
    patterned = kind == "texture" or (kind == "shape" and rng.random() < 0.5)
    if not patterned:
        return _Element(kind, cx=cx, cy=cy, angle=angle, colours=(int(rng.integers(11)),),
                        **geometry)
    period = max(6.0, float(rng.uniform(10.0, 20.0)) * size / 224)
    return _Element(kind, cx=cx, cy=cy, angle=angle,
                    colours=tuple(int(c) for c in rng.choice(11, 2, replace=False)),
                    texture=int(rng.integers(len(TEXTURE_NAMES))), period=period,
                    phase=tuple(float(p) for p in rng.uniform(0.0, period, 2)), **geometry)


def _plan_backdrop(rng: np.random.Generator) -> _Backdrop:
    """A random square crop (45-100 % of the short side) of one sample photo, maybe mirrored."""
    photos = _background_photos()
    photo = int(rng.integers(len(photos)))
    width, height = photos[photo].size
    side = float(rng.uniform(0.45, 1.0)) * min(width, height)
    left = float(rng.uniform(0.0, width - side))
    top = float(rng.uniform(0.0, height - side))
    return _Backdrop(photo, (left, top, left + side, top + side), bool(rng.random() < 0.5))


@lru_cache(maxsize=1)
def _background_photos() -> tuple[Image.Image, ...]:
    """The backdrop photos, decoded once per process. The list is fixed (not whatever the
    gallery holds) so that a photo added to the gallery cannot change cached sets."""
    missing = [name for name in BACKGROUND_SAMPLES if name not in list_samples()]
    if missing:
        raise DatasetError(f"The sample pictures {', '.join(missing)} are missing from "
                           "assets/samples, so the bundled concept images cannot be drawn.")
    return tuple(load_sample(name) for name in BACKGROUND_SAMPLES)


# --------------------------------------------------------------------------- bundled: geometry

def _element_region(element: _Element, size: int) -> tuple[slice, slice, np.ndarray]:
    """The element's pixels as (rows, cols, inside) over its bounding box: one boolean test per
    pixel centre, so a mask and the painted pixels come from the same array."""
    reach = element.radius * (1.05 + sum(element.wobble[:2]))  # every outline fits inside
    rows, cols = _span(element.cy, reach, size), _span(element.cx, reach, size)
    dy = (np.arange(rows.start, rows.stop, dtype=np.float32) - element.cy)[:, None]
    dx = (np.arange(cols.start, cols.stop, dtype=np.float32) - element.cx)[None, :]
    cos, sin = math.cos(element.angle), math.sin(element.angle)
    u = (dx * cos + dy * sin) / element.radius
    v = (dy * cos - dx * sin) / element.radius
    return rows, cols, _silhouette(element, u, v)


def _span(centre: float, reach: float, size: int) -> slice:
    return slice(max(0, math.floor(centre - reach)), min(size, math.ceil(centre + reach) + 1))


def _silhouette(element: _Element, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the element's frame, circumradius 1."""
    outline = element.outline
    if outline == "blob":
        return _blob(u, v / element.aspect, element.wobble)
    if outline == "circle":
        return u * u + v * v <= 1.0
    if outline == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.6 ** 2)
    if outline == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if outline == "triangle":
        return _inside_lines(u, v, sides=3, apothem=0.5) == 3
    if outline == "star":
        # A pentagram is where at most one of its five edge lines is crossed.
        return _inside_lines(u, v, sides=5, apothem=math.cos(2 * math.pi / 5)) >= 4
    if outline == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if outline == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.75 ** 2)
    raise ValueError(f"unknown outline {outline!r}")


def _inside_lines(u: np.ndarray, v: np.ndarray, *, sides: int, apothem: float) -> np.ndarray:
    """How many of a regular polygon's edge lines each point lies inside (uint8)."""
    count = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.uint8)
    for k in range(sides):
        theta = 2 * math.pi * k / sides
        count += (u * math.cos(theta) + v * math.sin(theta)) <= apothem
    return count


def _blob(u: np.ndarray, v: np.ndarray, wobble: tuple[float, ...]) -> np.ndarray:
    """A smooth lumpy disc: the rim radius is 1 plus two low harmonics, so it never reads as one
    of the named shapes."""
    a2, a3, p2, p3 = wobble
    phi = np.arctan2(v, u)
    rim = 1.0 + a2 * np.cos(2 * phi + p2) + a3 * np.cos(3 * phi + p3)
    return u * u + v * v <= rim * rim


def _pattern_ink(element: _Element, rows: slice, cols: slice) -> np.ndarray:
    """Where the element's texture takes its first (ink) colour, over the bounding box."""
    p = element.period
    x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + element.phase[0]
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + element.phase[1]
    name = TEXTURE_NAMES[element.texture]
    diagonal_up, diagonal_down = (x + y) * math.sqrt(0.5), (x - y) * math.sqrt(0.5)
    if name == "stripes horizontal":
        ink = y % p < p / 2
    elif name == "stripes vertical":
        ink = x % p < p / 2
    elif name == "stripes diagonal up":  # "/" : x + y is constant along a stripe (y points down)
        ink = diagonal_up % p < p / 2
    elif name == "stripes diagonal down":
        ink = diagonal_down % p < p / 2
    elif name == "dots":
        ink = (x % p - p / 2) ** 2 + (y % p - p / 2) ** 2 <= (0.3 * p) ** 2
    elif name == "checkerboard":
        ink = (np.floor(x / (p / 2)) + np.floor(y / (p / 2))) % 2 == 0
    elif name == "zigzag":
        triangle = 2 * np.abs(x / p - np.floor(x / p + 0.5))  # 0..1, period p
        ink = (y + 0.5 * p * triangle) % p < p / 2
    elif name == "waves":
        ink = (y + 0.35 * p * np.sin(x * (math.pi / p))) % p < p / 2
    elif name == "grid":
        ink = (x % p < p / 4) | (y % p < p / 4)
    elif name == "crosshatch":
        ink = (diagonal_up % p < p / 4) | (diagonal_down % p < p / 4)
    else:
        raise ValueError(f"unknown texture {name!r}")
    return np.broadcast_to(ink, (rows.stop - rows.start, cols.stop - cols.start))


# --------------------------------------------------------------------------- bundled: painting

@dataclass(frozen=True)
class _LabelMaps:
    """Per pixel, what the front-most element put there (-1 = the photo): the palette index it
    was painted with, its texture, its shape."""

    colour: np.ndarray
    texture: np.ndarray
    shape: np.ndarray


def _paint_maps(elements: tuple[_Element, ...], size: int) -> _LabelMaps:
    """Paint the elements back to front into label maps; a later element overwrites every label
    of the pixels it covers, so the maps (and the masks taken from them) show only what is
    visible."""
    maps = _LabelMaps(*(np.full((size, size), -1, np.int8) for _ in range(3)))
    for element in elements:
        rows, cols, inside = _element_region(element, size)
        colour = maps.colour[rows, cols]
        if element.texture >= 0:
            ink = _pattern_ink(element, rows, cols)
            colour[inside & ink] = element.colours[0]
            colour[inside & ~ink] = element.colours[1]
        else:
            colour[inside] = element.colours[0]
        maps.texture[rows, cols][inside] = element.texture
        shape = SHAPE_NAMES.index(element.outline) if element.kind == "shape" else -1
        maps.shape[rows, cols][inside] = shape
    return maps


def _backdrop_pixels(backdrop: _Backdrop, size: int) -> np.ndarray:
    photo = _background_photos()[backdrop.photo]
    crop = photo.resize((size, size), Image.Resampling.BILINEAR, box=backdrop.box)
    if backdrop.mirrored:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(crop, dtype=np.uint8)


def _paint_pixels(background: np.ndarray, colour_map: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Paint into ``background``: painted pixels get their palette colour + a per-image tint +
    per-pixel noise (integers, so the bound in the COLOUR_RGB note holds exactly); the rest keep
    the photo."""
    tint = rng.integers(-TINT_LEVELS, TINT_LEVELS + 1, _PALETTE.shape, dtype=np.int16)
    painted = colour_map >= 0
    indices = colour_map[painted]
    noise = rng.integers(-NOISE_LEVELS, NOISE_LEVELS + 1, (indices.size, 3), dtype=np.int16)
    background[painted] = np.clip((_PALETTE + tint)[indices] + noise, 0, 255).astype(np.uint8)
    return background


def _nearest_indices(source: int, target: int) -> np.ndarray:
    """Source pixel sampled by each target pixel: floor((j + 0.5) * source / target)."""
    return ((np.arange(target) * 2 + 1) * source // (2 * target)).astype(np.intp)


def colour_labels(pixels: np.ndarray) -> np.ndarray:
    """Per pixel of an ... x 3 uint8 array, the index of the colour in COLOUR_RGB within
    COLOUR_RADIUS of it, else -1 (int8): how the bundled set names colours."""
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as one small matrix product; every term is an integer
    # below 2^24, so float32 gives the distances exactly.
    flat = pixels.reshape(-1, 3).astype(np.float32)
    palette = _PALETTE.astype(np.float32)
    distances = (flat * flat).sum(1, keepdims=True) - 2 * flat @ palette.T \
        + (palette * palette).sum(1)
    nearest = distances.argmin(1)
    within = distances[np.arange(len(flat)), nearest] < COLOUR_RADIUS ** 2
    return np.where(within, nearest, -1).astype(np.int8).reshape(pixels.shape[:-1])


def _masks(image: np.ndarray, maps: _LabelMaps, mask_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(concept ids ascending, their masks at mask_size) of every concept with a visible pixel
    on the mask grid. Colours come from the pixels themselves, so the photo's own reds and greys
    are labelled too and absence of a colour is known exactly; textures and shapes come from the
    painted elements."""
    grid = _nearest_indices(image.shape[0], mask_size)
    colours = colour_labels(image[np.ix_(grid, grid)])
    ids, masks = [], []
    for small, base in ((colours, 0), (maps.texture[np.ix_(grid, grid)], _TEXTURE_BASE),
                        (maps.shape[np.ix_(grid, grid)], _SHAPE_BASE)):
        present = np.flatnonzero(np.bincount(small[small >= 0], minlength=1))
        ids.append(present + base)
        masks.append(small[None] == present[:, None, None].astype(np.int8))
    return np.concatenate(ids).astype(np.int64), np.concatenate(masks)


def _draw_sample(index: int, *, seed: int, size: int, mask_size: int) -> Sample:
    """Bundled image ``index``: it depends only on (seed, index, size, mask_size), never on how
    many images the set has, so a short set is a prefix of a long one."""
    rng = np.random.default_rng([seed, index])
    plan = _plan_image(rng, size)
    maps = _paint_maps(plan.elements, size)
    image = _paint_pixels(_backdrop_pixels(plan.backdrop, size), maps.colour, rng)
    ids, masks = _masks(image, maps, mask_size)
    return Sample(image, ids, masks, CATEGORIES)


def _bundled_concept_list() -> tuple[Concept, ...]:
    names = ([(name, "colour") for name in COLOUR_RGB] + [(n, "texture") for n in TEXTURE_NAMES]
             + [(name, "shape") for name in SHAPE_NAMES])
    return tuple(Concept(i, name, category) for i, (name, category) in enumerate(names))


# --------------------------------------------------------------------------- bundled: disk cache

@dataclass(frozen=True)
class _Shard:
    images: np.ndarray       # (count, S, S, 3) uint8
    concept_ids: np.ndarray  # (total,) int16, all images' ids one after another
    offsets: np.ndarray      # (count + 1,) int64: image j owns rows offsets[j]:offsets[j+1]
    masks: np.ndarray        # (total, ceil(m*m/8)) uint8, np.packbits of each flattened mask


class _ShardStore:
    """Bundled images on disk, ``per_shard`` images per ``.npz`` file.

    Shard files do not depend on n: a shard holds the first ``count`` images of its range, and a
    longer set rewrites a short last shard. Files are written to a temporary name and moved into
    place with ``os.replace``, so a reader sees a whole shard or none; a shard that fails to
    read (a disk error, a hand-truncated file) is drawn again. Up to two shards stay in memory.
    """

    def __init__(self, directory: Path, *, length: int, seed: int, size: int, mask_size: int):
        self.directory = directory
        self.length, self.seed, self.size, self.mask_size = length, seed, size, mask_size
        self.per_shard = min(SHARD_SIZE, max(16, SHARD_BYTES // (size * size * 3)))
        self._lock = threading.Lock()
        self._loaded: OrderedDict[int, _Shard] = OrderedDict()

    def __getstate__(self) -> dict:  # pickle (a spawned worker) without the lock or the shards
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_loaded")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _loaded=OrderedDict())

    def shard_count(self) -> int:
        return -(-self.length // self.per_shard)

    def needed(self, shard: int) -> int:
        return min(self.per_shard, self.length - shard * self.per_shard)

    def path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:05d}.npz"

    def ensure_all(self, progress: Progress | None) -> None:
        """Draw every shard that is missing, short or unreadable, reporting progress per image."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _unwritable(self.directory, error) from error
        _remove_stale_temporaries(self.directory)
        missing = [k for k in range(self.shard_count()) if not self._usable_on_disk(k)]
        done = self.length - sum(self.needed(k) for k in missing)
        report(progress, done / self.length, "Drawing the concept images")
        for shard in missing:
            def each_image(count: int, before: int = done, last: int = self.needed(shard)) -> None:
                if count % 32 == 0 or count == last:
                    report(progress, (before + count) / self.length,
                           f"Drawing concept image {before + count} of {self.length}")
            self._write(shard, self._draw(shard, each_image))
            done += self.needed(shard)
        report(progress, 1.0, f"{self.length} concept images ready")

    def sample(self, index: int) -> Sample:
        shard = self._shard(index // self.per_shard)
        j = index % self.per_shard
        first, last = int(shard.offsets[j]), int(shard.offsets[j + 1])
        m = self.mask_size
        bits = np.unpackbits(shard.masks[first:last], axis=1, count=m * m)
        return Sample(shard.images[j].copy(), shard.concept_ids[first:last].astype(np.int64),
                      bits.reshape(last - first, m, m).view(bool), CATEGORIES)

    def _shard(self, shard: int) -> _Shard:
        with self._lock:
            if shard in self._loaded:
                self._loaded.move_to_end(shard)
                return self._loaded[shard]
            loaded = self._read(shard)
            if loaded is None:  # damaged since ensure_all ran: draw it again
                loaded = self._draw(shard)
                self._write(shard, loaded)
            self._loaded[shard] = loaded
            while len(self._loaded) > 2:
                self._loaded.popitem(last=False)
            return loaded

    def _meta(self, shard: int, count: int) -> np.ndarray:
        return np.array([GENERATOR_VERSION, self.size, self.mask_size, self.seed, self.per_shard,
                         shard, count], np.int64)

    def _meta_matches(self, meta: np.ndarray, shard: int) -> bool:
        expected = self._meta(shard, 0)
        return (meta.shape == expected.shape and (meta[:-1] == expected[:-1]).all()
                and meta[-1] >= self.needed(shard))

    def _usable_on_disk(self, shard: int) -> bool:
        """A quick check: the zip directory (at the end of the file, so a truncated file fails
        here) and the small meta record. A bad pixel block is caught later, by _read."""
        try:
            with np.load(self.path(shard), allow_pickle=False) as archive:
                return self._meta_matches(archive["meta"], shard)
        except Exception:  # any unreadable file is simply drawn again
            return False

    def _read(self, shard: int) -> _Shard | None:
        try:
            with np.load(self.path(shard), allow_pickle=False) as archive:
                meta = archive["meta"]
                loaded = _Shard(archive["images"], archive["concept_ids"], archive["offsets"],
                                archive["masks"])
        except Exception:  # zip, CRC or format errors all mean "draw it again"
            return None
        if not self._meta_matches(meta, shard) or not self._consistent(loaded, int(meta[-1])):
            return None
        return loaded

    def _consistent(self, shard: _Shard, count: int) -> bool:
        size, packed = self.size, -(-self.mask_size ** 2 // 8)
        return (shard.images.shape == (count, size, size, 3) and shard.images.dtype == np.uint8
                and shard.offsets.shape == (count + 1,) and int(shard.offsets[0]) == 0
                and bool((np.diff(shard.offsets) >= 0).all())
                and int(shard.offsets[-1]) == len(shard.concept_ids) == len(shard.masks)
                and shard.masks.shape[1:] == (packed,))

    def _draw(self, shard: int, each_image: Callable[[int], None] | None = None) -> _Shard:
        count = self.needed(shard)
        images = np.empty((count, self.size, self.size, 3), np.uint8)
        ids, masks, offsets = [], [], [0]
        for j in range(count):
            sample = _draw_sample(shard * self.per_shard + j, seed=self.seed, size=self.size,
                                  mask_size=self.mask_size)
            images[j] = sample.image
            ids.append(sample.concept_ids.astype(np.int16))
            masks.append(np.packbits(sample.masks.reshape(len(sample.masks), -1), axis=1))
            offsets.append(offsets[-1] + len(sample.concept_ids))
            if each_image is not None:
                each_image(j + 1)
        return _Shard(images, np.concatenate(ids), np.array(offsets, np.int64),
                      np.concatenate(masks))

    def _write(self, shard: int, data: _Shard) -> None:
        """Write to a temporary file beside the target, then rename it into place atomically."""
        try:
            handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp",
                                                 prefix=f".shard-{shard:05d}-")
            try:
                with os.fdopen(handle, "wb") as file:
                    np.savez(file, meta=self._meta(shard, len(data.images)), images=data.images,
                             concept_ids=data.concept_ids, offsets=data.offsets, masks=data.masks)
                os.replace(temporary, self.path(shard))
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as error:
            raise _unwritable(self.directory, error) from error


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary shard files a crashed run left behind (a live writer is seconds old)."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    for leftover in directory.glob(".shard-*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            pass


def _unwritable(directory: Path, error: OSError) -> DatasetError:
    return DatasetError(f"Glassbox cannot write its concept cache in {directory} "
                        f"({error.strerror or error}); set GLASSBOX_CACHE to a writable folder.")


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
    store = _ShardStore(root / folder, length=n, seed=seed, size=size, mask_size=mask_size)
    store.ensure_all(progress)
    return ConceptSet(name=f"bundled ({n} images, {size} px)",
                      key=f"bundled-v{GENERATOR_VERSION}-n{n}-s{size}-m{mask_size}-seed{seed}",
                      concepts=_bundled_concept_list(), image_size=size, mask_size=mask_size,
                      length=n, read=store.sample)


def _check_bundled_arguments(n: int, size: int, mask_size: int, seed: int) -> None:
    if not _is_int(n) or not 1 <= n <= MAX_IMAGES:
        raise DatasetError(f"The bundled concept set holds 1 to {MAX_IMAGES} images, not {n}.")
    if not _is_int(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise DatasetError(f"The image size must be {MIN_SIZE} to {MAX_SIZE} pixels, not {size}.")
    if not _is_int(mask_size) or not 1 <= mask_size <= size:
        raise DatasetError(f"The mask size must be 1 to the image size ({size}) pixels, "
                           f"not {mask_size}.")
    if not _is_int(seed) or not 0 <= seed < 2 ** 63:
        raise DatasetError(f"The seed must be a whole number of 0 or more, not {seed}.")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- Broden

_BRODEN_PIXEL_COLUMNS = ("color", "object", "part", "material")
_BRODEN_IMAGE_COLUMNS = ("scene", "texture")
_BRODEN_INDEX_COLUMNS = ("image", "ih", "iw", "sh", "sw") + _BRODEN_PIXEL_COLUMNS \
    + _BRODEN_IMAGE_COLUMNS
_BRODEN_LABEL_COLUMNS = ("number", "name", "category")


@dataclass(frozen=True)
class _BrodenRow:
    image: str
    layers: tuple[str, ...]              # segmentation PNGs (any pixel category)
    whole_image: tuple[int, ...]         # label numbers that cover the whole image
    categories: tuple[str, ...]          # the columns annotated for this image


class _BrodenReader:
    """Reads one Broden image and its segmentations (label = R + 256 * G) on demand."""

    def __init__(self, directory: Path, rows: list[_BrodenRow], number_to_id: np.ndarray,
                 image_size: int, mask_size: int):
        self.directory, self.rows, self.number_to_id = directory, rows, number_to_id
        self.image_size, self.mask_size = image_size, mask_size

    def __call__(self, index: int) -> Sample:
        row = self.rows[index]
        image = _read_square_image(self.directory / "images" / row.image, self.image_size)
        masks: dict[int, np.ndarray] = {}
        for layer in row.layers:
            labels = self._label_layer(self.directory / "images" / layer)
            for number in np.unique(labels):
                self._add(masks, int(number), labels == number)
        for number in row.whole_image:
            self._add(masks, number, np.ones((self.mask_size,) * 2, bool))
        ids = np.array(sorted(masks), np.int64)
        stacked = (np.stack([masks[i] for i in ids]) if len(ids)
                   else np.zeros((0, self.mask_size, self.mask_size), bool))
        return Sample(image, ids, stacked, row.categories)

    def _add(self, masks: dict[int, np.ndarray], number: int, mask: np.ndarray) -> None:
        if not 0 < number < len(self.number_to_id) or self.number_to_id[number] < 0:
            return  # 0 is "unlabelled"; numbers absent from label.csv are not concepts
        concept = int(self.number_to_id[number])
        masks[concept] = masks[concept] | mask if concept in masks else mask

    def _label_layer(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as png:
                rgb = np.asarray(png.convert("RGB"), dtype=np.int32)
        except (OSError, ValueError, SyntaxError) as error:
            raise DatasetError(f"The Broden segmentation {path} is missing or damaged.") from error
        return _nearest_square(rgb[..., 0] + 256 * rgb[..., 1], self.mask_size)


def load_broden(path: str | Path, *, progress: Progress | None = None) -> ConceptSet:
    """A Broden folder (NetDissect-Lite's ``broden1_224``): ``index.csv``, ``label.csv`` and
    ``images/``. Every file the index names is checked to exist now, so a partial download is
    reported at once, with the missing files listed."""
    directory = Path(path).expanduser().resolve()
    missing = [n for n in ("index.csv", "label.csv", "images/")
               if not (directory / n.rstrip("/")).exists()]
    _require(directory, "Broden", missing if "index.csv" in missing else [])
    rows, (image_size, mask_size) = _read_broden_index(directory / "index.csv")
    _require(directory, "Broden", missing + _missing_broden_files(directory, rows, progress))
    concepts, number_to_id = _read_broden_labels(directory / "label.csv")
    return ConceptSet(
        name=f"Broden {directory.name} ({len(rows)} images, {image_size} px)",
        key=f"broden-{_slug(directory)}-{_listing_digest(directory, ['index.csv', 'label.csv'])}",
        concepts=concepts, image_size=image_size, mask_size=mask_size, length=len(rows),
        read=_BrodenReader(directory, rows, number_to_id, image_size, mask_size))


def _read_broden_labels(path: Path) -> tuple[tuple[Concept, ...], np.ndarray]:
    """Concepts from label.csv rows numbered 1 and up, in number order, with a number -> id
    table; the category is the first named in e.g. "object(3);part(1)"."""
    entries = []
    for line, row in _csv_rows(path, _BRODEN_LABEL_COLUMNS):
        number = _csv_int(row["number"], path, line, "number")
        if number >= 1:
            category = row["category"].split(";")[0].split("(")[0].strip() or "unknown"
            entries.append((number, row["name"].strip(), category))
    if not entries:
        raise DatasetError(f"{path} lists no concepts (rows numbered 1 or more).")
    entries.sort()
    number_to_id = np.full(entries[-1][0] + 1, -1, np.int64)
    for concept_id, (number, _, _) in enumerate(entries):
        number_to_id[number] = concept_id
    concepts = tuple(Concept(i, name, category) for i, (_, name, category) in enumerate(entries))
    return concepts, number_to_id


def _read_broden_index(path: Path) -> tuple[list[_BrodenRow], tuple[int, int]]:
    """Rows of index.csv; the first row's ih and sh give the set's image and mask sizes (Broden
    uses one size throughout; other rows are fitted to it)."""
    rows, sizes = [], None
    for line, row in _csv_rows(path, _BRODEN_INDEX_COLUMNS):
        if sizes is None:
            sizes = (_csv_int(row["ih"], path, line, "ih"), _csv_int(row["sh"], path, line, "sh"))
        layers, whole, annotated = [], [], []
        for column in _BRODEN_PIXEL_COLUMNS + _BRODEN_IMAGE_COLUMNS:
            entries = [e.strip() for e in (row[column] or "").split(";") if e.strip()]
            if entries:
                annotated.append(column)
            for entry in entries:
                if entry.isdigit():  # NetDissect allows a bare label number in any column
                    whole.append(int(entry))
                else:
                    layers.append(_safe_relative(entry, path, line))
        rows.append(_BrodenRow(_safe_relative(row["image"].strip(), path, line), tuple(layers),
                               tuple(whole), tuple(annotated)))
    if sizes is None:
        raise DatasetError(f"{path} lists no images.")
    if not (MIN_SIZE // 8 <= sizes[0] <= 4 * MAX_SIZE and 1 <= sizes[1] <= sizes[0]):
        raise DatasetError(f"{path} gives image size {sizes[0]} and segmentation size "
                           f"{sizes[1]}; Glassbox needs a segmentation no larger than the image.")
    return rows, sizes


def _missing_broden_files(directory: Path, rows: list[_BrodenRow],
                          progress: Progress | None) -> list[str]:
    missing = []
    for i, row in enumerate(rows):
        for relative in (row.image, *row.layers):
            if not (directory / "images" / relative).is_file():
                missing.append(f"images/{relative}")
        if i % 2000 == 0:
            report(progress, i / len(rows), f"Checking the Broden files: {i} of {len(rows)}")
    report(progress, 1.0, "Broden files checked")
    return missing


def _safe_relative(entry: str, path: Path, line: int) -> str:
    """Index entries must stay inside images/: no absolute paths, no '..'."""
    parts = Path(entry).parts
    if not entry or Path(entry).is_absolute() or ".." in parts:
        raise DatasetError(f"Line {line} of {path} names {entry!r}, which is not a file inside "
                           "the images/ folder.")
    return entry


# --------------------------------------------------------------------------- simple folder

class _FolderReader:
    """Reads ``images/<stem>.<ext>`` and its ``masks/<stem>/<concept>.png`` on demand."""

    def __init__(self, images: list[Path], masks: list[dict[int, Path]], size: int,
                 categories: tuple[str, ...]):
        self.images, self.masks, self.size, self.categories = images, masks, size, categories

    def __call__(self, index: int) -> Sample:
        image = _read_square_image(self.images[index], self.size)
        ids, stacked = [], []
        for concept_id, path in sorted(self.masks[index].items()):
            mask = _read_mask(path, self.size)
            if mask.any():
                ids.append(concept_id)
                stacked.append(mask)
        masks = np.stack(stacked) if stacked else np.zeros((0, self.size, self.size), bool)
        return Sample(image, np.array(ids, np.int64), masks, self.categories)


def load_folder(path: str | Path, *, size: int = 224, progress: Progress | None = None
                ) -> ConceptSet:
    """A folder of ``images/<stem>.<ext>`` with masks ``masks/<stem>/<concept name>.png``
    (white = concept, any size) and an optional ``categories.csv`` (``name,category``; default
    "custom"). Images are fitted to ``size`` x ``size``; masks are cut and sampled the same way.
    """
    if not _is_int(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise DatasetError(f"The image size must be {MIN_SIZE} to {MAX_SIZE} pixels, not {size}.")
    directory = Path(path).expanduser().resolve()
    _require(directory, "concept", [n for n in ("images/", "masks/")
                                    if not (directory / n.rstrip("/")).is_dir()])
    images = sorted(p for p in (directory / "images").iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DatasetError(f"The folder {directory / 'images'} holds no images "
                           f"({', '.join(IMAGE_EXTENSIONS)}).")
    report(progress, 0.0, "Listing the concept masks")
    mask_files = [_mask_files(directory / "masks" / image.stem) for image in images]
    names = sorted({name for files in mask_files for name in files})
    categories = _read_categories(directory / "categories.csv")
    concepts = tuple(Concept(i, name, categories.get(name, "custom"))
                     for i, name in enumerate(names))
    ids = {name: i for i, name in enumerate(names)}
    # A user folder is taken as fully annotated: a concept without a mask file is absent.
    reader = _FolderReader(images,
                           [{ids[name]: p for name, p in files.items()} for files in mask_files],
                           int(size), tuple(sorted({c.category for c in concepts})))
    report(progress, 1.0, f"{len(images)} images listed")
    listing = [p.relative_to(directory) for p in images]
    listing += [p.relative_to(directory) for files in mask_files for p in files.values()]
    listing += ["categories.csv"] if (directory / "categories.csv").is_file() else []
    return ConceptSet(
        name=f"folder {directory.name} ({len(images)} images, {size} px)",
        key=f"folder-{_slug(directory)}-s{size}-{_listing_digest(directory, listing)}",
        concepts=concepts, image_size=int(size), mask_size=int(size), length=len(images),
        read=reader)


def _mask_files(folder: Path) -> dict[str, Path]:
    """Concept name -> mask file for one image; an image without a mask folder has none."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def _read_categories(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {row["name"].strip(): row["category"].strip() or "custom"
            for _, row in _csv_rows(path, ("name", "category"))}


def _read_mask(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"))
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"The mask {path} is missing or is not an image.") from error
    return _nearest_square(grey >= 128, size)


# --------------------------------------------------------------------------- shared helpers

def _read_square_image(path: Path, size: int) -> np.ndarray:
    """Decode as an upload would be (checked, upright, RGB), then fit to size x size."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"The image {path} is missing or cannot be read.") from error
    try:
        picture = decode_image(data)
    except GlassboxError as error:
        reason = str(error)
        raise DatasetError(f"The image {path} cannot be used: {reason[:1].lower()}{reason[1:]}"
                           ) from error
    if picture.size == (size, size):
        return np.array(picture, dtype=np.uint8)
    return fit_square(picture, size)


def _nearest_square(values: np.ndarray, size: int) -> np.ndarray:
    """Cut the centred square (as fit_square does) and sample it at size x size, nearest."""
    height, width = values.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    grid = _nearest_indices(side, size)
    return values[np.ix_(top + grid, left + grid)]


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file that must have the ``required`` columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            absent = [c for c in required if c not in (reader.fieldnames or ())]
            if absent:
                raise DatasetError(f"{path} lacks the column{'s' if len(absent) > 1 else ''} "
                                   f"{', '.join(absent)}.")
            for row in reader:
                yield reader.line_num, {k: (v or "") for k, v in row.items() if k is not None}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path} cannot be read as a CSV file ({error}).") from error


def _csv_int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"Line {line} of {path} has {value!r} in the {column} column, "
                           "where a whole number belongs.") from None


def _require(directory: Path, kind: str, missing: list[str]) -> None:
    """Raise one sentence naming what is missing (the first five, then a count)."""
    if not directory.is_dir():
        raise DatasetError(f"There is no folder at {directory}.")
    if missing:
        shown = ", ".join(missing[:5])
        more = f" (and {len(missing) - 5} more files)" if len(missing) > 5 else ""
        raise DatasetError(f"The {kind} folder {directory} is missing: {shown}{more}.")


def _slug(path: Path) -> str:
    """A file-name-safe rendering of an absolute path, for readable cache keys."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(path)).strip("_")[-80:]


def _listing_digest(directory: Path, relative: list) -> str:
    """Content key of a user data set: its absolute path and each listed file's size and mtime,
    so editing, adding or removing a file gives a new key."""
    digest = hashlib.sha256(str(directory).encode())
    for name in relative:
        try:
            stat = (directory / name).stat()
            digest.update(f"\n{name}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"\n{name}\tmissing".encode())
    return digest.hexdigest()[:12]

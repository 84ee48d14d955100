"""The bundled concept set's painter: 11 colours, 10 textures and 7 shapes on crops of the sample photos.

Each image is planned from ``numpy.random.default_rng([seed, index])`` (every random choice drawn
in a fixed order), painted back to front into label maps, and its masks taken from those maps, so
an image depends only on (seed, index, size, mask size). As in Broden, colour is labelled on every
pixel (see :data:`COLOUR_RGB`), photo included; textures and shapes are labelled where they were
painted. :mod:`.store` keeps drawn images on disk; :mod:`.bundled` puts the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..images import list_samples, load_sample
from .base import Concept, Sample, nearest_indices

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

_PALETTE = np.array(list(COLOUR_RGB.values()), dtype=np.int16)
_TEXTURE_BASE = len(COLOUR_RGB)
_SHAPE_BASE = _TEXTURE_BASE + len(TEXTURE_NAMES)
_KINDS = ("colour", "texture", "shape")
_KIND_WEIGHTS = (0.3, 0.3, 0.4)


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Element:
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
class Backdrop:
    photo: int           # index into _background_photos()
    box: tuple[float, float, float, float]
    mirrored: bool


@dataclass(frozen=True)
class Plan:
    backdrop: Backdrop
    elements: tuple[Element, ...]  # back to front


def plan_image(rng: np.random.Generator, size: int) -> Plan:
    """Every random choice of one image, drawn in a fixed order so a seed gives one picture."""
    elements = tuple(_plan_element(rng, size) for _ in range(int(rng.integers(1, 4))))
    return Plan(_plan_backdrop(rng), elements)


def _plan_element(rng: np.random.Generator, size: int) -> Element:
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
        return Element(kind, cx=cx, cy=cy, angle=angle, colours=(int(rng.integers(11)),),
                       **geometry)
    period = max(6.0, float(rng.uniform(10.0, 20.0)) * size / 224)
    return Element(kind, cx=cx, cy=cy, angle=angle,
                   colours=tuple(int(c) for c in rng.choice(11, 2, replace=False)),
                   texture=int(rng.integers(len(TEXTURE_NAMES))), period=period,
                   phase=tuple(float(p) for p in rng.uniform(0.0, period, 2)), **geometry)


def _plan_backdrop(rng: np.random.Generator) -> Backdrop:
    """A random square crop (45-100 % of the short side) of one sample photo, maybe mirrored."""
    photos = _background_photos()
    photo = int(rng.integers(len(photos)))
    width, height = photos[photo].size
    side = float(rng.uniform(0.45, 1.0)) * min(width, height)
    left = float(rng.uniform(0.0, width - side))
    top = float(rng.uniform(0.0, height - side))
    return Backdrop(photo, (left, top, left + side, top + side), bool(rng.random() < 0.5))


@lru_cache(maxsize=1)
def _background_photos() -> tuple[Image.Image, ...]:
    """The backdrop photos, decoded once per process. The list is fixed (not whatever the
    gallery holds) so that a photo added to the gallery cannot change cached sets."""
    missing = [name for name in BACKGROUND_SAMPLES if name not in list_samples()]
    if missing:
        raise DatasetError(f"The sample pictures {', '.join(missing)} are missing from "
                           "assets/samples, so the bundled concept images cannot be drawn.")
    return tuple(load_sample(name) for name in BACKGROUND_SAMPLES)


# --------------------------------------------------------------------------- geometry

def element_region(element: Element, size: int) -> tuple[slice, slice, np.ndarray]:
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


def _silhouette(element: Element, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


def pattern_ink(element: Element, rows: slice, cols: slice) -> np.ndarray:
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


# --------------------------------------------------------------------------- painting

@dataclass(frozen=True)
class LabelMaps:
    """Per pixel, what the front-most element put there (-1 = the photo): the palette index it
    was painted with, its texture, its shape."""

    colour: np.ndarray
    texture: np.ndarray
    shape: np.ndarray


def paint_maps(elements: tuple[Element, ...], size: int) -> LabelMaps:
    """Paint the elements back to front into label maps; a later element overwrites every label
    of the pixels it covers, so the maps (and the masks taken from them) show only what is
    visible."""
    maps = LabelMaps(*(np.full((size, size), -1, np.int8) for _ in range(3)))
    for element in elements:
        rows, cols, inside = element_region(element, size)
        colour = maps.colour[rows, cols]
        if element.texture >= 0:
            ink = pattern_ink(element, rows, cols)
            colour[inside & ink] = element.colours[0]
            colour[inside & ~ink] = element.colours[1]
        else:
            colour[inside] = element.colours[0]
        maps.texture[rows, cols][inside] = element.texture
        shape = SHAPE_NAMES.index(element.outline) if element.kind == "shape" else -1
        maps.shape[rows, cols][inside] = shape
    return maps


def _backdrop_pixels(backdrop: Backdrop, size: int) -> np.ndarray:
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


def _masks(image: np.ndarray, maps: LabelMaps, mask_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(concept ids ascending, their masks at mask_size) of every concept with a visible pixel
    on the mask grid. Colours come from the pixels themselves, so the photo's own reds and greys
    are labelled too and absence of a colour is known exactly; textures and shapes come from the
    painted elements."""
    grid = nearest_indices(image.shape[0], mask_size)
    colours = colour_labels(image[np.ix_(grid, grid)])
    ids, masks = [], []
    for small, base in ((colours, 0), (maps.texture[np.ix_(grid, grid)], _TEXTURE_BASE),
                        (maps.shape[np.ix_(grid, grid)], _SHAPE_BASE)):
        present = np.flatnonzero(np.bincount(small[small >= 0], minlength=1))
        ids.append(present + base)
        masks.append(small[None] == present[:, None, None].astype(np.int8))
    return np.concatenate(ids).astype(np.int64), np.concatenate(masks)


def draw_sample(index: int, *, seed: int, size: int, mask_size: int) -> Sample:
    """Bundled image ``index``: it depends only on (seed, index, size, mask_size), never on how
    many images the set has, so a short set is a prefix of a long one."""
    rng = np.random.default_rng([seed, index])
    plan = plan_image(rng, size)
    maps = paint_maps(plan.elements, size)
    image = _paint_pixels(_backdrop_pixels(plan.backdrop, size), maps.colour, rng)
    ids, masks = _masks(image, maps, mask_size)
    return Sample(image, ids, masks, CATEGORIES)


def concept_list() -> tuple[Concept, ...]:
    """The bundled set's 28 concepts: colours, then textures, then shapes (ids in that order)."""
    names = ([(name, "colour") for name in COLOUR_RGB] + [(n, "texture") for n in TEXTURE_NAMES]
             + [(name, "shape") for name in SHAPE_NAMES])
    return tuple(Concept(i, name, category) for i, (name, category) in enumerate(names))

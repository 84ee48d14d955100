"""Substrate images (sec. 3, "Dataset"): blank garments on white, and the paper's augmentations.

The paper used ~2800 photos of Tommy Hilfiger body-wear; here garment silhouettes are drawn from
polygons (t-shirt, long-sleeve, tank top, hoodie, shorts, trousers, skirt, dress), deterministic by
seed, in a random plain colour on white. Each comes with its background mask (where L_m asks for
white). The augmentations are the paper's: colour-axis swaps, colour shifts (one colour axis set to
255 when no information is lost and the number of distinct colours stays the same) and horizontal
flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError, DatasetError, GlassboxError

MIN_SUBSTRATES = 4
MAX_SUBSTRATES = 500
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Outlines in a unit square (x right, y down), left half only for symmetric garments: mirrored.
_HALF_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "t-shirt": [(0.5, 0.12), (0.38, 0.12), (0.14, 0.24), (0.06, 0.42), (0.2, 0.47), (0.27, 0.36), (0.27, 0.9),
                (0.5, 0.9)],
    "long-sleeve": [(0.5, 0.12), (0.38, 0.12), (0.16, 0.22), (0.05, 0.8), (0.15, 0.82), (0.27, 0.4), (0.27, 0.9),
                    (0.5, 0.9)],
    "tank top": [(0.5, 0.2), (0.4, 0.1), (0.33, 0.1), (0.3, 0.3), (0.25, 0.4), (0.25, 0.9), (0.5, 0.9)],
    "hoodie": [(0.5, 0.2), (0.42, 0.06), (0.32, 0.08), (0.16, 0.24), (0.04, 0.82), (0.15, 0.84), (0.26, 0.42),
               (0.26, 0.92), (0.5, 0.92)],
    "shorts": [(0.5, 0.2), (0.24, 0.2), (0.18, 0.7), (0.44, 0.72), (0.5, 0.45)],
    "trousers": [(0.5, 0.08), (0.28, 0.08), (0.22, 0.94), (0.42, 0.94), (0.5, 0.35)],
    "skirt": [(0.5, 0.2), (0.34, 0.2), (0.16, 0.8), (0.5, 0.84)],
    "dress": [(0.5, 0.1), (0.4, 0.08), (0.34, 0.1), (0.33, 0.34), (0.28, 0.46), (0.14, 0.94), (0.5, 0.96)],
}
GARMENTS = tuple(_HALF_OUTLINES)


@dataclass(frozen=True)
class Substrate:
    """One substrate: the image and where its background is."""

    image: np.ndarray  # H x W x 3 uint8, white background
    background: np.ndarray  # H x W bool
    garment: str


def garment_outline(garment: str, size: int) -> list[tuple[float, float]]:
    """The full outline in pixels: the half outline and its mirror."""
    if garment not in _HALF_OUTLINES:
        raise ConfigError(f"No garment called '{garment}'; choose one of {', '.join(GARMENTS)}.")
    half = _HALF_OUTLINES[garment]
    full = half + [(1 - x, y) for x, y in reversed(half)]
    return [(x * size, y * size) for x, y in full]


def draw_substrate(garment: str, size: int, colour: tuple[int, int, int]) -> Substrate:
    """A garment in a plain colour on white."""
    picture = Image.new("RGB", (size, size), (255, 255, 255))
    mask = Image.new("L", (size, size), 0)
    outline = garment_outline(garment, size)
    ImageDraw.Draw(picture).polygon(outline, fill=tuple(colour))
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    return Substrate(np.asarray(picture).copy(), np.asarray(mask) == 0, garment)


def random_substrate(rng: np.random.Generator, size: int) -> Substrate:
    garment = GARMENTS[int(rng.integers(len(GARMENTS)))]
    colour = tuple(int(v) for v in rng.integers(20, 236, 3))  # never pure white: the garment must show
    return draw_substrate(garment, size, colour)


def random_blob_outline(rng: np.random.Generator, size: int) -> list[tuple[float, float]]:
    """A random star-shaped outline: a smooth radius around a centre (a few low harmonics), so shapes
    the eight garments never show -- bags, scarves, caps -- are not new to G."""
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radius = np.full_like(angles, 1.0)
    for harmonic in range(1, 5):
        radius += rng.uniform(-0.35, 0.35) / harmonic * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.35, None)
    stretch = rng.uniform(0.5, 1.0, 2)
    points = np.stack([np.cos(angles) * radius * stretch[0], np.sin(angles) * radius * stretch[1]], 1)
    points /= np.abs(points).max() * 2.2
    return [(float(x + 0.5) * size, float(y + 0.5) * size) for x, y in points]


def varied_substrate(rng: np.random.Generator, size: int) -> Substrate:
    """A garment or a random shape, at a random size and place, in a plain colour with soft shading
    (folds and light, like a photo of a garment on white) -- the ``shapes="varied"`` substrates."""
    colour = np.array(rng.integers(20, 236, 3), dtype=np.float32)
    if rng.random() < 0.5:
        outline = garment_outline(GARMENTS[int(rng.integers(len(GARMENTS)))], size)
        name = "garment"
    else:
        outline, name = random_blob_outline(rng, size), "shape"
    scale, cx, cy = rng.uniform(0.6, 1.0), *rng.uniform(-0.12, 0.12, 2)
    outline = [((x - size / 2) * scale + size / 2 + cx * size, (y - size / 2) * scale + size / 2 + cy * size)
               for x, y in outline]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    inside = np.asarray(mask) > 0
    yy, xx = np.mgrid[0:size, 0:size] / size
    light = 1 + rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.15, 0.15) * (yy - 0.5)
    for _ in range(int(rng.integers(0, 4))):  # folds: soft dark ridges
        angle, offset = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8)
        distance = np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset)
        light -= rng.uniform(0.05, 0.15) * np.exp(-(distance / rng.uniform(0.01, 0.04)) ** 2)
    image = np.full((size, size, 3), 255.0, dtype=np.float32)
    image[inside] = np.clip(colour[None] * light[inside][:, None], 0, 250)
    return Substrate(image.round().astype(np.uint8), ~inside, name)


def swap_colour_axes(image: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """The paper's colour swap: the colour axes in another order."""
    return image[..., list(order)].copy()


def shift_colour(image: np.ndarray, axis: int) -> np.ndarray | None:
    """The paper's colour shift: every value of one colour axis set to 255 -- or None when that
    would lose information (two colours become one)."""
    shifted = image.copy()
    shifted[..., axis] = 255
    before = len(np.unique(image.reshape(-1, 3), axis=0))
    after = len(np.unique(shifted.reshape(-1, 3), axis=0))
    return shifted if after == before else None


def augment(substrate: Substrate, rng: np.random.Generator) -> Substrate:
    """A random mix of the three augmentations; the background stays white and stays where it was
    (flipped with the image)."""
    image, background = substrate.image, substrate.background
    if rng.random() < 0.5:
        image = swap_colour_axes(image, tuple(int(v) for v in rng.permutation(3)))
    if rng.random() < 0.3:
        shifted = shift_colour(image, int(rng.integers(3)))
        image = image if shifted is None else shifted
    if rng.random() < 0.5:
        image, background = image[:, ::-1].copy(), background[:, ::-1].copy()
    return Substrate(image, background, substrate.garment)


def substrate_from_picture(picture: np.ndarray, size: int, *, white: int = 240, name: str = "upload") -> Substrate:
    """A garment photo as a substrate: squared, resized, its near-white pixels the background."""
    from ..images import fit_square

    image = fit_square(picture, size)
    return Substrate(image, (image >= white).all(axis=2), name)


def load_substrate_folder(folder, size: int) -> list[Substrate]:
    """Every image in ``folder`` as a substrate; a sentence for a missing folder, an unreadable file
    or fewer than :data:`MIN_SUBSTRATES` images."""
    from pathlib import Path

    from ..images import decode_image

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"There is no folder at {folder}.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise DatasetError(f"{', '.join(others[:3])}{' and more' if len(others) > 3 else ''} in {folder.name}/ "
                           f"{'is not an image' if len(others) == 1 else 'are not images'} (PNG, JPEG, WebP or BMP).")
    if len(pictures) < MIN_SUBSTRATES:
        raise DatasetError(f"Training needs at least {MIN_SUBSTRATES} substrate images; {folder.name}/ has "
                           f"{len(pictures)}.")
    if len(pictures) > MAX_SUBSTRATES:
        raise DatasetError(f"{folder.name}/ has {len(pictures)} images; use at most {MAX_SUBSTRATES}.")
    substrates = []
    for path in pictures:
        try:
            picture = decode_image(path.read_bytes())
        except GlassboxError as error:
            raise DatasetError(f"{path.name}: {error}") from None
        substrates.append(substrate_from_picture(np.asarray(picture), size, name=path.name))
    return substrates


def substrate_batch(count: int, size: int, *, seed: int = 0, augmented: bool = True,
                    shapes: str = "garments") -> list[Substrate]:
    """``count`` substrates, deterministic by seed (substrate i depends on (seed, i) only); ``shapes``
    "garments" draws the eight outlines, "varied" also random shapes, sizes, places and shading."""
    if count < 1:
        raise ConfigError("Ask for at least one substrate.")
    draw = varied_substrate if shapes == "varied" else random_substrate
    batch = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        substrate = draw(rng, size)
        batch.append(augment(substrate, rng) if augmented else substrate)
    return batch


def substrate_tensors(substrates: list[Substrate]):
    """(B, 3, S, S) in [-1, 1] (G's tanh range) and (B, 1, S, S) background masks, for G and the losses."""
    import torch

    from ..images import SIGNED, to_tensor

    # channels-last: the layout these tensors always had (a permuted view of the pixels), so training
    # runs stay bit-identical to the recorded ones (assets/patterns/README.md): conv and resize
    # kernels round differently in the two layouts.
    pictures = to_tensor(np.stack([s.image for s in substrates]), value_range=SIGNED)
    pictures = pictures.contiguous(memory_format=torch.channels_last)
    background = torch.from_numpy(np.stack([s.background for s in substrates]))[:, None].float()
    return pictures, background

"""Masks (sec. 2.3): the area that may change. The loop multiplies the gradient by the mask before
each update, so pixels outside it never move (bit for bit, for every optimiser here)."""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import ConfigError, ImageError

Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions of the image side


def rectangle_mask(size: int, box: Box) -> np.ndarray:
    """A size x size mask that is 1 inside ``box`` = (left, top, right, bottom) as fractions of the side."""
    left, top, right, bottom = _pixel_box(size, box)
    mask = np.zeros((size, size), np.float32)
    mask[top:bottom, left:right] = 1.0
    return validate_mask(mask, size)


def ellipse_mask(size: int, box: Box) -> np.ndarray:
    """A size x size mask that is 1 inside the ellipse inscribed in ``box`` (fractions, as above)."""
    left, top, right, bottom = (v * size for v in box)
    if right <= left or bottom <= top:
        raise ConfigError("The ellipse has no area: its right/bottom edge must lie past its left/top edge.")
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    inside = (((xs - (left + right) / 2) / ((right - left) / 2)) ** 2
              + ((ys - (top + bottom) / 2) / ((bottom - top) / 2)) ** 2) <= 1.0
    return validate_mask(inside.astype(np.float32), size)


SHAPES = {"ellipse": ellipse_mask, "rectangle": rectangle_mask}


def shape_mask(shape: str, size: int, box: Box) -> np.ndarray:
    """An ``ellipse`` or ``rectangle`` mask by name."""
    if shape not in SHAPES:
        raise ConfigError(f"Unknown mask shape '{shape}'; use {' or '.join(SHAPES)}.")
    return SHAPES[shape](size, box)


def _pixel_box(size: int, box: Box) -> tuple[int, int, int, int]:
    if len(box) != 4 or not all(0.0 <= v <= 1.0 for v in box):
        raise ConfigError("A mask box is four fractions of the image side between 0 and 1: left, top, right, bottom.")
    left, top, right, bottom = (int(round(v * size)) for v in box)
    if right <= left or bottom <= top:
        raise ConfigError("The rectangle has no area: its right/bottom edge must lie past its left/top edge.")
    return left, top, right, bottom


def mask_from_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """A mask from a drawing or an uploaded image, resized to size x size.

    RGBA (a canvas drawing): painted where alpha > 0. Grey or RGB: white (> 50 %) is the area that
    may change, as in an image editor's layer mask. The result must not be empty.
    """
    from PIL import Image

    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] == 4:
        level = array[..., 3].astype(np.float32) / 255.0
    elif array.ndim == 3 and array.shape[2] == 3:
        level = array.astype(np.float32).mean(axis=2) / 255.0
    elif array.ndim == 2:
        level = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else max(float(array.max()), 1.0))
    else:
        raise ImageError(f"A mask must be a grey, RGB or RGBA image; this one has shape {array.shape}.")
    resized = Image.fromarray((level * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    threshold = 0.0 if array.ndim == 3 and array.shape[2] == 4 else 0.5
    return validate_mask((np.asarray(resized, np.float32) / 255.0 > threshold).astype(np.float32), size)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask made for another input size, at ``size`` x ``size`` (unchanged when it already is)."""
    mask = np.asarray(mask)
    if mask.shape == (size, size):
        return validate_mask(mask, size)
    return mask_from_pixels((mask * 255).astype(np.uint8), size)


def validate_mask(mask: np.ndarray | None, size: int, *, what: str = "mask",
                  empty: str = "paint or choose the area that may change") -> np.ndarray | None:
    """A float32 size x size mask with values in [0, 1], or a sentence saying what is wrong (``what``
    names it in the sentence: "mask", "hole")."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != (size, size):
        raise ConfigError(f"The {what} is {mask.shape[1] if mask.ndim > 1 else '?'} x {mask.shape[0]} pixels; "
                          f"it must match the model's {size} x {size} view.")
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ConfigError(f"{what.capitalize()} values must lie between 0 and 1.")
    if not mask.any():
        raise ConfigError(f"The {what} is empty: {empty}.")
    return mask


def mask_digest(mask: np.ndarray | None) -> str:
    """A short content hash of a mask ("none" without one): part of a run's key, and its name in a link."""
    if mask is None:
        return "none"
    return hashlib.sha256(np.ascontiguousarray(mask).tobytes()).hexdigest()[:16]

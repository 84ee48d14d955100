"""Images in and out of the engine.

- ``decode_image`` turns uploaded bytes into an 8-bit RGB ``PIL.Image``, or raises
  :class:`~engine.errors.ImageError` with a sentence a student understands (empty, not an image,
  unsupported format, damaged, too many bytes, too many pixels, too small).
- ``image_digest`` is the content hash that cache keys use.
- The sample gallery (``list_samples``, ``sample_bytes``, ``load_sample``) reads ``assets/samples``.
- ``fit_square``, ``to_tensor``, ``to_uint8``, ``quantize`` and ``to_png_bytes`` move pictures
  between PIL, uint8 arrays (H x W x 3) and float tensors (N x 3 x H x W in [0, 1]), keeping
  values on the 8-bit grid.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ImageError

MAX_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000
MIN_SIDE = 8

# Pillow plugin names; "JPEG" also opens multi-picture JPEGs (many phone and camera photos),
# which Pillow then reports as "MPO".
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED_FORMATS_TEXT = "PNG, JPEG, WebP, GIF, BMP or TIFF"

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"
SAMPLE_ORDER = (
    "chelsea", "coffee", "astronaut", "rocket", "motorcycle_left",  # photos
    "brick", "grass", "gravel",  # textures
)
SAMPLE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

# What a damaged or truncated file makes Pillow's decoders raise.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                  struct.error, zlib.error)
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


# --------------------------------------------------------------------------- decoding

def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
                 min_side: int = MIN_SIDE) -> Image.Image:
    """Decode uploaded bytes to an 8-bit RGB image, upright, transparency on white.

    Only the header is read before the size checks, so a decompression bomb is refused before
    its pixels are allocated. Multi-frame files (GIF, WebP, TIFF) give their first frame.
    """
    _check_byte_count(data, max_bytes)
    with _decompression_bombs_as_errors(max_pixels):
        image = _open_header(data)
        _check_dimensions(image.size, max_pixels, min_side)
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise _too_many_pixels(image.size, max_pixels) from error
        except _DECODE_ERRORS as error:
            raise ImageError("This image file is damaged or incomplete, so it cannot be decoded; "
                             "please upload it again or choose another image.") from error
    return _to_rgb(_upright(image))


def _check_byte_count(data: bytes, max_bytes: int) -> None:
    if len(data) == 0:
        raise ImageError("The file is empty (0 bytes); please choose an image file.")
    if len(data) > max_bytes:
        raise ImageError(f"This file is {_human_bytes(len(data))}; the limit is "
                         f"{_human_bytes(max_bytes)}. Please upload a smaller image.")


@contextlib.contextmanager
def _decompression_bombs_as_errors(max_pixels: int) -> Iterator[None]:
    # catch_warnings swaps the process-wide filter list; two threads racing here can at worst
    # leave this one "error" filter installed, which is the behaviour we want anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise _bomb_refused(error, max_pixels) from error


def _bomb_refused(error: Exception, max_pixels: int) -> ImageError:
    # Pillow refuses before we see the size; its message says "Image size (N pixels) exceeds ...".
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"about {_megapixels(int(found.group(1)), digits=0)}" if found else "far too many pixels"
    return ImageError(f"This image has {size}; the limit is {_megapixels(max_pixels)}. "
                      "Please resize it.")


def _open_header(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except _DECODE_ERRORS as error:
        other_format = _identify_any_format(data)
        if other_format:
            raise ImageError(f"This file is an image in the {other_format} format, which Glassbox "
                             f"does not accept; please upload a {ACCEPTED_FORMATS_TEXT} image."
                             ) from error
        raise ImageError(f"This file is not an image Glassbox can read; please upload a "
                         f"{ACCEPTED_FORMATS_TEXT} image.") from error


def _identify_any_format(data: bytes) -> str | None:
    """Name the format of a file we refuse, if any Pillow plugin recognises its header."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format
    except Exception:  # only used to word the error message; any failure means "not an image"
        return None


def _check_dimensions(size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise _too_many_pixels(size, max_pixels)
    if min(width, height) < min_side:
        raise ImageError(f"This image is {width} × {height} pixels; each side must be at least "
                         f"{min_side} pixels. Please choose a larger image.")


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> ImageError:
    width, height = size
    return ImageError(f"This image is {width} × {height} pixels; the limit is "
                      f"{_megapixels(max_pixels)}. Please resize it.")


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not reject an otherwise good photo
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_stretch_to_uint8(np.asarray(image)), "L").convert("RGB")
    if image.has_transparency_data:
        return _flatten_on_white(image)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(f"This image uses the colour mode {image.mode!r}, which Glassbox cannot "
                         "convert to RGB; please save it as an ordinary RGB image.") from error


def _flatten_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the image's own value range onto 0..255; Pillow's convert would clip it to white."""
    values = values.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    values = np.where(finite, values, low)
    if high == low:  # a constant image has no contrast to keep
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _megapixels(pixels: int, digits: int | None = None) -> str:
    count = round(pixels / 1e6, digits) if digits is not None else pixels / 1e6
    return f"{count:g} megapixels"


def _human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count / 1024:.0f} kB"
    return f"{count / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


def image_digest(data: bytes) -> str:
    """SHA-256 of the file's bytes: an exact cache key (Streamlit's own hash samples big arrays)."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- sample gallery

def list_samples() -> list[str]:
    """Sample names without extension: the photos first, then the textures, then any others."""
    if not SAMPLES_DIR.is_dir():
        return []
    found = {path.stem for path in SAMPLES_DIR.iterdir()
             if path.is_file() and path.suffix.lower() in SAMPLE_EXTENSIONS}
    known = [name for name in SAMPLE_ORDER if name in found]
    return known + sorted(found.difference(SAMPLE_ORDER))


def sample_bytes(name: str) -> bytes:
    """The file bytes of one sample; only listed names are read, so no path leaves the folder."""
    names = list_samples()
    if name not in names:
        choices = ", ".join(names)
        raise ImageError(f"There is no sample called {name!r}; choose one of {choices}.")
    path = next(SAMPLES_DIR / f"{name}{ext}" for ext in SAMPLE_EXTENSIONS
                if (SAMPLES_DIR / f"{name}{ext}").is_file())
    return path.read_bytes()


def load_sample(name: str) -> Image.Image:
    """A sample decoded exactly as an upload would be."""
    return decode_image(sample_bytes(name))


# --------------------------------------------------------------------------- arrays and tensors

def fit_square(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Scale the shorter side to ``size`` and cut the centred square: uint8 size x size x 3."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    # ImageOps.fit crops the source box first and resamples it once (antialiased), so the
    # centre is exact to the sub-pixel instead of rounded twice.
    square = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8).copy()


Range = tuple[float, float]
UNIT: Range = (0.0, 1.0)  # what models and every method take
SIGNED: Range = (-1.0, 1.0)  # a tanh generator's output (patterns)


def to_tensor(image: np.ndarray | Image.Image, *, device: torch.device | str | None = None,
              value_range: Range = UNIT) -> torch.Tensor:
    """uint8 H x W x 3 (or PIL) -> float32 1 x 3 x H x W in ``value_range`` ([0, 1] by default).

    A batch N x H x W x 3 gives N x 3 x H x W.
    """
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    array = np.array(image, copy=True)  # a writable copy: PIL and cached arrays are read-only
    if array.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8 pixels, got {array.dtype}.")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"to_tensor expects H x W x 3 or N x H x W x 3 pixels, got {array.shape}.")
    # Move the uint8 bytes (4x smaller than float) to the device, then convert there.
    pixels = torch.from_numpy(array)
    if device is not None:
        pixels = pixels.to(device)
    pixels = pixels.permute(0, 3, 1, 2)
    x = pixels.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
    low, high = value_range
    return x if (low, high) == UNIT else x.mul_(high - low).add_(low)


def to_uint8(x: torch.Tensor | np.ndarray, *, value_range: Range = UNIT) -> np.ndarray:
    """Floats in ``value_range`` ([0, 1] by default, or :data:`SIGNED`), 3 x H x W or 1 x 3 x H x W
    -> uint8 H x W x 3, clipped and rounded.

    A batch N x 3 x H x W (N > 1) gives N x H x W x 3.
    """
    low, high = value_range
    if (low, high) != UNIT:
        x = (x - low) / (high - low)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"to_uint8 expects 3 x H x W or N x 3 x H x W values, "
                         f"got {tuple(x.shape)}.")
    if isinstance(x, torch.Tensor):
        # Round on the tensor's own device so only uint8 bytes (4x fewer) travel to the CPU.
        x = quantize(torch.nan_to_num(x.detach().float())).mul_(255).round_()
        pixels = x.to(torch.uint8).cpu().numpy()
    else:
        x = np.nan_to_num(np.asarray(x, dtype=np.float32))
        pixels = np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    pixels = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    return pixels[0] if len(pixels) == 1 else pixels


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Snap to the 8-bit grid, the values an image saved as PNG would have."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def difference_image(changed: np.ndarray, original: np.ndarray, gain: float = 10.0) -> np.ndarray:
    """What changed between two uint8 pictures, ``gain`` times, around mid-grey (128 = no change):
    the relabelling paper's Fig. 1 centre column, inversion's "the change", patterns' "what G
    changed"."""
    delta = np.asarray(changed, dtype=np.float32) - np.asarray(original, dtype=np.float32)
    return np.clip(np.round(128.0 + gain * delta), 0, 255).astype(np.uint8)


def to_png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 H x W x 3 (or H x W) array, for downloads."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"to_png_bytes expects uint8 pixels, got {pixels.dtype}.")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()

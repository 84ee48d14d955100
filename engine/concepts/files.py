"""What the Broden and folder loaders share: reading an image or a CSV file of a user's data set,
sampling a mask to a square, naming what is missing, and a content key for the cache.

Masks smaller than the image are taken by nearest sampling (:func:`.base.nearest_indices`) of the
centred square, as :func:`engine.images.fit_square` cuts the image.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DatasetError, GlassboxError
from ..images import decode_image, fit_square
from .base import nearest_indices


def read_square_image(path: Path, size: int) -> np.ndarray:
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


def nearest_square(values: np.ndarray, size: int) -> np.ndarray:
    """Cut the centred square (as fit_square does) and sample it at size x size, nearest."""
    height, width = values.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    grid = nearest_indices(side, size)
    return values[np.ix_(top + grid, left + grid)]


def csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
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


def csv_int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"Line {line} of {path} has {value!r} in the {column} column, "
                           "where a whole number belongs.") from None


def require_files(directory: Path, kind: str, missing: list[str]) -> None:
    """Raise one sentence naming what is missing (the first five, then a count)."""
    if not directory.is_dir():
        raise DatasetError(f"There is no folder at {directory}.")
    if missing:
        shown = ", ".join(missing[:5])
        more = f" (and {len(missing) - 5} more files)" if len(missing) > 5 else ""
        raise DatasetError(f"The {kind} folder {directory} is missing: {shown}{more}.")


def path_slug(path: Path) -> str:
    """A file-name-safe rendering of an absolute path, for readable cache keys."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(path)).strip("_")[-80:]


def listing_digest(directory: Path, relative: list) -> str:
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

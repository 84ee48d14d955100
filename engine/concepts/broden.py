"""Broden as NetDissect-Lite ships it (``broden1_224``): ``index.csv``, ``label.csv`` and ``images/``.

Segmentations are PNGs whose label number is R + 256 * G; a bare number in a column labels the
whole image (scenes, textures). Images are read on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..progress import Progress, report
from .base import MAX_SIZE, MIN_SIZE, Concept, ConceptSet, Sample
from .files import (csv_int, csv_rows, listing_digest, nearest_square, path_slug, read_square_image,
                    require_files)

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
        image = read_square_image(self.directory / "images" / row.image, self.image_size)
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
        return nearest_square(rgb[..., 0] + 256 * rgb[..., 1], self.mask_size)


def load_broden(path: str | Path, *, progress: Progress | None = None) -> ConceptSet:
    """A Broden folder (NetDissect-Lite's ``broden1_224``): ``index.csv``, ``label.csv`` and
    ``images/``. Every file the index names is checked to exist now, so a partial download is
    reported at once, with the missing files listed."""
    directory = Path(path).expanduser().resolve()
    missing = [n for n in ("index.csv", "label.csv", "images/")
               if not (directory / n.rstrip("/")).exists()]
    require_files(directory, "Broden", missing if "index.csv" in missing else [])
    rows, (image_size, mask_size) = _read_broden_index(directory / "index.csv")
    require_files(directory, "Broden", missing + _missing_broden_files(directory, rows, progress))
    concepts, number_to_id = _read_broden_labels(directory / "label.csv")
    return ConceptSet(
        name=f"Broden {directory.name} ({len(rows)} images, {image_size} px)",
        key=f"broden-{path_slug(directory)}-{listing_digest(directory, ['index.csv', 'label.csv'])}",
        concepts=concepts, image_size=image_size, mask_size=mask_size, length=len(rows),
        read=_BrodenReader(directory, rows, number_to_id, image_size, mask_size))


def _read_broden_labels(path: Path) -> tuple[tuple[Concept, ...], np.ndarray]:
    """Concepts from label.csv rows numbered 1 and up, in number order, with a number -> id
    table; the category is the first named in e.g. "object(3);part(1)"."""
    entries = []
    for line, row in csv_rows(path, _BRODEN_LABEL_COLUMNS):
        number = csv_int(row["number"], path, line, "number")
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
    for line, row in csv_rows(path, _BRODEN_INDEX_COLUMNS):
        if sizes is None:
            sizes = (csv_int(row["ih"], path, line, "ih"), csv_int(row["sh"], path, line, "sh"))
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

"""A user's concept folder: ``images/<stem>.<ext>`` plus ``masks/<stem>/<concept>.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..progress import Progress, report
from .base import MAX_SIZE, MIN_SIZE, Concept, ConceptSet, Sample, is_whole_number
from .files import (csv_rows, listing_digest, nearest_square, path_slug, read_square_image,
                    require_files)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class _FolderReader:
    """Reads ``images/<stem>.<ext>`` and its ``masks/<stem>/<concept>.png`` on demand."""

    def __init__(self, images: list[Path], masks: list[dict[int, Path]], size: int,
                 categories: tuple[str, ...]):
        self.images, self.masks, self.size, self.categories = images, masks, size, categories

    def __call__(self, index: int) -> Sample:
        image = read_square_image(self.images[index], self.size)
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
    if not is_whole_number(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise DatasetError(f"The image size must be {MIN_SIZE} to {MAX_SIZE} pixels, not {size}.")
    directory = Path(path).expanduser().resolve()
    require_files(directory, "concept", [n for n in ("images/", "masks/")
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
        key=f"folder-{path_slug(directory)}-s{size}-{listing_digest(directory, listing)}",
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
            for _, row in csv_rows(path, ("name", "category"))}


def _read_mask(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"))
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"The mask {path} is missing or is not an image.") from error
    return nearest_square(grey >= 128, size)

"""Sets of natural images, and a model's features over them, for every page that works on many images.

The lecture's opening question, "What has been learned by ConvNets?"
(shared/papers/lecture-visualizing-and-fooling-convnets.txt: maximally activating patches, nearest
neighbours in feature space, t-SNE of the last layer), needs sets of real photos. Four sources, one
:class:`ImageSet`:

* :func:`bundled_photos` -- every real photo that ships offline: the photos scikit-image installs
  with ``skimage.data`` (colour and grey; no synthetic test patterns) plus any gallery photo of
  ``assets/samples`` that is not one of them. Credits: :data:`BUNDLED_CREDITS` (assets/CREDITS.md);
* :func:`zip_set` -- a ZIP upload, up to :data:`MAX_ZIP_BYTES` and :data:`MAX_ZIP_MEMBERS` files;
  every member goes through :func:`engine.images.decode_image`'s checks, bad members are listed in
  :attr:`ImageSet.skipped` and the rest is used;
* :func:`folder_set` -- the images under a folder (recursive), bad files skipped and listed;
* :func:`broden_set` -- the images of a Broden folder (:func:`engine.concepts.load_broden`).

Decoded pictures (centre square, :func:`engine.images.fit_square`) are written once, atomically,
under ``cache_root()/"imagesets"/<key>/``, so reading a batch is a memory-mapped copy and a job in
another process reopens the set by its key (:func:`cached_set`, or :func:`open_set` with the key).

Features per (model, layer, set) -- :func:`set_features`, :func:`set_features_many` -- run
dissection's streaming forward loop (:func:`engine.dissection.stream_forward`), keep per image and
channel the maximum over positions, where it is and the mean (or the penultimate vector, the input
of the model's last ``nn.Linear``), and are cached on disk. Under ``torchrun`` they are sharded
across ranks and merged exactly (:mod:`engine.distributed`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from torch import nn

from . import distributed
from .errors import ConfigError, DatasetError, GlassboxError
from .images import MAX_BYTES, SAMPLES_DIR, SAMPLE_EXTENSIONS, decode_image, fit_square
from .io import atomic_path, cache_root, write_json_atomic
from .models import ModelHandle
from .progress import Progress, report

IMAGESET_VERSION = 1
FEATURES_VERSION = 1
MIN_SIZE, MAX_SIZE = 32, 1024
MAX_ZIP_BYTES = 200 * 1024 * 1024  # Streamlit's own upload limit
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_UNPACKED = 2 * 1024 * 1024 * 1024  # what the members may unpack to, all together (ZIP bombs)
MAX_FOLDER_FILES = 100_000
PENULTIMATE = "penultimate"  # the input of the model's last nn.Linear (global-pooled features)

# skimage.data's photographs (file in the installed package -> the name shown), colour then grey.
# Left out as not photos: chessboard, color, logo, phantom, horse (a silhouette), binary blobs,
# the multipage TIFFs and the GIF; lfw_subset is 200 faces of 25 x 25 pixels, too small to show.
SKIMAGE_PHOTOS = (
    ("astronaut.png", "astronaut"), ("chelsea.png", "chelsea"), ("coffee.png", "coffee"),
    ("rocket.jpg", "rocket"), ("motorcycle_left.png", "motorcycle_left"),
    ("motorcycle_right.png", "motorcycle_right"), ("hubble_deep_field.jpg", "hubble_deep_field"),
    ("ihc.png", "immunohistochemistry"), ("retina.jpg", "retina"),
    ("camera.png", "camera"), ("coins.png", "coins"), ("moon.png", "moon"), ("page.png", "page"),
    ("text.png", "text"), ("clock_motion.png", "clock"), ("cell.png", "cell"),
    ("microaneurysms.png", "microaneurysms"), ("brick.png", "brick"), ("grass.png", "grass"),
    ("gravel.png", "gravel"),
)
BUNDLED_CREDITS = (
    "Photos shipped with scikit-image (skimage.data): CC0 or public domain (NASA, SpaceX, Stefan van der "
    "Walt, Rachel Michetti / Pikolo Espresso Bar, Lav Varshney, Brooklyn Museum, CMMI, HRF, Wikimedia "
    "Commons, CC0Textures, linolafett), the motorcycle pair from the Middlebury 2014 stereo benchmark "
    "(Scharstein et al., GCPR 2014). Each photo's source and licence: assets/CREDITS.md."
)


# ---------------------------------------------------------------------------------------------
# The set


class ImageSet:
    """Square uint8 pictures, read on demand (a memory map of the decoded cache, or the Broden
    folder), so a set of any length costs no more memory than a batch."""

    def __init__(self, *, name: str, key: str, source: str, size: int, labels: tuple[str, ...],
                 skipped: tuple[tuple[str, str], ...] = (), credits: str = "", what: str = "",
                 pixels: Path | None = None, broden: str | None = None):
        self.name, self.key, self.source, self.size = name, key, source, int(size)
        self.labels, self.skipped, self.credits = tuple(labels), tuple(skipped), credits
        self.what = what  # where the pictures come from, for describe()
        self._pixels_path, self._broden = pixels, broden
        self._memory = None
        self._concepts = None

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ImageSet({self.name!r}, key={self.key!r})"

    def __getstate__(self) -> dict:  # pickle (a spawned job) without the open map or concept reader
        return {k: v for k, v in self.__dict__.items() if k not in ("_memory", "_concepts")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _memory=None, _concepts=None)

    def image(self, index: int) -> np.ndarray:
        """size x size x 3 uint8."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Image {index} is outside 0..{len(self) - 1} of {self.name}.")
        return self._block(index, index + 1)[0]

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(N, S, S, 3) uint8 pictures and their (N,) int64 indices over ``start:stop``, one batch
        alive at a time."""
        stop = len(self) if stop is None else int(stop)
        if int(batch_size) < 1:
            raise ConfigError(f"The batch size must be at least 1, not {batch_size}.")
        if not 0 <= start <= stop <= len(self):
            raise DatasetError(f"The range {start}:{stop} does not fit in the {len(self)} images of {self.name}.")
        for first in range(start, stop, int(batch_size)):
            last = min(first + int(batch_size), stop)
            yield self._block(first, last), np.arange(first, last, dtype=np.int64)

    def describe(self) -> str:
        """One line for the screen, saying the size plainly (20 photos are not ImageNet)."""
        n = len(self)
        noun = {"bundled": "photo", "crops": "crop", "heldout": "photo"}.get(self.source, "image")
        scale = ("a tiny set, not ImageNet" if n < 100 else "a small set, not ImageNet" if n < 1000
                 else "a mid-sized set" if n < 10_000 else "a large set")
        skipped = f"; {len(self.skipped)} file{'s' if len(self.skipped) != 1 else ''} skipped" if self.skipped else ""
        return f"{n} {noun}{'s' if n != 1 else ''} ({self.what}), {self.size} px — {scale}{skipped}"

    def _block(self, start: int, stop: int) -> np.ndarray:
        if self._broden is not None:
            return np.stack([self._broden_image(i) for i in range(start, stop)])
        if self._memory is None:
            self._memory = np.memmap(self._pixels_path, dtype=np.uint8, mode="r",
                                     shape=(len(self), self.size, self.size, 3))
        return np.array(self._memory[start:stop])

    def _broden_image(self, index: int) -> np.ndarray:
        if self._concepts is None:
            from .concepts import load_broden

            self._concepts = load_broden(self._broden)
        image = self._concepts.sample(index).image
        return image if image.shape[0] == self.size else fit_square(image, self.size)


def imagesets_dir() -> Path:
    return cache_root() / "imagesets"


def cached_set(key: str) -> ImageSet:
    """The set stored under ``key`` (written by any process): how a job reopens a ZIP upload."""
    set_dir = imagesets_dir() / key
    loaded = _load_meta(set_dir) if key and "/" not in key and key not in (".", "..") else None
    if loaded is None:
        raise DatasetError(f"No image set is stored under the key {key!r}; open the set again from its "
                           "ZIP file or folder.")
    return loaded


def _load_meta(set_dir: Path) -> ImageSet | None:
    """The set described by ``meta.json``, if it and a pixel file of the right length are there."""
    try:
        meta = json.loads((set_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != IMAGESET_VERSION:
        return None
    count, size = int(meta["count"]), int(meta["size"])
    pixels = set_dir / "pixels.u8"
    if meta.get("broden"):
        pixels = None
    else:
        try:
            if pixels.stat().st_size != count * size * size * 3:
                return None
        except OSError:
            return None
    return ImageSet(name=meta["name"], key=set_dir.name, source=meta["source"], size=size,
                    labels=tuple(meta["labels"]), skipped=tuple(tuple(s) for s in meta["skipped"]),
                    credits=meta["credits"], what=meta["what"], pixels=pixels, broden=meta.get("broden"))


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"The image size must be a whole number of pixels from {MIN_SIZE} to {MAX_SIZE}, "
                          f"not {size}.")
    return int(size)


def _build(key: str, *, source: str, size: int, what: str, title: str, credits: str,
           items, progress: Progress | None, total: int, empty: str) -> ImageSet:
    """Decode ``items`` ((label, read bytes) pairs) into the cache folder of ``key``, unless it is
    already there. Pixels are appended to the file one picture at a time (bounded memory); the
    file, then ``meta.json``, land atomically, so a reader sees a whole set or none."""
    set_dir = imagesets_dir() / key
    existing = _load_meta(set_dir)
    if existing is not None:
        report(progress, 1.0, f"{len(existing)} images (cached)")
        return existing
    labels, skipped = [], []
    set_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(set_dir / "pixels.u8") as temporary, open(temporary, "wb") as file:
        for done, (label, read) in enumerate(items):
            try:
                picture = fit_square(decode_image(read()), size)
            except GlassboxError as error:
                skipped.append((label, str(error)))
            except (OSError, RuntimeError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as error:
                skipped.append((label, f"This file cannot be read ({error.__class__.__name__}); it may be "
                                       "damaged or encrypted."))
            else:
                file.write(picture.tobytes())
                labels.append(label)
            if done % 16 == 0:
                report(progress, (done + 1) / max(total, 1), f"decoding {done + 1} of {total} files")
        if not labels:
            first = f" The first problem: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
            raise DatasetError(f"{empty}{first}")
    name = f"{title} ({len(labels)} images, {size} px)"
    write_json_atomic(set_dir / "meta.json", {
        "version": IMAGESET_VERSION, "name": name, "source": source, "size": size, "count": len(labels),
        "labels": labels, "skipped": skipped, "credits": credits, "what": what, "broden": None})
    report(progress, 1.0, f"{len(labels)} images ready")
    return _load_meta(set_dir)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps([IMAGESET_VERSION, *parts], default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Sources


def _bundled_files() -> list[tuple[str, Path]]:
    """(label, file) of every bundled photo: scikit-image's, then gallery photos not among them."""
    files = []
    try:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        files = [(label, folder / name) for name, label in SKIMAGE_PHOTOS if (folder / name).is_file()]
    except ImportError:  # no scikit-image: the gallery alone
        pass
    known = {label for label, _ in files}
    if SAMPLES_DIR.is_dir():
        files += sorted((p.stem, p) for p in SAMPLES_DIR.iterdir()
                        if p.is_file() and p.suffix.lower() in SAMPLE_EXTENSIONS and p.stem not in known)
    return files


def bundled_photos(*, size: int = 224, progress: Progress | None = None) -> ImageSet:
    """Every real photo that ships offline: scikit-image's ``skimage.data`` photos (colour and grey),
    plus gallery photos that are not among them. Credits: :data:`BUNDLED_CREDITS`."""
    size = _check_size(size)
    files = _bundled_files()
    if not files:
        raise DatasetError("No bundled photos were found: scikit-image is not installed and assets/samples is empty.")
    key = f"bundled-{_digest('bundled', size, [(label, p.name, p.stat().st_size) for label, p in files])}-s{size}"
    return _build(key, source="bundled", size=size, what="bundled scikit-image photos", title="bundled photos",
                  credits=BUNDLED_CREDITS, items=((label, path.read_bytes) for label, path in files),
                  progress=progress, total=len(files), empty="None of the bundled photos could be decoded.")


def _is_junk(name: str) -> bool:
    """macOS and editor metadata that travels inside ZIPs and folders: not the user's pictures."""
    parts = name.replace("\\", "/").split("/")
    return "__MACOSX" in parts or any(part.startswith(".") for part in parts if part) or parts[-1] == "Thumbs.db"


def zip_set(data: bytes, filename: str = "upload.zip", *, size: int = 224,
            progress: Progress | None = None) -> ImageSet:
    """The images inside a ZIP file (folders inside it included), each checked as an upload is
    (:func:`engine.images.decode_image`). Bad members are listed in ``skipped``; the rest is used.
    Limits: :data:`MAX_ZIP_BYTES` for the file, :data:`MAX_ZIP_MEMBERS` files, :data:`MAX_ZIP_UNPACKED`
    unpacked."""
    size = _check_size(size)
    if len(data) > MAX_ZIP_BYTES:
        raise DatasetError(f"{filename} is {_megabytes(len(data))}; a ZIP upload may be at most "
                           f"{_megabytes(MAX_ZIP_BYTES)}.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not _is_junk(m.filename)]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise DatasetError(f"{filename} is not a ZIP archive Glassbox can open; please upload a .zip file of "
                           "images.") from error
    if len(members) > MAX_ZIP_MEMBERS:
        raise DatasetError(f"{filename} holds {len(members)} files; a ZIP upload may hold at most "
                           f"{MAX_ZIP_MEMBERS} files.")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_ZIP_UNPACKED:
        raise DatasetError(f"{filename} unpacks to {_megabytes(unpacked)}; a ZIP upload may unpack to at most "
                           f"{_megabytes(MAX_ZIP_UNPACKED)}.")
    if not members:
        raise DatasetError(f"{filename} is empty: it holds no files, so there are no images to use.")
    members.sort(key=lambda m: m.filename)
    key = f"zip-{_digest('zip', size, hashlib.sha256(data).hexdigest())}-s{size}"

    def reader(member: zipfile.ZipInfo):
        def read() -> bytes:
            with archive.open(member) as file:  # read at most one byte past the limit: a lying header
                return file.read(MAX_BYTES + 1)
        return read

    with archive:
        return _build(key, source="zip", size=size, what=f"from {filename}", title=filename, credits="",
                      items=((m.filename, reader(m)) for m in members), progress=progress, total=len(members),
                      empty=f"{filename} holds no image Glassbox can read ({len(members)} files, all skipped).")


def folder_set(path, *, size: int = 224, progress: Progress | None = None) -> ImageSet:
    """Every image under a folder, sub-folders included (hidden files skipped), in path order;
    files that are not images, or fail the upload checks, are listed in ``skipped``."""
    size = _check_size(size)
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise DatasetError(f"There is no folder at {directory}.")
    files = []
    for root, folders, names in os.walk(directory):
        folders[:] = sorted(f for f in folders if not _is_junk(f))
        files += [Path(root) / n for n in sorted(names) if not _is_junk(n)]
        if len(files) > MAX_FOLDER_FILES:
            raise DatasetError(f"The folder {directory} holds more than {MAX_FOLDER_FILES} files; point Glassbox "
                               "at a smaller folder.")
    if not files:
        raise DatasetError(f"The folder {directory} holds no files, so there are no images to use.")
    relative = sorted(str(p.relative_to(directory)) for p in files)
    listing = []
    for name in relative:
        try:
            stat = (directory / name).stat()
            listing.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            listing.append((name, -1, -1))
    key = f"folder-{_digest('folder', size, str(directory), listing)}-s{size}"
    return _build(key, source="folder", size=size, what=f"from the folder {directory.name}",
                  title=f"folder {directory.name}", credits="",
                  items=((name, (directory / name).read_bytes) for name in relative), progress=progress,
                  total=len(relative), empty=f"The folder {directory} holds no image Glassbox can read.")


def broden_set(path, *, size: int | None = None, progress: Progress | None = None) -> ImageSet:
    """The pictures of a Broden folder (:func:`engine.concepts.load_broden`), read on demand from the
    folder (no copy: Broden is 60k images); ``size`` None keeps Broden's own size."""
    from .concepts import load_broden

    concepts = load_broden(path, progress=progress)
    size = concepts.image_size if size is None else _check_size(size)
    directory = str(Path(path).expanduser().resolve())
    key = f"broden-{_digest('broden', size, concepts.key)}-s{size}"
    labels = tuple(row.image for row in concepts._read.rows)
    what = f"Broden {Path(directory).name}"
    meta = {"version": IMAGESET_VERSION, "name": f"{what} ({len(labels)} images, {size} px)", "source": "broden",
            "size": size, "count": len(labels), "labels": list(labels), "skipped": [], "credits": "", "what": what,
            "broden": directory}
    if distributed.is_lead() and _load_meta(imagesets_dir() / key) is None:
        write_json_atomic(imagesets_dir() / key / "meta.json", meta)  # so cached_set(key) can reopen it
    found = ImageSet(name=meta["name"], key=key, source="broden", size=size, labels=labels, what=what,
                     broden=directory)
    found._concepts = concepts
    return found


PHOTO_CROPS = 500  # random crops of the bundled photos offered as a set


def _random_square(photo: Image.Image, rng: np.random.Generator, share: tuple[float, float], size: int) -> np.ndarray:
    """A random square of ``share`` (low, high) of the photo's shorter side, anywhere in it, resized to
    ``size`` (uint8 size x size x 3)."""
    side = int(min(photo.size) * rng.uniform(*share))
    left = int(rng.integers(0, photo.size[0] - side + 1))
    top = int(rng.integers(0, photo.size[1] - side + 1))
    square = photo.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))


def photo_crops(n: int = PHOTO_CROPS, *, size: int = 224, seed: int = 0, progress: Progress | None = None
                ) -> ImageSet:
    """``n`` random square crops of the bundled photos (each a quarter to nine tenths of the photo's
    shorter side, anywhere in it), at full resolution before resizing: more positions and scales
    for top patches, and an embedding where crops of one photo should gather. Crop ``i`` is a pure
    function of (seed, i)."""
    size = _check_size(size)
    files = _bundled_files()
    if not files:
        raise DatasetError("No bundled photos were found: scikit-image is not installed and assets/samples is empty.")
    key = f"crops-{_digest('crops', size, seed, n, [(label, p.name, p.stat().st_size) for label, p in files])}-s{size}"

    decoded: dict[int, Image.Image] = {}

    def crop(i: int) -> bytes:
        from .images import to_png_bytes

        which = i % len(files)
        if which not in decoded:  # each photo decoded once (the set is built once, then read from disk)
            decoded[which] = decode_image(files[which][1].read_bytes())
        return to_png_bytes(_random_square(decoded[which], np.random.default_rng([seed, i]), (0.25, 0.9), size))

    return _build(key, source="crops", size=size, what=f"random crops of the {len(files)} bundled photos",
                  title="photo crops", credits=BUNDLED_CREDITS,
                  items=((f"{files[i % len(files)][0]} crop {i}", lambda i=i: crop(i)) for i in range(int(n))),
                  progress=progress, total=int(n), empty="No crop of the bundled photos could be made.")


HELD_OUT_PHOTOS = 20  # pictures in the held-out photo set


def _held_out_files() -> list[tuple[str, Path]]:
    """Real photos that ship offline and are *not* among the bundled ones: scikit-learn's two sample
    photos and matplotlib's two. Nothing tuned on the bundled set has seen them."""
    files = []
    try:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        files += [(name, folder / f"{name}.jpg") for name in ("china", "flower")]
    except ImportError:
        pass
    try:
        import matplotlib

        folder = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
        files += [("grace_hopper", folder / "grace_hopper.jpg"), ("present", folder / "Minduka_Present_Blue_Pack.png")]
    except ImportError:
        pass
    return [(label, path) for label, path in files if path.is_file()]


HELD_OUT_CREDITS = ("Held-out photos: scikit-learn's sample images (china.jpg by danielbuechele, flower.jpg by "
                    "vultilion; CC BY 2.0, Flickr) and matplotlib's sample data (grace_hopper.jpg, public domain; "
                    "Minduka_Present_Blue_Pack.png, CC0). See assets/CREDITS.md.")


def held_out_photos(n: int = HELD_OUT_PHOTOS, *, size: int = 224, seed: int = 0, progress: Progress | None = None
                    ) -> ImageSet:
    """Photos no bundled experiment was tuned on (:func:`_held_out_files`): each whole photo's centre
    square, then random crops of them (half to nine tenths of the shorter side) up to ``n``. The
    attacks lab measures how a universal perturbation generalises on these."""
    size = _check_size(size)
    files = _held_out_files()
    if not files:
        raise DatasetError("No held-out photos were found: scikit-learn's and matplotlib's sample photos are missing.")
    key = f"heldout-{_digest('heldout', size, seed, n, [(label, p.name, p.stat().st_size) for label, p in files])}-s{size}"
    decoded: dict[int, Image.Image] = {}

    def picture(i: int) -> bytes:
        from .images import to_png_bytes

        which = i % len(files)
        if which not in decoded:
            decoded[which] = decode_image(files[which][1].read_bytes())
        photo = decoded[which]
        if i < len(files):  # the whole photo first
            return to_png_bytes(fit_square(photo, size))
        return to_png_bytes(_random_square(photo, np.random.default_rng([seed, i]), (0.5, 0.9), size))

    def label(i: int) -> str:
        name = files[i % len(files)][0]
        return name if i < len(files) else f"{name} crop {i}"

    return _build(key, source="heldout", size=size, what=f"photos and crops of {len(files)} photos outside the bundled set",
                  title="held-out photos", credits=HELD_OUT_CREDITS,
                  items=((label(i), lambda i=i: picture(i)) for i in range(int(n))),
                  progress=progress, total=int(n), empty="No held-out photo could be read.")


CONCEPT_IMAGES = 1000  # the drawn concept images offered as a set (the dissection page's smallest set)


def concept_images(n: int = CONCEPT_IMAGES, *, size: int = 224, progress: Progress | None = None) -> ImageSet:
    """The dissection page's drawn concept images (colours, textures and shapes painted on crops of
    the bundled photos, :func:`engine.concepts.bundled_concepts`) as a plain image set: many more
    pictures than the photos, though drawn, not photographed."""
    from .concepts import bundled_concepts
    from .images import to_png_bytes

    size = _check_size(size)
    concepts = bundled_concepts(n, size=size, mask_size=size // 2, progress=progress)
    key = f"concepts-{_digest('concepts', size, concepts.key)}-s{size}"
    return _build(key, source="concepts", size=size, what="drawn concept images on bundled photos",
                  title="concept images", credits=BUNDLED_CREDITS,
                  items=((f"concept image {i}", lambda i=i: to_png_bytes(concepts.sample(i).image))
                         for i in range(len(concepts))), progress=progress, total=len(concepts),
                  empty="No concept image could be drawn.")


def open_set(spec: str, *, size: int = 224, progress: Progress | None = None) -> ImageSet:
    """``"bundled"``; ``"crops"``; ``"concepts"``; ``"heldout"``; a ``.zip`` file; a Broden folder (with ``index.csv``); any
    other folder; or the key of a set already stored (:func:`cached_set`)."""
    text = str(spec).strip()
    if text.lower() == "bundled":
        return bundled_photos(size=size, progress=progress)
    if text.lower() == "concepts":
        return concept_images(size=size, progress=progress)
    if text.lower() == "crops":
        return photo_crops(size=size, progress=progress)
    if text.lower() == "heldout":
        return held_out_photos(size=size, progress=progress)
    path = Path(text).expanduser()
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"{path} is a file but not a ZIP archive; give a .zip of images, a folder or "
                               "\"bundled\".")
        return zip_set(path.read_bytes(), path.name, size=size, progress=progress)
    if (path / "index.csv").is_file():
        return broden_set(path, size=size, progress=progress)
    if path.is_dir():
        return folder_set(path, size=size, progress=progress)
    if text and "/" not in text and (imagesets_dir() / text / "meta.json").is_file():
        return cached_set(text)
    raise DatasetError(f"There is no file or folder at {path}; give \"bundled\", a .zip of images, a folder "
                       "of images or a Broden folder.")


def _megabytes(count: int) -> str:
    from .images import _human_bytes  # the same wording as an image upload's limit

    return _human_bytes(count)


def pixel_vector(picture: np.ndarray, side: int = 32, *, size: int | None = None) -> np.ndarray:
    """One picture's raw-pixel vector (side * side * 3 uint8): the centre square at ``size``
    (default: the picture's shorter side; a set's pictures are already square), shrunk to
    side x side with PIL's box filter. :func:`pixel_vectors` makes a set's rows with it, so a query
    picture compares like with like."""
    picture = np.asarray(picture, dtype=np.uint8)
    size = int(size or min(picture.shape[:2]))
    if picture.shape[:2] != (size, size):
        picture = fit_square(picture, size)
    return np.asarray(Image.fromarray(picture).resize((side, side), Image.Resampling.BOX), np.uint8).reshape(-1)


def pixel_vectors(imageset: ImageSet, *, side: int = 32) -> np.ndarray:
    """(n, side * side * 3) uint8: each picture shrunk to side x side (antialiased), flattened: the
    raw-pixel space the lecture's nearest neighbours are compared in. Cached per set."""
    side = int(side)
    if not 1 <= side <= imageset.size:
        raise ConfigError(f"The pixel side must be 1 to {imageset.size}, not {side}.")
    path = imagesets_dir() / imageset.key / f"pixels-{side}.npy"
    if path.is_file():
        try:
            loaded = np.load(path)
            if loaded.shape == (len(imageset), side * side * 3):
                return loaded
        except (OSError, ValueError):
            pass
    rows = np.empty((len(imageset), side * side * 3), np.uint8)
    for pictures, indices in imageset.batches(64):
        for picture, index in zip(pictures, indices):
            rows[index] = pixel_vector(picture, side)
    if distributed.is_lead():
        with atomic_path(path) as temporary, open(temporary, "wb") as file:
            np.save(file, rows)
    return rows


# ---------------------------------------------------------------------------------------------
# Features per (model, layer, set)


@dataclass(frozen=True, eq=False)  # arrays: compare fields with np.array_equal
class SetFeatures:
    """One layer's features over a set, as plain arrays (cacheable, picklable)."""

    model: str
    layer: str
    set_key: str
    count: int
    kind: str  # "spatial" (a feature map layer) or "vector" (PENULTIMATE)
    values: np.ndarray  # (n, C) float32: spatial -> each channel's max over positions; vector -> the vector
    argmax: np.ndarray | None  # (n, C) int32 flat position y * width + x of that max (spatial only)
    means: np.ndarray | None  # (n, C) float32 spatial mean (spatial only)
    height: int
    width: int
    predicted: np.ndarray  # (n,) int64 top-1 class of each image
    confidence: np.ndarray  # (n,) float32 its softmax probability
    seconds: float

    @property
    def channels(self) -> int:
        return int(self.values.shape[1])


def last_linear(handle: ModelHandle) -> str:
    """The name of the model's last ``nn.Linear`` (its input is the penultimate vector)."""
    names = [name for name, module in handle.model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{handle.name} has no final linear layer, so it has no penultimate feature vector.")
    return names[-1]


def features_dir() -> Path:
    return cache_root() / "features"


def features_key(handle: ModelHandle, layer: str, imageset: ImageSet) -> str:
    settings = json.dumps({"v": FEATURES_VERSION, "model": handle.name, "layer": layer, "set": imageset.key},
                          sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:24]


def resolve_layer(handle: ModelHandle, layer: str | None) -> str:
    """The name a layer's features are stored under: :data:`PENULTIMATE`, or the spatial layer's name
    (None: the handle's default layer)."""
    return _resolve(handle, layer)[0]


def _resolve(handle: ModelHandle, layer: str | None) -> tuple[str, str, int, int]:
    """(layer name, kind, height, width); None is the handle's default (CAM) layer."""
    if layer == PENULTIMATE:
        last_linear(handle)
        return PENULTIMATE, "vector", 1, 1
    info = handle.layer(layer)
    return info.name, "spatial", info.height, info.width


def _save(features: SetFeatures, path: Path) -> None:
    meta = {k: getattr(features, k) for k in ("model", "layer", "set_key", "count", "kind", "height", "width",
                                                 "seconds")}
    arrays = {"values": features.values, "predicted": features.predicted, "confidence": features.confidence}
    if features.kind == "spatial":
        arrays.update(argmax=features.argmax, means=features.means)
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def _load(path: Path) -> SetFeatures | None:
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            arrays = {k: data[k] for k in ("values", "predicted", "confidence")}
            spatial = meta["kind"] == "spatial"
            arrays["argmax"] = data["argmax"] if spatial else None
            arrays["means"] = data["means"] if spatial else None
    except (OSError, ValueError, KeyError):
        return None
    return SetFeatures(**meta, **arrays)


def set_features(handle: ModelHandle, imageset: ImageSet, layer: str | None = PENULTIMATE, *, batch_size: int = 32,
                 progress: Progress | None = None, use_cache: bool = True) -> SetFeatures:
    """One layer's features over the set (see :class:`SetFeatures`); ``layer`` None is the model's
    default layer, :data:`PENULTIMATE` the input of its last ``nn.Linear``."""
    name = _resolve(handle, layer)[0]
    return set_features_many(handle, imageset, [name], batch_size=batch_size, progress=progress,
                             use_cache=use_cache)[name]


def set_features_many(handle: ModelHandle, imageset: ImageSet, layers, *, batch_size: int = 32,
                      progress: Progress | None = None, use_cache: bool = True) -> dict[str, SetFeatures]:
    """Several layers' features in one pass over the set (:func:`engine.dissection.stream_forward`),
    each cached on disk by (model, layer, set key, version); layers already cached are not recomputed.

    Memory: the (n, C) results plus one batch. Under ``torchrun`` each rank runs its block of
    whole batches (:func:`engine.distributed.shard_range`), the rows are gathered back into index
    order, rank 0 writes the cache and every rank returns the same arrays.
    """
    from .dissection import stream_forward

    if int(batch_size) < 1:
        raise ConfigError(f"The batch size must be at least 1, not {batch_size}.")
    resolved = {}
    for layer in layers:
        name, kind, height, width = _resolve(handle, layer)
        resolved[name] = (kind, height, width)
    results: dict[str, SetFeatures] = {}
    todo = {}
    for name, shape in resolved.items():
        path = features_dir() / f"{features_key(handle, name, imageset)}.npz"
        found = _load(path) if use_cache and path.is_file() else None
        if distributed.all_agree(found is not None):
            results[name] = found
        else:
            todo[name] = shape
    if not todo:
        report(progress, 1.0, "features loaded from the cache")
        return results
    started = time.perf_counter()
    count = len(imageset)
    start, stop = distributed.shard_range(count, int(batch_size))
    rows = stop - start
    spatial = [n for n, (kind, _, _) in todo.items() if kind == "spatial"]
    linear = [last_linear(handle)] if PENULTIMATE in todo else []
    parts: dict[str, dict[str, np.ndarray]] = {}
    predicted, confidence = np.zeros(rows, np.int64), np.zeros(rows, np.float32)
    batches = imageset.batches(int(batch_size), start, stop)
    for batch in stream_forward(handle, batches, layers=spatial, inputs_of=linear, start=start):
        at = slice(batch.start - start, batch.start - start + len(batch))
        for name in spatial:
            flat = batch.outputs[name].flatten(2)
            maxima, where = flat.max(dim=2)
            stored = parts.setdefault(name, _empty(rows, flat.shape[1], spatial=True))
            stored["values"][at], stored["argmax"][at] = maxima.numpy(), where.numpy()
            stored["means"][at] = flat.mean(dim=2).numpy()
        if linear:
            vector = batch.inputs[linear[0]].flatten(1)
            parts.setdefault(PENULTIMATE, _empty(rows, vector.shape[1], spatial=False))["values"][at] = vector.numpy()
        probabilities = batch.logits.softmax(dim=1)
        best, index = probabilities.max(dim=1)
        predicted[at], confidence[at] = index.numpy(), best.numpy()
        done = batch.start + len(batch) - start
        report(progress, done / max(rows, 1), f"features: {done} of {rows} images")
    predicted, confidence = distributed.gather_rows(predicted), distributed.gather_rows(confidence)
    seconds = distributed.broadcast_object(time.perf_counter() - started)
    for name, (kind, height, width) in todo.items():
        stored = parts.get(name)
        if stored is None:  # a rank with no images still takes part in the gather, with 0 rows
            stored = _empty(0, _channels(handle, name), spatial=kind == "spatial")
        merged = {k: distributed.gather_rows(v) for k, v in stored.items()}
        features = SetFeatures(model=handle.name, layer=name, set_key=imageset.key, count=count, kind=kind,
                               values=merged["values"], argmax=merged.get("argmax"), means=merged.get("means"),
                               height=height, width=width, predicted=predicted, confidence=confidence,
                               seconds=float(seconds))
        if use_cache and distributed.is_lead():
            _save(features, features_dir() / f"{features_key(handle, name, imageset)}.npz")
        results[name] = features
    report(progress, 1.0, f"features of {count} images ready")
    return {name: results[name] for name in resolved}


def _empty(rows: int, channels: int, *, spatial: bool) -> dict[str, np.ndarray]:
    if not spatial:
        return {"values": np.zeros((rows, channels), np.float32)}
    return {"values": np.zeros((rows, channels), np.float32), "argmax": np.zeros((rows, channels), np.int32),
            "means": np.zeros((rows, channels), np.float32)}


def _channels(handle: ModelHandle, name: str) -> int:
    if name == PENULTIMATE:
        return int(handle.module(last_linear(handle)).in_features)
    return handle.layer(name).channels


def image_features(handle: ModelHandle, picture: np.ndarray) -> np.ndarray:
    """The penultimate vector of one uint8 picture, through the same loop (:func:`stream_forward`)
    and the same capture as the set's, so a query compares like with like."""
    from .dissection import stream_forward

    linear = last_linear(handle)
    batch = next(iter(stream_forward(handle, [(np.asarray(picture, np.uint8)[None], None)], inputs_of=[linear],
                                     prefetch=False)))
    return batch.inputs[linear].flatten(1)[0].numpy()

"""The shard store: drawn concept images kept on disk, ``per_shard`` images per ``.npz`` file.

The folder of a store is named by what fixes its pictures (generator version, size, mask size,
seed), never by the set's length, so every ``n`` shares it and a short set is a prefix of a long
one. Shards are written through :func:`engine.io.atomic_path`: a reader sees a whole shard or none.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DatasetError
from ..io import atomic_path
from ..progress import Progress, report
from .base import Sample
from .painter import CATEGORIES, GENERATOR_VERSION, draw_sample

SHARD_SIZE = 256  # images per shard file, fewer for large images (see SHARD_BYTES)
SHARD_BYTES = 48 * 1024 * 1024  # the pixels one shard may hold; two stay loaded at a time
_STALE_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class _Shard:
    images: np.ndarray       # (count, S, S, 3) uint8
    concept_ids: np.ndarray  # (total,) int16, all images' ids one after another
    offsets: np.ndarray      # (count + 1,) int64: image j owns rows offsets[j]:offsets[j+1]
    masks: np.ndarray        # (total, ceil(m*m/8)) uint8, np.packbits of each flattened mask


class ShardStore:
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
            sample = draw_sample(shard * self.per_shard + j, seed=self.seed, size=self.size,
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
        """Write beside the target and move it into place (:func:`engine.io.atomic_path`)."""
        try:
            with atomic_path(self.path(shard)) as temporary, open(temporary, "wb") as file:
                np.savez(file, meta=self._meta(shard, len(data.images)), images=data.images,
                         concept_ids=data.concept_ids, offsets=data.offsets, masks=data.masks)
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

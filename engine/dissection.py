"""Network Dissection: which units detect which concepts (Bau et al. 2017, as in NetDissect-Lite).

Lecture: "Quantify Interpretability of Units" in shared/papers/lecture-visualizing-and-fooling-convnets.txt.
For each unit, measure how much its areas of high activation overlap the segmentation masks of
visual concepts; a layer is summed up as a histogram of detector units (e.g. 81/256 conv5 units
with IoU > 0.04). The stages, each its own function:

1. :func:`layer_activations` -- one forward pass per batch over the concept set, the layer's output
   appended to an :class:`ActivationStore` (a file on disk, or memory): bounded RAM for 10k images;
2. thresholds -- per unit, the activation value at the top quantile (default 0.005) of all its
   values over all images and positions, interpolated as ``torch.quantile`` does. Only the largest
   ceil((n-1) q) + 2 values of a unit take part, so :class:`RunningTop` keeps just those during
   stage 1 and the threshold costs no second pass (:func:`unit_thresholds` is the same on whole arrays);
3-4. :func:`tally` -- each unit's map upsampled (bilinear) to the mask resolution, binarised at its
   threshold, and the IoU tally over the whole set for every (unit, concept)::

       IoU(u, c) = sum_images |M_c ∩ L_u| / sum_images |M_c ∪ L_u|

   where, as in NetDissect-Lite, a unit's activated area only counts towards a concept's union in
   images where the concept's category is annotated;
5. the best concept per unit (:attr:`DissectionResult.best_concept`); a unit is a detector when that IoU > 0.04;
6. top-k activating images per unit (by the unit's maximum activation in the image), kept during
   stage 1.

Speed: bilinear upsampling is a convex combination of the map's values, so a unit whose maximum in
an image is not above its threshold (less a few float32 ulps: ATen's rounding can lift a blend an
ulp above its samples) cannot light a single pixel there. Only the (image, unit) pairs that can --
about the top quantile's share -- are tallied, and those without upsampling them: each upsampled
pixel row is linear within a cell of the map, so its lit pixels are a run whose ends follow from
the cell's corners, counted with the masks' row prefix sums (packed several concepts to an int64;
:func:`_cell_counts`); the rare pixel too close to the threshold to call sends its pair through
``F.interpolate``. The counts are exactly those of upsampling every map. On the CPU stage 1 runs
without a prefetch thread: the forward already keeps every core busy.
Results are cached on disk per (model, layer, dataset, settings): a second visit is instant.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DatasetError
from .hooks import capture
from .images import to_tensor
from .io import atomic_path, cache_root
from .models import LayerInfo, ModelHandle
from .progress import Progress, report

RESULT_VERSION = 1
RAM_STORE_BYTES = 512 << 20  # activations larger than this are streamed through a file on disk


@dataclass(frozen=True)
class DissectionConfig:
    """NetDissect-Lite's defaults: top quantile 0.005, detector IoU 0.04."""

    quantile: float = 0.005
    iou_threshold: float = 0.04
    batch_size: int = 32
    top_k: int = 8
    max_images: int | None = None  # use the first n images of the set (None: all)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DissectionResult:
    """Everything the page, the CLI and the cache need, as plain numbers."""

    model: str
    layer: str
    dataset: str  # the concept set's name
    dataset_key: str
    images: int
    thresholds: np.ndarray  # (units,)
    iou: np.ndarray  # (units, concepts) float32
    intersections: np.ndarray  # (units, concepts) float64 pixel counts
    unions: np.ndarray  # (units, concepts)
    concept_names: tuple[str, ...]
    concept_categories: tuple[str, ...]
    top_images: np.ndarray  # (units, top_k) dataset indices, most activating first
    top_values: np.ndarray  # (units, top_k) the unit's maximum activation in those images
    config: dict
    seconds: dict = field(default_factory=dict)

    @property
    def units(self) -> int:
        return int(self.iou.shape[0])

    @property
    def best_concept(self) -> np.ndarray:
        return self.iou.argmax(axis=1)

    @property
    def best_iou(self) -> np.ndarray:
        return self.iou.max(axis=1)

    @property
    def detectors(self) -> np.ndarray:
        """Boolean per unit: its best concept's IoU passes the detector threshold."""
        return self.best_iou > self.config["iou_threshold"]

    def detector_counts(self) -> dict[str, dict[str, int]]:
        """{category: {concept: number of detector units whose best concept it is}} (the lecture's histogram)."""
        counts: dict[str, dict[str, int]] = {}
        for unit in np.flatnonzero(self.detectors):
            concept = int(self.best_concept[unit])
            by_concept = counts.setdefault(self.concept_categories[concept], {})
            name = self.concept_names[concept]
            by_concept[name] = by_concept.get(name, 0) + 1
        return counts

    def units_for(self, concept: int, *, limit: int | None = None) -> list[tuple[int, float]]:
        """Units ranked by their IoU with one concept: "which units detect stripes?"."""
        order = np.argsort(-self.iou[:, concept], kind="stable")
        return [(int(u), float(self.iou[u, concept])) for u in order[:limit]]

    def table_rows(self) -> list[dict]:
        """One row per unit: unit, best concept, its category, IoU, detector, threshold."""
        best, best_iou = self.best_concept, self.best_iou
        return [{"unit": u, "concept": self.concept_names[best[u]], "category": self.concept_categories[best[u]],
                 "iou": round(float(best_iou[u]), 4), "detector": bool(best_iou[u] > self.config["iou_threshold"]),
                 "threshold": float(self.thresholds[u])} for u in range(self.units)]

    def csv(self) -> str:
        rows = self.table_rows()
        lines = ["unit,concept,category,iou,detector,threshold"]
        lines += [f"{r['unit']},\"{r['concept']}\",{r['category']},{r['iou']:.4f},{int(r['detector'])},{r['threshold']:.6g}"
                  for r in rows]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        return (f"{int(self.detectors.sum())}/{self.units} units of {self.layer} have IoU > "
                f"{self.config['iou_threshold']:g} with some concept ({self.images} images of {self.dataset}).")


# ---------------------------------------------------------------------------------------------
# Stage 1: activations, streamed


class ActivationStore:
    """The layer's activations, batch after batch, (n, C, h, w) float32: in memory, or appended to a
    file and read back in order. File reads and writes go through the OS page cache, not this
    process's memory, so 10k images need no more RAM than a batch (unlike a memory map, whose
    touched pages count as the process's own)."""

    def __init__(self, shape: tuple[int, int, int, int], path: Path | None = None):
        self.shape, self.path = shape, path
        self.parts: list[np.ndarray] = []
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w+b")  # noqa: SIM115 -- closed in close()

    def append(self, values: np.ndarray | torch.Tensor) -> None:
        """Keep one batch, (N, C, h, w) in NCHW order whatever the tensor's memory layout; the
        caller's array is copied once (into the list, or the file), never kept."""
        fresh = False
        if torch.is_tensor(values):
            block = values.detach().to(torch.float32).contiguous()  # a channels-last batch: one NCHW copy
            fresh = block.data_ptr() != values.data_ptr()
            values = block.numpy()
        values = np.ascontiguousarray(values, dtype=np.float32)
        if self.file is None:
            self.parts.append(values if fresh else values.copy())
        else:
            self.file.write(memoryview(values).cast("B"))

    def batches(self, sizes) -> Iterator[torch.Tensor]:
        """Read back in order, one block per entry of ``sizes`` (image counts)."""
        sizes = list(sizes)
        if self.file is None and [len(part) for part in self.parts] == sizes:  # the usual case: no copy
            yield from (torch.from_numpy(part) for part in self.parts)
            return
        if self.file is None:
            everything = np.concatenate(self.parts) if self.parts else np.zeros((0, *self.shape[1:]), np.float32)
            start = 0
            for size in sizes:
                yield torch.from_numpy(everything[start:start + size])
                start += size
            return
        self.file.flush()
        self.file.seek(0)
        per_image = int(np.prod(self.shape[1:]))
        for size in sizes:
            block = np.frombuffer(self.file.read(size * per_image * 4), dtype=np.float32)
            yield torch.from_numpy(block.copy().reshape(size, *self.shape[1:]))

    def close(self) -> None:
        """Drop the values (and the file): the result keeps what the page needs."""
        self.parts = []
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path is not None and self.path.exists():
            self.path.unlink()


@dataclass
class RunningTop:
    """Per unit, the largest values seen so far: exactly the ones the top-quantile threshold needs.

    The threshold is the (1 - q) quantile of all n values of a unit; with torch.quantile's linear
    interpolation it only involves the ceil((n - 1) q) + 2 largest of them, so keeping those while
    streaming gives the exact threshold in the same pass as the activations, without storing them.
    """

    keep: int
    values: torch.Tensor | None = None

    def update(self, batch: torch.Tensor, maxima: torch.Tensor | None = None) -> None:
        """``batch``: (images, units, h, w); ``maxima``: its (images, units) maxima, if at hand."""
        units = batch.shape[1]
        if self.values is None or self.values.shape[1] < self.keep:
            flat = batch.transpose(0, 1).reshape(units, -1)
            merged = flat if self.values is None else torch.cat([self.values, flat], 1)
            self.values = merged.topk(min(self.keep, merged.shape[1]), dim=1).values
            return
        # Only a value above a unit's last kept one changes what it keeps (a tie leaves the same
        # values; NaN, which topk ranks first, always goes in): find those few, in the maps whose
        # maximum is above it, then one topk over them and the kept values.
        last = self.values[:, -1]
        maxima = batch.amax(dim=(2, 3)) if maxima is None else maxima
        image, unit = torch.nonzero(~(maxima <= last), as_tuple=True)
        if not len(unit):
            return
        maps = batch[image, unit].reshape(len(unit), -1)
        pair, position = torch.nonzero(~(maps <= last[unit, None]), as_tuple=True)
        fresh, unit = maps[pair, position], unit[pair]
        order = torch.argsort(unit, stable=True)
        unit, fresh = unit[order], fresh[order]
        per_unit = torch.bincount(unit, minlength=units)
        slot = torch.arange(len(unit)) - (torch.cumsum(per_unit, 0) - per_unit)[unit]
        candidates = torch.full((units, int(per_unit.max())), -math.inf, dtype=self.values.dtype)
        candidates[unit, slot] = fresh.to(self.values.dtype)
        self.values = torch.cat([self.values, candidates], 1).topk(self.keep, dim=1).values

    def thresholds(self, total: int, quantile: float) -> np.ndarray:
        """The (1 - quantile) quantile of each unit's ``total`` values, as torch.quantile gives it."""
        position = (1 - quantile) * (total - 1)
        low = int(position)
        high = min(low + 1, total - 1)
        a = self.values[:, total - 1 - low]  # the values are sorted largest first
        b = self.values[:, total - 1 - high]
        return torch.lerp(a, b, torch.full_like(a, position - low)).numpy()


def values_to_keep(total: int, quantile: float) -> int:
    return min(total, math.ceil((total - 1) * quantile) + 2)


@dataclass
class TopImages:
    """A running top-k of image indices per unit, by the unit's maximum activation."""

    k: int
    values: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    def update(self, maxima: torch.Tensor, start: int) -> None:
        """``maxima``: (batch, units) for images start..start+batch-1."""
        index = torch.arange(start, start + maxima.shape[0]).view(-1, 1).expand_as(maxima)
        values = maxima.t() if self.values is None else torch.cat([self.values, maxima.t()], 1)
        indices = index.t() if self.indices is None else torch.cat([self.indices, index.t()], 1)
        # A stable sort keeps ties in index order, so the batch size never changes the answer.
        values, order = values.sort(dim=1, descending=True, stable=True)
        self.values, self.indices = values[:, :self.k], indices.gather(1, order)[:, :self.k]


def spatial_layer(handle: ModelHandle, layer: str | None) -> LayerInfo:
    """The layer to dissect (:meth:`ModelHandle.layer`), with a sentence when there is none."""
    if not layer and handle.default_layer is None:
        raise ConfigError("This model has no layer with a spatial output, so there is nothing to dissect.")
    return handle.layer(layer)


def check_enough_images(images: int, info: LayerInfo, quantile: float) -> None:
    """The top quantile must hold at least one value per unit, and a handful of images."""
    if not 0 < quantile < 1:
        raise ConfigError("The quantile is a fraction between 0 and 1, such as 0.005.")
    needed = max(10, math.ceil(1 / (quantile * info.height * info.width)))
    if images < needed:
        raise DatasetError(f"Only {images} images: the top {100 * quantile:g} % of each unit's activations needs at "
                           f"least {needed} images at this layer ({info.height} x {info.width}); use more images "
                           "or a larger quantile.")


# The one streaming forward loop: dissection's stage 1 and engine.imagesets' set features both use it.


@dataclass
class ForwardBatch:
    """One batch of a :func:`stream_forward` pass; tensors are float32 on the CPU, detached."""

    start: int  # the set index of the batch's first image
    outputs: dict[str, torch.Tensor]  # captured layer outputs, (N, C, h, w)
    inputs: dict[str, torch.Tensor]  # captured module inputs (e.g. the last Linear's: the penultimate vector)
    logits: torch.Tensor
    extra: object  # what the source yielded beside the pixels (a concept batch's samples)

    def __len__(self) -> int:
        return int(self.logits.shape[0])


def model_input(handle: ModelHandle, images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> the model's input in [0, 1] at ``handle.input_size``, channels-last.

    Channels-last is the layout the pixels already have; oneDNN's convolutions run faster on it
    (lite0 batch 32 on this CPU: 0.35 s against 0.46 s for the same batch in NCHW), and a plain
    ``torch.from_numpy(images).permute(0, 3, 1, 2).float()`` forward gets it for free.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    if handle.device.type != "cpu":
        pixels = pixels.to(handle.device)  # the uint8 bytes travel, 4x fewer than floats
    # permute + to(float32) keeps the NHWC strides: the same values as engine.images.to_tensor
    x = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255)
    if x.shape[-1] != handle.input_size or x.shape[-2] != handle.input_size:
        x = F.interpolate(x, size=(handle.input_size, handle.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


@contextmanager
def capture_inputs(handle: ModelHandle, layers) -> Iterator[dict[str, torch.Tensor]]:
    """The first positional input of each module in ``layers`` during the forward passes inside the
    block (forward pre-hooks): the scoped twin of :func:`engine.hooks.capture`, under the handle's
    lock, hooks removed in ``finally``."""
    modules = [(name, handle.module(name)) for name in layers]
    captured: dict[str, torch.Tensor] = {}
    registered = []

    def recorder(name):
        def hook(module, args):
            captured[name] = args[0]
        return hook

    with handle.lock:
        try:
            for name, module in modules:
                registered.append(module.register_forward_pre_hook(recorder(name)))
            yield captured
        finally:
            for hook in registered:
                hook.remove()


def prefetched(items: Iterable, depth: int = 2) -> Iterator:
    """``items`` produced by a background thread, up to ``depth`` ahead: the next batch's pixels are
    read and converted while this one runs through the model. Exceptions reach the consumer; closing
    the generator early stops the thread."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((done, error))

    thread = threading.Thread(target=produce, name="glassbox-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def stream_forward(handle: ModelHandle, batches: Iterable[tuple[np.ndarray, object]], *, layers=(), inputs_of=(),
                   start: int = 0, prefetch: bool = True) -> Iterator[ForwardBatch]:
    """One forward per batch of (uint8 (N, S, S, 3) pixels, extra), under ``torch.inference_mode``,
    with ``layers``' outputs and ``inputs_of``' inputs captured. Hooks (and the handle's lock) are
    held for one batch at a time, never across a ``yield``. With ``prefetch`` the next batch is
    read and converted (:func:`model_input`) in a background thread meanwhile."""
    layers, inputs_of = list(layers), list(inputs_of)
    source = ((model_input(handle, images), extra) for images, extra in batches)
    if prefetch:
        source = prefetched(source)
    first = start
    for x, extra in source:
        with torch.inference_mode(), capture(handle, layers) as outputs, capture_inputs(handle, inputs_of) as inputs:
            logits = handle.logits(x)
        yield ForwardBatch(first, {k: v.float().cpu() for k, v in outputs.items()},
                           {k: v.float().cpu() for k, v in inputs.items()}, logits.float().cpu(), extra)
        first += x.shape[0]


def layer_activations(handle: ModelHandle, concepts, info: LayerInfo, *, count: int, batch_size: int,
                      top_k: int, quantile: float, store_path: Path | None, progress: Progress | None = None,
                      span: tuple[float, float] = (0.0, 1.0), start: int = 0, stop: int | None = None,
                      ) -> tuple[ActivationStore, TopImages, RunningTop]:
    """Stage 1 (and 2 on the fly): one forward per batch (:func:`stream_forward`); the layer's
    output goes to the store, the top-k images and each unit's largest values (for its threshold)
    are kept. ``start:stop`` (default the whole ``count``) is this process's shard under torchrun;
    the running top keeps as many values as the whole set's threshold needs."""
    stop = count if stop is None else stop
    store = ActivationStore((stop - start, info.channels, info.height, info.width), store_path)
    top = TopImages(top_k)
    largest = RunningTop(values_to_keep(count * info.height * info.width, quantile))
    # On the CPU the forward already keeps every core busy: a prefetch thread would only compete with it.
    prefetch = handle.device.type != "cpu"
    for batch in stream_forward(handle, concepts.batches(batch_size, start, stop), layers=[info.name], start=start,
                                prefetch=prefetch):
        values = batch.outputs[info.name]
        store.append(values)
        maxima = values.amax(dim=(2, 3))
        largest.update(values, maxima)
        top.update(maxima, batch.start)
        done = batch.start + len(batch) - start
        report(progress, span[0] + (span[1] - span[0]) * done / max(stop - start, 1),
               f"activations: {done} of {stop - start} images")
    return store, top, largest


# ---------------------------------------------------------------------------------------------
# Stage 2: thresholds


def quantile_value(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per row, the q-quantile with linear interpolation, exactly as ``torch.quantile`` defines it,
    but through ``kthvalue`` so it has no input-size limit. ``values``: (rows, n)."""
    n = values.shape[1]
    position = q * (n - 1)  # in double precision, then torch.lerp: exactly torch.quantile's arithmetic
    low = int(position)
    high = min(low + 1, n - 1)
    a = values.kthvalue(low + 1, dim=1).values
    b = values.kthvalue(high + 1, dim=1).values if high != low else a
    return torch.lerp(a, b, torch.full_like(a, position - low))


def unit_thresholds(values: torch.Tensor, quantile: float) -> np.ndarray:
    """Stage 2 on activations held whole, (n, C, h, w): each unit's (1 - quantile) quantile. The
    streaming run gets the same numbers from :class:`RunningTop`."""
    return quantile_value(values.transpose(0, 1).reshape(values.shape[1], -1), 1 - quantile).numpy()


# ---------------------------------------------------------------------------------------------
# Stages 3-4: upsample, binarise, tally


@dataclass
class Tally:
    """Running sums over the set: |M ∩ L| per (unit, concept), activated area per (unit, category),
    mask area per concept."""

    intersections: np.ndarray
    unit_area: np.ndarray  # (units, categories)
    label_area: np.ndarray  # (concepts,)

    @classmethod
    def empty(cls, units: int, concepts: int, categories: int) -> "Tally":
        return cls(np.zeros((units, concepts)), np.zeros((units, categories)), np.zeros(concepts))

    def iou(self, concept_category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        unions = self.unit_area[:, concept_category] + self.label_area[None, :] - self.intersections
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(unions > 0, self.intersections / unions, 0.0)
        return iou.astype(np.float32), unions


def category_table(concepts) -> tuple[list[str], np.ndarray]:
    """The set's categories (sorted) and each concept's index among them."""
    categories = sorted({c.category for c in concepts.concepts})
    return categories, np.array([categories.index(c.category) for c in concepts.concepts])


def tally(store: ActivationStore, concepts, thresholds: np.ndarray, *, count: int, batch_size: int,
          progress: Progress | None = None, span: tuple[float, float] = (0.0, 1.0), start: int = 0) -> Tally:
    """Stages 3-4 over images ``start:count`` of the set (the store holds exactly those), batch by
    batch (memory bounded by the batch). Every sum is a whole number of pixels held in float64, so
    the tallies of disjoint shards add up exactly to the tally of the whole set."""
    categories, concept_category = category_table(concepts)
    category_index = {name: i for i, name in enumerate(categories)}
    units = store.shape[1]
    sums = Tally.empty(units, len(concepts.concepts), len(categories))
    limits = torch.from_numpy(thresholds)
    size = concepts.mask_size
    done = 0
    sizes = [min(batch_size, count - first) for first in range(start, count, batch_size)]
    for maps, samples in zip(store.batches(sizes), _samples(concepts, batch_size, start, count)):
        _tally_batch(sums, maps, limits, samples, size, category_index)
        done += len(samples)
        report(progress, span[0] + (span[1] - span[0]) * done / max(count - start, 1),
               f"IoU tally: {done} of {count - start} images")
    return sums


def _samples(concepts, batch_size: int, start: int, stop: int) -> Iterator[list]:
    """The samples of images ``start:stop``, a batch at a time; the tally needs no pixels, so a set
    that reads single samples (:meth:`engine.concepts.ConceptSet.sample`) is not asked to stack them."""
    if callable(getattr(concepts, "sample", None)):
        for first in range(start, stop, batch_size):
            yield [concepts.sample(i) for i in range(first, min(first + batch_size, stop))]
    else:
        yield from (samples for _, samples in concepts.batches(batch_size, start, stop))


def _tally_batch(sums: Tally, maps: torch.Tensor, limits: torch.Tensor, samples, size: int,
                 category_index: dict[str, int]) -> None:
    """One batch. Only (image, unit) pairs whose maximum passes the unit's threshold can light a
    pixel (see the module note); for those, :func:`_cell_counts` gives every |L_u ∩ M_c| and |L_u|
    without upsampling the maps, and the few pairs it cannot settle go through
    ``F.interpolate`` (:func:`_dense_counts`). Every count is a whole number of pixels, exactly the
    one ``F.interpolate(map, size, mode="bilinear", align_corners=False) > threshold`` gives."""
    n, _, height, width = maps.shape
    kmax = max([1] + [len(s.concept_ids) for s in samples])
    ids = torch.zeros(n, kmax, dtype=torch.long)
    present = torch.zeros(n, kmax, dtype=torch.bool)
    # the masks' row prefix sums, (images, y, x = 0 .. size, word): several concepts to a word (_Lanes)
    lanes = _Lanes.of(size, kmax)
    prefix = torch.zeros(n, size, size + 1, lanes.words * lanes.per_word, lanes.bytes, dtype=torch.uint8)
    annotated = torch.zeros(n, len(category_index), dtype=torch.float64)
    for i, sample in enumerate(samples):
        k = len(sample.concept_ids)
        if k:
            mask = np.asarray(sample.masks, dtype=bool).reshape(k, size, size)
            concept_ids = np.asarray(sample.concept_ids, dtype=np.int64)
            ids[i, :k] = torch.from_numpy(concept_ids)
            present[i, :k] = True
            prefix[i, :, 1:, :k, lanes.low_byte] = torch.from_numpy(mask).permute(1, 2, 0)
        for category in sample.categories:
            if category in category_index:
                annotated[i, category_index[category]] = 1
    prefix = prefix.view(n, size, size + 1, -1).view(torch.int64).cumsum_(2)
    areas = lanes.unpack(prefix[:, :, -1].sum(1)).double()  # (images, k): each mask's area
    np.add.at(sums.label_area, ids[present].numpy(), areas[present].numpy())
    # A pair can light a pixel only if its maximum passes the threshold -- up to ATen's rounding,
    # which can lift a convex combination of equal values a few ulps above them: hence the margin.
    rows, cols = _axis(height, size), _axis(width, size)
    least, most = maps.amin(dim=(2, 3)), maps.amax(dim=(2, 3))
    reach = most + torch.maximum(most.abs(), least.abs()) * _margin_factor(rows, cols)
    live = torch.nonzero(reach > limits)  # (pairs, 2): image, unit -- image-major
    if not len(live):
        return
    image, unit = live[:, 0], live[:, 1]
    x, t = maps.reshape(-1, height, width).index_select(0, image * maps.shape[1] + unit), limits[unit]
    if rows.copy and cols.copy or not bool(torch.isfinite(x).all()):
        packed, area = _dense_counts(x, t, image, prefix)
    else:
        packed, area, unsettled = _cell_counts(x, t, image, prefix, rows, cols)
        if bool(unsettled.any()):
            which = torch.nonzero(unsettled)[:, 0]
            packed[which], area[which] = _dense_counts(x[which], t[which], image[which], prefix)
    counts = lanes.unpack(packed)
    # Whole numbers in float64: the order of the additions cannot change the sums.
    concepts = sums.intersections.shape[1]
    flat = torch.from_numpy(sums.intersections).view(-1)
    keep = present[image]
    flat.index_add_(0, (unit[:, None] * concepts + ids[image])[keep], counts.double()[keep])
    torch.from_numpy(sums.unit_area).index_add_(0, unit, area.double()[:, None] * annotated[image])


@dataclass(frozen=True)
class _Axis:
    """How ``F.interpolate(..., mode="bilinear", align_corners=False)`` maps one axis of ``inputs``
    samples onto ``outputs`` pixels, as ATen computes it (float32 source coordinates, clamped at 0):
    output pixel ``j`` lies in cell ``cell[j]``, between samples ``cell[j]`` and ``cell[j] + 1`` (the
    last cell: the last sample twice) with weight ``lam[j]`` on the second; ``src = cell + lam``."""

    src: torch.Tensor  # (outputs,) float64
    lam: torch.Tensor  # (outputs,) float64
    start: torch.Tensor  # (inputs,) first output pixel of each cell
    stop: torch.Tensor  # (inputs,) one past its last
    copy: bool  # inputs == outputs: ATen copies the values
    slack: float  # bound on how far ATen's weight can be from ``lam`` (0 when the scale is a power of 2)
    scale: float  # inputs / outputs as ATen has it (float32): src = max(0, scale (dst + 0.5) - 0.5)


@functools.lru_cache(maxsize=32)
def _axis(inputs: int, outputs: int) -> _Axis:
    dst = torch.arange(outputs, dtype=torch.float32)
    if inputs == outputs:
        src, slack, scale_ = dst.clone(), 0.0, 1.0
    else:
        scale = torch.tensor(inputs, dtype=torch.float32) / outputs
        scale_ = float(scale)
        src = (scale * (dst + 0.5) - 0.5).clamp_(min=0)
        # With a power-of-2 scale every step above is exact; otherwise ATen may round (or fuse) once
        # differently: one float32 ulp of a coordinate below ``inputs``.
        slack = 0.0 if math.frexp(inputs / outputs)[0] == 0.5 else 2.0 ** -22 * inputs
    cell = src.floor().long().clamp_(max=inputs - 1)
    src = src.double()
    lam = (src - cell).clamp_(0, 1)
    start = torch.searchsorted(cell, torch.arange(inputs))
    stop = torch.searchsorted(cell, torch.arange(inputs), right=True)
    return _Axis(src, lam, start, stop, inputs == outputs, slack, scale_)


def _margin_factor(rows: _Axis, cols: _Axis) -> float:
    """How far, relative to the largest magnitude among its four samples, ATen's upsampled value may
    lie from the exact bilinear one (a few float32 ulps: 2^-19 leaves room; more where the scale is
    not a power of 2)."""
    return 2.0 ** -19 + 8 * (rows.slack + cols.slack)


def _cell_counts(x: torch.Tensor, t: torch.Tensor, image: torch.Tensor, prefix: torch.Tensor, rows: _Axis,
                 cols: _Axis) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|L ∩ M_k| (pairs, words: packed as :class:`_Lanes`) and |L| (pairs,) for maps ``x`` (pairs,
    h, w) upsampled to the masks' size and lit above ``t``, without upsampling them; ``prefix``
    (images, size, size + 1, words) holds the masks' row prefix sums, packed.

    Each upsampled pixel is a convex combination of the four samples around it (its cell), which
    ATen evaluates in float32 to within a few ulps of the exact value. So a cell whose four corners
    all lie clearly below the threshold lights nothing; in the others, each pixel row is linear
    along the row: a row clearly lit (or dark) end to end lights all (none) of its pixels, and
    otherwise its lit pixels are one run, whose end follows from the row's two edge values
    (:func:`_pixels_upto`); each run is counted with the prefix sums. The cells of one height are
    done together, as a (cells, rows) grid. "Clearly" is a
    margin of 2^-19 of the corners' magnitude (about 30 float32 ulps; more where the scale is not a
    power of 2). A pair with a pixel inside the margin is ``unsettled`` (rare): the caller
    upsamples it the usual way."""
    pairs, height, width = x.shape
    size, kmax = prefix.shape[1], prefix.shape[3]
    margin_factor = _margin_factor(rows, cols)
    padded = F.pad(x[:, None], (0, 1, 0, 1), mode="replicate")[:, 0]  # the last cell's corners: the edge twice
    ul, ur, ll, lr = padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]
    high = torch.maximum(torch.maximum(ul, ur), torch.maximum(ll, lr)).double()
    low = torch.minimum(torch.minimum(ul, ur), torch.minimum(ll, lr)).double()
    limit = t.double().view(-1, 1, 1)
    margin = torch.maximum(high.abs(), low.abs()) * margin_factor
    mixed = high + margin > limit  # cells not clearly dark throughout (those lit throughout included)
    counts = torch.zeros(pairs, kmax, dtype=prefix.dtype)
    area = torch.zeros(pairs)
    unsettled = torch.zeros(pairs, dtype=torch.bool)
    flat_prefix = prefix.view(-1, kmax)
    pair, cy, cx = torch.nonzero(mixed).unbind(1)
    if not len(pair):
        return counts, area, unsettled
    corners = padded.double().view(-1)
    corner = (pair * (height + 1) + cy) * (width + 1) + cx
    a, b = corners[corner], corners[corner + 1]
    c, d = corners[corner + width + 1], corners[corner + width + 2]
    cell_margin = torch.maximum(torch.maximum(a.abs(), b.abs()), torch.maximum(c.abs(), d.abs())) * margin_factor
    cell_limit = t.double()[pair]
    # per cell: values above ``high`` are clearly lit, values up to ``low`` clearly dark; its x; its pixels
    table = torch.stack([cell_limit + cell_margin, cell_limit - cell_margin, cx.double(), cols.start[cx].double(),
                         cols.stop[cx].double()], 1)
    where = torch.stack([cols.start[cx], cols.stop[cx], rows.start[cy], pair, image[pair]], 1)
    heights = rows.stop - rows.start
    spans = heights[cy]
    for span in torch.unique(heights).tolist():  # the cells of each height together: whole (cells, rows) grids
        if span == 0:
            continue
        group = torch.nonzero(spans == span)[:, 0] if len(heights.unique()) > 1 else None
        g = (lambda v: v) if group is None else (lambda v: v.index_select(0, group))
        a_, b_, c_, d_, cy_, table_, where_ = (g(v) for v in (a, b, c, d, cy, table, where))
        ys = rows.start[:, None] + torch.arange(span)  # (h, span): each cell row's pixel rows (past the end: unused)
        lam = rows.lam[ys.clamp(max=size - 1)].index_select(0, cy_)
        level = a_[:, None] + (c_ - a_)[:, None] * lam  # the row's value at the cell's left edge ...
        right = b_[:, None] + (d_ - b_)[:, None] * lam  # ... and at its right edge
        high, low = table_[:, 0:1], table_[:, 1:2]
        lit_all = (torch.minimum(level, right) > high).view(-1)  # rows clearly lit end to end
        part = (torch.maximum(level, right) > low).view(-1) & ~lit_all  # the rest but the dark ones
        whole = torch.nonzero(lit_all)[:, 0]
        part = torch.nonzero(part)[:, 0]
        owner = part // span
        level = level.view(-1).index_select(0, part)
        slope = right.view(-1).index_select(0, part) - level
        high, low, offset, lo, hi = table_.index_select(0, owner).unbind(1)  # src = cell + lam
        first, last, top, pair_, image_ = where_.index_select(0, owner).unbind(1)
        rising, falling = slope > 0, slope < 0
        safe = torch.where(slope == 0, torch.ones_like(slope), slope)
        # rising: pixels with src > bright are lit, src <= dark dark; falling: src < bright lit, src >= dark dark
        bright = (high - level) / safe + offset
        end = _pixels_upto(cols, bright, lo, hi)
        # the pixel next to the run's end must be clearly dark; a flat row is too close to call
        nxt = torch.where(rising, end - 1, end)
        check = torch.where(rising, end > first, end < last)
        near = cols.src.index_select(0, nxt.clamp_(0, len(cols.src) - 1))
        dark = (low - level) / safe + offset
        undecided = torch.where(rising, near > dark, near < dark) & check | ~(rising | falling)
        unsettled[pair_[undecided]] = True
        _add_runs(counts, area, flat_prefix, pair_, (image_ * size + top + part % span) * (size + 1),
                  torch.where(rising, end, first), torch.where(rising, last, end))
        first, last, top, pair_, image_ = where_.index_select(0, whole // span).unbind(1)
        _add_runs(counts, area, flat_prefix, pair_, (image_ * size + top + whole % span) * (size + 1), first, last)
    return counts, area, unsettled


def _add_runs(counts: torch.Tensor, area: torch.Tensor, prefix: torch.Tensor, pair: torch.Tensor, row: torch.Tensor,
              start: torch.Tensor, stop: torch.Tensor) -> None:
    """Pixels ``start:stop`` of rows ``row`` (offsets into ``prefix``) lit, for ``pair``."""
    counts.index_add_(0, pair, prefix.index_select(0, row + stop) - prefix.index_select(0, row + start))
    area.index_add_(0, pair, (stop - start).float())


def _pixels_upto(axis: _Axis, v: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """How many pixels have a source coordinate up to ``v``, clamped to ``first`` .. ``last`` (float64
    bounds): ``searchsorted(axis.src, v).clamp(first, last)`` but from the affine inverse of
    ``src = max(0, scale (j + 0.5) - 0.5)``. That inverse is off only for a pixel whose source
    coordinate is within a rounding of ``v`` (or of ATen's own coordinate, :attr:`_Axis.slack`): a
    pixel lying on the margin's edge, clearly lit and clearly dark alike, so the callers' margins
    make either answer right."""
    count = ((v + 0.5) / axis.scale + 0.5).floor_().mul_(v >= 0)  # every src is >= 0 (clamped ones are 0)
    return torch.maximum(torch.minimum(count, last), first).long()


@dataclass(frozen=True)
class _Lanes:
    """Mask counts packed several to an int64 word: concept ``j`` in word ``j // per_word``, bits
    ``bits * (j % per_word)`` up. Any count of one image fits its lane (< 2^(bits - 1)), so sums and
    differences of such words, taken lane by lane, never carry into the next lane."""

    per_word: int
    bits: int
    words: int
    concepts: int

    @classmethod
    def of(cls, size: int, concepts: int) -> "_Lanes":
        bits = 16 if size * size < 2 ** 15 else 32
        per_word = 64 // bits
        return cls(per_word, bits, -(-concepts // per_word), concepts)

    @property
    def bytes(self) -> int:
        return self.bits // 8

    @property
    def low_byte(self) -> int:  # where a lane's lowest byte lies in memory
        return 0 if sys.byteorder == "little" else self.bytes - 1

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(pairs, words) int64 -> (pairs, concepts) float32."""
        shifts = torch.arange(self.per_word, dtype=torch.int64) * self.bits
        lanes = (packed[:, :, None] >> shifts) & ((1 << self.bits) - 1)
        return lanes.reshape(len(packed), -1)[:, :self.concepts].float()


def _dense_counts(x: torch.Tensor, t: torch.Tensor, image: torch.Tensor, prefix: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain way: upsample each map, compare; the lit pixels of each pixel row are counted run
    by run with the masks' row prefix sums (``prefix``, as :func:`_cell_counts` takes it)."""
    size = prefix.shape[1]
    counts = torch.zeros(len(x), prefix.shape[3], dtype=prefix.dtype)
    if x.shape[-2:] != (size, size) or not bool(torch.isfinite(x).all()):  # ATen copies finite values
        x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    lit = x > t.view(-1, 1, 1)
    area = lit.sum((1, 2), dtype=torch.float32)
    edges = F.pad(lit, (1, 1))  # dark before the first pixel and after the last
    pair, y, at = torch.nonzero(edges[:, :, 1:] != edges[:, :, :-1]).unbind(1)  # a run starts or stops at x = at
    sign = torch.where(edges[pair, y, at + 1], -1, 1)
    values = prefix[image[pair], y, at] * sign[:, None]
    counts.index_add_(0, pair, values)
    return counts, area


# ---------------------------------------------------------------------------------------------
# The whole run, cached on disk


def result_key(handle: ModelHandle, layer: str, concepts, config: DissectionConfig) -> str:
    settings = json.dumps({"v": RESULT_VERSION, "model": handle.name, "layer": layer, "data": concepts.key,
                           "config": config.as_dict()}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    return cache_root() / "dissection"


def cached_result(handle: ModelHandle, concepts, layer: str | None, config: DissectionConfig = DissectionConfig()
                  ) -> DissectionResult | None:
    """The stored result of exactly this run, or None."""
    info = spatial_layer(handle, layer)
    path = cache_dir() / f"{result_key(handle, info.name, concepts, config)}.npz"
    return load_result(path) if path.is_file() else None


def dissect(handle: ModelHandle, concepts, layer: str | None = None, config: DissectionConfig = DissectionConfig(), *,
            progress: Progress | None = None, use_cache: bool = True, in_memory: bool = False,
            force_disk: bool = False) -> DissectionResult:
    """Stages 1-6 over ``concepts`` (a :class:`engine.concepts.ConceptSet`), cached per run.

    The activations stay in memory up to :data:`RAM_STORE_BYTES` and go to a file on disk beyond
    (``force_disk`` always uses the file), so 10k images need no more RAM than a batch.

    Under ``torchrun`` (torch.distributed initialised, world size > 1) each rank dissects its own
    block of whole batches (:func:`engine.distributed.shard_range`) and the pieces merge exactly
    (:mod:`engine.distributed`): the same thresholds, IoU counts and top images as one process.
    Rank 0 writes the cache; every rank returns the same result.
    """
    from . import distributed

    info = spatial_layer(handle, layer)
    count = len(concepts) if config.max_images is None else min(len(concepts), config.max_images)
    check_enough_images(count, info, config.quantile)
    if config.batch_size < 1 or config.top_k < 1:
        raise ConfigError("The batch size and the number of top images must be at least 1.")
    path = cache_dir() / f"{result_key(handle, info.name, concepts, config)}.npz" if use_cache else None
    if distributed.all_agree(path is not None and path.is_file()):
        report(progress, 1.0, "loaded from the cache")
        return load_result(path)
    timings = {}
    started = time.perf_counter()
    start, stop = distributed.shard_range(count, config.batch_size)
    size = (stop - start) * info.channels * info.height * info.width * 4
    in_memory = in_memory or (size <= RAM_STORE_BYTES and not force_disk)
    scratch = None if in_memory else Path(tempfile.mkdtemp(prefix="glassbox-dissect-"))
    store = None
    try:
        store, top, largest = layer_activations(
            handle, concepts, info, count=count, batch_size=config.batch_size, top_k=config.top_k,
            quantile=config.quantile, store_path=None if scratch is None else scratch / "activations.f32",
            progress=progress, span=(0.0, 0.6), start=start, stop=stop)
        timings["activations"] = time.perf_counter() - started
        mark = time.perf_counter()
        if distributed.active():
            largest.values = distributed.merge_largest(largest.values, info.channels, largest.keep)
            top.values, top.indices = distributed.merge_top(top.values, top.indices, info.channels, top.k)
        thresholds = largest.thresholds(count * info.height * info.width, config.quantile)
        timings["thresholds"] = time.perf_counter() - mark
        report(progress, 0.65, "thresholds done")
        mark = time.perf_counter()
        sums = tally(store, concepts, thresholds, count=stop, batch_size=config.batch_size, progress=progress,
                     span=(0.65, 1.0), start=start)
        if distributed.active():
            sums = Tally(distributed.all_sum(sums.intersections), distributed.all_sum(sums.unit_area),
                         distributed.all_sum(sums.label_area))
        timings["tally"] = time.perf_counter() - mark
    finally:
        if store is not None:
            store.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    iou, unions = sums.iou(category_table(concepts)[1])
    timings["total"] = time.perf_counter() - started
    if distributed.active():
        timings = distributed.broadcast_object(timings)
    result = DissectionResult(
        model=handle.name, layer=info.name, dataset=concepts.name, dataset_key=concepts.key, images=count,
        thresholds=thresholds, iou=iou, intersections=sums.intersections, unions=unions,
        concept_names=tuple(c.name for c in concepts.concepts),
        concept_categories=tuple(c.category for c in concepts.concepts),
        top_images=top.indices.numpy(), top_values=top.values.numpy(), config=config.as_dict(), seconds=timings)
    if path is not None and distributed.is_lead():
        save_result(result, path)
    report(progress, 1.0, result.summary())
    return result


def save_result(result: DissectionResult, path: Path) -> None:
    """Atomically (:func:`engine.io.atomic_path`): a reader sees the old file or the whole new one."""
    meta = {k: getattr(result, k) for k in ("model", "layer", "dataset", "dataset_key", "images", "concept_names",
                                            "concept_categories", "config", "seconds")}
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez_compressed(file, thresholds=result.thresholds, iou=result.iou, intersections=result.intersections,
                            unions=result.unions, top_images=result.top_images, top_values=result.top_values,
                            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def load_result(path: Path) -> DissectionResult:
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        arrays = {k: data[k] for k in ("thresholds", "iou", "intersections", "unions", "top_images", "top_values")}
    meta["concept_names"] = tuple(meta["concept_names"])
    meta["concept_categories"] = tuple(meta["concept_categories"])
    return DissectionResult(**meta, **arrays)


# ---------------------------------------------------------------------------------------------
# A unit on any image


def unit_maps(handle: ModelHandle, x: torch.Tensor, layer: str, unit: int) -> np.ndarray:
    """The unit's activation map on images ``x`` (N, 3, H, W) in [0, 1], upsampled to H x W: (N, H, W)."""
    info = spatial_layer(handle, layer)
    if not 0 <= unit < info.channels:
        raise ConfigError(f"Layer {layer} has units 0 to {info.channels - 1}; there is no unit {unit}.")
    with torch.inference_mode(), capture(handle, [info.name]) as captured:
        handle.logits(x.to(handle.device))
        values = captured[info.name][:, unit:unit + 1].float()
    big = F.interpolate(values, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return big.cpu().numpy()


def unit_maps_on(handle: ModelHandle, pictures: list[np.ndarray], layer: str, unit: int) -> list[np.ndarray]:
    """:func:`unit_maps` for uint8 H x W x 3 pictures already at the model's input size."""
    return list(unit_maps(handle, to_tensor(np.stack(pictures)), layer, unit))


def html_summary(result: DissectionResult) -> str:
    """A self-contained page (no script, no network): the histogram as bars, then every unit."""
    from html import escape

    counts = result.detector_counts()
    most = max([n for by in counts.values() for n in by.values()] or [1])
    bars = []
    for category in sorted(counts):
        bars.append(f"<h3>{escape(category)}</h3>")
        for name, n in sorted(counts[category].items(), key=lambda kv: -kv[1]):
            bars.append(f'<div class="bar"><span class="label">{escape(name)}</span>'
                        f'<span class="fill" style="width:{300 * n / most:.0f}px"></span> {n}</div>')
    rows = "".join(f"<tr><td>{r['unit']}</td><td>{escape(r['concept'])}</td><td>{escape(r['category'])}</td>"
                   f"<td>{r['iou']:.4f}</td><td>{'yes' if r['detector'] else ''}</td></tr>"
                   for r in sorted(result.table_rows(), key=lambda r: -r["iou"]))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Dissection of {escape(result.layer)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}.bar{{margin:2px 0}}
.label{{display:inline-block;width:180px}}.fill{{display:inline-block;height:12px;background:#3b6fd6}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:2px 10px}}</style></head><body>
<h1>{escape(result.model)} · {escape(result.layer)}</h1><p>{escape(result.summary())}</p>
<h2>Detector units per concept</h2>{''.join(bars) or '<p>No detector units.</p>'}
<h2>Units, best first</h2><table><tr><th>unit</th><th>concept</th><th>category</th><th>IoU</th><th>detector</th></tr>
{rows}</table></body></html>"""

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
an image is not above its threshold cannot light a single pixel there. Only the (image, unit)
pairs whose maximum passes the threshold -- about the top quantile's share -- are upsampled.
Results are cached on disk per (model, layer, dataset, settings): a second visit is instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

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

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        if self.file is None:
            self.parts.append(values.copy())
        else:
            self.file.write(values.tobytes())

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

    def update(self, batch: torch.Tensor) -> None:
        """``batch``: (images, units, h, w)."""
        flat = batch.transpose(0, 1).reshape(batch.shape[1], -1)
        merged = flat if self.values is None else torch.cat([self.values, flat], 1)
        self.values = merged.topk(min(self.keep, merged.shape[1]), dim=1).values

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


def layer_activations(handle: ModelHandle, concepts, info: LayerInfo, *, count: int, batch_size: int,
                      top_k: int, quantile: float, store_path: Path | None, progress: Progress | None = None,
                      span: tuple[float, float] = (0.0, 1.0)) -> tuple[ActivationStore, TopImages, RunningTop]:
    """Stage 1 (and 2 on the fly): one forward per batch; the layer's output goes to the store, the
    top-k images and each unit's largest values (for its threshold) are kept."""
    store = ActivationStore((count, info.channels, info.height, info.width), store_path)
    top = TopImages(top_k)
    largest = RunningTop(values_to_keep(count * info.height * info.width, quantile))
    done = 0
    for images, _ in concepts.batches(batch_size, 0, count):
        x = to_tensor(images, device=handle.device)
        if x.shape[-1] != handle.input_size:
            x = F.interpolate(x, size=(handle.input_size, handle.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        with torch.inference_mode(), capture(handle, [info.name]) as captured:
            handle.logits(x)
            values = captured[info.name].float().cpu()
        store.append(values.numpy())
        largest.update(values)
        top.update(values.amax(dim=(2, 3)), done)
        done += len(images)
        report(progress, span[0] + (span[1] - span[0]) * done / count, f"activations: {done} of {count} images")
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
          progress: Progress | None = None, span: tuple[float, float] = (0.0, 1.0)) -> Tally:
    """Stages 3-4 over the whole set, batch by batch (memory bounded by the batch)."""
    categories, concept_category = category_table(concepts)
    category_index = {name: i for i, name in enumerate(categories)}
    units = store.shape[1]
    sums = Tally.empty(units, len(concepts.concepts), len(categories))
    limits = torch.from_numpy(thresholds)
    size = concepts.mask_size
    done = 0
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    for maps, (_, samples) in zip(store.batches(sizes), concepts.batches(batch_size, 0, count)):
        _tally_batch(sums, maps, limits, samples, size, category_index)
        done += len(samples)
        report(progress, span[0] + (span[1] - span[0]) * done / count, f"IoU tally: {done} of {count} images")
    return sums


def _tally_batch(sums: Tally, maps: torch.Tensor, limits: torch.Tensor, samples, size: int,
                 category_index: dict[str, int]) -> None:
    """One batch. Only (image, unit) pairs whose maximum passes the unit's threshold can light a
    pixel (see the module note), so only those maps are upsampled, all in one call; then per image
    one product with its masks gives every |L_u ∩ M_c| and, through a row of ones, every |L_u|."""
    live = torch.nonzero(maps.amax(dim=(2, 3)) > limits)  # (pairs, 2): image, unit -- image-major
    lit = None
    if len(live):
        lit = F.interpolate(maps[live[:, 0], live[:, 1]][:, None], size=(size, size), mode="bilinear",
                            align_corners=False)[:, 0]
        lit = lit.sub_(limits[live[:, 1]].view(-1, 1, 1)).gt_(0).reshape(len(live), -1)  # 1.0 where lit
        bounds = torch.searchsorted(live[:, 0].contiguous(), torch.arange(len(samples) + 1)).tolist()
    for offset, sample in enumerate(samples):
        ids = np.asarray(sample.concept_ids, dtype=np.int64)
        masks = np.asarray(sample.masks).reshape(len(ids), size * size)
        if len(ids):
            sums.label_area[ids] += masks.sum(axis=1)
        if lit is None or bounds[offset] == bounds[offset + 1]:
            continue
        rows = slice(bounds[offset], bounds[offset + 1])
        units = live[rows, 1].numpy()
        columns = torch.cat([torch.from_numpy(masks).float(), torch.ones(1, masks.shape[1])])
        counts = (lit[rows] @ columns.t()).double().numpy()  # (units, k + 1): intersections, then area
        for category in sample.categories:
            if category in category_index:
                sums.unit_area[units, category_index[category]] += counts[:, -1]
        if len(ids):
            sums.intersections[np.ix_(units, ids)] += counts[:, :-1]


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
    """
    info = spatial_layer(handle, layer)
    count = len(concepts) if config.max_images is None else min(len(concepts), config.max_images)
    check_enough_images(count, info, config.quantile)
    if config.batch_size < 1 or config.top_k < 1:
        raise ConfigError("The batch size and the number of top images must be at least 1.")
    path = cache_dir() / f"{result_key(handle, info.name, concepts, config)}.npz" if use_cache else None
    if path is not None and path.is_file():
        report(progress, 1.0, "loaded from the cache")
        return load_result(path)
    timings = {}
    started = time.perf_counter()
    size = count * info.channels * info.height * info.width * 4
    in_memory = in_memory or (size <= RAM_STORE_BYTES and not force_disk)
    scratch = None if in_memory else Path(tempfile.mkdtemp(prefix="glassbox-dissect-"))
    store = None
    try:
        store, top, largest = layer_activations(
            handle, concepts, info, count=count, batch_size=config.batch_size, top_k=config.top_k,
            quantile=config.quantile, store_path=None if scratch is None else scratch / "activations.f32",
            progress=progress, span=(0.0, 0.6))
        timings["activations"] = time.perf_counter() - started
        mark = time.perf_counter()
        thresholds = largest.thresholds(count * info.height * info.width, config.quantile)
        timings["thresholds"] = time.perf_counter() - mark
        report(progress, 0.65, "thresholds done")
        mark = time.perf_counter()
        sums = tally(store, concepts, thresholds, count=count, batch_size=config.batch_size, progress=progress,
                     span=(0.65, 1.0))
        timings["tally"] = time.perf_counter() - mark
    finally:
        if store is not None:
            store.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    iou, unions = sums.iou(category_table(concepts)[1])
    timings["total"] = time.perf_counter() - started
    result = DissectionResult(
        model=handle.name, layer=info.name, dataset=concepts.name, dataset_key=concepts.key, images=count,
        thresholds=thresholds, iou=iou, intersections=sums.intersections, unions=unions,
        concept_names=tuple(c.name for c in concepts.concepts),
        concept_categories=tuple(c.category for c in concepts.concepts),
        top_images=top.indices.numpy(), top_values=top.values.numpy(), config=config.as_dict(), seconds=timings)
    if path is not None:
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

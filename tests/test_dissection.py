"""Network dissection engine (issue 6): the tally against a brute-force loop, the quantile, streaming."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import dissection
from engine import hooks
from engine.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class FakeConcept:
    id: int
    name: str
    category: str


@dataclass(frozen=True)
class FakeSample:
    image: np.ndarray
    concept_ids: np.ndarray
    masks: np.ndarray
    categories: tuple[str, ...]


class FakeConcepts:
    """Random images with random masks: enough to check the arithmetic against a loop."""

    def __init__(self, n: int, size: int = 64, mask_size: int = 32, seed: int = 0, partial: bool = False):
        rng = np.random.default_rng(seed)
        self.name, self.key = f"fake-{n}", f"fake-{n}-{size}-{mask_size}-{seed}-{partial}"
        self.image_size, self.mask_size = size, mask_size
        self.concepts = tuple(FakeConcept(i, n_, c) for i, (n_, c) in enumerate(
            [("red", "colour"), ("blue", "colour"), ("dots", "texture"), ("circle", "shape")]))
        self.samples = []
        for _ in range(n):
            ids = np.sort(rng.choice(4, rng.integers(0, 4), replace=False)).astype(np.int64)
            masks = rng.random((len(ids), mask_size, mask_size)) < rng.uniform(0.05, 0.5, (len(ids), 1, 1))
            categories = ("colour", "texture", "shape")
            if partial and rng.random() < 0.5:  # like Broden: not every image annotates every category
                categories = ("colour",)
                keep = np.array([self.concepts[i].category == "colour" for i in ids], bool)
                ids, masks = ids[keep], masks[keep]
            self.samples.append(FakeSample(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), ids, masks, categories))

    def __len__(self):
        return len(self.samples)

    def sample(self, index):
        return self.samples[index]

    def batches(self, batch_size, start=0, stop=None):
        stop = len(self) if stop is None else stop
        for first in range(start, stop, batch_size):
            chunk = self.samples[first:min(stop, first + batch_size)]
            yield np.stack([s.image for s in chunk]), chunk


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "cache"))


def brute_force_iou(handle, concepts, layer, quantile):
    """NetDissect's definition, one image and one unit at a time, no shortcuts."""
    info = dissection.spatial_layer(handle, layer)
    maps = []
    for index in range(len(concepts)):
        x = torch.from_numpy(concepts.sample(index).image).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad(), hooks.capture(handle, [layer]) as captured:
            handle.logits(x)
        maps.append(captured[layer][0].float())
    maps = torch.stack(maps)  # (N, C, h, w)
    thresholds = torch.quantile(maps.transpose(0, 1).reshape(info.channels, -1), 1 - quantile, dim=1)
    inter = np.zeros((info.channels, len(concepts.concepts)))
    union = np.zeros_like(inter)
    for index in range(len(concepts)):
        sample = concepts.sample(index)
        up = F.interpolate(maps[index][None], size=(concepts.mask_size,) * 2, mode="bilinear", align_corners=False)[0]
        for unit in range(info.channels):
            lit = (up[unit] > thresholds[unit]).numpy()
            for concept in concepts.concepts:
                if concept.category not in sample.categories:
                    continue
                where = np.flatnonzero(sample.concept_ids == concept.id)
                mask = sample.masks[where[0]] if len(where) else np.zeros_like(lit)
                inter[unit, concept.id] += np.logical_and(lit, mask).sum()
                union[unit, concept.id] += np.logical_or(lit, mask).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0), thresholds.numpy()


@pytest.mark.parametrize("partial,mask_size", [(False, 32), (True, 32), (False, 64), (False, 48)])
def test_iou_tally_equals_a_brute_force_loop(tiny, partial, mask_size):
    concepts = FakeConcepts(24, partial=partial, mask_size=mask_size)  # 32 x 32 maps: scale 1, 2 and 1.5
    expected, thresholds = brute_force_iou(tiny, concepts, "features.3", quantile=0.05)
    config = dissection.DissectionConfig(quantile=0.05, batch_size=5)
    result = dissection.dissect(tiny, concepts, "features.3", config, use_cache=False)
    np.testing.assert_allclose(result.thresholds, thresholds, rtol=1e-6)
    np.testing.assert_allclose(result.iou, expected, atol=1e-6)
    assert result.iou.max() > 0 and hooks.count_hooks(tiny.model) == 0


def test_threshold_equals_torch_quantile():
    values = torch.randn(7, 1001, generator=torch.Generator().manual_seed(0))
    for q in (0.5, 0.995, 0.9999, 0.0):
        # equal up to float32 rounding of the interpolation weight
        np.testing.assert_allclose(dissection.quantile_value(values, q), torch.quantile(values, q, dim=1),
                                   rtol=1e-5, atol=0)
    acts = torch.from_numpy(np.random.default_rng(1).standard_normal((40, 3, 4, 5)).astype(np.float32))
    for q in (0.005, 0.05, 0.3):
        expected = torch.quantile(acts.transpose(0, 1).reshape(3, -1), 1 - q, dim=1).numpy()
        np.testing.assert_allclose(dissection.unit_thresholds(acts, q), expected, rtol=1e-5)
        running = dissection.RunningTop(dissection.values_to_keep(40 * 20, q))  # the streaming version, batch by batch
        for first in range(0, 40, 7):
            running.update(acts[first:first + 7])
        assert running.values.shape[1] < 40 * 20 or q == 0.3
        np.testing.assert_allclose(running.thresholds(40 * 20, q), expected, rtol=1e-5)


def test_streaming_equals_in_memory(tiny):
    concepts = FakeConcepts(30, seed=3)
    config = dissection.DissectionConfig(quantile=0.02, batch_size=7, top_k=3)
    streamed = dissection.dissect(tiny, concepts, "features.5", config, use_cache=False, force_disk=True)
    kept = dissection.dissect(tiny, concepts, "features.5",
                              dissection.DissectionConfig(quantile=0.02, batch_size=30, top_k=3),
                              use_cache=False, in_memory=True)
    np.testing.assert_array_equal(streamed.iou, kept.iou)
    np.testing.assert_array_equal(streamed.top_images, kept.top_images)


def test_top_images_are_the_most_activating(tiny):
    concepts = FakeConcepts(20, seed=4)
    result = dissection.dissect(tiny, concepts, "features.1",
                                dissection.DissectionConfig(quantile=0.05, batch_size=6, top_k=4),
                                use_cache=False)
    x = torch.from_numpy(np.stack([s.image for s in concepts.samples])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(), hooks.capture(tiny, ["features.1"]) as captured:
        tiny.logits(x)
    maxima = captured["features.1"].amax(dim=(2, 3))  # (N, C)
    values, order = maxima.t().sort(dim=1, descending=True, stable=True)
    np.testing.assert_allclose(result.top_values, values[:, :4].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(result.top_images, order[:, :4].numpy())


def test_results_are_cached_on_disk(tiny):
    concepts = FakeConcepts(20, seed=5)
    config = dissection.DissectionConfig(quantile=0.05)
    assert dissection.cached_result(tiny, concepts, "features.3", config) is None
    first = dissection.dissect(tiny, concepts, "features.3", config)
    again = dissection.cached_result(tiny, concepts, "features.3", config)
    assert again is not None and np.array_equal(again.iou, first.iou) and again.concept_names == first.concept_names
    messages = []
    dissection.dissect(tiny, concepts, "features.3", config, progress=lambda f, m: messages.append(m))
    assert messages == ["loaded from the cache"]


def test_summary_histogram_search_and_csv(tiny):
    concepts = FakeConcepts(20, seed=6)
    result = dissection.dissect(tiny, concepts, "features.3",
                                dissection.DissectionConfig(quantile=0.05, iou_threshold=0.0),
                                use_cache=False)
    counts = result.detector_counts()
    assert sum(sum(v.values()) for v in counts.values()) == int(result.detectors.sum())
    ranked = result.units_for(2)
    assert [iou for _, iou in ranked] == sorted((iou for _, iou in ranked), reverse=True)
    lines = result.csv().splitlines()
    assert lines[0] == "unit,concept,category,iou,detector,threshold" and len(lines) == 1 + result.units
    assert "units of features.3 have IoU >" in result.summary()


def test_bad_requests_are_sentences(tiny):
    concepts = FakeConcepts(12)
    with pytest.raises(DatasetError, match="Only 3 images"):
        dissection.dissect(tiny, FakeConcepts(3), "features.3", use_cache=False)
    with pytest.raises(ConfigError, match="no spatial output"):
        dissection.dissect(tiny, concepts, "fc", use_cache=False)
    with pytest.raises(ConfigError, match="no layer called"):
        dissection.dissect(tiny, concepts, "nope", use_cache=False)
    with pytest.raises(ConfigError, match="no unit 99"):
        dissection.unit_maps(tiny, torch.rand(1, 3, 64, 64), "features.3", 99)


class ColourUnits(torch.nn.Module):
    """Unit 0 fires exactly on the pixels the bundled set calls red, unit 1 on green; unit 2 is grey level.

    It samples pixel (2j+1, 2i+1) of each 2 x 2 block, the pixel the concept set's nearest
    downsampling keeps for its 112 px masks, so the maps line up with the masks pixel for pixel.
    """

    def forward(self, x):
        from engine.concepts import COLOUR_RADIUS, COLOUR_RGB

        pixels = (x[:, :, 1::2, 1::2] * 255).round()
        units = []
        for name in ("red", "green"):
            centre = torch.tensor(COLOUR_RGB[name], dtype=pixels.dtype).view(1, 3, 1, 1)
            units.append(((pixels - centre).square().sum(1) < COLOUR_RADIUS ** 2).float())
        units.append(pixels.mean(1) / 255)
        return torch.stack(units, 1)


class Planted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.units = ColourUnits()
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.units(x).mean(dim=(2, 3)))


def test_a_planted_red_unit_is_found(tmp_path):
    from engine import models
    from engine.concepts import bundled_concepts

    spec = models.ModelSpec(name="planted", label="planted colour units", source="test", arch="planted",
                            input_size=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    handle = models.make_handle(spec, Planted(), ("a", "b"), torch.device("cpu"))
    data = bundled_concepts(300, size=224, mask_size=112)
    # A unit that is 1 on red and 0 elsewhere lights exactly its red pixels once the top quantile
    # reaches below 1 (red covers a few per cent of the pixels, so the top 30 % threshold is 0).
    result = dissection.dissect(handle, data, "units", dissection.DissectionConfig(quantile=0.3), use_cache=False)
    red, green = data.concept_index("red"), data.concept_index("green")
    assert result.best_concept[0] == red and result.iou[0, red] >= 0.9, result.iou[0, red]
    assert result.best_concept[1] == green and result.iou[1, green] >= 0.9
    assert result.iou[0, green] < 0.05 and result.detectors[0] and result.detectors[1]


def brute_force_tally(maps: torch.Tensor, thresholds: np.ndarray, samples, size: int, categories: list[str],
                      concepts: int) -> dissection.Tally:
    """Every (image, unit) map upsampled by F.interpolate on its own, thresholded, counted pixel by pixel."""
    sums = dissection.Tally.empty(maps.shape[1], concepts, len(categories))
    for index, sample in enumerate(samples):
        for concept, mask in zip(sample.concept_ids, sample.masks):
            sums.label_area[concept] += mask.sum()
        for unit in range(maps.shape[1]):
            up = F.interpolate(maps[index, unit][None, None], size=(size, size), mode="bilinear", align_corners=False)
            lit = (up[0, 0] > float(thresholds[unit])).numpy()
            for concept, mask in zip(sample.concept_ids, sample.masks):
                sums.intersections[unit, concept] += np.logical_and(lit, mask).sum()
            for category in sample.categories:
                sums.unit_area[unit, categories.index(category)] += lit.sum()
    return sums


@pytest.mark.parametrize("side,size", [(7, 112), (14, 112), (28, 112), (56, 112), (112, 112), (32, 48), (5, 17),
                                       (3, 12), (12, 7), (2, 64), (7, 200)])  # 200: masks past 181 px pack 2 to a word
def test_fast_tally_equals_upsampling_every_map(side, size):
    """The cell-wise tally (no upsampling) gives exactly the pixel counts of F.interpolate > threshold,
    at power-of-2 and other scales, with plateaus and thresholds equal to map values (ties)."""
    rng = np.random.default_rng(side * 1000 + size)
    images, units = 7, 6
    maps = rng.standard_normal((images, units, side, side)).astype(np.float32)
    maps[:, 1] = np.round(maps[:, 1] * 2) / 2  # plateaus: equal corners, values equal to the threshold
    maps[:, 2] *= 1e-3
    maps[:, 3] = np.abs(maps[:, 3])  # ties at zero
    maps[:, 3][maps[:, 3] < 1] = 0
    thresholds = np.quantile(maps.transpose(1, 0, 2, 3).reshape(units, -1), 0.9, axis=1).astype(np.float32)
    thresholds[1] = 0.5
    thresholds[3] = 0.0
    concepts = FakeConcepts(images, size=8, mask_size=size, seed=side, partial=True)
    samples = concepts.samples
    store = dissection.ActivationStore(maps.shape)
    store.append(maps[:4])
    store.append(maps[4:])
    fast = dissection.tally(store, concepts, thresholds, count=images, batch_size=4)
    categories, _ = dissection.category_table(concepts)
    slow = brute_force_tally(torch.from_numpy(maps), thresholds, samples, size, categories, len(concepts.concepts))
    assert fast.unit_area.sum() > 0
    np.testing.assert_array_equal(fast.intersections, slow.intersections)
    np.testing.assert_array_equal(fast.unit_area, slow.unit_area)
    np.testing.assert_array_equal(fast.label_area, slow.label_area)


def test_tally_counts_pixels_rounded_above_the_maximum():
    """ATen's float32 bilinear weights can lift a blend of equal samples an ulp above them: with the
    threshold equal to the map's maximum, F.interpolate still lights a pixel here, so a pair is not
    skipped just because its maximum does not pass the threshold."""
    maps = np.array([[-1.0, 0.5], [-0.5, 0.5]], dtype=np.float32).reshape(1, 1, 2, 2)
    thresholds = np.array([0.5], dtype=np.float32)
    up = F.interpolate(torch.from_numpy(maps), size=(48, 48), mode="bilinear", align_corners=False)
    assert int((up > 0.5).sum()) > 0  # the premise: rounding lights a pixel
    concepts = FakeConcepts(1, size=8, mask_size=48, seed=3)
    store = dissection.ActivationStore(maps.shape)
    store.append(maps)
    fast = dissection.tally(store, concepts, thresholds, count=1, batch_size=1)
    categories, _ = dissection.category_table(concepts)
    slow = brute_force_tally(torch.from_numpy(maps), thresholds, concepts.samples, 48, categories,
                             len(concepts.concepts))
    np.testing.assert_array_equal(fast.intersections, slow.intersections)
    np.testing.assert_array_equal(fast.unit_area, slow.unit_area)

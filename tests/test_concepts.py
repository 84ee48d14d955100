"""engine.concepts: the bundled concept set is deterministic; its colour masks are exactly the
pixels of each colour and its shape and texture masks the visible part of what was painted; it is
cached on disk and repaired when damaged; the Broden and folder loaders read real layouts and
name what is missing."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
from PIL import Image
from skimage import draw

from engine import concepts
from engine.concepts import painter, store
from engine.errors import Cancelled, DatasetError
from engine.images import fit_square

SMALL = dict(size=64, mask_size=32)  # fast sets for the properties that hold at any size


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test writes its cache under tmp_path, never in the home directory."""
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 8 images, so a few dozen images span several shard files."""
    monkeypatch.setattr(store, "SHARD_SIZE", 8)


def shard_files(root) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(root.rglob("shard-*.npz"))}


def same_sample(a: concepts.Sample, b: concepts.Sample) -> bool:
    return (np.array_equal(a.image, b.image) and np.array_equal(a.concept_ids, b.concept_ids)
            and np.array_equal(a.masks, b.masks) and a.categories == b.categories)


def message_of(error_info) -> str:
    message = str(error_info.value)
    assert message[0].isupper() and message.endswith((".", "?")) and "\n" not in message
    assert "Traceback" not in message
    return message


# --------------------------------------------------------------------------- bundled: content

def test_concept_list_and_sample_layout(tmp_path):
    concept_set = concepts.bundled_concepts(12, cache_dir=tmp_path, **SMALL)
    names = [c.name for c in concept_set.concepts]
    assert names[:11] == list(concepts.COLOUR_RGB) and len(names) == len(set(names)) == 28
    assert [c.id for c in concept_set.concepts] == list(range(28))
    assert {c.category for c in concept_set.concepts} == set(concepts.CATEGORIES)
    assert len(concept_set) == 12 and concept_set.key == "bundled-v1-n12-s64-m32-seed0"
    for sample in (concept_set.sample(i) for i in range(12)):
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        k = len(sample.concept_ids)
        assert sample.concept_ids.dtype == np.int64 and k >= 1  # the front element shows
        assert np.all(np.diff(sample.concept_ids) > 0) and sample.concept_ids.max() < 28
        assert sample.masks.shape == (k, 32, 32) and sample.masks.dtype == bool
        assert sample.masks.reshape(k, -1).any(axis=1).all()  # listed means visible
        assert sample.categories == concepts.CATEGORIES


def test_same_arguments_give_identical_sets_and_short_sets_are_prefixes(tmp_path):
    first = concepts.bundled_concepts(10, cache_dir=tmp_path / "a", **SMALL)
    again = concepts.bundled_concepts(10, cache_dir=tmp_path / "b", **SMALL)
    short = concepts.bundled_concepts(4, cache_dir=tmp_path / "c", **SMALL)
    other_seed = concepts.bundled_concepts(4, seed=1, cache_dir=tmp_path / "d", **SMALL)
    assert all(same_sample(first.sample(i), again.sample(i)) for i in range(10))
    assert all(same_sample(first.sample(i), short.sample(i)) for i in range(4))
    assert not any(np.array_equal(first.sample(i).image, other_seed.sample(i).image)
                   for i in range(4))


def colour_distances(pixels: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel (N x 3) to each of the 11 colours, in float64."""
    palette = np.array(list(concepts.COLOUR_RGB.values()), float)
    return np.sqrt(((pixels[:, None, :].astype(float) - palette[None]) ** 2).sum(-1))


def test_palette_jitter_stays_inside_its_own_colour():
    palette = np.array(list(concepts.COLOUR_RGB.values()), float)
    closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2))
    jitter = (concepts.TINT_LEVELS + concepts.NOISE_LEVELS) * math.sqrt(3)
    assert jitter < concepts.COLOUR_RADIUS <= closest / 2


@pytest.mark.parametrize("mask_size", [96, 40])
def test_colour_masks_are_exactly_the_pixels_of_that_colour(tmp_path, mask_size):
    """A colour mask is the set of pixels within COLOUR_RADIUS of that colour, which is then the
    nearest of the 11; smaller masks sample the image at floor((j + 0.5) * size / mask_size)."""
    concept_set = concepts.bundled_concepts(40, size=96, mask_size=mask_size, cache_dir=tmp_path)
    grid = (np.arange(mask_size) * 2 + 1) * 96 // (2 * mask_size)
    labelled = 0
    for i in range(len(concept_set)):
        sample = concept_set.sample(i)
        distances = colour_distances(sample.image[np.ix_(grid, grid)].reshape(-1, 3))
        colour = sample.concept_ids < 11
        expected = {c: (distances[:, c] < concepts.COLOUR_RADIUS).reshape(mask_size, mask_size)
                    for c in range(11)}
        expected = {c: m for c, m in expected.items() if m.any()}
        assert sample.concept_ids[colour].tolist() == sorted(expected)
        for concept, mask in zip(sample.concept_ids[colour], sample.masks[colour]):
            assert np.array_equal(mask, expected[concept])
            assert (distances[mask.ravel()].argmin(1) == concept).all()
            labelled += int(mask.sum())
        painted = sample.masks[colour].any(0)
        for mask in sample.masks[~colour]:  # textures and shapes are painted in the 11 colours
            assert not (mask & ~painted).any()
        for first, last in ((11, 21), (21, 28)):  # one texture, one shape per pixel
            chosen = (sample.concept_ids >= first) & (sample.concept_ids < last)
            assert sample.masks[chosen].sum(0).max(initial=0) <= 1
    assert labelled > 40 * mask_size ** 2 * 0.2


def test_masks_are_the_visible_part_of_each_painted_element():
    """Re-paint each image's plan front to back: an element's shape and texture masks are its
    region minus what the elements in front of it cover, and its colours (both colours of a
    pattern, each on its own pixels) are in the matching colour masks."""
    size = 128
    for index in range(25):
        rng = np.random.default_rng([0, index])
        plan = painter.plan_image(rng, size)
        sample = painter.draw_sample(index, seed=0, size=size, mask_size=size)
        got = dict(zip(sample.concept_ids.tolist(), sample.masks))
        empty = np.zeros((size, size), bool)
        expected: dict[int, np.ndarray] = {}
        covered = np.zeros((size, size), bool)
        for element in reversed(plan.elements):  # front to back
            rows, cols, inside = painter.element_region(element, size)
            region = np.zeros((size, size), bool)
            region[rows, cols] = inside
            visible = region & ~covered
            covered |= region
            labels = []
            if element.kind == "shape":
                labels.append(21 + concepts.SHAPE_NAMES.index(element.outline))
            if element.texture >= 0:
                labels.append(11 + element.texture)
                ink = np.zeros((size, size), bool)
                ink[rows, cols] = painter.pattern_ink(element, rows, cols)
                fills = ((element.colours[0], visible & ink), (element.colours[1], visible & ~ink))
            else:
                fills = ((element.colours[0], visible),)
            for label in labels:
                expected[label] = expected.get(label, empty) | visible
            for colour, pixels in fills:
                assert not (pixels & ~got.get(colour, empty)).any()
        expected = {k: v for k, v in expected.items() if v.any()}
        assert sorted(k for k in got if k >= 11) == sorted(expected)
        assert all(np.array_equal(got[k], expected[k]) for k in expected)


def polygon_mask(points: list[tuple[float, float]], element, size: int) -> np.ndarray:
    """skimage's rasteriser of a polygon given in the element's frame (circumradius 1)."""
    u, v = np.array(points, float).T
    cos, sin = math.cos(element.angle), math.sin(element.angle)
    x = element.cx + element.radius * (u * cos - v * sin)
    y = element.cy + element.radius * (u * sin + v * cos)
    mask = np.zeros((size, size), bool)
    mask[draw.polygon(y, x, (size, size))] = True
    return mask


def disk_mask(cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[draw.disk((cy, cx), radius, shape=(size, size))] = True
    return mask


def star_points() -> list[tuple[float, float]]:
    inner = math.cos(2 * math.pi / 5) / math.cos(math.pi / 5)
    return [(r * math.cos(a), r * math.sin(a)) for k in range(10)
            for r, a in [((1.0, inner)[k % 2], k * math.pi / 5)]]


def cross_points() -> list[tuple[float, float]]:
    w, h = 0.3, 0.95
    return [(w, h), (w, w), (h, w), (h, -w), (w, -w), (w, -h), (-w, -h), (-w, -w), (-h, -w),
            (-h, w), (-w, w), (-w, h)]


@pytest.mark.parametrize("outline", concepts.SHAPE_NAMES)
def test_silhouettes_match_an_independent_rasteriser(outline):
    size = 200
    element = painter.Element("shape", outline=outline, cx=97.3, cy=101.6, radius=70.0, angle=0.4)
    cos, sin = math.cos(element.angle), math.sin(element.angle)
    reference = {
        "circle": lambda: disk_mask(element.cx, element.cy, 70, size),
        "ring": lambda: disk_mask(element.cx, element.cy, 70, size)
        & ~disk_mask(element.cx, element.cy, 42, size),
        "crescent": lambda: disk_mask(element.cx, element.cy, 70, size)
        & ~disk_mask(element.cx + 35 * cos, element.cy + 35 * sin, 52.5, size),
        "square": lambda: polygon_mask([(0.72, 0.72), (-0.72, 0.72), (-0.72, -0.72),
                                        (0.72, -0.72)], element, size),
        "triangle": lambda: polygon_mask([(math.cos(a), math.sin(a)) for a in
                                          (math.pi / 3, math.pi, -math.pi / 3)], element, size),
        "star": lambda: polygon_mask(star_points(), element, size),
        "cross": lambda: polygon_mask(cross_points(), element, size),
    }[outline]()
    maps = painter.paint_maps((element,), size)
    ours = maps.shape == concepts.SHAPE_NAMES.index(outline)
    assert reference.sum() > 2000
    # The two rasterisers may only disagree on pixels whose centre lies on an edge.
    assert (ours ^ reference).sum() <= 0.01 * reference.sum()


def test_every_concept_appears_in_a_few_hundred_images(tmp_path):
    concept_set = concepts.bundled_concepts(300, size=64, mask_size=32, cache_dir=tmp_path)
    counts = np.zeros(len(concept_set.concepts), int)
    for _, samples in concept_set.batches(100):
        for sample in samples:
            counts[sample.concept_ids] += 1
    assert counts.min() >= 5, dict(zip((c.name for c in concept_set.concepts), counts))


# --------------------------------------------------------------------------- bundled: disk cache

def test_second_open_reads_the_cache_without_drawing(tmp_path, small_shards, monkeypatch):
    first = concepts.bundled_concepts(20, cache_dir=tmp_path, **SMALL)
    files = shard_files(tmp_path)
    assert list(files) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    before = [first.sample(i) for i in range(20)]

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cache was drawn again")

    monkeypatch.setattr(store.ShardStore, "_draw", no_drawing)
    again = concepts.bundled_concepts(20, cache_dir=tmp_path, **SMALL)
    assert all(same_sample(a, again.sample(i)) for i, a in enumerate(before))
    shorter = concepts.bundled_concepts(9, cache_dir=tmp_path, **SMALL)  # shares the folder
    assert same_sample(before[8], shorter.sample(8))
    assert shard_files(tmp_path) == files


def test_longer_set_extends_the_short_last_shard(tmp_path, small_shards):
    short = concepts.bundled_concepts(10, cache_dir=tmp_path, **SMALL)  # shards of 8 and 2
    kept = shard_files(tmp_path)["shard-00000.npz"]
    longer = concepts.bundled_concepts(20, cache_dir=tmp_path, **SMALL)
    files = shard_files(tmp_path)
    assert files["shard-00000.npz"] == kept and len(files) == 3
    assert all(same_sample(short.sample(i), longer.sample(i)) for i in range(10))


def test_truncated_missing_or_damaged_shards_are_drawn_again(tmp_path, small_shards):
    reference = concepts.bundled_concepts(24, cache_dir=tmp_path / "reference", **SMALL)
    concepts.bundled_concepts(24, cache_dir=tmp_path / "cache", **SMALL)
    folder = next((tmp_path / "cache").iterdir())
    files = shard_files(folder)
    truncated, missing, damaged = (folder / name for name in sorted(files))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    missing.unlink()
    (folder / ".shard-00001-crashed.tmp").write_bytes(b"half a shard")  # a crashed writer's
    data = bytearray(damaged.read_bytes())  # flip pixel bytes, keep the zip directory intact
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    damaged.write_bytes(bytes(data))

    repaired = concepts.bundled_concepts(24, cache_dir=tmp_path / "cache", **SMALL)
    reference_folder = next((tmp_path / "reference").iterdir())
    for shard in (truncated, missing):  # whole again
        assert shard.read_bytes() == (reference_folder / shard.name).read_bytes()
    assert all(same_sample(reference.sample(i), repaired.sample(i)) for i in range(24))
    assert shard_files(folder)[damaged.name] != files[damaged.name]  # redrawn when read


def test_progress_is_reported_and_cancel_keeps_finished_shards(tmp_path, small_shards):
    seen = []
    concepts.bundled_concepts(20, cache_dir=tmp_path / "a", progress=lambda f, m: seen.append(f), **SMALL)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen) and len(seen) >= 4

    def stop_halfway(fraction, message):
        return fraction < 0.5

    with pytest.raises(Cancelled):
        concepts.bundled_concepts(20, cache_dir=tmp_path / "b", progress=stop_halfway, **SMALL)
    assert list(shard_files(tmp_path / "b")) == ["shard-00000.npz"]  # no half shard on disk
    finished = concepts.bundled_concepts(20, cache_dir=tmp_path / "b", **SMALL)
    reference = concepts.bundled_concepts(20, cache_dir=tmp_path / "a", **SMALL)
    assert all(same_sample(reference.sample(i), finished.sample(i)) for i in range(20))


def test_default_cache_is_under_glassbox_cache(tmp_path, small_shards):
    assert concepts.cache_root() == tmp_path / "cache"
    concepts.bundled_concepts(3, **SMALL)
    assert shard_files(tmp_path / "cache" / "concepts" / "bundled-v1-s64-m32-seed0")


def test_a_set_survives_pickling(tmp_path, small_shards):
    concept_set = concepts.bundled_concepts(10, cache_dir=tmp_path, **SMALL)
    concept_set.sample(9)  # a loaded shard must not travel
    copy = pickle.loads(pickle.dumps(concept_set))
    assert copy.key == concept_set.key and same_sample(copy.sample(9), concept_set.sample(9))


# --------------------------------------------------------------------------- the ConceptSet API

def test_batches_stack_images_and_respect_the_range(tmp_path):
    concept_set = concepts.bundled_concepts(10, cache_dir=tmp_path, **SMALL)
    batches = list(concept_set.batches(4, start=1, stop=10))
    assert [len(samples) for _, samples in batches] == [4, 4, 1]
    images, samples = batches[1]
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images[2], concept_set.sample(7).image)
    with pytest.raises(DatasetError):
        list(concept_set.batches(0))
    with pytest.raises(DatasetError):
        list(concept_set.batches(4, start=5, stop=11))
    with pytest.raises(IndexError):
        concept_set.sample(10)


def test_concept_index_finds_names_and_suggests_close_ones(tmp_path):
    concept_set = concepts.bundled_concepts(1, cache_dir=tmp_path, **SMALL)
    names = [c.name for c in concept_set.concepts]
    assert concept_set.concept_index("red") == names.index("red")
    assert concept_set.concept_index("Stripes Vertical") == names.index("stripes vertical")
    assert concept_set.concept_index("check") == names.index("checkerboard")
    with pytest.raises(DatasetError) as ambiguous:
        concept_set.concept_index("stripes")
    assert "stripes horizontal" in message_of(ambiguous)
    with pytest.raises(DatasetError) as unknown:
        concept_set.concept_index("circel")
    assert "Did you mean circle?" in message_of(unknown)


@pytest.mark.parametrize("arguments, words", [
    (dict(n=0), "1 to 10000 images"), (dict(n=10001), "1 to 10000 images"),
    (dict(size=32), "64 to 512"), (dict(size=224, mask_size=300), "mask size"),
    (dict(seed=-1), "seed"), (dict(n=2.5), "not 2.5"),
])
def test_bad_arguments_are_refused_with_a_sentence(tmp_path, arguments, words):
    with pytest.raises(DatasetError) as refused:
        concepts.bundled_concepts(cache_dir=tmp_path, **arguments)
    assert words in message_of(refused)


# --------------------------------------------------------------------------- Broden

def save_labels(path, labels: np.ndarray) -> None:
    """A Broden segmentation PNG: label number = R + 256 * G."""
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
    Image.fromarray(rgb).save(path)


def save_picture(path, height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


BRODEN_HEADER = "image,split,ih,iw,sh,sw,color,object,part,material,scene,texture\n"
BRODEN_LABELS = """number,name,category,frequency,coverage,syns
0,-,-,0,0.0,
1,red-c,color(2),2,0.5,
2,blue-c,color(1),1,0.3,
5,dog,object(1);part(1),1,0.2,
7,leg,part(1),1,0.1,
9,kitchen-s,scene(1),1,1.0,
12,striped,texture(1),1,1.0,
300,green-c,color(1),1,0.1,
"""


@pytest.fixture
def broden(tmp_path):
    """Three images: pixel labels in three categories plus a scene; a larger image with a colour
    layer and a texture; an image with no annotation."""
    root = tmp_path / "broden"
    (root / "images" / "ade").mkdir(parents=True)
    save_picture(root / "images" / "ade" / "one.png", 32, 32, seed=1)
    colour = np.zeros((16, 16), int)
    colour[:, :8], colour[:, 8:], colour[12:, 12:] = 1, 2, 300  # 300 = R 44 + 256 * G 1
    save_labels(root / "images" / "ade" / "one_color.png", colour)
    objects = np.zeros((16, 16), int)
    objects[4:10, 4:10] = 5
    save_labels(root / "images" / "ade" / "one_object.png", objects)
    parts = np.zeros((16, 16), int)
    parts[8:10, 4:6] = 7
    parts[0, 0] = 44  # a number that label.csv does not list: ignored
    save_labels(root / "images" / "ade" / "one_part.png", parts)
    save_picture(root / "images" / "ade" / "two.png", 40, 40, seed=2)
    colour_two = np.zeros((20, 20), int)
    colour_two[10:, :] = 1
    save_labels(root / "images" / "ade" / "two_color.png", colour_two)
    save_picture(root / "images" / "ade" / "three.png", 32, 32, seed=3)
    (root / "label.csv").write_text(BRODEN_LABELS)
    (root / "index.csv").write_text(
        BRODEN_HEADER
        + "ade/one.png,train,32,32,16,16,ade/one_color.png,ade/one_object.png,"
          "ade/one_part.png,,9,\n"
        + "ade/two.png,train,40,40,20,20,ade/two_color.png,,,,,12\n"
        + "ade/three.png,val,32,32,16,16,,,,,,\n")
    return root, dict(colour=colour, objects=objects, parts=parts, colour_two=colour_two)


def test_broden_loader_reads_labels_masks_and_categories(broden):
    root, layers = broden
    concept_set = concepts.load_broden(root)
    assert [(c.name, c.category) for c in concept_set.concepts] == [
        ("red-c", "color"), ("blue-c", "color"), ("dog", "object"), ("leg", "part"),
        ("kitchen-s", "scene"), ("striped", "texture"), ("green-c", "color")]
    assert (len(concept_set), concept_set.image_size, concept_set.mask_size) == (3, 32, 16)
    assert concept_set.key.startswith("broden-") and "broden" in concept_set.key[7:]

    one = concept_set.sample(0)
    assert np.array_equal(one.image, np.asarray(Image.open(root / "images/ade/one.png")))
    assert one.concept_ids.tolist() == [0, 1, 2, 3, 4, 6]
    masks = dict(zip(one.concept_ids.tolist(), one.masks))
    assert np.array_equal(masks[0], layers["colour"] == 1)
    assert np.array_equal(masks[1], layers["colour"] == 2)
    assert np.array_equal(masks[6], layers["colour"] == 300)
    assert np.array_equal(masks[2], layers["objects"] == 5)
    assert np.array_equal(masks[3], layers["parts"] == 7)
    assert masks[4].all()  # the scene covers the whole image
    assert one.categories == ("color", "object", "part", "scene")

    two = concept_set.sample(1)  # 40 px image and 20 px segmentation fitted to 32 and 16
    assert two.image.shape == (32, 32, 3) and two.masks.shape == (2, 16, 16)
    assert two.concept_ids.tolist() == [0, 5] and two.categories == ("color", "texture")
    assert np.array_equal(two.masks[0], np.repeat((np.arange(16) >= 8)[:, None], 16, 1))
    assert two.masks[1].all()

    three = concept_set.sample(2)
    assert three.concept_ids.shape == (0,) and three.masks.shape == (0, 16, 16)
    assert three.categories == ()


def test_broden_lists_what_is_missing(broden):
    root, _ = broden
    (root / "label.csv").unlink()
    for name in ("one_object.png", "two.png"):
        (root / "images" / "ade" / name).unlink()
    with pytest.raises(DatasetError) as missing:
        concepts.load_broden(root)
    message = message_of(missing)
    assert f"The Broden folder {root} is missing:" in message
    assert "label.csv" in message and "images/ade/one_object.png" in message
    assert "images/ade/two.png" in message


def test_broden_many_missing_files_are_counted(broden):
    root, _ = broden
    lines = [BRODEN_HEADER.strip()] + [f"ade/gone{i}.png,train,32,32,16,16,,,,,," for i in range(8)]
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as missing:
        concepts.load_broden(root)
    assert message_of(missing).endswith("images/ade/gone4.png (and 3 more files).")


def test_broden_key_changes_when_the_index_changes(broden):
    root, _ = broden
    key = concepts.load_broden(root).key
    assert concepts.load_broden(root).key == key
    index = root / "index.csv"
    index.write_text(index.read_text().rsplit("ade/three", 1)[0])
    assert concepts.load_broden(root).key != key


# --------------------------------------------------------------------------- simple folder

@pytest.fixture
def folder(tmp_path):
    """cat: 40 x 30 with two masks at full size; dog: a mask at half size; empty: no masks."""
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    cat = save_picture(root / "images" / "cat.png", 30, 40, seed=4)
    save_picture(root / "images" / "dog.png", 64, 64, seed=5)
    save_picture(root / "images" / "empty.png", 64, 64, seed=6)
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "masks" / "cat").mkdir(parents=True)
    sky = np.zeros((30, 40), np.uint8)
    sky[:15] = 255
    Image.fromarray(sky).save(root / "masks" / "cat" / "sky.png")
    thing = np.zeros((30, 40), np.uint8)
    thing[:, :10] = 255  # the centred square starts at column 5: five columns survive
    Image.fromarray(thing).save(root / "masks" / "cat" / "red thing.png")
    (root / "masks" / "dog").mkdir()
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "masks" / "dog" / "sky.png")
    (root / "categories.csv").write_text("name,category\nsky,scene\n")
    return root, cat


def test_folder_loader_reads_images_and_aligned_masks(folder):
    root, cat = folder
    concept_set = concepts.load_folder(root, size=64)
    assert [(c.name, c.category) for c in concept_set.concepts] == [
        ("red thing", "custom"), ("sky", "scene")]
    assert (len(concept_set), concept_set.image_size, concept_set.mask_size) == (3, 64, 64)
    first = concept_set.sample(0)
    assert np.array_equal(first.image, fit_square(cat, 64))
    assert first.concept_ids.tolist() == [0, 1]
    source_column = (np.arange(64) * 2 + 1) * 30 // 128 + 5
    assert np.array_equal(first.masks[0], np.broadcast_to(source_column < 10, (64, 64)))
    assert np.array_equal(first.masks[1], np.broadcast_to((np.arange(64) < 32)[:, None], (64, 64)))
    assert first.categories == ("custom", "scene")
    assert concept_set.sample(1).concept_ids.tolist() == [1] and concept_set.sample(1).masks.all()
    empty = concept_set.sample(2)
    assert empty.concept_ids.shape == (0,) and empty.masks.shape == (0, 64, 64)


def test_folder_layout_problems_are_sentences(tmp_path):
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as no_masks:
        concepts.load_folder(tmp_path / "only_images")
    assert message_of(no_masks).endswith("is missing: masks/.")
    (tmp_path / "only_images" / "masks").mkdir()
    with pytest.raises(DatasetError) as no_images:
        concepts.load_folder(tmp_path / "only_images")
    assert "holds no images" in message_of(no_images)
    with pytest.raises(DatasetError):
        concepts.load_folder(tmp_path / "only_images", size=20)


def test_folder_bad_image_is_reported_when_read(folder):
    root, _ = folder
    (root / "images" / "dog.png").write_bytes(b"not a png")
    concept_set = concepts.load_folder(root, size=64)
    with pytest.raises(DatasetError) as bad:
        concept_set.sample(1)
    assert "dog.png" in message_of(bad)


# --------------------------------------------------------------------------- open_concepts

def test_open_concepts_dispatches_on_the_spec(tmp_path, broden, folder):
    bundled = concepts.open_concepts("bundled", n=3, cache_dir=tmp_path / "c", **SMALL)
    assert bundled.key == "bundled-v1-n3-s64-m32-seed0"
    assert concepts.open_concepts(str(broden[0]), n=3, size=64).key.startswith("broden-")
    opened = concepts.open_concepts(str(folder[0]), n=3, size=96)
    assert opened.key.startswith("folder-") and opened.image_size == 96
    with pytest.raises(DatasetError) as nowhere:
        concepts.open_concepts(str(tmp_path / "nowhere"))
    assert "There is no folder" in message_of(nowhere)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as empty:
        concepts.open_concepts(str(tmp_path / "empty"))
    assert "neither" in message_of(empty)


def test_large_images_use_smaller_shards(tmp_path):
    """Two loaded shards bound the memory of a set: at 512 px a shard holds 64 images (48 MiB)."""
    large = store.ShardStore(tmp_path, length=100, seed=0, size=512, mask_size=256)
    assert large.per_shard * 512 * 512 * 3 <= concepts.SHARD_BYTES and large.shard_count() == 2
    assert store.ShardStore(tmp_path, length=100, seed=0, size=224, mask_size=112).per_shard == 256


def test_the_bundled_key_is_the_sets_own_key_without_drawing_it(tmp_path):
    from engine.concepts.bundled import bundled_key

    drawn = concepts.bundled_concepts(3, size=64, mask_size=32, seed=5, cache_dir=tmp_path)
    assert bundled_key(3, size=64, mask_size=32, seed=5) == drawn.key
    assert bundled_key(4, size=64, mask_size=32, seed=5) != drawn.key

"""Anatomy (lecture: "What has been learned by ConvNets?"): filters, activations, receptive fields,
top patches, the tour, nearest neighbours, embeddings and the deconvnet -- each checked against a
brute-force or hand computation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from engine import anatomy, images, imagesets
from engine.errors import ConfigError, DatasetError
from engine.hooks import count_hooks
from engine.models import ModelHandle, ModelSpec, make_handle


# ---------------------------------------------------------------------------------------------
# helpers


def hand_handle(model: nn.Module, size: int, name: str = "hand") -> ModelHandle:
    """A handle whose normalisation is the identity (mean 0, std 1), so hand numbers stay simple."""
    spec = ModelSpec(name=name, label=name, source="test", arch=name, input_size=size, mean=(0.0, 0.0, 0.0),
                     std=(1.0, 1.0, 1.0))
    return make_handle(spec, model, ("a", "b"), torch.device("cpu"))


def head(channels: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 2)]


def field_net(pool: type[nn.Module] = nn.MaxPool2d, inplace: bool = False) -> nn.Sequential:
    """conv 3x3 (pad 1) -> ReLU -> pool 2 -> conv 3x3 stride 2 (pad 1), positive weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), pool(2),
                        nn.Conv2d(4, 5, 3, stride=2, padding=1), *head(5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand_like(p) + 0.1)
    return net


def analytic_field(y: int, size: int = 16) -> tuple[int, int]:
    """Rows of the 16 px image seen by output row y of field_net (clipped), bottom exclusive."""
    pooled = size // 2
    low, high = max(0, 2 * y - 1), min(pooled - 1, 2 * y + 1)  # conv2: 3 taps, stride 2, pad 1
    low, high = 2 * low, 2 * high + 1  # pool 2
    return max(0, low - 1), min(size, high + 2)  # conv1: 3 taps, pad 1


def analytic_box(y: int, x: int) -> tuple[int, int, int, int]:
    (top, bottom), (left, right) = analytic_field(y), analytic_field(x)
    return top, left, bottom, right


def all_positions(h: int, w: int) -> np.ndarray:
    return np.array([(y, x) for y in range(h) for x in range(w)])


def state_copy(handle):
    return {k: v.clone() for k, v in handle.model.state_dict().items()}


def assert_state_equal(handle, before):
    after = handle.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


class FakeSet:
    """The part of engine.imagesets.ImageSet that anatomy uses (so these tests do not wait on it)."""

    def __init__(self, pictures: np.ndarray, key: str = "fake"):
        self.pictures = pictures
        self.key = key
        self.size = pictures.shape[1]
        self.name = f"fake ({len(pictures)} images)"
        self.labels = tuple(f"img{i}.png" for i in range(len(pictures)))

    def __len__(self):
        return len(self.pictures)

    def image(self, index):
        return self.pictures[index]

    def batches(self, batch_size, start=0, stop=None):
        stop = len(self) if stop is None else stop
        for s in range(start, stop, batch_size):
            e = min(stop, s + batch_size)
            yield self.pictures[s:e], np.arange(s, e)


@dataclass(frozen=True)
class FakeFeatures:
    """engine.imagesets.SetFeatures' fields, filled by brute force."""

    model: str
    layer: str
    set_key: str
    count: int
    kind: str
    values: np.ndarray
    argmax: np.ndarray | None
    means: np.ndarray | None
    height: int
    width: int


def brute_features(handle, imageset, layer) -> FakeFeatures:
    """One image at a time: each channel's maximum and the flat position of its first maximum."""
    info = handle.layer(layer)
    values, argmax = [], []
    for i in range(len(imageset)):
        x = images.to_tensor(images.fit_square(imageset.image(i), handle.input_size))
        maps = anatomy.image_activations(handle, x, layer).maps.reshape(info.channels, -1)
        values.append(maps.max(1))
        argmax.append(maps.argmax(1))
    return FakeFeatures(handle.name, layer, imageset.key, len(imageset), "spatial", np.array(values, np.float32),
                        np.array(argmax, np.int32), None, info.height, info.width)


@pytest.fixture(scope="module")
def photos() -> FakeSet:
    rng = np.random.default_rng(0)
    base = [images.fit_square(images.load_sample(name), 96) for name in images.list_samples()]
    pictures = list(base)
    while len(pictures) < 12:  # a few flipped / noisy variants so k = 9 fits
        picture = base[len(pictures) % len(base)][:, ::-1]
        pictures.append(np.clip(picture + rng.integers(-20, 20, picture.shape), 0, 255).astype(np.uint8))
    return FakeSet(np.stack(pictures[:12]))


# ---------------------------------------------------------------------------------------------
# 1. first-layer filters


def test_first_layer_filters_normalised_per_filter(tiny):
    grid = anatomy.first_layer_filters(tiny, scale=2)
    weight = tiny.model.features[0].weight.detach().numpy()
    assert grid.layer == "features.0" and grid.shape == (8, 3, 3, 3)
    expected = weight.transpose(0, 2, 3, 1)
    low = expected.min(axis=(1, 2, 3), keepdims=True)
    high = expected.max(axis=(1, 2, 3), keepdims=True)
    assert np.array_equal(grid.tiles, np.rint((expected - low) / (high - low) * 255).astype(np.uint8))
    assert all(t.min() == 0 and t.max() == 255 for t in grid.tiles)
    columns = math.ceil(math.sqrt(8))
    rows = math.ceil(8 / columns)
    assert grid.grid.shape == (rows * 7 - 1, columns * 7 - 1, 3)
    assert np.array_equal(grid.grid[0:6, 0:6], grid.tiles[0].repeat(2, 0).repeat(2, 1))
    assert (grid.grid[6, :] == 255).all()  # the 1-px gap


def test_first_layer_filters_depthwise_and_missing():
    depthwise = hand_handle(nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), *head(6)), 8, "depthwise")
    grid = anatomy.first_layer_filters(depthwise)
    assert grid.shape == (6, 1, 3, 3) and "grouped" in grid.note
    assert (grid.tiles[..., 0] == grid.tiles[..., 1]).all()
    no_conv = hand_handle(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), 4, "mlp")
    with pytest.raises(ConfigError, match="no convolution on the image"):
        anatomy.first_layer_filters(no_conv)


# ---------------------------------------------------------------------------------------------
# 2. activations for an image


def test_image_activations_ranked(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    acts = anatomy.image_activations(tiny, x, "features.3")
    with torch.no_grad():
        expected = tiny.model.features[:4](tiny.normalize(x))[0].numpy()
    np.testing.assert_allclose(acts.maps, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(acts.strength[acts.order]) <= 0)
    np.testing.assert_allclose(acts.strength, expected.reshape(16, -1).max(1), rtol=1e-6)
    assert list(acts.strongest(3)) == list(acts.order[:3])


# ---------------------------------------------------------------------------------------------
# 3. receptive fields


@pytest.mark.parametrize("inplace", [False, True])
def test_receptive_field_is_analytic_and_gradient_support(inplace):
    handle = hand_handle(field_net(nn.MaxPool2d, inplace), 16)
    before = state_copy(handle)
    positions = all_positions(4, 4)
    boxes = anatomy.receptive_field(handle, "3", None, positions, batch_size=5)
    for (y, x), box in zip(positions, boxes):
        assert tuple(box) == analytic_box(y, x)
    assert tuple(boxes[0]) == (0, 0, 5, 5)  # clipped at the top-left border
    assert tuple(boxes[-1]) == (9, 9, 16, 16)  # and at the bottom-right
    # With average pools (and positive weights and inputs, so every gate is open anyway) the plain
    # gradient's support is exactly the field; with max-pools it is the switches' subset of it.
    x = torch.rand(len(positions), 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.1
    average = field_net(nn.AvgPool2d, inplace).eval()
    maxed = field_net(nn.MaxPool2d, inplace).eval()
    for net, equal in ((average, True), (maxed, False)):
        image = x.clone().requires_grad_(True)
        out = net[:4](image)
        seed = torch.zeros_like(out)
        seed[torch.arange(len(positions)), :, positions[:, 0], positions[:, 1]] = 1
        (grad,) = torch.autograd.grad(out, image, seed)
        support = anatomy.support_boxes(grad.abs().sum(1) != 0)
        if equal:
            assert np.array_equal(support, boxes)
        else:
            assert (support[:, :2] >= boxes[:, :2]).all() and (support[:, 2:] <= boxes[:, 2:]).all()
    assert count_hooks(handle.model) == 0
    assert_state_equal(handle, before)


def test_receptive_field_opens_closed_gates():
    """A negative input closes every ReLU on the plain gradient; the field does not care."""
    handle = hand_handle(field_net(nn.AvgPool2d), 16)
    dark = -torch.ones(1, 3, 16, 16)
    boxes = anatomy.receptive_field(handle, "3", dark, [(1, 2)])
    assert tuple(boxes[0]) == analytic_box(1, 2)
    same = anatomy.receptive_field(handle, "3", None, [(1, 2)], unit=3)
    assert np.array_equal(same, boxes)


def test_receptive_field_batched_equals_one_by_one(tiny):
    positions = np.array([(0, 0), (5, 17), (31, 31), (16, 3)])
    together = anatomy.receptive_field(tiny, "features.5", None, positions, batch_size=3)
    alone = np.concatenate([anatomy.receptive_field(tiny, "features.5", None, [p]) for p in positions])
    assert np.array_equal(together, alone)
    # TinyCNN: 3x3, 3x3 stride 2, 3x3: 1 + 2 + 2 + 2 * 2 = 9 px, rows 2y - 4 .. 2y + 4, clipped.
    assert tuple(together[2]) == (58, 58, 64, 64)
    assert tuple(together[0]) == (0, 0, 5, 5)
    assert tuple(together[1]) == (6, 30, 15, 39)
    assert anatomy.field_size(tiny, "features.5") == (9, 9)
    with pytest.raises(ConfigError, match="inside"):
        anatomy.receptive_field(tiny, "features.5", None, [(32, 0)])
    assert count_hooks(tiny.model) == 0


# ---------------------------------------------------------------------------------------------
# 4. top patches and the tour


def test_top_patches_match_brute_force(tiny, photos):
    features = brute_features(tiny, photos, "features.3")
    unit = 5
    patches = anatomy.top_patches(tiny, photos, features, unit, k=4)
    expected = np.argsort(-features.values[:, unit], kind="stable")[:4]
    assert list(patches.indices) == list(expected)
    assert np.all(np.diff(patches.values) <= 0)
    factor = photos.size / tiny.input_size
    for index, position, box, crop in zip(patches.indices, patches.positions, patches.boxes, patches.crops):
        assert position[0] * 32 + position[1] == features.argmax[index, unit]
        field = anatomy.receptive_field(tiny, "features.3", None, [position])[0]
        assert tuple(box) == (math.floor(field[0] * factor), math.floor(field[1] * factor),
                              math.ceil(field[2] * factor), math.ceil(field[3] * factor))
        assert np.array_equal(crop, photos.image(index)[box[0]:box[2], box[1]:box[3]])
    assert patches.field_size == (5, 5)  # 1 + 2 + 2
    assert patches.labels[0] == photos.labels[patches.indices[0]]


def test_top_patches_refusals(tiny, photos):
    features = brute_features(tiny, photos, "features.1")
    with pytest.raises(DatasetError, match="only 12 images"):
        anatomy.top_patches(tiny, photos, features, 0, k=13)
    vector = FakeFeatures(tiny.name, "penultimate", photos.key, 12, "vector", features.values, None, None, 1, 1)
    with pytest.raises(ConfigError, match="no spatial output has no patches"):
        anatomy.top_patches(tiny, photos, vector, 0, k=3)
    with pytest.raises(ConfigError, match="another image set"):
        anatomy.top_patches(tiny, FakeSet(photos.pictures, key="other"), features, 0, k=3)


def test_tour_grows(tiny, photos):
    layers = anatomy.tour_layers(tiny)
    assert layers == ["features.1", "features.5"]
    stops = anatomy.tour(tiny, photos, {layer: brute_features(tiny, photos, layer) for layer in layers}, k=3)
    assert [s.layer for s in stops] == layers
    sizes = [s.patches.field_size[0] for s in stops]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    for stop in stops:
        features = brute_features(tiny, photos, stop.layer)
        top = -np.sort(-features.values, axis=0)[:3].mean(0)
        assert stop.unit == int(np.argmax(top))


def test_tour_layers_lite0(lite0):
    layers = anatomy.tour_layers(lite0)
    assert layers == ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"]
    assert anatomy.tour_layers(lite0, 3) == ["_blocks.0", "_blocks.4", "_blocks.15"]
    sizes = [anatomy.field_size(lite0, layer)[0] for layer in layers]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert count_hooks(lite0.model) == 0


# ---------------------------------------------------------------------------------------------
# 5. nearest neighbours


def brute_cosine(matrix, q, k, exclude=None):
    d = [1 - float(np.dot(row, q) / (np.linalg.norm(row) * np.linalg.norm(q))) for row in matrix.astype(np.float64)]
    order = sorted((dist, i) for i, dist in enumerate(d) if i != exclude)
    return [i for _, i in order[:k]], [dist for dist, _ in order[:k]]


def test_neighbour_index_equals_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 40)).astype(np.float32)
    vectors[7] = vectors[3] * 2.0  # same direction: a cosine tie broken by index
    index = anatomy.NeighbourIndex(vectors, "cosine")
    for q in (vectors[3], rng.normal(size=40).astype(np.float32)):
        got, dist = index.query(q, 10)
        want, want_dist = brute_cosine(vectors, q, 10)
        assert list(got) == want
        np.testing.assert_allclose(dist, want_dist, atol=1e-5)
    got, _ = index.query(vectors[3], 5, exclude=3)
    assert got[0] == 7 and 3 not in got
    euclid = anatomy.NeighbourIndex(vectors, "euclidean")
    q = rng.normal(size=40).astype(np.float32)
    got, dist = euclid.query(q, 8)
    brute = np.linalg.norm(vectors.astype(np.float64) - q, axis=1)
    assert list(got) == list(np.argsort(brute, kind="stable")[:8])
    np.testing.assert_allclose(dist, np.sort(brute)[:8], rtol=1e-4)
    with pytest.raises(DatasetError, match="fewer than the 300"):
        index.query(q * 0 + 1, 300, exclude=0)


def test_neighbours_features_and_pixels():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(20, 16)).astype(np.float32)
    pixels = rng.integers(0, 256, size=(20, 32 * 32 * 3)).astype(np.uint8)
    pixels[11] = pixels[4]  # another image with the query's exact pixels stays in the list
    result = anatomy.neighbours(features[4], features, pixels[4], pixels, 5, query_index=4)
    assert 4 not in result.feature_indices and 4 not in result.pixel_indices
    assert result.pixel_indices[0] == 11 and result.pixel_distances[0] == 0
    assert list(result.feature_indices) == brute_cosine(features, features[4], 5, exclude=4)[0]
    assert result.excluded == 4 and len(result.features) == 5 and 0 <= result.shared <= 5
    again = anatomy.neighbours_from(anatomy.NeighbourIndex(features), anatomy.NeighbourIndex(pixels, "euclidean"),
                                    features[4], pixels[4], 5, query_index=4)
    assert again.features == result.features and again.pixels == result.pixels
    with pytest.raises(DatasetError):
        anatomy.neighbours(features[4], features[:5], pixels[4], pixels[:5], 5, query_index=4)
    # skip_copy: a query that is in the set leaves its first exact copy out; an outside query leaves nothing out
    by_features, by_pixels = anatomy.NeighbourIndex(features), anatomy.NeighbourIndex(pixels, "euclidean")
    member = anatomy.neighbours_from(by_features, by_pixels, features[4], pixels[4], 5, skip_copy=True)
    assert member.excluded == 4 and member.features == result.features and member.pixels == result.pixels
    outside = rng.integers(0, 256, size=32 * 32 * 3).astype(np.uint8)
    stranger = anatomy.neighbours_from(by_features, by_pixels, features[4], outside, 5, skip_copy=True)
    assert stranger.excluded is None and stranger.pixel_distances[0] > 0


def test_pixel_vector_shape():
    picture = images.fit_square(images.load_sample(images.list_samples()[0]), 80)
    vector = imagesets.pixel_vector(picture, 32)
    assert vector.shape == (32 * 32 * 3,) and vector.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# 6. embeddings


def test_pca_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    data = rng.normal(size=(60, 12)) @ rng.normal(size=(12, 12))
    result = anatomy.embed(data, "pca")
    reference = PCA(2, svd_solver="full").fit(data)
    expected = reference.transform(data)
    np.testing.assert_allclose(np.abs(result.points), np.abs(expected), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(result.explained, reference.explained_variance_ratio_, rtol=1e-4)
    again = anatomy.embed(-data + 5, "pca")  # the sign rule does not depend on the data's sign
    np.testing.assert_allclose(again.points, anatomy.embed(-data, "pca").points, atol=1e-4)


def test_tsne_small_sets():
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(0, 1, (6, 20)), rng.normal(8, 1, (6, 20))]).astype(np.float32)
    result = anatomy.embed(data, "tsne")
    assert result.points.shape == (12, 2) and result.perplexity < 12 / 3 and "lowered" in result.note
    assert result.kl is not None and result.kl >= 0
    # the two clusters stay apart
    a, b = result.points[:6].mean(0), result.points[6:].mean(0)
    spread = max(result.points[:6].std(0).max(), result.points[6:].std(0).max())
    assert np.linalg.norm(a - b) > 2 * spread
    np.testing.assert_array_equal(anatomy.embed(data, "tsne").points, result.points)  # seeded
    with pytest.raises(DatasetError, match="at least 5 images"):
        anatomy.embed(data[:4], "tsne")
    with pytest.raises(ConfigError):
        anatomy.embed(data, "umap")


# ---------------------------------------------------------------------------------------------
# 7. going back to images


def deconv_net(inplace: bool = False) -> nn.Sequential:
    """conv1 (1x1): a = R - 0.5, b = 0.2 - R, c = G; ReLU; conv2 (1x1): 2a + 3b - c."""
    conv1, conv2 = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]]).view(3, 3, 1, 1))
        conv1.bias.copy_(torch.tensor([-0.5, 0.2, 0.0]))
        conv2.weight.copy_(torch.tensor([2.0, 3.0, -1.0]).view(1, 3, 1, 1))
    return nn.Sequential(conv1, nn.ReLU(inplace=inplace), conv2, *head(1))


def deconv_image() -> torch.Tensor:
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[0.9, 0.1], [0.6, 0.3]])
    x[0, 1] = 0.1
    return x


@pytest.mark.parametrize("inplace", [False, True])
def test_deconvnet_relu_rule_by_hand(inplace):
    """Outputs 0.7, 0.2, 0.1, -0.1: the seed is 0.7 at (0, 0); backward signal on the ReLU
    outputs there (2s, 3s, -s) = (1.4, 2.1, -0.7), forward inputs (0.4, -0.7, 0.1).

    gradient: R = 1.4 (b's gate closed), G = -0.7
    deconvnet: ReLU of the signal, forward ignored: R = 1.4 - 2.1 = -0.7, G = 0
    guided: ReLU of the signal and the forward gate: R = 1.4, G = 0
    """
    handle = hand_handle(deconv_net(inplace), 2)
    before = state_copy(handle)
    x = deconv_image()
    expected = {"gradient": (1.4, -0.7), "deconvnet": (-0.7, 0.0), "guided": (1.4, 0.0)}
    results = {}
    for method, (red, green) in expected.items():
        result = anatomy.project_back(handle, x, "2", 0, method)
        assert result.position == (0, 0) and result.value == pytest.approx(0.7)
        assert result.box == (0, 0, 1, 1)  # 1x1 convs: the unit sees one pixel
        want = np.zeros((2, 2, 3), np.float32)
        want[0, 0] = (red, green, 0.0)
        np.testing.assert_allclose(result.image, want, atol=1e-6)
        results[method] = result
    # guided and deconvnet differ exactly where a forward input was negative (b at (0, 0))
    assert not np.allclose(results["guided"].image, results["deconvnet"].image)
    assert "no switches" in results["deconvnet"].note
    assert results["deconvnet"].display[0, 0, 0] == 1 and results["deconvnet"].display[1, 1, 0] == 128
    assert count_hooks(handle.model) == 0
    assert_state_equal(handle, before)


def test_guided_relu6_gate():
    """ReLU6's guided gate is 0 < x < 6: an input of 9 closes it; the deconvnet ignores it."""
    conv1, conv2 = nn.Conv2d(3, 1, 1, bias=False), nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([10.0, 0, 0]).view(1, 3, 1, 1))
        conv2.weight.fill_(1.0)
    handle = hand_handle(nn.Sequential(conv1, nn.ReLU6(), conv2, *head(1)), 2)
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[0.9, 0.3], [0.2, 0.1]])
    guided = anatomy.project_back(handle, x, "2", 0, "guided")
    deconv = anatomy.project_back(handle, x, "2", 0, "deconvnet")
    assert guided.value == pytest.approx(6.0) and np.abs(guided.image).max() == 0
    assert deconv.image[0, 0, 0] == pytest.approx(60.0)


def test_plain_gradient_equals_autograd_and_no_hooks_after_error(tiny):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    result = anatomy.project_back(tiny, x, "features.3", 2, "gradient")
    image = x.clone().requires_grad_(True)
    acts = tiny.model.features[:4](tiny.normalize(image))
    y, xx = result.position
    assert float(acts[0, 2, y, xx].detach()) == pytest.approx(float(acts[0, 2].detach().max()))
    (grad,) = torch.autograd.grad(acts[0, 2, y, xx] * result.value, image)
    np.testing.assert_allclose(result.image, grad[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-7)
    before = state_copy(tiny)
    for method in ("deconvnet", "guided"):
        projected = anatomy.project_back(tiny, x, "features.3", 2, method)
        assert projected.image.shape == (64, 64, 3) and projected.display.dtype == np.uint8
    with pytest.raises(ConfigError):
        anatomy.receptive_field(tiny, "features.3", torch.rand(1, 3, 64, 64)[:, :2], [(0, 0)])
    with pytest.raises(ConfigError):
        anatomy.project_back(tiny, x, "features.3", 99, "guided")
    assert count_hooks(tiny.model) == 0
    assert_state_equal(tiny, before)


def test_max_pool_switches_kept():
    """With max-pools, the deconvnet routes through the switches: only the pooled maxima get signal."""
    handle = hand_handle(field_net(nn.MaxPool2d), 16)
    assert anatomy.has_max_pools(handle)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) + 0.1
    result = anatomy.project_back(handle, x, "3", 1, "deconvnet")
    assert result.note == ""
    # positive weights and inputs: every gate open and every signal positive, so deconvnet == gradient
    gradient = anatomy.project_back(handle, x, "3", 1, "gradient")
    np.testing.assert_allclose(result.image, gradient.image, rtol=1e-5)


def test_project_back_lite0(lite0, chelsea_tensor):
    before = count_hooks(lite0.model)
    deconv = anatomy.project_back(lite0, chelsea_tensor, "_blocks.4", 7, "deconvnet")
    guided = anatomy.project_back(lite0, chelsea_tensor, "_blocks.4", 7, "guided")
    assert not anatomy.has_max_pools(lite0) and "no switches" in deconv.note
    top, left, bottom, right = deconv.box  # the projection lies inside the unit's receptive field
    outside = np.abs(deconv.image).sum(-1).copy()
    outside[top:bottom, left:right] = 0
    assert outside.max() == 0 and np.abs(deconv.image[top:bottom, left:right]).max() > 0
    assert deconv.image.shape == (224, 224, 3) and np.abs(deconv.image).max() > 0
    assert not np.allclose(deconv.image, guided.image)
    assert count_hooks(lite0.model) == before == 0


# ---------------------------------------------------------------------------------------------
# with engine.imagesets (Helper A's module), when it is there


def test_with_real_image_sets(tiny):
    imagesets = pytest.importorskip("engine.imagesets")
    photos = imagesets.bundled_photos(size=80)
    assert len(photos) >= 9
    features = imagesets.set_features(tiny, photos, "features.3")
    unit = anatomy.strongest_unit(features.values, 4)[0]
    patches = anatomy.top_patches(tiny, photos, features, unit, k=4)
    assert list(patches.indices) == list(np.argsort(-features.values[:, unit], kind="stable")[:4])
    assert all(c.shape[0] > 0 and c.shape[1] > 0 for c in patches.crops)
    vectors = imagesets.set_features(tiny, photos, imagesets.PENULTIMATE)
    with pytest.raises(ConfigError, match="no spatial output"):
        anatomy.top_patches(tiny, photos, vectors, 0, k=3)
    pixels = imagesets.pixel_vectors(photos)
    assert np.array_equal(imagesets.pixel_vector(photos.image(2), 32), pixels[2])
    found = anatomy.neighbours(vectors.values[2], vectors, pixels[2], pixels, 3, query_index=2)
    assert list(found.feature_indices) == brute_cosine(vectors.values, vectors.values[2], 3, exclude=2)[0]
    embedding = anatomy.embed(vectors.values, "tsne")
    assert embedding.points.shape == (len(photos), 2) and embedding.label == "t-SNE"


class FunctionalReluNet(nn.Module):
    """deconv_net / field_net with ``F.relu(..., inplace=True)`` in forward, as GoogLeNet does."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.relu_at = {i for i, m in enumerate(net) if isinstance(m, nn.ReLU)}
        self.net = nn.Sequential(*(nn.Identity() if i in self.relu_at else m for i, m in enumerate(net)))

    def forward(self, x):
        for i, module in enumerate(self.net):
            x = torch.nn.functional.relu(x, inplace=True) if i in self.relu_at else module(x)
        return x


def test_functional_relus_get_the_rules():
    modules = hand_handle(deconv_net(), 2)
    functional = hand_handle(FunctionalReluNet(deconv_net()), 2, "functional")
    assert not any(anatomy.is_activation(m) for m in functional.model.modules())
    for method in ("deconvnet", "guided", "gradient"):
        want = anatomy.project_back(modules, deconv_image(), "2", 0, method).image
        got = anatomy.project_back(functional, deconv_image(), "net.2", 0, method).image
        np.testing.assert_allclose(got, want, atol=1e-6)
    handle = hand_handle(FunctionalReluNet(field_net(nn.AvgPool2d)), 16, "functional-field")
    dark = -torch.ones(1, 3, 16, 16)  # every functional ReLU closed on the plain gradient
    assert tuple(anatomy.receptive_field(handle, "net.3", dark, [(1, 2)])[0]) == analytic_box(1, 2)
    assert count_hooks(functional.model) == count_hooks(handle.model) == 0
    assert not torch._C._is_torch_function_mode_enabled()

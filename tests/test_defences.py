"""Input-transform defences (BPDA, EOT) and Robinson & Graham's sec. 4 detector, on tiny nets."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from engine import defences, lab, models
from engine.errors import Cancelled, ConfigError

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


class GradientTrap(nn.Module):
    """A hand-made classifier whose bare gradient points where a transform erases: a linear
    read-out of the 4x4-pooled picture plus a strong one of the *energy* of fine detail. On a
    finely textured photo the detail term dominates the gradient, so an attack on the bare model
    spends its budget on texture that JPEG removes; through the transform (BPDA) the detail is
    gone and the gradient is the low-frequency one that survives. Without the detail term it is
    a plain linear classifier, whose exact pixel alignment a random resize breaks (EOT's case)."""

    def __init__(self, seed: int = 1, classes: int = 10, detail: float = 30.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        width = 3 * (SIZE // 4) ** 2
        self.register_buffer("low", torch.randn(classes, width, generator=g) / width ** 0.5)
        self.register_buffer("high", detail * torch.randn(classes, width, generator=g) / width ** 0.5)

    def forward(self, x):
        detail = x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return F.avg_pool2d(x, 4).flatten(1) @ self.low.T + F.avg_pool2d(detail ** 2, 4).flatten(1) @ self.high.T


class SmallNet(nn.Module):
    """Conv, ReLU, pool and an nn.Linear head: the penultimate vector the detector reads."""

    def __init__(self, seed: int = 0, classes: int = 10):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten())
        self.fc = nn.Linear(8 * (SIZE // 4) ** 2, classes)

    def forward(self, x):
        return self.fc(self.features(x))


def handle_of(net: nn.Module, name: str = "hand-made") -> models.ModelHandle:
    spec = dataclasses.replace(models.test_spec(), name=name, input_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)
    return models.make_handle(spec, net, [f"class {i}" for i in range(10)], torch.device("cpu"))


def photos(n: int = 24, *, texture: float = 0.03, seed: int = 1) -> torch.Tensor:
    """Smooth random pictures with fine texture, on the 8-bit grid."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=SIZE, mode="bilinear", align_corners=False)
    textured = 0.8 * smooth + 0.1 + texture * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return torch.round(textured.clamp(0, 1) * 255) / 255


# ---------------------------------------------------------------------------------------------
# Transforms


def test_bits_land_on_2_to_the_b_levels():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for bits in (1, 3, 5):
        out = defences.parse_transform(f"bits:{bits}").apply(x)
        steps = out * (2 ** bits - 1)
        assert torch.allclose(steps, steps.round(), atol=1e-5)
        assert len(torch.unique(out)) <= 2 ** bits and out.min() >= 0 and out.max() <= 1
        assert (out - x).abs().max() <= 0.5 / (2 ** bits - 1) + 1e-6  # rounded to the nearest level


def test_median_matches_scipy():
    from scipy.ndimage import median_filter

    x = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(0))
    for k in (3, 5):
        ours = defences.parse_transform(f"median:{k}").apply(x).numpy()
        theirs = median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")
        np.testing.assert_array_equal(ours, theirs)


def test_jpeg_is_pils_round_trip():
    x = photos(3)
    out = defences.parse_transform("jpeg:60").apply(x)
    for image, got in zip(x, out):
        picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=60)
        expected = np.asarray(Image.open(buffer).convert("RGB"))
        np.testing.assert_array_equal((got.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)
    assert not torch.equal(out, x)


def test_resize_keeps_the_size_and_draws_by_seed():
    x = photos(4)
    resize = defences.parse_transform("resize:8")
    assert resize.random and resize.differentiable
    draw = lambda seed: resize.apply(x, torch.Generator().manual_seed(seed))  # noqa: E731
    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == x.shape and torch.equal(first, again) and not torch.equal(first, other)
    # shrunk by 1..8 pixels and padded with black: some border row or column of each image is zero
    for image in first:
        borders = [image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]]
        assert any(float(b.abs().max()) == 0 for b in borders)


def test_parse_flags_and_unknown_transforms_are_sentences():
    assert defences.parse_transform("jpeg").spec == "jpeg:75"
    chain = defences.parse_transform("jpeg:75+resize:20")
    assert chain.spec == "jpeg:75+resize:20" and chain.random and not chain.differentiable
    methods = [defences.adaptive_method(defences.parse_transform(s)) for s in ("bits:4", "resize:9", "median:3+resize:9")]
    assert methods == ["BPDA", "EOT", "BPDA+EOT"]
    for bad in ("blur:3", "jpeg:0", "median:4", "bits:x", "resize:-1", ""):
        with pytest.raises(ConfigError) as error:
            defences.parse_transform(bad)
        message = str(error.value)
        assert "\n" not in message and all(key in message for key in ("jpeg:", "bits:", "median:", "resize:"))
    with pytest.raises(ConfigError, match="out of range for 32-pixel"):
        defences.parse_transform("resize:40").apply(photos(1))


def test_bpda_passes_the_gradient_straight_through():
    x = photos(2).requires_grad_(True)
    jpeg = defences.parse_transform("jpeg:50")
    out = defences.through(jpeg, x)
    assert torch.equal(out.detach(), jpeg.apply(x.detach()))
    weights = torch.randn_like(out)
    (gradient,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.allclose(gradient, weights)


# ---------------------------------------------------------------------------------------------
# Naive against adaptive


def test_bpda_recovers_what_jpeg_seemed_to_stop():
    handle = handle_of(GradientTrap(seed=1))
    result = defences.evaluate_defence(handle, photos(), defences.DefenceConfig(transform="jpeg:50", attack="pgd",
                                                                               epsilon=4))
    assert result.method == "BPDA" and result.n == 24 and result.undefended == 1.0
    assert result.naive <= 0.35 and result.adaptive >= result.naive + 0.3
    assert result.examples.shape == (4, 4, SIZE, SIZE, 3) and result.examples.dtype == np.uint8
    # every adversarial stays within epsilon of its clean image, on the 8-bit grid
    clean, naive, adaptive = (result.examples[:, i].astype(int) for i in (0, 2, 3))
    assert np.abs(naive - clean).max() <= 4 and np.abs(adaptive - clean).max() <= 4
    record = result.to_json()
    assert record["naive"]["success"] == pytest.approx(result.naive, abs=1e-6) and "adaptive" in record["note"].lower()


def test_eot_recovers_what_random_resizing_seemed_to_stop():
    handle = handle_of(GradientTrap(seed=1, detail=0.0))
    result = defences.evaluate_defence(handle, photos(texture=0.0), defences.DefenceConfig(
        transform="resize:8", attack="pgd", epsilon=8, eot_samples=8))
    assert result.method == "EOT" and result.eot_samples == 8 and result.undefended == 1.0
    assert result.naive <= 0.25 and result.adaptive >= result.naive + 0.25


def test_defend_set_is_cached_and_cancellable(tmp_path):
    from engine import imagesets

    for i, picture in enumerate(photos(4)):
        Image.fromarray((picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"{i}.png")
    handle = handle_of(GradientTrap(seed=1))
    imageset = imagesets.folder_set(tmp_path, size=SIZE)
    config = defences.DefenceConfig(transform="median:3", attack="fgsm", epsilon=4)
    with pytest.raises(Cancelled):
        defences.defend_set(handle, imageset, config, progress=lambda fraction, message: fraction < 0.5)
    seen = []
    first = defences.defend_set(handle, imageset, config, progress=lambda f, m: seen.append(f) is None)
    assert seen and seen[-1] == 1.0
    again = defences.defend_set(handle, imageset, config, progress=lambda f, m: seen.append(m) is None)
    assert seen[-1] == "loaded from the cache" and again.to_json() == first.to_json()
    np.testing.assert_array_equal(again.examples, first.examples)
    np.testing.assert_array_equal(again.adaptive_top1, first.adaptive_top1)


# ---------------------------------------------------------------------------------------------
# The detector (Robinson & Graham, sec. 4)


def test_torch_rbf_equals_sklearns_decision_function():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (30, 12)), rng.normal(0.8, 1.5, (30, 12))]) * 5 + 3
    labels = np.repeat([0, 1], 30)
    detector = defences.fit_detector(features, labels)
    rbf = defences.TorchRBF(detector)
    probe = rng.normal(2, 6, (25, 12))
    ours = rbf(torch.as_tensor(probe)).numpy()
    np.testing.assert_allclose(ours, detector.decision_function(probe), rtol=1e-9, atol=1e-9)
    leaf = torch.as_tensor(probe[:3], dtype=torch.float32).requires_grad_(True)
    (gradient,) = torch.autograd.grad(rbf(leaf).sum(), leaf)
    assert gradient.abs().sum() > 0


def test_group_splits_never_put_one_photo_on_both_sides():
    groups = np.repeat(np.arange(10), 6)  # 10 photos x (3 versions, clean and relabelled)
    splits = defences.group_splits(groups, splits=10, test_share=0.6, seed=0)
    assert len(splits) == 10
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert len(set(groups[test])) == 6 and len(train) + len(test) == len(groups)
    with pytest.raises(ConfigError):
        defences.group_splits(np.zeros(5, int))


def test_detection_keeps_each_photo_on_one_side_and_scores_the_adaptive_attack():
    handle = handle_of(SmallNet(), name="small-net")
    # a random net's classes sit far apart: a looser cap than the paper's 0.01 lets most relabel
    config = defences.DetectionConfig(augmentations=3, splits=5, cap=0.03, max_steps=30, adaptive_steps=30)
    result = defences.detect_relabelling(handle, photos(8, texture=0.01), config)
    assert result.photos == 8 and result.pairs >= 12 and 0 < result.relabel_success <= 1
    assert result.mean_distortion <= 0.03 + 1e-9 and result.adaptive_mean_distortion <= 0.03 + 1e-9
    tested, trained = set(result.groups[result.test_rows]), set(result.groups[~result.test_rows])
    assert tested and trained and not tested & trained
    # each kept pair: one clean and one relabelled row with the same photo
    assert result.is_relabelled.sum() == result.pairs and len(result.groups) == 2 * result.pairs
    assert 0 <= result.accuracy <= 1 and len(result.split_accuracies) == 5
    assert result.adaptive_attacked == int((result.groups[result.test_rows] >= 0).sum() // 2)
    for value in (result.adaptive_relabelled, result.adaptive_detection, result.adaptive_accuracy):
        assert 0 <= value <= 1
    record = result.to_json()
    assert record["paper_accuracy"] == defences.PAPER_DETECTION_ACCURACY == 0.896
    assert len(record["differences"]) >= 5
    # the hook that read the penultimate features is gone
    assert not handle.module("fc")._forward_pre_hooks


def test_relabel_batch_respects_the_cap_and_stops_each_image_on_its_own():
    from engine import relabel

    handle = handle_of(SmallNet(), name="small-net")
    x = photos(6, texture=0.01)
    targets = (lab.predict(handle, x)[0] + 3) % 10
    out, reached = defences.relabel_batch(handle, x, targets, cap=0.01, max_steps=40, batch_size=4)
    top1, _ = lab.predict(handle, out)
    assert reached.any() and np.array_equal(top1.numpy()[reached], targets.numpy()[reached])
    assert all(relabel.distortion_rms(a, b) <= 0.01 + 1e-9 for a, b in zip(out, x))
    assert torch.equal(out, torch.round(out * 255) / 255)


# ---------------------------------------------------------------------------------------------
# CLI


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {"GLASSBOX_DEVICE": "cpu", "PATH": "/usr/bin:/bin", "GLASSBOX_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_defend_json_on_the_tiny_model(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, picture in enumerate(photos(3)):
        big = F.interpolate(picture[None], size=64, mode="bilinear", align_corners=False)[0]
        Image.fromarray((big.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    result = run_cli("defend", "--transform", "jpeg:75", "--attack", "fgsm", "--set", str(folder), "--model",
                     models.TEST_MODEL, "--epsilon", "4", "--json", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    for key in ("naive", "adaptive", "undefended"):
        assert 0 <= record[key]["success"] <= 1
    assert record["transform"] == "jpeg:75" and record["attack"] == "fgsm" and record["model"] == models.TEST_MODEL
    assert record["n"] == 3 and 0 <= record["clean_agreement"] <= 1 and record["adaptive"]["method"] == "BPDA"


def test_cli_defend_refuses_an_unknown_transform_with_a_sentence(tmp_path, capsys):
    from engine.__main__ import main

    assert main(["defend", "--transform", "blur:3", "--set", str(tmp_path), "--model", models.TEST_MODEL]) == 2
    error = capsys.readouterr().err
    assert "no transform called 'blur'" in error and "jpeg:Q" in error and "Traceback" not in error

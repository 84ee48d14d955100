"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017, Alg. 1) and the transfer table,
on the tiny model and a folder of real photo crops: the ball after every update, the exact
projection, the fooling rate against a hand count, the cache, the table's diagonal, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import images, imagesets, lab, models
from engine import universal as U
from engine.errors import Cancelled, ConfigError, DatasetError


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uap_photos")
    samples = images.list_samples()
    for i in range(10):
        picture = np.asarray(images.load_sample(samples[i % len(samples)]))
        top, left = (i * 13) % max(1, picture.shape[0] - 120), (i * 29) % max(1, picture.shape[1] - 120)
        Image.fromarray(picture[top:top + 120, left:left + 120]).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def photos(photo_folder) -> imagesets.ImageSet:
    return imagesets.folder_set(photo_folder, size=64)


class Linear(torch.nn.Module):
    """Logits linear in the pixels (random weights): DeepFool is exact in one step and the photos
    take several labels, so a few levels fool some of them but not all."""

    def __init__(self, side: int, classes: int = 10, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(classes, 3 * side * side, generator=generator) / side / 3 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def linear_handle(tiny, name: str, side: int, seed: int) -> models.ModelHandle:
    return models.make_handle(replace(tiny.spec, name=name, input_size=side), Linear(side, seed=seed),
                              tiny.class_names, tiny.device)


@pytest.fixture(scope="module")
def linear(tiny) -> models.ModelHandle:
    return linear_handle(tiny, "linear_test", 16, 0)


@pytest.fixture(scope="module")
def x(linear, photos) -> torch.Tensor:
    return lab.set_tensor(linear, photos)


# ---------------------------------------------------------------------------------------------
# The ball


def test_projection_is_the_nearest_point_of_the_ball():
    generator = torch.Generator().manual_seed(0)
    for norm, xi in (("inf", 4.0), ("2", 30.0)):
        for scale in (0.001, 0.05):  # inside and outside the ball
            v = torch.randn(3, 8, 8, generator=generator) * scale
            p = U.project(v, xi, norm)
            radius = xi / 255
            if norm == "inf":
                assert torch.equal(p, torch.minimum(torch.maximum(v, torch.tensor(-radius)), torch.tensor(radius)))
            elif v.norm() <= radius:
                assert torch.equal(p, v)
            else:
                assert float(p.norm()) == pytest.approx(radius, rel=1e-5)
                assert float(torch.nn.functional.cosine_similarity(p.flatten(), v.flatten(), dim=0)) == \
                    pytest.approx(1.0, abs=1e-5)
            assert U.norm_levels(p, norm) <= xi + 1e-4
            # No point of the ball is nearer to v than its projection.
            for _ in range(200):
                q = U.project(torch.randn(3, 8, 8, generator=generator) * scale, xi, norm)
                assert float((v - p).norm()) <= float((v - q).norm()) + 1e-7


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_to_grid_stays_in_the_ball_and_on_the_levels(norm):
    generator = torch.Generator().manual_seed(1)
    for _ in range(30):
        xi = float(torch.rand(1, generator=generator)) * 60 + 1
        v = U.project(torch.randn(3, 16, 16, generator=generator) * 0.05, xi, norm)
        grid = U.to_grid(v, xi, norm) * 255
        assert torch.equal(grid, torch.round(grid))
        assert U.norm_levels(grid / 255, norm) <= xi + 1e-6
        assert float((grid - v * 255).abs().max()) <= 1.0 + 1e-4  # never more than a level from v


@pytest.mark.parametrize("net,norm,xi,method", [("linear", "inf", 3.0, "deepfool"), ("linear", "2", 40.0, "deepfool"),
                                                ("linear", "inf", 3.0, "sgd"), ("linear", "2", 40.0, "sgd"),
                                                ("tiny", "inf", 2.0, "deepfool")])
def test_the_perturbation_stays_inside_its_ball_after_every_update(request, photos, net, norm, xi, method):
    handle = request.getfixturevalue(net)
    x = lab.set_tensor(handle, photos)
    seen: list[U.Update] = []
    config = U.UniversalConfig(xi=xi, norm=norm, method=method, max_passes=3, target=1.0, steps=12, batch_size=4)
    fit = U.fit_universal(handle, x, config, observer=seen.append)
    assert fit.updates == len(seen) > 0
    assert all(update.norm <= xi + 1e-4 for update in seen)
    assert max(update.norm for update in seen) == pytest.approx(xi, rel=1e-3)  # the projection did bind
    assert [update.index for update in seen] == list(range(1, len(seen) + 1))
    levels = fit.perturbation.double() * 255
    assert float((levels - torch.round(levels)).abs().max()) < 1e-4  # on the 8-bit grid
    assert U.norm_levels(torch.round(levels) / 255, norm) <= xi + 1e-9
    assert fit.perturbation.shape == x.shape[1:]
    assert 1 <= len(fit.pass_fooling) and 0 <= fit.fooling_rate <= 1


@pytest.mark.parametrize("norm,xi,target", [("inf", 4, 0.5), ("2", 60, 0.6)])
def test_algorithm_1_stops_at_the_target(linear, x, norm, xi, target):
    seen: list[U.Update] = []
    fit = U.fit_universal(linear, x, U.UniversalConfig(xi=xi, norm=norm, target=target, max_passes=8, method="deepfool"),
                          observer=seen.append)
    assert fit.passes == len(fit.pass_fooling) < 8
    assert fit.pass_fooling[-1] >= target and all(rate < target for rate in fit.pass_fooling[:-1])
    assert fit.fooling_rate == fit.pass_fooling[-1]
    for p in range(fit.passes):  # each image changes v at most once a pass
        images = [update.image for update in seen if update.pass_index == p]
        assert len(images) == len(set(images))


def test_each_step_is_stretched_until_the_8bit_picture_is_fooled(linear, x):
    """DeepFool's step is often below one level, so a PNG of x + v + step would keep its label; the
    stretch finds a multiple of the step whose 8-bit picture does not."""
    from engine.minimal import deepfool

    config = U.UniversalConfig(xi=16)
    v = torch.zeros_like(x[0])
    stretched = 0
    for i in range(len(x)):
        step = deepfool(linear, x[i:i + 1], overshoot=0.0)
        delta = step.perturbation[0]
        label = int(step.original[0])
        t = U._stretch(linear.logits, x[i:i + 1], v, delta, label, config)
        assert 1 <= t <= max(1.0, 2 * config.xi / U.norm_levels(delta, "inf")) + 1e-9
        if t < 2 * config.xi / U.norm_levels(delta, "inf"):  # found before the limit: it fools
            assert int(linear.logits(U.apply(x[i:i + 1], v + t * delta)).argmax(1)[0]) != label
        stretched += t > 1
    assert stretched > 0


def test_images_already_fooled_are_skipped(linear, x, monkeypatch):
    """Alg. 1 runs DeepFool only on images that x_i + v does not fool yet: once v fools image 0,
    DeepFool never sees it again."""
    from engine import minimal

    inputs: list[torch.Tensor] = []
    deepfool = minimal.deepfool

    def recording(forward, image, **settings):
        inputs.append(image)
        return deepfool(forward, image, **settings)

    monkeypatch.setattr(minimal, "deepfool", recording)
    fit = U.fit_universal(linear, x, U.UniversalConfig(xi=4, target=1.0, max_passes=3, method="deepfool"))
    assert 0 < len(inputs) < 3 * len(x)
    clean = fit.clean
    for image in inputs:  # every picture DeepFool started from still had its clean label
        distance = (x - image).flatten(1).abs().max(1).values
        i = int(distance.argmin())
        assert int(linear.logits(image).argmax(1)[0]) == int(clean[i])


# ---------------------------------------------------------------------------------------------
# On sets: the fooling rate, the split, the cache


def test_fooling_rate_equals_a_hand_count(linear, photos):
    train, held = list(range(6)), list(range(6, 10))
    result = U.universal_perturbation(linear, photos, photos, U.UniversalConfig(xi=8, max_passes=3),
                                      train_indices=train, heldout_indices=held, use_cache=False)
    v = torch.as_tensor(result.perturbation)
    fooled = 0
    for i in held:  # one image at a time, the perturbation added and rounded by hand
        clean = lab.pictures_tensor(linear, photos.image(i)[None])
        attacked = torch.round(torch.clamp(clean + v, 0, 1) * 255) / 255
        with torch.no_grad():
            fooled += int(linear.logits(clean).argmax(1)[0] != linear.logits(attacked).argmax(1)[0])
    assert 0 < fooled < len(held) and result.fooling_rate_heldout == fooled / len(held)
    assert result.heldout_indices == tuple(held) and len(result.heldout_attacked) == len(held)
    assert sum(d.count for d in result.dominant) == fooled
    assert [d.count for d in result.dominant] == sorted((d.count for d in result.dominant), reverse=True)
    assert result.fooling_rate_train == float(np.mean(result.train_clean != result.train_attacked))
    assert result.image.shape == (16, 16, 3) and result.image.dtype == np.float32


def test_without_a_held_out_set_the_set_is_split(linear, photos):
    result = U.universal_perturbation(linear, photos, None, U.UniversalConfig(xi=6, max_passes=1), use_cache=False)
    assert set(result.train_indices).isdisjoint(result.heldout_indices)
    assert sorted(result.train_indices + result.heldout_indices) == list(range(len(photos)))
    assert "held out" in result.split


def test_a_set_too_small_is_a_sentence(linear, photos, x):
    with pytest.raises(DatasetError, match="too few to split"):
        U.split_indices(3)
    with pytest.raises(DatasetError, match="at least 2 training images"):
        U.universal_perturbation(linear, photos, photos, train_indices=[0], use_cache=False)
    with pytest.raises(DatasetError, match="at least 2 training images"):
        U.fit_universal(linear, x[:1])


@pytest.mark.parametrize("change,words", [({"xi": 0.5}, "between 1 and 128"), ({"xi": 200}, "between 1 and 128"),
                                          ({"norm": "1"}, "'inf' or '2'"), ({"target": 0}, "target fooling"),
                                          ({"method": "art"}, "Unknown method"), ({"candidates": 1}, "candidate")])
def test_bad_settings_are_sentences(change, words):
    with pytest.raises(ConfigError, match=words):
        replace(U.UniversalConfig(), **change).check()


def test_cached_result_comes_back_without_recomputing(tiny, photos, monkeypatch):
    config = U.UniversalConfig(xi=5, max_passes=1, seed=3)
    first = U.universal_perturbation(tiny, photos, photos, config, train_indices=range(5), heldout_indices=range(5, 10))
    assert not first.cached

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed a cached perturbation")

    monkeypatch.setattr(U, "fit_universal", must_not_run)
    again = U.universal_perturbation(tiny, photos, photos, config, train_indices=range(5),
                                     heldout_indices=range(5, 10))
    assert again.cached
    np.testing.assert_array_equal(again.perturbation, first.perturbation)
    for name in ("fooling_rate_train", "fooling_rate_heldout", "pass_fooling", "update_norms", "dominant", "split",
                 "heldout_labels", "seconds"):
        assert getattr(again, name) == getattr(first, name), name
    np.testing.assert_array_equal(again.heldout_attacked, first.heldout_attacked)
    with pytest.raises(AssertionError, match="recomputed"):  # other settings are another result
        U.universal_perturbation(tiny, photos, photos, replace(config, xi=6), train_indices=range(5),
                                 heldout_indices=range(5, 10))


def test_stop_cancels(linear, x):
    with pytest.raises(Cancelled):
        U.fit_universal(linear, x, U.UniversalConfig(max_passes=2), progress=lambda fraction, message: False)


def test_fooling_vs_size_has_one_point_per_size(linear, photos):
    config = U.UniversalConfig(xi=4, max_passes=2)
    curve = U.fooling_vs_size(linear, photos, photos, [4, 2], config)
    assert curve.sizes == (2, 4) and len(curve.fooling_rate_heldout) == 2
    order = np.random.default_rng([config.seed, len(photos)]).permutation(len(photos))
    point = U.universal_perturbation(linear, photos, photos, config, train_indices=sorted(order[:4]))
    assert point.cached and curve.fooling_rate_heldout[1] == point.fooling_rate_heldout  # the same run, stored
    with pytest.raises(ConfigError):
        U.fooling_vs_size(linear, photos, photos, [1])


# ---------------------------------------------------------------------------------------------
# The transfer table


@pytest.fixture(scope="module")
def two_models(linear, tiny):
    """Two linear nets of different sizes, so perturbations must be resized."""
    return {"linear_test": linear, "linear_other": linear_handle(tiny, "linear_other", 12, 1)}


@pytest.mark.parametrize("kind", ["universal", "per-image"])
def test_transfer_table_shape_and_diagonal(two_models, photos, kind):
    names = list(two_models)
    config = U.UniversalConfig(xi=10, max_passes=2)
    table = U.transfer_matrix(names, photos, photos, kind=kind, config=config, epsilon=8,
                              train_indices=range(6), eval_indices=range(6, 10), loader=two_models.__getitem__)
    assert table.rows == table.cols == tuple(names) and table.fooling_rate.shape == (2, 2)
    assert table.eval_count == 4 and ((0 <= table.fooling_rate) & (table.fooling_rate <= 1)).all()
    assert table.fooling_rate.max() > 0
    for k, name in enumerate(names):
        handle = two_models[name]
        if kind == "universal":
            own = U.universal_perturbation(handle, photos, photos, config, train_indices=range(6),
                                           heldout_indices=range(6, 10)).fooling_rate_heldout
        else:
            clean = lab.set_tensor(handle, photos, indices=range(6, 10))
            before, _ = lab.predict(handle, clean)
            after, _ = lab.predict(handle, lab.set_attack(handle, clean, "pgd", 8))
            own = lab.fooling_rate(before, after)
        assert table.fooling_rate[k, k] == own
    again = U.transfer_matrix(names, photos, photos, kind=kind, config=config, epsilon=8, train_indices=range(6),
                              eval_indices=range(6, 10), loader=two_models.__getitem__)
    assert again.cached and np.array_equal(again.fooling_rate, table.fooling_rate)
    assert json.loads(json.dumps(table.as_json()))["fooling_rate"] == [[round(float(v), 6) for v in row]
                                                                       for row in table.fooling_rate]


def test_default_transfer_models_are_ones_this_machine_has():
    for name in U.default_transfer_models():
        assert models.lite_available(name) or models.torchvision_weights_cached(name)


# ---------------------------------------------------------------------------------------------
# The CLI


def test_cli_writes_the_perturbation_picture_and_report(tmp_path, photo_folder, capsys):
    from engine.__main__ import main

    out = tmp_path / "out"
    code = main(["uap", "--model", models.TEST_MODEL, "--set", str(photo_folder), "--xi", "10", "--norm", "inf",
                 "--passes", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    v = np.load(out / "uap.npy")
    assert v.shape == (64, 64, 3) and v.dtype == np.float32
    assert np.abs(v).max() <= 10 / 255 + 1e-7 and np.array_equal(np.round(v * 255), v * 255)
    picture = np.asarray(Image.open(out / "uap.png"))
    assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
    report = json.loads((out / "report.json").read_text())
    assert {"fooling_rate_train", "fooling_rate_heldout", "xi", "norm", "model", "dominant_labels", "method",
            "seconds", "split"} <= set(report)
    assert report["xi"] == 10 and report["norm"] == "inf" and report["model"] == models.TEST_MODEL
    assert report["train_images"] + report["heldout_images"] == 10 and "random split" in report["split"]


def test_cli_says_when_the_set_is_too_small(tmp_path, photo_folder, capsys):
    from engine.__main__ import main

    small = tmp_path / "small"
    small.mkdir()
    for name in sorted(photo_folder.iterdir())[:3]:
        (small / name.name).write_bytes(name.read_bytes())
    code = main(["uap", "--model", models.TEST_MODEL, "--set", str(small), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "too few to split" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_transfer_prints_the_table_as_json(tmp_path, photo_folder, capsys):
    from engine.__main__ import main

    code = main(["transfer", "--models", models.TEST_MODEL, "--set", str(photo_folder), "--kind", "per-image",
                 "--epsilon", "4", "--json"])
    assert code == 0
    table = json.loads(capsys.readouterr().out)
    assert table["rows"] == table["cols"] == [models.TEST_MODEL]
    assert np.asarray(table["fooling_rate"]).shape == (1, 1)

"""Pattern runs on disk (issue 7): the shared training loop, stop and resume, the user's own
substrates, the Grad-CAM masking extension, and the quality report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import hooks, images, models
from engine.errors import CheckpointError, ConfigError, DatasetError
from engine.patterns import generate, losses, quality, runs, substrates, training
from engine.patterns.cli import parse_weights


def small_config(**changes) -> training.TrainConfig:
    settings = dict(classes=(1, 3), model=models.TEST_MODEL, size=32, batch=2, base=8, seed=0)
    settings.update(changes)
    return training.TrainConfig(**settings)


def test_a_stopped_run_resumes_to_the_same_weights_as_an_unbroken_one(tmp_path):
    unbroken = runs.train_run(tmp_path / "a", small_config(), 6, sample_every=2, checkpoint_every=2)
    assert unbroken == runs.RunOutcome(str(tmp_path / "a"), 6, False)
    calls = []

    def stop_after_two(fraction, message=""):
        calls.append((fraction, message))
        return len(calls) < 2  # the page's Stop: False from the progress callback

    stopped = runs.train_run(tmp_path / "b", small_config(), 6, sample_every=5, checkpoint_every=5,
                          progress=stop_after_two)
    assert stopped.stopped and stopped.steps == 2
    assert "step 2 of 6" in calls[-1][1] and calls[0][0] == pytest.approx(1 / 6)
    view = runs.view_run(tmp_path / "b")
    assert view.checkpoint_steps == 2 and view.logged_steps == 2 and view.sample.name == "step_000002.png"
    with open(tmp_path / "b" / "log.csv", "a") as log:  # a killed run: a row past the checkpoint, half a line
        log.write("3,1,2,3,4,5,6,7\n4,1,2")
    resumed = runs.train_run(tmp_path / "b", None, 6, resume=True, sample_every=2, checkpoint_every=2)
    assert resumed.steps == 6 and not resumed.stopped
    a, b = (training.read_checkpoint(tmp_path / x / "checkpoint.pt")["generator"] for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = runs.read_log(tmp_path / "a" / "log.csv"), runs.read_log(tmp_path / "b" / "log.csv")
    assert list(log_b["step"]) == [1, 2, 3, 4, 5, 6]
    assert np.array_equal(log_a["total"], log_b["total"])
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == [
        "step_000002.png", "step_000004.png", "step_000006.png"]
    probs = runs.read_log(tmp_path / "b" / "samples.csv")  # stopped at 2 (sampled twice), resumed: 2, 4, 6 once each
    assert list(probs["step"]) == [2, 4, 6] and set(probs) == {"step", "p_1", "p_3"}
    assert np.array_equal(probs["p_3"], runs.read_log(tmp_path / "a" / "samples.csv")["p_3"])
    trainer = training.Trainer(models.load_model(models.TEST_MODEL), small_config())
    trainer.load(tmp_path / "a" / "checkpoint.pt")
    grid = training.sample_grid(trainer)
    column = torch.from_numpy(np.stack([grid[r * 32:(r + 1) * 32, 64:96] for r in range(3)]))  # class 3's column
    x = column.permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(trainer.handle.input_size,) * 2, mode="bilinear", antialias=True)
    with torch.no_grad():
        p3 = trainer.handle.logits(x).softmax(1)[:, 3].mean()
    assert float(p3) == pytest.approx(probs["p_3"][-1], rel=1e-4)


def test_run_errors_are_sentences(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint .* to resume"):
        runs.train_run(tmp_path / "none", None, 4, resume=True)
    runs.train_run(tmp_path / "r", small_config(), 2)
    with pytest.raises(ConfigError, match="already at step 2"):
        runs.train_run(tmp_path / "r", None, 2, resume=True)
    with pytest.raises(CheckpointError, match=r"trained on classes \[1, 3\] at 32 px; the run asks for \[1, 2\]"):
        runs.train_run(tmp_path / "r", small_config(classes=(1, 2)), 4, resume=True)
    with pytest.raises(ConfigError, match="power of two"):
        runs.train_run(tmp_path / "s", small_config(size=48), 2)
    assert runs.safe_run_name("  my run/../x ") == "my-run-..-x"
    with pytest.raises(ConfigError):
        runs.safe_run_name("///")


def test_read_log_skips_a_half_written_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,total\n1,2.5\n2,2.0\n3,1.")
    log = runs.read_log(path)
    assert list(log["step"]) == [1, 2] and list(log["total"]) == [2.5, 2.0]
    assert runs.read_log(tmp_path / "absent.csv") == {}


def _garment_png(colour) -> bytes:
    return images.to_png_bytes(substrates.draw_substrate("dress", 40, colour).image)


def test_the_users_own_substrates_train_and_bad_ones_are_refused(tmp_path):
    uploads = [(f"g{i}.png", _garment_png((40 * i, 90, 200))) for i in range(4)]
    names = runs.save_uploads(tmp_path / "subs", uploads)
    assert names == ["000.png", "001.png", "002.png", "003.png"]
    pool = substrates.load_substrate_folder(tmp_path / "subs", 32)
    assert len(pool) == 4 and pool[0].image.shape == (32, 32, 3)
    assert pool[0].background[0, 0] and not pool[0].background[16, 16]  # white corner, garment centre
    trainer = training.Trainer(models.load_model(models.TEST_MODEL), small_config(substrates=str(tmp_path / "subs")))
    x, background, _, _ = trainer.batch(0)
    assert x.shape == (2, 3, 32, 32)
    masks = [torch.from_numpy(p.background).float() for p in pool]
    for b in background[:, 0]:  # every drawn substrate is one of the user's, maybe flipped
        assert any(torch.equal(b, m) or torch.equal(b, m.flip(-1)) for m in masks)
    assert set(np.unique(background.numpy())) <= {0.0, 1.0}
    trainer.step()

    with pytest.raises(DatasetError, match="at least 4 substrate images; 2 were uploaded"):
        runs.save_uploads(tmp_path / "few", uploads[:2])
    with pytest.raises(DatasetError, match="notes.txt"):
        runs.save_uploads(tmp_path / "bad", uploads[:3] + [("notes.txt", b"hello, not a picture")])
    assert not (tmp_path / "bad").exists()  # nothing written when one upload is refused
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.png").write_bytes(uploads[0][1])
    (tmp_path / "mixed" / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match="readme.md in mixed/ is not an image"):
        substrates.load_substrate_folder(tmp_path / "mixed", 32)
    with pytest.raises(DatasetError, match="at least 4 .* has 1"):
        (tmp_path / "mixed" / "readme.md").unlink()
        substrates.load_substrate_folder(tmp_path / "mixed", 32)
    with pytest.raises(DatasetError, match="no folder"):
        substrates.load_substrate_folder(tmp_path / "absent", 32)


def test_the_loss_weights_parse_or_say_what_is_wrong():
    assert parse_weights("3,10,50,150") == losses.PatternLossWeights(3, 10, 50, 150)
    assert parse_weights(" 1, 0 ,2.5,-1") == losses.PatternLossWeights(1, 0, 2.5, -1)
    for bad in ("3,10,50", "a,b,c,d", ""):
        with pytest.raises(ConfigError, match="four numbers"):
            parse_weights(bad)


def test_a_weighted_substrate_loss_counts_only_where_the_weight_is():
    t = torch.zeros(1, 3, 4, 4)
    g = torch.full((1, 3, 4, 4), 0.5)
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., :2, :] = 1.0
    full = losses.substrate_loss(t, g)
    assert losses.substrate_loss(t, g, weight=weight) == pytest.approx(float(full) / 2)
    assert losses.substrate_loss(t, g, weight=torch.ones(1, 1, 4, 4)) == pytest.approx(float(full))


def test_the_gradcam_mask_matches_gradcam_and_leaves_no_hooks(tiny):
    from engine.saliency import GradCAM

    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    classes = [1, 3, 5, 7]
    weights = training.gradcam_weights(tiny, x, torch.tensor(classes), grayscale=False)
    assert weights.shape == (4, 1, 32, 32) and not weights.requires_grad
    # the tiny net's CAM layer is 32 x 32 for a 32 px input, so no resampling: Grad-CAM itself, max 1
    reference = GradCAM(tiny).cam(training.classifier_view(tiny, x, grayscale=False), classes)
    reference = reference / reference.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert torch.allclose(weights[:, 0], reference, atol=1e-5)
    peaks = weights.amax(dim=(1, 2, 3))
    assert ((peaks - 1).abs() < 1e-5).any() and (((peaks - 1).abs() < 1e-5) | (peaks == 0)).all()
    assert hooks.count_hooks(tiny.model) == 0
    trainer = training.Trainer(tiny, small_config(gradcam_mask=True))
    before = trainer.step()
    assert np.isfinite(before["total"]) and hooks.count_hooks(tiny.model) == 0


def _gradcam_mask_as_first_written(handle, pictures, class_ids, *, grayscale):
    """The mask as patterns/training.py computed it before it used engine.saliency.GradCAM: Grad-CAM's
    eq. 1-2 written out on hooks.layer_gradient, scaled to a maximum of 1, resized to the image."""
    x = training.classifier_view(handle, pictures.detach(), grayscale=grayscale)
    result = hooks.layer_gradient(handle, x, None, [int(c) for c in class_ids])
    cam = torch.relu((result.gradients.mean(dim=(2, 3), keepdim=True) * result.activations).sum(1, keepdim=True))
    cam = cam / cam.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return torch.nn.functional.interpolate(cam, size=pictures.shape[-2:], mode="bilinear",
                                           align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("size, grayscale", [(32, False), (128, False), (128, True)])
def test_the_gradcam_mask_is_saliency_gradcam_resized_with_the_first_versions_numbers(tiny, size, grayscale):
    from engine import saliency

    torch.manual_seed(1)
    x = torch.rand(3, 3, size, size) * 2 - 1
    classes = torch.tensor([2, 4, 9])
    mask = training.gradcam_weights(tiny, x, classes, grayscale=grayscale)
    assert mask.shape == (3, 1, size, size) and not mask.requires_grad
    # Grad-CAM at the tiny net's CAM layer (32 x 32: resized up to 128 px, or not at all at 32 px)
    cam = saliency.GradCAM(tiny).cam(training.classifier_view(tiny, x, grayscale=grayscale), classes.tolist())
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert torch.equal(mask[:, 0], saliency.upsample(cam, (size, size)).clamp(0, 1))
    # the very numbers of the first, hand-written version (the one the Grad-CAM runs trained with)
    assert torch.equal(mask, _gradcam_mask_as_first_written(tiny, x, classes, grayscale=grayscale))
    assert hooks.count_hooks(tiny.model) == 0


def test_the_gradcam_mask_holds_the_handles_lock(tiny):
    """Grad-CAM registers hooks on the shared model: another session's forward must wait for it."""
    seen = []
    original = tiny.logits

    def watching(x):
        seen.append((tiny.lock._is_owned(), x.shape[0]))
        return original(x)

    tiny.logits = watching
    try:
        training.gradcam_weights(tiny, torch.zeros(2, 3, 32, 32), torch.tensor([1, 2]), grayscale=False)
    finally:
        del tiny.logits
    assert seen == [(True, 2)]  # one batched forward for both images, under the lock


def test_older_files_call_the_classifier_loss_vgg(tmp_path):
    """Checkpoints, config.json and log.csv written before the rename still load (L_VGG was `vgg`)."""
    shipped = training.read_checkpoint(generate.SHIPPED)
    weights = dict(shipped["config"]["weights"])
    weights["vgg"] = weights.pop("classifier", weights.get("vgg"))  # as the first shipped generator (issue 7) wrote it
    shipped["config"]["weights"] = weights
    assert training.config_from_state(shipped).weights.classifier == weights["vgg"]
    assert losses.PatternLossWeights.from_dict({"cgan": 1, "mask": 2, "vgg": 3, "substrate": 4}).classifier == 3
    old = runs.train_run(tmp_path / "old", small_config(), 2, checkpoint_every=2)
    checkpoint = tmp_path / "old" / "checkpoint.pt"
    state = training.read_checkpoint(checkpoint)
    state["config"]["weights"] = {"cgan": 3.0, "mask": 10.0, "vgg": 50.0, "substrate": 150.0}
    torch.save(state, checkpoint)
    log = (tmp_path / "old" / "log.csv").read_text().replace(",classifier,", ",vgg,")
    (tmp_path / "old" / "log.csv").write_text(log)
    config = (tmp_path / "old" / "config.json").read_text().replace('"classifier"', '"vgg"')
    (tmp_path / "old" / "config.json").write_text(config)
    view = runs.view_run(tmp_path / "old")
    assert "classifier" in view.log and "vgg" not in view.log and view.config["weights"]["classifier"] == 50.0
    resumed = runs.train_run(tmp_path / "old", None, 3, resume=True)
    assert resumed.steps == 3 and old.steps == 2
    assert list(runs.read_log(tmp_path / "old" / "log.csv")["step"]) == [1, 2, 3]


def test_the_quality_report_scores_every_class(tiny, tmp_path):
    trainer = training.Trainer(tiny, small_config(class_noise=False))
    trainer.step()
    loaded = generate.load_generator(trainer.state())
    assert loaded.class_noise is False  # generation draws f(t) the way training did
    results = quality.evaluate(loaded, tiny, tiny, count=3)
    assert [r.name for r in results] == ["class 1", "class 3"]
    held_out = quality.held_out_substrates(3, 32)
    tiles = torch.zeros(3, 2)
    tiles[:, 1] = 1
    from engine.patterns.networks import tiled_class_input

    with torch.inference_mode():
        made = loaded.generator(held_out, tiled_class_input(tiles, noise=False))
    made = ((made + 1) * 127.5).round() / 255
    x = torch.nn.functional.interpolate(made, size=(tiny.input_size,) * 2, mode="bilinear", antialias=True)
    with torch.inference_mode():
        probs = tiny.logits(x).softmax(1)[:, 3]
        top5 = (tiny.logits(x).topk(5, 1).indices == 3).any(1).float().mean()
        grey = training.grey(x)
        probs_grey = tiny.logits(grey).softmax(1)[:, 3]
        top5_grey = (tiny.logits(grey).topk(5, 1).indices == 3).any(1).float().mean()
    assert results[1].mean_prob == pytest.approx(float(probs.mean()), abs=1e-5)
    assert results[1].mean_prob_grey == pytest.approx(float(probs_grey.mean()), abs=1e-5)
    assert results[1].top5_rate == pytest.approx(float(top5))
    assert results[1].top5_rate_grey == pytest.approx(float(top5_grey))
    table = quality.markdown_table(results, model="tiny", second="tiny", count=3)
    assert table.count("\n") == 5 and "**mean of 2**" in table
    assert f"| {results[1].top5_rate:.0%} | {results[1].top5_rate_grey:.0%} |" in table.splitlines()[3]

"""Pattern runs on disk (issue 7): the shared training loop, stop and resume, the user's own
substrates, the Grad-CAM masking extension, and the quality report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import hooks, images, models
from engine.errors import CheckpointError, ConfigError, DatasetError
from engine.patterns import generate as G
from engine.patterns import losses as L
from engine.patterns import quality as Q
from engine.patterns import runs as R
from engine.patterns import substrates as S
from engine.patterns import training as T
from engine.patterns.cli import parse_weights


def small_config(**changes) -> T.TrainConfig:
    settings = dict(classes=(1, 3), model=models.TEST_MODEL, size=32, batch=2, base=8, seed=0)
    settings.update(changes)
    return T.TrainConfig(**settings)


def test_a_stopped_run_resumes_to_the_same_weights_as_an_unbroken_one(tmp_path):
    unbroken = R.train_run(tmp_path / "a", small_config(), 6, sample_every=2, checkpoint_every=2)
    assert unbroken == R.RunOutcome(str(tmp_path / "a"), 6, False)
    calls = []

    def stop_after_two(fraction, message=""):
        calls.append((fraction, message))
        return len(calls) < 2  # the page's Stop: False from the progress callback

    stopped = R.train_run(tmp_path / "b", small_config(), 6, sample_every=5, checkpoint_every=5,
                          progress=stop_after_two)
    assert stopped.stopped and stopped.steps == 2
    assert "step 2 of 6" in calls[-1][1] and calls[0][0] == pytest.approx(1 / 6)
    view = R.view_run(tmp_path / "b")
    assert view.checkpoint_steps == 2 and view.logged_steps == 2 and view.sample.name == "step_000002.png"
    with open(tmp_path / "b" / "log.csv", "a") as log:  # a killed run: a row past the checkpoint, half a line
        log.write("3,1,2,3,4,5,6,7\n4,1,2")
    resumed = R.train_run(tmp_path / "b", None, 6, resume=True, sample_every=2, checkpoint_every=2)
    assert resumed.steps == 6 and not resumed.stopped
    a, b = (T.read_checkpoint(tmp_path / x / "checkpoint.pt")["generator"] for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = R.read_log(tmp_path / "a" / "log.csv"), R.read_log(tmp_path / "b" / "log.csv")
    assert list(log_b["step"]) == [1, 2, 3, 4, 5, 6]
    assert np.array_equal(log_a["total"], log_b["total"])
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == [
        "step_000002.png", "step_000004.png", "step_000006.png"]
    probs = R.read_log(tmp_path / "b" / "samples.csv")  # stopped at 2 (sampled twice), resumed: 2, 4, 6 once each
    assert list(probs["step"]) == [2, 4, 6] and set(probs) == {"step", "p_1", "p_3"}
    assert np.array_equal(probs["p_3"], R.read_log(tmp_path / "a" / "samples.csv")["p_3"])
    trainer = T.Trainer(models.load_model(models.TEST_MODEL), small_config())
    trainer.load(tmp_path / "a" / "checkpoint.pt")
    grid = T.sample_grid(trainer)
    column = torch.from_numpy(np.stack([grid[r * 32:(r + 1) * 32, 64:96] for r in range(3)]))  # class 3's column
    x = column.permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(trainer.handle.input_size,) * 2, mode="bilinear", antialias=True)
    with torch.no_grad():
        p3 = trainer.handle.logits(x).softmax(1)[:, 3].mean()
    assert float(p3) == pytest.approx(probs["p_3"][-1], rel=1e-4)


def test_run_errors_are_sentences(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint .* to resume"):
        R.train_run(tmp_path / "none", None, 4, resume=True)
    R.train_run(tmp_path / "r", small_config(), 2)
    with pytest.raises(ConfigError, match="already at step 2"):
        R.train_run(tmp_path / "r", None, 2, resume=True)
    with pytest.raises(CheckpointError, match=r"trained on classes \[1, 3\] at 32 px; the run asks for \[1, 2\]"):
        R.train_run(tmp_path / "r", small_config(classes=(1, 2)), 4, resume=True)
    with pytest.raises(ConfigError, match="power of two"):
        R.train_run(tmp_path / "s", small_config(size=48), 2)
    assert R.safe_run_name("  my run/../x ") == "my-run-..-x"
    with pytest.raises(ConfigError):
        R.safe_run_name("///")


def test_read_log_skips_a_half_written_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,total\n1,2.5\n2,2.0\n3,1.")
    log = R.read_log(path)
    assert list(log["step"]) == [1, 2] and list(log["total"]) == [2.5, 2.0]
    assert R.read_log(tmp_path / "absent.csv") == {}


def _garment_png(colour) -> bytes:
    return images.to_png_bytes(S.draw_substrate("dress", 40, colour).image)


def test_the_users_own_substrates_train_and_bad_ones_are_refused(tmp_path):
    uploads = [(f"g{i}.png", _garment_png((40 * i, 90, 200))) for i in range(4)]
    names = R.save_uploads(tmp_path / "subs", uploads)
    assert names == ["000.png", "001.png", "002.png", "003.png"]
    pool = S.load_substrate_folder(tmp_path / "subs", 32)
    assert len(pool) == 4 and pool[0].image.shape == (32, 32, 3)
    assert pool[0].background[0, 0] and not pool[0].background[16, 16]  # white corner, garment centre
    trainer = T.Trainer(models.load_model(models.TEST_MODEL), small_config(substrates=str(tmp_path / "subs")))
    x, background, _, _ = trainer.batch(0)
    assert x.shape == (2, 3, 32, 32)
    masks = [torch.from_numpy(p.background).float() for p in pool]
    for b in background[:, 0]:  # every drawn substrate is one of the user's, maybe flipped
        assert any(torch.equal(b, m) or torch.equal(b, m.flip(-1)) for m in masks)
    assert set(np.unique(background.numpy())) <= {0.0, 1.0}
    trainer.step()

    with pytest.raises(DatasetError, match="at least 4 substrate images; 2 were uploaded"):
        R.save_uploads(tmp_path / "few", uploads[:2])
    with pytest.raises(DatasetError, match="notes.txt"):
        R.save_uploads(tmp_path / "bad", uploads[:3] + [("notes.txt", b"hello, not a picture")])
    assert not (tmp_path / "bad").exists()  # nothing written when one upload is refused
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.png").write_bytes(uploads[0][1])
    (tmp_path / "mixed" / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match="readme.md in mixed/ is not an image"):
        S.load_substrate_folder(tmp_path / "mixed", 32)
    with pytest.raises(DatasetError, match="at least 4 .* has 1"):
        (tmp_path / "mixed" / "readme.md").unlink()
        S.load_substrate_folder(tmp_path / "mixed", 32)
    with pytest.raises(DatasetError, match="no folder"):
        S.load_substrate_folder(tmp_path / "absent", 32)


def test_the_loss_weights_parse_or_say_what_is_wrong():
    assert parse_weights("3,10,50,150") == L.PatternLossWeights(3, 10, 50, 150)
    assert parse_weights(" 1, 0 ,2.5,-1") == L.PatternLossWeights(1, 0, 2.5, -1)
    for bad in ("3,10,50", "a,b,c,d", ""):
        with pytest.raises(ConfigError, match="four numbers"):
            parse_weights(bad)


def test_a_weighted_substrate_loss_counts_only_where_the_weight_is():
    t = torch.zeros(1, 3, 4, 4)
    g = torch.full((1, 3, 4, 4), 0.5)
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., :2, :] = 1.0
    full = L.substrate_loss(t, g)
    assert L.substrate_loss(t, g, weight=weight) == pytest.approx(float(full) / 2)
    assert L.substrate_loss(t, g, weight=torch.ones(1, 1, 4, 4)) == pytest.approx(float(full))


def test_the_gradcam_mask_matches_gradcam_and_leaves_no_hooks(tiny):
    from engine.saliency import GradCAM

    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    classes = [1, 3, 5, 7]
    weights = T.gradcam_weights(tiny, x, torch.tensor(classes), grayscale=False)
    assert weights.shape == (4, 1, 32, 32) and not weights.requires_grad
    # the tiny net's CAM layer is 32 x 32 for a 32 px input, so no resampling: Grad-CAM itself, max 1
    reference = GradCAM(tiny).cam(T.classifier_view(tiny, x, grayscale=False), classes)
    reference = reference / reference.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert torch.allclose(weights[:, 0], reference, atol=1e-5)
    peaks = weights.amax(dim=(1, 2, 3))
    assert ((peaks - 1).abs() < 1e-5).any() and (((peaks - 1).abs() < 1e-5) | (peaks == 0)).all()
    assert hooks.count_hooks(tiny.model) == 0
    trainer = T.Trainer(tiny, small_config(gradcam_mask=True))
    before = trainer.step()
    assert np.isfinite(before["total"]) and hooks.count_hooks(tiny.model) == 0


def test_the_quality_report_scores_every_class(tiny, tmp_path):
    trainer = T.Trainer(tiny, small_config(class_noise=False))
    trainer.step()
    loaded = G.load_generator(trainer.state())
    assert loaded.class_noise is False  # generation draws f(t) the way training did
    results = Q.evaluate(loaded, tiny, tiny, count=3)
    assert [r.name for r in results] == ["class 1", "class 3"]
    substrates = Q.held_out_substrates(3, 32)
    tiles = torch.zeros(3, 2)
    tiles[:, 1] = 1
    from engine.patterns.networks import tiled_class_input

    with torch.inference_mode():
        made = loaded.generator(substrates, tiled_class_input(tiles, noise=False))
    made = ((made + 1) * 127.5).round() / 255
    x = torch.nn.functional.interpolate(made, size=(tiny.input_size,) * 2, mode="bilinear", antialias=True)
    with torch.inference_mode():
        probs = tiny.logits(x).softmax(1)[:, 3]
        top5 = (tiny.logits(x).topk(5, 1).indices == 3).any(1).float().mean()
        grey = T.grey(x)
        probs_grey = tiny.logits(grey).softmax(1)[:, 3]
        top5_grey = (tiny.logits(grey).topk(5, 1).indices == 3).any(1).float().mean()
    assert results[1].mean_prob == pytest.approx(float(probs.mean()), abs=1e-5)
    assert results[1].mean_prob_grey == pytest.approx(float(probs_grey.mean()), abs=1e-5)
    assert results[1].top5_rate == pytest.approx(float(top5))
    assert results[1].top5_rate_grey == pytest.approx(float(top5_grey))
    table = Q.markdown_table(results, model="tiny", second="tiny", count=3)
    assert table.count("\n") == 5 and "**mean of 2**" in table
    assert f"| {results[1].top5_rate:.0%} | {results[1].top5_rate_grey:.0%} |" in table.splitlines()[3]

"""Issue 15's pattern pieces: the garment quality report against a hand computation, the CLI's
generate / classes / quality verbs, and the training extensions (critic ensemble, EOT view, varied
substrates, warm start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine import images, models
from engine.errors import ConfigError, DatasetError
from engine.patterns import cli, generate, quality, training
from engine.patterns.networks import tiled_class_input
from engine.patterns.substrates import substrate_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return models.load_model(models.TEST_MODEL)


def tiny_generator(tmp_path: Path, tiny, classes=(1, 3)) -> Path:
    """A small untrained generator file (deterministic weights), as the export writes it."""
    trainer = training.Trainer(tiny, training.TrainConfig(classes=classes, model=tiny.name, size=32, batch=1, base=8,
                                                          class_noise=False))  # f(t) the same for one or many
    path = tmp_path / "g.pt"
    trainer.export_generator(path)
    return path


def garments(count: int = 4, size: int = 32) -> np.ndarray:
    """Rectangles of different colours and sizes on white."""
    pictures = np.full((count, size, size, 3), 255, np.uint8)
    for i in range(count):
        pictures[i, 4 + i:size - 6, 6:size - 4 - i] = (40 * i + 20, 200 - 30 * i, 90)
    return pictures


def test_garment_report_matches_a_hand_computation(tmp_path, tiny):
    loaded = generate.load_generator_file(tiny_generator(tmp_path, tiny))
    pictures = garments()
    second = models.load_model(models.TEST_MODEL)
    report = quality.garment_report(loaded, tiny, [second], pictures, [f"g{i}" for i in range(4)])
    background = (pictures >= quality.WHITE).all(axis=3)
    for index, scores in enumerate(report.classes):
        changes_in, changes_out, probs, hits = [], [], [], []
        for picture, bg in zip(pictures, background):
            pattern = generate.generate(loaded, picture, {index: 1.0}, seed=index)  # uint8, what a PNG holds
            change = np.abs(pattern.astype(float) - picture.astype(float)).mean(axis=2) / 255
            changes_in.append(change[~bg].mean())
            changes_out.append(change[bg].mean())
            x = torch.from_numpy(pattern).permute(2, 0, 1)[None].float() / 255
            x = F.interpolate(x, size=(tiny.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
            p = tiny.logits(x).softmax(1)[0].detach().numpy()
            probs.append(p[loaded.class_ids[index]])
            hits.append(loaded.class_ids[index] in np.argsort(-p)[:5])
        assert scores.change_inside == pytest.approx(np.mean(changes_in), abs=1e-6)
        assert scores.change_outside == pytest.approx(np.mean(changes_out), abs=1e-6)
        assert scores.critic_prob == pytest.approx(np.mean(probs), abs=1e-5)
        assert scores.top5[second.name] == pytest.approx(np.mean(hits))
    assert report.mean("change_inside") == pytest.approx(np.mean([c.change_inside for c in report.classes]))
    assert set(report.checks(second.name)) == {"change_inside", "change_outside", "critic_prob", "unseen_top5"}
    table = quality.garment_markdown(report, unseen=second.name)
    assert "mean of 2" in table and "NOT met" in table  # an untrained generator meets no goal


def test_garment_report_checks_are_thresholds():
    def scores(inside, outside, prob, top5):
        return quality.GarmentScores("c", 1, inside, outside, prob, {"net": top5}, 0.0)

    good = quality.GarmentReport("critic", ("a",), (scores(0.12, 0.02, 0.9, 0.5), scores(0.10, 0.03, 0.8, 0.3)))
    assert all(good.checks("net").values())
    bad = quality.GarmentReport("critic", ("a",), (scores(0.12, 0.04, 0.9, 0.5), scores(0.05, 0.01, 0.5, 0.1)))
    assert good.checks("other")["unseen_top5"] is False
    assert bad.checks("net") == {"change_inside": False, "change_outside": True, "critic_prob": False,
                                 "unseen_top5": False}


def test_held_out_garments_are_not_training_shapes():
    names, pictures = quality.load_garments(quality.HELD_OUT_GARMENTS, 128)
    assert len(names) == 20 and pictures.shape == (20, 128, 128, 3)
    shapes = {n.rsplit("-", 1)[0] for n in names}
    from engine.patterns.substrates import GARMENTS

    assert len(shapes) == 10 and not shapes & {g.replace(" ", "-") for g in GARMENTS}
    inside = ~(pictures >= quality.WHITE).all(axis=3)
    assert ((inside.mean(axis=(1, 2)) > 0.1) & (inside.mean(axis=(1, 2)) < 0.7)).all()  # garments on white


def test_load_garments_refuses_a_folder_without_images(tmp_path):
    with pytest.raises(DatasetError):
        quality.load_garments(tmp_path / "nowhere", 32)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError):
        quality.load_garments(tmp_path, 32)


def test_class_weights_parse_names_ids_and_weights(tmp_path, tiny):
    loaded = generate.load_generator_file(tiny_generator(tmp_path, tiny))
    names = loaded.class_names
    assert cli.parse_class_weights(loaded, [names[1], f"{names[0]}:0.5"]) == {1: 1.0, 0: 0.5}
    assert cli.parse_class_weights(loaded, [f"{loaded.class_ids[1]}:0.25"]) == {1: 0.25}
    for bad in (["nothing"], [f"{names[0]}:x"], [f"{names[0]}:0"], [f"{names[0]}:1.5"], [names[0], names[0]], []):
        with pytest.raises(ConfigError):
            cli.parse_class_weights(loaded, bad)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "patterns", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_cli_classes_and_generate(tmp_path, tiny):
    path = tiny_generator(tmp_path, tiny)
    listed = run_cli("classes", "--checkpoint", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    loaded = generate.load_generator_file(path)
    assert json.loads(listed.stdout) == {"classes": [{"id": i, "name": n} for i, n in
                                                     zip(loaded.class_ids, loaded.class_names)]}
    substrate = tmp_path / "garment.png"
    Image.fromarray(garments(1, 64)[0]).save(substrate)  # another size than G's: squared and resized
    out = tmp_path / "out" / "p.png"
    made = run_cli("generate", "--checkpoint", str(path), "--substrate", str(substrate), "--classes",
                   f"{loaded.class_names[0]}:0.5", loaded.class_names[1], "--out", str(out))
    assert made.returncode == 0, made.stderr
    picture = np.asarray(Image.open(out).convert("RGB"))
    from engine.patterns.substrates import substrate_from_picture

    expected = generate.generate(loaded, substrate_from_picture(garments(1, 64)[0], 32).image, {0: 0.5, 1: 1.0})
    assert np.array_equal(picture, expected)
    refused = run_cli("generate", "--checkpoint", str(path), "--substrate", str(substrate), "--classes", "tiger",
                      "--out", str(out))
    assert refused.returncode != 0 and "has no class 'tiger'" in refused.stderr
    missing = run_cli("classes", "--checkpoint", str(tmp_path / "none.pt"))
    assert missing.returncode != 0 and "no generator file" in missing.stderr


def test_cli_quality_report_on_a_folder(tmp_path, tiny):
    path = tiny_generator(tmp_path, tiny)
    folder = tmp_path / "garments"
    folder.mkdir()
    for i, picture in enumerate(garments()):
        Image.fromarray(picture).save(folder / f"g{i}.png")
    done = run_cli("quality", "--checkpoint", str(path), "--garments", str(folder), "--networks", models.TEST_MODEL,
                   "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["classes"]) == 2 and len(report["garments"]) == 4
    assert 0 <= report["mean"]["change_outside"] <= 1 and 0 <= report["mean"]["critic_prob"] <= 1


# -- training extensions -----------------------------------------------------------------------------

def test_eot_view_is_random_differentiable_and_white_at_the_border(tiny):
    pictures = torch.full((2, 3, 32, 32), -0.2, requires_grad=True)  # dark grey squares
    rng = torch.Generator().manual_seed(0)
    views = [training.eot_view(tiny, pictures, rng, grayscale=False, zoom=(0.6, 0.6), shift=0.0) for _ in range(3)]
    for view in views:
        assert view.shape[-1] in {round(tiny.input_size * s) for s in (0.875, 1.0, 1.15)}
        assert torch.allclose(view[..., 0, 0], torch.ones(1))  # zoomed out: the border is white
        assert view.min() >= 0 and view.max() <= 1
    views[0].sum().backward()
    assert pictures.grad is not None and pictures.grad.abs().sum() > 0
    same = training.eot_view(tiny, pictures, torch.Generator().manual_seed(5), grayscale=True)
    again = training.eot_view(tiny, pictures, torch.Generator().manual_seed(5), grayscale=True)
    assert torch.equal(same, again) and torch.allclose(same[:, 0], same[:, 1])  # seeded; grey is grey


def test_critic_ensemble_averages_each_critics_loss(tiny):
    config = training.TrainConfig(classes=(1, 3), model=tiny.name, size=32, batch=1, base=8, critics=("tiny_test_cnn",))
    with pytest.raises(ConfigError):
        config.validate(tiny)  # the training classifier cannot be its own second critic
    with pytest.raises(ConfigError):
        training.TrainConfig(classes=(1, 3), model=tiny.name, size=32, shapes="stars").validate(tiny)
    single = training.Trainer(tiny, training.TrainConfig(classes=(1, 3), model=tiny.name, size=32, batch=1, base=8))
    single.critics = [tiny, tiny]  # two identical critics: the mean equals one critic's loss on the same draws
    x, bg, target, _ = single.batch(0)
    tiles = tiled_class_input(target, noise=False)
    with torch.no_grad():
        output = single.generator(x, tiles)
        two = single.generator_losses(x, bg, target, output, torch.Generator().manual_seed(3))
        single.critics = [tiny]
        rng = torch.Generator().manual_seed(3)
        one = single.generator_losses(x, bg, target, output, rng)
    # the second critic draws its own crops, so compare with the first critic's term alone
    assert torch.isfinite(two["classifier"]) and two["target_prob"] == one["target_prob"]


def test_varied_substrates_are_deterministic_and_on_white():
    first = substrate_batch(6, 64, seed=4, shapes="varied")
    again = substrate_batch(6, 64, seed=4, shapes="varied")
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again))
    for s in first:
        assert (s.image[s.background] == 255).all()  # L_m's background is white
        assert (~s.background).sum() > 0 and (s.image[~s.background] <= 250).all()
    assert {s.garment for s in substrate_batch(40, 64, seed=1, shapes="varied")} == {"garment", "shape"}


def test_warm_start_copies_what_fits(tmp_path, tiny):
    path = tiny_generator(tmp_path, tiny, classes=(1, 3))
    config = training.TrainConfig(classes=(1, 3, 5), model=tiny.name, size=32, batch=1, base=8, init=str(path))
    trainer = training.Trainer(tiny, config)
    saved = training.read_checkpoint(path)["generator"]
    own = trainer.generator.state_dict()
    same = [n for n in own if own[n].shape == saved[n].shape]
    assert same and all(torch.equal(own[n], saved[n]) for n in same)
    grown = [n for n in own if own[n].shape != saved[n].shape]
    assert grown  # the first decoder layer takes one more class tile
    for n in grown:
        old = saved[n]
        assert torch.equal(own[n][tuple(slice(0, k) for k in old.shape)], old)


# -- Fig. 2: the classic GAN ----------------------------------------------------------------------------

def classic_config(tiny, **changes):
    from engine.patterns import classic

    return classic.ClassicConfig(**{"classes": (1, 3), "model": tiny.name, "size": 32, "batch": 1, "base": 8, **changes})


def test_classic_gan_resumes_exactly_and_starts_from_noise(tmp_path, tiny):
    from engine.patterns import classic

    whole = classic.train_classic(tmp_path / "whole", classic_config(tiny), 4, tiny, checkpoint_every=2)
    classic.train_classic(tmp_path / "parts", classic_config(tiny), 2, tiny, checkpoint_every=2)
    resumed = classic.train_classic(tmp_path / "parts", classic_config(tiny), 4, tiny, resume=True, checkpoint_every=2)
    for name, value in whole.generator.state_dict().items():
        assert torch.equal(value, resumed.generator.state_dict()[name]), name
    assert sorted(p.name for p in (tmp_path / "whole" / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert len((tmp_path / "whole" / "log.csv").read_text().splitlines()) == 5
    export = tmp_path / "classic.pt"
    training.write_checkpoint(whole.state(full=False), export)
    network, names, ids, steps = classic.load_classic(export)
    assert (names, ids, steps) == (("class 1", "class 3"), (1, 3), 4)
    one, other = classic.generate_classic(network, 0, 2, seed=1), classic.generate_classic(network, 0, 2, seed=2)
    assert one.shape == (2, 32, 32, 3) and not np.array_equal(one, other)  # the picture comes from the noise
    assert np.array_equal(one, classic.generate_classic(network, 0, 2, seed=1))
    with pytest.raises(Exception, match="holds only a generator"):
        classic.ClassicTrainer(tiny, classic_config(tiny)).load(export)


def test_classic_checkpoints_and_cgan_checkpoints_are_told_apart(tmp_path, tiny):
    from engine.errors import CheckpointError
    from engine.patterns import classic

    with pytest.raises(CheckpointError, match="not a classic-GAN checkpoint"):
        classic.read_classic(tiny_generator(tmp_path, tiny))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        classic.load_classic(tmp_path / "junk.pt")


def test_classic_gan_learns_against_its_discriminator(tiny):
    """A few steps on the tiny model: D's value rises from chance (G's images are easy to tell from garments)."""
    from engine.patterns import classic

    trainer = classic.ClassicTrainer(tiny, classic_config(tiny, batch=2))
    values = [trainer.step()["cgan"] for _ in range(12)]
    assert np.mean(values[-4:]) > np.mean(values[:4])  # D gets better at telling them apart


def test_a_resumed_run_can_continue_with_other_loss_weights(tmp_path, tiny):
    from engine.patterns import runs
    from engine.patterns.losses import PatternLossWeights

    config = training.TrainConfig(classes=(1, 3), model=tiny.name, size=32, batch=1, base=8)
    runs.train_run(tmp_path / "run", config, 2, checkpoint_every=2, sample_every=2)
    later = PatternLossWeights(3, 100, 50, 40)
    runs.train_run(tmp_path / "run", None, 3, resume=True, weights=later, checkpoint_every=1, sample_every=1)
    state = training.read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["steps"] == 3 and training.config_from_state(state).weights == later
    assert json.loads((tmp_path / "run" / "config.json").read_text())["weights"] == later.as_dict()


def test_colour_loss_charges_a_repaint_but_not_a_fine_pattern():
    from engine.patterns import losses

    garment = torch.full((1, 3, 32, 32), 0.2)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float() * 0.6 - 0.3  # zero mean per block
    patterned = garment + checker
    repainted = garment + 0.3
    assert losses.colour_loss(garment, patterned).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.colour_loss(garment, repainted).item() == pytest.approx(0.3, abs=1e-6)
    assert float(losses.substrate_loss(garment, patterned)) == pytest.approx(
        float(losses.substrate_loss(garment, repainted)))  # L_s charges the pattern and the repaint alike
    brute = (garment.view(1, 3, 2, 16, 2, 16).mean((3, 5)) - repainted.view(1, 3, 2, 16, 2, 16).mean((3, 5))).abs().mean()
    assert float(losses.colour_loss(garment, repainted)) == pytest.approx(float(brute), abs=1e-6)


def test_the_colour_term_joins_the_total_only_when_weighted(tiny):
    from engine.patterns.losses import PatternLossWeights

    for colour, logged in ((0.0, False), (5.0, True)):
        trainer = training.Trainer(tiny, training.TrainConfig(classes=(1, 3), model=tiny.name, size=32, batch=1, base=8,
                                                              weights=PatternLossWeights(3, 10, 50, 150, colour)))
        values = trainer.step()
        assert ("colour" in values) is logged

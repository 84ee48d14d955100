"""Pattern-GAN training (issue 7): the classifier loss (the paper's L_VGG) goes down, resume is exact,
DDP with gloo at world size 2."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from engine import models
from engine.errors import CheckpointError, ConfigError
from engine.patterns import losses, training


def small_config(**changes) -> training.TrainConfig:
    settings = dict(classes=(1, 3), model=models.TEST_MODEL, size=32, batch=2, base=8, seed=0)
    settings.update(changes)
    return training.TrainConfig(**settings)


def test_the_classifier_loss_goes_down_on_a_fixed_batch(lite0):
    # The classifier term alone, so the test sees G learn from the frozen classifier (with the paper's
    # weights the substrate term, x150, dominates the first steps).
    weights = losses.PatternLossWeights(cgan=0.0, mask=0.0, classifier=50.0, substrate=0.0)
    config = small_config(model="efficientnet_lite0", classes=(1, 340), size=64, batch=1, lr=2e-3, weights=weights)
    trainer = training.Trainer(lite0, config)
    fixed = trainer.batch(0)
    trainer.batch = lambda step: (fixed[0], fixed[1], fixed[2], torch.Generator().manual_seed(7))
    history = [trainer.step()["classifier"] for _ in range(25)]
    assert np.mean(history[-5:]) < 0.8 * np.mean(history[:5]), history


def test_saving_and_resuming_gives_an_identical_next_step(tiny, tmp_path):
    first = training.Trainer(tiny, small_config())
    for _ in range(3):
        first.step()
    first.save(tmp_path / "ck.pt")
    expected = first.step()
    second = training.Trainer(tiny, small_config())
    second.load(tmp_path / "ck.pt")
    assert second.steps_done == 3
    assert second.step() == expected
    second.export_generator(tmp_path / "g.pt")
    small, full = (tmp_path / "g.pt").stat().st_size, (tmp_path / "ck.pt").stat().st_size
    assert small < full / 3
    from engine.patterns import generate

    loaded = generate.load_generator(training.read_checkpoint(tmp_path / "g.pt"))
    assert loaded.steps == 4 and loaded.class_names == ("class 1", "class 3")
    with pytest.raises(CheckpointError, match="holds only a generator"):
        second.load(tmp_path / "g.pt")
    grid = training.sample_grid(second, substrates=2)
    assert grid.shape == (2 * 32, 3 * 32, 3) and grid.dtype == np.uint8


def test_bad_checkpoints_and_settings_are_sentences(tiny, tmp_path):
    trainer = training.Trainer(tiny, small_config())
    trainer.save(tmp_path / "ck.pt")
    other = training.Trainer(tiny, small_config(classes=(1, 2)))
    with pytest.raises(CheckpointError, match="trained on classes"):
        other.load(tmp_path / "ck.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a pattern-generator checkpoint"):
        trainer.load(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="There is no checkpoint"):
        trainer.load(tmp_path / "absent.pt")
    with pytest.raises(ConfigError, match="classes 0 to 9"):
        training.Trainer(tiny, small_config(classes=(1, 42)))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ["GLASSBOX_DEVICE"] = "cpu"
    os.environ["GLASSBOX_TEST_MODELS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        handle = models.load_model(models.TEST_MODEL)
        trainer = training.Trainer(handle, small_config(), distributed=True)
        losses = [trainer.step() for _ in range(2)]
        flat = torch.cat([p.detach().flatten() for p in trainer.generator.parameters()])
        torch.save({"params": flat, "losses": losses}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_with_gloo_at_world_size_2(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # the averaged gradients kept them in step
    assert ranks[0]["losses"][0]["classifier"] != ranks[1]["losses"][0]["classifier"]  # each rank drew its own batch

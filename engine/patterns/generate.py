"""Generation from a trained generator: a substrate plus one to three mixed classes -> a pattern."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from .networks import Generator, tiled_class_input


SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "patterns" / "five-classes.pt"


@dataclass
class LoadedGenerator:
    """A generator rebuilt from a training checkpoint, with its class names and size."""

    generator: Generator
    class_names: tuple[str, ...]
    class_ids: tuple[int, ...]
    size: int
    steps: int
    model: str
    class_noise: bool = True  # how f(t) was drawn in training (generation draws it the same way)
    grayscale: bool = False  # whether the classifier saw grey images in training


def load_generator(state: dict) -> LoadedGenerator:
    """From :func:`engine.patterns.training.read_checkpoint`'s dict."""
    config = state["config"]
    try:
        generator = Generator(len(config["classes"]), size=int(config["size"]), base=int(config.get("base", 32)))
        generator.load_state_dict(state["generator"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise CheckpointError(f"The checkpoint's generator does not match its own settings ({type(error).__name__}).") from None
    return LoadedGenerator(generator.eval(), tuple(state["class_names"]), tuple(config["classes"]),
                           int(config["size"]), int(state["steps"]), str(config.get("model", "")),
                           bool(config.get("class_noise", True)), bool(config.get("grayscale", False)))


def load_generator_file(path: Path) -> LoadedGenerator:
    """A checkpoint or an exported generator file, read without running pickled code."""
    from .training import read_checkpoint

    return load_generator(read_checkpoint(Path(path)))


def check_classifier(loaded: LoadedGenerator, handle) -> str | None:
    """A sentence when the generator was trained against another classifier than ``handle``."""
    if loaded.model and loaded.model != handle.name:
        return (f"This generator was trained against {loaded.model}; the probabilities below are {handle.name}'s, "
                "a second opinion rather than its critic's.")
    return None


def generate(loaded: LoadedGenerator, substrate: np.ndarray, weights: dict[int, float], *, seed: int = 0) -> np.ndarray:
    """G(substrate, f(t)) with the classes at ``weights`` (index in the checkpoint's class list -> weight)."""
    if not 1 <= len([w for w in weights.values() if w > 0]) <= 3:
        raise ConfigError("Mix one to three classes, each with a weight above 0.")
    if substrate.shape[:2] != (loaded.size, loaded.size):
        raise ConfigError(f"The generator makes {loaded.size} px images; the substrate is {substrate.shape[1]} x {substrate.shape[0]}.")
    active = torch.zeros(1, len(loaded.class_names))
    for index, weight in weights.items():
        active[0, index] = float(weight)
    tiles = tiled_class_input(active, generator=torch.Generator().manual_seed(seed), noise=loaded.class_noise)
    x = torch.from_numpy(np.ascontiguousarray(substrate)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        y = loaded.generator(x, tiles)[0]
    return ((y.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()

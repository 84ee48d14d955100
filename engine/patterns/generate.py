"""Generation from a trained generator: a substrate plus one to three mixed classes -> a pattern.

What the Patterns page shows for one substrate (the mix, what G changed and every class side by
side, :func:`generate_all`) and how the classifier reads a pattern (:func:`classify_pattern`) are
here, so the page only draws them (through the caches of :mod:`engine.cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import images
from ..errors import CheckpointError, ConfigError
from ..models import ModelHandle, Prediction
from .networks import Generator, tiled_class_input


SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "patterns" / "six-classes.pt"


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
    critics: tuple[str, ...] = ()  # more classifiers it was trained against (an ensemble), beside ``model``


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
                           bool(config.get("class_noise", True)), bool(config.get("grayscale", False)),
                           tuple(config.get("critics", ())))


def load_generator_file(path: Path) -> LoadedGenerator:
    """A checkpoint or an exported generator file, read without running pickled code."""
    from .training import read_checkpoint

    return load_generator(read_checkpoint(Path(path)))


def load_generator_bytes(data: bytes, name: str) -> LoadedGenerator:
    """An uploaded checkpoint or exported generator (``name``: the file's name, for sentences)."""
    from .training import read_checkpoint_bytes

    return load_generator(read_checkpoint_bytes(data, Path(name).name or "checkpoint.pt"))


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
    x = images.to_tensor(substrate, value_range=images.SIGNED)
    with torch.inference_mode():
        y = loaded.generator(x, tiles)[0]
    return images.to_uint8(y, value_range=images.SIGNED)


@dataclass(frozen=True)
class GeneratedPatterns:
    """One substrate through a generator: the mix, what G changed, and each class alone (uint8 H x W x 3)."""

    pattern: np.ndarray
    change: np.ndarray  # 128 + 3 x (pattern - substrate): grey where G changed nothing
    per_class: tuple[np.ndarray, ...]  # in the generator's class order, each at weight 1


def change_picture(pattern: np.ndarray, substrate: np.ndarray, *, gain: int = 3) -> np.ndarray:
    """What G changed, amplified ``gain`` times around mid-grey."""
    return images.difference_image(pattern, substrate, gain=gain)


def generate_all(loaded: LoadedGenerator, substrate: np.ndarray, weights: dict[int, float], *,
                 seed: int = 0) -> GeneratedPatterns:
    """:func:`generate` for the mix and for every class alone: the N + 1 passes the page shows."""
    pattern = generate(loaded, substrate, weights, seed=seed)
    per_class = tuple(generate(loaded, substrate, {index: 1.0}, seed=seed) for index in range(len(loaded.class_names)))
    return GeneratedPatterns(pattern, change_picture(pattern, substrate), per_class)


def classify_pattern(handle: ModelHandle, picture: np.ndarray, *, grayscale: bool = False,
                     top_k: int = 5) -> Prediction:
    """The classifier's top classes on a pattern (uint8 H x W x 3), squared to its input size; in grey
    (ITU-R 601 luma, as training showed it) when ``grayscale``."""
    from .training import grey

    x = images.to_tensor(images.fit_square(picture, handle.input_size), device=handle.device)
    return handle.classify(grey(x) if grayscale else x, top_k=top_k)

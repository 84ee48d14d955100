"""Presets: the paper's rows (sec. 3), on the photos this app ships."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models import ModelHandle
from .config import InversionConfig, LossWeights
from .masks import shape_mask


@dataclass(frozen=True)
class Preset:
    """One row of the paper's results figure as a one-click setting."""

    name: str
    label: str
    image: str
    target: int
    paper_weights: tuple[float, float, float, float]  # (content, style, TV, colour) as printed in the paper
    mask: str | None = None  # "face" | "body" | None
    jitter: int = 0
    optimizer: str = "lbfgs"
    steps: int = 40
    note: str = ""

    def config(self, handle: ModelHandle | None = None, **changes) -> InversionConfig:
        std = handle.spec.std if handle is not None else (0.5, 0.5, 0.5)
        settings = dict(weights=LossWeights.from_paper(*self.paper_weights, std=std), optimizer=self.optimizer,
                        steps=self.steps, jitter=self.jitter)
        settings.update(changes)
        return InversionConfig(**settings)


# Chelsea's face and body as fractions of the square model view (looked up on the 224 px view).
CHELSEA_MASKS = {"face": ("ellipse", (0.28, 0.18, 0.78, 0.80)), "body": ("rectangle", (0.0, 0.35, 1.0, 1.0))}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("tiger-face", "Tiger [face-masked] (1e-10, 1e-7, 1e-9, 1e-8)", "chelsea", 292, (1e-10, 1e-7, 1e-9, 1e-8),
           mask="face", note="The cat photo's tiger row: only the face may change."),
    Preset("tiger-face-plain", "Tiger [face-masked] (0, 0, 0, 0)", "chelsea", 292, (0, 0, 0, 0), mask="face",
           note="The same mask with the classification loss alone: noisier."),
    Preset("hyena", "Hyena [unmasked] (0, 1e-9, 5e-6, 1e-8)", "chelsea", 276, (0, 1e-9, 5e-6, 1e-8)),
    Preset("hyena-body", "Hyena [body-masked] (0, 1e-10, 1e-7, 1e-6)", "chelsea", 276, (0, 1e-10, 1e-7, 1e-6),
           mask="body"),
    Preset("tabby", "Tabby cat (0, 0, 0, 1e-6)", "chelsea", 281, (0, 0, 0, 1e-6),
           note="The paper's dog photo is not shipped; its rows run on the cat photo."),
    Preset("brown-bear", "Brown bear (-6e-11, 1e-13, 1e-7, 1e-6)", "chelsea", 294, (-6e-11, 1e-13, 1e-7, 1e-6),
           note="A negative content weight pushes the features away from the original."),
    Preset("dalmatian", "Dalmatian (0, 1e-11, 1e-6, 0)", "chelsea", 251, (0, 1e-11, 1e-6, 0)),
    Preset("tiger-jitter", "Tiger [jittered] (1e-10, 0, -1e-12, 1e-11)", "chelsea", 292, (1e-10, 0, -1e-12, 1e-11),
           jitter=16, optimizer="adam", steps=60, note="Jitter needs Adam or gradient descent (sec. 4)."),
    Preset("tiger-body-jitter", "Tiger [body-masked, jittered] (1e-10, -1e-12, 0, 1e-11)", "chelsea", 292,
           (1e-10, -1e-12, 0, 1e-11), mask="body", jitter=16, optimizer="adam", steps=60),
)}


def preset_mask(preset: Preset, size: int) -> np.ndarray | None:
    if preset.mask is None:
        return None
    shape, box = CHELSEA_MASKS[preset.mask]
    return shape_mask(shape, size, box)

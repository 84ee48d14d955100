"""Presets: every row of the paper's results figure (sec. 3), in its order, on the photos this app ships.

The paper's first column starts from a dog photo. No photo of a dog under a free licence ships
with this app or with the packages it installs (scikit-image, scikit-learn and matplotlib ship a
cat, a coffee cup, an astronaut, a rocket, a motorcycle, a temple, a flower, Grace Hopper and
textures), so the dog's rows run on the cat photo, the nearest subject: each says so in its note.
The weights are the paper's as printed; where a row needed more steps than the default 40 on the
bundled model, its note says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models import ModelHandle
from ..progress import Progress
from .config import InversionConfig, LossWeights
from .experiments import invert
from .holes import fill_hole
from .loop import InversionResult
from .masks import shape_mask

TABBY, BROWN_BEAR, DALMATIAN, HYENA, TIGER, BANDED_GECKO = 281, 294, 251, 276, 292, 38

ON_THE_CAT = ("The paper's photo for this row is a dog; no dog photo under a free licence ships with this app, "
              "so it runs on the cat photo (chelsea).")
HOLE_WEIGHTS = (0.0, 0.0, 1e-7, 0.0)
HOLE_NOTE = ("The paper shows the picture only: no hole, weights or steps are printed. Here the cat's face is "
             "erased (filled smoothly from its surroundings) and refilled under a light TV weight (0, 0, 1e-7, 0).")


@dataclass(frozen=True)
class Preset:
    """One row of the paper's results figure as a one-click setting.

    ``paper_weights`` are (content, style, TV, colour) as printed (the paper's Caffe units). A
    hole-filling row (``hole``) erases ``mask`` with ``fill`` and refills it (:func:`~.holes.fill_hole`);
    the other rows change the image inside ``mask`` (or everywhere) with :func:`~.experiments.invert`.
    Every preset uses Gatys' feature MSE as the content loss, as the paper's code did.
    """

    name: str
    label: str
    image: str
    target: int
    paper_weights: tuple[float, float, float, float]
    mask: str | None = None  # "face" | "body" | None
    jitter: int = 0
    optimizer: str = "lbfgs"
    steps: int = 40
    note: str = ""
    group: str = "cat"  # a key of PRESET_GROUPS
    hole: bool = False
    fill: str = "smooth"
    content_loss: str = "mse"

    @property
    def mode(self) -> str:
        """The page's mode for this row: "hole" (hole-filling) or "class"."""
        return "hole" if self.hole else "class"

    def config(self, handle: ModelHandle | None = None, **changes) -> InversionConfig:
        std = handle.spec.std if handle is not None else (0.5, 0.5, 0.5)
        settings = dict(weights=LossWeights.from_paper(*self.paper_weights, std=std, content_loss=self.content_loss),
                        optimizer=self.optimizer, steps=self.steps, jitter=self.jitter,
                        content_loss=self.content_loss)
        settings.update(changes)
        return InversionConfig(**settings)


# Chelsea's face and body as fractions of the square model view (looked up on the 224 px view).
CHELSEA_MASKS = {"face": ("ellipse", (0.28, 0.18, 0.78, 0.80)), "body": ("rectangle", (0.0, 0.35, 1.0, 1.0))}

PRESET_GROUPS = {
    "dog": "The dog photo's rows (run on the cat photo: no dog photo ships)",
    "cat": "The cat photo's rows",
    "holes": "Hole-filling",
    "jitter": "Jittered (gradient descent, as the paper had to: sec. 4)",
}

JITTER = dict(jitter=16, optimizer="gd", steps=60, group="jitter")

PRESETS: dict[str, Preset] = {p.name: p for p in (
    # The dog photo's column.
    Preset("tabby-plain", "Tabby cat (0, 0, 0, 0)", "chelsea", TABBY, (0, 0, 0, 0), group="dog",
           note=ON_THE_CAT + " The classification loss alone."),
    Preset("tabby", "Tabby cat (0, 0, 0, 1e-6)", "chelsea", TABBY, (0, 0, 0, 1e-6), group="dog", note=ON_THE_CAT),
    Preset("tabby-content", "Tabby cat (1e-14, 0, 0, 0)", "chelsea", TABBY, (1e-14, 0, 0, 0), group="dog",
           note=ON_THE_CAT),
    Preset("brown-bear-3", "Brown bear (-1e-11, 0, 1e-6)", "chelsea", BROWN_BEAR, (-1e-11, 0, 1e-6, 0), group="dog",
           note=ON_THE_CAT + " The paper prints three numbers for this row; they are read as content, style and "
                             "TV, with colour 0."),
    Preset("brown-bear", "Brown bear (-6e-11, 1e-13, 1e-7, 1e-6)", "chelsea", BROWN_BEAR, (-6e-11, 1e-13, 1e-7, 1e-6),
           group="dog", note=ON_THE_CAT + " A negative content weight pushes the features away from the original."),
    Preset("dalmatian", "Dalmatian (0, 1e-11, 1e-6, 0)", "chelsea", DALMATIAN, (0, 1e-11, 1e-6, 0), group="dog",
           note=ON_THE_CAT),
    # The cat photo's column.
    Preset("hyena", "Hyena [unmasked] (0, 1e-9, 5e-6, 1e-8)", "chelsea", HYENA, (0, 1e-9, 5e-6, 1e-8)),
    Preset("hyena-body", "Hyena [body-masked] (0, 1e-10, 1e-7, 1e-6)", "chelsea", HYENA, (0, 1e-10, 1e-7, 1e-6),
           mask="body"),
    Preset("tiger-face-plain", "Tiger [face-masked] (0, 0, 0, 0)", "chelsea", TIGER, (0, 0, 0, 0), mask="face",
           note="The face mask with the classification loss alone: noisier."),
    Preset("tiger-face", "Tiger [face-masked] (1e-10, 1e-7, 1e-9, 1e-8)", "chelsea", TIGER, (1e-10, 1e-7, 1e-9, 1e-8),
           mask="face", note="The cat photo's tiger row: only the face may change."),
    # Hole-filling.
    Preset("hole-tiger", "Hole-filling with tiger label", "chelsea", TIGER, HOLE_WEIGHTS, mask="face", hole=True,
           group="holes", note=HOLE_NOTE),
    Preset("hole-bear", "Hole-filling with bear label", "chelsea", BROWN_BEAR, HOLE_WEIGHTS, mask="face", hole=True,
           group="holes", note=HOLE_NOTE + " The paper's \"bear\" is read as ImageNet's brown bear."),
    Preset("hole-gecko", "Hole-filling with gecko label", "chelsea", BANDED_GECKO, HOLE_WEIGHTS, mask="face",
           hole=True, group="holes",
           note=HOLE_NOTE + " ImageNet's only gecko is the banded gecko."),
    # Jittered: gradient descent, 16 px.
    Preset("brown-bear-jitter", "Brown bear [jittered] (0, 1e-11, 0, 0)", "chelsea", BROWN_BEAR, (0, 1e-11, 0, 0),
           note="The paper does not say which photo this row starts from; it runs on the cat photo.", **JITTER),
    Preset("tabby-jitter", "Tabby cat [jittered] (0, 0, 0, 0)", "chelsea", TABBY, (0, 0, 0, 0),
           note="A tabby is a change for the paper's dog photo; no dog photo ships, so it runs on the cat photo, "
                "which the model already calls a tabby with p = 0.17 (third).", **JITTER),
    Preset("tiger-jitter", "Tiger [jittered] (1e-10, 0, -1e-12, 1e-11)", "chelsea", TIGER, (1e-10, 0, -1e-12, 1e-11),
           **JITTER),
    Preset("tiger-body-jitter", "Tiger [body-masked, jittered] (1e-10, -1e-12, 0, 1e-11)", "chelsea", TIGER,
           (1e-10, -1e-12, 0, 1e-11), mask="body", **JITTER),
)}


def preset_mask(preset: Preset, size: int) -> np.ndarray | None:
    """The preset's mask (its hole, for a hole-filling row) at ``size`` x ``size``; None without one."""
    if preset.mask is None:
        return None
    shape, box = CHELSEA_MASKS[preset.mask]
    return shape_mask(shape, size, box)


def run_preset(handle: ModelHandle, preset: Preset | str, x: torch.Tensor | None = None, *,
               progress: Progress | None = None, observer=None, **changes) -> InversionResult:
    """Run one row as the page runs it: its photo (or ``x``), mask or hole, and config (``changes`` on top)."""
    from .. import classify, images

    preset = PRESETS[preset] if isinstance(preset, str) else preset
    if x is None:
        x = classify.image_tensor(handle, images.load_sample(preset.image))
    config, mask = preset.config(handle, **changes), preset_mask(preset, handle.input_size)
    if preset.hole:
        return fill_hole(handle, x, preset.target, config, hole=mask, fill=preset.fill, progress=progress,
                         observer=observer)
    return invert(handle, x, preset.target, config, mask=mask, progress=progress, observer=observer)

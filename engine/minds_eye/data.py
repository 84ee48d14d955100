"""The data of §3.1: three rendered 3D objects alpha-blended over natural grey backgrounds, and None.

Every sample is a pure function of ``(split, seed, index)``: class ``index % 4`` (so each class has
exactly a quarter of any run of indices), three Euler angles uniform in [−0.5, 0.5] rad, and a
background cut from a real photo (random position, scale and mirror). The test split draws its
backgrounds from photos the training split never sees, as the paper took them from ImageNet's
validation set. Images are 64×64, 8-bit grey (stored as floats in [0, 1] on multiples of 1/255),
because the attack of §3.2 moves one grey level per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..images import quantize
from . import render

CLASSES = (*render.OBJECTS, "none")
NONE = len(render.OBJECTS)  # the paper's negative class is the 4th output of the direct nets
SIZE = render.SIZE
SPLITS = ("train", "test")
PHOTO_SIDE = 256
# Disjoint photo pools (scikit-image's bundled photos): no test background is ever seen in training.
TRAIN_PHOTOS = ("astronaut.png", "camera.png", "coffee.png", "coins.png", "grass.png", "brick.png",
                "moon.png", "motorcycle_left.png", "rocket.jpg", "ihc.png", "page.png", "cell.png",
                "clock_motion.png")
TEST_PHOTOS = ("chelsea.png", "gravel.png", "hubble_deep_field.jpg", "retina.jpg", "text.png",
               "microaneurysms.png")
MIN_CROP = 0.25  # a background is a crop of 64..256 px of the 256-px photo, resized to 64


@dataclass(frozen=True)
class Batch:
    """Samples of the data set. Tensors on CPU; angles and the object planes are 0 for None."""

    image: torch.Tensor     # (B, 1, 64, 64) in [0, 1], 8-bit levels: the query image
    label: torch.Tensor     # (B,) long, 0..2 an object (render.OBJECTS), 3 None
    angles: torch.Tensor    # (B, 3) radians, Euler XYZ
    grey: torch.Tensor      # (B, 1, 64, 64) the object's shading, as the renderer gave it
    alpha: torch.Tensor     # (B, 1, 64, 64) its coverage (0 everywhere for None)
    background: torch.Tensor  # (B, 1, 64, 64) the background alone

    @property
    def positive(self) -> torch.Tensor:
        return self.label != NONE


def photo_names(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    return TRAIN_PHOTOS if split == "train" else TEST_PHOTOS


def photo_folder() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photo(name: str, side: int = PHOTO_SIDE) -> torch.Tensor:
    """One bundled photo in grey, its shorter side resized to ``side`` and centre-cropped: (1, side, side)."""
    from PIL import Image

    with Image.open(photo_folder() / name) as opened:
        grey = opened.convert("L")
    scale = side / min(grey.size)
    grey = grey.resize((max(side, round(grey.width * scale)), max(side, round(grey.height * scale))),
                       Image.BILINEAR)
    left, top = (grey.width - side) // 2, (grey.height - side) // 2
    grey = grey.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)[None]


@lru_cache(maxsize=4)
def photos(split: str) -> torch.Tensor:
    """The split's background photos, (P, 1, 256, 256)."""
    return torch.stack([load_photo(name) for name in photo_names(split)])


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def sample_parameters(split: str, indices, seed: int = 0) -> dict[str, np.ndarray]:
    """The random draws behind each sample; each a function of (seed, split, index) only."""
    rows = []
    for index in indices:
        rng = _rng(seed, split, index)
        angles = rng.uniform(-render.ANGLE_LIMIT, render.ANGLE_LIMIT, 3)
        photo = rng.integers(len(photo_names(split)))
        crop = rng.uniform(MIN_CROP, 1.0)
        centre = rng.uniform(-1.0 + crop, 1.0 - crop, 2)
        flip = rng.random() < 0.5
        rows.append((index % len(CLASSES), *angles, photo, crop, *centre, flip))
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 9)
    return {"label": table[:, 0].astype(np.int64), "angles": table[:, 1:4].astype(np.float32),
            "photo": table[:, 4].astype(np.int64), "crop": table[:, 5], "centre": table[:, 6:8],
            "flip": table[:, 8] > 0.5}


def backgrounds(split: str, photo: np.ndarray, crop: np.ndarray, centre: np.ndarray,
                flip: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """Crops of the split's photos resized to ``size``, in one batched ``grid_sample``."""
    pool = photos(split)
    theta = torch.zeros(len(photo), 2, 3)
    scale = torch.as_tensor(crop, dtype=torch.float32)
    theta[:, 0, 0] = torch.where(torch.as_tensor(flip), -scale, scale)
    theta[:, 1, 1] = scale
    theta[:, :, 2] = torch.as_tensor(centre, dtype=torch.float32)
    # Antialias by averaging a 2x grid: a 256-px crop shrunk to 64 px would alias otherwise.
    fine = F.affine_grid(theta, (len(photo), 1, 2 * size, 2 * size), align_corners=False)
    sampled = F.grid_sample(pool[torch.as_tensor(photo)], fine, mode="bilinear", align_corners=False)
    return F.avg_pool2d(sampled, 2)


def compose(grey: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Alpha-composite the object over the background ("over" operator), then 8-bit quantise."""
    return quantize(alpha * grey + (1 - alpha) * background)


def make_batch(split: str, indices, seed: int = 0) -> Batch:
    """The samples ``indices`` of ``split``: identical whenever asked again with the same seed."""
    indices = [int(i) for i in indices]
    if any(i < 0 for i in indices):
        raise ConfigError("Sample indices start at 0.")
    p = sample_parameters(split, indices, seed)
    label = torch.as_tensor(p["label"])
    angles = torch.as_tensor(p["angles"])
    positive = label != NONE
    angles = torch.where(positive[:, None], angles, torch.zeros_like(angles))
    grey = torch.zeros(len(indices), 1, SIZE, SIZE)
    alpha = torch.zeros(len(indices), 1, SIZE, SIZE)
    if positive.any():
        g, a = render.render(label[positive], angles[positive])
        grey[positive], alpha[positive] = g, a
    background = backgrounds(split, p["photo"], p["crop"], p["centre"], p["flip"])
    return Batch(compose(grey, alpha, background), label, angles, grey, alpha, background)


def background_only(split: str, index: int, seed: int = 0) -> torch.Tensor:
    """The background of one sample, (1, 1, 64, 64), for the explorer's own compositions."""
    p = sample_parameters(split, [index], seed)
    return backgrounds(split, p["photo"], p["crop"], p["centre"], p["flip"])


def class_planes(classes: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """The estimator's class input (Fig. 3): one constant binary plane per object, (B, 3, size, size)."""
    onehot = F.one_hot(classes.long(), len(render.OBJECTS)).float()
    return onehot[:, :, None, None].expand(-1, -1, size, size)

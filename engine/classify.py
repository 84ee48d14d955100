"""Classification of one decoded image: the first thing every page shows, and the CLI's verb."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .images import fit_square, to_tensor
from .models import ModelHandle, Prediction


def model_view(handle: ModelHandle, image: Image.Image) -> np.ndarray:
    """The square crop the model actually sees (uint8, input_size x input_size x 3)."""
    return fit_square(image, handle.input_size)


def image_tensor(handle: ModelHandle, image: Image.Image) -> torch.Tensor:
    """(1, 3, S, S) float tensor in [0, 1] on the handle's device."""
    return to_tensor(model_view(handle, image), device=handle.device)


def classify_image(handle: ModelHandle, image: Image.Image, *, top_k: int = 5) -> Prediction:
    return handle.classify(image_tensor(handle, image), top_k=top_k)

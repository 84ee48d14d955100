"""The two experiments as one call each: class inversion (Anosheh et al.) and feature inversion
(Mahendran & Vedaldi). Each builds its objective and transforms, then runs :func:`.loop.optimise`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..errors import ConfigError
from ..images import to_uint8
from ..models import ModelHandle
from ..progress import Progress
from .config import FeatureInversionConfig, InversionConfig, check_content_loss
from .loop import InversionResult, LoopConfig, check_optimizer, optimise, start_image
from .objective import class_objective, default_layers, feature_objective
from .transforms import Jitter, Transform


def invert(handle: ModelHandle, x: torch.Tensor, target: int | str, config: InversionConfig = InversionConfig(), *,
           mask: np.ndarray | None = None, progress: Progress | None = None, observer=None) -> InversionResult:
    """Sec. 2: optimise the image so the model calls it ``target``, under the weighted constraints.

    ``mask`` (sec. 2.3) is the area that may change; ``observer.append(dict)`` receives each step's
    record; ``progress(fraction, message)`` returning False cancels.
    """
    check_image(x, handle)
    target = handle.class_index(target)
    original = start_image(x.to(handle.device, torch.float32), config.start, config.seed)
    result = class_run(handle, original, target, config, mask=mask,
                       refuse_top1=config.require_change and config.start == "image", progress=progress,
                       observer=observer)
    return replace(result, config=config.as_dict())


def class_run(handle: ModelHandle, original: torch.Tensor, target: int, config: InversionConfig, *,
              mask: np.ndarray | None, refuse_top1: bool, progress: Progress | None = None,
              observer=None) -> InversionResult:
    """The loop of class inversion from ``original`` (the image the losses refer to and the run starts
    from): its objective (sec. 2.2), its jitter, its mask. Shared by :func:`invert` and hole-filling."""
    check_optimizer(config.optimizer)
    check_content_loss(config.content_loss)
    if config.jitter and config.optimizer == "lbfgs":
        raise ConfigError("L-BFGS cannot take jitter (the paper found the same, sec. 4): its line search needs "
                          "the same function at every try. Use Adam or gradient descent with jitter.")
    loop = LoopConfig(optimizer=config.optimizer, lr=config.learning_rate(), steps=config.steps,
                      snapshots=config.snapshots, divergence=config.divergence, refuse_top1=refuse_top1)
    transforms = jitter_transforms(config.jitter, config.seed)
    content_default, style_default = default_layers(handle)
    objective = class_objective(
        handle, original, target, config.weights,
        content_layer=config.content_layer or content_default,
        style_layers=config.style_layers if config.style_layers is not None else style_default,
        colour_threshold=config.colour_threshold, content_loss=config.content_loss)
    return optimise(handle, original, objective, loop, transforms=transforms, mask=mask, progress=progress,
                    observer=observer)


def invert_features(handle: ModelHandle, x: torch.Tensor, config: FeatureInversionConfig = FeatureInversionConfig(), *,
                    progress: Progress | None = None, observer=None) -> InversionResult:
    """Mahendran & Vedaldi: an image whose features at ``config.layer`` match the photo's, from noise.

    The result's "before" is the photo (not the starting noise), and its original class the photo's.
    """
    check_image(x, handle)
    layer = config.layer or default_layers(handle)[0]
    if layer is None:
        raise ConfigError("This model has no spatial layer to invert.")
    handle.layer(layer)  # a sentence for an unknown layer
    loop = LoopConfig(optimizer="adam", lr=config.lr, steps=config.steps, snapshots=config.snapshots)
    transforms = jitter_transforms(config.jitter, config.seed)
    photo = x.to(handle.device, torch.float32)
    objective = feature_objective(handle, photo, layer, alpha_weight=config.alpha_weight, tv_weight=config.tv_weight)
    result = optimise(handle, start_image(photo, "noise", config.seed), objective, loop, transforms=transforms,
                      progress=progress, observer=observer)
    with torch.no_grad():
        photo_class = int(handle.logits(photo).argmax())
    return replace(result, original=to_uint8(photo), original_class=photo_class,
                   forward_passes=result.forward_passes + 1, config=config.as_dict())


def jitter_transforms(limit: int, seed: int) -> tuple[Transform, ...]:
    """Sec. 2.3: jitter by up to ``limit`` px as the run's only transform (none for 0)."""
    return (Jitter(limit, seed=seed),) if limit else ()


def check_image(x: torch.Tensor, handle: ModelHandle) -> None:
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ConfigError("Inversion works on one RGB image at a time, shape (1, 3, H, W).")
    if x.shape[2] != handle.input_size or x.shape[3] != handle.input_size:
        raise ConfigError(f"The image must be the model's {handle.input_size} x {handle.input_size} view.")

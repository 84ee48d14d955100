"""Hole-filling (the paper's results: "Hole-filling with tiger / bear / gecko label").

A hole is cut out of the photo and refilled by the same optimisation as class inversion (sec. 2),
with the hole as the mask of sec. 2.3: only the hole may change, so the class has to show through
it. Wei et al. [5], whom the paper cites, fill a masked hole with one instance of another class; here
the network's general idea of the class fills it, as the paper does.

The paper prints no more than the three pictures, so the choices are this app's:

* the hole is erased before the run (else the optimisation would start from the very face it is
  meant to replace): ``smooth`` spreads the colours around the hole into it (a normalised Gaussian
  blur of the pixels outside only, so nothing of the hole's content leaks in), ``grey`` is mid-grey,
  ``noise`` is seeded noise around grey (sec. 6's start);
* the content, style and colour terms refer to the erased photo, the image the run starts from
  (as they refer to the noise when a run starts from noise);
* pixels outside the hole are the photo's, bit for bit: the loop masks the gradient, and the result
  is composed from the photo's pixels outside the hole and the run's inside, so no optimiser's
  rounding can leak out.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..images import to_uint8
from ..models import ModelHandle
from ..progress import Progress
from .config import InversionConfig
from .experiments import check_image, class_run
from .loop import InversionResult
from .masks import validate_mask

FILLS = {"smooth": "the colours around it, blurred in", "grey": "mid-grey", "noise": "noise around grey"}
SMOOTH_SIGMAS = (48.0, 24.0, 12.0, 6.0, 3.0)  # coarse to fine: the finest with enough support wins
SUPPORT = 0.15  # the share of a Gaussian's weight that must fall on known pixels for its estimate to count


def hole_mask(hole: np.ndarray | None, size: int) -> np.ndarray:
    """The hole as a size x size float32 mask of 0 and 1 (values above 0.5 are in the hole), or a
    sentence saying why it cannot be filled."""
    if hole is None:
        raise ConfigError("Hole-filling needs a hole: choose or paint the area to erase and fill.")
    hole = validate_mask(hole, size, what="hole", empty="choose or paint the area to erase and fill")
    binary = (hole > 0.5).astype(np.float32)
    if not binary.any():
        raise ConfigError("The hole is empty: choose or paint the area to erase and fill.")
    if binary.all():
        raise ConfigError("The hole covers the whole image: nothing of the photo is left around it. Make it smaller, "
                          "or use Change the class to change the whole image.")
    return binary


def check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ConfigError(f"Unknown fill '{fill}'; use one of {', '.join(FILLS)}.")


def erase_hole(x: torch.Tensor, hole: np.ndarray, fill: str = "smooth", *, seed: int = 0) -> torch.Tensor:
    """The photo (1, 3, H, W) in [0, 1] with the hole's pixels replaced by ``fill``; outside it, ``x`` itself."""
    check_fill(fill)
    inside = torch.from_numpy(np.asarray(hole, np.float32)).to(x.device).view(1, 1, *x.shape[2:]) > 0.5
    if fill == "grey":
        values = torch.full_like(x, 0.5)
    elif fill == "noise":
        generator = torch.Generator().manual_seed(seed)
        values = (0.5 + 0.2 * (torch.rand(x.shape, generator=generator) - 0.5)).to(x.device, x.dtype)
    else:
        values = smooth_fill(x, ~inside)
    return torch.where(inside, values, x)


def smooth_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill the unknown pixels from the known ones only: a normalised convolution (the Gaussian blur
    of the known pixels over the blur of the known area) at each sigma, coarse to fine, each finer
    estimate taking over where enough of its kernel falls on known pixels. Starts from their mean."""
    weight = known.to(x.dtype)
    known_pixels = x * weight
    filled = (known_pixels.sum((2, 3), keepdim=True) / weight.sum().clamp_min(1.0)).expand_as(x).clone()
    for sigma in SMOOTH_SIGMAS:
        support = _blur(weight, sigma)
        estimate = _blur(known_pixels, sigma) / support.clamp_min(1e-6)
        filled = torch.where(support > SUPPORT, estimate, filled)
    return filled


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur with zero padding (so a normalised convolution ignores the border)."""
    radius = min(int(3 * sigma), max(x.shape[2], x.shape[3]) - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(x, horizontal, padding=(0, radius), groups=channels)
    return F.conv2d(x, vertical, padding=(radius, 0), groups=channels)


def fill_hole(handle: ModelHandle, x: torch.Tensor, target: int | str, config: InversionConfig = InversionConfig(), *,
              hole: np.ndarray, fill: str = "smooth", progress: Progress | None = None,
              observer=None) -> InversionResult:
    """Erase ``hole`` from the photo ``x`` and refill it so the model calls the image ``target``.

    The run is class inversion (``config``: weights, optimiser, steps, jitter, content loss) from
    the erased photo, with the hole as its mask. The result's ``original`` is the photo, ``start``
    the erased photo, ``original_class`` the photo's class; outside the hole the result's image
    and every snapshot equal the photo's pixels exactly.
    """
    check_image(x, handle)
    target = handle.class_index(target)
    check_fill(fill)
    if config.start != "image":
        raise ConfigError("Hole-filling starts from the photo with its hole erased; it cannot start from noise.")
    hole = hole_mask(hole, handle.input_size)
    photo = x.to(handle.device, torch.float32)
    with torch.no_grad():
        photo_class = int(handle.logits(photo).argmax())
    if config.require_change and photo_class == target:
        raise ConfigError(f"The model already calls this image a {handle.class_names[target]}: "
                          "pick another class to fill the hole with.")
    start = erase_hole(photo, hole, fill, seed=config.seed)
    result = class_run(handle, start, target, config, mask=hole, refuse_top1=False, progress=progress,
                       observer=observer)
    photo_pixels = to_uint8(photo)
    inside = hole[..., None] > 0.5
    image = np.where(inside, result.image, photo_pixels)
    snapshots = tuple((step, np.where(inside, pixels, photo_pixels)) for step, pixels in result.snapshots)
    final_probs, forwards = result.final_probs, result.forward_passes + 1
    if not np.array_equal(image, result.image):  # the loop's masked gradient should make this a no-op
        with torch.no_grad():
            final_probs = handle.logits(torch.from_numpy(image).to(handle.device).permute(2, 0, 1)[None].float() / 255)
            final_probs = final_probs.softmax(1)[0].cpu().numpy()
        forwards += 1
    return replace(result, image=image, snapshots=snapshots, original=photo_pixels, start=result.original,
                   original_class=photo_class, final_class=int(np.argmax(final_probs)), final_probs=final_probs,
                   forward_passes=forwards, config={**config.as_dict(), "mode": "hole", "fill": fill})

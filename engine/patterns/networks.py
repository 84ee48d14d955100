"""The generator G (Fig. 4) and the discriminator D (Fig. 3) of sec. 3.

* **Tiled class input** f(t): for each of the n classes an 8 x 8 tile, all zeros when the class is
  inactive; when it is active, each element is drawn from the union of N(1, 2) and N(-1, 2) -- one of
  the two with equal probability. The second parameter is read as the variance (the usual N(mu,
  sigma^2)), so a drawn element is +-1 + sqrt(2) z: mean 0, variance 3, two modes.
* **G** -- a U-Net on the substrate: padded 4 x 4 convolutions with stride 2 and PReLU (initialised
  at 0.2) down to 8 x 8, where f(t) is concatenated; 4 x 4 transposed convolutions with stride 2 and
  PReLU back up, each followed by the concatenation of the encoder's map of the same size; tanh on
  the last layer. Weight normalisation on every convolution. Any side 2^k >= 16 works (the paper:
  512; 128 and 256 are the CPU sizes).
* **D** -- a PatchGAN on the pair (substrate, output): a logit per overlapping patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..errors import ConfigError

TILE = 8  # the bottleneck and the class tiles are 8 x 8


def tiled_class_input(active: torch.Tensor, *, generator: torch.Generator | None = None,
                      noise: bool = True) -> torch.Tensor:
    """f(t) for a batch: ``active`` (B, n) holds 0 for inactive classes and a mixing weight (1 for the
    paper's one active class) for active ones; the result is (B, n, 8, 8).

    Weights other than 0 and 1 are this app's extension for mixing up to three classes: an active
    class's tile is scaled by its weight. ``noise=False`` is our other extension: an active tile is
    its weight everywhere. The paper's draw has mean 0, so G can tell an active class from an
    inactive one only through the draw's spread (a second-order effect its first layer cannot use
    linearly); on a CPU budget of thousands rather than the paper's 200 000 steps, G then learns one
    pattern for all classes. A constant tile is visible to the first transposed convolution directly.
    """
    if active.ndim != 2:
        raise ConfigError("The class vector must have shape (batch, classes).")
    shape = (*active.shape, TILE, TILE)
    if not noise:
        return active.float()[..., None, None].expand(shape).clone()
    sign = torch.randint(0, 2, shape, generator=generator).float().mul_(2).sub_(1)
    draw = sign + math.sqrt(2.0) * torch.randn(shape, generator=generator)
    return draw.to(active.device) * active.float()[..., None, None]


def _down(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(weight_norm(nn.Conv2d(inputs, outputs, 4, stride=2, padding=1)), nn.PReLU(outputs, init=0.2))


def _up(inputs: int, outputs: int, last: bool = False) -> nn.Sequential:
    conv = weight_norm(nn.ConvTranspose2d(inputs, outputs, 4, stride=2, padding=1))
    return nn.Sequential(conv, nn.Tanh() if last else nn.PReLU(outputs, init=0.2))


class Generator(nn.Module):
    """G(substrate, f(t)) -> an image in [-1, 1] of the substrate's size (Fig. 4)."""

    def __init__(self, classes: int, *, size: int = 256, base: int = 32, widest: int = 256):
        super().__init__()
        if size < 16 or size & (size - 1):
            raise ConfigError(f"The generator works on square images whose side is a power of two from 16 up; got {size}.")
        self.classes, self.size = classes, size
        depth = int(math.log2(size // TILE))
        widths = [min(base * 2 ** i, widest) for i in range(depth)]  # encoder outputs, largest map first
        self.encoder = nn.ModuleList(_down(3 if i == 0 else widths[i - 1], widths[i]) for i in range(depth))
        decoder = []
        incoming = widths[-1] + classes  # the 8 x 8 bottleneck with f(t) concatenated
        for i in reversed(range(depth)):
            if i == 0:
                decoder.append(_up(incoming, 3, last=True))
            else:
                decoder.append(_up(incoming, widths[i - 1]))
                incoming = widths[i - 1] * 2  # its output and the skip of the same size
        self.decoder = nn.ModuleList(decoder)

    def forward(self, substrate: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        if substrate.shape[-1] != self.size or substrate.shape[-2] != self.size:
            raise ConfigError(f"This generator makes {self.size} px images; the substrate is "
                              f"{substrate.shape[-1]} x {substrate.shape[-2]}.")
        skips = []
        x = substrate
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        x = torch.cat([x, tiles], 1)
        skips.pop()  # the bottleneck itself is not a skip
        for layer in self.decoder:
            x = layer(x)
            if skips:
                x = torch.cat([x, skips.pop()], 1)
        return x


class Discriminator(nn.Module):
    """A PatchGAN on (substrate, image) pairs (Fig. 3): logits, one per overlapping patch."""

    def __init__(self, *, base: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [weight_norm(nn.Conv2d(6, base, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        width = base
        for i in range(1, layers):
            blocks += [weight_norm(nn.Conv2d(width, width * 2, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            width *= 2
        blocks += [weight_norm(nn.Conv2d(width, width * 2, 4, stride=1, padding=1)), nn.LeakyReLU(0.2),
                   nn.Conv2d(width * 2, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, substrate: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([substrate, image], 1))

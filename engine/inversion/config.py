"""Settings of a run: the loss weights (and how the paper's Caffe numbers map onto them), and the
frozen configs of class inversion and feature inversion."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError

OPTIMIZERS = ("lbfgs", "adam", "gd")

# Sec. 2.2's content loss, two ways: "mse" is Gatys' feature MSE (eq. 1), what the paper's code
# computes and what the presets use; "gram" is the Gram distance the paper's text describes.
CONTENT_LOSSES = {"mse": "Gatys' feature MSE (eq. 1; the paper's code, the presets)",
                  "gram": "Gram distance (the paper's text, sec. 2.2)"}

# Calibration of the feature terms on the bundled model (see LossWeights.from_paper).
FEATURE_GAIN = {"content": 1.0, "style": 0.01}


@dataclass(frozen=True)
class LossWeights:
    """Multipliers of the four regularising terms (classification is always x1). Negative is allowed."""

    content: float = 0.0
    style: float = 0.0
    tv: float = 0.0
    colour: float = 0.0

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.content, self.style, self.tv, self.colour)

    @classmethod
    def from_paper(cls, content: float, style: float, tv: float, colour: float, *,
                   std: tuple[float, float, float] = (0.5, 0.5, 0.5), content_loss: str = "mse") -> "LossWeights":
        """Convert a row of the paper's results, e.g. tiger (1e-10, 1e-7, 1e-9, 1e-8), to these units.

        The paper ran Caffe's VGG-19 on 0-255 images (mean subtracted), with the losses as sums. The
        losses here are the same sums on [0, 1] images, so each weight absorbs the unit change:

        * TV is linear in the pixel scale: x 255. Colour is quadratic: x 255^2. These are exact.
        * Content and style are measured on features. VGG is piecewise linear, so its features scale
          with its input; one unit of the network input here is ``255 * std`` levels (127.5 for the
          bundled mean = std = 0.5), so content (quadratic in features) takes ``(255 std)^2`` and
          style (Gram, quadratic; its loss, quadratic again) takes ``(255 std)^4``. This part is an
          assumption: a different network's features have their own magnitudes. On the bundled
          model the unit change alone left the tiger face-masked row stuck on the style term (p(tiger)
          1e-4 after 150 L-BFGS steps, style 100x the classification term's pull), while 1/100 of it
          gives the paper's outcome (p(tiger) 0.89 in 40 steps); that measured gain is
          :data:`FEATURE_GAIN`. Content needed none (the brown bear row's negative content weight
          behaves as in the paper).

        With ``content_loss="gram"`` the content term is a Gram distance (quadratic in a Gram matrix,
        like one layer of the style term), so its weight converts as style's does: (255 std)^4 times
        the style gain. The paper's weights were tuned for its code's feature MSE; a Gram content
        weight from them is a starting point, not the paper's setting.
        """
        check_content_loss(content_loss)
        scale = 255.0 * float(np.mean(std))
        content_unit = (scale ** 2 * FEATURE_GAIN["content"] if content_loss == "mse"
                        else scale ** 4 * FEATURE_GAIN["style"])
        return cls(content=content * content_unit,
                   style=style * scale ** 4 * FEATURE_GAIN["style"], tv=tv * 255.0, colour=colour * 255.0 ** 2)


@dataclass(frozen=True)
class InversionConfig:
    """Settings of one run. ``steps`` counts updates (L-BFGS iterations, each with its line search).

    Defaults are the tiger face-masked row of the paper's results converted to these units
    (:meth:`LossWeights.from_paper`) with L-BFGS, which turns chelsea into a tiger on the bundled model.
    """

    weights: LossWeights = field(default_factory=lambda: LossWeights.from_paper(1e-10, 1e-7, 1e-9, 1e-8))
    optimizer: str = "lbfgs"  # lbfgs (no jitter) | adam | gd (gradient descent, step scaled by the mean |gradient|)
    steps: int = 40
    lr: float | None = None  # None: 1 for L-BFGS, 0.01 for Adam, 0.004 for gd (in [0, 1] pixel units)
    jitter: int = 0  # largest random shift in pixels before each forward pass (the paper: 16)
    start: str = "image"  # image | noise (sec. 6: the losses then refer to the noise image)
    seed: int = 0
    content_layer: str | None = None  # None: default_layers(handle)
    content_loss: str = "mse"  # mse: Gatys' feature MSE (the paper's code) | gram: the Gram distance (its text)
    style_layers: tuple[str, ...] | None = None
    colour_threshold: float = 0.3
    snapshots: int | tuple[int, ...] = 8  # how many images to keep, evenly spaced (ends included), or which steps
    require_change: bool = True  # refuse a target the image already has as top-1
    divergence: float = 1e4  # stop when |total| grows past this times its start (or is not finite)

    def as_dict(self) -> dict:
        return asdict(self)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else {"lbfgs": 1.0, "adam": 0.01, "gd": 0.004}[self.optimizer]


def check_content_loss(name: str) -> None:
    if name not in CONTENT_LOSSES:
        raise ConfigError(f"Unknown content loss '{name}'; use mse (Gatys' feature MSE) or gram (the Gram distance).")


@dataclass(frozen=True)
class FeatureInversionConfig:
    """Mahendran & Vedaldi's inversion of one layer, from noise, with Adam."""

    layer: str | None = None  # None: the default content layer
    steps: int = 200
    lr: float = 0.05
    alpha_weight: float = 1e-3  # lambda_alpha of R_alpha, alpha = 6
    tv_weight: float = 1e-2  # lambda_V of R_V^beta, beta = 2
    jitter: int = 0
    seed: int = 0
    snapshots: int = 8

    def as_dict(self) -> dict:
        return asdict(self)

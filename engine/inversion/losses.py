"""The loss formulas, on images in [0, 1]: the five of Anosheh et al. sec. 2.2 and Mahendran & Vedaldi's.

Each is a plain function of tensors; :mod:`.terms` wraps them as weighted terms of an objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Mahendran & Vedaldi (2015), sec. 2 and 3: their B, the typical norm of a mean-subtracted pixel,
# here in [0, 1] units.
PIXEL_RANGE_B = 80 / 255


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sec. 2.2: V(I) = sum_i |I(x_{i+1}) - I(x_i)| over each channel flattened row-major, plus the
    same over the column-major flattening. ``x`` is (N, C, H, W); the result sums every image."""
    rows = x.flatten(2)
    columns = x.transpose(2, 3).flatten(2)
    # l1_loss(a[1:], a[:-1]) is sum |a_{i+1} - a_i| as one fused operation (forward and backward).
    return (F.l1_loss(rows[..., 1:], rows[..., :-1], reduction="sum")
            + F.l1_loss(columns[..., 1:], columns[..., :-1], reduction="sum"))


def colour_similarity(x: torch.Tensor, original: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Sec. 2.2: squared difference to the original, counted only where it is greater than 30 %."""
    difference = x - original
    return (difference.square() * (difference.abs() > threshold)).sum()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gatys eq. 3: G = F F^T with F the (C, H*W) feature matrix; (N, C, H, W) -> (N, C, C)."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2)


def style_loss(features: list[torch.Tensor], target_grams: list[torch.Tensor]) -> torch.Tensor:
    """Gatys eq. 4-5: sum over layers of 1/L * 1/(4 N^2 M^2) * ||G - A||^2 (N channels, M positions)."""
    total = features[0].new_zeros(())
    for feature, target in zip(features, target_grams):
        channels, positions = feature.shape[1], feature.shape[2] * feature.shape[3]
        total = total + F.mse_loss(gram_matrix(feature), target, reduction="sum") / (4 * channels ** 2 * positions ** 2)
    return total / len(features)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gatys eq. 1: 1/2 * sum (F - P)^2 (what the paper's code computes, via Liu's port of Gatys)."""
    return 0.5 * F.mse_loss(features, target, reduction="sum")


def gram_content_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """The content loss as the paper's text describes it (sec. 2.2): "the Euclidean distance of the
    Gram matrix of the output image at the specified content layer with that of the content image".

    Squared and normalised as Gatys eq. 4 normalises one layer of the style loss:
    1/(4 N^2 M^2) * sum_ij (G_ij - A_ij)^2, G = F F^T of the image and A the original's Gram matrix
    (``target_gram``), N channels, M positions. A Gram matrix sums over positions, so this loss does
    not change when the features are moved around; Gatys' feature MSE (:func:`content_loss`) does.
    """
    channels, positions = features.shape[1], features.shape[2] * features.shape[3]
    return F.mse_loss(gram_matrix(features), target_gram, reduction="sum") / (4 * channels ** 2 * positions ** 2)


def representation_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mahendran & Vedaldi eq. 1 with the normalised Euclidean loss: ||Phi(x) - Phi0||^2 / ||Phi0||^2."""
    return (features - target).square().sum() / target.square().sum().clamp_min(1e-12)


def alpha_norm(x: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """Mahendran & Vedaldi sec. 3: R_alpha(x) = ||x - mean||_alpha^alpha / (H W B^alpha), keeping
    values in a natural range."""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    return centred.abs().pow(alpha).sum() / (x.shape[2] * x.shape[3] * PIXEL_RANGE_B ** alpha)


def tv_beta(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Mahendran & Vedaldi sec. 3: R_V^beta(x) = sum ((dx)^2 + (dy)^2)^(beta/2) / (H W V^beta), V = B / 6.5."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    variation = (PIXEL_RANGE_B / 6.5) ** beta
    return (dx.square() + dy.square()).pow(beta / 2).sum() / (x.shape[2] * x.shape[3] * variation)

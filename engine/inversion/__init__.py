"""Class inversion: change an image until it strongly classifies as a target class (Anosheh et al.).

Paper: shared/papers/anosheh-image-transformation-via-inversion.txt. Composed the way lucent
composes a visualisation: a pixel parameterisation (:func:`start_image`, a :mod:`mask <.masks>`),
an objective that is a sum of weighted terms (:mod:`.terms`, :mod:`.objective`), the transforms the
network sees the image through (:class:`Jitter`), and a loop that keeps snapshots (:func:`optimise`).

The five losses of sec. 2.2, on images in [0, 1] (the loss is a function of the image only; how the
paper's Caffe weights map onto it is :meth:`LossWeights.from_paper`):

* **classification** -- softmax cross-entropy to the target, unscaled (x1);
* **content** -- ``1/2 sum (F - P)^2`` over one layer's features F of the image and P of the
  original (Gatys et al. eq. 1; the paper's implementation follows Liu's port of Gatys);
* **style** -- ``sum_l 1/L * 1/(4 N_l^2 M_l^2) sum (G_l - A_l)^2``, G and A the Gram matrices
  ``F F^T`` of the image and the original at L layers (Gatys eq. 3-5, equal layer weights);
* **total variation** -- the paper's own definition: each channel flattened row-major, the sum of
  |I(x_{i+1}) - I(x_i)|, plus the same for the column-major flattening (so the step from the end
  of one row to the start of the next counts too, exactly as a flattening gives it);
* **colour similarity** -- ``sum (x - x0)^2`` over the values whose difference from the original
  is greater than 30 % of the range (0.3 here).

The paper's text describes the content loss as a Gram distance at the content layer while its code
(Liu's port of Gatys) computes the feature MSE above: ``InversionConfig.content_loss`` is ``"mse"``
(the code; every preset) or ``"gram"`` (the text, :func:`~.losses.gram_content_loss`).

**Hole-filling** (the results' last three pictures): :func:`fill_hole` erases a hole and refills
it with the same optimisation, the hole as its mask; outside the hole the result is the photo, bit
for bit (:mod:`.holes`).

Sec. 2.3: the **mask** multiplies the gradient before each update, so pixels outside it never move
(bit for bit, for every optimiser here); **jitter** is a transform that rolls the image by up to
16 px before each forward pass (the gradient flows back through the roll, so it lands on the
unshifted pixels). As the paper found (sec. 4), L-BFGS cannot take jitter: its line search needs
one fixed function. Sec. 6: starting from noise. Feature inversion (Mahendran & Vedaldi 2015, in
the lecture) shares the loop with its own objective.

The package, along its seams:

* :mod:`.losses` -- the formulas; :mod:`.terms` -- each as a weighted term object;
* :mod:`.objective` -- a sum of terms, and the two experiments' objectives;
* :mod:`.transforms` -- jitter; :mod:`.masks` -- shapes, drawings, validation;
* :mod:`.config` -- weights and run settings; :mod:`.loop` -- :func:`optimise` and the result;
* :mod:`.experiments` -- :func:`invert`, :func:`invert_features`; :mod:`.holes` -- :func:`fill_hole`;
  :mod:`.presets` -- the paper's rows; :mod:`.output` -- loss log, snapshots, manifest, the CLI's files.
"""

from __future__ import annotations

from .config import (CONTENT_LOSSES, FEATURE_GAIN, OPTIMIZERS, FeatureInversionConfig, InversionConfig, LossWeights,
                     check_content_loss)
from .experiments import class_run, invert, invert_features, jitter_transforms
from .holes import FILLS, erase_hole, fill_hole, hole_mask, smooth_fill
from .loop import (Diverged, InversionResult, LoopConfig, Measured, check_optimizer, measure, optimise,
                   snapshot_steps, start_image)
from .losses import (PIXEL_RANGE_B, alpha_norm, colour_similarity, content_loss, gram_content_loss, gram_matrix,
                     representation_loss, style_loss, total_variation, tv_beta)
from .masks import (Box, ellipse_mask, mask_digest, mask_from_pixels, rectangle_mask, resize_mask, shape_mask,
                    validate_mask)
from .objective import (Evaluation, Objective, class_objective, default_layers, feature_objective,
                        reference_features)
from .output import loss_log_csv, loss_log_rows, manifest, snapshots_zip, write_run
from .presets import CHELSEA_MASKS, PRESET_GROUPS, PRESETS, Preset, preset_mask, run_preset
from .terms import (AlphaNormTerm, ClassificationTerm, ColourTerm, ContentTerm, Features, GramContentTerm,
                    RepresentationTerm, StyleTerm, Term, TotalVariationTerm, TVBetaTerm)
from .transforms import (MAX_JITTER, Jitter, Transform, Transformed, apply_transforms, jitter, random_shift,
                         roll_features, unjitter)

__all__ = [
    "CONTENT_LOSSES", "FEATURE_GAIN", "OPTIMIZERS", "FeatureInversionConfig", "InversionConfig", "LossWeights",
    "check_content_loss", "class_run", "invert", "invert_features", "jitter_transforms",
    "FILLS", "erase_hole", "fill_hole", "hole_mask", "smooth_fill",
    "Diverged", "InversionResult", "LoopConfig", "Measured", "check_optimizer", "measure", "optimise",
    "snapshot_steps", "start_image",
    "PIXEL_RANGE_B", "alpha_norm", "colour_similarity", "content_loss", "gram_content_loss", "gram_matrix",
    "representation_loss", "style_loss", "total_variation", "tv_beta",
    "Box", "ellipse_mask", "mask_digest", "mask_from_pixels", "rectangle_mask", "resize_mask", "shape_mask",
    "validate_mask",
    "Evaluation", "Objective", "class_objective", "default_layers", "feature_objective", "reference_features",
    "loss_log_csv", "loss_log_rows", "manifest", "snapshots_zip", "write_run",
    "CHELSEA_MASKS", "PRESET_GROUPS", "PRESETS", "Preset", "preset_mask", "run_preset",
    "AlphaNormTerm", "ClassificationTerm", "ColourTerm", "ContentTerm", "Features", "GramContentTerm",
    "RepresentationTerm",
    "StyleTerm", "Term", "TotalVariationTerm", "TVBetaTerm",
    "MAX_JITTER", "Jitter", "Transform", "Transformed", "apply_transforms", "jitter", "random_shift",
    "roll_features", "unjitter",
]

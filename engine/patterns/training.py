"""Training the conditional GAN against a frozen classifier (sec. 3), on one process or several.

One step, as the paper describes it:

1. a batch of 1-3 augmented substrates x, and one active class for the whole batch, chosen uniformly;
2. y = G(x, f(t));
3. D ascends L_cGAN on real pairs (x, x) -- the auxiliary set's own photos are the "real world" D
   knows (sec. 5: the cGAN only judges whether the output looks like a real photo) -- and fake
   pairs (x, y);
4. G descends ``3 E[log(1 - D(x, y))] + 10 L_m + 50 L_VGG + 150 L_s`` (L_VGG, the loss against the
   frozen critic, is ``classifier`` in the code: the critic need not be VGG16), the classifier seeing the
   whole image resized (positive class) and three random crops (negative classes), in grey when
   ``grayscale`` is on (the paper found that better).

Every random choice of step k comes from (seed, k, rank), so a run resumed from a checkpoint takes
exactly the steps it would have taken. Under ``torchrun`` each rank draws its own batch and
DistributedDataParallel averages the gradients; rank 0 writes the checkpoints.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import images, saliency
from ..errors import CheckpointError, ConfigError
from ..io import atomic_path
from ..models import ModelHandle
from . import losses
from .networks import Discriminator, Generator, tiled_class_input
from .substrates import augment, load_substrate_folder, substrate_batch, substrate_tensors

CHECKPOINT_VERSION = 1
SHAPES = ("garments", "varied")


@dataclass(frozen=True)
class TrainConfig:
    """Sec. 3's settings; the CPU default size is 128 (the paper: 512)."""

    classes: tuple[int, ...]
    model: str = "efficientnet_lite0"
    size: int = 128
    batch: int = 2
    lr: float = 2e-4
    beta1: float = 0.5
    weights: losses.PatternLossWeights = field(default_factory=losses.PatternLossWeights)
    grayscale: bool = True
    crops: int = 3
    seed: int = 0
    base: int = 32
    gradcam_mask: bool = False
    substrates: str | None = None  # a folder of the user's own substrate images; None: generated garments
    class_noise: bool = True  # f(t) drawn as in the paper; False: constant tiles (see tiled_class_input)
    critics: tuple[str, ...] = ()  # more frozen classifiers; the classifier loss is averaged over all of them
    eot: bool = False  # expectation over transformation: each critic sees a randomly moved, zoomed, recoloured view
    shapes: str = "garments"  # "garments": the eight outlines; "varied": also random shapes, sizes and shading
    init: str | None = None  # a generator file whose weights start the run (the tensors that fit)

    def as_dict(self) -> dict:
        return asdict(self)

    def validate(self, handle: ModelHandle) -> None:
        if not 1 <= len(self.classes) <= 24:
            raise ConfigError("Train on 1 to 24 classes (the paper restored up to 24).")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError("Each class may appear only once.")
        bad = [c for c in self.classes if not 0 <= c < handle.num_classes]
        if bad:
            raise ConfigError(f"The classifier has classes 0 to {handle.num_classes - 1}; {bad} are not among them.")
        if not 1 <= self.batch <= 8:
            raise ConfigError("The batch holds 1 to 8 substrates (the paper: 1-3).")
        if not 0 < self.lr <= 0.1:
            raise ConfigError("The learning rate must be above 0 and at most 0.1 (the paper: 0.0002).")
        if self.size < 16 or self.size & (self.size - 1):
            raise ConfigError(f"The image side must be a power of two, at least 16 (the paper: 512); got {self.size}.")
        if self.shapes not in SHAPES:
            raise ConfigError(f"Substrate shapes are one of {', '.join(SHAPES)}; got '{self.shapes}'.")
        if self.model in self.critics or len(set(self.critics)) != len(self.critics):
            raise ConfigError("Each critic may appear only once (the training classifier is already one).")
        if self.gradcam_mask and handle.default_layer is None:
            raise ConfigError(f"{handle.name} has no convolutional map for the Grad-CAM mask.")


def default_classifier() -> str:
    """VGG16, the paper's classifier, when its torchvision weights are on this machine; else the bundled model."""
    from .. import models

    return "vgg16" if models.torchvision_weights_cached("vgg16") else models.DEFAULT_MODEL


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, repeated on three channels (what the classifier sees with ``grayscale``)."""
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand(-1, 3, -1, -1)


def classifier_view(handle: ModelHandle, pictures: torch.Tensor, *, grayscale: bool) -> torch.Tensor:
    """Images in [-1, 1] as the classifier takes them: [0, 1], grey if asked, at its input size."""
    x = (pictures + 1) / 2
    if grayscale:
        x = grey(x)
    if x.shape[-1] != handle.input_size:
        x = F.interpolate(x, size=(handle.input_size, handle.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x


def eot_view(handle: ModelHandle, pictures: torch.Tensor, generator: torch.Generator, *, grayscale: bool,
             zoom: tuple[float, float] = (0.75, 1.1), shift: float = 0.12, sizes: tuple[float, ...] = (0.875, 1.0, 1.15),
             ) -> torch.Tensor:
    """Expectation over transformation (Athalye et al. 2018), our extension of sec. 3's classifier term:
    the classifier's view of images in [-1, 1] after a random colour jitter (brightness, contrast,
    saturation), a random horizontal flip, zoom and shift (the border filled with white, like the
    substrates' background), sampled at a random multiple of the classifier's input size. A pattern
    that holds up under all of these is a pattern, not noise tuned to one view of one network.
    Differentiable in ``pictures``; every draw comes from ``generator``.
    """
    count = pictures.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    x = (pictures + 1) / 2
    brightness, contrast, saturation = uniform(0.8, 1.2), uniform(0.75, 1.25), uniform(0.5, 1.3)
    luma = grey(x)
    x = luma + saturation.view(-1, 1, 1, 1) * (x - luma)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast.view(-1, 1, 1, 1) + mean) * brightness.view(-1, 1, 1, 1)
    x = x.clamp(0, 1)
    if grayscale:
        x = grey(x)
    scale = 1 / uniform(*zoom)  # > 1 zooms out
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-shift, shift) * 2, uniform(-shift, shift) * 2
    side = round(handle.input_size * sizes[int(torch.randint(len(sizes), (1,), generator=generator))])
    grid = F.affine_grid(theta.to(x.device, x.dtype), [count, 3, side, side], align_corners=False)
    return F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1


def class_probabilities(handle: ModelHandle, pictures: torch.Tensor, classes: torch.Tensor, *,
                        grayscale: bool) -> torch.Tensor:
    """The frozen classifier's probabilities of the chosen classes, (B, n), for images in [-1, 1];
    the gradient flows back to the images."""
    return handle.logits(classifier_view(handle, pictures, grayscale=grayscale)).softmax(1)[:, classes]


def gradcam_weights(handle: ModelHandle, pictures: torch.Tensor, class_ids: torch.Tensor, *,
                    grayscale: bool) -> torch.Tensor:
    """The Grad-CAM masking extension (end of sec. 4), (B, 1, S, S) in [0, 1], no gradient.

    :class:`engine.saliency.GradCAM` (Selvaraju et al., eq. 1-2) of each image's active class on the
    current output, at the classifier's CAM layer, in one batched head-only backward under the
    handle's lock; each map scaled to a maximum of 1 and upsampled to the image: where the
    classifier already sees the class. The substrate loss is multiplied by ``1 - map`` there, so the
    pattern is free to form where it works and the rest of the garment is held to the substrate --
    the "better separation between substrate image and the generated picture" the paper reports.
    """
    x = classifier_view(handle, pictures.detach(), grayscale=grayscale)
    cam = saliency.GradCAM(handle).cam(x, [int(c) for c in class_ids])  # (B, h, w) at the layer's size
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return saliency.upsample(cam, tuple(pictures.shape[-2:]))[:, None].clamp(0, 1)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, step, rank)) & 0x7FFF_FFFF_FFFF_FFFF)


class Trainer:
    """G, D, their Adam optimisers and the step count; :meth:`step` runs one training step."""

    def __init__(self, handle: ModelHandle, config: TrainConfig, *, distributed: bool = False, warm: bool = True):
        config.validate(handle)
        self.handle, self.config = handle, config
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.generator = Generator(len(config.classes), size=config.size, base=config.base)
        self.discriminator = Discriminator()
        self.g_model, self.d_model = self.generator, self.discriminator
        self.rank = 0
        if distributed:
            import torch.distributed as dist

            self.rank = dist.get_rank()
            self.g_model = torch.nn.parallel.DistributedDataParallel(self.generator)
            self.d_model = torch.nn.parallel.DistributedDataParallel(self.discriminator)
        betas = (config.beta1, 0.999)
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas)
        self.classes = torch.tensor(config.classes)
        self.steps_done = 0
        self.pool = load_substrate_folder(config.substrates, config.size) if config.substrates else None
        from .. import models

        self.critics = [handle] + [models.load_model(name, device=handle.device) for name in config.critics]
        if config.init and warm:  # not when resuming: the checkpoint holds G already
            warm_start(self.generator, Path(config.init))

    def batch(self, step: int):
        """Substrates, background masks and the one-hot targets of step ``step`` (deterministic)."""
        seed = self.config.seed * 1_000_003 + step * 64 + self.rank
        if self.pool is None:
            substrates = substrate_batch(self.config.batch, self.config.size, seed=seed, shapes=self.config.shapes)
        else:
            rng = np.random.default_rng([seed, 7])
            picks = rng.choice(len(self.pool), size=self.config.batch, replace=len(self.pool) < self.config.batch)
            substrates = [augment(self.pool[int(i)], rng) for i in picks]
        pictures, background = substrate_tensors(substrates)
        rng = step_generator(self.config.seed, step, self.rank)
        active = int(torch.randint(len(self.config.classes), (1,), generator=rng))
        target = torch.zeros(self.config.batch, len(self.config.classes))
        target[:, active] = 1.0
        return pictures, background, target, rng

    def generator_losses(self, substrates, background, target, output, rng) -> dict[str, torch.Tensor]:
        """Every term of G's objective (unweighted) and their weighted total."""
        weights = self.config.weights
        classifier_terms, target_probs = [], []
        for critic in self.critics:
            resized = self.critic_probabilities(critic, output, rng)
            crops, _ = losses.random_crops(output, count=self.config.crops, generator=rng)
            crop_probs = class_probabilities(critic, crops.flatten(0, 1), self.classes, grayscale=self.config.grayscale)
            crop_probs = crop_probs.view(output.shape[0], self.config.crops, -1)
            classifier_terms.append(losses.classifier_loss(resized, crop_probs, target))  # the paper's L_VGG
            target_probs.append((resized * target).sum(1).mean().detach())
        terms = {
            "adversarial": losses.generator_adversarial_loss(self.d_model(substrates, output)),
            "mask": losses.mask_loss(output, background),
            "classifier": torch.stack(classifier_terms).mean(),
            "substrate": self.substrate_term(substrates, output, target),
            "target_prob": target_probs[0],
        }
        terms["total"] = (weights.cgan * terms["adversarial"] + weights.mask * terms["mask"]
                          + weights.classifier * terms["classifier"] + weights.substrate * terms["substrate"])
        if weights.colour:  # logged only when on, so older runs' log.csv keep their columns
            terms["colour"] = losses.colour_loss(substrates, output)
            terms["total"] = terms["total"] + weights.colour * terms["colour"]
        return terms

    def critic_probabilities(self, critic: ModelHandle, output: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """The critic's probabilities of the run's classes on the whole output: resized (sec. 3), or
        under a random transformation with ``eot``."""
        if not self.config.eot:
            return class_probabilities(critic, output, self.classes, grayscale=self.config.grayscale)
        view = eot_view(critic, output, rng, grayscale=self.config.grayscale)
        return critic.logits(view).softmax(1)[:, self.classes]

    def substrate_term(self, substrates, output, target) -> torch.Tensor:
        if not self.config.gradcam_mask:
            return losses.substrate_loss(substrates, output)
        active = self.classes[target.argmax(1)]
        keep = 1 - gradcam_weights(self.handle, output, active, grayscale=self.config.grayscale)
        return losses.substrate_loss(substrates, output, weight=keep)

    def step(self) -> dict[str, float]:
        """One step of D, then one of G; returns the losses as numbers."""
        substrates, background, target, rng = self.batch(self.steps_done)
        tiles = tiled_class_input(target, generator=rng, noise=self.config.class_noise)
        with torch.enable_grad():
            output = self.g_model(substrates, tiles)
            d_value = losses.cgan_loss(self.d_model(substrates, substrates), self.d_model(substrates, output.detach()))
            self.d_opt.zero_grad(set_to_none=True)
            (-d_value).backward()  # D maximises L_cGAN
            self.d_opt.step()
            terms = self.generator_losses(substrates, background, target, output, rng)
            self.g_opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.g_opt.step()
        self.steps_done += 1
        return {"cgan": float(d_value.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    # -- checkpoints -------------------------------------------------------------------------------

    def state(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "config": self.config.as_dict(), "steps": self.steps_done,
                "class_names": [self.handle.class_names[c] for c in self.config.classes],
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict()}

    def save(self, path: Path) -> None:
        """Atomically: a crash mid-write leaves the previous checkpoint whole."""
        write_checkpoint(self.state(), path)

    def export_generator(self, path: Path) -> None:
        """The generator alone (no D, no optimiser state): the small file a page generates from."""
        write_checkpoint({k: v for k, v in self.state().items() if k not in ("discriminator", "g_opt", "d_opt")},
                         path)

    def load(self, path: Path) -> None:
        state = read_checkpoint(path)
        if "discriminator" not in state:
            raise CheckpointError(f"{Path(path).name} holds only a generator (an export); training resumes from the "
                                  "full checkpoint.pt of a run.")
        if tuple(state["config"]["classes"]) != tuple(self.config.classes) or state["config"]["size"] != self.config.size:
            raise CheckpointError(f"This checkpoint was trained on classes {state['config']['classes']} at "
                                  f"{state['config']['size']} px; the run asks for {list(self.config.classes)} at "
                                  f"{self.config.size} px.")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.steps_done = int(state["steps"])


def warm_start(generator: Generator, path: Path) -> int:
    """Copy every tensor of a saved generator that fits ``generator`` (same name and shape); the
    first decoder layer, which takes the class tiles, keeps its shared part when the class count
    differs. Returns how many tensors were copied."""
    saved = read_checkpoint(path)["generator"]
    own = generator.state_dict()
    copied = 0
    with torch.no_grad():
        for name, tensor in own.items():
            value = saved.get(name)
            if value is None:
                continue
            if value.shape == tensor.shape:
                tensor.copy_(value)
            elif value.ndim == tensor.ndim and all(a <= b for a, b in zip(value.shape, tensor.shape)):
                tensor[tuple(slice(0, n) for n in value.shape)] = value  # the bottleneck's channels, then the old classes
            else:
                continue
            copied += 1
    generator.load_state_dict(own)
    return copied


def config_from_state(state: dict) -> TrainConfig:
    """The TrainConfig a checkpoint was written with (older checkpoints lack the newer options and
    call the classifier loss's weight ``vgg``)."""
    config = dict(state["config"])
    known = set(TrainConfig.__dataclass_fields__)
    config = {k: v for k, v in config.items() if k in known}
    config["classes"] = tuple(config["classes"])
    config["critics"] = tuple(config.get("critics", ()))
    config["weights"] = losses.PatternLossWeights.from_dict(config.get("weights", {}))
    return TrainConfig(**config)


def write_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` through :func:`engine.io.atomic_path`: readers see the old file or the new one."""
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def read_checkpoint(path: Path) -> dict:
    """A checkpoint written by :meth:`Trainer.save`, loaded without running any pickled code."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"There is no checkpoint at {path}.") from None
    except Exception as error:  # noqa: BLE001 -- any unreadable file is a sentence, not a traceback
        raise CheckpointError(f"{Path(path).name} is not a pattern-generator checkpoint ({type(error).__name__}).") from None
    return checked_checkpoint(state, Path(path).name)


def read_checkpoint_bytes(data: bytes, name: str) -> dict:
    """:func:`read_checkpoint` for an uploaded file's bytes (``name`` is the file's name, for sentences)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any unreadable file is a sentence, not a traceback
        raise CheckpointError(f"{name} is not a pattern-generator checkpoint ({type(error).__name__}).") from None
    return checked_checkpoint(state, name)


def checked_checkpoint(state, name: str) -> dict:
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "generator" not in state:
        raise CheckpointError(f"{name} is not a pattern-generator checkpoint of this version.")
    return state


def sample_grid(trainer: Trainer, substrates: int = 3, seed: int = 12345) -> np.ndarray:
    """Fixed substrates (rows) x each class (columns), uint8: the grid the CLI saves as it trains."""
    config = trainer.config
    if trainer.pool is None:
        pictures, _ = substrate_tensors(substrate_batch(substrates, config.size, seed=seed, augmented=False))
    else:
        substrates = min(substrates, len(trainer.pool))
        pictures, _ = substrate_tensors(trainer.pool[:substrates])
    rows = []
    with torch.no_grad():
        for index in range(substrates):
            row = [pictures[index]]
            for c in range(len(config.classes)):
                target = torch.zeros(1, len(config.classes))
                target[0, c] = 1.0
                tiles = tiled_class_input(target, generator=torch.Generator().manual_seed(seed + c), noise=config.class_noise)
                row.append(trainer.generator(pictures[index:index + 1], tiles)[0])
            rows.append(torch.cat(row, 2))
    return images.to_uint8(torch.cat(rows, 1), value_range=images.SIGNED)

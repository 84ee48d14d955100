"""The paper's Fig. 2: a classic GAN (Goodfellow et al.) instead of the conditional one.

Sec. 2 of Chaplygin & Chacksfield: "When using a classic GAN the model was unable to restore a
distribution of unknown nature and wasn't applicable in our case (Figure 2)"; the caption shows "the
results which best showed the required categories, when using only classic GAN". Here that GAN is:

* G is the cGAN's own U-Net, but it starts from a noise image z instead of a garment: the substrate,
  the one thing the conditional GAN adds, is gone and nothing else changes;
* D is a PatchGAN on the image alone (unconditional), the garments its real examples;
* G descends ``cgan * E[log(1 - D(G(z, t)))] + classifier * L_VGG``, the same classifier term as the
  cGAN (sec. 3: P on the resized image, N on random crops), so it too is asked to show the categories.
  There is no substrate and no mask term: nothing ties the image to a garment.

Every random draw of step k comes from (seed, k), so a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .. import images
from ..errors import CheckpointError, ConfigError
from ..models import ModelHandle
from ..progress import Progress, report
from . import losses
from .networks import Generator, tiled_class_input
from .substrates import substrate_batch, substrate_tensors
from .training import class_probabilities, read_checkpoint, write_checkpoint

CLASSIC_VERSION = 1


def noise_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """z: uniform noise images in [-1, 1], (count, 3, size, size) -- what G starts from instead of a garment."""
    return torch.rand(count, 3, size, size, generator=generator) * 2 - 1


class ImageDiscriminator(nn.Module):
    """A PatchGAN on the image alone: logits, one per patch."""

    def __init__(self, *, base: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            weight_norm(nn.Conv2d(3, base, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            weight_norm(nn.Conv2d(base, base * 2, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            weight_norm(nn.Conv2d(base * 2, base * 4, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            nn.Conv2d(base * 4, 1, 4, stride=1, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


@dataclass(frozen=True)
class ClassicConfig:
    classes: tuple[int, ...]
    model: str = "efficientnet_lite0"
    size: int = 128
    batch: int = 2
    lr: float = 5e-4
    cgan: float = 3.0
    classifier: float = 50.0
    crops: int = 1
    base: int = 32
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class ClassicTrainer:
    def __init__(self, handle: ModelHandle, config: ClassicConfig):
        if not 1 <= len(config.classes) <= 24:
            raise ConfigError("Train on 1 to 24 classes.")
        self.handle, self.config = handle, config
        torch.manual_seed(config.seed)
        self.generator = Generator(len(config.classes), size=config.size, base=config.base)
        self.discriminator = ImageDiscriminator()
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=(0.5, 0.999))
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=(0.5, 0.999))
        self.classes = torch.tensor(config.classes)
        self.steps_done = 0

    def step(self) -> dict[str, float]:
        config = self.config
        rng = torch.Generator().manual_seed(config.seed * 1_000_003 + self.steps_done)
        real, _ = substrate_tensors(substrate_batch(config.batch, config.size, seed=config.seed * 7919 + self.steps_done,
                                                    shapes="varied"))
        active = int(torch.randint(len(config.classes), (1,), generator=rng))
        target = torch.zeros(config.batch, len(config.classes))
        target[:, active] = 1.0
        z = noise_images(config.batch, config.size, rng)
        with torch.enable_grad():
            fake = self.generator(z, tiled_class_input(target, noise=False))
            d_value = losses.cgan_loss(self.discriminator(real), self.discriminator(fake.detach()))
            self.d_opt.zero_grad(set_to_none=True)
            (-d_value).backward()
            self.d_opt.step()
            resized = class_probabilities(self.handle, fake, self.classes, grayscale=False)
            crops, _ = losses.random_crops(fake, count=config.crops, generator=rng)
            crop_probs = class_probabilities(self.handle, crops.flatten(0, 1), self.classes, grayscale=False)
            classifier = losses.classifier_loss(resized, crop_probs.view(config.batch, config.crops, -1), target)
            adversarial = losses.generator_adversarial_loss(self.discriminator(fake))
            total = config.cgan * adversarial + config.classifier * classifier
            self.g_opt.zero_grad(set_to_none=True)
            total.backward()
            self.g_opt.step()
        self.steps_done += 1
        return {"cgan": float(d_value.detach()), "classifier": float(classifier.detach()), "total": float(total.detach()),
                "target_prob": float((resized.detach() * target).sum(1).mean())}

    def state(self, *, full: bool = True) -> dict:
        state = {"version": CLASSIC_VERSION, "kind": "classic-gan", "config": self.config.as_dict(),
                 "steps": self.steps_done, "class_names": [self.handle.class_names[c] for c in self.config.classes],
                 "generator": self.generator.state_dict()}
        if full:
            state.update(discriminator=self.discriminator.state_dict(), g_opt=self.g_opt.state_dict(),
                         d_opt=self.d_opt.state_dict())
        return state

    def load(self, path: Path) -> None:
        state = read_classic(path)
        if "discriminator" not in state:
            raise CheckpointError(f"{Path(path).name} holds only a generator; training resumes from a full checkpoint.")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.steps_done = int(state["steps"])


def read_classic(path: Path) -> dict:
    """A classic-GAN checkpoint, read as every pattern checkpoint is (:func:`.training.read_checkpoint`)."""
    try:
        state = read_checkpoint(Path(path))
    except CheckpointError as error:
        if "no checkpoint at" in str(error):
            raise
        raise CheckpointError(f"{Path(path).name} is not a classic-GAN checkpoint.") from None
    if state.get("kind") != "classic-gan":
        raise CheckpointError(f"{Path(path).name} is not a classic-GAN checkpoint.")
    return state


def train_classic(out: Path, config: ClassicConfig, steps: int, handle: ModelHandle, *, resume: bool = False,
                  checkpoint_every: int = 250, progress: Progress | None = None) -> ClassicTrainer:
    """Train to ``steps`` steps, writing ``checkpoint.pt``, ``log.csv`` and ``samples/step_N.png`` in ``out``."""
    out = Path(out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    trainer = ClassicTrainer(handle, config)
    if resume:
        trainer.load(out / "checkpoint.pt")
    with (out / "log.csv").open("a") as log:
        while trainer.steps_done < steps:
            values = trainer.step()
            if log.tell() == 0:
                log.write("step," + ",".join(values) + "\n")
            log.write(f"{trainer.steps_done}," + ",".join(f"{v:.6g}" for v in values.values()) + "\n")
            log.flush()
            if trainer.steps_done % checkpoint_every == 0 or trainer.steps_done == steps:
                write_checkpoint(trainer.state(), out / "checkpoint.pt")
                grid = samples(trainer.generator, len(config.classes))
                (out / "samples" / f"step_{trainer.steps_done:06d}.png").write_bytes(images.to_png_bytes(grid))
            report(progress, trainer.steps_done / steps, f"step {trainer.steps_done} of {steps}: p(target) "
                   f"{values['target_prob']:.3f}")
    return trainer


def generate_classic(generator: Generator, class_index: int, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` images of one class from fixed noise, uint8 (count, S, S, 3)."""
    z = noise_images(count, generator.size, torch.Generator().manual_seed(seed))
    target = torch.zeros(count, generator.classes)
    target[:, class_index] = 1.0
    with torch.inference_mode():
        made = generator(z, tiled_class_input(target, noise=False))
    return images.to_uint8(made, value_range=images.SIGNED)


def samples(generator: Generator, classes: int, rows: int = 3) -> np.ndarray:
    """rows x classes images from fixed noise, one column a class."""
    columns = [generate_classic(generator, c, rows, seed=12345) for c in range(classes)]
    return np.concatenate([np.concatenate(list(column), 0) for column in columns], 1)


def load_classic(path: Path) -> tuple[Generator, tuple[str, ...], tuple[int, ...], int]:
    """A shipped or trained classic generator: the network, its class names and ids, its steps."""
    return classic_from_state(read_classic(path), Path(path).name)


def classic_from_state(state: dict, name: str) -> tuple[Generator, tuple[str, ...], tuple[int, ...], int]:
    config = state["config"]
    generator = Generator(len(config["classes"]), size=int(config["size"]), base=int(config["base"]))
    try:
        generator.load_state_dict(state["generator"])
    except RuntimeError:
        raise CheckpointError(f"{name}: the generator does not match its own settings.") from None
    return generator.eval(), tuple(state["class_names"]), tuple(config["classes"]), int(state["steps"])


SHIPPED_CLASSIC = Path(__file__).resolve().parents[2] / "assets" / "patterns" / "classic-gan.pt"


def comparison(classic_file: Path, cgan_file: Path, *, samples_per_class: int = 3, garment: str = "tote-bag-1") -> dict:
    """Fig. 2 beside the cGAN: per class of the classic generator, ``samples_per_class`` images from
    fixed noise and the cGAN's pattern of the same class on a held-out garment (None when the cGAN
    lacks the class), each with the critic's probability of the class."""
    from .. import models
    from .generate import generate as generate_pattern, load_generator_file
    from .quality import HELD_OUT_GARMENTS
    from .substrates import substrate_from_picture

    state = read_classic(Path(classic_file))
    network, names, ids, steps = classic_from_state(state, Path(classic_file).name)
    handle = models.load_model(state["config"]["model"])
    cgan = load_generator_file(Path(cgan_file)) if Path(cgan_file).is_file() else None
    substrate = None
    if cgan is not None and (HELD_OUT_GARMENTS / f"{garment}.png").is_file():
        picture = images.decode_image((HELD_OUT_GARMENTS / f"{garment}.png").read_bytes())
        substrate = substrate_from_picture(np.asarray(picture), cgan.size).image

    def probability(picture: np.ndarray, class_id: int) -> float:
        x = images.to_tensor(images.fit_square(picture, handle.input_size), device=handle.device)
        with torch.inference_mode():
            return float(handle.logits(x).softmax(1)[0, class_id])

    rows = []
    for index, (name, class_id) in enumerate(zip(names, ids)):
        made = generate_classic(network, index, samples_per_class, seed=7)
        classic_cells = [(picture, probability(picture, class_id)) for picture in made]
        cgan_cell = None
        if cgan is not None and substrate is not None and name in cgan.class_names:
            pattern = generate_pattern(cgan, substrate, {cgan.class_names.index(name): 1.0})
            cgan_cell = (pattern, probability(pattern, class_id))
        rows.append({"name": name, "classic": classic_cells, "cgan": cgan_cell})
    return {"rows": rows, "steps": steps, "model": handle.name}

"""How well a trained generator restores its classes (the issue's quality report, sec. 4's claim).

For every class of a generator, patterns are painted on ``count`` held-out substrates -- garments
drawn from seeds the trainer never uses -- and scored by

* the training classifier: its mean probability of the target class, on the image as the user sees
  it (colour) and as training showed it (grey, when the run was trained in grey);
* a second network (another bundled net): how often the target class is in its top 5. A pattern that
  also fools a network it was never trained against is more than adversarial noise for one network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import images
from ..models import ModelHandle
from .generate import LoadedGenerator
from .networks import tiled_class_input
from .substrates import substrate_batch, substrate_tensors
from .training import classifier_view

HELD_OUT_SEED = 2_000_000_011  # training draws substrate seeds from seed * 1_000_003 + step * 64 + rank


@dataclass(frozen=True)
class ClassQuality:
    name: str
    class_id: int
    mean_prob: float  # training classifier, colour image
    mean_prob_grey: float  # training classifier, grey image
    top5_rate: float | None  # second network, colour image; None when none was given
    top5_rate_grey: float | None  # second network, grey image
    substrate_prob: float  # the training classifier's mean probability of the class on the bare substrates


def held_out_substrates(count: int, size: int) -> torch.Tensor:
    pictures, _ = substrate_tensors(substrate_batch(count, size, seed=HELD_OUT_SEED, augmented=True))
    return pictures


def as_saved(pictures: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] snapped to what a saved 8-bit PNG holds."""
    return images.to_tensor(images.to_uint8(pictures, value_range=images.SIGNED), value_range=images.SIGNED)


def _probs(handle: ModelHandle, images_pm1: torch.Tensor, *, grayscale: bool) -> torch.Tensor:
    x = classifier_view(handle, images_pm1, grayscale=grayscale)
    with torch.inference_mode():
        return handle.logits(x.to(handle.device)).softmax(1).cpu()


def evaluate(loaded: LoadedGenerator, handle: ModelHandle, second: ModelHandle | None = None, *,
             count: int = 20, seed: int = 0) -> list[ClassQuality]:
    """One :class:`ClassQuality` per class of ``loaded`` (see the module docstring)."""
    substrates = held_out_substrates(count, loaded.size)
    bare = _probs(handle, substrates, grayscale=False)
    results = []
    for index, (name, class_id) in enumerate(zip(loaded.class_names, loaded.class_ids)):
        target = torch.zeros(count, len(loaded.class_names))
        target[:, index] = 1.0
        tiles = tiled_class_input(target, generator=torch.Generator().manual_seed(seed + index),
                                  noise=loaded.class_noise)
        with torch.inference_mode():
            patterns = loaded.generator(substrates, tiles)
        patterns = as_saved(patterns)
        colour = _probs(handle, patterns, grayscale=False)[:, class_id]
        greyed = _probs(handle, patterns, grayscale=True)[:, class_id]
        top5 = top5_grey = None
        if second is not None:
            top5, top5_grey = (float((_probs(second, patterns, grayscale=g).topk(5, dim=1).indices == class_id)
                                     .any(1).float().mean()) for g in (False, True))
        results.append(ClassQuality(name, class_id, float(colour.mean()), float(greyed.mean()), top5, top5_grey,
                                    float(bare[:, class_id].mean())))
    return results


def markdown_table(results: list[ClassQuality], *, model: str, second: str | None, count: int) -> str:
    second = second or "second net"
    head = (f"| class | p(target), {model}, colour | p(target), {model}, grey | {second} top-5 rate, colour | "
            f"{second} top-5 rate, grey | p(target) on the bare substrates |\n|---|---|---|---|---|---|\n")

    def rate(value: float | None) -> str:
        return "—" if value is None else f"{value:.0%}"

    rows = [f"| {r.name} | {r.mean_prob:.3f} | {r.mean_prob_grey:.3f} | {rate(r.top5_rate)} | "
            f"{rate(r.top5_rate_grey)} | {r.substrate_prob:.4f} |" for r in results]

    def mean(field: str) -> float | None:
        values = [getattr(r, field) for r in results]
        return None if None in values else float(np.mean(values))

    rows.append(f"| **mean of {len(results)}** | **{mean('mean_prob'):.3f}** | **{mean('mean_prob_grey'):.3f}** | "
                f"{rate(mean('top5_rate'))} | {rate(mean('top5_rate_grey'))} | {mean('substrate_prob'):.4f} |")
    return head + "\n".join(rows) + "\n"


# -- the issue-15 report: held-out garment shapes, in colour -------------------------------------------

HELD_OUT_GARMENTS = Path(__file__).resolve().parents[2] / "assets" / "patterns" / "held-out-garments"
GOALS = {"change_inside": 0.10, "change_outside": 0.03, "critic_prob": 0.8, "unseen_top5": 0.40}
WHITE = 240  # a substrate pixel at or above this on every channel is background (as an uploaded garment's)


@dataclass(frozen=True)
class GarmentScores:
    """One class of a generator, scored over a folder of garments (means over the garments)."""

    name: str
    class_id: int
    change_inside: float  # mean |pattern - substrate| over the garment's pixels and channels, in [0, 1]
    change_outside: float  # the same over the background (white) pixels
    critic_prob: float  # the generator's own classifier, p(target) on the 8-bit colour pattern
    top5: dict[str, float]  # other network -> share of patterns with the target in its top 5
    bare_prob: float  # the critic's p(target) on the bare garments


@dataclass(frozen=True)
class GarmentReport:
    critic: str
    garments: tuple[str, ...]
    classes: tuple[GarmentScores, ...]

    def mean(self, field: str, network: str | None = None) -> float:
        values = [c.top5[network] if network else getattr(c, field) for c in self.classes]
        return float(np.mean(values))

    def checks(self, unseen: str) -> dict[str, bool]:
        """The issue's goals, on the means over classes."""
        return {"change_inside": self.mean("change_inside") >= GOALS["change_inside"],
                "change_outside": self.mean("change_outside") <= GOALS["change_outside"],
                "critic_prob": self.mean("critic_prob") >= GOALS["critic_prob"],
                "unseen_top5": unseen in self.classes[0].top5 and self.mean("", unseen) >= GOALS["unseen_top5"]}

    def as_dict(self) -> dict:
        return {"critic": self.critic, "garments": list(self.garments), "goals": GOALS,
                "classes": [asdict(c) for c in self.classes],
                "mean": {"change_inside": self.mean("change_inside"), "change_outside": self.mean("change_outside"),
                         "critic_prob": self.mean("critic_prob"), "bare_prob": self.mean("bare_prob"),
                         "top5": {n: self.mean("", n) for n in (self.classes[0].top5 if self.classes else {})}}}


def load_garments(folder: Path, size: int) -> tuple[list[str], np.ndarray]:
    """Every image in ``folder``, squared to ``size`` px (uint8, N x S x S x 3), with its file names;
    a sentence for a missing folder, a file that is not an image, or an empty folder."""
    from .substrates import load_substrate_folder

    substrates = load_substrate_folder(folder, size)
    return [s.garment for s in substrates], np.stack([s.image for s in substrates])


def garment_report(loaded: LoadedGenerator, critic: ModelHandle, others: list[ModelHandle], garments: np.ndarray,
                   names: list[str], *, seed: int = 0, progress=None) -> GarmentReport:
    """Each class alone on every garment (``garments`` uint8 N x S x S x 3, white background), saved to
    8 bits, then scored (see :class:`GarmentScores`). ``progress(fraction, message)`` may be given."""
    from ..progress import report

    substrates = images.to_tensor(garments, value_range=images.SIGNED)
    background = torch.from_numpy((garments >= WHITE).all(axis=3))[:, None].float()
    inside = 1 - background
    bare = _probs(critic, substrates, grayscale=False)
    scores = []
    for index, (name, class_id) in enumerate(zip(loaded.class_names, loaded.class_ids)):
        target = torch.zeros(len(garments), len(loaded.class_names))
        target[:, index] = 1.0
        tiles = tiled_class_input(target, generator=torch.Generator().manual_seed(seed + index),
                                  noise=loaded.class_noise)
        with torch.inference_mode():
            patterns = as_saved(loaded.generator(substrates, tiles))
        change = ((patterns - substrates).abs() / 2).mean(1, keepdim=True)  # [-1, 1] -> [0, 1] units
        change_in = float(((change * inside).sum((1, 2, 3)) / inside.sum((1, 2, 3)).clamp_min(1)).mean())
        change_out = float(((change * background).sum((1, 2, 3)) / background.sum((1, 2, 3)).clamp_min(1)).mean())
        critic_prob = float(_probs(critic, patterns, grayscale=False)[:, class_id].mean())
        top5 = {other.name: float((_probs(other, patterns, grayscale=False).topk(5, dim=1).indices == class_id)
                                  .any(1).float().mean()) for other in others}
        scores.append(GarmentScores(name, class_id, change_in, change_out, critic_prob, top5,
                                    float(bare[:, class_id].mean())))
        report(progress, (index + 1) / len(loaded.class_names), f"{name}: scored on {len(garments)} garments")
    return GarmentReport(critic.name, tuple(names), tuple(scores))


def garment_markdown(report: GarmentReport, unseen: str | None = None) -> str:
    """The report as a Markdown table, with the issue's goals and whether the means meet them."""
    others = list(report.classes[0].top5) if report.classes else []
    head = ("| class | change inside | change outside | p(target), " + report.critic + " | "
            + " | ".join(f"{n} top-5" for n in others) + " | p(target) bare |\n|---" + "|---" * (4 + len(others)) + "|\n")
    rows = [f"| {c.name} | {c.change_inside:.3f} | {c.change_outside:.3f} | {c.critic_prob:.3f} | "
            + " | ".join(f"{c.top5[n]:.0%}" for n in others) + f" | {c.bare_prob:.4f} |" for c in report.classes]
    rows.append(f"| **mean of {len(report.classes)}** | **{report.mean('change_inside'):.3f}** | "
                f"**{report.mean('change_outside'):.3f}** | **{report.mean('critic_prob'):.3f}** | "
                + " | ".join(f"**{report.mean('', n):.0%}**" for n in others) + f" | {report.mean('bare_prob'):.4f} |")
    text = head + "\n".join(rows) + "\n"
    if unseen:
        met = report.checks(unseen)
        goals = [f"change inside >= {GOALS['change_inside']}: {'met' if met['change_inside'] else 'NOT met'}",
                 f"change outside <= {GOALS['change_outside']}: {'met' if met['change_outside'] else 'NOT met'}",
                 f"critic p >= {GOALS['critic_prob']}: {'met' if met['critic_prob'] else 'NOT met'}",
                 f"{unseen} top-5 >= {GOALS['unseen_top5']:.0%}: {'met' if met['unseen_top5'] else 'NOT met'}"]
        text += f"\n_{len(report.garments)} garments; goals (means over classes): " + "; ".join(goals) + "._\n"
    return text


def quality_run(generator_file: str, garments_folder: str | None = None,
                networks: tuple[str, ...] = ("efficientnet_lite1", "efficientnet_lite2"), *, gallery: int = 4,
                progress=None) -> dict:
    """The page's Quality job: :func:`garment_report` of a generator file on a folder of garments (the
    shipped held-out garments by default), with the patterns of the first ``gallery`` garments as one
    picture (rows: garments, then each class) for the page to show."""
    from .. import models
    from .generate import load_generator_file

    loaded = load_generator_file(Path(generator_file))
    critic = models.load_model(loaded.model or models.DEFAULT_MODEL)
    others = [models.load_model(name) for name in networks if name != critic.name]
    names, garments = load_garments(Path(garments_folder) if garments_folder else HELD_OUT_GARMENTS, loaded.size)
    report = garment_report(loaded, critic, others, garments, names, progress=progress)
    shown = garments[:gallery]
    substrates = images.to_tensor(shown, value_range=images.SIGNED)
    rows = [shown]
    for index in range(len(loaded.class_names)):
        target = torch.zeros(len(shown), len(loaded.class_names))
        target[:, index] = 1.0
        tiles = tiled_class_input(target, generator=torch.Generator().manual_seed(index), noise=loaded.class_noise)
        with torch.inference_mode():
            rows.append(images.to_uint8(loaded.generator(substrates, tiles), value_range=images.SIGNED))
    grid = np.concatenate([np.concatenate(list(row), 0) for row in rows], 1)  # garments down, classes across
    return {**report.as_dict(), "gallery": grid, "class_names": list(loaded.class_names), "steps": loaded.steps,
            "markdown": garment_markdown(report, unseen=networks[-1] if networks else None)}

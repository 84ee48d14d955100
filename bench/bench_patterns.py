"""Pattern-generation benchmark (issue 7): generation latency, and a training step against a plain
pix2pix step of the same size in the same run.

    python bench/bench_patterns.py [--quick] [--markdown]
    python bench/bench_patterns.py --quality [--markdown] [--checkpoint PATH]   # a generator's quality report

CPU, torch's default threads, the engine's allocator tuning on; 5 classes, batch 2 for training.

* **generation** -- G's forward for one substrate (inference mode), and the same with the PNG
  encoding the page does; the issue asks for under 50 ms at 256 px.
* **pix2pix step** -- the same G and D, one D step and one G step with the usual pix2pix objective
  (non-saturating GAN + 100 L1 against a target image; the substrate stands in for the target, which
  costs the same). This is the peer: the paper's step is a pix2pix step plus the classifier.
* **ours** -- :meth:`engine.patterns.training.Trainer.step`: the same plus the frozen classifier on
  the whole image resized and on three crops (forward and backward to the image), with the four
  losses of sec. 3. Its floor: the pix2pix step plus those classifier passes, timed alone.

With ``--quality``: the shipped generator (assets/patterns/five-classes.pt), or the run checkpoint or
exported generator given with ``--checkpoint``, on 20 held-out
substrates per class (:mod:`engine.patterns.quality`): the training classifier's mean target
probability, and how often lite1 and lite2 -- never seen in training -- put the class in their top 5.

Timings are never test assertions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import interleaved_medians, machine_description, quick_markdown_args, render  # noqa: E402

from engine import images, models  # noqa: E402
from engine.patterns import losses, networks, training  # noqa: E402
from engine.patterns.substrates import substrate_batch, substrate_tensors  # noqa: E402

CLASSES = (1, 340, 130, 290, 388)  # goldfish, zebra, flamingo, jaguar, giant panda


def generation_rows(repeats: int) -> list[list]:
    rows = []
    for size in (128, 256):
        generator = networks.Generator(len(CLASSES), size=size).eval()
        substrate, _ = substrate_tensors(substrate_batch(1, size, seed=1))
        tiles = networks.tiled_class_input(torch.tensor([[1.0, 0.5, 0, 0, 0]]))

        def forward():
            with torch.inference_mode():
                return generator(substrate, tiles)

        def with_png():
            y = forward()[0]
            return images.to_png_bytes(images.to_uint8(y, value_range=images.SIGNED))

        timings = interleaved_medians({"forward": forward, "png": with_png}, repeats=repeats, warmup=3)
        rows.append([str(size), f"{timings['forward']:.1f}", f"{timings['png']:.1f}"])
    return rows


def pix2pix_step(trainer: training.Trainer):
    images_, _, target, rng = trainer.batch(0)
    tiles = networks.tiled_class_input(target, generator=rng)
    output = trainer.generator(images_, tiles)
    real, fake = trainer.discriminator(images_, images_), trainer.discriminator(images_, output.detach())
    d_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
        F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    trainer.d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    trainer.d_opt.step()
    fake = trainer.discriminator(images_, output)
    g_loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)) + 100 * F.l1_loss(output, images_)
    trainer.g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    trainer.g_opt.step()


def classifier_passes(trainer: training.Trainer):
    images_, _, target, rng = trainer.batch(0)
    x = images_.clone().requires_grad_(True)
    resized = training.class_probabilities(trainer.handle, x, trainer.classes, grayscale=True)
    crops, _ = losses.random_crops(x, count=3, generator=rng)
    probs = training.class_probabilities(trainer.handle, crops.flatten(0, 1), trainer.classes, grayscale=True)
    torch.autograd.grad(resized.sum() + probs.sum(), x)


def training_rows(handle, repeats: int) -> list[list]:
    trainer = training.Trainer(handle, training.TrainConfig(classes=CLASSES, model=handle.name, size=128, batch=2))
    timings = interleaved_medians({
        "pix2pix": lambda: pix2pix_step(trainer),
        "classifier": lambda: classifier_passes(trainer),
        "ours": trainer.step,
    }, repeats=repeats, warmup=2)
    floor = timings["pix2pix"] + timings["classifier"]
    return [["pix2pix step (peer)", f"{timings['pix2pix']:.0f}", "-", "1.00"],
            ["classifier: resized + 3 crops, forward+backward", f"{timings['classifier']:.0f}", "-", "-"],
            ["ours (Trainer.step)", f"{timings['ours']:.0f}", f"x{timings['ours'] / floor:.2f}",
             f"{timings['ours'] / timings['pix2pix']:.2f}"]]


def critic_passes(trainer: training.Trainer):
    """The shipped recipe's classifier work (issue 15): each critic on one random view and one crop,
    forward and backward, in colour; on the draws of the step the trainer takes next, so the random
    view's size matches the step it is compared with."""
    images_, _, target, rng = trainer.batch(trainer.steps_done)
    x = images_.clone().requires_grad_(True)
    total = 0
    for critic in trainer.critics:
        total = total + trainer.critic_probabilities(critic, x, rng).sum()
        crops, _ = losses.random_crops(x, count=trainer.config.crops, generator=rng)
        total = total + training.class_probabilities(critic, crops.flatten(0, 1), trainer.classes, grayscale=False).sum()
    torch.autograd.grad(total, x)


def ensemble_rows(handle, repeats: int) -> list[list]:
    """A step of the shipped generator's recipe (two critics, random views, batch 1, 1 crop) against its floor."""
    config = training.TrainConfig(classes=CLASSES + (281,), model=handle.name, size=128, batch=1, grayscale=False,
                                  critics=("efficientnet_lite1",), eot=True, shapes="varied", crops=1,
                                  class_noise=False)
    trainer = training.Trainer(handle, config)
    timings = interleaved_medians({
        "pix2pix": lambda: pix2pix_step(trainer),
        "critics": lambda: critic_passes(trainer),
        "ours": trainer.step,
    }, repeats=repeats, warmup=2)
    floor = timings["pix2pix"] + timings["critics"]
    return [["pix2pix step (peer)", f"{timings['pix2pix']:.0f}", "-", "1.00"],
            ["critics: lite0 + lite1, one random view + 1 crop each, forward+backward", f"{timings['critics']:.0f}",
             "-", "-"],
            ["ours (Trainer.step, the shipped recipe)", f"{timings['ours']:.0f}", f"x{timings['ours'] / floor:.2f}",
             f"{timings['ours'] / timings['pix2pix']:.2f}"]]


def quality_report(path: Path | None = None, count: int = 20) -> None:
    from engine.patterns import generate, quality

    path = (path or generate.SHIPPED).resolve()
    loaded = generate.load_generator_file(path)
    handle = models.load_model(loaded.model, device="cpu")
    print(f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: "
          f"{loaded.size} px, {loaded.steps} steps against {loaded.model}; {count} held-out substrates per class")
    for second in ("efficientnet_lite1", "efficientnet_lite2"):
        results = quality.evaluate(loaded, handle, models.load_model(second, device="cpu"), count=count)
        print(quality.markdown_table(results, model=loaded.model, second=second, count=count))


def main(argv=None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if "--quality" in argv:
        at = argv.index("--checkpoint") + 1 if "--checkpoint" in argv else None
        quality_report(Path(argv[at]) if at is not None and at < len(argv) else None)
        return
    args = quick_markdown_args(__doc__, argv)
    handle = models.load_model("efficientnet_lite0", device="cpu")
    print(machine_description())
    print(render(("Generation latency (5 classes, batch 1)", ["size (px)", "G forward ms", "with PNG encoding ms"],
                  generation_rows(5 if args.quick else 20), []), args.markdown))
    print(render(("A training step at 128 px, batch 2, against pix2pix (same G and D)",
                  ["step", "ms", "x floor (pix2pix + classifier)", "ours / pix2pix"],
                  training_rows(handle, 3 if args.quick else 10),
                  ["floor: the pix2pix step plus the classifier passes, each timed alone in the same run"]),
                 args.markdown))
    print(render(("A step of the shipped recipe (issue 15): 128 px, batch 1, two critics, random views",
                  ["step", "ms", "x floor (pix2pix + critics)", "ours / pix2pix"],
                  ensemble_rows(handle, 3 if args.quick else 10),
                  ["floor: the pix2pix step plus both critics' passes, each timed alone in the same run, on the "
                   "same steps' draws (the random view's size varies from step to step)"]), args.markdown))


if __name__ == "__main__":
    main()

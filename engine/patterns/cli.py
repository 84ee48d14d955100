"""``python -m engine patterns train``: the trainer from the command line, alone or under torchrun.

    python -m engine patterns train --classes goldfish zebra flamingo jaguar "giant panda" \\
        --steps 2000 --size 128 --out runs/five [--resume]
    torchrun --nproc_per_node 2 -m engine patterns train ... (DistributedDataParallel; gloo on CPU)

Writes the run folder described in :mod:`engine.patterns.runs` (checkpoint.pt, log.csv, samples/,
config.json); ``export`` writes the generator alone, the small file the page generates from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import models
from ..errors import ConfigError
from . import training
from .losses import PatternLossWeights


def add_parser(commands) -> None:
    p = commands.add_parser("patterns", help="pattern generation (Chaplygin & Chacksfield): train the cGAN")
    sub = p.add_subparsers(dest="patterns_command", required=True)
    t = sub.add_parser("train", help="train the generator against a frozen classifier")
    t.add_argument("--classes", nargs="+", required=True, help="class ids or names, e.g. goldfish zebra")
    t.add_argument("--steps", type=int, required=True, help="train until this many steps in total")
    t.add_argument("--size", type=int, default=128, help="image side, a power of two (the paper: 512)")
    t.add_argument("--batch", type=int, default=2, help="substrates per step (the paper: 1-3)")
    t.add_argument("--model", default=None,
                   help="the classifier; default: VGG16, the paper's, when its weights are on this machine, else the "
                        "bundled model (on --resume: the checkpoint's)")
    t.add_argument("--color", action="store_true", help="show the classifier colour images (default: grey, sec. 4)")
    t.add_argument("--lr", type=float, default=2e-4, help="Adam's learning rate for G and D (the paper: 0.0002)")
    t.add_argument("--weights", default="3,10,50,150", metavar="CGAN,MASK,CLASSIFIER,SUBSTRATE",
                   help="the loss weights (the paper: 3,10,50,150; its classifier loss is L_VGG)")
    t.add_argument("--base", type=int, default=32, help="channels of G's first layer (doubling down to 8x8)")
    t.add_argument("--no-class-noise", action="store_true",
                   help="constant class tiles instead of the paper's zero-mean draw (learns class patterns in far "
                        "fewer steps; see engine/patterns/networks.py)")
    t.add_argument("--gradcam-mask", action="store_true",
                   help="relax the substrate loss where Grad-CAM sees the class (the extension at the end of sec. 4)")
    t.add_argument("--substrates", metavar="FOLDER",
                   help="train on your own garment images (white background) instead of generated garments")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--sample-every", type=int, default=200)
    t.add_argument("--checkpoint-every", type=int, default=200)
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    t.add_argument("--out", required=True)
    t.set_defaults(run=cmd_train)
    e = sub.add_parser("export", help="write the generator alone from a training checkpoint (a small file to ship)")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    e.add_argument("--out", required=True, help="the .pt file to write")
    e.set_defaults(run=cmd_export)


def parse_weights(text: str) -> PatternLossWeights:
    """"3,10,50,150" -> the four loss weights, or a ConfigError sentence."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"The loss weights are four numbers, cGAN, mask, classifier, substrate (the paper: "
                          f"3, 10, 50, 150); got '{text}'.")
    return PatternLossWeights(*values)


def cmd_export(args: argparse.Namespace) -> int:
    state = training.read_checkpoint(Path(args.checkpoint))
    handle = models.load_model(state["config"]["model"])
    trainer = training.Trainer(handle, training.config_from_state(state))
    trainer.load(Path(args.checkpoint))
    trainer.export_generator(Path(args.out))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.1f} MB): the generator for {', '.join(state['class_names'])}, "
          f"{state['steps']} steps")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..jobs import tqdm_progress
    from .runs import train_run

    from .. import distributed as ranks

    distributed = ranks.init_from_env()
    try:
        model = args.model
        checkpoint = Path(args.out) / "checkpoint.pt"
        if model is None and args.resume and checkpoint.is_file():
            model = training.read_checkpoint(checkpoint)["config"]["model"]
        handle = models.load_model(model or training.default_classifier())
        classes = tuple(handle.class_index(c) for c in args.classes)
        config = training.TrainConfig(classes=classes, model=handle.name, size=args.size, batch=args.batch,
                                      grayscale=not args.color, seed=args.seed, lr=args.lr, base=args.base,
                                      weights=parse_weights(args.weights), gradcam_mask=args.gradcam_mask,
                                      class_noise=not args.no_class_noise,
                                      substrates=str(Path(args.substrates).resolve()) if args.substrates else None)
        lead = ranks.is_lead()
        with tqdm_progress("train", disable=not lead) as progress:
            outcome = train_run(args.out, config, args.steps, resume=args.resume, sample_every=args.sample_every,
                                checkpoint_every=args.checkpoint_every, distributed=distributed, progress=progress)
        if lead:
            out = Path(args.out)
            print(f"trained to step {outcome.steps}; wrote {out / 'checkpoint.pt'}, {out / 'log.csv'} and samples "
                  f"in {out / 'samples'}")
    finally:
        ranks.shutdown()
    return 0

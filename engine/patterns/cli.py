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
    t.add_argument("--weights", default=None, metavar="CGAN,MASK,CLASSIFIER,SUBSTRATE[,COLOUR]",
                   help="the loss weights (default and the paper: 3,10,50,150; its classifier loss is L_VGG); with "
                        "--resume, the run continues with these weights instead of its own")
    t.add_argument("--base", type=int, default=32, help="channels of G's first layer (doubling down to 8x8)")
    t.add_argument("--no-class-noise", action="store_true",
                   help="constant class tiles instead of the paper's zero-mean draw (learns class patterns in far "
                        "fewer steps; see engine/patterns/networks.py)")
    t.add_argument("--gradcam-mask", action="store_true",
                   help="relax the substrate loss where Grad-CAM sees the class (the extension at the end of sec. 4)")
    t.add_argument("--substrates", metavar="FOLDER",
                   help="train on your own garment images (white background) instead of generated garments")
    t.add_argument("--critics", nargs="*", default=(), metavar="MODEL",
                   help="more frozen classifiers; the classifier loss is averaged over --model and these (an ensemble)")
    t.add_argument("--eot", action="store_true",
                   help="each critic sees a randomly zoomed, shifted, flipped and recoloured view (expectation over "
                        "transformation): patterns that hold up beyond one view of one network")
    t.add_argument("--shapes", choices=training.SHAPES, default="garments",
                   help="generated substrates: the eight garment outlines, or 'varied' (also random shapes, sizes, "
                        "places and shading)")
    t.add_argument("--crops", type=int, default=3, help="random crops for the negative classes (the paper: 3)")
    t.add_argument("--init", metavar="GENERATOR",
                   help="start G from this generator file or checkpoint (every tensor that fits), or 'shipped'")
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
    k = sub.add_parser("classic", help="the paper's Fig. 2: a classic GAN from noise (no substrate), same classifier term")
    k.add_argument("--classes", nargs="+", required=True, help="class ids or names")
    k.add_argument("--steps", type=int, required=True, help="train until this many steps in total")
    k.add_argument("--model", default=None, help="the classifier (default: the bundled model)")
    k.add_argument("--batch", type=int, default=1)
    k.add_argument("--size", type=int, default=128)
    k.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    k.add_argument("--export", metavar="PT", help="after training, write the generator alone here")
    k.add_argument("--out", required=True)
    k.set_defaults(run=cmd_classic)
    g = sub.add_parser("generate", help="paint one to three classes onto a garment photo with a trained generator")
    g.add_argument("--checkpoint", required=True, help="a generator file or run checkpoint, or 'shipped'")
    g.add_argument("--substrate", required=True, metavar="IMG", help="the garment photo (on white), any size")
    g.add_argument("--classes", nargs="+", required=True, metavar="NAME[:WEIGHT]",
                   help="one to three of the generator's classes (name or ImageNet id), each with an optional weight")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, metavar="PNG")
    g.set_defaults(run=cmd_generate)
    c = sub.add_parser("classes", help="list a generator's classes")
    c.add_argument("--checkpoint", required=True, help="a generator file or run checkpoint, or 'shipped'")
    c.add_argument("--json", action="store_true", help='print {"classes": [{"id", "name"}, ...]}')
    c.set_defaults(run=cmd_classes)
    q = sub.add_parser("quality", help="score a generator on a folder of garments (change, critic p, other nets' top-5)")
    q.add_argument("--checkpoint", required=True, help="a generator file or run checkpoint, or 'shipped'")
    q.add_argument("--garments", default=None, metavar="FOLDER",
                   help="garment images on white (default: the shipped held-out garments)")
    q.add_argument("--networks", nargs="*", default=["efficientnet_lite1", "efficientnet_lite2"], metavar="MODEL",
                   help="other networks whose top-5 is reported")
    q.add_argument("--unseen", default="efficientnet_lite2",
                   help="the network never used in training, whose top-5 rate the goal is about")
    q.add_argument("--json", action="store_true", help="print the report as JSON instead of a Markdown table")
    q.set_defaults(run=cmd_quality)


def parse_weights(text: str) -> PatternLossWeights:
    """"3,10,50,150" -> the four loss weights (a fifth, optional: the colour term), or a ConfigError sentence."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (4, 5):
        raise ConfigError(f"The loss weights are four numbers, cGAN, mask, classifier, substrate (the paper: "
                          f"3, 10, 50, 150), and optionally a fifth for the colour term; got '{text}'.")
    return PatternLossWeights(*values)


def cmd_export(args: argparse.Namespace) -> int:
    state = training.read_checkpoint(Path(args.checkpoint))
    if state.get("kind") == "classic-gan":  # Fig. 2's classic GAN: its generator alone, the same way
        training.write_checkpoint({k: v for k, v in state.items() if k not in ("discriminator", "g_opt", "d_opt")},
                                  Path(args.out))
        print(f"wrote {args.out}: the classic GAN's generator, {state['steps']} steps")
        return 0
    handle = models.load_model(state["config"]["model"])
    trainer = training.Trainer(handle, training.config_from_state(state), warm=False)
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
                                      weights=parse_weights(args.weights or "3,10,50,150"),
                                      gradcam_mask=args.gradcam_mask,
                                      class_noise=not args.no_class_noise, critics=tuple(args.critics),
                                      eot=args.eot, shapes=args.shapes, crops=args.crops,
                                      init=str(generator_path(args.init).resolve()) if args.init else None,
                                      substrates=str(Path(args.substrates).resolve()) if args.substrates else None)
        lead = ranks.is_lead()
        with tqdm_progress("train", disable=not lead) as progress:
            outcome = train_run(args.out, config, args.steps, resume=args.resume, sample_every=args.sample_every,
                                checkpoint_every=args.checkpoint_every, distributed=distributed, progress=progress,
                                weights=parse_weights(args.weights) if args.resume and args.weights else None)
        if lead:
            out = Path(args.out)
            print(f"trained to step {outcome.steps}; wrote {out / 'checkpoint.pt'}, {out / 'log.csv'} and samples "
                  f"in {out / 'samples'}")
    finally:
        ranks.shutdown()
    return 0


def generator_path(text: str) -> Path:
    """``shipped`` or a path, as a path (a sentence when there is no file)."""
    from .generate import SHIPPED

    path = SHIPPED if text == "shipped" else Path(text)
    if not path.is_file():
        from ..errors import CheckpointError

        raise CheckpointError(f"There is no generator file at {path}.")
    return path


def parse_class_weights(loaded, items: list[str]) -> dict[int, float]:
    """["zebra", "tabby:0.5"] -> {index in the generator's class list: weight}, or a sentence."""
    weights: dict[int, float] = {}
    for item in items:
        name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise ConfigError(f"'{item}': the weight after ':' must be a number, e.g. zebra:0.5.") from None
        if not 0 < value <= 1:
            raise ConfigError(f"'{item}': a class's weight is above 0 and at most 1.")
        index = class_position(loaded, name)
        if index in weights:
            raise ConfigError(f"'{name}' is given twice.")
        weights[index] = value
    if not 1 <= len(weights) <= 3:
        raise ConfigError(f"Mix one to three classes; got {len(weights)}.")
    return weights


def class_position(loaded, name: str) -> int:
    key = name.strip().lower()
    for index, (class_name, class_id) in enumerate(zip(loaded.class_names, loaded.class_ids)):
        if key in (class_name.lower(), str(class_id)):
            return index
    raise ConfigError(f"This generator has no class '{name}'; it paints {', '.join(loaded.class_names)}.")


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import images
    from ..__main__ import read_image
    from .generate import generate, load_generator_file
    from .substrates import substrate_from_picture

    loaded = load_generator_file(generator_path(args.checkpoint))
    weights = parse_class_weights(loaded, args.classes)
    picture = read_image(args.substrate)  # a file, or a bundled sample's name
    substrate = substrate_from_picture(np.asarray(picture), loaded.size)
    pattern = generate(loaded, substrate.image, weights, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(images.to_png_bytes(pattern))
    mix = ", ".join(f"{loaded.class_names[i]} {w:g}" for i, w in weights.items())
    print(f"wrote {out} ({loaded.size} px): {mix}")
    return 0


def cmd_classes(args: argparse.Namespace) -> int:
    import json

    from .generate import load_generator_file

    loaded = load_generator_file(generator_path(args.checkpoint))
    classes = [{"id": int(i), "name": n} for i, n in zip(loaded.class_ids, loaded.class_names)]
    if args.json:
        print(json.dumps({"classes": classes}))
    else:
        for c in classes:
            print(f"{c['id']}\t{c['name']}")
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    import json

    from .generate import load_generator_file
    from .quality import HELD_OUT_GARMENTS, garment_markdown, garment_report, load_garments

    loaded = load_generator_file(generator_path(args.checkpoint))
    critic = models.load_model(loaded.model or models.DEFAULT_MODEL)
    others = [models.load_model(name) for name in args.networks if name != critic.name]
    names, garments = load_garments(Path(args.garments) if args.garments else HELD_OUT_GARMENTS, loaded.size)
    report = garment_report(loaded, critic, others, garments, names)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(garment_markdown(report, unseen=args.unseen))
    return 0


def cmd_classic(args: argparse.Namespace) -> int:
    from ..jobs import tqdm_progress
    from . import classic

    handle = models.load_model(args.model or models.DEFAULT_MODEL)
    config = classic.ClassicConfig(classes=tuple(handle.class_index(c) for c in args.classes), model=handle.name,
                                   batch=args.batch, size=args.size)
    with tqdm_progress("classic GAN") as progress:
        trainer = classic.train_classic(Path(args.out), config, args.steps, handle, resume=args.resume,
                                        progress=progress)
    if args.export:
        training.write_checkpoint(trainer.state(full=False), Path(args.export))
    print(f"trained to step {trainer.steps_done}; wrote {Path(args.out) / 'checkpoint.pt'}"
          + (f" and {args.export}" if args.export else ""))
    return 0

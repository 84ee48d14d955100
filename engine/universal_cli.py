"""``python -m engine uap`` and ``python -m engine transfer``: universal perturbations headless.

    python -m engine uap --model M --set DIR|bundled --xi 10 --norm inf [--heldout DIR|heldout]
                         [--method deepfool|sgd] --out DIR      # uap.npy, uap.png, report.json
    python -m engine transfer --models A B C --set DIR|bundled [--heldout DIR|heldout]
                              [--kind universal|per-image] --json

SET is ``bundled`` (the 20 photos that ship), ``heldout`` (photos that are not bundled), ``crops``,
a folder of images or a ZIP of images. Without ``--heldout`` the set is split at random: the larger
half trains the perturbation, the other half measures it (the report says which).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import io, models
from .errors import ConfigError


def add_parser(commands) -> None:
    from .universal import METHODS, NORMS, UniversalConfig

    defaults = UniversalConfig()

    def settings(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="set", required=True,
                       help="training images: bundled, heldout, crops, a folder of images or a .zip of images")
        p.add_argument("--heldout", help="images to measure on (default: a random half of --set, held out)")
        p.add_argument("--xi", type=float, default=defaults.xi,
                       help=f"radius in 8-bit levels (L-inf: per pixel, 10 = 10/255; L2: the norm) "
                            f"(default {defaults.xi:g})")
        p.add_argument("--norm", choices=NORMS, default=defaults.norm)
        p.add_argument("--method", choices=list(METHODS), default=defaults.method,
                       help="deepfool: the paper's Algorithm 1; sgd: minibatch ascent over augmented images")
        p.add_argument("--target", type=float, default=defaults.target,
                       help=f"deepfool: stop at this training fooling rate, 1 - delta (default {defaults.target})")
        p.add_argument("--passes", type=int, default=defaults.max_passes,
                       help=f"deepfool: passes over the training images at most (default {defaults.max_passes})")
        p.add_argument("--steps", type=int, default=defaults.steps,
                       help=f"sgd: minibatch steps (default {defaults.steps})")
        p.add_argument("--seed", type=int, default=defaults.seed)

    p = commands.add_parser("uap", help="a universal adversarial perturbation (Moosavi-Dezfooli et al. 2017): "
                                        "uap.npy, uap.png and report.json")
    p.add_argument("--model", default=models.DEFAULT_MODEL, help=f"model name (default {models.DEFAULT_MODEL})")
    settings(p)
    p.add_argument("--out", required=True, help="folder for uap.npy, uap.png and report.json")
    p.set_defaults(run=cmd_uap)

    p = commands.add_parser("transfer", help="how perturbations made on one model fool others: a table "
                                             "(rows: source, columns: target)")
    p.add_argument("--models", nargs="+", help="models (default: the installed EfficientNet-Lites and the "
                                               "torchvision nets whose weights are on this machine)")
    settings(p)
    p.add_argument("--kind", choices=["universal", "per-image"], default="universal",
                   help="universal: one perturbation per source model, trained on --set, measured on --heldout (or "
                        "the other half of --set); per-image: each image of --heldout (or --set) attacked on the "
                        "source with PGD")
    p.add_argument("--epsilon", type=int, default=10, help="per-image: the L-inf budget in levels (default 10)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(run=cmd_transfer)


def config_from(args: argparse.Namespace):
    from .universal import UniversalConfig

    config = UniversalConfig(xi=args.xi, norm=args.norm, method=args.method, target=args.target,
                             max_passes=args.passes, steps=args.steps, seed=args.seed)
    config.check()
    return config


def perturbation_png(perturbation: np.ndarray) -> bytes:
    """The perturbation made visible: mid-grey is zero, scaled so its largest value reaches black or
    white. ``perturbation`` is H x W x 3 in [0, 1] units."""
    from .images import to_png_bytes

    peak = float(np.abs(perturbation).max())
    visible = 0.5 + perturbation / (2 * peak) if peak > 0 else np.full_like(perturbation, 0.5)
    return to_png_bytes(np.clip(np.round(visible * 255), 0, 255).astype(np.uint8))


def report_record(result) -> dict:
    """report.json: the issue's keys first, then how it was made and what it did per image."""
    return {
        "model": result.model, "method": result.config["method"], "xi": result.config["xi"],
        "norm": result.config["norm"], "fooling_rate_train": round(result.fooling_rate_train, 6),
        "fooling_rate_heldout": round(result.fooling_rate_heldout, 6),
        "dominant_labels": [{"class_id": d.class_id, "name": d.name, "count": d.count} for d in result.dominant],
        "seconds": round(result.seconds, 3), "train_set": result.train_set, "heldout_set": result.heldout_set,
        "split": result.split, "train_images": len(result.train_indices), "heldout_images": len(result.heldout_indices),
        "norm_levels": round(result.norm_levels, 4), "pass_fooling_train": [round(r, 6) for r in result.pass_fooling],
        "passes": result.passes, "updates": result.updates, "config": result.config,
        "heldout": [{"image": name, "clean": int(c), "attacked": int(a)}
                    for name, c, a in zip(result.heldout_labels, result.heldout_clean, result.heldout_attacked)],
    }


def _sets(args: argparse.Namespace, size: int):
    from . import imagesets

    train = imagesets.open_set(args.set, size=size)
    heldout = imagesets.open_set(args.heldout, size=size) if args.heldout else None
    return train, heldout


def cmd_uap(args: argparse.Namespace) -> int:
    from . import universal
    from .jobs import tqdm_progress

    config = config_from(args)
    handle = models.load_model(args.model)
    train, heldout = _sets(args, handle.input_size)
    if heldout is None:
        universal.split_indices(len(train), config.seed)  # the sentence before the model's work starts
    with tqdm_progress("universal perturbation") as progress:
        result = universal.universal_perturbation(handle, train, heldout, config, progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(out / "uap.npy") as path:
        with open(path, "wb") as file:
            np.save(file, result.image)
    io.write_bytes_atomic(out / "uap.png", perturbation_png(result.image))
    record = report_record(result)
    io.write_json_atomic(out / "report.json", record)
    print(f"{result.model}, {result.split}: fooling rate {result.fooling_rate_train:.0%} on the training images, "
          f"{result.fooling_rate_heldout:.0%} held out ({result.seconds:.1f} s); files in {out}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from . import universal
    from .jobs import tqdm_progress

    config = config_from(args)
    names = args.models or universal.default_transfer_models()
    if not names:
        raise ConfigError("No model is available for the table; name some with --models.")
    largest = max(models.model_spec(name).input_size for name in names)
    train, heldout = _sets(args, largest)  # each model sees them fitted to its own size
    train_indices = eval_indices = None
    if args.kind == "universal" and heldout is None:  # a random half trains, the other half measures
        train_indices, eval_indices = universal.split_indices(len(train), config.seed)
    eval_set = heldout if heldout is not None else train
    with tqdm_progress(f"transfer ({args.kind})", disable=args.json) as progress:
        result = universal.transfer_matrix(names, train, eval_set, kind=args.kind, config=config,
                                           epsilon=args.epsilon, train_indices=train_indices,
                                           eval_indices=eval_indices, progress=progress)
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
        return 0
    width = max(len(n) for n in result.cols) + 2
    print(f"{result.kind} perturbations, fooling rate on {result.eval_count} images of {result.eval_set} "
          f"(rows: made on, columns: tested on)")
    print(" " * width + "".join(f"{c:>{width}}" for c in result.cols))
    for name, row in zip(result.rows, result.fooling_rate):
        print(f"{name:<{width}}" + "".join(f"{v:>{width}.0%}" for v in row))
    return 0

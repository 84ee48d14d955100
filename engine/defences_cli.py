"""``python -m engine defend`` and ``python -m engine detect``: the attacks lab's defences headless.

    python -m engine defend --transform jpeg:75 --attack pgd --set bundled [--model M] [--epsilon 8]
                            [--steps N] [--eot 8] [--limit N] [--json]
    python -m engine detect --set bundled [--model M] [--augmentations 3] [--limit N] [--json]

``defend`` prints the attack success without the defence, against it naively (adversarials made on
the bare model) and adaptively (BPDA / EOT through the transform); only the adaptive number says
what the defence is worth. ``detect`` runs Robinson & Graham's sec. 4 SVM detector and the attack
that knows it. SET is ``bundled``, ``heldout``, ``crops``, a folder of images or a .zip of images.
"""

from __future__ import annotations

import argparse
import json

from . import models


def add_parser(commands) -> None:
    from .lab import SET_METHODS

    p = commands.add_parser("defend", help="input-transform defences (JPEG, bit depth, median, random resize): "
                                           "attack success undefended, naive and adaptive (BPDA/EOT)")
    p.add_argument("--transform", required=True,
                   help="jpeg:Q, bits:B, median:K or resize:R, or several joined by '+' (jpeg:75+resize:20)")
    p.add_argument("--attack", default="pgd", choices=list(SET_METHODS),
                   help="; ".join(f"{key}: {label}" for key, label in SET_METHODS.items()))
    p.add_argument("--set", dest="set", required=True, help="bundled, heldout, crops, a folder or a .zip of images")
    p.add_argument("--model", default=models.DEFAULT_MODEL, help=f"model name (default {models.DEFAULT_MODEL})")
    p.add_argument("--epsilon", type=int, default=8, help="L-inf radius in 8-bit levels (default 8)")
    p.add_argument("--steps", type=int, help="attack steps (default: the method's own; pgd 10)")
    p.add_argument("--eot", type=int, default=8, help="random draws per step for a random transform (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation's random draws")
    p.add_argument("--limit", type=int, help="use only the set's first N images")
    p.add_argument("--no-cache", action="store_true", help="recompute even when a cached result exists")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_defend)

    p = commands.add_parser("detect", help="Robinson & Graham sec. 4: an RBF SVM on features tells relabelled from "
                                           "clean images; then an attack that knows the SVM")
    p.add_argument("--set", dest="set", required=True, help="bundled, heldout, crops, a folder or a .zip of images")
    p.add_argument("--model", default=models.DEFAULT_MODEL, help=f"model name (default {models.DEFAULT_MODEL})")
    p.add_argument("--augmentations", type=int, default=3, help="versions of each photo: itself, mirror, crops")
    p.add_argument("--target", help="one target class for every photo, as in the paper (default: a random one each)")
    p.add_argument("--splits", type=int, default=10, help="random train/test splits by photo (default 10)")
    p.add_argument("--limit", type=int, help="use only the set's first N photos")
    p.add_argument("--no-cache", action="store_true", help="recompute even when a cached result exists")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    p.set_defaults(run=cmd_detect)


def _set(args: argparse.Namespace, handle):
    from . import imagesets

    return imagesets.open_set(args.set, size=handle.input_size)


def cmd_defend(args: argparse.Namespace) -> int:
    from . import defences
    from .jobs import tqdm_progress

    handle = models.load_model(args.model)
    config = defences.DefenceConfig(transform=args.transform, attack=args.attack, epsilon=args.epsilon,
                                    steps=args.steps, eot_samples=args.eot, seed=args.seed)
    config.check()  # a bad transform is reported before the set is built
    imageset = _set(args, handle)
    with tqdm_progress(f"defend {args.transform}", disable=args.json) as progress:
        result = defences.defend_set(handle, imageset, config, limit=args.limit, progress=progress,
                                     use_cache=not args.no_cache)
    record = result.to_json()
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{result.transform_label} ({result.transform}) against {result.attack}, eps {result.epsilon} levels, "
          f"{result.steps} steps, on {result.n} images of {result.set_name} ({result.model})")
    print(f"  clean top-1 kept by the transform   {100 * result.clean_agreement:6.1f} %")
    print(f"  attack success, no defence          {100 * result.undefended:6.1f} %")
    print(f"  attack success, naive               {100 * result.naive:6.1f} %")
    print(f"  attack success, adaptive ({result.method:<8}) {100 * result.adaptive:6.1f} %")
    print(result.note)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from . import defences
    from .jobs import tqdm_progress

    handle = models.load_model(args.model)
    target = handle.class_index(args.target) if args.target is not None else None
    config = defences.DetectionConfig(augmentations=args.augmentations, target=target, splits=args.splits)
    config.check()
    imageset = _set(args, handle)
    with tqdm_progress("detect", disable=args.json) as progress:
        result = defences.detect_set(handle, imageset, config, limit=args.limit, progress=progress,
                                     use_cache=not args.no_cache)
    record = result.to_json()
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{result.pairs} relabelled/clean pairs from {result.photos} photos of {result.set_name} ({result.model}); "
          f"relabelled {100 * result.relabel_success:.0f} % under the cap, "
          f"mean distortion {result.mean_distortion:.5f}")
    print(f"  detector test accuracy   {100 * result.accuracy:5.1f} % ± {100 * result.accuracy_std:.1f} over "
          f"{len(result.split_accuracies)} splits   (paper: {100 * result.paper_accuracy:.1f} %)")
    print(f"  detector-aware attack    {100 * result.adaptive_relabelled:5.1f} % relabelled, "
          f"{100 * result.adaptive_detection:.1f} % still flagged, accuracy {100 * result.adaptive_accuracy:.1f} %")
    print(result.note)
    for difference in result.differences:
        print(f"  - {difference}")
    return 0

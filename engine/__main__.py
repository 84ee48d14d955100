"""Command line: ``python -m engine <command>`` runs the experiments headless.

    python -m engine classify IMAGE [--model NAME] [--top K] [--json]
    python -m engine saliency IMAGE --method KEY [--class ID] [--layer NAME] [--model NAME] --out DIR
    python -m engine relabel IMAGE --target ID|NAME [--method KEY] --out DIR
    python -m engine invert IMAGE --target ID|NAME [--preset NAME] [--weights c,s,tv,col] [--mask PNG]
                            [--jitter 16] [--optimizer lbfgs|adam|gd] [--features LAYER] --out DIR
    python -m engine dissect --model M --layer L --concepts bundled|PATH [--n 2000] --out DIR
    python -m engine patterns train --classes goldfish zebra --steps N [--size 128] --out DIR [--resume]
    python -m engine patterns generate|classes|quality|classic|export ...   (see engine/patterns/cli.py)
    python -m engine minds-eye train|export|evaluate|attack|render ...   (see engine/minds_eye/cli.py)
    python -m engine anatomy filters|activations|patches|tour|neighbours|embed|back|features ... (engine/anatomy_cli.py)
    python -m engine methods [--json]     # the saliency and attack registries: the KEYs above
    python -m engine models

IMAGE is a file path or the name of a bundled sample (chelsea, coffee, ...). Later demo issues add
their own subcommands through :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from . import classify, images, models
from .errors import GlassboxError, ImageError


def read_image(source: str):
    """A decoded image from a path, or from a sample name when no such file exists."""
    path = Path(source)
    if path.is_file():
        return images.decode_image(path.read_bytes())
    if source in images.list_samples():
        return images.load_sample(source)
    raise ImageError(f"'{source}' is neither a file nor a sample ({', '.join(images.list_samples())}).")


def cmd_classify(args: argparse.Namespace) -> int:
    handle = models.load_model(args.model)
    prediction = classify.classify_image(handle, read_image(args.image), top_k=args.top)
    if args.json:
        print(json.dumps({"image": args.image, **asdict(prediction)}, indent=2))
        return 0
    print(f"{args.image} · {handle.spec.label} · {models.describe_device(handle.device)}")
    for rank, (index, label, prob) in enumerate(zip(prediction.indices, prediction.labels, prediction.probs), 1):
        print(f"{rank:>3}. {label:<32} {100 * prob:6.2f} %   (class {index})")
    return 0


def cmd_saliency(args: argparse.Namespace) -> int:
    from . import io, plots, saliency
    from .jobs import tqdm_progress

    handle = models.load_model(args.model)
    image = read_image(args.image)
    view = classify.model_view(handle, image)
    target = handle.class_index(args.class_) if args.class_ is not None else None
    if args.layer and not saliency.method_class(args.method).uses_layer:
        raise GlassboxError(f"--layer only applies to the CAM methods, not to {args.method}.")
    config = saliency.config_from(args.method, {"layer": args.layer}) if args.layer else None
    with tqdm_progress(args.method) as progress:
        result = saliency.explain(handle, images.to_tensor(view, device=handle.device), args.method, target,
                                  config, progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = saliency.file_stem(result, Path(args.image).name)
    drawn = plots.display_map(result.saliency, signed=result.signed)
    (zmin, zmax), = plots.colour_range([drawn], signed=result.signed, shared=False)
    scale = plots.SIGNED_SCALE if result.signed else plots.UNSIGNED_SCALE
    overlay = plots.overlay_rgb(view, drawn, zmin=zmin, zmax=zmax, opacity=0.5, scale=scale)
    digest = images.image_digest(Path(args.image).read_bytes() if Path(args.image).is_file() else images.sample_bytes(args.image))
    record = saliency.manifest(result, handle, image_sha256=digest, image_name=args.image)
    files = {f"{stem}.png": images.to_png_bytes(overlay), f"{stem}.npy": saliency.npy_bytes(result.saliency),
             f"{stem}.json": io.manifest_json(record).encode()}
    for name, data in files.items():
        io.write_bytes_atomic(out / name, data)
    print(f"{result.label} for '{result.target_label}' (class {result.target}) in {result.seconds:.2f} s")
    for name in files:
        print(f"  wrote {out / name}")
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    from . import attacks, io, relabel
    from .jobs import tqdm_progress

    handle = models.load_model(args.model)
    attack = attacks.get_attack(args.method)
    if attack.needs_target and args.target is None:
        raise GlassboxError(f"{attack.label} needs a --target class (an id or a name such as 'half track').")
    if args.image == "gaussian":  # sec. 3.2: image synthesis from noise
        x, digest = relabel.gaussian_start(handle.input_size, seed=0).to(handle.device), None
    else:
        x = images.to_tensor(classify.model_view(handle, read_image(args.image)), device=handle.device)
        path = Path(args.image)
        digest = images.image_digest(path.read_bytes() if path.is_file() else images.sample_bytes(args.image))
    config = attack.make_config(cap=args.cap, max_steps=args.steps, epsilon=args.epsilon)
    with tqdm_progress(attack.key) as progress:
        result = attack.run(handle, x, args.target, config, progress)
    out = Path(args.out)
    stem = f"{Path(args.image).stem}_{attack.key}"
    io.write_bytes_atomic(out / f"{stem}.png", images.to_png_bytes(result.image))
    io.write_json_atomic(out / f"{stem}_steps.json", attacks.step_log(result))
    io.write_json_atomic(out / f"{stem}_manifest.json",
                         attacks.manifest(result, handle, image_name=args.image, image_sha256=digest))
    print(f"{attack.key}: {result.outcome} after {result.steps} steps, top-1 is now "
          f"{handle.class_names[result.final_class]}; distortion (eq. 3) {result.final_distortion:.5f}; "
          f"wrote {out / (stem + '.png')}")
    return 0


def cmd_relabel_sweep(args: argparse.Namespace) -> int:
    from . import io, relabel
    from .jobs import tqdm_progress

    handle = models.load_model(args.model)
    named = {name: images.to_tensor(classify.model_view(handle, read_image(name)), device=handle.device)
             for name in args.images}
    settings = dict(cap=args.cap, max_steps=args.steps, seed=args.seed, alpha=args.alpha, snap=not args.no_snap)
    with tqdm_progress("sweep") as progress:
        results = relabel.sweep_rules(handle, named, args.targets, rule=args.rule, progress=progress, **settings)
    out = Path(args.out)
    io.write_json_atomic(out / "sweep.json", {"model": handle.name, **relabel.sweep_summary(results)})
    for rule, result in results.items():
        print(f"{rule} rule: {result.successes} of {len(result.pairs)} pairs ({100 * result.success_rate:.1f} %) "
              f"relabelled under {result.cap}, mean distortion {result.mean_distortion:.5f}")
    print(f"(the paper: {100 * relabel.PAPER_SUCCESS_RATE:.1f} %, mean distortion {relabel.PAPER_MEAN_DISTORTION}); "
          f"wrote {out / 'sweep.json'}")
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    from . import inversion

    handle = models.load_model(args.model)
    x = images.to_tensor(classify.model_view(handle, read_image(args.image)), device=handle.device)
    stem = Path(args.image).stem
    if args.features:
        result, mask = _invert_features(args, handle, x), None
        stem += f"_features_{args.features}"
    else:
        result, mask = _invert_class(args, handle, x)
        stem += f"_{handle.class_names[result.target].replace(' ', '_')}"
    record = inversion.manifest(result, handle, image_name=args.image, preset=args.preset,
                                mask_pixels=None if mask is None else int(mask.sum()))
    final_png = inversion.write_run(result, record, args.out, stem)
    final = handle.class_names[result.final_class]
    detail = "" if result.target is None else f", p({handle.class_names[result.target]}) = {record['final_target_prob']:.3f}"
    print(f"{result.outcome} after {result.steps} steps ({result.evaluations} forward+backward passes): "
          f"top-1 is {final}{detail}; wrote {final_png} and {len(result.snapshots)} snapshots")
    if result.message:
        print(result.message)
    return 0


def _invert_features(args: argparse.Namespace, handle, x):
    """Mahendran & Vedaldi's feature inversion of ``--features LAYER``."""
    from . import inversion
    from .jobs import tqdm_progress

    config = inversion.FeatureInversionConfig(layer=args.features, steps=args.steps or 200, jitter=args.jitter or 0)
    with tqdm_progress("feature inversion") as progress:
        return inversion.invert_features(handle, x, config, progress=progress)


def _invert_class(args: argparse.Namespace, handle, x):
    """Class inversion from ``--target`` or a ``--preset`` (its weights, mask and optimiser), with the
    flags' changes on top. Returns (result, mask)."""
    from . import inversion
    from .jobs import tqdm_progress

    preset = inversion.PRESETS.get(args.preset) if args.preset else None
    if args.preset and preset is None:
        raise GlassboxError(f"No preset called '{args.preset}'; try one of {', '.join(inversion.PRESETS)}.")
    target = args.target if args.target is not None else (preset.target if preset else None)
    if target is None:
        raise GlassboxError("Class inversion needs a --target class (an id or a name such as 'tiger') or a --preset.")
    changes = _invert_changes(args, handle)
    config = preset.config(handle, **changes) if preset else inversion.InversionConfig(**changes)
    if args.mask:
        mask = inversion.mask_from_pixels(np.asarray(read_image(args.mask).convert("L")), handle.input_size)
    else:
        mask = inversion.preset_mask(preset, handle.input_size) if preset is not None else None
    with tqdm_progress("inversion") as progress:
        if preset is not None and preset.hole:  # a hole-filling row: the hole is erased, then refilled
            return inversion.fill_hole(handle, x, target, config, hole=mask, fill=preset.fill, progress=progress), mask
        return inversion.invert(handle, x, target, config, mask=mask, progress=progress), mask


def _invert_changes(args: argparse.Namespace, handle) -> dict:
    """The InversionConfig fields the flags set (jitter without --optimizer means Adam: L-BFGS cannot take it)."""
    from . import inversion

    changes = {}
    if args.weights:
        changes["weights"] = inversion.LossWeights.from_paper(*parse_weights(args.weights), std=handle.spec.std)
    if args.snapshots:
        changes["snapshots"] = parse_snapshots(args.snapshots)
    for name in ("jitter", "optimizer", "steps", "start"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if changes.get("jitter") and "optimizer" not in changes:
        changes["optimizer"] = "adam"
    return changes


def parse_snapshots(text: str) -> int | tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise GlassboxError("--snapshots takes a count (8) or the steps to keep (0,10,20).") from None
    return values[0] if len(values) == 1 else values


def parse_weights(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise GlassboxError("--weights takes four numbers, content,style,tv,colour, as the paper prints them "
                            "(for example 1e-10,1e-7,1e-9,1e-8).")
    return values


def cmd_dissect(args: argparse.Namespace) -> int:
    """Under ``torchrun`` the set is sharded across ranks and merged exactly (engine.distributed);
    rank 0 writes the files."""
    from . import concepts, distributed, dissection, io
    from .jobs import tqdm_progress

    distributed.init_from_env()
    try:
        handle = models.load_model(args.model)
        with tqdm_progress("concepts") as progress:
            if args.concepts == "bundled":
                data = concepts.bundled_concepts(args.n, size=args.size, mask_size=args.size // 2, progress=progress)
            else:
                data = concepts.open_concepts(args.concepts, size=args.size, progress=progress)
        config = dissection.DissectionConfig(quantile=args.quantile, iou_threshold=args.iou,
                                             max_images=args.n if args.concepts != "bundled" else None)
        with tqdm_progress("dissect") as progress:
            result = dissection.dissect(handle, data, args.layer, config, progress=progress)
        if not distributed.is_lead():
            return 0
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"dissection_{handle.name}_{result.layer}".replace("/", "_")
        io.write_text_atomic(out / f"{stem}.csv", result.csv())
        io.write_text_atomic(out / f"{stem}.html", dissection.html_summary(result))
        print(result.summary())
        for category, by_concept in sorted(result.detector_counts().items()):
            top = ", ".join(f"{name} {n}" for name, n in sorted(by_concept.items(), key=lambda kv: -kv[1])[:6])
            print(f"  {category}: {top}")
        print(f"wrote {out / (stem + '.csv')} and {out / (stem + '.html')}")
        return 0
    finally:
        distributed.shutdown()


def cmd_models(args: argparse.Namespace) -> int:
    for spec in models.list_models(include_test=True):
        print(f"{spec.name:<22} {spec.label}  — {spec.note}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """Every registered saliency method and attack, from the registries themselves."""
    from . import attacks, saliency

    listing = {"saliency": saliency.describe(), "attacks": attacks.describe()}
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for family, entries in listing.items():
        print(f"{family}:")
        for entry in entries:
            fields = ", ".join(f"{f['name']}={f['default']!r}" for f in entry["fields"])
            print(f"  {entry['key']:<14} {entry['label']}  ({fields})")
    return 0


def _preset_names() -> list[str]:
    from .inversion import PRESETS

    return list(PRESETS)


LAB_COMMANDS = ("attack_cli", "universal_cli", "defences_cli", "blackbox_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Glassbox experiments without the web page.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("classify", help="top-k ImageNet classes of an image")
    p.add_argument("image", help="image file, or a sample name such as chelsea")
    p.add_argument("--model", default=models.DEFAULT_MODEL, help=f"model name (default {models.DEFAULT_MODEL})")
    p.add_argument("--top", type=int, default=5, help="how many classes (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_classify)
    from .saliency import METHODS as SALIENCY_METHODS

    p = commands.add_parser("saliency", help="a saliency map of an image: overlay PNG, .npy and JSON manifest")
    p.add_argument("image", help="image file, or a sample name such as chelsea")
    p.add_argument("--method", required=True, choices=list(SALIENCY_METHODS),
                   help="; ".join(f"{key}: {cls.label}" for key, cls in SALIENCY_METHODS.items()))
    p.add_argument("--class", dest="class_", help="class id or name to explain (default: the top-1 class)")
    p.add_argument("--layer", help="layer for the CAM methods (default: the model's last feature map)")
    p.add_argument("--model", default=models.DEFAULT_MODEL, help=f"model name (default {models.DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="folder to write the files into")
    p.set_defaults(run=cmd_saliency)
    p = commands.add_parser("relabel", help="make an image take another label (Robinson & Graham 2015), or FGSM/PGD")
    p.add_argument("image", help="image file, a sample name such as chelsea, or 'gaussian' (sec. 3.2: start from noise)")
    p.add_argument("--target", help="class id or name (not needed for leastlikely)")
    from .attacks import ATTACKS, Relabel

    p.add_argument("--method", default=Relabel.key, choices=list(ATTACKS),
                   help="an attack from the registry (engine.attacks): " + ", ".join(ATTACKS))
    p.add_argument("--cap", type=float, default=0.01, help="largest distortion, eq. 3 (relabel only)")
    p.add_argument("--steps", type=int, default=300, help="step limit (relabel only)")
    p.add_argument("--epsilon", type=int, default=4, help="L-inf radius in 8-bit levels (fgsm, pgd, leastlikely)")
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--out", required=True, help="folder for the PNG, the per-step JSON and the manifest")
    p.set_defaults(run=cmd_relabel)
    p = commands.add_parser("relabel-sweep", help="sec. 3.1: images x random targets under a distortion cap")
    p.add_argument("--images", nargs="+", required=True, help="image files or sample names")
    p.add_argument("--targets", type=int, default=10, help="random targets per image")
    p.add_argument("--cap", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", choices=("paper", "fit", "both"), default="both",
                   help="paper: stop at top-1, a pair fails when the next step would pass the cap; fit: take the "
                        "part of that step that fits; both (default): the same pairs under each, the paper's first")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="step in 8-bit levels (the paper's alpha = 50 in Caffe's units is 0.2; needs --no-snap)")
    p.add_argument("--no-snap", action="store_true", help="keep a float image instead of rounding each step to 8 bits")
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_relabel_sweep)
    p = commands.add_parser("invert", help="class inversion (Anosheh et al.): change an image until it is the target class")
    p.add_argument("image", help="image file, or a sample name such as chelsea")
    p.add_argument("--target", help="class id or name, e.g. tiger (a --preset brings its own)")
    p.add_argument("--preset", help="a row of the paper's results: " + ", ".join(_preset_names()))
    p.add_argument("--weights", help="content,style,tv,colour in the paper's (Caffe) units; converted, see LossWeights.from_paper")
    p.add_argument("--mask", help="PNG whose white area may change (sec. 2.3)")
    p.add_argument("--jitter", type=int, help="random shift in pixels before each step (the paper: 16); uses Adam")
    p.add_argument("--optimizer", choices=["lbfgs", "adam", "gd"])
    p.add_argument("--steps", type=int)
    p.add_argument("--start", choices=["image", "noise"], help="noise: sec. 6's start from random noise")
    p.add_argument("--snapshots", help="how many images to keep (default 8), or the steps to keep, e.g. 0,5,10,20")
    p.add_argument("--features", metavar="LAYER", help="feature inversion instead (Mahendran & Vedaldi): rebuild from this layer")
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--out", required=True, help="folder for the final PNG, the snapshots, the loss log and the manifest")
    p.set_defaults(run=cmd_invert)
    p = commands.add_parser("dissect", help="Network Dissection: which units of a layer detect which concepts (IoU)")
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--layer", help="layer with a spatial output (default: the model's last feature map)")
    p.add_argument("--concepts", default="bundled", help="bundled, or a folder: Broden (index.csv) or images/ + masks/")
    p.add_argument("--images", "--n", dest="n", type=int, default=2000,
                   help="images: the bundled set's size, or the first n of a folder (--images under torchrun, "
                        "whose own options swallow --n)")
    p.add_argument("--size", type=int, default=224, help="image size of the bundled set (masks at half)")
    p.add_argument("--quantile", type=float, default=0.005, help="top quantile that lights a unit (default 0.005)")
    p.add_argument("--iou", type=float, default=0.04, help="IoU above which a unit is a detector (default 0.04)")
    p.add_argument("--out", required=True, help="folder for the CSV and the HTML summary")
    p.set_defaults(run=cmd_dissect)
    from .patterns.cli import add_parser as add_patterns_parser

    add_patterns_parser(commands)
    from .minds_eye.cli import add_parser as add_minds_eye_parser

    add_minds_eye_parser(commands)
    from .anatomy_cli import add_parser as add_anatomy_parser

    add_anatomy_parser(commands)
    import importlib
    import importlib.util

    for module in LAB_COMMANDS:  # the attacks lab's verbs: attack, uap, transfer, defend, blackbox
        if importlib.util.find_spec(f"engine.{module}") is not None:
            importlib.import_module(f"engine.{module}").add_parser(commands)
    p = commands.add_parser("models", help="list the models this machine can use")
    p.set_defaults(run=cmd_models)
    p = commands.add_parser("methods", help="the saliency methods and attacks, with their settings (from the registries)")
    p.add_argument("--json", action="store_true", help='print {"saliency": [...], "attacks": [...]} as JSON')
    p.set_defaults(run=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except GlassboxError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

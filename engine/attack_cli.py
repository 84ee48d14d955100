"""``python -m engine attack``: one attack of the registry (engine.attacks) on one image, headless.

    python -m engine attack IMAGE --method fgsm|bim|ll|pgd|mostlikely|deepfool|lbfgs [--epsilon E]
                           [--steps N] [--target ID|NAME] [--model M] --out DIR

writes ``<stem>_<method>.png`` (the attacked image, exactly what the model classified),
``<stem>_<method>_steps.json`` (every step's numbers) and ``<stem>_<method>_manifest.json``, and
prints one line. IMAGE is a file path or a bundled sample name (chelsea, coffee, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import models

LAB_METHODS = ("fgsm", "bim", "ll", "pgd", "mostlikely", "deepfool", "lbfgs")


def add_parser(commands) -> None:
    p = commands.add_parser("attack", help="one attack on one image: FGSM, BIM, least-likely, PGD, most-likely, "
                                           "DeepFool, L-BFGS")
    p.add_argument("image", help="image file, or a sample name such as chelsea")
    p.add_argument("--method", required=True,
                   help=f"an attack of the registry (engine.attacks): {', '.join(LAB_METHODS)}, ...")
    p.add_argument("--epsilon", type=int, help="L-inf radius in 8-bit levels (fgsm, bim, ll, pgd, mostlikely; default 4)")
    p.add_argument("--steps", type=int, help="number of steps (bim and ll: Kurakin's min(eps+4, 1.25 eps); pgd: 10)")
    p.add_argument("--target", help="class id or name to aim at (fgsm, pgd, bim, lbfgs); leave out to push away "
                                    "from the image's own class")
    p.add_argument("--model", default=models.DEFAULT_MODEL, help=f"model name (default {models.DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="folder for the PNG, the per-step JSON and the manifest")
    p.set_defaults(run=cmd_attack)


def cmd_attack(args: argparse.Namespace) -> int:
    from . import attacks, classify, images, io
    from .__main__ import read_image
    from .errors import GlassboxError
    from .jobs import tqdm_progress

    attack = attacks.get_attack(args.method)  # an unknown name: a sentence naming close ones
    if attack.needs_target and args.target is None:
        raise GlassboxError(f"{attack.label} needs a --target class (an id or a name such as 'half track').")
    if args.target is not None and not attack.targeted:
        raise GlassboxError(f"{attack.label} takes no --target: it crosses the nearest boundary, whichever class lies there.")
    if args.epsilon is not None and args.epsilon < 1:
        raise GlassboxError("--epsilon is in 8-bit levels and must be at least 1.")
    handle = models.load_model(args.model)
    x = images.to_tensor(classify.model_view(handle, read_image(args.image)), device=handle.device)
    path = Path(args.image)
    digest = images.image_digest(path.read_bytes() if path.is_file() else images.sample_bytes(args.image))
    settings = {name: value for name, value in (("epsilon", args.epsilon), ("steps", args.steps)) if value is not None}
    config = attack.make_config(**settings)
    with tqdm_progress(attack.key) as progress:
        result = attack.run(handle, x, args.target, config, progress)
    out = Path(args.out)
    stem = f"{path.stem}_{attack.key}"
    record = attacks.manifest(result, handle, image_name=args.image, image_sha256=digest)
    record["l2_levels"] = attacks.l2_levels(result)
    io.write_bytes_atomic(out / f"{stem}.png", images.to_png_bytes(result.image))
    io.write_json_atomic(out / f"{stem}_steps.json", attacks.step_log(result))
    io.write_json_atomic(out / f"{stem}_manifest.json", record)
    names = handle.class_names
    print(f"{attack.key}: {result.outcome}, {names[result.original_class]} -> {names[result.final_class]} "
          f"(p = {result.final_probs[result.final_class]:.3f}) after {result.steps} steps; change L2 "
          f"{record['l2_levels']:.1f} levels, largest {result.linf_levels} levels; wrote {out / (stem + '.png')}")
    return 0

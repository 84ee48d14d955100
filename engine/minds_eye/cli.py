"""``python -m engine minds-eye``: train, evaluate, attack and render, headless, with JSON for scripts.

    python -m engine minds-eye train --net direct|direct-params|direct-adv|triple|estimator|projector|comparator
                                     --out DIR [--steps N] [--batch 64] [--fresh]
    python -m engine minds-eye export --from DIR [--to assets/minds_eye/weights]
    python -m engine minds-eye evaluate --n N [--json] [--weights DIR] [--save table1.json] [--ship-scores]
    python -m engine minds-eye attack --kind false-positive|false-negative --n N [--max-steps 1500] [--json]
                                      [--save FILE.json]
    python -m engine minds-eye render --object monkey --angles 0.1,-0.2,0.3 --out x.png [--background N]

Training resumes from the checkpoint in ``--out`` unless ``--fresh``; each net logs to
``<net>-log.csv`` there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import ConfigError


def add_parser(commands) -> None:
    from . import attack, render, train

    p = commands.add_parser("minds-eye", help="the Artificial Mind's Eye (Berntsen et al.): train, evaluate, attack")
    sub = p.add_subparsers(dest="minds_eye_command", required=True)
    t = sub.add_parser("train", help="train one network (or the three stages of the triple-staged one), resumable")
    t.add_argument("--net", required=True, choices=[*train.NET_KEYS, "triple"])
    t.add_argument("--out", required=True, help="folder for <net>.ckpt and <net>-log.csv")
    t.add_argument("--steps", type=int, help="train until this many steps in total (default: per net, see train.py)")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--fresh", action="store_true", help="start again instead of resuming")
    t.set_defaults(run=cmd_train)
    e = sub.add_parser("export", help="write float16 weights (what ships in assets/) from training checkpoints")
    e.add_argument("--from", dest="source", required=True)
    e.add_argument("--to", default=None, help="default: assets/minds_eye/weights")
    e.set_defaults(run=cmd_export)
    v = sub.add_parser("evaluate", help="Table 1: clean error rates on a fresh test set")
    v.add_argument("--n", type=int, default=1000, help="test images per class (default 1000)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--weights", help="a folder of checkpoints instead of the shipped weights")
    v.add_argument("--json", action="store_true")
    v.add_argument("--save", help="also write the table as JSON here (assets/minds_eye/table1.json is the shipped one)")
    v.add_argument("--ship-scores", action="store_true",
                   help="copy the scores beside the shipped weights, so the page's Table 1 opens without computing")
    v.set_defaults(run=cmd_evaluate)
    a = sub.add_parser("attack", help="Fig. 4/6: steps and distortion to flip each network")
    a.add_argument("--kind", required=True, choices=attack.KINDS)
    a.add_argument("--n", type=int, default=20, help="test images (of the three objects, in turn)")
    a.add_argument("--max-steps", type=int, default=attack.MAX_STEPS)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--weights", help="a folder of checkpoints instead of the shipped weights")
    a.add_argument("--save", help="write the whole sweep (JSON + adversarial images .npz) here")
    a.add_argument("--json", action="store_true")
    a.set_defaults(run=cmd_attack)
    r = sub.add_parser("render", help="render one object (grey + alpha PNG, or over a test background)")
    r.add_argument("--object", required=True, help=", ".join(render.OBJECTS))
    r.add_argument("--angles", default="0,0,0", help="three radians in [-0.5, 0.5], e.g. 0.1,-0.2,0.3")
    r.add_argument("--background", type=int, help="composite over test background number N (default: transparent)")
    r.add_argument("--out", required=True)
    r.set_defaults(run=cmd_render)


def parse_angles(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--angles must be three numbers separated by commas, such as 0.1,-0.2,0.3; got '{text}'.")
    if len(values) != 3:
        raise ConfigError(f"--angles needs exactly three numbers (about x, y and z); got {len(values)}.")
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from ..jobs import tqdm_progress
    from . import train

    nets = train.TRIPLE_STAGES if args.net == "triple" else (args.net,)
    for net in nets:
        settings = train.TrainSettings(steps=args.steps or train.DEFAULT_STEPS[net], batch=args.batch, seed=args.seed)
        with tqdm_progress(net) as progress:
            outcome = train.train(net, args.out, settings, resume=not args.fresh, progress=progress)
        print(f"{net}: {outcome.steps} steps in {outcome.seconds / 60:.1f} min, last loss {outcome.last_loss:.4f}, "
              f"last batch accuracy {outcome.last_accuracy:.3f}; checkpoint {outcome.checkpoint}, log {outcome.log}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import weights

    for path in weights.export(args.source, args.to or weights.WEIGHTS_DIR):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..jobs import tqdm_progress
    from . import evaluate

    began = time.perf_counter()
    with tqdm_progress("scoring", disable=args.json) as progress:
        scores = evaluate.test_scores(args.n, seed=args.seed, folder=args.weights, progress=progress)
    table = scores.table()
    seconds = time.perf_counter() - began
    if args.save:
        from .. import io

        io.write_json_atomic(args.save, {"error_rate": table, "n_per_class": args.n, "seed": args.seed,
                                         "weights": evaluate.weights_digest(args.weights), "seconds": round(seconds, 1),
                                         "paper": evaluate.PAPER_TABLE1})
    if args.ship_scores:
        evaluate.save_scores(scores, evaluate.shipped_scores_path(args.n, args.seed))
    if args.json:
        print(json.dumps({"error_rate": table, "n_per_class": args.n, "paper": evaluate.PAPER_TABLE1}, indent=2))
        return 0
    print(f"Table 1 on {4 * args.n} fresh test images ({seconds:.0f} s)")
    for name, rate in table.items():
        paper = evaluate.PAPER_TABLE1.get(name)
        print(f"  {name:<16} {100 * rate:6.2f} %   paper: {'—' if paper is None else f'{100 * paper:.2f} %'}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from ..jobs import tqdm_progress
    from . import evaluate

    with tqdm_progress(args.kind, disable=args.json) as progress:
        result = evaluate.sweep(args.kind, args.n, seed=args.seed, max_steps=args.max_steps, folder=args.weights,
                                progress=progress)
    if args.save:
        evaluate.save_sweep(result, Path(args.save))
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.kind}: {len(result.label)} attacks in {result.seconds:.0f} s (steps capped at {args.max_steps})")
    for name, row in summary.items():
        s, d = row["steps"], row["distortion"]
        print(f"  {name:<16} flipped {row['flipped']}/{row['n']}  steps median {s['median']}  "
              f"distortion median {d['median'] if d['median'] is None else round(d['median'], 4)}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .. import images, io
    from . import data, render

    grey, alpha = render.render_one(args.object, parse_angles(args.angles))
    if args.background is None:
        pixels = np.stack([grey * alpha, alpha], -1)
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, -1), pixels[..., 1:]], -1)
    else:
        background = data.background_only("test", args.background)
        composed = data.compose(torch.as_tensor(grey)[None, None], torch.as_tensor(alpha)[None, None], background)
        pixels = np.repeat(composed[0, 0].numpy()[..., None], 3, -1)
    io.write_bytes_atomic(args.out, images.to_png_bytes(np.round(pixels * 255).astype(np.uint8)))
    print(f"wrote {args.out}")
    return 0

"""``python -m engine patterns train``: the trainer from the command line, alone or under torchrun.

    python -m engine patterns train --classes goldfish zebra flamingo jaguar "giant panda" \\
        --steps 2000 --size 128 --out runs/five [--resume]
    torchrun --nproc_per_node 2 -m engine patterns train ... (DistributedDataParallel; gloo on CPU)

Writes into --out: ``checkpoint.pt`` (atomically, every --checkpoint-every steps and at the end),
``samples/step_NNNNNN.png`` (fixed substrates x each class, every --sample-every steps),
``log.csv`` (every step's losses) and ``config.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import images, models
from ..errors import ConfigError
from . import training as T


def add_parser(commands) -> None:
    p = commands.add_parser("patterns", help="pattern generation (Chaplygin & Chacksfield): train the cGAN")
    sub = p.add_subparsers(dest="patterns_command", required=True)
    t = sub.add_parser("train", help="train the generator against a frozen classifier")
    t.add_argument("--classes", nargs="+", required=True, help="class ids or names, e.g. goldfish zebra")
    t.add_argument("--steps", type=int, required=True, help="train until this many steps in total")
    t.add_argument("--size", type=int, default=128, help="image side, a power of two (the paper: 512)")
    t.add_argument("--batch", type=int, default=2, help="substrates per step (the paper: 1-3)")
    t.add_argument("--model", default=models.DEFAULT_MODEL, help="the classifier (VGG16 in the paper)")
    t.add_argument("--color", action="store_true", help="show the classifier colour images (default: grey, sec. 4)")
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


def cmd_export(args: argparse.Namespace) -> int:
    state = T.read_checkpoint(Path(args.checkpoint))
    handle = models.load_model(state["config"]["model"])
    trainer = T.Trainer(handle, T.TrainConfig(**{**state["config"], "classes": tuple(state["config"]["classes"]),
                                                  "weights": T.L.PatternLossWeights(**state["config"]["weights"])}))
    trainer.load(Path(args.checkpoint))
    trainer.export_generator(Path(args.out))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.1f} MB): the generator for {', '.join(state['class_names'])}, "
          f"{state['steps']} steps")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..jobs import tqdm_progress

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo" if os.environ.get("GLASSBOX_DEVICE", "cpu") == "cpu" else "nccl")
    try:
        handle = models.load_model(args.model)
        classes = tuple(handle.class_index(c) for c in args.classes)
        config = T.TrainConfig(classes=classes, model=handle.name, size=args.size, batch=args.batch,
                               grayscale=not args.color, seed=args.seed)
        trainer = T.Trainer(handle, config, distributed=distributed)
        out = Path(args.out)
        checkpoint = out / "checkpoint.pt"
        if args.resume:
            if not checkpoint.is_file():
                raise ConfigError(f"--resume: there is no checkpoint at {checkpoint} yet.")
            trainer.load(checkpoint)
        lead = trainer.rank == 0
        if lead:
            (out / "samples").mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps({**config.as_dict(), "class_names": [
                handle.class_names[c] for c in classes]}, indent=2))
        log = (out / "log.csv").open("a") if lead else None
        start = trainer.steps_done
        try:
            with tqdm_progress("train", disable=not lead) as progress:
                while trainer.steps_done < args.steps:
                    losses = trainer.step()
                    step = trainer.steps_done
                    if log is not None:
                        if log.tell() == 0:
                            log.write("step," + ",".join(losses) + "\n")
                        log.write(f"{step}," + ",".join(f"{v:.6g}" for v in losses.values()) + "\n")
                        log.flush()
                    progress((step - start) / max(args.steps - start, 1),
                             f"step {step}: total {losses['total']:.3f}, p(target) {losses['target_prob']:.3f}")
                    if lead and (step % args.sample_every == 0 or step == args.steps):
                        (out / "samples" / f"step_{step:06d}.png").write_bytes(images.to_png_bytes(T.sample_grid(trainer)))
                    if lead and (step % args.checkpoint_every == 0 or step == args.steps):
                        trainer.save(checkpoint)
        finally:
            if log is not None:
                log.close()
        if lead:
            print(f"trained to step {trainer.steps_done}; wrote {checkpoint}, {out / 'log.csv'} and samples in {out / 'samples'}")
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0

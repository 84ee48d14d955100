"""Mind's Eye speed: the batched attack against its floor and against attacking one image at a time.

    python bench/bench_minds_eye.py [--batch 32] [--steps 4] [--threads 2]

For each contender, the floor is one forward + backward pass of the batch (what a step must cost);
the attack's cost per step is measured over ``--steps`` steps toward None, fewer than any image
needs (so the batch stays full), less the one extra forward pass that checks the last step; the
one-image-at-a-time baseline runs the same steps image by image. Also prints the renderer's samples/s and the data set's samples/s. Uses the shipped
weights (or $GLASSBOX_MINDS_EYE_WEIGHTS).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from engine.minds_eye import attack, data, evaluate, render


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def floor(contender: attack.Contender, x: torch.Tensor, target: torch.Tensor) -> float:
    def once():
        current = (x * 255).requires_grad_(True)
        loss = contender.loss(contender.raw(current / 255.0), target).sum()
        torch.autograd.grad(loss, current)
    return timed(once)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
          f"{args.threads} threads · batch {args.batch} · {args.steps} steps")
    batch = evaluate.attack_images(args.batch)
    # toward None: the slowest flip for the direct nets, so the batch stays full for the steps measured
    target = torch.full((args.batch,), data.NONE)
    print("| network | floor: fwd+bwd of the batch | batched attack, per step | ratio to floor | one image at a time, per step | batched speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    for contender in evaluate.contender_list():
        f = floor(contender, batch.image, target)
        with torch.no_grad():
            forward = timed(lambda: contender.raw(batch.image))
        # S steps = S forward+backward passes and one last forward (the check after the last step);
        # S is below the fewest steps any image needs (5 for the direct nets), so the batch stays full.
        spent = timed(lambda: attack.run_attack(contender, batch.image, batch.label, target, max_steps=args.steps))
        per_step = (spent - forward) / args.steps
        single = sum(timed(lambda i=i: attack.run_attack(contender, batch.image[i:i + 1], batch.label[i:i + 1],
                                                          target[i:i + 1], max_steps=args.steps), repeat=1)
                     for i in range(4))
        single_per_step = single / 4 * args.batch / args.steps
        print(f"| {contender.key} | {1000 * f:.1f} ms | {1000 * per_step:.1f} ms | {per_step / f:.2f} | "
              f"{1000 * single_per_step:.1f} ms | {single_per_step / per_step:.1f}x |")
    objects = torch.arange(256) % 3
    angles = torch.rand(256, 3) - 0.5
    r = timed(lambda: render.render(objects, angles), repeat=3)
    d = timed(lambda: data.make_batch("train", range(256)), repeat=3)
    print(f"renderer: {256 / r:.0f} samples/s (batch 256, supersample 2); data set: {256 / d:.0f} samples/s "
          f"(render + background + composite)")


if __name__ == "__main__":
    main()

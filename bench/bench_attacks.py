"""Attacks lab benchmark (issue 14): DeepFool against its pass floor, each attack step against the
forward+backward floor, at batch 1 and batch 8 of the bundled photos.

    python bench/bench_attacks.py [--quick] [--markdown]

efficientnet_lite0 (224 px), CPU, torch's default threads (set OMP_NUM_THREADS to pin them).

* **DeepFool floor** -- what Alg. 2 truly needs, measured in the same run: per iteration one forward
  pass of the images whose label has not changed yet and k = 10 class-gradient backward passes
  (each the cost of a forward+backward minus a forward at that batch size), for the iterations each
  image took, plus the forward that sees the label change. ``engine.minimal.deepfool``'s wall time
  is reported as a multiple of it.
* **steps** -- ``engine.lab.sign_attack`` (the batched loop FGSM, BIM, iterative least-likely and
  the most-likely method run on): wall time per step against one forward+backward pass at the same
  batch size (cross-entropy to the image). ``engine.attacks``' single-image registry entries are
  timed too (batch 1), whole run against steps x forward+backward + the forwards the run makes
  besides (the clean class, a picked target, the final record).
* **L-BFGS** -- ``engine.minimal.lbfgs`` per objective evaluation (one forward+backward each, plus
  scipy), against the forward+backward floor and the few plain forwards it adds (clean label, the
  grid check of each c, the final label).

Timings are never test assertions.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import interleaved_medians, machine_description, quick_markdown_args, render  # noqa: E402

from engine import attacks, imagesets, lab, minimal, models  # noqa: E402

K = 10


def forward_pass(handle, x):
    leaf = x.clone().requires_grad_(True)
    with torch.enable_grad():
        handle.logits(leaf)


def forward_backward(handle, x, labels):
    lab.loss_gradient(handle.logits, x, labels)


def pass_floors(handle, x, sizes) -> dict:
    """Passes to time: a forward (with autograd, as an attack makes it) and a forward+backward, at
    each batch size in ``sizes``."""
    labels = lab.predict(handle, x)[0]
    passes = {}
    for b in sorted(sizes):
        passes[("f", b)] = lambda b=b: forward_pass(handle, x[:b])
        passes[("fb", b)] = lambda b=b: forward_backward(handle, x[:b], labels[:b])
    return passes


def costs_from(ms: dict, sizes) -> dict[int, tuple[float, float]]:
    """(forward, forward+backward) seconds at each batch size, from interleaved medians."""
    return {b: (ms[("f", b)] / 1000, ms[("fb", b)] / 1000) for b in sizes}


def deepfool_floor(iterations: torch.Tensor, costs: dict[int, tuple[float, float]]) -> tuple[float, int]:
    """Seconds of the passes DeepFool needs for these per-image iteration counts, and the forwards."""
    total, forwards = 0.0, 0
    for step in range(int(iterations.max()) + 1):
        seen = int((iterations >= step).sum())  # forward: every image not yet flipped before this step
        stepping = int((iterations > step).sum())  # backward: the images that still move
        if seen:
            total += costs[seen][0]
            forwards += 1
        if stepping:
            forward, both = costs[stepping]
            total += K * (both - forward)
    return total, forwards


def main(argv=None) -> None:
    args = quick_markdown_args(__doc__, argv)
    repeats = 2 if args.quick else 5
    torch.manual_seed(0)
    handle = models.load_model("efficientnet_lite0", device="cpu")
    photos = imagesets.bundled_photos(size=handle.input_size)
    x8 = lab.set_tensor(handle, photos, indices=range(8))
    print(f"attacks lab benchmark: efficientnet_lite0 on {machine_description()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {len(photos)} bundled photos (first 8 used)\n")

    # DeepFool and the sign-gradient steps, each batch size timed in rounds with its floors
    deepfool_rows, step_rows, costs = [], [], {}
    for batch in (1, 8):
        x = x8[:batch]
        result = minimal.deepfool(handle, x, candidates=K)
        top = int(result.iterations.max())
        sizes = {int((result.iterations >= s).sum()) for s in range(top + 1)}
        sizes |= {int((result.iterations > s).sum()) for s in range(top)}
        sizes = (sizes | {batch}) - {0}
        clean, lowest = lab.predict(handle, x)[0], lab.least_likely(handle, x)
        methods = {  # name: (labels, steps, step, targeted)
            "fgsm": (clean, 1, 4, False),
            "bim": (clean, lab.kurakin_steps(4), 1, False),
            "ll": (lowest, lab.kurakin_steps(4), 1, True),
            "mostlikely": (clean, 1, 4, True),
        }
        passes = {"deepfool": lambda x=x: minimal.deepfool(handle, x, candidates=K), **pass_floors(handle, x8, sizes)}
        for name, (labels, steps, step, targeted) in methods.items():
            passes[name] = (lambda x=x, labels=labels, steps=steps, step=step, targeted=targeted:
                            lab.sign_attack(handle, x, labels, epsilon=4, step=step, steps=steps, targeted=targeted))
        ms = interleaved_medians(passes, repeats, warmup=1)
        costs.update(costs_from(ms, sizes))
        floor, forwards = deepfool_floor(result.iterations, costs)
        wall = ms["deepfool"] / 1000
        deepfool_rows.append([f"DeepFool, batch {batch}", f"{result.iterations.tolist()}",
                              f"{forwards} fwd + {K * top} bwd", f"{1000 * floor:.0f}", f"{1000 * wall:.0f}",
                              f"{wall / floor:.2f}x", f"{int(result.flipped.sum())}/{batch}"])
        for name, (_, steps, _, _) in methods.items():
            floor = costs[batch][1]
            per_step = ms[name] / 1000 / steps
            step_rows.append([f"{name}, batch {batch}", str(steps), f"{1000 * floor:.0f}", f"{1000 * per_step:.0f}",
                              f"{per_step / floor:.2f}x"])
    print(render(("DeepFool (k = 10) against one forward + k class-gradient backwards per iteration",
                  ["run", "iterations per image", "passes (batched)", "floor ms", "wall ms", "ratio", "flipped"],
                  deepfool_rows, ["floor: forward and backward costs measured in the same rounds, at each batch size "
                                  "the run used; passes: forwards of the batch, backwards per image-iteration"]),
                 args.markdown))
    print(render(("Sign-gradient steps (engine.lab.sign_attack, eps 4 levels) against forward+backward",
                  ["method", "steps", "floor ms/step", "wall ms/step", "ratio"], step_rows, []), args.markdown))

    # the single-image registry entries, whole runs (batch 1)
    rows = []
    x = x8[:1]
    extra_forwards = {"fgsm": 2, "bim": 2, "ll": 3, "mostlikely": 3}  # clean class, picked target, final record
    passes = {key: (lambda key=key: attacks.get_attack(key).run(handle, x, None, attacks.get_attack(key).make_config(
        epsilon=4))) for key in extra_forwards}
    ms = interleaved_medians({**passes, **pass_floors(handle, x8, {1})}, repeats, warmup=1)
    forward, both = costs_from(ms, {1})[1]
    for key, extra in extra_forwards.items():
        attack = attacks.get_attack(key)
        result = attack.run(handle, x, None, attack.make_config(epsilon=4))
        wall = ms[key] / 1000
        floor_steps = result.steps * both
        rows.append([key, str(result.steps), f"{1000 * floor_steps:.0f} + {extra} fwd {1000 * extra * forward:.0f}",
                     f"{1000 * wall:.0f}", f"{wall / (floor_steps + extra * forward):.2f}x",
                     f"{(wall - extra * forward) / floor_steps:.2f}x"])
    print(render(("Registry entries, one image (engine.attacks, eps 4 levels)",
                  ["attack", "steps", "floor ms (steps + forwards)", "wall ms", "ratio", "per step vs fwd+bwd"],
                  rows, ["per step: (wall - the extra forwards) / (steps x forward+backward)"]), args.markdown))

    # L-BFGS per objective evaluation, each run in a round with its floor passes
    c_steps, max_iter = (2, 8) if args.quick else (4, 15)
    run = lambda: minimal.lbfgs(handle, x, c_steps=c_steps, max_iter=max_iter)  # noqa: E731
    result = run()
    evaluations = int(result.evaluations.sum())
    floors = pass_floors(handle, x8, {1})
    walls, forwards, boths = [], [], []
    for _ in range(1 if args.quick else 3):
        start = time.perf_counter()
        run()
        walls.append(time.perf_counter() - start)
        ms = interleaved_medians(floors, 3, warmup=1)
        forwards.append(ms[("f", 1)] / 1000)
        boths.append(ms[("fb", 1)] / 1000)
    wall, forward, both = (statistics.median(v) for v in (walls, forwards, boths))
    setup = scipy_setup(x.numel())
    plain = 2 + c_steps  # clean label, one grid check per c, final label
    floor = evaluations * both + plain * forward
    per_eval = (wall - c_steps * setup - plain * forward) / evaluations
    print(render(("L-BFGS (Szegedy et al.) per objective evaluation against forward+backward",
                  ["run", "evaluations", "floor ms/eval", "wall ms/eval", "ratio", "whole run vs floor",
                   "flipped, size"],
                  [[f"lbfgs, batch 1 ({c_steps} c x {max_iter} iter)", str(evaluations), f"{1000 * both:.0f}",
                    f"{1000 * per_eval:.0f}", f"{per_eval / both:.2f}x", f"{wall / floor:.2f}x",
                    f"{bool(result.flipped[0])}, L2 {float(result.norms_levels[0]):.1f} levels"]],
                  [f"floor: evaluations x forward+backward + {plain} forwards; wall ms/eval leaves out scipy's "
                   f"fixed setup of each of the {c_steps} L-BFGS-B calls, {1000 * setup:.0f} ms each (a Python "
                   f"loop over the {x.numel()} bounds, measured here on a trivial objective)"]), args.markdown))


def scipy_setup(n: int) -> float:
    """Seconds scipy's L-BFGS-B spends on a call besides the objective: its bounds conversion."""
    import numpy as np
    from scipy.optimize import fmin_l_bfgs_b

    def trivial(z):
        return float(z @ z), 2 * z

    times = []
    for _ in range(3):
        start = time.perf_counter()
        fmin_l_bfgs_b(trivial, np.full(n, 0.5), bounds=[(0.0, 1.0)] * n, maxiter=1, maxfun=2)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()

"""Class-inversion benchmark (issue 5): cost per iteration against its floor, L-BFGS, lucent, presets.

    python bench/bench_inversion.py [--quick] [--markdown] [--presets-only]

efficientnet_lite0 (224 px), CPU, torch's default threads, the engine's allocator tuning on.

* **floor** -- one forward + backward to the image with the cross-entropy loss at batch 1: the pass
  every iteration needs. A run of k steps makes k passes with a gradient plus forwards without one
  (the original's features once, when content or style is on, and the end record); per iteration =
  (total - those forwards x one forward) / k.
* **Adam / gradient descent iterations** with every term on (content at one layer, style at five,
  TV, colour), with and without 16 px jitter: the target is <= 1.2x the floor.
* **L-BFGS**: the cost of one iteration, and the forward+backward passes it makes (its line search
  may try more than one point); the evaluator's cache saves the pass torch's LBFGS would repeat.
* **lucent** (torch-lucent 0.1.8, the library whose composition the engine follows): its
  ``render_vis`` loop on the same model and photo, pixel parameterisation, Adam, no transforms,
  one class-logit objective -- per iteration against ours with the classification term alone.
  Bench-only install: ``pip install --no-deps torch-lucent==0.1.8 decorator kornia kornia-rs ipython``.
* **presets**: every row of the paper's results figure (17, issue 15) on chelsea, as the page runs
  it (:func:`engine.inversion.run_preset`: hole-filling rows erase and refill the face), with the first
  step whose top-1 is the target. ``--presets-only`` runs this table alone.

Timings are never test assertions.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import chelsea_on_lite0, interleaved_medians, machine_description, quick_markdown_args, render  # noqa: E402

from engine import classify, images  # noqa: E402
from engine import inversion  # noqa: E402

TIGER = 292
ALL_TERMS = inversion.LossWeights(content=1e-6, style=1e-3, tv=1e-6, colour=1e-3)


def floor_pass(handle, x):
    image = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(handle.logits(image), torch.tensor([TIGER]))
        torch.autograd.grad(loss, image)


def forward_only(handle, x):
    with torch.no_grad():
        handle.logits(x)


def run(handle, x, steps, **config):
    return inversion.invert(handle, x, TIGER, inversion.InversionConfig(steps=steps, snapshots=2, **config))


class LucentModel(torch.nn.Module):
    """lucent feeds [0, 1] images; the bundled model wants them normalised first."""

    def __init__(self, handle):
        super().__init__()
        self.net, self.handle = handle.model, handle

    def forward(self, x):
        return self.net(self.handle.normalize(x))


def lucent_loop(handle, x, steps):
    from lucent.optvis import objectives, render

    model = LucentModel(handle).eval()

    def param_f():
        pixels = x.clone().requires_grad_(True)
        return [pixels], lambda: pixels

    objective = objectives.channel("net__fc", TIGER)  # lucent's name for the final linear layer
    render.render_vis(model, objective, param_f, optimizer=lambda p: torch.optim.Adam(p, lr=0.01), transforms=[],
                      thresholds=(steps,), preprocess=False, progress=False, show_image=False)


def per_iteration(handle, x, quick: bool) -> list[list]:
    steps = 10 if quick else 30
    cases = {
        "floor": lambda: floor_pass(handle, x),
        "forward": lambda: forward_only(handle, x),
        "adam, classification only": lambda: run(handle, x, steps, optimizer="adam", weights=inversion.LossWeights()),
        "adam, all five terms": lambda: run(handle, x, steps, optimizer="adam", weights=ALL_TERMS),
        "adam, all five terms, jitter 16": lambda: run(handle, x, steps, optimizer="adam", weights=ALL_TERMS, jitter=16),
        "gradient descent, all five terms": lambda: run(handle, x, steps, optimizer="gd", weights=ALL_TERMS),
        "L-BFGS, all five terms": lambda: run(handle, x, steps, optimizer="lbfgs", weights=ALL_TERMS),
    }
    try:
        import lucent  # noqa: F401
        cases["lucent render_vis, class logit"] = lambda: lucent_loop(handle, x, steps)
    except ImportError:
        pass
    timings = interleaved_medians(cases, repeats=3 if quick else 5, warmup=1)
    floor, forward = timings["floor"], timings["forward"]
    rows = [["one forward+backward (floor)", f"{floor:.1f}", "1", "x1.00", "-"]]
    ours_plain = None
    for name, total in timings.items():
        if name in ("floor", "forward"):
            continue
        if name.startswith("lucent"):
            per, passes = total / steps, "1"
        else:
            result = run(handle, x, steps, **_config_of(name))
            per = (total - result.forward_passes * forward) / steps
            passes = f"{result.evaluations / steps:.2f}"
        if name == "adam, classification only":
            ours_plain = per
        peer = f"{per / ours_plain:.2f}" if name.startswith("lucent") and ours_plain else "-"
        rows.append([name, f"{per:.1f}", passes, f"x{per / floor:.2f}", peer])
    return rows


def _config_of(name: str) -> dict:
    config = {"optimizer": "adam" if name.startswith("adam") else "gd" if name.startswith("gradient") else "lbfgs",
              "weights": inversion.LossWeights() if "only" in name else ALL_TERMS}
    if "jitter" in name:
        config["jitter"] = 16
    return config


def presets(handle, quick: bool) -> list[list]:
    chosen = ["tiger-face", "brown-bear", "hole-tiger", "tiger-jitter"] if quick else list(inversion.PRESETS)
    rows = []
    x = classify.image_tensor(handle, images.load_sample("chelsea"))
    default_start = time.perf_counter()
    default = inversion.invert(handle, x, TIGER)
    rows.append(["default (tiger row, no mask)", "L-BFGS", str(default.steps), first_at_target(default),
                 str(default.evaluations), f"{time.perf_counter() - default_start:.2f}",
                 handle.class_names[default.final_class], f"{default.final_probs[TIGER]:.3f}"])
    for name in chosen:
        preset = inversion.PRESETS[name]
        start = time.perf_counter()
        result = inversion.run_preset(handle, preset, x)
        seconds = time.perf_counter() - start
        rows.append([preset.label, preset.optimizer, str(result.steps), first_at_target(result),
                     str(result.evaluations), f"{seconds:.2f}", handle.class_names[result.final_class],
                     f"{result.final_probs[preset.target]:.3f}"])
    return rows


def first_at_target(result) -> str:
    """The first recorded step whose top-1 is the target ("-" if none)."""
    steps = [step for step, top1 in enumerate(result.top1) if top1 == result.target]
    return str(steps[0]) if steps else "-"


PRESET_COLUMNS = ["preset", "optimiser", "steps", "top-1 from step", "passes", "seconds", "top-1 after", "p(target)"]


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    presets_only = "--presets-only" in argv
    args = quick_markdown_args(__doc__, [a for a in argv if a != "--presets-only"])
    handle, x = chelsea_on_lite0()
    print(machine_description())
    if presets_only:
        print(render(("Every row of the results figure on chelsea, as the page runs them", PRESET_COLUMNS,
                      presets(handle, args.quick), []), args.markdown))
        return
    print(render(("Cost per iteration (chelsea -> tiger, batch 1)",
                  ["loop", "ms per iteration", "passes per iteration", "x floor", "lucent / ours (classification only)"],
                  per_iteration(handle, x, args.quick),
                  ["per iteration = (run time - its gradient-free forwards x one forward) / steps; lucent: run time / steps",
                   "passes per iteration: forward+backward passes the run counted, over steps"]), args.markdown))
    print(render(("Every row of the results figure on chelsea, as the page runs them", PRESET_COLUMNS,
                  presets(handle, args.quick), []), args.markdown))


if __name__ == "__main__":
    main()

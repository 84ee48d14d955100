"""Relabelling benchmark (issue 4): cost per step against its floor, torchattacks PGD, time to relabel.

    python bench/bench_relabel.py [--quick] [--markdown]

efficientnet_lite0 (224 px), CPU, torch's default threads, the engine's allocator tuning on.

* **floor** -- one forward + backward to the image with the cross-entropy loss at batch 1: the pass
  every relabelling step needs (its forward also gives the step's record). A run of k steps makes
  k + 1 such passes (the last one only checks), so ``per step = total / (k + 1)``.
* **torchattacks PGD** -- the peer named in the issue, on the same model (normalisation in front)
  and image, eps 4/255, step 1/255, no random start; its steps per second next to ours (captum's
  PGD through the registry's ``pgd`` entry, ``engine.attacks.PGD``) and next to the floor.
* **time to relabel** -- median wall time to relabel each bundled photo to random classes under the
  0.01 cap, and the success share.

torchattacks pins an old ``requests``; install it for the bench only with
``pip install --no-deps torchattacks==3.5.1``. Timings are never test assertions.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import chelsea_on_lite0, interleaved_medians, machine_description, quick_markdown_args, render  # noqa: E402

from engine import attacks, classify, images, relabel  # noqa: E402


def cross_entropy_pass(handle, x, target):
    image = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(handle.logits(image), torch.tensor([target]))
        torch.autograd.grad(loss, image)


class Normalized(torch.nn.Module):
    """What torchattacks expects: a module taking images in [0, 1].

    It holds its own copy of the network: torchattacks leaves the model it is given in training
    mode (batch-norm then uses batch statistics), which would corrupt the shared handle.
    """

    def __init__(self, handle):
        super().__init__()
        self.net, self.handle = copy.deepcopy(handle.model), handle

    def forward(self, x):
        return self.net(self.handle.normalize(x))


def per_step(handle, x, quick: bool) -> list[list]:
    import torchattacks

    steps = 10 if quick else 30
    far = attacks.least_likely_class(handle, x)  # far away: the run uses every step it is given
    config = relabel.RelabelConfig(cap=None, max_steps=steps)
    peer = torchattacks.PGD(Normalized(handle), eps=4 / 255, alpha=1 / 255, steps=steps, random_start=False)
    label = torch.tensor([int(handle.probabilities(x)[0].argmax())])
    ours_pgd = attacks.PGDConfig(epsilon=4, step=1, steps=steps)
    assert not handle.model.training
    timings = interleaved_medians({
        "floor": lambda: cross_entropy_pass(handle, x, far),
        "relabel": lambda: relabel.relabel(handle, x, far, config),
        "pgd_ours": lambda: attacks.PGD.run(handle, x, None, ours_pgd),
        "pgd_torchattacks": lambda: peer(x, label),
    }, repeats=3 if quick else 7, warmup=1)
    assert not handle.model.training, "a peer switched the shared model to training mode"
    floor = timings["floor"]
    rows = [["one forward+backward (floor)", f"{floor:.1f}", "1", "x1.00", "-"]]
    taken = relabel.relabel(handle, x, far, config).steps  # deterministic: the timed runs took as many
    relabel_step = timings["relabel"] / (taken + 1)
    rows.append(["relabel step (ours)", f"{relabel_step:.1f}", f"{1000 / relabel_step:.1f}", f"x{relabel_step / floor:.2f}", "-"])
    ours = timings["pgd_ours"] / steps
    theirs = timings["pgd_torchattacks"] / steps
    rows.append(["PGD step (ours: captum)", f"{ours:.1f}", f"{1000 / ours:.1f}", f"x{ours / floor:.2f}", f"{ours / theirs:.2f}"])
    rows.append(["PGD step (torchattacks)", f"{theirs:.1f}", f"{1000 / theirs:.1f}", f"x{theirs / floor:.2f}", "1"])
    return rows


def time_to_relabel(handle, quick: bool) -> list[list]:
    rng = np.random.default_rng(0)
    rows = []
    for name in (["chelsea", "coffee"] if quick else ["chelsea", "coffee", "astronaut", "rocket", "motorcycle_left"]):
        x = classify.image_tensor(handle, images.load_sample(name))
        own = int(handle.probabilities(x)[0].argmax())
        targets = [int(t) for t in rng.choice([c for c in range(1000) if c != own], 3 if quick else 10, replace=False)]
        seconds, successes, steps = [], 0, []
        for target in targets:
            start = time.perf_counter()
            result = relabel.relabel(handle, x, target, relabel.RelabelConfig(cap=0.01))
            seconds.append(time.perf_counter() - start)
            successes += result.succeeded
            steps.append(result.steps)
        rows.append([name, str(len(targets)), f"{1000 * statistics.median(seconds):.0f}", f"{successes}/{len(targets)}",
                     f"{statistics.median(steps):.0f}"])
    return rows


def main(argv=None) -> None:
    args = quick_markdown_args(__doc__, argv)
    handle, x = chelsea_on_lite0()
    print(machine_description())
    print(render(("Cost per step (chelsea, batch 1)", ["pass", "ms per step", "steps/s", "x floor", "ours/torchattacks"],
                  per_step(handle, x, args.quick), ["relabel: a run of k steps makes k + 1 passes; per step = total / (k + 1), "
                                                    "k counted from the run (it may reach the target early)"]),
                 args.markdown))
    print(render(("Time to relabel a bundled photo to random classes (cap 0.01)",
                  ["photo", "targets", "median ms to relabel", "succeeded (cap 0.01)", "median steps"],
                  time_to_relabel(handle, args.quick), []), args.markdown))


if __name__ == "__main__":
    main()

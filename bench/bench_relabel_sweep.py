"""Relabelling sweep under the paper's rule (issue 15): what closes the gap to its 98.7 %?

    python bench/bench_relabel_sweep.py [--quick] [--markdown] [--variant MODEL:ALPHA:SNAP ...]

Sec. 3.1 of Robinson & Graham (2015): pairs of (photo, random target), each relabelled under a
distortion cap of 0.01 (eq. 3). The paper's rule: stop as soon as the target is top-1; a pair fails
when the next step would pass the cap (``engine.relabel.sweep(rule="paper")``). Each variant runs
the same pairs under both rules (:func:`engine.relabel.sweep_both`); "fit" is the engine's rule
beyond the paper (take the part of the last step that fits under the cap).

* **pair sets** -- *issue set*: the 50 pairs behind the issue's "43 of 50" (commit 8030c63:
  ``python -m engine relabel-sweep --images chelsea coffee rocket astronaut motorcycle_left
  --targets 10``, seed 0); *held-out*: every bundled photo (the three textures are new) x 6 targets
  drawn with seed 1, so a conclusion is not tuned to one set.
* **variants** -- the step alpha in 8-bit levels (1, 0.5, and the paper's 50/255 = 0.2: Caffe's
  images are 0-255, so alpha = 50 with f = sgn / 255 moves 0.2 level a step), with and without
  snapping every step to the 8-bit grid (the paper's Caffe run kept a float image), and the other
  bundled networks (efficientnet_lite1, lite2). GoogLeNet's weights are not on this machine
  (torchvision's download is offline here), so the paper's network is not in the table.
* **columns** -- success under each rule; "8-bit" is the paper-rule success counted on the final
  image rounded to the 8-bit grid (what a saved PNG shows; equal to the success when every step is
  snapped); mean distortion of the paper rule's relabelled pairs; median steps; wall time.

CPU, torch's threads as set by the environment (OMP_NUM_THREADS). Timings are never assertions.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import machine_description, quick_markdown_args, render  # noqa: E402

from engine import images, models, relabel  # noqa: E402

ISSUE_SET = (("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left"), 10, 0)  # images, targets, seed
HELD_OUT = (tuple(images.list_samples()), 6, 1)
# (model, alpha in levels, snap every step to the 8-bit grid)
VARIANTS = (
    ("efficientnet_lite0", 1, True),
    ("efficientnet_lite0", 1, False),
    ("efficientnet_lite0", 0.5, False),
    ("efficientnet_lite0", 0.2, False),
    ("efficientnet_lite1", 1, True),
    ("efficientnet_lite2", 1, True),
)
QUICK_VARIANTS = (("efficientnet_lite0", 1, True), ("efficientnet_lite0", 0.2, False))


def percent(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / max(total, 1):.0f} %)"


def run_variant(handle, pair_set, alpha: float, snap: bool, quick: bool) -> tuple[relabel.SweepComparison, float]:
    names, targets, seed = pair_set
    if quick:
        names, targets = names[:2], 3
    named = relabel.sample_inputs(handle, names)
    start = time.perf_counter()
    both = relabel.sweep_both(handle, named, targets, cap=relabel.PAPER_CAP, max_steps=300, seed=seed,
                              alpha=alpha, snap=snap)
    return both, time.perf_counter() - start


def row(set_name: str, model: str, alpha: float, snap: bool, both: relabel.SweepComparison, seconds: float) -> list[str]:
    paper, fit = both.paper, both.fit
    total = len(paper.pairs)
    saved = round(paper.saved_success_rate * total)
    steps = paper.steps
    return [set_name, model.replace("efficientnet_", ""), f"{alpha:g}", "yes" if snap else "no",
            percent(paper.successes, total), percent(saved, total), percent(fit.successes, total),
            f"{paper.mean_distortion:.5f}", f"{statistics.median(steps.tolist()):.0f}" if steps.size else "-",
            f"{seconds:.0f}"]


def parse_variant(text: str) -> tuple[str, float, bool]:
    """``efficientnet_lite0:0.2:0`` -> (model, alpha in levels, snap)."""
    model, alpha, snap = text.split(":")
    return model, float(alpha) if float(alpha) != 1 else 1, snap in ("1", "yes", "true")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = [parse_variant(argv[i + 1]) for i, a in enumerate(argv) if a == "--variant"]
    argv = [a for i, a in enumerate(argv) if a != "--variant" and (i == 0 or argv[i - 1] != "--variant")]
    args = quick_markdown_args(__doc__, argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; {machine_description()}; "
          f"command: python bench/bench_relabel_sweep.py {' '.join(sys.argv[1:])}".rstrip())
    rows = []
    handles = {}
    for model, alpha, snap in chosen or (QUICK_VARIANTS if args.quick else VARIANTS):
        handle = handles.setdefault(model, models.load_model(model, device="cpu"))
        for set_name, pair_set in (("issue set", ISSUE_SET), ("held-out", HELD_OUT)):
            both, seconds = run_variant(handle, pair_set, alpha, snap, args.quick)
            rows.append(row(set_name, model, alpha, snap, both, seconds))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(render(("Sweep under the 0.01 cap: the paper's rule against the fit rule",
                  ["pairs", "model", "alpha (levels)", "snap each step", "paper rule", "paper rule, 8-bit",
                   "fit rule", "mean distortion (paper rule)", "median steps", "s"],
                  rows, [f"the paper (GoogLeNet, Caffe): {100 * relabel.PAPER_SUCCESS_RATE:.1f} %, mean distortion "
                         f"{relabel.PAPER_MEAN_DISTORTION}; alpha 0.2 = the paper's alpha = 50 in Caffe's 0-255 units"]),
                 args.markdown))


if __name__ == "__main__":
    main()

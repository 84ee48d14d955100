"""Universal perturbation benchmark (issue 14): ours against ART's ``UniversalPerturbation`` in the same run.

    python bench/bench_uap.py [--quick] [--threads N] [--skip-art] [--skip-sgd] [--skip-plain] [--art-fixed]
                              [--deepfool-images N]

About 6 minutes on 2 idle cores with one torch thread (``--quick``: one pass each, about 3 minutes;
ART's fixed DeepFool alone takes about 30 s a photo).

efficientnet_lite0 (224 px), CPU. Trained on the 20 bundled photos, measured on the 20 held-out
photos (``imagesets.held_out_photos``: scikit-learn's and matplotlib's sample photos and crops of
them, none bundled), L-inf, xi = 10/255.

* **ours, Algorithm 1** (``engine.universal``, method ``deepfool``): DeepFool steps (10 candidate
  classes, overshoot 0.02, at most 50 iterations) on the images ``v`` does not fool yet, each
  stretched until the 8-bit picture changes label and projected into the ball; at most ``--passes``
  passes, stopping at a training fooling rate of 0.8. Also without the stretch (``stretch=False``).
* **ART** (adversarial-robustness-toolbox 1.20.1) ``UniversalPerturbation(attacker="deepfool")``
  with the same settings: ``eps=10/255``, ``norm=inf``, ``delta=0.2``, ``max_iter=--passes``, and
  DeepFool's ``nb_grads=10``, ``epsilon=0.02``, ``max_iter=50``; the model wrapped in
  ``PyTorchClassifier`` with inputs in [0, 1] (the module calls ``handle.logits``, which
  normalises). Bench-only install: ``pip install --no-deps adversarial-robustness-toolbox six``.
* **ours, sgd**: minibatch sign-gradient ascent over augmented training photos (the whole budget).

**ART's DeepFool as shipped is not minimal**: with ``nb_grads < nb_classes`` it subtracts the logit
of the wrong class (see :func:`art_deepfool_class`), so its steps are 20-100x longer than DeepFool's;
that is why its universal perturbation fills the ball in one pass. The last table times DeepFool
alone (ours, ART as shipped, ART with the one index fixed) on the same photos; ``--art-fixed`` also
runs ART's universal perturbation with the fixed DeepFool (slow: its minimal steps often take all
50 iterations of 10 forward and backward passes each).

Every perturbation is measured the same way: added to the photos, clipped and rounded to 8-bit
levels (what a PNG holds), top-1 compared with the clean top-1. ART's own fooling rate (on
unrounded images, which counts perturbations far below one level) is printed beside it. ART stops
on that unrounded rate, ours on the rounded one, so the two may run different numbers of passes:
the table gives the DeepFool calls and the seconds per call too.

Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import imagesets, lab, models  # noqa: E402
from engine import universal as U  # noqa: E402

XI = 10  # levels


def rounded_rate(handle, x: torch.Tensor, v: torch.Tensor) -> float:
    clean, _ = lab.predict(handle, x, k=1)
    return lab.fooling_rate(clean.numpy(), U.attacked_labels(handle, x, v))


def run_ours(handle, x_train, x_held, config) -> dict:
    from engine import minimal

    calls = {"deepfool": 0}
    deepfool = minimal.deepfool

    def counted(*args, **kwargs):
        calls["deepfool"] += 1
        return deepfool(*args, **kwargs)

    minimal.deepfool = counted
    try:
        started = time.perf_counter()
        fit = U.fit_universal(handle, x_train, config)
        seconds = time.perf_counter() - started
    finally:
        minimal.deepfool = deepfool
    return {"seconds": seconds, "train": fit.fooling_rate, "heldout": rounded_rate(handle, x_held, fit.perturbation),
            "passes": fit.passes, "calls": calls["deepfool"] if config.method == "deepfool" else fit.updates,
            "updates": fit.updates, "norm": U.norm_levels(fit.perturbation, config.norm), "history": fit.pass_fooling}


class ARTModule(torch.nn.Module):
    """ART feeds [0, 1] images; the handle normalises them (mean = std = 0.5 for the Lites)."""

    def __init__(self, handle):
        super().__init__()
        self.net, self.handle = handle.model, handle

    def forward(self, x):
        return self.handle.logits(x)


ART_BUG = "f_batch[np.arange(len(f_batch)), labels_indices][:, None]"
ART_FIX = "f_batch[np.arange(len(f_batch)), labels_set[labels_indices]][:, None]"


def art_deepfool_class(fixed: bool):
    """ART's DeepFool, or a copy with one index fixed. ART 1.20.1 computes ``f_diff`` with the logit of
    the class whose *id* is the original class's position among the top ``nb_grads`` (``labels_indices``)
    instead of the original class's logit, so with ``nb_grads < nb_classes`` its steps are far larger
    than DeepFool's minimal ones; the copy reads ``labels_set[labels_indices]``."""
    import art.attacks.evasion.deepfool as module

    if not fixed:
        return module.DeepFool
    source = Path(module.__file__).read_text()
    if ART_BUG not in source:
        raise SystemExit("This ART version's DeepFool differs from 1.20.1; the fixed copy cannot be made.")
    namespace = {"__name__": "art_deepfool_fixed", "__file__": module.__file__}
    exec(compile(source.replace(ART_BUG, ART_FIX), module.__file__, "exec"), namespace)  # noqa: S102 (bench only)
    return namespace["DeepFool"]


def art_classifier(handle):
    from art.estimators.classification import PyTorchClassifier

    size = handle.input_size
    return PyTorchClassifier(model=ARTModule(handle), loss=torch.nn.CrossEntropyLoss(), input_shape=(3, size, size),
                             nb_classes=handle.num_classes, clip_values=(0.0, 1.0), device_type="cpu")


def run_art(handle, x_train, x_held, config, *, fixed: bool = False) -> dict:
    from art.attacks.evasion import UniversalPerturbation

    random.seed(config.seed)
    np.random.seed(config.seed)
    classifier = art_classifier(handle)
    attack = UniversalPerturbation(classifier, attacker="deepfool",
                                   attacker_params={"nb_grads": config.candidates, "epsilon": config.overshoot,
                                                    "max_iter": config.max_iter, "verbose": False},
                                   delta=1 - config.target, max_iter=config.max_passes, eps=config.xi / 255,
                                   norm=np.inf, verbose=False)
    calls = {"deepfool": 0}
    original = attack._get_attack

    def counting(name, params=None):  # count the DeepFool calls (each one may become an update)
        attacker = original(name, params)
        if fixed:
            attacker = art_deepfool_class(True)(classifier, **params)
        generate = attacker.generate

        def counted(*args, **kwargs):
            calls["deepfool"] += 1
            return generate(*args, **kwargs)

        attacker.generate = counted
        return attacker

    attack._get_attack = counting
    started = time.perf_counter()
    attack.generate(x_train.cpu().numpy())
    seconds = time.perf_counter() - started
    noise = torch.as_tensor(attack.noise[0], dtype=torch.float32)
    v = U.to_grid(U.project(noise, config.xi, "inf"), config.xi, "inf")  # as a PNG holds it (|v| <= 10 levels)
    continuous = float(attack.fooling_rate)
    with torch.no_grad():  # ART's own measure on the held-out photos: unrounded x + noise
        clean, _ = lab.predict(handle, x_held, k=1)
        unrounded, _ = lab.predict(handle, (x_held + noise).clamp(0, 1), k=1)
    return {"seconds": seconds, "train": rounded_rate(handle, x_train, v), "heldout": rounded_rate(handle, x_held, v),
            "train_unrounded": continuous, "heldout_unrounded": lab.fooling_rate(clean.numpy(), unrounded.numpy()),
            "passes": None, "calls": calls["deepfool"], "updates": None, "norm": U.norm_levels(noise, "inf"),
            "converged": bool(attack.converged)}


def deepfool_section(handle, x, config, *, art_fixed: bool) -> list[tuple[str, float, float]]:
    """DeepFool alone on the same photos, one at a time as Algorithm 1 calls it: (name, seconds, median
    L2 norm of the perturbation in levels)."""
    from engine.minimal import deepfool

    rows = []
    started = time.perf_counter()
    norms = [float(deepfool(handle, x[i:i + 1], candidates=config.candidates, overshoot=config.overshoot,
                            max_iter=config.max_iter).norms[0]) * 255 for i in range(len(x))]
    rows.append(("ours (engine.minimal.deepfool)", time.perf_counter() - started, float(np.median(norms))))
    classifier = art_classifier(handle)
    for fixed in (False, True) if art_fixed else (False,):
        attack = art_deepfool_class(fixed)(classifier, nb_grads=config.candidates, epsilon=config.overshoot,
                                           max_iter=config.max_iter, verbose=False)
        started = time.perf_counter()
        norms = []
        for i in range(len(x)):
            image = x[i:i + 1].cpu().numpy()
            norms.append(float(np.linalg.norm(attack.generate(image) - image)) * 255)
        rows.append((f"ART DeepFool{' (index fixed)' if fixed else ''}", time.perf_counter() - started,
                     float(np.median(norms))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one pass each, 10 sgd steps (about 2 minutes)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--passes", type=int, default=None, help="passes at most (default 5; 1 with --quick)")
    parser.add_argument("--skip-art", action="store_true")
    parser.add_argument("--skip-sgd", action="store_true")
    parser.add_argument("--skip-plain", action="store_true", help="skip Algorithm 1 without the 8-bit stretch")
    parser.add_argument("--art-fixed", action="store_true",
                        help="also run ART's universal perturbation with its DeepFool index fixed (slow)")
    parser.add_argument("--deepfool-images", type=int, default=None,
                        help="photos for the DeepFool-alone section (default 4; 2 with --quick; 0 skips it); ART's "
                             "fixed DeepFool takes about a minute a photo")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    passes = args.passes or (1 if args.quick else 5)
    handle = models.load_model("efficientnet_lite0")
    train = imagesets.bundled_photos(size=handle.input_size)
    held = imagesets.held_out_photos(size=handle.input_size)
    x_train, x_held = lab.set_tensor(handle, train), lab.set_tensor(handle, held)
    config = U.UniversalConfig(xi=XI, norm="inf", target=0.8, max_passes=passes, method="deepfool")
    load = os.getloadavg()[0]
    print(f"efficientnet_lite0, {len(train)} bundled photos -> {len(held)} held-out photos, L-inf xi={XI}/255, "
          f"{torch.get_num_threads()} torch threads, load average {load:.2f} at start")
    rows = [("ours, Algorithm 1 (deepfool)", run_ours(handle, x_train, x_held, config))]
    if not args.skip_plain:
        rows.append(("ours, Algorithm 1 without the stretch",
                     run_ours(handle, x_train, x_held, replace(config, stretch=False))))
    if not args.skip_art:
        rows.append(("ART UniversalPerturbation (deepfool)", run_art(handle, x_train, x_held, config)))
        if args.art_fixed:
            rows.append(("ART UniversalPerturbation, DeepFool index fixed",
                         run_art(handle, x_train, x_held, config, fixed=True)))
    if not args.skip_sgd:
        sgd = U.UniversalConfig(xi=XI, norm="inf", method="sgd", steps=10 if args.quick else U.UniversalConfig.steps)
        rows.append((f"ours, sgd ({sgd.steps} steps of {sgd.batch_size})", run_ours(handle, x_train, x_held, sgd)))
    print("\n| method | seconds | passes | DeepFool calls (sgd: steps) | updates | s per call | train fooling "
          "| held-out fooling | norm (levels) |\n|---|---|---|---|---|---|---|---|---|")
    for name, row in rows:
        extra = ""
        if "train_unrounded" in row:
            extra = (f" (unrounded: train {row['train_unrounded']:.0%}, held-out {row['heldout_unrounded']:.0%}, "
                     f"{'converged' if row['converged'] else 'hit the pass limit'})")
        per = row["seconds"] / row["calls"] if row["calls"] else float("nan")
        dash = lambda value: "-" if value is None else value  # noqa: E731
        print(f"| {name} | {row['seconds']:.1f} | {dash(row['passes'])} | {row['calls']} | {dash(row['updates'])} | "
              f"{per:.2f} | {row['train']:.0%} | {row['heldout']:.0%}{extra} | {row['norm']:.2f} |")
    if not args.skip_art:
        named = dict(rows)
        ours, art = named["ours, Algorithm 1 (deepfool)"], named["ART UniversalPerturbation (deepfool)"]
        print(f"\nART / ours, Algorithm 1: {art['seconds'] / ours['seconds']:.2f}x the wall time "
              f"(goal: ours >= 3x faster)")
        if ours["calls"] and art["calls"]:
            art_call, our_call = art["seconds"] / art["calls"], ours["seconds"] / ours["calls"]
            print(f"per DeepFool call: ART {art_call:.2f} s, ours {our_call:.2f} s ({art_call / our_call:.2f}x)")
    count = args.deepfool_images if args.deepfool_images is not None else (2 if args.quick else 4)
    if count and not args.skip_art:
        print(f"\nDeepFool alone on {count} bundled photos, one at a time (10 candidates, overshoot 0.02):")
        print("| DeepFool | seconds | median L2 norm (levels) |\n|---|---|---|")
        timed = deepfool_section(handle, x_train[:count], config, art_fixed=True)
        for name, seconds, norm in timed:
            print(f"| {name} | {seconds:.1f} | {norm:.2f} |")
        print(f"ART / ours: {timed[1][1] / timed[0][1]:.2f}x (as shipped), {timed[2][1] / timed[0][1]:.2f}x (fixed)")
    for name, row in rows:
        if row.get("history"):
            print(f"{name}: training fooling rate per pass {', '.join(f'{r:.0%}' for r in row['history'])}")


if __name__ == "__main__":
    main()

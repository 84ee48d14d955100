"""The attacks lab's curves: accuracy against epsilon (Kurakin et al.) and the effort to flip (Berntsen et al.).

* :func:`epsilon_curves` -- Kurakin, Goodfellow & Bengio, "Adversarial examples in the real world"
  (ICLR 2017 workshop), Fig. 2 (the lecture's "Comparison of methods" slides): top-1 and top-5
  accuracy of a network under FGSM, BIM and iterative least-likely for eps = 2 .. 128 levels,
  beside the clean images. A set of photos has no labels, so the network's own clean prediction
  stands in for the truth: top-1 agreement is "the attacked top-1 is the clean top-1", top-5
  agreement is "the clean top-1 is among the attacked top-5" (both 1 on the clean images).
* :func:`effort_to_flip` -- Berntsen, Kuijper & Heskes, "The Artificial Mind's Eye", Fig. 4 (steps
  and distortion needed to push an image to a target, as box plots), applied to ImageNet models
  with the relabelling paper's sign steps (Robinson & Graham 2015, eq. 1-2, alpha = 1 level; eq. 3
  for the distortion). Every image goes to one random target, never its clean top-1 under any of
  the models compared, the same target for every model; a whole batch steps together and each
  image stops at its own flip.
* :func:`minds_eye_effort` -- the same numbers for the Mind's Eye networks, read from the shipped
  sweeps (``assets/minds_eye/sweep-*.json``), including the adversarially trained direct net.

Results are cached on disk (:func:`engine.lab.result_dir`) by model, set and settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import lab
from .errors import ConfigError, DatasetError
from .imagesets import ImageSet
from .models import ModelHandle
from .progress import Progress, report

CURVE_METHODS = ("fgsm", "bim", "ll")  # Kurakin et al.'s Fig. 2
AGREEMENT_NOTE = ("The photos carry no labels, so each image's clean top-1 stands in for the truth: top-1 is the "
                  "share whose top-1 did not change, top-5 the share whose clean top-1 is still in the top 5 "
                  "(both 1 on the clean images).")
EFFORT_MAX_STEPS = 300  # the relabelling page's step limit
MINDS_EYE_NOTE = ("These are the Mind's Eye networks on 64x64 grey renders of three objects over photo crops "
                  "(Berntsen et al.), a different domain and a 4-way choice, attacked toward another object with "
                  "the same one-level sign steps: compare them with each other, not with the ImageNet models.")


def _content_key(x: torch.Tensor) -> str:
    """A set key for a plain tensor: the digest of its 8-bit pixels."""
    levels = torch.round(x.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    return "tensor-" + hashlib.sha256(str(levels.shape).encode() + levels.tobytes()).hexdigest()[:20]


def _images(handle: ModelHandle, images: ImageSet | torch.Tensor) -> tuple[torch.Tensor, str]:
    """The pictures at the model's input size on its device, and the set's key."""
    if isinstance(images, ImageSet):
        if len(images) == 0:
            raise DatasetError("The image set is empty.")
        return lab.set_tensor(handle, images), images.key
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ConfigError("Give a set of images or a batch of RGB images (N, 3, H, W) in [0, 1].")
    x = lab.resize_to(torch.round(images.detach().float().clamp(0, 1) * 255) / 255, handle.input_size)
    return x.to(handle.device), _content_key(images)


def _topk(handle: ModelHandle, x: torch.Tensor, batch_size: int, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    top1, topk = lab.predict(handle, x, batch_size=batch_size, k=k)
    return top1.numpy(), topk.numpy()


def agreement(clean_top1: np.ndarray, attacked_topk: np.ndarray) -> tuple[float, float]:
    """(top-1, top-5) agreement of attacked predictions with the clean top-1 (see the module note)."""
    clean_top1, attacked_topk = np.asarray(clean_top1), np.asarray(attacked_topk)
    top1 = float((attacked_topk[:, 0] == clean_top1).mean())
    top5 = float((attacked_topk[:, :5] == clean_top1[:, None]).any(1).mean())
    return top1, top5


# ---------------------------------------------------------------------------------------------
# Kurakin et al., Fig. 2


@dataclass(frozen=True)
class CurvesResult:
    """Agreement with the clean predictions per method (rows) and epsilon (columns, in levels)."""

    model: str
    set_key: str
    n: int
    methods: tuple[str, ...]
    epsilons: tuple[int, ...]
    top1: np.ndarray  # (methods, epsilons)
    top5: np.ndarray  # (methods, epsilons)
    clean_top1: float  # 1.0 by definition: the clean row of Fig. 2
    clean_top5: float
    note: str
    seconds: float

    def row(self, method: str, which: str = "top1") -> np.ndarray:
        return getattr(self, which)[self.methods.index(method)]


def _attack_cost(method: str, epsilon: int) -> int:
    return 1 if method == "fgsm" else lab.kurakin_steps(epsilon)


def epsilon_curves(handle: ModelHandle, x: ImageSet | torch.Tensor, *, methods: Sequence[str] = CURVE_METHODS,
                   epsilons: Sequence[int] = lab.EPSILON_LEVELS, batch_size: int = 16,
                   progress: Progress | None = None, use_cache: bool = True) -> CurvesResult:
    """Kurakin et al.'s Fig. 2 on a set of images: top-1 / top-5 agreement with the clean top-1 for every
    method (``fgsm``, ``bim``, ``ll``, or ``pgd``) and epsilon (8-bit levels), each run by
    :func:`engine.lab.set_attack`. Cached by (model, set, methods, epsilons)."""
    methods = tuple(dict.fromkeys(str(m) for m in methods))
    epsilons = tuple(sorted({int(e) for e in epsilons}))
    if not methods or not epsilons:
        raise ConfigError("Choose at least one method and one epsilon.")
    unknown = [m for m in methods if m not in lab.SET_METHODS]
    if unknown:
        raise ConfigError(f"Unknown method '{unknown[0]}'; use {', '.join(lab.SET_METHODS)}.")
    if epsilons[0] < 1 or epsilons[-1] > 255:
        raise ConfigError("Epsilon is in 8-bit levels, from 1 to 255.")
    images, key = _images(handle, x)
    folder = lab.result_dir("curves", handle.name, key, {"methods": methods, "epsilons": epsilons})
    if use_cache and (stored := lab.load_json(folder)) is not None:
        return _curves_from_record(stored)
    began = time.perf_counter()
    clean, clean_topk = _topk(handle, images, batch_size)
    top1 = np.zeros((len(methods), len(epsilons)))
    top5 = np.zeros_like(top1)
    total = sum(_attack_cost(m, e) for m in methods for e in epsilons)
    done = 0
    for i, method in enumerate(methods):
        for j, epsilon in enumerate(epsilons):
            cost = _attack_cost(method, epsilon)

            def part(fraction, message, done=done, cost=cost, method=method, epsilon=epsilon):
                return progress((done + fraction * cost) / total, f"{method}, eps {epsilon}: {message}") \
                    if progress else None

            attacked = lab.set_attack(handle, images, method, epsilon, clean=torch.as_tensor(clean),
                                      batch_size=batch_size, progress=part)
            _, topk = _topk(handle, attacked, batch_size)
            top1[i, j], top5[i, j] = agreement(clean, topk)
            done += cost
            report(progress, done / total, f"{method}, eps {epsilon}: top-1 agreement {top1[i, j]:.2f}")
    clean_agreement = agreement(clean, clean_topk)
    result = CurvesResult(model=handle.name, set_key=key, n=len(images), methods=methods, epsilons=epsilons,
                          top1=top1, top5=top5, clean_top1=clean_agreement[0], clean_top5=clean_agreement[1],
                          note=AGREEMENT_NOTE, seconds=time.perf_counter() - began)
    lab.save_json(folder, {**{k: getattr(result, k) for k in ("model", "set_key", "n", "note", "seconds",
                                                             "clean_top1", "clean_top5")},
                           "methods": list(methods), "epsilons": list(epsilons),
                           "top1": top1.tolist(), "top5": top5.tolist()})
    return result


def _curves_from_record(r: dict) -> CurvesResult:
    return CurvesResult(model=r["model"], set_key=r["set_key"], n=int(r["n"]), methods=tuple(r["methods"]),
                        epsilons=tuple(int(e) for e in r["epsilons"]), top1=np.asarray(r["top1"], dtype=float),
                        top5=np.asarray(r["top5"], dtype=float), clean_top1=float(r["clean_top1"]),
                        clean_top5=float(r["clean_top5"]), note=r["note"], seconds=float(r["seconds"]))


# ---------------------------------------------------------------------------------------------
# Effort to flip (Berntsen et al., Fig. 4, on ImageNet models)


@dataclass(frozen=True)
class EffortRun:
    """One network's effort over the set: per image, the steps taken, the final distortion (eq. 3, in
    [0, 1] units), the largest change in levels, and whether the target became top-1."""

    model: str
    label: str
    steps: np.ndarray  # (N,) int: steps taken (the step of the flip when reached)
    distortion: np.ndarray  # (N,) float: eq. 3 of the final image (NaN where unknown)
    linf_levels: np.ndarray  # (N,) int: the largest change of any value, in levels (-1 where unknown)
    reached: np.ndarray  # (N,) bool
    clean: np.ndarray  # (N,) the clean top-1 (the true label for the Mind's Eye renders)
    targets: np.ndarray  # (N,)

    def summary(self) -> dict:
        """Medians over the images that flipped, and the counts (the numbers beside Fig. 4's boxes)."""
        hit = self.reached
        return {"flipped": int(hit.sum()), "n": int(len(hit)),
                "median_steps": float(np.median(self.steps[hit])) if hit.any() else None,
                "median_distortion": float(np.median(self.distortion[hit])) if hit.any() else None,
                "median_linf_levels": float(np.median(self.linf_levels[hit])) if hit.any() else None}


@dataclass(frozen=True)
class EffortResult:
    """Every network's :class:`EffortRun` on the same images and targets."""

    set_key: str
    runs: dict[str, EffortRun]  # model name -> run, in the order asked
    max_steps: int
    cap: float | None
    seed: int
    note: str
    seconds: float
    domain: str = "imagenet"  # or "minds-eye"

    def summary(self) -> dict[str, dict]:
        return {name: run.summary() for name, run in self.runs.items()}


def effort_targets(clean: Sequence[np.ndarray], num_classes: int, seed: int) -> np.ndarray:
    """One random target per image, never the clean top-1 of any model compared, the same for every
    model: image i takes the first class of a permutation seeded by (seed, i) that no model calls it.
    Adding a model changes an image's target only when that model's top-1 was its first pick."""
    clean = [np.asarray(c) for c in clean]
    n = len(clean[0])
    if any(len(c) != n for c in clean):
        raise ConfigError("Every model must see the same images.")
    targets = np.empty(n, dtype=np.int64)
    for i in range(n):
        taken = {int(c[i]) for c in clean}
        order = np.random.default_rng([int(seed), i]).permutation(num_classes)
        free = [int(t) for t in order if int(t) not in taken]
        if not free:
            raise ConfigError("There is no class left to push toward.")
        targets[i] = free[0]
    return targets


def flip_batch(forward, x: torch.Tensor, targets: torch.Tensor, *, max_steps: int, cap: float | None = None,
               progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Eq. 1-2 (alpha = 1 level) on a batch, each image until its target is top-1 or ``max_steps``.

    Every step is one forward and one backward pass of the images still running. With ``cap``, an
    image stops (unreached) when its next full step would pass eq. 3's cap, the relabelling paper's
    plain stop (``at_cap="stop"``). Returns per image: steps, distortion, linf_levels, reached.
    """
    start = torch.round(x.detach().float() * 255)
    levels = start.clone()
    targets = targets.to(x.device)
    n = len(x)
    steps = np.zeros(n, dtype=np.int64)
    reached = np.zeros(n, dtype=bool)
    active = torch.arange(n, device=x.device)
    for step in range(max_steps + 1):
        logits, grad = lab.loss_gradient(forward, levels[active] / 255, targets[active])
        hit = (logits.argmax(1) == targets[active]).cpu().numpy()
        rows = active.cpu().numpy()
        reached[rows[hit]] = True
        steps[rows] = step
        going = ~hit
        if step == max_steps or not going.any():
            break
        keep = torch.as_tensor(going, device=x.device)
        candidate = (levels[active[keep]] - grad[keep].sign()).clamp_(0, 255)
        if cap is not None:  # the step that would pass the cap is not taken (the paper's plain stop)
            within = _distortion(candidate, start[active[keep]]) <= cap
            candidate, keep_rows = candidate[within], active[keep][within]
        else:
            keep_rows = active[keep]
        levels[keep_rows] = candidate
        active = keep_rows
        if len(active) == 0:
            break
        report(progress, (step + 1) / max(max_steps, 1), f"step {step + 1}: {len(active)} of {n} images still running")
    distortion = _distortion(levels, start).cpu().numpy()
    linf = (levels - start).abs().flatten(1).amax(1).round().long().cpu().numpy()
    return {"steps": steps, "distortion": distortion, "linf_levels": linf, "reached": reached}


def _distortion(levels: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Eq. 3 per image from 8-bit levels, as :func:`engine.relabel.distortion_rms` computes it on the images
    (float32 values in [0, 1], the sum in float64)."""
    diff = (levels / 255).double() - (start / 255).double()
    return diff.pow(2).flatten(1).mean(1).sqrt()


def effort_to_flip(models: Sequence[ModelHandle | str], images: ImageSet | torch.Tensor, *, seed: int = 0,
                   max_steps: int = EFFORT_MAX_STEPS, cap: float | None = None, batch_size: int = 16,
                   progress: Progress | None = None, use_cache: bool = True) -> EffortResult:
    """Berntsen et al.'s Fig. 4 for ImageNet models: push each image to its random target
    (:func:`effort_targets`) with one-level sign steps, per model; the steps, final distortion and
    largest change per image. Each model's run is cached by (model, set, targets, max_steps, cap)."""
    from .models import load_model

    if not models:
        raise ConfigError("Choose at least one model.")
    if max_steps < 1:
        raise ConfigError("The step limit must be at least 1.")
    if cap is not None and cap <= 0:
        raise ConfigError("The distortion cap must be above 0 (or None for no cap).")
    handles = [m if isinstance(m, ModelHandle) else load_model(str(m)) for m in models]
    if len({h.num_classes for h in handles}) != 1:
        raise ConfigError("The models must share their classes to be pushed toward the same targets.")
    began = time.perf_counter()
    pictures, clean = {}, {}
    for handle in handles:
        pictures[handle.name], key = _images(handle, images)
        clean[handle.name], _ = _topk(handle, pictures[handle.name], batch_size, k=1)
    targets = effort_targets(list(clean.values()), handles[0].num_classes, seed)
    digest = hashlib.sha256(targets.tobytes()).hexdigest()[:16]
    runs = {}
    for m, handle in enumerate(handles):
        folder = lab.result_dir("effort", handle.name, key, {"targets": digest, "max_steps": int(max_steps),
                                                              "cap": cap, "seed": int(seed)})
        stored = lab.load_json(folder) if use_cache else None
        if stored is None:
            x = pictures[handle.name]
            batches = math.ceil(len(x) / batch_size)
            parts = []
            for b, first in enumerate(range(0, len(x), batch_size)):
                def part(fraction, message, b=b, m=m):
                    return progress((m + (b + fraction) / batches) / len(handles),
                                    f"{handle.name}, batch {b + 1} of {batches}: {message}") if progress else None

                parts.append(flip_batch(handle.logits, x[first:first + batch_size],
                                        torch.as_tensor(targets[first:first + batch_size]),
                                        max_steps=max_steps, cap=cap, progress=part))
            stored = {k: np.concatenate([p[k] for p in parts]).tolist() for k in parts[0]}
            lab.save_json(folder, {"model": handle.name, **stored})
        runs[handle.name] = EffortRun(
            model=handle.name, label=handle.spec.label, steps=np.asarray(stored["steps"], dtype=np.int64),
            distortion=np.asarray(stored["distortion"], dtype=float),
            linf_levels=np.asarray(stored["linf_levels"], dtype=np.int64),
            reached=np.asarray(stored["reached"], dtype=bool), clean=clean[handle.name], targets=targets)
        report(progress, (m + 1) / len(handles), f"{handle.name}: {int(runs[handle.name].reached.sum())} of "
                                                 f"{len(targets)} images reached their target")
    note = (f"Each image is pushed toward one random class (never a model's clean top-1; the same for every model) "
            f"with one-level sign steps (Robinson & Graham, eq. 1-2) until it is top-1 or {max_steps} steps"
            + (f", or until the next step would pass a distortion of {cap}" if cap is not None else "") + ".")
    return EffortResult(set_key=key, runs=runs, max_steps=int(max_steps), cap=cap, seed=int(seed), note=note,
                        seconds=time.perf_counter() - began)


def minds_eye_effort(kind: str = "false-positive") -> EffortResult:
    """The shipped Mind's Eye sweep (Fig. 4 ``false-positive``, or Fig. 6 ``false-negative``) as an
    :class:`EffortResult`: one run per network and verdict rule (``direct``, ``direct_params``,
    ``direct_adv`` -- trained adversarially in the Mind's Eye issue -- and ``triple@Θ``). Images the
    network got wrong before the attack are left out, as the paper did; the largest change is read
    from the sweep's images when they ship beside it."""
    from .minds_eye import evaluate, weights

    if kind not in evaluate.SWEEP_FILES:
        raise ConfigError(f"Unknown sweep '{kind}'; use {' or '.join(evaluate.SWEEP_FILES)}.")
    path = evaluate.SWEEP_FILES[kind]
    try:
        sweep = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DatasetError(f"The shipped Mind's Eye sweep {path.name} is missing or damaged; run "
                           f"`python -m engine minds-eye attack --kind {kind}` to make it.") from None
    pictures = evaluate.load_sweep_images(path) or {}
    original = pictures.get("original")
    label, target = np.asarray(sweep["label"]), np.asarray(sweep["target"])
    runs = {}
    for name, record in sweep["attacks"].items():
        steps = np.asarray(record["steps"], dtype=np.int64)
        used = ~np.asarray(record["excluded"], dtype=bool)
        reached = steps >= 0
        distortion = np.asarray([np.nan if d is None else d for d in record["distortion"]], dtype=float)
        if original is not None and name in pictures:
            linf = np.abs(pictures[name].astype(np.int64) - original.astype(np.int64)).reshape(len(steps), -1).max(1)
        else:
            linf = np.full(len(steps), -1, dtype=np.int64)
        key = name.partition("@")[0]
        theta = name.partition("@")[2]
        label_text = weights.CONTENDER_LABELS.get(key, key) + (f", Θ = {theta}" if theta else "")
        runs[name] = EffortRun(model=name, label=label_text,
                               steps=np.where(reached, steps, int(sweep["max_steps"]))[used],
                               distortion=distortion[used], linf_levels=linf[used], reached=reached[used],
                               clean=label[used], targets=target[used])
    return EffortResult(set_key=f"minds-eye-{kind}", runs=runs, max_steps=int(sweep["max_steps"]), cap=None,
                        seed=0, note=MINDS_EYE_NOTE, seconds=float(sweep.get("seconds", 0.0)), domain="minds-eye")

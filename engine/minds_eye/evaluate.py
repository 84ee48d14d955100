"""Table 1 (clean error rates) and the effort sweeps of Fig. 4 and 6, with their caches.

The test set is the ``test`` split (backgrounds from photos training never saw), ``n`` images per
class. Scores are computed once per (weights, n, seed) and cached on disk, so the page's Θ slider
recomputes Table 1 and the error/Θ curve without touching a network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..errors import ConfigError
from ..progress import Progress, report
from . import attack, data, nets, weights

PAPER_TABLE1 = {"direct": 0.0001, "direct_params": 0.0001, "triple@0.2": 0.0134, "triple@0.45": 0.0057,
                "triple@0.7": 0.0309}
EVAL_BATCH = 200


def weights_digest(folder: str | None = None) -> str:
    """A short digest of the weight files in use, so caches follow retraining."""
    h = hashlib.sha256()
    for net in weights.FILES:
        path = weights.weight_file(net, folder)
        if path is not None:
            h.update(net.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return io.cache_root() / "minds_eye"


@dataclass(frozen=True)
class TestScores:
    """Every contender's output on the test set: enough to compute Table 1 at any Θ."""

    label: np.ndarray                  # (N,)
    direct: dict[str, np.ndarray]      # key -> (N, 4) softmax probabilities
    triple: np.ndarray                 # (N, 3) comparator scores

    def error_rate(self, name: str) -> float:
        return float((self.predictions(name) != self.label).mean())

    def predictions(self, name: str) -> np.ndarray:
        if name.startswith("triple@"):
            return nets.verdict_array(self.triple, float(name.split("@", 1)[1]))
        return self.direct[name].argmax(1)

    def table(self, thetas=attack.PAPER_THETAS) -> dict[str, float]:
        names = [*self.direct, *(f"triple@{t:g}" for t in thetas)]
        return {name: self.error_rate(name) for name in names}

    def curve(self, thetas: np.ndarray) -> dict[str, np.ndarray]:
        """Error against Θ, split into missed objects (said None) and wrong or invented objects."""
        error, missed, wrong = [], [], []
        for theta in thetas:
            predicted = nets.verdict_array(self.triple, float(theta))
            bad = predicted != self.label
            error.append(bad.mean())
            missed.append((bad & (predicted == data.NONE)).mean())
            wrong.append((bad & (predicted != data.NONE)).mean())
        return {"theta": np.asarray(thetas), "error": np.asarray(error), "missed": np.asarray(missed),
                "wrong": np.asarray(wrong)}


def test_scores(n_per_class: int = 1000, *, seed: int = 0, folder: str | None = None,
                progress: Progress | None = None, use_cache: bool = True) -> TestScores:
    """Score ``4·n_per_class`` test images with every contender (cached on disk)."""
    if n_per_class < 1:
        raise ConfigError("The test set needs at least one image per class.")
    path = scores_path(n_per_class, seed, folder)
    if use_cache and path.is_file():
        with np.load(path) as stored:
            return TestScores(stored["label"], {k: stored[k] for k in weights.CONTENDERS[:3]}, stored["triple"])
    models = weights.contenders(folder)
    total = n_per_class * len(data.CLASSES)
    labels, direct, triple = [], {k: [] for k in weights.CONTENDERS[:3]}, []
    with torch.inference_mode():
        for start in range(0, total, EVAL_BATCH):
            batch = data.make_batch("test", range(start, min(total, start + EVAL_BATCH)), seed)
            labels.append(batch.label.numpy())
            for key in direct:
                direct[key].append(torch.softmax(models[key](batch.image)["logits"], 1).numpy())
            triple.append(models["triple"](batch.image).scores.numpy())
            report(progress, min(total, start + EVAL_BATCH) / total, f"scored {min(total, start + EVAL_BATCH)} of {total} test images")
    result = TestScores(np.concatenate(labels), {k: np.concatenate(v) for k, v in direct.items()},
                        np.concatenate(triple))
    save_scores(result, cache_dir() / path.name)
    return result


def scores_path(n_per_class: int, seed: int = 0, folder: str | None = None) -> Path:
    """Where the test scores for these weights are: the shipped copy beside the weights (the shipped
    weights' 1000-per-class scores ship, so the page opens instantly), else the disk cache (written on
    the first evaluation)."""
    name = f"scores-{weights_digest(folder)}-{int(n_per_class)}-{int(seed)}.npz"
    shipped = weights.ASSETS / name
    return shipped if shipped.is_file() else cache_dir() / name


def save_scores(result: TestScores, path: Path) -> Path:
    with io.atomic_path(path, suffix=".npz") as temporary:
        np.savez_compressed(temporary, label=result.label.astype(np.int8), triple=result.triple.astype(np.float32),
                            **{k: v.astype(np.float32) for k, v in result.direct.items()})
    return path


def shipped_scores_path(n_per_class: int = 1000, seed: int = 0) -> Path:
    return weights.ASSETS / scores_path(n_per_class, seed).name


def contender_list(thetas=attack.PAPER_THETAS, folder: str | None = None) -> list[attack.Contender]:
    models = weights.contenders(folder)
    return [attack.Contender(key, models[key], attack.check_thetas(thetas) if key == "triple" else (None,))
            for key in weights.CONTENDERS]


def attack_images(n: int, seed: int = 0) -> data.Batch:
    """The first ``n`` object images of the test split (classes in turn)."""
    indices = [i for i in range(4 * n) if i % len(data.CLASSES) != data.NONE][:n]
    return data.make_batch("test", indices, seed)


@dataclass
class Sweep:
    kind: str
    n: int
    max_steps: int
    outcomes: dict[str, attack.AttackOutcome]  # contender key -> outcome
    label: np.ndarray                          # (A,) the true class of each attacked image
    source: np.ndarray                         # (A,) the test image each attack started from
    seconds: float

    def summary(self) -> dict[str, dict]:
        return {name: outcome.summary(name) for outcome in self.outcomes.values() for name in outcome.names}

    def to_json(self) -> dict:
        per = {}
        for key, outcome in self.outcomes.items():
            for r, name in enumerate(outcome.names):
                per[name] = {"steps": outcome.steps[:, r].tolist(),
                             "distortion": [None if np.isnan(v) else round(float(v), 6) for v in outcome.distortion[:, r]],
                             "excluded": outcome.excluded[:, r].tolist()}
        return {"kind": self.kind, "n": self.n, "max_steps": self.max_steps, "seconds": round(self.seconds, 1),
                "label": self.label.tolist(), "source": self.source.tolist(),
                "target": next(iter(self.outcomes.values())).target.tolist(),
                "summary": self.summary(), "attacks": per}


def sweep(kind: str, n: int, *, seed: int = 0, thetas=attack.PAPER_THETAS, max_steps: int = attack.MAX_STEPS,
          folder: str | None = None, contenders: list[str] | None = None, progress: Progress | None = None) -> Sweep:
    """Fig. 4 (``false-positive``: each of ``n`` object images toward both other objects) or Fig. 6
    (``false-negative``: toward None), against every contender."""
    import time

    began = time.perf_counter()
    batch = attack_images(n, seed)
    index, target = attack.attack_targets(batch.label, kind)
    chosen = [c for c in contender_list(thetas, folder) if contenders is None or c.key in contenders]
    outcomes = {}
    for i, contender in enumerate(chosen):
        def part(fraction, message, i=i, key=contender.key):
            return progress((i + fraction) / len(chosen), f"{key}: {message}") if progress else None

        outcomes[contender.key] = attack.run_attack(contender, batch.image[index], batch.label[index], target,
                                                    max_steps=max_steps, progress=part)
    return Sweep(kind, n, max_steps, outcomes, batch.label[index].numpy(), index.numpy(),
                 time.perf_counter() - began)


SWEEP_FILES = {kind: weights.ASSETS / f"sweep-{kind}.json" for kind in attack.KINDS}


def save_sweep(result: Sweep, json_path: Path) -> Path:
    """The sweep's numbers as JSON, and its adversarial images (uint8) beside it for the Fig. 5 gallery."""
    io.write_json_atomic(json_path, result.to_json())
    arrays = {"original": next(iter(result.outcomes.values())).original}
    for outcome in result.outcomes.values():
        for r, name in enumerate(outcome.names):
            arrays[name] = outcome.images[:, r]
    with io.atomic_path(Path(json_path).with_suffix(".npz"), suffix=".npz") as temporary:
        np.savez_compressed(temporary, **arrays)
    return json_path


def load_sweep_images(json_path: Path) -> dict[str, np.ndarray] | None:
    path = Path(json_path).with_suffix(".npz")
    if not path.is_file():
        return None
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def believed_drawing(key: str, image: np.ndarray, theta: float = 0.7, folder: str | None = None) -> tuple[int, np.ndarray | None]:
    """Fig. 5's bottom row: what the network now believes, drawn over the image.

    Triple-staged: the projector's drawing of the verdict class at the estimated angles. Direct +
    parameter estimation: the renderer's object of the verdict class at the parameter head's angles
    (the paper rendered it with Blender). Returns (verdict, picture in [0, 1]) — no picture for None or
    for a net without a parameter output.
    """
    from . import render

    models = weights.contenders(folder)
    x = torch.as_tensor(image, dtype=torch.float32)[None, None] / 255.0
    with torch.inference_mode():
        if key == "triple":
            out = models["triple"](x)
            verdict = int(nets.verdict(out.scores, theta)[0])
            if verdict == data.NONE:
                return verdict, None
            alpha = out.alpha[0, verdict]
            picture = out.image[0, verdict] + (1 - alpha) * x[0, 0]
            return verdict, picture.clamp(0, 1).numpy()
        out = models[key](x)
        verdict = int(out["logits"].argmax(1)[0])
        if verdict == data.NONE or "angles" not in out:
            return verdict, None
        angles = out["angles"].clamp(-render.ANGLE_LIMIT, render.ANGLE_LIMIT)
        grey, alpha = render.render(torch.tensor([verdict]), angles)
        return verdict, data.compose(grey, alpha, x)[0, 0].numpy()

"""The attacks lab page's jobs: each takes plain names and settings (model names, set specs, a dict
from the page's link), opens what it needs, calls the engine (which caches its results on disk by
(model, set, settings)) and returns one plain record the page draws and offers as JSON.

The engine modules behind them: :mod:`engine.universal` (universal perturbations, transfer),
:mod:`engine.curves` (Kurakin et al.'s ε curves, effort to flip), :mod:`engine.blackbox` (Papernot et
al.'s substitute), :mod:`engine.defences` (input transforms, naive and adaptive attacks, the
relabelling detector) and :mod:`engine.minimal` (DeepFool, L-BFGS; single images run through the
attack registry).
"""

from __future__ import annotations

import io as _io

import numpy as np

from . import imagesets, lab, models
from .progress import Progress

EPSILON_LEVELS = lab.EPSILON_LEVELS
SET_METHODS = lab.SET_METHODS


def short_name(name: str) -> str:
    return name.replace("efficientnet_", "")


Model = models.ModelHandle | str  # a handle (the sidebar's, maybe an uploaded checkpoint) or a name


def _handle(model) -> models.ModelHandle:
    return model if isinstance(model, models.ModelHandle) else models.load_model(model)


def _name(model) -> str:
    return model.name if isinstance(model, models.ModelHandle) else str(model)


def _size(model) -> int:
    return model.input_size if isinstance(model, models.ModelHandle) else models.model_spec(model).input_size


def _set(spec: str, size: int):
    return imagesets.open_set(spec, size=size)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = _io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Universal perturbations and transfer


def _universal_config(settings: dict):
    from .universal import UniversalConfig

    return UniversalConfig(xi=float(settings.get("xi", 10.0)), norm=str(settings.get("norm", "inf")),
                           target=float(settings.get("target_fooling", 0.8)),
                           max_passes=int(settings.get("max_passes", 5)), method=str(settings.get("method", "sgd")))


def uap_run(model: Model, train_spec: str, heldout_spec: str, settings: dict, progress: Progress | None = None) -> dict:
    """A universal perturbation fitted on one set and measured on another (cached by the engine)."""
    from . import universal, universal_cli

    handle = _handle(model)
    config = _universal_config(settings)
    config.check()
    train, held = _set(train_spec, handle.input_size), _set(heldout_spec, handle.input_size)
    result = universal.universal_perturbation(handle, train, held, config, progress=progress)
    report = universal_cli.report_record(result)
    return {**report, "perturbation": result.image, "n_train": len(result.train_indices),
            "n_heldout": len(result.heldout_indices), "heldout_indices": list(result.heldout_indices),
            "dominant": [{"id": d.class_id, "name": d.name, "count": d.count} for d in result.dominant],
            "note": f"The perturbation was {result.split}. {FOOLING_NOTE}"}


FOOLING_NOTE = ("Fooling rate: the share of images whose top-1 label changes when the perturbation is added (clipped "
                "to [0, 1] and rounded to 8-bit levels).")


def uap_report(record: dict) -> dict:
    """report.json as the CLI writes it (the record without the page's extras)."""
    return {k: v for k, v in record.items() if k not in ("perturbation", "n_train", "n_heldout", "heldout_indices",
                                                          "dominant", "note")}


def uap_example(record: dict, heldout_spec: str, size: int, class_names) -> tuple[dict, np.ndarray]:
    """A held-out photo the perturbation fools (the first one; the first photo when none is), and the
    photo with the perturbation added, as the model saw it."""
    rows = record["heldout"]
    pick = next((i for i, row in enumerate(rows) if row["clean"] != row["attacked"]), 0)
    picture = _set(heldout_spec, size).image(record["heldout_indices"][pick])
    attacked = np.clip(np.round((picture / 255.0 + np.asarray(record["perturbation"])) * 255), 0, 255).astype(np.uint8)
    return ({"clean": picture, "clean_label": class_names[rows[pick]["clean"]],
             "attacked_label": class_names[rows[pick]["attacked"]]}, attacked)


def perturbation_png(perturbation: np.ndarray) -> bytes:
    """The perturbation made visible (mid-grey is zero), as the CLI's uap.png."""
    from .universal_cli import perturbation_png as png

    return png(np.asarray(perturbation, dtype=np.float32))


def uap_sizes_run(model: Model, train_spec: str, heldout_spec: str, settings: dict,
                  progress: Progress | None = None) -> dict:
    """The lecture's plot: held-out fooling rate against the number of training images."""
    from . import universal

    handle = _handle(model)
    config = _universal_config(settings)
    train, held = _set(train_spec, handle.input_size), _set(heldout_spec, handle.input_size)
    sizes = [n for n in (2, 5, 10, 20, 50, 100, 200, 500) if n < len(train)] + [len(train)]
    found = universal.fooling_vs_size(handle, train, held, sizes, config, progress=progress)
    return {"sizes": list(found.sizes), "fooling_rate_heldout": list(found.fooling_rate_heldout),
            "fooling_rate_train": list(found.fooling_rate_train), "model": handle.name, "config": found.config}


def transfer_models() -> list[str]:
    from . import universal

    return universal.default_transfer_models()


def transfer_run(chosen: list, train_spec: str, eval_spec: str, kind: str, strength: int,
                 progress: Progress | None = None) -> dict:
    """The lecture's table: perturbations made on each model (rows) tried on every model (columns)."""
    from . import universal
    from .universal import UniversalConfig

    given = {_name(m): m for m in chosen if isinstance(m, models.ModelHandle)}
    model_names = [_name(m) for m in chosen]
    largest = max(_size(m) for m in chosen)
    eval_set = _set(eval_spec, largest)
    train = _set(train_spec, largest) if kind == "universal" else None
    result = universal.transfer_matrix(model_names, train, eval_set, kind=kind,
                                       config=UniversalConfig(xi=float(strength)), epsilon=int(strength),
                                       loader=lambda name: given.get(name) or models.load_model(name),
                                       progress=progress)
    made = (f"one universal perturbation per model (the lecture's algorithm, ℓ∞ ξ = {strength} levels) fitted on "
            f"{train.name}" if kind == "universal" else
            f"each image attacked on the source model (PGD, ε = {strength} levels)")
    return {**result.as_json(), "note": f"Perturbations: {made}; measured on {result.eval_count} images of "
                                        f"{result.eval_set}. Each image is resized to each target's input size; "
                                        "fooled means the target's top-1 changed. The diagonal is the white-box rate."}


# ---------------------------------------------------------------------------------------------
# Kurakin et al.'s comparison and the effort to flip


def curves_run(model: Model, spec: str, methods: list[str], epsilons: list[int], progress: Progress | None = None) -> dict:
    """Top-1 and top-5 agreement with the clean predictions against ε, per method."""
    from . import curves

    handle = _handle(model)
    found = curves.epsilon_curves(handle, _set(spec, handle.input_size), methods=tuple(methods),
                                  epsilons=tuple(int(e) for e in epsilons), progress=progress)
    return {"model": handle.name, "set": spec, "n": found.n, "epsilons": [int(e) for e in found.epsilons],
            "methods": {m: {"top1": [float(v) for v in found.row(m, "top1")],
                            "top5": [float(v) for v in found.row(m, "top5")]} for m in found.methods},
            "note": found.note, "seconds": found.seconds}


def _effort_record(found) -> dict:
    return {name: {"label": run.label, "steps": [int(v) for v in run.steps],
                   "distortion": [float(v) for v in run.distortion], "linf_levels": [int(v) for v in run.linf_levels],
                   "reached": [bool(v) for v in run.reached], "summary": run.summary()}
            for name, run in found.runs.items()}


def effort_run(chosen: list, spec: str, max_steps: int, progress: Progress | None = None) -> dict:
    """Steps and distortion to push each image of a set to a random target, per model."""
    from . import curves

    largest = max(_size(m) for m in chosen)
    found = curves.effort_to_flip(list(chosen), _set(spec, largest), max_steps=int(max_steps), progress=progress)
    return {"models": _effort_record(found), "max_steps": found.max_steps, "seed": found.seed, "note": found.note,
            "seconds": found.seconds}


def minds_eye_effort() -> dict | None:
    """The Mind's Eye networks' effort from the shipped Fig. 4 sweep (None when it is not shipped)."""
    from . import curves
    from .errors import GlassboxError

    try:
        found = curves.minds_eye_effort()
    except (GlassboxError, OSError):
        return None
    return {"models": _effort_record(found), "note": found.note}


# ---------------------------------------------------------------------------------------------
# Black box (Papernot et al. 2017)


BLACKBOX_TARGETS = {"direct": "Mind's Eye direct classifier", "direct-adv": "… adversarially trained (PGD)"}
BLACKBOX_EPSILON = 0.1


def _fooled_first(labels: np.ndarray, said: np.ndarray) -> list[int]:
    """Indices of the examples, the ones the target now gets wrong first (in their order)."""
    order = np.arange(len(labels))
    return [int(i) for i in np.concatenate([order[labels != said], order[labels == said]])]


def blackbox_run(settings: dict, progress: Progress | None = None) -> dict:
    """Papernot et al.'s substitute attack on a Mind's Eye direct net, with its baselines."""
    from .blackbox import BlackboxConfig, run_blackbox
    from .minds_eye.data import CLASSES

    config = BlackboxConfig(target=settings["target"], substitute_epochs=int(settings["epochs"]),
                            epsilon=float(settings["epsilon"]))
    found = run_blackbox(config, progress=progress)
    return {"target": found.target, "target_label": found.target_label, "queries": found.queries,
            "set_sizes": list(found.set_sizes), "eval_agreement": list(found.eval_agreement),
            "train_agreement": list(found.train_agreement), "substitute_agreement": found.substitute_agreement,
            "n_eval": found.n_eval, "oracle_accuracy": found.oracle_accuracy, "epsilon": found.epsilon,
            "epsilon_levels": found.epsilon_levels, "transfer_rate": found.transfer_rate,
            "whitebox_rate": found.whitebox_rate, "random_rate": found.random_rate,
            "curve_epsilons": list(found.curve_epsilons), "curve_transfer": [float(v) for v in found.curve_transfer],
            "curve_whitebox": [float(v) for v in found.curve_whitebox],
            "curve_random": [float(v) for v in found.curve_random],
            "examples": [{"original": found.original[i], "adversarial": found.adversarial[i],
                          "label": CLASSES[int(found.labels[i])], "said": CLASSES[int(found.said[i])]}
                         for i in _fooled_first(found.labels, found.said)[:6]],
            "seconds": found.seconds, "config": found.config, "note": found.note}


# ---------------------------------------------------------------------------------------------
# Defences: input transforms (naive and adaptive) and Robinson & Graham's detector


TRANSFORM_EXAMPLES = ("jpeg:75", "jpeg:50", "bits:4", "bits:3", "median:3", "resize:20", "jpeg:75+resize:20")


def check_transform(spec: str) -> str:
    """The spec as the engine reads it; a ConfigError sentence naming the known transforms otherwise."""
    from .defences import parse_transform

    return parse_transform(spec).spec


def defence_run(model: Model, spec: str, transform: str, attack: str, epsilon: int,
                progress: Progress | None = None) -> dict:
    """Attack success without the transform, naive (made without it) and adaptive (BPDA / EOT through it)."""
    from .defences import DefenceConfig, defend_set

    handle = _handle(model)
    found = defend_set(handle, _set(spec, handle.input_size),
                       DefenceConfig(transform=transform, attack=attack, epsilon=int(epsilon)), progress=progress)
    return {**found.to_json(), "examples": found.examples}


def detector_run(model: Model, spec: str, progress: Progress | None = None) -> dict:
    """Robinson & Graham sec. 4: an RBF-SVM on features tells relabelled from clean photos; then the
    relabelling that knows about it."""
    from .defences import PAPER_DETECTION_ACCURACY, DetectionConfig, detect_set

    handle = _handle(model)
    found = detect_set(handle, _set(spec, handle.input_size), DetectionConfig(), progress=progress)
    return {**found.to_json(), "paper_accuracy": PAPER_DETECTION_ACCURACY}

"""A training run on disk: the one loop the CLI and the page's training job share.

A run is a folder::

    config.json            the TrainConfig and the class names
    checkpoint.pt          G, D, both optimisers and the step count (atomic; resume from here)
    log.csv                every step's losses, appended (and cut back to the checkpoint on resume)
    samples/step_N.png     fixed substrates (rows) x each class (columns)
    samples.csv            each class's mean probability on its column of each sample grid
    substrates/            the user's own substrate images, when the run uses them

Everything a page shows about a run (live sample grid, loss curves, p(target)) is read back from
these files, so it survives page reloads and even a server restart; the process that trains only
writes them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import images
from ..errors import CheckpointError, ConfigError, DatasetError, GlassboxError
from ..io import cache_root, write_bytes_atomic, write_json_atomic
from ..progress import Progress
from . import training
from .losses import current_names
from .substrates import MIN_SUBSTRATES, load_substrate_folder  # noqa: F401 -- re-exported for the page


def runs_root() -> Path:
    """Where the page keeps its runs: ``pattern-runs`` in :func:`engine.io.cache_root`
    (``$GLASSBOX_CACHE``, default ~/.cache/glassbox)."""
    return cache_root() / "pattern-runs"


def safe_run_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-.")
    if not cleaned:
        raise ConfigError("Give the run a name made of letters, digits, '-', '_' or '.'.")
    return cleaned[:64]


# -- the user's own substrates -----------------------------------------------------------------------

def save_uploads(folder: Path, uploads: list[tuple[str, bytes]]) -> list[str]:
    """Check every upload decodes as an image, then write them into ``folder``; returns the names.
    Nothing is written when one of them is refused."""
    if len(uploads) < MIN_SUBSTRATES:
        raise DatasetError(f"Training needs at least {MIN_SUBSTRATES} substrate images; {len(uploads)} "
                           f"{'was' if len(uploads) == 1 else 'were'} uploaded.")
    checked = []
    for name, data in uploads:
        try:
            picture = images.decode_image(data)
        except GlassboxError as error:
            raise DatasetError(f"{name}: {error}") from None
        checked.append((f"{len(checked):03d}.png", images.to_png_bytes(np.asarray(picture))))
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in checked:
        (folder / name).write_bytes(data)
    return [name for name, _ in checked]


def write_run_config(folder: Path, config: training.TrainConfig, class_names: list[str]) -> None:
    """``config.json``: the TrainConfig and the class names (what the page lists and summarises)."""
    write_json_atomic(Path(folder) / "config.json", {**config.as_dict(), "class_names": list(class_names)})


# -- the loop -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOutcome:
    folder: str
    steps: int
    stopped: bool  # stopped early on request (the checkpoint holds the last step)


def train_run(out: str | os.PathLike, config: training.TrainConfig | None, steps: int, *, resume: bool = False,
              sample_every: int = 200, checkpoint_every: int = 200, distributed: bool = False,
              device: str | None = None, progress: Progress | None = None,
              weights=None) -> RunOutcome:
    """Train until ``steps`` steps in total, writing the run folder (see the module docstring).

    ``config`` may be None with ``resume``: the run's own config is used. A ``progress`` callback
    that returns False (the page's Stop, a cancelled job) ends the run after saving the checkpoint,
    so it can be resumed. Top-level and picklable, so a page can run it in its own process.
    ``weights`` (a :class:`~.losses.PatternLossWeights`), on resume: continue with other loss weights
    (a schedule); the checkpoint and config.json record the weights in force from then on.
    """
    from .. import models

    out = Path(out)
    checkpoint = out / "checkpoint.pt"
    if resume:
        if not checkpoint.is_file():
            raise CheckpointError(f"There is no checkpoint at {checkpoint} to resume from yet.")
        saved = training.config_from_state(training.read_checkpoint(checkpoint))
        if config is not None and (tuple(config.classes) != saved.classes or config.size != saved.size):
            raise CheckpointError(f"This checkpoint was trained on classes {list(saved.classes)} at {saved.size} px; "
                                  f"the run asks for {list(config.classes)} at {config.size} px.")
        config = saved if weights is None else replace(saved, weights=weights)
    elif config is None:
        raise ConfigError("A new run needs its settings.")
    handle = models.load_model(config.model, device=device)
    trainer = training.Trainer(handle, config, distributed=distributed, warm=not resume)
    if resume:
        trainer.load(checkpoint)
    if steps <= trainer.steps_done:
        raise ConfigError(f"The run is already at step {trainer.steps_done}; ask for more steps than that.")
    lead = trainer.rank == 0
    if lead:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        write_run_config(out, config, [handle.class_names[c] for c in config.classes])
        truncate_log(out / "log.csv", trainer.steps_done)
        truncate_log(out / "samples.csv", trainer.steps_done)
    log = (out / "log.csv").open("a") if lead else None
    start, stopped = trainer.steps_done, False
    try:
        while trainer.steps_done < steps:
            losses = trainer.step()
            step = trainer.steps_done
            if log is not None:
                if log.tell() == 0:
                    log.write("step," + ",".join(losses) + "\n")
                log.write(f"{step}," + ",".join(f"{v:.6g}" for v in losses.values()) + "\n")
                log.flush()
            last = step == steps
            if lead and (step % sample_every == 0 or last):
                write_samples(trainer, out)
            if lead and (step % checkpoint_every == 0 or last):
                save_checkpoint(trainer, checkpoint)
            keep_going = True
            if progress is not None:
                keep_going = progress((step - start) / (steps - start),
                                      f"step {step} of {steps}: total {losses['total']:.2f}, "
                                      f"p(target) {losses['target_prob']:.3f}")
            if not keep_going and not last:
                stopped = True
                if lead:
                    save_checkpoint(trainer, checkpoint)
                    write_samples(trainer, out)
                break
    finally:
        if log is not None:
            log.close()
    return RunOutcome(str(out), trainer.steps_done, stopped)


def write_samples(trainer: training.Trainer, out: Path) -> None:
    """The sample grid PNG, and each class's mean probability on its column (the classifier sees the
    8-bit colour picture, as a user would) appended to ``samples.csv``."""
    grid = training.sample_grid(trainer)
    step = trainer.steps_done
    write_bytes_atomic(out / "samples" / f"step_{step:06d}.png", images.to_png_bytes(grid))
    probs = sample_probabilities(trainer, grid)
    path = out / "samples.csv"
    truncate_log(path, step - 1)
    with path.open("a") as table:
        if table.tell() == 0:
            table.write("step," + ",".join(f"p_{c}" for c in trainer.config.classes) + "\n")
        table.write(f"{step}," + ",".join(f"{p:.6g}" for p in probs) + "\n")


def sample_probabilities(trainer: training.Trainer, grid: np.ndarray) -> list[float]:
    """Mean p(class) over the sample grid's column of that class."""
    import torch

    size, classes = trainer.config.size, len(trainer.config.classes)
    rows = grid.shape[0] // size
    cells = [grid[r * size:(r + 1) * size, (c + 1) * size:(c + 2) * size] for c in range(classes) for r in range(rows)]
    x = images.to_tensor(np.stack(cells), device=trainer.handle.device, value_range=images.SIGNED)
    with torch.no_grad(), trainer.handle.lock:
        probs = training.class_probabilities(trainer.handle, x, trainer.classes.to(trainer.handle.device),
                                             grayscale=False).cpu()
    return [float(probs[c * rows:(c + 1) * rows, c].mean()) for c in range(classes)]


def save_checkpoint(trainer: training.Trainer, path: Path) -> None:
    """The checkpoint, then a small ``checkpoint.json`` with its step count for pages that poll."""
    trainer.save(path)
    write_bytes_atomic(path.with_suffix(".json"), json.dumps({"steps": trainer.steps_done}).encode())


def checkpoint_steps(folder: Path) -> int | None:
    """The step count of the run's checkpoint, from the small sidecar when it is current."""
    checkpoint, sidecar = folder / "checkpoint.pt", folder / "checkpoint.json"
    if not checkpoint.is_file():
        return None
    try:
        if sidecar.stat().st_mtime >= checkpoint.stat().st_mtime:
            return int(json.loads(sidecar.read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return int(training.read_checkpoint(checkpoint)["steps"])
    except CheckpointError:
        return None


def truncate_log(path: Path, steps: int) -> None:
    """Keep only the header and rows up to ``steps``: a resumed run redoes the steps after its
    checkpoint, and a killed run may have logged a half line."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if line.endswith("\n") and _step_of(line) is not None
                        and _step_of(line) <= steps]
    path.write_text("".join(kept) if steps > 0 else "")


def _step_of(line: str) -> int | None:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return None


# -- reading a run back -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunView:
    """What a page shows of a run folder."""

    folder: Path
    config: dict | None
    log: dict[str, np.ndarray]
    sample: Path | None
    sample_probs: dict[str, np.ndarray]
    checkpoint_steps: int | None

    @property
    def logged_steps(self) -> int:
        return int(self.log["step"][-1]) if len(self.log.get("step", ())) else 0


def read_log(path: Path) -> dict[str, np.ndarray]:
    """log.csv as columns; a half-written last line (the trainer is mid-write) is skipped. Older runs'
    columns get today's names (``vgg`` is ``classifier``)."""
    if not path.is_file():
        return {}
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        return {}
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    try:
        values = np.array(body, dtype=np.float64).reshape(len(body), len(header))
    except ValueError:
        return {}
    return current_names({name: values[:, i] for i, name in enumerate(header)})


def view_run(folder: Path) -> RunView:
    folder = Path(folder)
    config = None
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except ValueError:
            config = None
    if isinstance(config, dict) and isinstance(config.get("weights"), dict):
        config["weights"] = current_names(config["weights"])  # an older run's "vgg" is "classifier"
    samples = sorted((folder / "samples").glob("step_*.png")) if (folder / "samples").is_dir() else []
    return RunView(folder, config, read_log(folder / "log.csv"), samples[-1] if samples else None,
                   read_log(folder / "samples.csv"), checkpoint_steps(folder))


def list_runs(root: Path | None = None) -> list[Path]:
    root = runs_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True)


__all__ = ["MIN_SUBSTRATES", "RunOutcome", "RunView", "list_runs", "load_substrate_folder",
           "read_log", "runs_root", "safe_run_name", "save_uploads", "train_run",
           "view_run"]

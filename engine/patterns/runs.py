"""A training run on disk: the one loop the CLI and the page's training job share.

A run is a folder::

    config.json            the TrainConfig and the class names
    checkpoint.pt          G, D, both optimisers and the step count (atomic; resume from here)
    log.csv                every step's losses, appended (and cut back to the checkpoint on resume)
    samples/step_N.png     fixed substrates (rows) x each class (columns)
    samples.csv            each class's mean probability on its column of each sample grid
    substrates/            the user's own substrate images, when the run uses them
    training.lock          held (flock) by the one process that trains the run: the exclusive claim
    state.json             who trains it (server pid, boot id, host), the step, a heartbeat (see below)

Everything a page shows about a run (live sample grid, loss curves, p(target)) is read back from
these files, so it survives page reloads and even a server restart; the process that trains only
writes them.

Several server processes may share one cache (``GLASSBOX_CACHE``), and a server may be killed while
it trains. So the trainer holds an exclusive lock on ``training.lock`` (``flock``: the kernel drops
it when the process dies, however it dies, so there is never a stale lock to break) and rewrites
``state.json`` every few seconds. Any process can then tell, with :func:`run_activity`, whether a
run is training (and in which server) or was interrupted (its trainer is gone without saying it
ended). A trainer started by a server watches that server: when it is gone (killed), the trainer
saves a checkpoint and stops, so an orphan never trains on beside a resumed run.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import images
from ..errors import CheckpointError, ConfigError, DatasetError, GlassboxError, JobError
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


# -- who trains a run: the exclusive claim and the live state ------------------------------------------

try:
    import fcntl
except ImportError:  # not on Linux or macOS: no lock, so the heartbeat alone tells whether a run trains
    fcntl = None

LOCK_FILE = "training.lock"
STATE_FILE = "state.json"
HEARTBEAT_S = 3.0     # how often a trainer rewrites state.json
STALE_S = 30.0        # a heartbeat older than this means the trainer is gone (where the lock cannot tell)
ORPHAN_GRACE_S = 120.0  # a trainer whose server died gets this long to checkpoint before it exits hard
BOOT_ID = uuid.uuid4().hex[:12]  # this process's boot id: a restarted server (even one given the same pid) differs


class RunBusy(JobError):
    """Another process trains this run folder: two trainers would write the same checkpoint and log."""


def server_owner() -> dict:
    """This server process, as a trainer it starts records it: pid, boot id and host."""
    return {"pid": os.getpid(), "boot": BOOT_ID, "host": socket.gethostname()}


def read_state(folder: Path) -> dict | None:
    """state.json, or None when there is none (an older run, a CLI run of an older version) or it is unreadable."""
    try:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def lock_held(folder: Path) -> bool | None:
    """Whether some live process holds the run's training lock; None where locks do not work here.

    A shared lock taken and dropped at once: it fails exactly while a trainer holds its exclusive
    one. (A trainer that meets this probe retries for a moment, see :class:`RunClaim`.)"""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
        return None
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


@dataclass(frozen=True)
class RunActivity:
    """What a page needs to know about a run's training, read from its folder by any process.

    ``kind``: ``"training"`` (a live process trains it), ``"interrupted"`` (its trainer went away
    without saying it ended: the server was killed, or the machine stopped) or ``"idle"``.
    ``here``: the training belongs to this server process."""

    kind: str
    here: bool = False
    server_pid: int | None = None
    host: str | None = None
    step: int | None = None
    steps: int | None = None
    heartbeat: float | None = None
    checkpoint_steps: int | None = None

    @property
    def elsewhere(self) -> bool:
        return self.kind == "training" and not self.here

    def busy_sentence(self) -> str:
        if self.server_pid is None:  # the trainer has not written state.json yet
            return "This run is training in another process; it can be resumed here once it stops."
        where = f"pid {self.server_pid}" + (f" on {self.host}" if self.host and self.host != socket.gethostname() else "")
        return f"This run is training in another server process ({where}); it can be resumed here once it stops."

    def interrupted_sentence(self) -> str:
        when = time.strftime("%H:%M", time.localtime(self.heartbeat)) if self.heartbeat else "time unknown"
        saved = (f"the last checkpoint is step {self.checkpoint_steps}. Resume continues from it."
                 if self.checkpoint_steps is not None else "it had saved no checkpoint yet, so it cannot be resumed.")
        return f"The server stopped while this run was training at step {self.step or 0} ({when}); {saved}"


def run_activity(folder: Path) -> RunActivity:
    """Training here, in another live server process, interrupted, or idle: from the lock and state.json.

    The lock is the judge where it works (a dead trainer cannot hold it); where it does not, a
    heartbeat older than :data:`STALE_S` counts as a trainer gone."""
    folder = Path(folder)
    state = read_state(folder)
    held = lock_held(folder)
    if state is None:
        return RunActivity("training" if held else "idle", checkpoint_steps=checkpoint_steps(folder))
    owner = state.get("owner") if isinstance(state.get("owner"), dict) else {}
    heartbeat = state.get("heartbeat") if isinstance(state.get("heartbeat"), (int, float)) else None
    if held is None:
        fresh = heartbeat is not None and time.time() - heartbeat < STALE_S
        held = state.get("state") == "training" and fresh
    if held:
        kind = "training"
    elif state.get("state") in ("training", "interrupted"):
        kind = "interrupted"
    else:
        kind = "idle"
    return RunActivity(kind, here=owner.get("boot") == BOOT_ID, server_pid=owner.get("pid"), host=owner.get("host"),
                       step=state.get("step"), steps=state.get("steps"), heartbeat=heartbeat,
                       checkpoint_steps=checkpoint_steps(folder))


class RunClaim:
    """The trainer's exclusive hold on a run folder, with the heartbeat thread that keeps state.json
    current and watches the server that started it.

    ``server`` is the server (:func:`server_owner`) that asked for the training; when this process is
    that server's child, the server's death (our parent pid changes) sets :attr:`orphaned`, which
    the training loop treats as Stop; should the loop not get there, the process exits after
    :data:`ORPHAN_GRACE_S`. Release with the run's final state: finished, stopped, interrupted, failed.
    """

    def __init__(self, folder: Path, server: dict | None, steps: int, step: int = 0, *, wait_s: float = 2.0) -> None:
        self.folder, self.owner, self.steps, self.step = Path(folder), server or server_owner(), int(steps), int(step)
        self.parent = self.owner.get("pid") if self.owner.get("pid") == os.getppid() else None
        self.started = time.time()
        self.orphaned_at: float | None = None
        self._fd = self._lock(wait_s)
        self._write_lock = threading.Lock()
        self._done = threading.Event()
        self._write("training")
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.folder.name}", daemon=True)
        self._thread.start()

    def _lock(self, wait_s: float) -> int | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return None
        fd = os.open(self.folder / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + wait_s  # another server's probe holds a shared lock for a moment
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise RunBusy(run_activity(self.folder).busy_sentence()) from None
            except OSError as error:
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # no locks on this file system
                    os.close(fd)
                    return None
                os.close(fd)
                raise

    @property
    def orphaned(self) -> bool:
        """The server that started this trainer is gone."""
        if self.orphaned_at is None and self.parent is not None and os.getppid() != self.parent:
            self.orphaned_at = time.time()
        return self.orphaned_at is not None

    def _write(self, state: str) -> None:
        now = time.time()
        write_json_atomic(self.folder / STATE_FILE, {
            "state": state, "owner": self.owner, "trainer_pid": os.getpid(), "step": self.step,
            "steps": self.steps, "started": self.started, "heartbeat": now,
            "heartbeat_text": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))})

    def _beat(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            with self._write_lock:
                if self._done.is_set():
                    return
                self._write("training")
            if self.orphaned and time.time() - self.orphaned_at > ORPHAN_GRACE_S:
                with self._write_lock:
                    self._write("interrupted")
                os._exit(3)  # the loop never reached a step boundary; the kernel drops the lock

    def release(self, state: str) -> None:
        """Write the final state, stop the heartbeat and drop the lock (the lock last: until then we own it)."""
        self._done.set()
        with self._write_lock:
            self._write(state)
        self._thread.join(timeout=HEARTBEAT_S + 1)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- the loop -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOutcome:
    folder: str
    steps: int
    stopped: bool  # stopped early on request (the checkpoint holds the last step)


def train_run(out: str | os.PathLike, config: training.TrainConfig | None, steps: int, *, resume: bool = False,
              sample_every: int = 200, checkpoint_every: int = 200, distributed: bool = False,
              device: str | None = None, progress: Progress | None = None,
              weights=None, server: dict | None = None) -> RunOutcome:
    """Train until ``steps`` steps in total, writing the run folder (see the module docstring).

    ``config`` may be None with ``resume``: the run's own config is used. A ``progress`` callback
    that returns False (the page's Stop, a cancelled job) ends the run after saving the checkpoint,
    so it can be resumed. Top-level and picklable, so a page can run it in its own process.
    ``weights`` (a :class:`~.losses.PatternLossWeights`), on resume: continue with other loss weights
    (a schedule); the checkpoint and config.json record the weights in force from then on.
    ``server`` (:func:`server_owner`): the server that asked for the run, recorded in state.json;
    when this process is its child, its death stops the run after a checkpoint (:class:`RunClaim`).
    Raises :class:`RunBusy` when another process trains the folder.
    """
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
    # every rank of a distributed run trains the folder; the lead (RANK 0) claims it for all of them
    claim = RunClaim(out, server, steps, checkpoint_steps(out) or 0) if int(os.environ.get("RANK", "0")) == 0 else None
    final = "failed"
    try:
        outcome = _train_claimed(out, checkpoint, config, steps, resume, sample_every, checkpoint_every, distributed,
                                 device, progress, claim)
        final = "interrupted" if claim is not None and claim.orphaned else "stopped" if outcome.stopped else "finished"
        return outcome
    finally:
        if claim is not None:
            claim.release(final)


def _train_claimed(out: Path, checkpoint: Path, config: training.TrainConfig, steps: int, resume: bool,
                   sample_every: int, checkpoint_every: int, distributed: bool, device: str | None,
                   progress: Progress | None, claim: RunClaim | None) -> RunOutcome:
    """:func:`train_run`'s loop, once the folder is ours."""
    from .. import models

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
            if claim is not None:
                claim.step = step
                keep_going = keep_going and not claim.orphaned  # the server is gone: checkpoint and stop
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


__all__ = ["MIN_SUBSTRATES", "RunActivity", "RunBusy", "RunClaim", "RunOutcome", "RunView", "list_runs",
           "load_substrate_folder", "read_log", "read_state", "run_activity", "runs_root", "safe_run_name",
           "save_uploads", "server_owner", "train_run", "view_run"]

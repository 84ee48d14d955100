"""Long work as jobs: progress with ETA, cancel, and survival across widget clicks and reloads.

A Streamlit script is rerun from the top on every widget click, and a reload starts a new session,
so work done inline dies with the run that started it. Instead, a page submits the work to the
process-wide :func:`registry`, keeps the job id in ``st.query_params`` and polls :meth:`status`
from an ``st.fragment(run_every=...)``. The work itself only sees the engine's usual
``progress(fraction, message) -> bool`` callback (see :mod:`engine.progress`).

Jobs run one at a time by default: on a 2-core machine a second busy torch process slows a
2-thread forward ~10x, so a queue with a visible position is both faster and more honest.
Thread jobs share the cached models; process jobs (``kind="process"``, e.g. GAN training) get a
fresh spawned interpreter that can be terminated when it stops listening.

Many students share one server, so the queue is fair: each job has an ``owner`` (the browser
session), an owner runs at most one job at a time and queues only a few, and the queue is served
round-robin over owners (the one served longest ago first, FIFO within an owner). Work without an
owner (the CLI, engine tests) is one anonymous owner with neither limit, so it stays a plain FIFO.
Job threads are marked (:func:`in_job_thread`), so a model's lock can serve the pages' interactive
calls before a job's next step (:class:`engine.models.ModelLock`).

The registry lives in memory, so a server restart loses every job. A small on-disk journal (one
JSON per key under ``cache_root()/jobs``) remembers which server process started which key, so a
page can say "this job was lost when the server restarted" and offer to start it again, instead
of silently showing "Press Run" for work the student already asked for.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.spawn
import os
import pickle
import queue as queue_module
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from .errors import Cancelled, GlassboxError, JobError
from .io import cache_root, write_bytes_atomic
from .progress import Progress

log = logging.getLogger(__name__)

UNKNOWN_JOB = "This job is no longer known; it may have finished long ago or the server restarted."

_thread_role = threading.local()


def in_job_thread() -> bool:
    """True inside a thread job's worker thread: long work that a model's lock lets interactive
    calls (the pages' script threads) pass between its steps."""
    return getattr(_thread_role, "job", False)


class JobState(enum.Enum):
    """Lifecycle of a job. Compare with the members (``status.state is JobState.DONE``), never with
    strings: a plain ``Enum`` makes ``state == "done"`` always False, so a typo cannot pass silently."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
RESTARTABLE = (JobState.FAILED, JobState.CANCELLED)  # find_or_start starts these again
MAX_RECORDS = 4000  # per-step records a job keeps (the oldest go first); they are freed with the job


class RecordLog:
    """A job's per-step records (loss terms, snapshots): bounded, thread-safe, freed with the job.

    The work sees it as ``observer`` and only calls :meth:`append`; the page reads a copy through
    ``JobStatus.records``. Keeping them in the job (not in a page-level dict) means a reload or a
    second tab sees the same live curve, and nothing outlives the job in the registry.
    """

    def __init__(self, limit: int = MAX_RECORDS) -> None:
        self._items: deque = deque(maxlen=max(1, int(limit)))
        self._lock = threading.Lock()
        self.dropped = 0

    def append(self, record: Any) -> None:
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(record)

    def snapshot(self) -> tuple:
        with self._lock:
            return tuple(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job, safe to hand to a page (nothing in it changes afterwards)."""

    id: str
    title: str
    state: JobState
    fraction: float
    message: str
    eta_s: float | None
    elapsed_s: float
    queue_position: int | None
    error: str | None = None
    result: Any = None
    detail: str | None = None  # traceback text for logs; never shown to a student
    key: str | None = None
    records: tuple = ()  # the job's per-step records so far (a copy), when it keeps any
    pool: str = "default"
    owner: str | None = None  # the browser session that started it (None: anonymous, the CLI)
    waiting_for: str | None = None  # queued behind its owner's running job: that job's title

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def done(self) -> bool:
        return self.state is JobState.DONE


def error_sentence(exc: BaseException) -> str:
    """Our own errors already speak to people; anything else is named, without a traceback."""
    text = " ".join(str(exc).split())
    if isinstance(exc, GlassboxError) and text:
        return text
    name = type(exc).__name__
    if not text:
        return f"The job failed unexpectedly: {name}."
    return f"The job failed unexpectedly: {name}: {text}" + ("" if text[-1] in ".!?" else ".")


@dataclass(eq=False)
class _Job:
    id: str
    title: str
    key: str | None
    kind: str
    call: tuple  # (fn, args, kwargs)
    state: JobState = JobState.QUEUED
    fraction: float = 0.0
    message: str = "Waiting for a free worker."
    started: float | None = None
    ended: float | None = None
    cancel_requested: bool = False
    error: str | None = None
    detail: str | None = None
    result: Any = None
    records: RecordLog | None = None
    owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobRegistry:
    """Runs submitted work at most ``max_running`` at a time, fairly over owners, and remembers
    how it went.

    A named owner (a browser session) runs at most one job at a time, even when a worker is free:
    one student's second job waits for the first, and other students' jobs may pass it. It may
    queue at most ``max_queued_per_owner`` jobs, so one session cannot fill the queue. The queue is
    served round-robin: the owner served longest ago goes first, FIFO within an owner. ``None`` is
    one anonymous owner without those two limits (the CLI and engine tests keep a plain FIFO that
    may run several of its jobs at once). With ``journal``, each keyed job is written to the
    on-disk journal (:func:`journal_record`) so a restarted server can say which work it lost.
    """

    def __init__(self, max_running: int = 1, max_queued: int = 16, keep_finished: int = 32,
                 cancel_grace_s: float = 3.0, *, name: str = "default", max_queued_per_owner: int | None = None,
                 journal: bool = False) -> None:
        self.name = name
        self.max_running = max(1, int(max_running))
        self.max_queued = max(0, int(max_queued))
        self.max_queued_per_owner = (max(1, self.max_queued * 3 // 8) if max_queued_per_owner is None
                                     else max(1, int(max_queued_per_owner)))
        self.keep_finished = max(0, int(keep_finished))
        self.cancel_grace_s = cancel_grace_s
        self.journal = journal
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified whenever a job's state changes
        self._jobs: dict[str, _Job] = {}  # insertion order = submission order
        self._queue: deque[_Job] = deque()  # submission order; the round-robin picks from it
        self._by_key: dict[str, str] = {}
        self._served: dict[str | None, int] = {}  # owner -> serial of its latest start (round-robin)
        self._serial = 0

    # -- public API ---------------------------------------------------------------------------

    def find_or_start(self, key: str, fn: Callable[..., Any], *args: Any, title: str,
                      kind: Literal["thread", "process"] = "thread", records: bool = False,
                      owner: str | None = None, **kwargs: Any) -> JobStatus:
        """The job for ``key``: the one queued, running or done, else a new one (a failed or
        cancelled one is started again). This is the one way a page starts long work."""
        return self.status(self.submit(fn, *args, title=title, key=key, kind=kind, records=records,
                                       owner=owner, **kwargs))

    def submit(self, fn: Callable[..., Any], *args: Any, title: str, key: str | None = None,
               kind: Literal["thread", "process"] = "thread", records: bool = False,
               owner: str | None = None, **kwargs: Any) -> str:
        """Queue ``fn(*args, progress=..., **kwargs)`` for ``owner``; return its id.

        With ``key``, a job with that key that is queued, running or done is reused (whoever
        started it), so a rerun of the page, a reload or a second session with the same link does
        not start the work twice. With ``records``, the work also gets ``observer=``, a bounded
        :class:`RecordLog` that lives and dies with the job.
        """
        if kind not in ("thread", "process"):
            raise JobError(f"A job runs as a 'thread' or a 'process', not as {kind!r}.")
        if kind == "process":  # fail here, in the page, rather than later in a worker nobody watches
            try:
                if getattr(fn, "__module__", None) in ("__main__", "__mp_main__"):
                    raise pickle.PicklingError("defined in the page script")
                pickle.dumps((fn, args, kwargs))
            except Exception as exc:
                raise JobError("This work cannot run in a separate process: it must be a top-level "
                               f"function of an importable module, with picklable inputs ({exc}).") from exc
        with self._lock:
            if key is not None and key in self._by_key:
                old = self._jobs.get(self._by_key[key])
                if old is not None and old.state in (JobState.QUEUED, JobState.RUNNING, JobState.DONE):
                    return old.id
            if len(self._queue) >= self.max_queued:
                raise JobError(f"The job queue is full ({len(self._queue)} jobs waiting); "
                               "wait for one to finish or cancel one, then try again.")
            mine = sum(job.owner == owner for job in self._queue)
            if owner is not None and mine >= self.max_queued_per_owner:
                raise JobError(f"You already have {mine} jobs waiting, the most one session may queue; "
                               "wait for one of them to start or cancel one, then try again.")
            job = _Job(uuid.uuid4().hex[:12], title, key, kind, (fn, args, kwargs), owner=owner)
            if records:
                job.records = RecordLog()
            self._jobs[job.id] = job
            if key is not None:
                self._by_key[key] = job.id
            self._queue.append(job)
            self._start_waiting()
        if key is not None and self.journal:
            journal_record(key, title, self.name)
        return job.id

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            return self._snapshot(self._get(job_id))

    def find(self, key: str) -> JobStatus | None:
        """The latest job submitted with ``key``, if the registry still remembers it."""
        with self._lock:
            job_id = self._by_key.get(key)
            return self._snapshot(self._jobs[job_id]) if job_id in self._jobs else None

    def drop(self, job_id: str) -> None:
        """Forget a finished job now: its result and records are freed."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if not job.finished:
                raise JobError("A job that is still running cannot be dropped; cancel it first.")
            self._forget(job)

    def list(self) -> list[JobStatus]:
        with self._lock:
            return [self._snapshot(job) for job in self._jobs.values()]

    def cancel(self, job_id: str) -> None:
        """Stop a job: a queued one at once, a running one at its next progress call.

        A process job that keeps ignoring the request is terminated after ``cancel_grace_s``.
        """
        with self._lock:
            job = self._get(job_id)
            if job.finished:
                return
            job.cancel_requested = True
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
                self._finish(job, JobState.CANCELLED, message="Cancelled before it started.")

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job finished or ``timeout`` seconds passed; return its status then."""
        with self._lock:
            job = self._get(job_id)
            self._changed.wait_for(lambda: job.finished, timeout)
            return self._snapshot(job)

    # -- internals (all called with the lock held unless noted) -------------------------------

    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobError(UNKNOWN_JOB)
        return job

    def _snapshot(self, job: _Job) -> JobStatus:
        now = time.monotonic()
        elapsed = 0.0 if job.started is None else (job.ended or now) - job.started
        eta = None
        if job.state is JobState.RUNNING and job.fraction > 0:
            eta = elapsed * (1.0 - job.fraction) / job.fraction
        elif job.state is JobState.DONE:
            eta = 0.0
        position = waiting_for = None
        if job.state is JobState.QUEUED:
            position = self._plan().index(job) + 1
            if job.owner is not None:
                waiting_for = next((other.title for other in self._jobs.values()
                                    if other.owner == job.owner and other.state is JobState.RUNNING), None)
        return JobStatus(job.id, job.title, job.state, job.fraction, job.message, eta, elapsed,
                         position, job.error, job.result if job.state is JobState.DONE else None,
                         job.detail, job.key, job.records.snapshot() if job.records is not None else (),
                         self.name, job.owner, waiting_for)

    @staticmethod
    def _next(queue: Iterable[_Job], served: dict, blocked: set) -> _Job | None:
        """The round-robin's pick: the first queued job of the owner served longest ago (never
        served counts as longest; ties go to the earlier submission), skipping ``blocked`` owners."""
        heads: dict[str | None, tuple[int, _Job]] = {}
        for index, job in enumerate(queue):
            if job.owner not in heads and job.owner not in blocked:
                heads[job.owner] = (index, job)
        if not heads:
            return None
        owner = min(heads, key=lambda o: (served.get(o, -1), heads[o][0]))
        return heads[owner][1]

    def _plan(self) -> list[_Job]:
        """The queue in the order the round-robin would start it if workers were free: what the
        queue position shown to a student counts."""
        served, plan, left, serial = dict(self._served), [], list(self._queue), self._serial
        while left:
            job = self._next(left, served, set())
            plan.append(job)
            left.remove(job)
            serial += 1
            served[job.owner] = serial
        return plan

    def _start_waiting(self) -> None:
        running = [job for job in self._jobs.values() if job.state is JobState.RUNNING]
        # a named owner runs one job at a time; the anonymous owner (None) is limited by max_running only
        blocked = {job.owner for job in running if job.owner is not None}
        count = len(running)
        while self._queue and count < self.max_running:
            job = self._next(self._queue, self._served, blocked)
            if job is None:
                break
            self._queue.remove(job)
            self._serial += 1
            self._served[job.owner] = self._serial
            if job.owner is not None:
                blocked.add(job.owner)
            job.state, job.started, job.message = JobState.RUNNING, time.monotonic(), "Starting."
            target = self._run_thread if job.kind == "thread" else self._run_process
            threading.Thread(target=target, args=(job,), name=f"glassbox-job-{job.id}", daemon=True).start()
            count += 1
        if len(self._served) > 256:  # forget owners with nothing left here (they are served first again)
            present = {job.owner for job in self._jobs.values()}
            self._served = {owner: n for owner, n in self._served.items() if owner in present}
        self._changed.notify_all()

    def _finish(self, job: _Job, state: JobState, *, result: Any = None, error: str | None = None,
                detail: str | None = None, message: str | None = None) -> None:
        job.state, job.ended, job.result, job.error, job.detail = state, time.monotonic(), result, error, detail
        job.message = message or {JobState.DONE: "Done.", JobState.FAILED: "Failed.",
                                  JobState.CANCELLED: "Cancelled."}[state]
        if state is JobState.DONE:
            job.fraction = 1.0
        if detail:
            log.warning("Job %s (%s) failed: %s\n%s", job.id, job.title, error, detail)
        job.call = ()  # drop references to inputs (images, models) once they are not needed
        self._forget_old()
        self._start_waiting()

    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j.ended)
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        del self._jobs[job.id]
        if job.key is not None and self._by_key.get(job.key) == job.id:
            del self._by_key[job.key]
        job.result = None
        if job.records is not None:
            job.records.clear()
            job.records = None

    def _record(self, job: _Job, fraction: float, message: str) -> bool:
        """The progress callback's body: remember how far the job got; False once cancelled."""
        with self._lock:
            if not job.finished:
                job.fraction = min(max(float(fraction), 0.0), 1.0)
                job.message = str(message)
            return not job.cancel_requested

    def _run_thread(self, job: _Job) -> None:  # runs in the job's own thread, lock not held
        fn, args, kwargs = job.call
        if job.records is not None:
            kwargs = {**kwargs, "observer": job.records}
        _thread_role.job = True  # this thread yields a model's lock to interactive calls (in_job_thread)
        try:
            result = fn(*args, progress=lambda f, m="": self._record(job, f, m), **kwargs)
        except Cancelled:
            outcome = dict(state=JobState.CANCELLED)
        except BaseException as exc:  # a job must never stay 'running' and block the queue
            outcome = dict(state=JobState.FAILED, error=error_sentence(exc), detail=traceback.format_exc())
        else:
            outcome = dict(state=JobState.DONE, result=result)
        with self._lock:
            self._finish(job, **outcome)

    def _run_process(self, job: _Job) -> None:  # runs in a watcher thread, lock not held
        """Start the spawned child, relay its messages, and make sure it is gone afterwards."""
        ctx = multiprocessing.get_context("spawn")
        messages, cancel_event = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_child_main, args=(job.call, messages, cancel_event, job.records is not None),
                           name=_CHILD_PREFIX + job.id, daemon=True)
        outcome: dict = {}
        try:
            proc.start()
            outcome = self._relay(job, proc, messages, cancel_event)
        except Exception as exc:  # could not start it, or could not read what it sent back
            outcome = dict(state=JobState.FAILED, error="The job's worker process failed to start or to "
                           f"send back its result ({type(exc).__name__}).", detail=traceback.format_exc())
        finally:
            if proc.pid is not None:  # started: let it exit by itself, unless it is being cancelled
                proc.join(0.0 if outcome.get("state") is JobState.CANCELLED else 2.0)
                for end in (proc.terminate, proc.kill):
                    if proc.is_alive():
                        end()
                        proc.join(1.0)
            messages.close()
        with self._lock:
            self._finish(job, **outcome)

    def _relay(self, job: _Job, proc: Any, messages: Any, cancel_event: Any) -> dict:
        """Pass progress on until the child sends an outcome, dies, or outlives a cancel's grace."""
        deadline = None
        while True:
            with self._lock:
                if job.cancel_requested and deadline is None:
                    cancel_event.set()
                    deadline = time.monotonic() + self.cancel_grace_s
            if deadline is not None and time.monotonic() > deadline:
                return dict(state=JobState.CANCELLED, message="Cancelled; the worker was stopped.")
            alive = proc.is_alive()  # checked first: if it was already dead, the pipe holds all it said
            try:
                kind, *payload = messages.get(timeout=0.1)
            except queue_module.Empty:
                if alive:
                    continue
                if deadline is not None:
                    return dict(state=JobState.CANCELLED)
                return dict(state=JobState.FAILED, error="The job's worker process stopped unexpectedly "
                            f"(exit code {proc.exitcode}) before it reported a result.")
            if kind == "progress":
                self._record(job, *payload)
            elif kind == "record":
                if job.records is not None:
                    job.records.append(payload[0])
            elif kind == "done":
                return dict(state=JobState.DONE, result=pickle.loads(payload[0]))
            else:
                return dict(state=JobState(kind), error=payload[0], detail=payload[1])


_CHILD_PREFIX = "glassbox-job-"
_spawn_preparation = multiprocessing.spawn.get_preparation_data


def _preparation_without_main(name: str) -> dict:
    """Spawn's start-up data, minus "re-run the parent's __main__" for our job processes.

    Under ``streamlit run``, ``__main__`` is the page script itself: the child would execute the
    whole page (load models, submit jobs) before starting the work. Job functions live in
    importable modules, so the child never needs the parent's ``__main__``.
    """
    data = _spawn_preparation(name)
    if name.startswith(_CHILD_PREFIX):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


multiprocessing.spawn.get_preparation_data = _preparation_without_main


class _RelayedRecords:
    """The child's ``observer``: each record goes to the parent's RecordLog through the queue."""

    def __init__(self, messages: Any) -> None:
        self._messages = messages

    def append(self, record: Any) -> None:
        self._messages.put(("record", record))


def _child_main(call: tuple, messages: Any, cancel_event: Any, records: bool = False) -> None:
    """Entry point of a spawned job process: run the work, send back one outcome message."""
    fn, args, kwargs = call
    if records:
        kwargs = {**kwargs, "observer": _RelayedRecords(messages)}

    def progress(fraction: float, message: str = "") -> bool:
        messages.put(("progress", float(fraction), str(message)))
        return not cancel_event.is_set()

    try:
        # pickle here: a result the queue cannot send would otherwise vanish in its feeder thread
        outcome = ("done", pickle.dumps(fn(*args, progress=progress, **kwargs)))
    except Cancelled:
        outcome = ("cancelled", None, None)
    except BaseException as exc:
        outcome = ("failed", error_sentence(exc), traceback.format_exc())
    messages.put(outcome)
    messages.close()
    messages.join_thread()


_registries: dict[str, JobRegistry] = {}
_registry_lock = threading.Lock()
POOLS = ("default", "training")


def registry(pool: str = "default") -> JobRegistry:
    """One registry per pool in this server process, shared by every browser session.

    ``default`` runs the pages' short jobs one at a time (GLASSBOX_MAX_JOBS to change); ``training``
    runs long trainings (minutes to hours) one at a time beside it, so a training does not hold up
    everybody's saliency maps, and gives a stopping run 60 s to write its checkpoint. Only the
    default pool's short jobs go to the journal (a restart's losses are offered again there).
    """
    if pool not in POOLS:
        raise JobError(f"There is no job pool called {pool!r}.")
    with _registry_lock:
        if pool not in _registries:
            if pool == "training":
                # no journal: a training's run folder says itself what a restart did to it (Resume)
                _registries[pool] = JobRegistry(max_running=1, max_queued=4, cancel_grace_s=60.0, name=pool,
                                                max_queued_per_owner=1)
            else:
                try:
                    max_running = int(os.environ.get("GLASSBOX_MAX_JOBS", "1"))
                except ValueError:
                    max_running = 1
                _registries[pool] = JobRegistry(max_running=max_running, name=pool, journal=True)
        return _registries[pool]


# ---------------------------------------------------------------------------------------------
# The journal: which server process started which key, so a restart's losses can be named.

BOOT_ID = uuid.uuid4().hex  # this server process; a new pid could be an old one reused, a boot id never is
HOST = socket.gethostname()
JOURNAL_MAX_AGE_S = 24 * 3600.0  # entries (and server heartbeats) older than a day are dropped
JOURNAL_MAX_ENTRIES = 500
HEARTBEAT_EVERY_S = 30.0
HEARTBEAT_STALE_S = 120.0  # a live server refreshes its heartbeat 4 times in this span
_heartbeat_started = False
_heartbeat_lock = threading.Lock()


def journal_dir() -> Path:
    return cache_root() / "jobs"


def _journal_path(key: str, pool: str) -> Path:
    return journal_dir() / (hashlib.sha256(f"{pool}|{key}".encode()).hexdigest()[:32] + ".json")


def _heartbeat_path(boot: str) -> Path:
    return journal_dir() / "servers" / f"{boot}.json"


def _beat() -> None:
    write_bytes_atomic(_heartbeat_path(BOOT_ID), json.dumps({"pid": os.getpid(), "host": HOST}).encode())


def _keep_beating() -> None:
    """Refresh this process's heartbeat while it lives, so another live server sharing the cache
    can tell our jobs from a dead server's (a pid alone can be reused after a restart)."""
    while True:
        time.sleep(HEARTBEAT_EVERY_S)
        try:
            _beat()
        except OSError as exc:
            log.warning("Could not refresh the job journal's heartbeat: %s", exc)


def journal_record(key: str, title: str, pool: str = "default") -> None:
    """Remember that this server process started the job ``key`` (best effort: a read-only or full
    cache only loses the "lost in a restart" sentence, never the job)."""
    global _heartbeat_started
    entry = {"key": key, "title": title, "pool": pool, "pid": os.getpid(), "boot": BOOT_ID, "host": HOST,
             "started": time.time()}
    try:
        with _heartbeat_lock:
            if not _heartbeat_started:
                _beat()
                threading.Thread(target=_keep_beating, name="glassbox-journal-heartbeat", daemon=True).start()
                _heartbeat_started = True
        write_bytes_atomic(_journal_path(key, pool), json.dumps(entry).encode())
        _prune_journal()
    except OSError as exc:
        log.warning("Could not write the job journal entry for %r: %s", title, exc)


def _prune_journal() -> None:
    """Drop entries and heartbeats older than a day, then the oldest entries beyond the cap."""
    now, entries = time.time(), []
    for path in list(journal_dir().glob("*.json")) + list((journal_dir() / "servers").glob("*.json")):
        try:
            modified = path.stat().st_mtime
            if now - modified > JOURNAL_MAX_AGE_S:
                path.unlink()
            elif path.parent == journal_dir():
                entries.append((modified, path))
        except OSError:  # another server pruned it meanwhile
            continue
    for _, path in sorted(entries)[: max(0, len(entries) - JOURNAL_MAX_ENTRIES)]:
        with contextlib.suppress(OSError):
            path.unlink()


def journal_entry(key: str, pool: str = "default") -> dict | None:
    """The journal's entry for ``key``, or None (none, unreadable, or older than a day)."""
    path = _journal_path(key, pool)
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    if time.time() - float(entry.get("started", 0)) > JOURNAL_MAX_AGE_S:
        return None
    return entry


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _heartbeat_fresh(boot: str) -> bool:
    try:
        return time.time() - _heartbeat_path(boot).stat().st_mtime < HEARTBEAT_STALE_S
    except OSError:
        return False


def lost_job(key: str, pool: str = "default") -> dict | None:
    """The journal entry of ``key`` if a server process that is gone started it, else None.

    Not lost: no entry; an entry of this very process (the registry merely forgot the job); an
    entry of another live server sharing the cache (its pid alive here, or on another host, with
    a fresh heartbeat). Lost: the pid is not alive on this host, or it is alive but belongs to a
    different boot whose heartbeat went stale (a pid reused after a restart).
    """
    entry = journal_entry(key, pool)
    if entry is None or entry.get("boot") == BOOT_ID:
        return None
    try:
        pid = int(entry.get("pid"))
    except (TypeError, ValueError):
        return entry
    if entry.get("host") == HOST and (pid == os.getpid() or not _pid_alive(pid)):
        return entry
    return None if _heartbeat_fresh(str(entry.get("boot"))) else entry


@contextlib.contextmanager
def tqdm_progress(desc: str, *, disable: bool = False) -> Iterator[Progress]:
    """A progress callback for the CLI that drives a tqdm bar (Ctrl-C is the CLI's cancel);
    ``disable`` keeps it quiet (the non-lead ranks of a distributed run)."""
    from tqdm import tqdm

    bar = tqdm(total=1.0, desc=desc, unit="", disable=disable, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
               "{elapsed}<{remaining} {postfix}")

    def progress(fraction: float, message: str = "") -> bool:
        bar.set_postfix_str(message, refresh=False)
        bar.update(min(max(float(fraction), 0.0), 1.0) - bar.n)
        return True

    try:
        yield progress
    finally:
        bar.close()

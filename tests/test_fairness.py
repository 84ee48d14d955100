"""Fairness across browser sessions: one running job per session, a round-robin queue, a per-session
queue cap, and interactive calls that go before a job's next step on a shared model."""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.errors import JobError  # noqa: E402
from engine.jobs import JobRegistry, JobState, registry  # noqa: E402
from engine.models import ModelLock  # noqa: E402
from tests.test_jobs import wait_until  # noqa: E402


class Gated:
    """Work that records the order jobs start in and holds its worker until the gate opens."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.gate = threading.Event()

    def __call__(self, name: str, progress=None) -> str:
        self.order.append(name)
        progress(0.5, f"{name} holds its worker.")
        assert self.gate.wait(20), "the test never opened the gate"
        return name


def submit_all(jobs: JobRegistry, work: Gated, names: list[str], **owners) -> dict[str, str]:
    return {name: jobs.submit(work, name, title=name, key=f"{name}-{uuid.uuid4().hex[:6]}", owner=owners[name[0]])
            for name in names}


def test_two_owners_with_three_jobs_each_alternate():
    jobs, work = JobRegistry(max_running=1), Gated()
    ids = submit_all(jobs, work, ["A1", "A2", "A3", "B1", "B2", "B3"], A="session-a", B="session-b")
    wait_until(lambda: work.order == ["A1"])
    positions = {name: jobs.status(job_id).queue_position for name, job_id in ids.items()}
    assert positions == {"A1": None, "B1": 1, "A2": 2, "B2": 3, "A3": 4, "B3": 5}
    a2 = jobs.status(ids["A2"])
    assert a2.owner == "session-a" and a2.waiting_for == "A1"  # says why it waits
    assert jobs.status(ids["B1"]).waiting_for is None  # B has nothing running: a round-robin wait
    work.gate.set()
    for job_id in ids.values():
        assert jobs.wait(job_id, timeout=10).done
    assert work.order == ["A1", "B1", "A2", "B2", "A3", "B3"]


def test_an_owner_runs_one_job_even_with_a_free_worker_and_others_pass_it():
    jobs, work = JobRegistry(max_running=2), Gated()
    ids = submit_all(jobs, work, ["A1", "A2"], A="session-a")
    wait_until(lambda: work.order == ["A1"])
    assert jobs.status(ids["A2"]).state is JobState.QUEUED  # a worker is free, yet A2 waits for A1
    assert jobs.status(ids["A2"]).waiting_for == "A1"
    ids.update(submit_all(jobs, work, ["B1"], B="session-b"))
    wait_until(lambda: work.order == ["A1", "B1"])  # B1 passed A2 and runs beside A1
    assert jobs.status(ids["B1"]).state is JobState.RUNNING
    assert jobs.status(ids["A2"]).state is JobState.QUEUED
    work.gate.set()
    for job_id in ids.values():
        assert jobs.wait(job_id, timeout=10).done
    assert work.order == ["A1", "B1", "A2"]


def test_one_session_cannot_fill_the_queue():
    jobs, work = JobRegistry(max_running=1, max_queued=16, max_queued_per_owner=2), Gated()
    ids = submit_all(jobs, work, ["A1", "A2", "A3"], A="session-a")  # one runs, two wait
    with pytest.raises(JobError, match="You already have 2 jobs waiting"):
        jobs.submit(work, "A4", title="A4", owner="session-a")
    ids.update(submit_all(jobs, work, ["B1", "B2"], B="session-b"))  # the others still get in
    with pytest.raises(JobError, match="You already have 2 jobs waiting"):
        jobs.find_or_start("b3", work, "B3", title="B3", owner="session-b")
    work.gate.set()
    for job_id in ids.values():
        assert jobs.wait(job_id, timeout=10).done
    assert JobRegistry().max_queued_per_owner < JobRegistry().max_queued  # the default caps too


def test_the_anonymous_owner_keeps_a_fifo_that_may_run_in_parallel():
    jobs, work = JobRegistry(max_running=2), Gated()
    ids = {name: jobs.submit(work, name, title=name) for name in ["N1", "N2", "N3", "N4"]}
    wait_until(lambda: sorted(work.order) == ["N1", "N2"])  # both workers busy with the anonymous owner
    assert [jobs.status(ids[n]).queue_position for n in ("N3", "N4")] == [1, 2]
    assert jobs.status(ids["N3"]).waiting_for is None and jobs.status(ids["N3"]).owner is None
    for _ in range(20):  # no per-owner cap for the anonymous owner (the CLI, engine tests)
        jobs.cancel(jobs.submit(work, "extra", title="extra"))
    work.gate.set()
    for job_id in ids.values():
        assert jobs.wait(job_id, timeout=10).done
    assert work.order[2:] == ["N3", "N4"]


def test_a_job_found_by_key_is_shared_and_keeps_its_owner():
    jobs, work = JobRegistry(max_running=1), Gated()
    first = jobs.find_or_start("shared", work, "A1", title="A1", owner="session-a")
    second = jobs.find_or_start("shared", work, "B1", title="B1", owner="session-b")  # same link, other session
    assert second.id == first.id and second.owner == "session-a"
    work.gate.set()
    assert jobs.wait(first.id, timeout=10).result == "A1" and work.order == ["A1"]


# -- interactive calls before the next job step ------------------------------------------------


def job_steps(lock, log: list, holding: threading.Event, proceed: threading.Event, stop: threading.Event,
              progress=None) -> int:
    """A job that takes the lock step after step; the first step holds it until ``proceed``."""
    steps = 0
    while not stop.is_set():
        with lock:
            steps += 1
            log.append(f"job step {steps}")
            if steps == 1:
                holding.set()
                assert proceed.wait(10)
        if not progress(min(steps / 1000, 0.99), f"step {steps}"):
            break
    return steps


def run_interactive_behind_a_job(lock, interactive) -> tuple[list, bool]:
    """Start the job, make an interactive call (``interactive(log)`` notes in ``log`` when it holds
    the lock) while the job holds it, let the step end; return the log and whether the job was
    still running when the interactive call came back."""
    jobs = JobRegistry(max_running=1)
    log, holding, proceed, stop = [], threading.Event(), threading.Event(), threading.Event()
    job_id = jobs.submit(job_steps, lock, log, holding, proceed, stop, title="steps")
    assert holding.wait(10)
    done = threading.Event()

    def call() -> None:  # a page's script thread: not a job thread
        interactive(log)
        done.set()

    caller = threading.Thread(target=call, name="script-thread")
    caller.start()
    wait_until(lambda: lock.waiting_interactive() == 1)  # the call is waiting for this very step
    proceed.set()  # the job's step ends; its next step asks for the lock at once
    assert done.wait(20)
    still_running = jobs.status(job_id).state is JobState.RUNNING
    wait_until(lambda: sum(entry.startswith("job") for entry in log) >= 3)  # the job goes on afterwards
    stop.set()
    caller.join(5)
    assert jobs.wait(job_id, timeout=10).done
    return log, still_running


def test_an_interactive_call_goes_before_the_jobs_next_step():
    lock = ModelLock()

    def interactive(log: list) -> None:
        with lock:
            log.append("interactive")

    log, still_running = run_interactive_behind_a_job(lock, interactive)
    assert still_running
    assert log[:3] == ["job step 1", "interactive", "job step 2"]


def test_classify_on_the_shared_model_is_served_between_two_job_steps(tiny):
    import torch

    x = torch.rand(1, 3, tiny.input_size, tiny.input_size)
    answers = []

    def interactive(log: list) -> None:  # the forward pass runs under the lock: note it there
        hook = tiny.model.register_forward_pre_hook(lambda module, args: log.append("interactive"))
        try:
            answers.append(tiny.classify(x))
        finally:
            hook.remove()

    log, still_running = run_interactive_behind_a_job(tiny.lock, interactive)
    assert still_running and answers[0].indices
    assert log[:3] == ["job step 1", "interactive", "job step 2"]
    assert not tiny.lock._is_owned()


def test_the_model_lock_is_reentrant_and_refuses_a_foreign_release():
    lock = ModelLock()
    with lock:
        with lock:
            assert lock._is_owned()
        assert lock._is_owned()
    assert not lock._is_owned()
    with pytest.raises(RuntimeError):
        lock.release()
    holder_in, holder_out = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holder_in.set()
            holder_out.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holder_in.wait(5)
    assert not lock.acquire(blocking=False) and not lock.acquire(timeout=0.05)
    assert lock.waiting_interactive() == 0  # a caller that gave up no longer holds jobs back
    holder_out.set()
    thread.join(5)
    assert lock.acquire(timeout=5)
    lock.release()


# -- two browser sessions through the frame's controller ----------------------------------------


def session(name: str, run: str, work: Gated):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(ROOT / "tests" / "apps" / "fair_app.py"), default_timeout=15)
    app.session_state["name"], app.session_state["run"], app.session_state["work"] = name, run, work
    app.run()
    assert not app.exception, app.exception
    return app


def rows(app) -> list[str]:
    return [element.proto.text for element in app.get("progress")]


def test_two_browser_sessions_with_three_jobs_each_alternate():
    from tests.apptest import wait_for_jobs

    wait_for_jobs()  # the process-wide pool: nothing left over from another test may run or queue
    run, work, gate = uuid.uuid4().hex[:8], Gated(), Gated()
    pool = registry()
    blocker = pool.submit(gate, "gate", title="gate")  # holds the one worker, so both sessions queue
    wait_until(lambda: gate.order == ["gate"])
    a, b = session("A", run, work), session("B", run, work)
    a.button[0].click().run()
    b.button[0].click().run()
    owners = {a.text[-1].value, b.text[-1].value}
    assert len(owners) == 2 and "owner None" not in owners  # two sessions, two owners
    assert any("queued, position" in row for row in rows(a))
    gate.gate.set()
    assert pool.wait(blocker, timeout=10).done
    wait_until(lambda: work.order == ["A1"])
    a.run()  # A2 waits for A's running job, not for a free worker
    assert any(row.startswith("A2: waits for your other job (A1) to finish") for row in rows(a)), rows(a)
    b.run()  # B's jobs wait in the round-robin
    assert any(row.startswith("B1:") and "queued, position 1" in row for row in rows(b)), rows(b)
    work.gate.set()
    for name in ("A1", "A2", "A3", "B1", "B2", "B3"):
        status = pool.find(f"fair-app|{run}|{name}")
        assert pool.wait(status.id, timeout=10).done
    assert work.order == ["A1", "B1", "A2", "B2", "A3", "B3"]


def test_a_stream_of_interactive_calls_cannot_starve_a_job(monkeypatch):
    """Three students clicking back to back always leave one interactive caller waiting; the job still
    gets the lock once it has waited max_defer_s (with the plain "interactive first" rule it never would)."""
    import time

    import engine.models

    monkeypatch.setattr(ModelLock, "max_defer_s", 0.2)
    monkeypatch.setattr(engine.models, "in_job_thread", lambda: threading.current_thread().name == "job")
    lock = ModelLock()
    stop, job_got = threading.Event(), threading.Event()

    def student() -> None:
        while not stop.is_set():
            with lock:
                time.sleep(0.005)

    students = [threading.Thread(target=student, name=f"script-{i}") for i in range(3)]
    for thread in students:
        thread.start()
    try:
        wait_until(lambda: lock.waiting_interactive() >= 1)
        job = threading.Thread(target=lambda: (lock.acquire(), job_got.set(), lock.release()), name="job")
        job.start()
        got = job_got.wait(10)
    finally:
        stop.set()
        for thread in students:
            thread.join(5)
    job.join(5)
    assert got

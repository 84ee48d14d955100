"""Server restarts during training (issue 16): a run folder's claim and live state (engine), a
trainer that stops by itself when its server is killed, and the real thing in a browser: kill
`streamlit run` mid-training, start it again on the same cache, read what happened, Resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import models
from engine.patterns import runs, training
from tests.browser import app_process, chromium_page, click_and_wait, screenshot, wait_for_app

ROOT = Path(__file__).resolve().parent.parent


def small_config() -> training.TrainConfig:
    return training.TrainConfig(classes=(1, 3), model=models.TEST_MODEL, size=32, batch=1, base=8, seed=0)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for a reaper that may never come)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def wait_until(condition, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


# A process that claims a run folder and holds it: "another server" for the engine tests.
HOLDER = textwrap.dedent("""
    import sys, time
    from engine.patterns import runs
    claim = runs.RunClaim(sys.argv[1], None, 50, 7)
    print("claimed", flush=True)
    time.sleep(600)
""")


def start_holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    return holder


def test_a_claim_is_exclusive_and_its_state_tells_here_elsewhere_and_interrupted(tmp_path):
    folder = tmp_path / "run"
    assert runs.run_activity(folder).kind == "idle"  # nothing there yet
    claim = runs.RunClaim(folder, runs.server_owner(), 20, 4)
    try:
        here = runs.run_activity(folder)
        assert (here.kind, here.here, here.server_pid, here.step, here.steps) == ("training", True, os.getpid(), 4, 20)
        with pytest.raises(runs.RunBusy, match=rf"training in another server process \(pid {os.getpid()}\); it can "
                                               "be resumed here once it stops"):
            runs.RunClaim(folder, None, 30, wait_s=0.2)  # a second claim, even from the same process, is refused
    finally:
        claim.release("stopped")
    assert runs.read_state(folder)["state"] == "stopped" and runs.run_activity(folder).kind == "idle"
    runs.RunClaim(folder, None, 30, wait_s=0.2).release("finished")  # free again

    holder = start_holder(folder)  # another process holds it
    try:
        other = runs.run_activity(folder)
        assert (other.kind, other.here, other.elsewhere, other.server_pid, other.step) == (
            "training", False, True, holder.pid, 7)
        with pytest.raises(runs.RunBusy, match=rf"\(pid {holder.pid}\)"):
            runs.train_run(folder, small_config(), 10)
        assert runs.read_state(folder)["owner"]["pid"] == holder.pid  # the refused trainer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    gone = runs.run_activity(folder)  # killed: the kernel dropped its lock, state.json still says "training"
    assert (gone.kind, gone.step, gone.checkpoint_steps) == ("interrupted", 7, None)
    assert gone.interrupted_sentence().startswith("The server stopped while this run was training at step 7 (")
    assert "no checkpoint yet, so it cannot be resumed" in gone.interrupted_sentence()
    runs.RunClaim(folder, None, 30, wait_s=0.2).release("finished")  # a dead holder leaves no lock to break


def test_without_locks_the_heartbeat_decides(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    runs.train_run(folder, small_config(), 2, sample_every=2, checkpoint_every=2)
    state = runs.read_state(folder)
    assert state["state"] == "finished" and state["step"] == 2 and state["owner"]["boot"] == runs.BOOT_ID
    monkeypatch.setattr(runs, "fcntl", None)  # a file system without locks
    assert runs.lock_held(folder) is None
    owner = {"pid": 1, "boot": "elsewhere", "host": "other-host"}
    (folder / runs.STATE_FILE).write_text(json.dumps({**state, "state": "training", "owner": owner,
                                                      "heartbeat": time.time() - 2}))
    fresh = runs.run_activity(folder)
    assert fresh.elsewhere and fresh.busy_sentence() == ("This run is training in another server process (pid 1 on "
                                                         "other-host); it can be resumed here once it stops.")
    (folder / runs.STATE_FILE).write_text(json.dumps({**state, "state": "training", "owner": owner,
                                                      "heartbeat": time.time() - runs.STALE_S - 5}))
    stale = runs.run_activity(folder)
    assert stale.kind == "interrupted" and stale.interrupted_sentence().endswith(
        "the last checkpoint is step 2. Resume continues from it.")


# A stand-in server: starts the training as the page does (a spawned process job), then waits to be killed.
SERVER = textwrap.dedent("""
    import sys, time
    from engine import jobs, models
    from engine.patterns import runs, training
    config = training.TrainConfig(classes=(1, 3), model=models.TEST_MODEL, size=32, batch=1, base=8, seed=0)
    jobs.registry("training").find_or_start("train", runs.train_run, sys.argv[1], config, 100000, sample_every=10,
                                            checkpoint_every=10, server=runs.server_owner(), title="t", kind="process")
    time.sleep(600)
""")


def test_a_trainer_stops_after_a_checkpoint_when_its_server_is_killed(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(folder)], cwd=ROOT, env=env)
    try:
        wait_until(lambda: (runs.checkpoint_steps(folder) or 0) >= 10, 180, "the first checkpoint")
        trainer = runs.read_state(folder)["trainer_pid"]
        assert runs.read_state(folder)["owner"]["pid"] == server.pid and alive(trainer)
        assert runs.run_activity(folder).elsewhere
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    killed_at = time.monotonic()
    wait_until(lambda: not alive(trainer), 60, "the orphaned trainer to stop")
    print(f"orphaned trainer gone {time.monotonic() - killed_at:.1f} s after its server was killed")
    state, view = runs.read_state(folder), runs.view_run(folder)
    assert state["state"] == "interrupted"
    assert view.checkpoint_steps == state["step"] == view.logged_steps  # it saved its last step on the way out
    activity = runs.run_activity(folder)
    assert activity.kind == "interrupted" and f"at step {state['step']} (" in activity.interrupted_sentence()
    resumed = runs.train_run(folder, None, state["step"] + 3, resume=True, sample_every=10, checkpoint_every=10)
    assert resumed.steps == state["step"] + 3 and runs.read_state(folder)["state"] == "finished"
    steps = list(runs.read_log(folder / "log.csv")["step"])
    assert steps == list(range(1, state["step"] + 4))  # no step logged twice, none missing


# -- the real thing: `streamlit run` killed mid-training, started again on the same cache --------------------

@contextlib.contextmanager
def app_server(cache: Path, name: str, timeout: float = 120.0):
    """`streamlit run` with its own GLASSBOX_CACHE; yields (url, process) so a test can kill it."""
    with app_process(env={"GLASSBOX_CACHE": str(cache), "OMP_NUM_THREADS": "1"}, log_name=f"streamlit-{name}",
                     timeout=timeout) as started:
        yield started


def start_run_in_page(page, url: str, name: str, steps: int = 2000) -> None:
    """The Train form as a user fills it, cheap: the tiny model, the paper's recipe (one critic), 64 px."""
    page.goto(f"{url}/patterns?image=chelsea&model={models.TEST_MODEL}&mode=train")
    wait_for_app(page, "Start training")
    page.get_by_text("The paper's settings (sec. 3)").click()
    wait_for_app(page)
    page.get_by_role("textbox", name="Name", exact=True).fill(name)
    page.get_by_role("textbox", name="Name", exact=True).press("Enter")
    wait_for_app(page)
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_label("Steps").press("Enter")
    wait_for_app(page)
    size = page.locator('[data-testid="stSlider"]').filter(has_text="Size (px)").get_by_role("slider")
    size.focus()
    size.press("ArrowLeft")  # 128 -> 64
    wait_for_app(page)
    assert size.get_attribute("aria-valuetext") == "64" or size.get_attribute("aria-valuenow") in ("0", "64")
    click_and_wait(page, "Start training", "Stop saves a checkpoint", timeout_ms=60_000)


def resume_to(page, target: int) -> None:
    box = page.get_by_label("Train until step")
    box.fill(str(target))
    box.press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Resume", exact=True).click()
    page.get_by_text(f"checkpoint at step {target}").first.wait_for(timeout=240_000)
    page.get_by_role("button", name="Resume", exact=True).wait_for(timeout=60_000)  # the job has ended
    wait_for_app(page)


@pytest.mark.browser
def test_a_server_killed_mid_training_restarts_and_the_run_resumes(tmp_path):
    cache, name = tmp_path / "cache", "restart-run"
    folder = cache / "pattern-runs" / name
    with chromium_page() as page:
        with app_server(cache, "restart-a") as (url, server):
            start_run_in_page(page, url, name)
            page.get_by_text("Samples at step 25").first.wait_for(timeout=180_000)  # the live grid: it trains
            state = runs.read_state(folder)
            trainer = state["trainer_pid"]
            assert state["owner"]["pid"] == server.pid and alive(trainer)
            server.send_signal(signal.SIGKILL)
            server.wait()
            killed_at = time.monotonic()
        wait_until(lambda: not alive(trainer), 30, "the training process to stop after its server was killed")
        print(f"trainer gone {time.monotonic() - killed_at:.1f} s after the server was killed")
        state = runs.read_state(folder)
        step, saved = state["step"], runs.checkpoint_steps(folder)
        assert state["state"] == "interrupted" and saved == step >= 25

        with app_server(cache, "restart-b") as (url, _):
            page.goto(f"{url}/patterns?image=chelsea&model={models.TEST_MODEL}&mode=train&run={name}")
            wait_for_app(page, "The server stopped while this run was training")
            when = time.strftime("%H:%M", time.localtime(state["heartbeat"]))
            page.get_by_text(f"The server stopped while this run was training at step {step} ({when}); the last "
                             f"checkpoint is step {saved}. Resume continues from it.").wait_for()
            screenshot(page, "restart-interrupted")
            resume_to(page, saved + 10)
            assert not page.get_by_text("The server stopped while").count()  # it ended normally this time
            assert not page.get_by_text("Traceback").count()
            screenshot(page, "restart-resumed")
    assert runs.checkpoint_steps(folder) == saved + 10 and runs.read_state(folder)["state"] == "finished"
    assert list(runs.read_log(folder / "log.csv")["step"]) == list(range(1, saved + 11))  # no step twice

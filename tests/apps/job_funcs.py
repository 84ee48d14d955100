"""Top-level job functions for tests: importable by a spawned child, and free of torch."""

from __future__ import annotations

import os
import time

from engine.errors import ConfigError
from engine.progress import report

STARTS: dict[str, int] = {}  # tag -> how many times slow_count began (shared with AppTest scripts)


def slow_count(steps: int, step_s: float, tag: str | None = None, counter: list | None = None,
               progress=None, observer=None, payload_bytes: int = 0) -> int:
    """Count to ``steps``, sleeping ``step_s`` per step, reporting before each step; with an
    ``observer``, record each step (with ``payload_bytes`` of data, like an inversion snapshot)."""
    if tag is not None:
        STARTS[tag] = STARTS.get(tag, 0) + 1
    for i in range(steps):
        report(progress, i / steps, f"Step {i + 1} of {steps}.")
        time.sleep(step_s)
        if counter is not None:
            counter[0] += 1
        if observer is not None:
            observer.append({"step": i + 1, "payload": bytes(payload_bytes)})
    report(progress, 1.0, "Counted.")
    return steps


def fail_plainly(progress=None):
    raise ValueError("boom")


def fail_politely(progress=None):
    raise ConfigError("The layer 'fc9' does not exist in this model.")


def ignore_cancel(seconds: float, progress=None) -> str:
    """Reports once, then sleeps without ever asking again: only terminate() can stop it."""
    report(progress, 0.5, f"Sleeping in process {os.getpid()}.")
    time.sleep(seconds)
    return "woke up"


def die_abruptly(progress=None):
    report(progress, 0.1, "About to vanish.")
    os._exit(3)


def own_pid(progress=None) -> int:
    return os.getpid()

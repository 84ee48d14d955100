"""Progress and cancellation by callback.

Every long engine function takes ``progress: Progress | None``. It is called as
``progress(fraction, message)`` with fraction in [0, 1]; returning ``False`` asks the work to stop,
which the engine turns into :class:`engine.errors.Cancelled` at the next step boundary.
"""

from __future__ import annotations

from typing import Callable, Optional

from .errors import Cancelled

Progress = Callable[[float, str], Optional[bool]]


def report(progress: Progress | None, fraction: float, message: str = "") -> None:
    """Call ``progress`` if given; raise :class:`Cancelled` when it answers ``False``."""
    if progress is None:
        return
    if progress(min(max(float(fraction), 0.0), 1.0), message) is False:
        raise Cancelled("Stopped on request.")


def within(progress: Progress | None, start: float, stop: float, what: str = "") -> Progress | None:
    """A callback for one stage of a longer run: its fractions mapped onto [start, stop] of the whole,
    its messages prefixed with ``what`` (cancellation passes through)."""
    if progress is None:
        return None
    prefix = f"{what}: " if what else ""
    return lambda fraction, message="": progress(start + (stop - start) * fraction, prefix + message)

"""The foundation's concurrency check, shared by every family: N threads x all calls == serial."""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence


def assert_threads_match_serial(call: Callable[[Any], Any], calls: Sequence[Any], equal: Callable[[Any, Any], bool],
                                *, threads: int = 8) -> None:
    """Run every call serially, then from ``threads`` threads at once (each in its own order)."""
    serial = [call(c) for c in calls]
    results: dict[tuple[int, int], Any] = {}
    errors: list[BaseException] = []

    def worker(thread_id: int) -> None:
        try:
            for j in range(len(calls)):
                k = (j + 3 * thread_id) % len(calls)  # each thread walks the calls in its own order
                results[(thread_id, k)] = call(calls[k])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    assert len(results) == threads * len(calls)
    mismatched = [key for key, value in results.items() if not equal(value, serial[key[1]])]
    assert not mismatched, f"{len(mismatched)} results differ from the serial run, e.g. (thread, call) {mismatched[0]}"

"""Glassbox's engine: every experiment, importable and testable without Streamlit.

Importing it tunes glibc's allocator once (see :func:`_keep_large_blocks`); keep this file light,
since every spawned job process imports it.
"""

import ctypes
import ctypes.util
import os


def _keep_large_blocks(threshold: int = 1 << 30) -> bool:
    """Stop glibc from unmapping and re-faulting large tensors after every batch.

    Measured on the bundled model (docs/benchmarks.md): batch-32 inference went from 30 to 97
    images/s with the mmap and trim thresholds raised to 1 GiB. Costs: the process keeps its peak
    memory. Skipped when the user set the thresholds themselves, or not on glibc.
    """
    if os.environ.get("GLASSBOX_KEEP_MALLOC") == "1" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    if "MALLOC_ARENA_MAX" not in os.environ:
        # Threads started from now on (each job runs in one) share the arenas that exist instead
        # of each keeping an arena of its own at its peak: with the thresholds above, 200 class
        # inversions grew RSS 14 % without this and 4.3 % with it (docs/benchmarks.md, issue 11).
        mallopt(m_arena_max, 1)
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))


ALLOCATOR_TUNED = _keep_large_blocks()

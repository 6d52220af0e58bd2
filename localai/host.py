"""What the host machine has: its memory, this process's peak resident set, the CPU cores it may use.

The same answers on Linux, macOS and Windows. Only the standard library and psutil, no torch: the
benchmark worker asks for its cores before torch starts its threads.
"""

from __future__ import annotations

import os
import sys

import psutil


def memory() -> tuple[int, int]:
    """(available, total) bytes of host memory. On Linux these are MemAvailable and MemTotal of
    /proc/meminfo; psutil estimates the first, as `free` does, on kernels that lack it."""
    info = psutil.virtual_memory()
    return info.available, info.total


def peak_rss() -> int:
    """Peak resident set of this process so far, in bytes."""
    if sys.platform == "win32":  # no getrusage; the working set is Windows' resident set
        return psutil.Process().memory_info().peak_wset
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux and the BSDs


def usable_cores() -> list[int]:
    """The CPU cores this process may run on: its affinity where the OS has one (Linux), else all."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))

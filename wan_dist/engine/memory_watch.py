"""A rank process's host-memory limit where ``RLIMIT_DATA`` cannot serve: GPU ranks, whose CUDA driver maps far
more address space than it uses, so a data limit would refuse the driver itself.

A daemon thread reads the process's resident private memory (``RssAnon`` of ``/proc/self/status``: heap, anonymous
maps, host buffers; not files mapped from disk, not device memory) every ``interval_s``. Past the limit it says so
on stderr and ends the process. Its render group then breaks, and the caller rebuilds it and retries the render
(engine.dispatch; at most ``max_attempts``), as for any killed rank: before the node's OOM killer picks a process,
which may be Serve's controller. A poll, not a hard limit: an allocation that grows past the node's memory between
two polls is not caught.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["EXIT_CODE", "resident_private_mb", "watch_memory"]

EXIT_CODE = 86
"""The exit status of a process the watch ended (the shell's 128 + SIGKILL is the OOM killer's, not ours)."""


def resident_private_mb() -> float:
    """This process's resident anonymous memory in MiB (``RssAnon``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise OSError("/proc/self/status has no RssAnon line: the memory watch needs Linux")


def _end_process(used_mb: float, limit_mb: int) -> None:
    print(f"wan-dist rank (pid {os.getpid()}): {used_mb:.0f} MiB of private memory is past the group's "
          f"memory_limit_mb={limit_mb}: ending this rank", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)


def watch_memory(limit_mb: int, *, interval_s: float = 0.25,
                 on_exceed: Callable[[float, int], None] = _end_process) -> threading.Event:
    """Start the watch; returns an event that stops it when set. ``on_exceed(used_mb, limit_mb)`` runs once, in the
    watch's thread, the first time a poll finds more than ``limit_mb``; by default it ends the process."""
    if limit_mb <= 0:
        raise ValueError(f"watch_memory: limit_mb must be > 0, got {limit_mb}")
    resident_private_mb()  # fail here, in the caller, where /proc cannot tell
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            used = resident_private_mb()
            if used > limit_mb:
                on_exceed(used, limit_mb)
                return

    threading.Thread(target=run, name="wan-dist-memory-watch", daemon=True).start()
    return stop

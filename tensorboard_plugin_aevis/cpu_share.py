"""How many threads a server-side torch computation should use: the CPU cores no other task holds now."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Optional

LOADAVG = "/proc/loadavg"
SAMPLES = 3
SAMPLE_INTERVAL_S = 0.001


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else ``os.cpu_count()``)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def running_tasks(loadavg: str = LOADAVG) -> Optional[int]:
    """The kernel's count of runnable tasks now (the fourth field of ``loadavg``, ``running/total``;
    the calling thread is one of them), or None when the file cannot be read or parsed (not Linux)."""
    try:
        with open(loadavg, encoding="ascii") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def free_cores(loadavg: str = LOADAVG, samples: int = SAMPLES, interval_s: float = SAMPLE_INTERVAL_S) -> int:
    """The usable cores (:func:`usable_cores`) that no other runnable task holds now, at least 1.

    Reads the count of runnable tasks (:func:`running_tasks`) ``samples`` times ``interval_s``
    apart and keeps the least, so a task that runs for a moment does not count.

    Args:
        loadavg: the file to read (Linux's ``/proc/loadavg``).
        samples, interval_s: how often (at least once) and how far apart it is read.

    Returns:
        ``usable_cores() - (running - 1)``, at least 1; every usable core when the file cannot
        be read or parsed (not Linux).
    """
    cores = usable_cores()
    running = None
    for sample in range(samples):
        if sample:
            time.sleep(interval_s)
        count = running_tasks(loadavg)
        if count is None:
            return cores
        running = count if running is None else min(running, count)
    return max(cores - max(running - 1, 0), 1)


@contextlib.contextmanager
def torch_threads() -> Iterator[int]:
    """Run the ``with`` body with torch's intra-op threads set to ``min(torch's current count,
    free_cores())``, restored afterwards. On a CPU shared with other work, torch's
    threads wait for each other at every operation while one of them waits for a core
    (docs/architecture.md, "Threads of a contribution request"); this leaves that core alone.

    torch's count is process-wide: callers must not run torch work concurrently in other
    threads that rely on their own count (the contribution service holds one lock).

    Yields:
        The thread count used.
    """
    import torch

    before = torch.get_num_threads()
    threads = min(before, free_cores())
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)

"""A thread-safe LRU bounded by the bytes of what it holds, computing each value once.

Used for the plugin's computed answers, the analyses the reader has read, and the
contribution answers. Imports nothing of the backend.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Dict, Tuple


class ByteLRU:
    """Thread-safe LRU of computed answers, bounded by their total size in bytes.

    :meth:`get_or_compute` runs one computation per key at a time: requests that arrive
    while it runs wait for its answer instead of computing it again (a failure is not
    cached: each waiter then computes itself).
    """

    def __init__(self, max_bytes: int):
        self._items: "collections.OrderedDict[tuple, Tuple[Any, int]]" = collections.OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._running: Dict[tuple, threading.Lock] = {}

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: tuple) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: tuple, value: Any, size: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size > self._max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self._max_bytes:
                self._bytes -= self._items.popitem(last=False)[1][1]

    def get_or_compute(self, key: tuple, compute: Callable[[], Any], size: Callable[[Any], int]) -> Any:
        """The cached value of ``key``, else ``compute()`` (once for simultaneous callers), cached with ``size(value)``."""
        found = self.get(key)
        if found is not None:
            return found
        with self._lock:
            running = self._running.setdefault(key, threading.Lock())
        with running:
            found = self.get(key)
            if found is not None:
                return found
            try:
                value = compute()
                self.put(key, value, size(value))
                return value
            finally:
                with self._lock:
                    if self._running.get(key) is running:
                        del self._running[key]


def answer_size(value: Any) -> int:
    """Bytes of a cached answer (str, bytes, or a tuple of them)."""
    if isinstance(value, tuple):
        return sum(answer_size(v) for v in value)
    return len(value) if isinstance(value, (str, bytes)) else 64

"""How many `/error` messages go out per second, counted apart per source.

A client sending garbage frames at video rate must not flood the OSC feedback target, so errors
are forwarded at most `per_second` a second; but a flood of bad inputs must not hide the rare
failures of the server itself (an encoder that ran out of memory, an output that broke), so
those have their own count.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

INPUT = "input"  # what a client sent: malformed frames
SERVER = "server"  # the server's own failures: engine step, conditioning encode, outputs


class ErrorRateLimit:
    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self._clock = clock
        self._lock = threading.Lock()  # called from the ZeroMQ, Spout and frame-loop threads
        self._windows: dict[str, tuple[int, int]] = {}  # source -> (second, errors in it)

    def allow(self, source: str) -> bool:
        """Count one error from `source`; True while it is within this second's allowance."""
        with self._lock:
            second = int(self._clock())
            start, n = self._windows.get(source, (second, 0))
            if start != second:
                n = 0
            self._windows[source] = (second, n + 1)
            return n < self.per_second

"""The bounded freshest-frame input buffer between the receive thread and the frame loop.

When input outruns the engine the oldest waiting frame is dropped (and counted), so latency stays
bounded by the capacity (the batch size) instead of growing with an unbounded queue.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Pending:
    """One received frame waiting for the engine."""

    id: int
    pixels: Any  # HxWxC uint8 ndarray
    recv: float  # time.perf_counter() at receipt
    recv_wall: float  # time.time() at receipt
    t: float | None = None  # the sender's clock, echoed back


class LatestBuffer:
    """Keeps at most `capacity` frames; `put` drops the oldest when full."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._items: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def set_capacity(self, capacity: int) -> int:
        """Change the capacity (the batch size changed); returns how many frames were dropped."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._cond:
            self._capacity = capacity
            dropped = 0
            while len(self._items) > capacity:
                self._items.popleft()
                dropped += 1
            self._cond.notify_all()
            return dropped

    def put(self, item: Pending) -> int:
        """Add the newest frame; returns the number of older frames dropped to make room (0 or 1)."""
        with self._cond:
            if self._closed:
                return 1
            dropped = 0
            while len(self._items) >= self._capacity:
                self._items.popleft()
                dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def clear(self) -> int:
        """Drop everything waiting; returns how many frames were dropped."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def take(self, max_n: int, timeout: float, gather: float = 0.004) -> list[Pending]:
        """Up to `max_n` frames in arrival order, or [] after `timeout` s with nothing to take.

        Once a frame is waiting, waits for a full batch only until that frame is `gather` seconds
        old, so a lone frame is never held back more than a few milliseconds.
        """
        deadline = time.perf_counter() + timeout
        with self._cond:
            while not self._items and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return []
                self._cond.wait(left)
            if self._closed:
                return []
            until = self._items[0].recv + gather
            while len(self._items) < max_n and not self._closed:
                left = until - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(max_n, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def close(self) -> None:
        """Wake any waiting `take` (it returns []) and refuse further frames."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

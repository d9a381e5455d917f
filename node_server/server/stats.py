"""Frame-loop statistics: fps and latency p50 over the last second, plus running counters.

Written from the receive and frame-loop threads, read from the OSC thread, so every access holds
one small lock; the per-frame cost is an append to a deque.
"""

from __future__ import annotations

import collections
import threading
import time

from ..control.target import Status

STATES = ("loading", "warming", "running", "paused")


class Stats:
    """Counters and a one-second window of (publish time, latency) pairs."""

    def __init__(self, window: float = 1.0, clock=time.perf_counter):
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[float, float]] = collections.deque()
        self.frames = 0
        self.dropped = 0
        self.errors = 0
        self.state = "loading"
        self.prompt = ""

    def frame_done(self, recv: float, sent: float) -> None:
        """One frame published; `recv` and `sent` are perf_counter() seconds."""
        with self._lock:
            self.frames += 1
            self._recent.append((sent, (sent - recv) * 1000.0))
            self._trim(sent)

    def add_dropped(self, n: int = 1) -> None:
        if n:
            with self._lock:
                self.dropped += n

    def add_error(self, n: int = 1) -> None:
        with self._lock:
            self.errors += n

    def set_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        with self._lock:
            self.state = state

    def set_prompt(self, prompt: str) -> None:
        with self._lock:
            self.prompt = prompt

    def _trim(self, now: float) -> None:
        cutoff = now - self.window
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()

    def snapshot(self) -> Status:
        with self._lock:
            self._trim(self._clock())
            n = len(self._recent)
            if n:
                lat = sorted(l for _, l in self._recent)
                p50 = lat[(n - 1) // 2] if n % 2 else (lat[n // 2 - 1] + lat[n // 2]) / 2
            else:
                p50 = 0.0
            return Status(
                fps=n / self.window,
                latency_ms=p50,
                frames=self.frames,
                dropped=self.dropped,
                errors=self.errors,
                state=self.state,
                prompt=self.prompt,
            )

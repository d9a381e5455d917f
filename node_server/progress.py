"""Progress reporting for slow steps (model load, warm-up, offline render) on stderr.

A tiny text bar rather than a dependency: it must work in a plain terminal, in a log file
(no carriage returns when stderr is not a TTY) and be silent in tests when asked.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A counter with an optional total, drawn as a bar on a TTY and as sparse lines otherwise."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None, enabled: bool = True):
        self.label = label
        self.total = total
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn_count = -1
        self._closed = False

    def update(self, n: int = 1, note: str = "") -> None:
        self.count += n
        now = time.perf_counter()
        interval = 0.1 if self._tty else 2.0
        if now - self._last_draw >= interval or (self.total is not None and self.count >= self.total):
            self._draw(note)
            self._last_draw = now

    def _draw(self, note: str = "") -> None:
        if not self.enabled:
            return
        self._drawn_count = self.count
        elapsed = time.perf_counter() - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(self.count / self.total, 1.0)
            bar = "#" * int(frac * 24)
            text = f"{self.label} [{bar:<24}] {self.count}/{self.total} {rate:5.1f}/s"
        else:
            text = f"{self.label} {self.count} {rate:5.1f}/s"
        if note:
            text += f" {note}"
        if self._tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, note: str = "") -> float:
        """Finish the bar; returns the elapsed seconds."""
        elapsed = time.perf_counter() - self._start
        if not self._closed:
            self._closed = True
            if note or self._drawn_count != self.count:
                self._draw(note)
            if self._tty and self.enabled:
                self.stream.write("\n")
                self.stream.flush()
        return elapsed

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def step(message: str, stream: TextIO | None = None, enabled: bool = True) -> None:
    """Announce one slow step (`loading unet...`) on its own line."""
    if enabled:
        out = stream if stream is not None else sys.stderr
        out.write(message + "\n")
        out.flush()

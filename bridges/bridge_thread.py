"""The thread of one video bridge (Spout, NDI; in or out), started and stopped the same way.

A bridge's thread is started directly or through the server's supervisor (`spawn(name, body)`,
which restarts it if it dies), and `close` stops it within a timeout. A sender's thread also
takes the newest output frame from a one-slot mailbox: `publish` never blocks the frame loop,
and a frame the thread had not taken yet is replaced and counted in `skipped`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

Spawn = Callable[[str, Callable[[], None]], Any]


class BridgeThread:
    """start/close of the bridge's thread; subclasses set `thread_name` and write `_run`."""

    thread_name = "bridge"

    def _init_thread(self) -> None:
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, spawn: Optional[Spawn] = None) -> None:
        """Start the thread, through `spawn(name, body)` when given (the server's supervisor)."""
        if spawn is not None:
            self._thread = spawn(self.thread_name, self._run)
            return
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _signal_stop(self) -> None:
        self._stop.set()

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the thread (it releases what it holds on its way out); True when it ended."""
        self._signal_stop()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _run(self) -> None:  # pragma: no cover - every bridge writes its own
        raise NotImplementedError


class SenderThread(BridgeThread):
    """A bridge that sends: the newest frame waits in one slot for the thread."""

    def _init_thread(self) -> None:
        super()._init_thread()
        self._cond = threading.Condition()
        self._pending: Any = None
        self.skipped = 0

    def _hand_over(self, item: Any) -> None:
        """Put `item` in the slot (replacing, and counting, one not yet taken); never blocks."""
        with self._cond:
            if self._pending is not None:
                self.skipped += 1
            self._pending = item
            self._cond.notify()

    def _next(self) -> Any:
        """Wait for the next item; None once `close` was called."""
        with self._cond:
            while self._pending is None and not self._stop.is_set():
                self._cond.wait()
            if self._stop.is_set():
                return None
            item, self._pending = self._pending, None
            return item

    def _signal_stop(self) -> None:
        with self._cond:
            self._stop.set()
            self._cond.notify()

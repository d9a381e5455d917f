"""Keeps the server's I/O threads running: a thread body that ends on its own is restarted.

Every receive loop already catches, counts and reports what its input does to it; the
supervisor is the net under that net. A body that raises or returns while nobody asked it to
stop is reported as a server error (`/error`, counted in `/status/errors`) and run again on the
same named thread after a backoff (0.1 s, doubling up to 5 s; a run that lasted 30 s counts as
healthy again), so a bug in one loop costs a moment of input, never the rest of the show.

The bridges (ZeroMQ, Spout, NDI), the OSC receive loop and the frame loop take an optional
`spawn(name, body)` in their `start()`; the server passes `Supervisor.spawn`, anyone else gets a
plain daemon thread, so a thread joins without knowing about the supervisor. The server reports
`states()` (`ServerApp.threads()`), `down()` and `restarts` in its status
(`/status/threads_down`, `/status/restarts`).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Callable

Body = Callable[[], None]
# spawn(name, body) -> the started thread (anything with `join(timeout)` and `is_alive()`)
Spawn = Callable[[str, Body], threading.Thread]

RUNNING = "running"
RESTARTING = "restarting"  # the body ended unexpectedly; waiting out the backoff
ENDED = "ended"  # ended after the supervisor was told the server is stopping

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
HEALTHY_AFTER = 30.0  # a run this long resets the backoff


class _Supervised:
    def __init__(self, name: str, body: Body):
        self.name = name
        self.body = body
        self.state = RUNNING
        self.restarts = 0
        self.last_failure = ""
        self.thread: threading.Thread | None = None


class Supervisor:
    """Runs named thread bodies and restarts one that ends while the server is not stopping.

    `on_failure(reason)` gets one line per unexpected end (the server's `report_server_error`).
    """

    def __init__(
        self,
        on_failure: Callable[[str], None],
        *,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        healthy_after: float = HEALTHY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.on_failure = on_failure
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self._clock = clock
        self._lock = threading.Lock()
        self._threads: dict[str, _Supervised] = {}
        self._stopping = threading.Event()

    def spawn(self, name: str, body: Body) -> threading.Thread:
        """Start `body` on a daemon thread called `name`, supervised; a `Spawn` for bridges.

        `body` must return when its owner asks it to stop; the owner calls `stop()` first (or
        the supervisor counts that return as a failure and runs the body again).
        """
        with self._lock:
            if name in self._threads and self._threads[name].state != ENDED:
                raise ValueError(f"a supervised thread named {name!r} is already running")
            entry = _Supervised(name, body)
            self._threads[name] = entry
            entry.thread = threading.Thread(target=self._guard, args=(entry,), name=name, daemon=True)
        entry.thread.start()
        return entry.thread

    def stop(self) -> None:
        """The server is stopping: bodies that return now have ended normally, none restarts."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def states(self) -> dict[str, str]:
        """Thread name -> `running`, `restarting` or `ended`."""
        with self._lock:
            return {name: e.state for name, e in self._threads.items()}

    def down(self) -> list[str]:
        """Names of the supervised threads that should run but do not (restarting, or gone)."""
        with self._lock:
            entries = list(self._threads.values())
        if self._stopping.is_set():
            return []
        return [e.name for e in entries
                if e.state != RUNNING or e.thread is None or not e.thread.is_alive()]

    @property
    def restarts(self) -> int:
        with self._lock:
            return sum(e.restarts for e in self._threads.values())

    def _guard(self, entry: _Supervised) -> None:
        backoff = self.first_backoff
        while True:
            started = self._clock()
            try:
                entry.body()
                why = "returned"
            except BaseException as exc:  # noqa: BLE001 - the whole point: nothing ends the thread
                why = f"{type(exc).__name__}: {exc}"[:200]
                if not self._stopping.is_set():
                    print(f"node-server: thread {entry.name} failed:", file=sys.stderr)
                    traceback.print_exc()
            if self._stopping.is_set():
                entry.state = ENDED
                return
            if self._clock() - started >= self.healthy_after:
                backoff = self.first_backoff
            entry.state = RESTARTING
            entry.restarts += 1
            entry.last_failure = why
            try:
                self.on_failure(f"thread {entry.name} stopped unexpectedly ({why}); "
                                f"restarting it in {backoff:g} s")
            except Exception:  # a failing reporter must not stop the restart
                pass
            if self._stopping.wait(backoff):
                entry.state = ENDED
                return
            backoff = min(backoff * 2, self.max_backoff)
            entry.state = RUNNING

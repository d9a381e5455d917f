"""The thread that drives the engine: take a batch of the freshest frames, step, publish.

It is the only thread that touches the engine's `step` and the PUB socket, so neither needs a lock.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

from .latest import LatestBuffer, Pending
from .stats import Stats

Publish = Callable[[dict[str, Any], Any], None]


class FrameLoop:
    """Runs `engine.step` on batches from `buffer` until `stop()`.

    `batch_size()` is read every batch so a batch-size change over OSC takes effect at once;
    `paused()` stops rendering (the app drops incoming frames meanwhile).
    """

    def __init__(
        self,
        engine: Any,
        buffer: LatestBuffer,
        publish: Publish,
        stats: Stats,
        *,
        batch_size: Callable[[], int],
        paused: Callable[[], bool],
        on_error: Callable[[str], None],
        gather: float = 0.004,
        poll: float = 0.05,
    ):
        self.engine = engine
        self.buffer = buffer
        self.publish = publish
        self.stats = stats
        self.batch_size = batch_size
        self.paused = paused
        self.on_error = on_error
        self.gather = gather
        self.poll = poll
        self._stop = threading.Event()
        self._thread: Any = None

    def start(self, spawn: Callable[[str, Callable[[], None]], Any] | None = None) -> None:
        """Start the thread, through `spawn(name, body)` when given (the server's supervisor)."""
        if spawn is None:
            self._thread = threading.Thread(target=self._run, name="frame-loop", daemon=True)
            self._thread.start()
        else:
            self._thread = spawn("frame-loop", self._run)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; returns True when it has ended."""
        if self._thread is None:
            return True
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.paused():
                self._stop.wait(self.poll)
                continue
            items = self.buffer.take(self.batch_size(), timeout=self.poll, gather=self.gather)
            if not items or self._stop.is_set():
                continue
            self._step(items)

    def _step(self, items: list[Pending]) -> None:
        try:
            outs = self.engine.step([p.pixels for p in items], [p.id for p in items])
        except Exception as exc:  # keep serving: one bad batch must not end the show
            self.stats.add_dropped(len(items))
            self.on_error(f"engine step failed: {type(exc).__name__}: {exc}")
            print(f"node-server: engine step failed: {exc!r}", file=sys.stderr)
            return
        if len(outs) == len(items) and all(o.id == p.id for o, p in zip(outs, items)):
            pairs = list(zip(items, outs))
        else:  # match by id when the engine returned a different set
            by_id = {p.id: p for p in items}
            pairs = [(by_id[o.id], o) for o in outs if o.id in by_id]
        batch_size = self.batch_size()
        for item, out in pairs:
            sent = time.perf_counter()
            server = {
                "recv": item.recv_wall,
                "sent": time.time(),
                "latency_ms": round((sent - item.recv) * 1000.0, 3),
                "batch": len(items),
                "batch_size": batch_size,
            }
            fields: dict[str, Any] = {"v": 1, "id": item.id, "prompt": out.prompt, "server": server}
            if item.t is not None:
                fields["t"] = item.t
            # Counted before the send so that a client never sees more frames than the status.
            self.stats.frame_done(item.recv, sent)
            try:
                self.publish(fields, out.image)
            except Exception as exc:
                self.on_error(f"publish failed: {exc}")
        if len(pairs) < len(items):  # the engine returned fewer outputs than frames
            self.stats.add_dropped(len(items) - len(pairs))
        self.stats.set_prompt(getattr(self.engine, "active_prompt", "") or "")
        pop_error = getattr(self.engine, "pop_encoder_error", None)
        failure = pop_error() if pop_error is not None else None
        if failure:
            self.on_error(failure)

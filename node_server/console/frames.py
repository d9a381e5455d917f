"""Thumbnails of the input and output frames for the web console, at a few fps, only while watched.

`offer(kind, image)` is called for every frame by the thread that has it (the frame loop for outputs,
a receive thread for inputs). Nobody watching: it returns after one attribute read. Watching: at
most `fps` times a second per kind it takes a strided copy (a thumbnail of at most `size` pixels a
side, a few tens of kilobytes; the frame's own buffer is reused by the engine, so it must be copied)
and hands it to one encoder thread, which encodes the JPEG and passes the bytes on. The JPEG
encoding never runs on the frame loop.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any, Callable

import numpy as np

log = logging.getLogger("node_server.console")

KINDS = ("input", "output")


class ThumbnailTap:
    def __init__(self, deliver: Callable[[str, bytes], None], *, fps: float = 5.0, size: int = 256,
                 quality: int = 70):
        self.deliver = deliver  # deliver(kind, jpeg_bytes), called on the encoder thread
        self.interval = 1.0 / float(fps)
        self.size = int(size)
        self.quality = int(quality)
        self.watching = False  # set by the console while at least one page watches frames
        self.encoded = 0
        self.failed = 0
        self._last = {k: 0.0 for k in KINDS}
        self._pending: dict[str, np.ndarray] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def offer(self, kind: str, image: Any) -> None:
        """Called once per frame; cheap unless someone watches and a thumbnail is due."""
        if not self.watching:
            return
        now = time.monotonic()
        if now - self._last[kind] < self.interval:
            return
        self._last[kind] = now
        try:
            thumb = self._thumbnail(image)
        except Exception as e:  # a frame of an unexpected shape must not hurt the frame loop
            self.failed += 1
            log.debug("console thumbnail failed: %r", e)
            return
        with self._cond:
            self._pending[kind] = thumb  # the newest wins
            self._cond.notify()
        if self._thread is None:
            self._start()

    def _thumbnail(self, image: Any) -> np.ndarray:
        a = np.asarray(image)
        if a.ndim == 2:
            a = a[:, :, None]
        h, w = a.shape[:2]
        step = max(1, -(-max(h, w) // self.size))
        a = a[::step, ::step]
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        return np.ascontiguousarray(a[:, :, :3], dtype=np.uint8)

    def _start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="console-jpeg", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from PIL import Image

        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                jobs, self._pending = self._pending, {}
            for kind, thumb in jobs.items():
                try:
                    buf = io.BytesIO()
                    Image.fromarray(thumb).save(buf, format="JPEG", quality=self.quality)
                    self.encoded += 1
                    self.deliver(kind, buf.getvalue())
                except Exception as e:
                    self.failed += 1
                    log.debug("console JPEG failed: %r", e)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self.watching = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(1.0)

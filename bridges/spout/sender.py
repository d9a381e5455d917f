"""Spout out: a thread that owns a Spout sender and sends the newest output frame.

`publish(fields, image)` is called by the server's frame loop: it only stores the image and wakes
the sender thread (never blocks on OpenGL). The thread created its own OpenGL context first and
sends with `sendImage(rgba, width, height, GL_RGBA, invert, 0)`; when it is slower than the
engine, it skips to the newest frame (`skipped` counts the frames it never sent). Frames are sent
as RGBA with alpha 255 (4-byte rows need no unpack alignment, and receivers such as Resolume
composite the output as opaque). There is no frame-rate cap: each new frame is sent at once.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from ._spoutgl import gl_enums, load_spoutgl

MAX_NAME = 255  # Spout keeps sender names in 256-byte fields


class SpoutSender:
    """Sends frames under the Spout sender name `name` from its own thread."""

    def __init__(
        self,
        name: str,
        *,
        on_error: Callable[[str], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        spoutgl: Any = None,
        invert: bool = False,
        frame_sync: bool = True,
    ):
        if not name or len(name.encode()) > MAX_NAME:
            raise ValueError(f"Spout sender name must be 1..{MAX_NAME} bytes, got {name!r}")
        self.name = name
        self.on_error = on_error or (lambda reason: None)
        self.on_event = on_event or (lambda text: None)
        self.spoutgl = load_spoutgl(spoutgl)
        self.enums = gl_enums(self.spoutgl)
        self.invert = bool(invert)
        self.frame_sync = frame_sync
        self._cond = threading.Condition()
        self._pending: np.ndarray | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.skipped = 0
        self.failures = 0

    @property
    def label(self) -> str:
        return f'spout "{self.name}"'

    def start(self, spawn: Callable[[str, Callable[[], None]], Any] | None = None) -> None:
        """Start the thread, through `spawn(name, body)` when given (the server's supervisor)."""
        if spawn is not None:
            self._thread = spawn("spout-out", self._run)
            return
        self._thread = threading.Thread(target=self._run, name="spout-out", daemon=True)
        self._thread.start()

    def publish(self, fields: dict[str, Any], image: np.ndarray) -> None:
        """Hand over one output frame (HxWx3 or HxWx4 uint8, top-left origin); never blocks."""
        with self._cond:
            if self._pending is not None:
                self.skipped += 1
            self._pending = image
            self._cond.notify()

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the thread (it releases the sender and its OpenGL context); True when it ended."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            sender = self.spoutgl.SpoutSender()
        except Exception as exc:
            self.on_error(f"Spout sender could not be created: {exc}")
            return
        try:
            if not sender.createOpenGL():
                self.on_error("Spout sender: createOpenGL() failed (no OpenGL context on this machine?)")
                return
            try:
                sender.setSenderName(self.name)
                self._loop(sender)
            finally:
                sender.releaseSender()
                sender.closeOpenGL()
        except Exception as exc:
            self.on_error(f"Spout sender stopped: {type(exc).__name__}: {exc}")

    def _loop(self, sender: Any) -> None:
        rgba: np.ndarray | None = None
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                image, self._pending = self._pending, None
            image = np.asarray(image, np.uint8)
            if image.ndim == 2:
                image = image[:, :, None]
            h, w, c = image.shape
            if rgba is None or rgba.shape[:2] != (h, w):
                rgba = np.empty((h, w, 4), np.uint8)
                rgba[:, :, 3] = 255
            if c == 1:
                rgba[:, :, :3] = image
            else:
                rgba[:, :, :3] = image[:, :, :3]
            ok = sender.sendImage(rgba, w, h, self.enums.GL_RGBA, self.invert, 0)
            if not ok:
                self.failures += 1
                if self.failures == 1:  # once, not at video rate
                    self.on_error(f"{self.label}: sendImage failed (no OpenGL/DirectX sharing available?)")
                continue
            if self.sent == 0:
                self.on_event(f"{self.label}: sending {w}x{h}")
            self.sent += 1
            if self.frame_sync:
                sender.setFrameSync(self.name)  # wakes receivers that wait with waitFrameSync

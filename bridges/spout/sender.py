"""Spout out: a thread that owns a Spout sender and sends the newest output frame.

`publish(fields, image)` is called by the server's frame loop: it only stores the image and wakes
the sender thread (never blocks on OpenGL). The thread created its own OpenGL context first and
sends with `sendImage(rgba, width, height, GL_RGBA, invert, 0)`; when it is slower than the
engine, it skips to the newest frame (`skipped` counts the frames it never sent). Frames are sent
as RGBA with alpha 255 (4-byte rows need no unpack alignment, and receivers such as Resolume
composite the output as opaque). There is no frame-rate cap: each new frame is sent at once.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..bridge_thread import SenderThread
from ._spoutgl import gl_enums, load_spoutgl

MAX_NAME = 255  # Spout keeps sender names in 256-byte fields


class SpoutSender(SenderThread):
    thread_name = "spout-out"
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
        self._init_thread()
        self.sent = 0
        self.failures = 0

    @property
    def label(self) -> str:
        return f'spout "{self.name}"'

    def publish(self, fields: dict[str, Any], image: np.ndarray) -> None:
        """Hand over one output frame (HxWx3 or HxWx4 uint8, top-left origin); never blocks."""
        self._hand_over(image)

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
            image = self._next()
            if image is None:
                return
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

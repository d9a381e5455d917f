"""Spout in: a thread that receives a sender's frames and hands them on as RGB numpy arrays.

OpenGL contexts belong to one thread, so the receiver's thread creates its own context
(`createOpenGL()`) before any other Spout call and makes every later call itself. The loop
follows the Spout SDK's receive protocol:

1. `receiveImage(buffer, format, invert, 0)`; then `isUpdated()`: when it is true the receiver has
   just connected to a sender (or the sender changed size or format) and nothing was copied; the
   bridge reads `getSenderWidth/Height/Format()`, allocates a zeroed buffer and picks the GL format
   to ask for (the sender's own byte order, see `_spoutgl.read_plan`);
2. `receiveImage` returning False means no sender (yet, or any more): wait and try again, so a
   sender that starts after the server is picked up when it appears;
3. `isFrameNew()` false means the sender has not drawn since the last read: nothing is handed on;
4. the first read after an allocation can still be the empty buffer (Spout's CPU fallback reads
   through two staging textures, one frame behind): an all-zero first read is skipped.

There is no frame-rate cap: every new sender frame is handed on, and the bridge only sleeps
`poll` seconds (1 ms) when there is no new frame. What happens to frames that come faster than
the engine is the server's business (its freshest-frame buffer).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ..bridge_thread import BridgeThread
from ._spoutgl import describe_format, gl_enums, load_spoutgl, read_plan

FrameCallback = Callable[[int, np.ndarray, float, float], None]  # (id, HxWx3 RGB, recv, recv_wall)

# Spout frames get ids from here upward, far from the small ids ZeroMQ clients usually count from,
# so a ZeroMQ subscriber can tell them apart.
SPOUT_ID_BASE = 1 << 48


class SpoutReceiver(BridgeThread):
    thread_name = "spout-in"
    """Receives from the Spout sender `name` ("" = Spout's active sender) on its own thread.

    `on_frame(id, rgb, recv, recv_wall)` is called on that thread for every new frame (`rgb` is a
    fresh HxWx3 uint8 array, top-left origin). `on_error(reason)` gets failures, `on_event(text)`
    connection changes. `spoutgl` is the SpoutGL module (default: imported lazily).
    """

    def __init__(
        self,
        name: str,
        on_frame: FrameCallback,
        *,
        on_error: Callable[[str], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        spoutgl: Any = None,
        poll: float = 0.001,
        wait_sender: float = 0.05,
        invert: bool = False,
        first_id: int = SPOUT_ID_BASE,
    ):
        self.name = name
        self.on_frame = on_frame
        self.on_error = on_error or (lambda reason: None)
        self.on_event = on_event or (lambda text: None)
        self.spoutgl = load_spoutgl(spoutgl)
        self.enums = gl_enums(self.spoutgl)
        self.poll = poll
        self.wait_sender = wait_sender
        self.invert = bool(invert)
        self._next_id = first_id
        self._init_thread()
        self.connected = False
        self.sender: tuple[int, int, int] | None = None  # (width, height, DXGI format) when connected
        self.frames = 0  # frames handed on
        self.skipped_empty = 0  # empty first reads skipped

    @property
    def label(self) -> str:
        return f'spout "{self.name}"' if self.name else "spout (active sender)"

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            receiver = self.spoutgl.SpoutReceiver()
        except Exception as exc:
            self.on_error(f"Spout receiver could not be created: {exc}")
            return
        try:
            if not receiver.createOpenGL():
                self.on_error("Spout receiver: createOpenGL() failed (no OpenGL context on this machine?)")
                return
            try:
                self._loop(receiver)
            finally:
                receiver.releaseReceiver()
                receiver.closeOpenGL()
        except Exception as exc:  # never let the thread die silently
            self.on_error(f"Spout receiver stopped: {type(exc).__name__}: {exc}")

    def _loop(self, receiver: Any) -> None:
        if self.name:
            receiver.setReceiverName(self.name)
        isBufferEmpty = self.spoutgl.helpers.isBufferEmpty
        buffer: np.ndarray | None = None
        gl_format = self.enums.GL_RGBA
        order = (0, 1, 2)
        first_read = False
        while not self._stop.is_set():
            ok = receiver.receiveImage(buffer, gl_format, self.invert, 0)
            if receiver.isUpdated():
                width, height = receiver.getSenderWidth(), receiver.getSenderHeight()
                dxgi = receiver.getSenderFormat()
                gl_format, order, exact = read_plan(dxgi, self.enums)
                buffer = np.zeros((height, width, 4), np.uint8)
                first_read = True
                self.sender = (width, height, dxgi)
                self.connected = True
                note = "" if exact else " (converted by Spout's OpenGL path)"
                self.on_event(f"{self.label}: connected, {width}x{height} {describe_format(dxgi)}{note}")
                continue
            if not ok:
                if self.connected:
                    self.connected = False
                    self.on_event(f"{self.label}: sender gone; waiting for it")
                buffer = None  # the next connection announces itself through isUpdated()
                self._stop.wait(self.wait_sender)
                continue
            if buffer is None or not receiver.isFrameNew():
                self._stop.wait(self.poll)
                continue
            recv, recv_wall = time.perf_counter(), time.time()
            if first_read:
                first_read = False
                if isBufferEmpty(buffer):
                    self.skipped_empty += 1
                    continue
            rgb = buffer[:, :, list(order)]  # fancy indexing copies: the buffer is reused
            frame_id = self._next_id
            self._next_id += 1
            self.frames += 1
            try:
                self.on_frame(frame_id, rgb, recv, recv_wall)
            except Exception as exc:  # a bug downstream must not stop receiving
                self.on_error(f"Spout frame {frame_id} rejected: {exc}")

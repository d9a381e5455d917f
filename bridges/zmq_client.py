"""A small client for a running `node-server serve`: push frames, read stylized frames back.

numpy + pyzmq only (no torch), so it runs in plain Python and in TouchDesigner's Python 3.11.
To use it outside this package, copy `zmq_client.py` and `zmq_protocol.py` side by side.

Slow joiner: a SUB socket only receives what is published after its subscription has reached the
server, which takes a few milliseconds after the TCP connection is up. Outputs published before
that are lost for this client. `wait_connected()` waits until both sockets are connected and
gives the subscription a moment to arrive; send your first frame after it.

    with ZmqClient() as client:
        client.wait_connected()
        client.send(frame)                 # HxWx3 uint8, returns the id used
        got = client.latest(timeout=1.0)   # (header dict, HxWx3 uint8) or None
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import zmq

try:
    from .zmq_protocol import ProtocolError, decode_message, encode_frame
except ImportError:  # copied next to zmq_protocol.py (e.g. into a TouchDesigner project)
    from zmq_protocol import ProtocolError, decode_message, encode_frame  # type: ignore

__all__ = ["ZmqClient", "ProtocolError"]


class ZmqClient:
    """PUSH frames to the server's `--zmq-in`, SUB to its `--zmq-out`.

    `send()` never blocks: when `sndhwm` frames are already queued (server gone or far behind)
    it returns None and the frame is not sent, which is what a live source wants.
    """

    def __init__(
        self,
        send_addr: str = "tcp://127.0.0.1:5555",
        recv_addr: str = "tcp://127.0.0.1:5556",
        *,
        sndhwm: int = 4,
        rcvhwm: int = 64,
        context: zmq.Context | None = None,
    ):
        self._ctx = context or zmq.Context.instance()
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.SNDHWM, sndhwm)
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RCVHWM, rcvhwm)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._monitors = [s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) for s in (self._push, self._sub)]
        self._connected = [False, False]
        self._sub.connect(recv_addr)
        self._push.connect(send_addr)
        self._ids = itertools.count()
        self.errors = 0  # malformed messages received (and skipped)

    # -- connection ------------------------------------------------------------------------
    def wait_connected(self, timeout: float = 5.0, settle: float = 0.05) -> bool:
        """True once both sockets reached the server (then waits `settle` s for the subscription)."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        for m in self._monitors:
            poller.register(m, zmq.POLLIN)
        while not all(self._connected):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for sock, _ in poller.poll(left * 1000):
                k = self._monitors.index(sock)
                sock.recv_multipart()
                self._connected[k] = True
        time.sleep(settle)
        return True

    # -- frames ----------------------------------------------------------------------------
    def send(self, frame: np.ndarray, id: int | None = None, t: float | None = None) -> int | None:
        """Queue one HxWxC uint8 frame (C = 1, 3 or 4); returns its id, or None if not sent.

        `id` defaults to a running counter; `t` defaults to `time.time()` on this machine and
        comes back unchanged in the output header.
        """
        fid = next(self._ids) if id is None else int(id)
        parts = encode_frame(frame, fid, time.time() if t is None else t)
        try:
            self._push.send_multipart(parts, flags=zmq.NOBLOCK, copy=parts[1].nbytes < 65536)
        except zmq.Again:
            return None
        return fid

    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], np.ndarray] | None:
        """The next output in order (header dict, HxWx3 uint8), or None after `timeout` s."""
        ms = None if timeout is None else max(0, int(timeout * 1000))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._sub.poll(ms):
                return None
            got = self._recv_now()
            if got is not None:
                return got
            if deadline is not None:
                ms = max(0, int((deadline - time.monotonic()) * 1000))

    def latest(self, timeout: float = 0.0) -> tuple[dict[str, Any], np.ndarray] | None:
        """The newest output, skipping older ones already waiting; None if nothing came in time."""
        got = self.recv(timeout)
        if got is None:
            return None
        while self._sub.poll(0):
            newer = self._recv_now()
            if newer is not None:
                got = newer
        return got

    def _recv_now(self) -> tuple[dict[str, Any], np.ndarray] | None:
        parts = self._sub.recv_multipart(copy=False)
        try:
            header, pixels = decode_message(parts)
        except ProtocolError:
            self.errors += 1
            return None
        return header.to_dict(), pixels

    def close(self) -> None:
        for s in (self._push, self._sub):
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
        for m in self._monitors:
            m.close(linger=0)
        self._push.close(linger=0)
        self._sub.close(linger=0)

    def __enter__(self) -> "ZmqClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

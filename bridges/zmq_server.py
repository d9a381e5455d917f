"""Server side of the ZeroMQ bridge: a PULL socket for frames in, a PUB socket for frames out.

The receive thread only validates and hands frames on (`on_frame`); it never waits on the
engine, so input is drained as fast as it arrives and the freshest-frame buffer behind it decides
what is dropped. Publishing happens on the caller's thread (the frame loop): ZeroMQ sockets are
not thread-safe, so each socket is used by exactly one thread after `start()`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
import zmq

from .zmq_protocol import MAX_HEADER_BYTES, MAX_PIXEL_BYTES, FrameHeader, ProtocolError, decode_message, encode_header

FrameCallback = Callable[[FrameHeader, np.ndarray, float, float], None]
ErrorCallback = Callable[[str], None]

# Copying a small frame is cheaper than zero-copy bookkeeping; above this size send without copying.
_ZERO_COPY_MIN = 64 * 1024


class ZmqFrameServer:
    """Binds PULL on `in_addr` and PUB on `out_addr`; calls `on_frame(header, pixels, recv, recv_wall)`.

    `recv` is `time.perf_counter()` at receipt (for latency), `recv_wall` is `time.time()` (for
    the output header). Malformed messages go to `on_error(reason)` and are otherwise ignored.
    """

    def __init__(
        self,
        in_addr: str,
        out_addr: str,
        on_frame: FrameCallback,
        on_error: ErrorCallback,
        *,
        context: zmq.Context | None = None,
        rcvhwm: int = 8,
        sndhwm: int = 64,
        poll_ms: int = 50,
    ):
        self.in_addr = in_addr
        self.out_addr = out_addr
        self.on_frame = on_frame
        self.on_error = on_error
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._rcvhwm = rcvhwm
        self._sndhwm = sndhwm
        self._poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pull: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self.in_endpoint = ""
        self.out_endpoint = ""

    def bind(self) -> None:
        """Bind both sockets now, so address errors surface at start-up; fills `*_endpoint`."""
        try:
            pull = self._ctx.socket(zmq.PULL)
            pull.setsockopt(zmq.LINGER, 0)
            pull.setsockopt(zmq.RCVHWM, self._rcvhwm)
            # A peer sending a message far over the protocol's limit is disconnected by libzmq
            # before the bytes are buffered.
            pull.setsockopt(zmq.MAXMSGSIZE, MAX_PIXEL_BYTES + MAX_HEADER_BYTES)
            self._pull = pull
            pull.bind(self.in_addr)
            self.in_endpoint = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
            pub = self._ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.SNDHWM, self._sndhwm)
            self._pub = pub
            pub.bind(self.out_addr)
            self.out_endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        except zmq.ZMQError as exc:
            addr = self.out_addr if self._pull is not None and self.in_endpoint else self.in_addr
            self.close()
            raise OSError(f"cannot bind ZeroMQ address {addr}: {exc}") from None

    def start(self) -> None:
        if self._pull is None:
            self.bind()
        self._thread = threading.Thread(target=self._receive_loop, name="zmq-recv", daemon=True)
        self._thread.start()

    def _receive_loop(self) -> None:
        pull = self._pull
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(self._poll_ms):
                continue
            # Drain what is there, but look at the stop flag every few messages.
            for _ in range(64):
                try:
                    parts = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    if self._stop.is_set():
                        return
                    raise
                recv = time.perf_counter()
                recv_wall = time.time()
                try:
                    header, pixels = decode_message(parts)
                except ProtocolError as exc:
                    self._report(str(exc))
                    continue
                try:
                    self.on_frame(header, pixels, recv, recv_wall)
                except Exception as exc:  # a bug downstream must not kill the receiver
                    self._report(f"frame {header.id} rejected: {exc}")

    def _report(self, reason: str) -> None:
        try:
            self.on_error(reason)
        except Exception:
            pass

    def publish(self, fields: dict[str, Any], image: np.ndarray) -> None:
        """Send one output (header fields, HxWxC uint8 image); call from one thread only."""
        pub = self._pub
        if pub is None:
            return
        arr = np.ascontiguousarray(image)
        h, w = arr.shape[:2]
        c = arr.shape[2] if arr.ndim == 3 else 1
        head = dict(fields)
        head.update(w=w, h=h, c=c, dtype="uint8")
        try:
            pub.send_multipart([encode_header(head), arr], copy=arr.nbytes < _ZERO_COPY_MIN)
        except zmq.ZMQError:
            if not self._stop.is_set():
                raise

    def stop_receiving(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self, close_pub: bool = True) -> None:
        """Stop the receive thread and close the sockets (linger 0).

        `close_pub=False` leaves the PUB socket to process exit when another thread may still be
        publishing (a socket must not be closed under a thread that uses it).
        """
        self.stop_receiving()
        if self._pull is not None and (self._thread is None or not self._thread.is_alive()):
            self._pull.close(linger=0)
            self._pull = None
        if self._pub is not None and close_pub:
            self._pub.close(linger=0)
            self._pub = None
        if self._own_context and self._pull is None and self._pub is None and not self._ctx.closed:
            self._ctx.term()

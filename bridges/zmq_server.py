"""Server side of the ZeroMQ bridge: a PULL socket for frames in, a PUB socket for frames out.

The receive thread only validates and hands frames on (`on_frame`); it never waits on the
engine, so input is drained as fast as it arrives and the freshest-frame buffer behind it decides
what is dropped. Publishing happens on the caller's thread (the frame loop): ZeroMQ sockets are
not thread-safe, so each socket is used by exactly one thread after `start()`.

No message can end the receive thread: a rejected message goes to `on_error`, any other failure
on the receive path (a bug, a socket error) to `on_failure`, and the loop goes on. The server
starts the thread through its supervisor (`start(spawn=...)`), which restarts it should it end
anyway.
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
# spawn(name, body) starts `body` on a thread and returns it (node_server.server.supervisor.Spawn)
Spawn = Callable[[str, Callable[[], None]], threading.Thread]

# Copying a small frame is cheaper than zero-copy bookkeeping; above this size send without copying.
_ZERO_COPY_MIN = 64 * 1024


class ZmqFrameServer:
    """Binds PULL on `in_addr` and PUB on `out_addr`; calls `on_frame(header, pixels, recv, recv_wall)`.

    `recv` is `time.perf_counter()` at receipt (for latency), `recv_wall` is `time.time()` (for
    the output header). Malformed messages go to `on_error(reason)` and are otherwise ignored;
    failures of the receive path itself go to `on_failure(reason)` (default: `on_error`).
    """

    def __init__(
        self,
        in_addr: str,
        out_addr: str,
        on_frame: FrameCallback,
        on_error: ErrorCallback,
        *,
        on_failure: ErrorCallback | None = None,
        context: zmq.Context | None = None,
        rcvhwm: int = 8,
        sndhwm: int = 64,
        poll_ms: int = 50,
    ):
        self.in_addr = in_addr
        self.out_addr = out_addr
        self.on_frame = on_frame
        self.on_error = on_error
        self.on_failure = on_failure if on_failure is not None else on_error
        self.received = 0  # messages taken off the socket
        self.rejected = 0  # of those, not handed on (malformed, or a failure handling them)
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

    def start(self, spawn: Spawn | None = None) -> None:
        """Start the receive thread, through `spawn(name, body)` when given (the supervisor)."""
        if self._pull is None:
            self.bind()
        self._thread = (spawn or _daemon_thread)("zmq-recv", self._receive_loop)

    def _receive_loop(self) -> None:
        """Receive until `stop_receiving()`; whatever goes wrong is reported and survived."""
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                if poller.poll(self._poll_ms):
                    self._drain()
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._report(f"ZeroMQ receive failed: {type(exc).__name__}: {exc}", self.on_failure)
                self._stop.wait(0.05)  # a socket that keeps failing must not spin the CPU

    def _drain(self) -> None:
        """Take what is waiting, but look at the stop flag every few messages."""
        pull = self._pull
        for _ in range(64):
            if self._stop.is_set():
                return
            try:
                parts = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.received += 1
            self._handle(parts, time.perf_counter(), time.time())

    def _handle(self, parts: list, recv: float, recv_wall: float) -> None:
        try:
            header, pixels = decode_message(parts)
        except ProtocolError as exc:
            self.rejected += 1
            self._report(str(exc), self.on_error)
            return
        except Exception as exc:  # a bug in the validator: only this message is lost
            self.rejected += 1
            self._report(f"frame rejected: checking it failed ({type(exc).__name__}: {exc})", self.on_failure)
            return
        try:
            self.on_frame(header, pixels, recv, recv_wall)
        except Exception as exc:  # a bug downstream must not kill the receiver
            self.rejected += 1
            self._report(f"frame {header.id} rejected: {type(exc).__name__}: {exc}", self.on_failure)

    @staticmethod
    def _report(reason: str, to: ErrorCallback) -> None:
        try:
            to(reason[:300])
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


def _daemon_thread(name: str, body: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return thread

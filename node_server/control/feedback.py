"""Status fed back over OSC to the `--feedback HOST:PORT` target (e.g. a TouchDesigner OSC In).

A thread sends one bundle of `/status/*` at `rate_hz` (default 4 Hz) and polls
`target.status().prompt` at `poll_hz` (default 40 Hz) so that `/status/prompt` goes out within
~25 ms of the active prompt changing. The server may also call `notify()` when it knows the
prompt changed; that wakes the thread at once. `/error` messages are forwarded with
`send_error()`, from any thread.

The sending socket is `connect()`ed to the target: the kernel then binds it to the local address
of the route to that target (127.0.0.1 for a loopback target) instead of the wildcard address, so
it is reachable on no other interface, and it takes datagrams from the target only. A target that
cannot be reached yet (no route, name not resolvable) is retried on each send.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time

from pythonosc import osc_bundle_builder, osc_message_builder

from node_server.control.inventory import normalize_prefix
from node_server.control.target import ControlTarget, Status
from node_server.errors import NodeServerError

log = logging.getLogger("node_server.osc.feedback")


def parse_address(text: str, what: str = "--feedback") -> tuple[str, int]:
    """Parse 'HOST:PORT' (or '[v6]:PORT') into (host, port), with a clear error for the CLI."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise NodeServerError(f"{what} expects HOST:PORT with a port 1..65535, got {text!r}")
    return host, int(port_text)


def build_message(address: str, *args) -> osc_message_builder.OscMessage:
    """An OSC message with explicit tags: float stays 'f', int 'i', str 's' (no guessing)."""
    b = osc_message_builder.OscMessageBuilder(address=address)
    for a in args:
        if isinstance(a, bool):
            b.add_arg(a)
        elif isinstance(a, int):
            b.add_arg(a, "i")
        elif isinstance(a, float):
            b.add_arg(a, "f")
        else:
            b.add_arg(str(a), "s")
    return b.build()


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else 0.0


def _int32(x: int) -> int:
    return max(-(2**31), min(2**31 - 1, int(x)))


class Feedback:
    """Sends `/status/*` bundles and `/error` messages to one UDP target."""

    def __init__(
        self,
        target: ControlTarget,
        host: str,
        port: int,
        *,
        rate_hz: float = 4.0,
        poll_hz: float = 40.0,
        prefix: str = "",
    ):
        if not 0 < rate_hz <= 200 or not 0 < poll_hz <= 1000:
            raise NodeServerError(f"feedback rate must be in (0, 200] Hz, got {rate_hz}")
        self.target = target
        self.address = (host, int(port))
        self.prefix = normalize_prefix(prefix)
        self.rate_hz = float(rate_hz)
        self.poll_hz = max(float(poll_hz), self.rate_hz)
        self.bundles_sent = 0
        self.send_failures = 0
        self.status_failures = 0
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self._send_lock = threading.Lock()
        self._connected = False
        with self._send_lock:
            self._connect()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prompt: str | None = None

    # -- public ----------------------------------------------------------------------------
    def start(self) -> "Feedback":
        """Start the sender thread (daemon); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="osc-feedback", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close the socket; returns within one poll period."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._sock.close()

    def notify(self) -> None:
        """Hint that the active prompt (or state) changed: check and send right away."""
        self._wake.set()

    def send_error(self, text: str) -> None:
        """Forward an `/error s` to the feedback target."""
        self._send(build_message(self.prefix + "/error", text).dgram)

    def send_status(self, status: Status | None = None) -> None:
        """Send one `/status/*` bundle now (the thread calls this at `rate_hz`)."""
        s = status if status is not None else self.target.status()
        p = self.prefix + "/status/"
        bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
        for msg in (
            build_message(p + "fps", _finite(s.fps)),
            build_message(p + "latency_ms", _finite(s.latency_ms)),
            build_message(p + "frames", _int32(s.frames)),
            build_message(p + "dropped", _int32(s.dropped)),
            build_message(p + "errors", _int32(s.errors)),
            build_message(p + "state", str(s.state)),
            build_message(p + "prompt", str(s.prompt)),
            build_message(p + "threads_down", _int32(s.threads_down)),
            build_message(p + "restarts", _int32(s.restarts)),
        ):
            bundle.add_content(msg)
        self._send(bundle.build().dgram)
        self.bundles_sent += 1

    # -- internals -------------------------------------------------------------------------
    @property
    def local_address(self) -> tuple | None:
        """Where the sending socket is bound (the route's own address), or None before it is."""
        try:
            return self._sock.getsockname() if self._connected else None
        except OSError:  # closed
            return None

    def _connect(self) -> None:
        """Bind the socket to the route to the target (call with the send lock held)."""
        try:
            self._sock.connect(self.address)
        except OSError as e:  # no route yet, name not resolvable: retried on the next send
            self._failed(e)
            return
        self._connected = True

    def _send(self, dgram: bytes) -> None:
        try:
            with self._send_lock:
                if not self._connected:
                    self._connect()
                    if not self._connected:
                        return
                self._sock.send(dgram)
        except OSError as e:  # target gone, socket closed, network down: never fatal
            self._failed(e)

    def _failed(self, e: OSError) -> None:
        self.send_failures += 1
        if self.send_failures in (1, 10, 100) or self.send_failures % 1000 == 0:
            log.warning("feedback to %s:%d failed (%d times): %s", *self.address, self.send_failures, e)

    def _check_prompt(self, status: Status) -> None:
        if status.prompt != self._last_prompt:
            self._last_prompt = status.prompt
            self._send(build_message(self.prefix + "/status/prompt", str(status.prompt)).dgram)

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        poll = 1.0 / self.poll_hz
        next_bundle = time.monotonic()
        while not self._stop.is_set():
            try:
                status = self.target.status()
                self._check_prompt(status)
                now = time.monotonic()
                if now >= next_bundle:
                    self.send_status(status)
                    next_bundle = max(next_bundle + period, now)  # no catch-up burst after a stall
            except Exception:  # a failing status() must not stop the feedback for good
                self.status_failures += 1
                if self.status_failures in (1, 10, 100) or self.status_failures % 1000 == 0:
                    log.exception("feedback: reading the server status failed (%d times)", self.status_failures)
            self._wake.wait(timeout=min(poll, max(0.0, next_bundle - time.monotonic())))
            self._wake.clear()

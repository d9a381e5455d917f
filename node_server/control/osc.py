"""The OSC control server: UDP in, dispatch from the inventory only, `/error` for anything bad.

Design notes (why it looks like this):
- python-osc parses the packets and owns the socket server, but its stock handler silently drops
  datagrams that are not OSC and its dispatcher swallows parse errors. A VJ needs to *see* why a
  message did nothing, so every datagram reaches `_handle_datagram`, and every rejection becomes
  an `/error s` ("<address>: <reason>") sent to the sender and to the feedback target.
- Datagrams whose size is not a multiple of 4 are rejected as the OSC 1.0 spec says: python-osc
  would zero-pad a truncated float (a Reaktor quirk) and so apply a value that was never sent.
- Bundle time tags are ignored: messages are applied on arrival (python-osc's
  `strict_timing=False` behaviour). TouchDesigner timestamps its bundles with its own clock;
  honouring them would delay or reorder control changes.
- OSC address patterns (`*`, `?`, `[...]`, `{...}`) are rejected with an `/error`: nine fixed
  addresses do not need them, and a regex built from an attacker's pattern can backtrack for
  minutes, which would stall control for everyone.
- Messages are handled one at a time on one daemon thread, so changes apply in arrival order.
  Every handler exception is caught and counted; nothing a client sends can stop the thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from typing import Any, Callable

from pythonosc import dispatcher as osc_dispatcher
from pythonosc import osc_packet, osc_server

from node_server.control.feedback import Feedback, build_message, parse_address
from node_server.control.inventory import (
    BY_ADDRESS,
    Control,
    ControlValueError,
    normalize_prefix,
)
from node_server.control.target import ControlTarget
from node_server.errors import NodeServerError, ParamError

log = logging.getLogger("node_server.osc")

_PATTERN_CHARS = set("*?[]{}")
_ADDRESS_SHOWN = 80  # cut long or garbage addresses in error messages


def _show_address(address: str) -> str:
    text = address if address.isprintable() else ascii(address)[1:-1]
    return text if len(text) <= _ADDRESS_SHOWN else text[: _ADDRESS_SHOWN - 3] + "..."


class _Handler(socketserver.BaseRequestHandler):
    """Hands every datagram (OSC or not) to the owning `OscControl`."""

    def handle(self) -> None:
        data, _sock = self.request
        self.server.control._handle_datagram(data, self.client_address)  # type: ignore[attr-defined]


class _UDPServer(osc_server.BlockingOSCUDPServer):
    """python-osc's blocking UDP server, letting non-OSC datagrams through so they get an answer."""

    max_packet_size = 65535  # a too-long prompt must arrive whole to be reported as too long
    receive_buffer = 1 << 20  # absorb bursts (a fader sweep, a fuzzer) without kernel drops

    def server_bind(self) -> None:
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        except OSError:  # pragma: no cover - platform limits; the default still works
            pass
        super().server_bind()

    def verify_request(self, request, client_address) -> bool:
        return True


class _UDP6Server(_UDPServer):
    address_family = socket.AF_INET6


_LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class OscControl:
    """OSC/UDP control surface for a `ControlTarget`.

    `feedback` may be None, a `(host, port)` tuple or 'HOST:PORT' string (a `Feedback` sender
    is created, started and closed with this object), or an existing `Feedback` (used for
    `/error` forwarding only; its owner starts and closes it).
    """

    def __init__(
        self,
        target: ControlTarget,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        prefix: str = "",
        feedback: tuple[str, int] | str | Feedback | None = None,
        feedback_rate_hz: float = 4.0,
        on_error: Callable[[str], None] | None = None,
    ):
        self.target = target
        self.prefix = normalize_prefix(prefix)
        self.on_error = on_error
        self.packets = 0  # datagrams received
        self.messages = 0  # OSC messages seen (bundles count their contents)
        self.applied = 0  # messages applied successfully
        self.errors = 0  # messages or datagrams rejected
        self.last_error = ""
        self._internal_errors = 0
        self._routes: dict[str, Control] = {self.prefix + c.address: c for c in BY_ADDRESS.values()}
        self._thread: threading.Thread | None = None
        self._closed = False

        if isinstance(feedback, Feedback):
            self.feedback: Feedback | None = feedback
            self._owns_feedback = False
        elif feedback is None:
            self.feedback = None
            self._owns_feedback = False
        else:
            fb_host, fb_port = parse_address(feedback) if isinstance(feedback, str) else feedback
            self.feedback = Feedback(target, fb_host, fb_port, rate_hz=feedback_rate_hz, prefix=self.prefix)
            self._owns_feedback = True

        # strict_timing=False: bundle time tags are not waited for (see module docstring).
        self._dispatcher = osc_dispatcher.Dispatcher(strict_timing=False)
        try:
            self._server = _UDPServer((host, int(port)), self._dispatcher)
        except (OSError, OverflowError) as e:
            if self.feedback is not None and self._owns_feedback:
                self.feedback.close()
            reason = getattr(e, "strerror", None) or str(e)
            raise NodeServerError(f"cannot listen for OSC on {host}:{port}: {reason}") from None
        self._server.RequestHandlerClass = _Handler
        self._server.control = self  # type: ignore[attr-defined]
        # Tools that send to "localhost" often resolve it to ::1 (liblo's oscsend does): on the
        # loopback default, listen on the IPv6 loopback too, on the same port, when the OS allows.
        self._server6: _UDP6Server | None = None
        if host in _LOOPBACK_NAMES and socket.has_ipv6:
            try:
                self._server6 = _UDP6Server(("::1", self.port), self._dispatcher)
                self._server6.RequestHandlerClass = _Handler
                self._server6.control = self  # type: ignore[attr-defined]
            except OSError as e:
                log.debug("no IPv6 loopback OSC listener: %s", e)
        self._thread6: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self._server.server_address[0]

    @property
    def port(self) -> int:
        """The bound UDP port (the real one when constructed with port 0)."""
        return self._server.server_address[1]

    def start(self) -> "OscControl":
        """Serve on a daemon thread (and start the owned feedback sender); returns self."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="osc-control", daemon=True
            )
            self._thread.start()
            if self._server6 is not None:
                self._thread6 = threading.Thread(
                    target=self._server6.serve_forever, kwargs={"poll_interval": 0.05}, name="osc-control-v6",
                    daemon=True,
                )
                self._thread6.start()
            if self.feedback is not None and self._owns_feedback:
                self.feedback.start()
            shown = f" prefix {self.prefix}" if self.prefix else ""
            log.info("OSC control on udp://%s:%d%s", self.host, self.port, shown)
        return self

    def close(self) -> None:
        """Stop serving and close the socket; returns within ~0.1 s (one poll interval)."""
        if self._closed:
            return
        self._closed = True
        for server, thread in ((self._server, self._thread), (self._server6, self._thread6)):
            if server is None:
                continue
            if thread is not None:
                server.shutdown()  # only valid once serve_forever runs, hence the guard
                thread.join(timeout=2.0)
            server.server_close()
        if self.feedback is not None and self._owns_feedback:
            self.feedback.close()

    def __enter__(self) -> "OscControl":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters for the server's status line and logs."""
        return {
            "packets": self.packets,
            "messages": self.messages,
            "applied": self.applied,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    # -- receiving ---------------------------------------------------------------------------
    def _handle_datagram(self, data: bytes, client: tuple) -> None:
        """Parse one datagram and dispatch each message; never raises."""
        self.packets += 1
        try:
            if len(data) % 4:  # OSC 1.0: always a multiple of 4; else it was cut short in transit
                size = len(data)
                self._error(client, f"packet: not a valid OSC message or bundle ({size} bytes, not a multiple of 4)")
                return
            try:
                packet = osc_packet.OscPacket(data)
                messages = [timed.message for timed in packet.messages]
            except Exception as e:  # ParseError, but also whatever garbage trips in the parser
                self._error(client, f"packet: not a valid OSC message or bundle ({len(data)} bytes): {_brief(e)}")
                return
            for message in messages:
                self._dispatch(message.address, list(message.params), client)
        except Exception:  # pragma: no cover - last line of defence for the serving thread
            self._internal_error(client, "packet")

    def _dispatch(self, address: str, args: list, client: tuple) -> None:
        self.messages += 1
        shown = _show_address(address)
        control = self._routes.get(address)
        if control is None:
            if _PATTERN_CHARS.intersection(address):
                self._error(client, f"{shown}: OSC address patterns are not supported; send an exact address")
            else:
                self._error(client, f"{shown}: unknown address (see docs/OSC.md)")
            return
        try:
            value = control.coerce(args)
            self._apply(control, value, client)
        except ControlValueError as e:
            self._error(client, f"{shown}: {e.reason}")
            return
        except ParamError as e:
            self._error(client, f"{shown}: {e.reason}")
            return
        except (NodeServerError, ValueError) as e:  # the target's own, user-facing rejections
            self._error(client, f"{shown}: {e}")
            return
        except Exception:
            self._internal_error(client, shown)
            return
        self.applied += 1
        if self.feedback is not None and control.action != "ping":
            self.feedback.notify()

    def _apply(self, control: Control, value: Any, client: tuple) -> None:
        if control.param is not None:
            self.target.set_params(**{control.param: value})
        elif control.action == "pause":
            self.target.set_paused(value)
        elif control.action == "recall_preset":
            self.target.recall_preset(value)
        elif control.action == "save_preset":
            self.target.save_preset(value)
        elif control.action == "ping":
            self._send(build_message(self.prefix + "/pong").dgram, client)
        elif control.action in ("blend", "seed_blend"):  # the whole weighted list at once
            self.target.set_params(**{control.action: value})
        else:  # pragma: no cover - inventory bug
            raise AssertionError(f"no mapping for {control.address}")

    # -- answering ---------------------------------------------------------------------------
    def _send(self, dgram: bytes, client: tuple) -> None:
        server = self._server6 if len(client) == 4 and self._server6 is not None else self._server
        try:
            server.socket.sendto(dgram, client)
        except OSError as e:  # sender gone / unreachable: nothing to do but note it
            log.debug("OSC reply to %s failed: %s", client, e)

    def _error(self, client: tuple, text: str) -> None:
        self.errors += 1
        self.last_error = text
        log.debug("OSC error from %s: %s", client, text)
        dgram = build_message(self.prefix + "/error", text).dgram
        self._send(dgram, client)
        fb = self.feedback
        if fb is not None and tuple(client[:2]) != fb.address:
            fb.send_error(text)
        if self.on_error is not None:
            try:
                self.on_error(text)
            except Exception:
                log.exception("on_error callback failed")

    def _internal_error(self, client: tuple, shown: str) -> None:
        self._internal_errors += 1
        if self._internal_errors <= 10 or self._internal_errors % 1000 == 0:
            log.exception("OSC handler failed for %s", shown)
        self._error(client, f"{shown}: internal error (see the server log)")


def _brief(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."

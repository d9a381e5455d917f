"""The OSC control server: UDP in, dispatch from the inventory only, `/error` for anything bad.

Design notes (why it looks like this):
- The project owns the whole receive path: a plain loop on one thread waits on the sockets with a
  short timeout, so `close()` returns within about one poll interval whatever a datagram held, and
  `osc_packet.parse_packet` (bounded, validated) decodes every datagram. python-osc's parser and
  socketserver loop are not used: one bundle with a negative element size put them in an endless
  loop that also blocked shutdown. python-osc still builds the outgoing messages (`feedback.py`).
- A VJ needs to *see* why a message did nothing, so every rejection becomes an `/error s`
  ("<address>: <reason>") sent to the sender and to the feedback target, and counted.
- A datagram that is not exactly OSC (bad sizes, unknown type tag, missing argument bytes, a bundle
  element that is neither message nor bundle) is rejected whole: nothing of it is applied.
- Bundle time tags are ignored: messages are applied on arrival, in datagram order. TouchDesigner
  timestamps its bundles with its own clock; honouring them would delay or reorder changes.
- OSC address patterns (`*`, `?`, `[...]`, `{...}`) are rejected with an `/error`: the fixed
  addresses do not need them, and a regex built from an attacker's pattern can backtrack for
  minutes, which would stall control for everyone.
- UDP sources are unverified, so answers must not amplify: per source (address and port),
  replies and log lines are rate-limited (token buckets, a bounded table), and until a source has
  had a message applied, the replies to one datagram never total more bytes than the datagram had (an `/error`
  text is cut to fit, or the reply is skipped). Everything is still counted and reported to the
  feedback target (itself rate-limited). An optional allow-list refuses other sources silently.
- Messages are handled one at a time on one thread, so changes apply in arrival order. Every
  exception is caught and counted; nothing a client sends can stop the thread. In the server the
  thread runs under its supervisor (`start(spawn=...)`), which restarts the loop should it end
  anyway (a bug, a BaseException) and reports that as a server error.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

from node_server.control.feedback import Feedback, build_message, parse_address
from node_server.control.dispatch import apply
from node_server.control.inventory import BY_ADDRESS, Control, ControlValueError, normalize_prefix
from node_server.control.osc_packet import OscParseError, parse_packet, shown_address, string_size
from node_server.control.target import ControlTarget
from node_server.engine.params import ParamNotice
from node_server.errors import NodeServerError, ParamError

log = logging.getLogger("node_server.osc")

_PATTERN_CHARS = set("*?[]{}")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost")

RECEIVE_SIZE = 65535  # a too-long prompt must arrive whole to be reported as too long
RECEIVE_BUFFER = 1 << 20  # absorb bursts (a fader sweep, a fuzzer) without kernel drops
POLL_S = 0.05  # how often the receive loop looks at the stop flag
THREAD_NAME = "osc-control"  # the receive loop's thread (and its supervisor entry)

# Per source, an (address, port) pair (token buckets: rate per second, burst).
REPLY_RATE, REPLY_BURST = 20.0, 40.0  # `/error` and `/pong` answers to one source
LOG_RATE, LOG_BURST = 1.0, 5.0  # log lines about one source
MAX_SOURCES = 4096  # the table forgets the least recently heard source beyond this
# For all sources together (many spoofed sources must not flood the log or the feedback target).
GLOBAL_LOG_RATE, GLOBAL_LOG_BURST = 10.0, 20.0
FORWARD_RATE, FORWARD_BURST = 20.0, 40.0  # `/error` copies to the feedback target


def parse_allow(value: Any, what: str = "--osc-allow") -> tuple:
    """'ADDR[,NET/BITS...]' (or a list of them) -> ip networks; a clear error for the CLI and config."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise NodeServerError(f"{what}: expected addresses or networks, e.g. 127.0.0.1,192.168.1.0/24, got {value!r}")
    networks = []
    for item in items:
        if not isinstance(item, str):
            raise NodeServerError(f"{what}: expected addresses or networks as text, got {item!r}")
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as e:
            raise NodeServerError(
                f"{what}: {e} (give IP addresses or networks, e.g. 127.0.0.1,192.168.1.0/24)"
            ) from None
    if not networks:
        raise NodeServerError(f"{what} is empty: give IP addresses or networks, e.g. 127.0.0.1,192.168.1.0/24")
    return tuple(networks)


def _allowed(host: str, networks: tuple) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 scope id
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:  # IPv4 client on a dual-stack socket
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class _Bucket:
    """A token bucket: `take()` is True at most `burst` times at once and `rate` times a second."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Source:
    """What the server remembers about one source address."""

    __slots__ = ("replies", "logs", "verified", "allowed", "logs_dropped")

    def __init__(self, now: float, allowed: bool):
        self.replies = _Bucket(REPLY_RATE, REPLY_BURST, now)
        self.logs = _Bucket(LOG_RATE, LOG_BURST, now)
        self.verified = False  # had a message applied: its replies are no longer cut to size
        self.allowed = allowed
        self.logs_dropped = 0


class _Reply:
    """Where the answers to one datagram go, and how many bytes they may still take."""

    __slots__ = ("sock", "client", "source", "budget")

    def __init__(self, sock: socket.socket, client: tuple, source: _Source, budget: int | None):
        self.sock, self.client, self.source, self.budget = sock, client, source, budget


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:  # pragma: no cover - platform limits; the default still works
            pass
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class OscControl:
    """OSC/UDP control surface for a `ControlTarget`.

    `feedback` may be None, a `(host, port)` tuple or 'HOST:PORT' string (a `Feedback` sender
    is created, started and closed with this object), or an existing `Feedback` (used for
    `/error` forwarding only; its owner starts and closes it). `allow`: None (any source) or
    addresses/networks ('127.0.0.1,192.168.1.0/24' or a list); datagrams from other sources
    are counted in `refused` and never answered.
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
        allow: str | Iterable[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.target = target
        self.prefix = normalize_prefix(prefix)
        self.on_error = on_error
        self.allow = None if allow is None else parse_allow(allow)
        self._clock = clock
        self.packets = 0  # datagrams received (refused ones included)
        self.messages = 0  # OSC messages seen (bundles count their contents)
        self.applied = 0  # messages applied successfully
        self.errors = 0  # messages or datagrams rejected
        self.refused = 0  # datagrams from sources outside `allow`: dropped unanswered
        self.replies_dropped = 0  # answers not sent: rate limit, or more bytes than the sender sent
        self.forwards_dropped = 0  # `/error` copies not sent to the feedback target (rate limit)
        self.logs_dropped = 0  # log lines left out (rate limit)
        self.internal_errors = 0
        self.last_error = ""
        self._routes: dict[str, Control] = {self.prefix + c.address: c for c in BY_ADDRESS.values()}
        now = clock()
        self._sources: OrderedDict[tuple, _Source] = OrderedDict()
        self._log_bucket = _Bucket(GLOBAL_LOG_RATE, GLOBAL_LOG_BURST, now)
        self._forward_bucket = _Bucket(FORWARD_RATE, FORWARD_BURST, now)
        self._stop = threading.Event()
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

        try:
            self._socks = [_bind(host, int(port))]
        except (OSError, OverflowError, ValueError) as e:
            if self.feedback is not None and self._owns_feedback:
                self.feedback.close()
            reason = getattr(e, "strerror", None) or str(e)
            raise NodeServerError(f"cannot listen for OSC on {host}:{port}: {reason}") from None
        self._address = self._socks[0].getsockname()
        # Tools that send to "localhost" often resolve it to ::1 (liblo's oscsend does): on the
        # loopback default, listen on the IPv6 loopback too, on the same port, when the OS allows.
        if host in _LOOPBACK_NAMES and socket.has_ipv6:
            try:
                self._socks.append(_bind("::1", self.port))
            except OSError as e:
                log.debug("no IPv6 loopback OSC listener: %s", e)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        """The bound UDP port (the real one when constructed with port 0)."""
        return self._address[1]

    @property
    def serving(self) -> bool:
        """True while the receive thread runs (for a supervisor or a soak run to check)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, spawn: Callable[[str, Callable[[], None]], Any] | None = None) -> "OscControl":
        """Serve on a thread (and start the owned feedback sender); returns self.

        `spawn(name, body)`, when given, starts the receive loop (the server's supervisor, which
        runs it again should it ever end unexpectedly); else a plain daemon thread. The one loop
        serves every socket, the IPv6 loopback listener included.
        """
        if self._thread is None and not self._closed:
            if spawn is not None:
                self._thread = spawn(THREAD_NAME, self._serve)
            else:
                self._thread = threading.Thread(target=self._serve, name=THREAD_NAME, daemon=True)
                self._thread.start()
            if self.feedback is not None and self._owns_feedback:
                self.feedback.start()
            shown = f" prefix {self.prefix}" if self.prefix else ""
            allow = f" from {','.join(map(str, self.allow))} only" if self.allow else ""
            log.info("OSC control on udp://%s:%d%s%s", self.host, self.port, shown, allow)
        return self

    def close(self) -> None:
        """Stop serving and close the sockets; returns within ~0.1 s (one poll interval) and never
        waits more than a second, even for a handler that is stuck in the target."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        for sock in self._socks:
            sock.close()
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
            "refused": self.refused,
            "replies_dropped": self.replies_dropped,
            "forwards_dropped": self.forwards_dropped,
            "logs_dropped": self.logs_dropped,
            "internal_errors": self.internal_errors,
            "sources": len(self._sources),  # remembered, at most MAX_SOURCES
            "last_error": self.last_error,
        }

    # -- receiving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        """The receive loop: wait up to POLL_S for a datagram, handle it, look at the stop flag."""
        socks = list(self._socks)
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(socks, [], [], POLL_S)
            except (OSError, ValueError):  # a socket closed under us: only on close()
                if self._stop.is_set():
                    return
                time.sleep(POLL_S)
                continue
            for sock in ready:
                try:
                    data, client = sock.recvfrom(RECEIVE_SIZE)
                except OSError:  # e.g. an ICMP error reported on Windows; nothing to read
                    continue
                self._handle_datagram(data, client, sock)

    def _source(self, client: tuple) -> _Source:
        key = tuple(client[:2])
        source = self._sources.get(key)
        if source is None:
            allowed = self.allow is None or _allowed(str(key[0]), self.allow)
            source = self._sources[key] = _Source(self._clock(), allowed)
            if len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
        return source

    def _handle_datagram(self, data: bytes, client: tuple, sock: socket.socket) -> None:
        """Parse one datagram and dispatch each message; never raises."""
        self.packets += 1
        try:
            source = self._source(client)
            if not source.allowed:
                self.refused += 1
                self._log(source, logging.WARNING, "OSC from %s refused: not in --osc-allow", client[0])
                return
            reply = _Reply(sock, client, source, None if source.verified else len(data))
            try:
                messages = parse_packet(data)
            except OscParseError as e:
                self._error(reply, f"packet: not a valid OSC message or bundle ({len(data)} bytes): {e.reason}")
                return
            for message in messages:
                self._dispatch(message.address, message.args, reply)
        except Exception:  # pragma: no cover - last line of defence for the serving thread
            self.internal_errors += 1
            if self._log_bucket.take(self._clock()):
                log.exception("OSC datagram handling failed")
            else:
                self.logs_dropped += 1

    def _dispatch(self, address: str, args: tuple, reply: _Reply) -> None:
        self.messages += 1
        shown = shown_address(address)
        control = self._routes.get(address)
        if control is None:
            if _PATTERN_CHARS.intersection(address):
                self._error(reply, f"{shown}: OSC address patterns are not supported; send an exact address")
            else:
                self._error(reply, f"{shown}: unknown address (see docs/OSC.md)")
            return
        try:
            value = control.coerce(args)
            if control.action == "ping":
                self._answer(reply, build_message(self.prefix + "/pong").dgram)
            else:
                apply(self.target, control, value)
        except ParamNotice as e:  # applied, with a remark for the sender (a strength held at the cap)
            self.applied += 1
            reply.source.verified = True
            self._error(reply, f"{shown}: {e.reason}", counted=False)
            if self.feedback is not None:
                self.feedback.notify()
            return
        except ControlValueError as e:
            self._error(reply, f"{shown}: {e.reason}")
            return
        except ParamError as e:
            self._error(reply, f"{shown}: {e.reason}")
            return
        except (NodeServerError, ValueError) as e:  # the target's own, user-facing rejections
            self._error(reply, f"{shown}: {e}")
            return
        except Exception:
            self.internal_errors += 1
            self._log(reply.source, logging.ERROR, "OSC handler failed for %s", shown, exc_info=True)
            self._error(reply, f"{shown}: internal error (see the server log)")
            return
        self.applied += 1
        reply.source.verified = True
        if self.feedback is not None and control.action != "ping":
            self.feedback.notify()

    # -- answering ---------------------------------------------------------------------------
    def _answer(self, reply: _Reply, dgram: bytes) -> None:
        """Send to the datagram's source within its rate and (unverified) byte budget."""
        over_budget = reply.budget is not None and len(dgram) > reply.budget
        if over_budget or not reply.source.replies.take(self._clock()):
            self.replies_dropped += 1
            return
        if reply.budget is not None:
            reply.budget -= len(dgram)
        try:
            reply.sock.sendto(dgram, reply.client)
        except OSError as e:  # sender gone / unreachable: nothing to do but note it
            log.debug("OSC reply to %s failed: %s", reply.client, e)

    def _error(self, reply: _Reply, text: str, counted: bool = True) -> None:
        """Answer `/error text` to the sender and the feedback target; `counted=False` for the
        remark of a change that was applied (not an error in the counters)."""
        if counted:
            self.errors += 1
            self.last_error = text
        self._log(reply.source, logging.DEBUG, "OSC error from %s: %s", reply.client[0], text)
        self._answer(reply, build_message(self.prefix + "/error", _fit(text, reply.budget, self.prefix)).dgram)
        fb = self.feedback
        if fb is not None and tuple(reply.client[:2]) != fb.address:
            if self._forward_bucket.take(self._clock()):
                fb.send_error(text)
            else:
                self.forwards_dropped += 1
        if counted and self.on_error is not None:
            try:
                self.on_error(text)
            except Exception:
                self._log(reply.source, logging.ERROR, "on_error callback failed", exc_info=True)

    def _log(self, source: _Source, level: int, fmt: str, *args: Any, exc_info: bool = False) -> None:
        """A log line about `source`, unless it or all sources together are over their rate."""
        if not log.isEnabledFor(level):
            return
        now = self._clock()
        if not (source.logs.take(now) and self._log_bucket.take(now)):
            source.logs_dropped += 1
            self.logs_dropped += 1
            return
        if source.logs_dropped:
            fmt += " (%d earlier lines about this source not logged)"
            args += (source.logs_dropped,)
            source.logs_dropped = 0
        log.log(level, fmt, *args, exc_info=exc_info)


def _fit(text: str, budget: int | None, prefix: str) -> str:
    """`text` cut so that the `/error` message carrying it takes at most `budget` bytes."""
    if budget is None:
        return text
    room = budget - string_size(prefix + "/error") - 4  # address and ",s" type tags
    limit = (room & ~3) - 1  # bytes of text that fit with their NUL and padding
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: max(limit, 0)].decode("utf-8", errors="ignore")

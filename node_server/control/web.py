"""The server's one HTTP + WebSocket listener (OSCQuery and the web console), hardened for a show network.

Why it looks like this:
- aiohttp serves HTTP and WebSockets from one asyncio loop, so a held or slow connection costs a
  file descriptor and a small object, never a thread (the stdlib `ThreadingHTTPServer` used before
  kept one thread per connection forever). The loop runs on one daemon thread owned by this object;
  `close()` ends it within about a second.
- Limits: a listen backlog of 1024 (bursts of connects are accepted, not retried after a second),
  an idle timeout (a connection that sends no complete request in `idle_timeout` seconds is closed),
  and a cap on open connections. At the cap the oldest idle HTTP connection is closed to make room;
  only when every connection is busy is a newcomer answered 503 and closed.
- A `Host` allow-list: the bound address, `localhost`, the address the client actually connected to,
  and (bound off loopback) the machine's own names. Anything else gets 421, so a web page that
  rebinds its own DNS name to this machine cannot read the live tree or drive the console. A
  browser's `Origin` must pass the same list (403 otherwise): other sites' pages cannot open the
  console's WebSocket either.
- Clients that vanish mid-request are counted (`stats["disconnects"]`), never logged as tracebacks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import socket
import threading
from typing import Any, Awaitable, Callable

from aiohttp import web

from node_server.errors import NodeServerError

log = logging.getLogger("node_server.web")

BACKLOG = 1024
MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 15.0  # seconds without a complete request (or between keep-alive requests)
MAX_REQUEST_BYTES = 64 * 1024  # bodies: the console's commands are small JSON
_WILDCARD = ("0.0.0.0", "::", "")
_BUSY_503 = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
             b"Content-Length: 29\r\n\r\ntoo many connections; retry\n")


def host_of(header: str) -> str:
    """The host part of a `Host` header, lower-case, without port, brackets or a trailing dot."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[1:end] if end > 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_host_names(bound: str) -> set[str]:
    """Host names accepted in the `Host` header for a server bound to `bound` (IP literals equal to
    the connection's own local address are accepted on top of these, per request)."""
    names = {"localhost"}
    if bound not in _WILDCARD:
        names.add(bound.lower())
    if bound in _WILDCARD or is_loopback(bound):
        names.update({"127.0.0.1", "::1"})
    if bound in _WILDCARD:  # the printed URL (http://0.0.0.0:PORT/) works on this machine
        names.update({"0.0.0.0", "::"})
    if not is_loopback(bound):
        try:
            hostname = socket.gethostname().lower()
            names.update({hostname, hostname + ".local"})
            fqdn = socket.getfqdn().lower()
            if fqdn:
                names.add(fqdn)
        except OSError:  # pragma: no cover - a host with no name
            pass
    return {n.rstrip(".") for n in names if n}


class _QuietLog:
    """Stands in for aiohttp's protocol logger: client misbehaviour is counted and logged at debug
    level without a traceback; nothing a client does prints a stack to the console."""

    def __init__(self, owner: "WebServer"):
        self._owner = owner

    def _note(self, msg: Any, *args: Any, **kw: Any) -> None:
        self._owner.stats["protocol_errors"] += 1
        exc = kw.get("exc_info")
        detail = f": {type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else ""
        try:
            text = str(msg) % args if args else str(msg)
        except Exception:
            text = str(msg)
        log.debug("HTTP: %s%s", text, detail)

    debug = info = warning = error = exception = _note

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging.Logger's name
        return log.isEnabledFor(level)


class WebServer:
    """An aiohttp application served on a socket bound at construction (so a busy port fails at
    once, with one line), from `start()` until `close()`.

    Routes are added to `self.app` before `start()`. `on_close` coroutines run on the loop first
    when closing (WebSocket handlers use it to close their sockets).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9001,
        *,
        what: str = "HTTP",
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        backlog: int = BACKLOG,
    ):
        self.what = what
        self.max_connections = int(max_connections)
        self.idle_timeout = float(idle_timeout)
        self.backlog = int(backlog)
        self.stats = {"connections": 0, "refused": 0, "evicted": 0, "disconnects": 0, "bad_host": 0,
                      "protocol_errors": 0, "errors": 0}
        self.on_close: list[Callable[[], Awaitable[None]]] = []
        # Calls into the server (current_params() may wait while a prompt encodes) run here, so
        # the loop keeps serving everyone meanwhile; threads are made on demand, at most 4.
        self.executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix=f"{what.lower()}-work")
        self.app = web.Application(middlewares=[self._guard], client_max_size=MAX_REQUEST_BYTES)
        self._sock = self._bind(host, port)
        self._allowed = allowed_host_names(self.host)
        self._conns: dict[Any, float] = {}  # live admitted connections -> accept time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self._closed = False

    def _bind(self, host: str, port: int) -> socket.socket:
        try:
            infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except (OSError, OverflowError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise NodeServerError(f"cannot serve {self.what} on {host}:{port}: {reason}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.setblocking(False)
        except (OSError, OverflowError) as e:
            sock.close()
            reason = getattr(e, "strerror", None) or str(e)
            raise NodeServerError(f"cannot serve {self.what} on {host}:{port}: {reason}") from None
        return sock

    # -- addresses ----------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self._sock.getsockname()[0]

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when constructed with port 0)."""
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def open_connections(self) -> int:
        return len(self._conns)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "WebServer":
        if self._thread is not None or self._closed:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_exception)
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # reported to start()'s caller
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.what.lower()}-server", daemon=True)
        self._thread.start()
        ready.wait(10.0)
        if failure:
            self._thread.join(1.0)
            self._thread = None
            self._sock.close()
            raise NodeServerError(f"cannot serve {self.what} on {self.url}: {failure[0]}")
        return self

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
        await self._runner.setup()
        manager = self._runner.server
        kwargs = dict(keepalive_timeout=self.idle_timeout, logger=_QuietLog(self), access_log=None,
                      timeout_ceil_threshold=1.0)
        owner = self

        class Connection(web.RequestHandler):
            """aiohttp's protocol, admitted against the connection cap."""

            def __init__(self) -> None:
                super().__init__(manager, loop=asyncio.get_running_loop(), **kwargs)
                self.busy = 0  # requests in progress
                self.websocket = False
                self.admitted = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if not owner._admit(self):
                    transport.write(_BUSY_503)  # type: ignore[attr-defined]
                    transport.close()
                    return
                self.admitted = True
                super().connection_made(transport)

            def connection_lost(self, exc: BaseException | None) -> None:
                if not self.admitted:
                    return
                owner._conns.pop(self, None)
                if exc is not None:
                    owner.stats["disconnects"] += 1
                super().connection_lost(exc)

        self._server = await asyncio.get_running_loop().create_server(
            Connection, sock=self._sock, backlog=self.backlog)

    def _admit(self, conn: Any) -> bool:
        self.stats["connections"] += 1
        if len(self._conns) >= self.max_connections:
            idle = [c for c in self._conns if not c.busy and not c.websocket]
            if not idle:
                self.stats["refused"] += 1
                return False
            victim = min(idle, key=self._conns.__getitem__)
            self._conns.pop(victim, None)
            self.stats["evicted"] += 1
            victim.force_close()
        self._conns[conn] = asyncio.get_running_loop().time()
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Stop listening, close every connection and WebSocket, end the thread; safe twice."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self._sock.close()
            self.executor.shutdown(wait=False)
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            fut.result(timeout)
        except Exception as e:  # a stuck handler must not hold the process
            log.debug("%s shutdown: %r", self.what, e)
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # already closed
            pass
        thread.join(timeout)
        self._thread = None
        self._sock.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for hook in list(self.on_close):
            try:
                await asyncio.wait_for(hook(), 0.3)
            except Exception as e:
                log.debug("%s close hook: %r", self.what, e)
        for conn in list(self._conns):
            conn.force_close()
        self._conns.clear()
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), 0.5)
            except Exception as e:
                log.debug("%s cleanup: %r", self.what, e)

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a worker thread, awaited from the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the server's loop (from any thread); dropped when not running."""
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed meanwhile
            pass

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        self.stats["errors"] += 1
        exc = context.get("exception")
        log.debug("%s loop: %s %r", self.what, context.get("message"), exc)

    # -- every request ------------------------------------------------------------------------
    def host_allowed(self, request: web.Request) -> bool:
        header = request.headers.get("Host")
        if header is None:  # HTTP/1.0 tools; browsers (the DNS-rebinding risk) always send one
            return True
        return self._name_allowed(request, host_of(header))

    def origin_allowed(self, request: web.Request) -> bool:
        """A browser's `Origin` (sent with WebSocket handshakes and cross-site fetches) must name
        this server too: WebSockets are not bound by the same-origin policy, so without this any
        page the VJ has open could drive the console on 127.0.0.1."""
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: OSCQuery clients, curl
            return True
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            return False
        return self._name_allowed(request, host_of(rest.split("/", 1)[0]))

    def _name_allowed(self, request: web.Request, host: str) -> bool:
        if host in self._allowed:
            return True
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname:
            local = str(sockname[0]).lower()
            if local.startswith("::ffff:"):
                local = local[7:]
            if host == local:  # the IP literal the client actually reached
                return True
        return False

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if not self.host_allowed(request):
            self.stats["bad_host"] += 1
            return web.json_response({"error": "unknown Host; use this machine's address or name"}, status=421)
        if not self.origin_allowed(request):
            self.stats["bad_host"] += 1
            return web.json_response({"error": "requests from other sites are refused"}, status=403)
        conn = request.protocol
        if hasattr(conn, "busy"):
            conn.busy += 1
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            self.stats["disconnects"] += 1
            raise web.HTTPServiceUnavailable() from None
        except asyncio.CancelledError:  # the client went away mid-request
            self.stats["disconnects"] += 1
            raise
        except Exception:
            self.stats["errors"] += 1
            if self.stats["errors"] <= 10 or self.stats["errors"] % 1000 == 0:
                log.exception("%s request %s %s failed", self.what, request.method, request.path_qs)
            return web.json_response({"error": "internal error"}, status=500)
        finally:
            if hasattr(conn, "busy"):
                conn.busy -= 1

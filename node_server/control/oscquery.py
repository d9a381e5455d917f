"""OSCQuery (https://github.com/Vidvox/OSCQueryProposal) over HTTP for the same inventory.

Lets TouchDesigner's OSCQuery COMPs, Chataigne, Vezér and friends discover every control with
its type, range and live value instead of typing addresses by hand. Served with the stdlib HTTP
server on a daemon thread; values are read from `target.current_params()` on every request, so
a change made over OSC is visible at once. Zeroconf advertising (`_oscjson._tcp` and `_osc._udp`)
happens only when the optional `zeroconf` package is importable and the server is not bound to
a loopback address (an advertised 127.0.0.1 service is useless to other machines); any failure
there is a warning, never fatal.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from node_server.control.inventory import CONTROLS, Control, normalize_prefix
from node_server.control.target import ControlTarget
from node_server.errors import NodeServerError

log = logging.getLogger("node_server.oscquery")

ACCESS_NONE, ACCESS_READ, ACCESS_WRITE, ACCESS_READ_WRITE = 0, 1, 2, 3
ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "ACCESS", "VALUE", "RANGE", "DESCRIPTION")
EXTENSIONS = {
    "ACCESS": True,
    "VALUE": True,
    "RANGE": True,
    "DESCRIPTION": True,
    "TAGS": False,
    "EXTENDED_TYPE": False,
    "UNIT": False,
    "CRITICAL": False,
    "CLIPMODE": False,
    "LISTEN": False,
    "PATH_CHANGED": False,
    "PATH_RENAMED": False,
    "PATH_ADDED": False,
    "PATH_REMOVED": False,
}


class _Node:
    """A node of the address tree: a container, a method (control), or both (`/preset`)."""

    def __init__(self, full_path: str):
        self.full_path = full_path
        self.control: Control | None = None
        self.children: dict[str, _Node] = {}


def _build_tree(prefix: str) -> _Node:
    root = _Node("/")
    for control in CONTROLS:
        node = root
        path = ""
        for part in (prefix + control.address).strip("/").split("/"):
            path += "/" + part
            node = node.children.setdefault(part, _Node(path))
        node.control = control
    return root


def _value_of(control: Control, params: dict[str, Any], paused: bool) -> Any:
    if control.action == "pause":
        return bool(params.get("paused", paused))
    value = params.get(control.param, control.default)
    if control.kind == "string":
        return "" if value is None else str(value)  # RefreshPolicy objects -> canonical text
    if control.kind == "int":
        return int(value)
    if control.kind == "float":
        return float(value)
    return value


class OSCQueryServer:
    """HTTP JSON description of the OSC address space; `start()`/`close()` like `OscControl`."""

    def __init__(
        self,
        target: ControlTarget,
        *,
        osc_port: int,
        osc_host: str | None = None,
        host: str = "127.0.0.1",
        port: int = 9001,
        prefix: str = "",
        name: str = "node-server",
        presets: Any = None,
        advertise: bool = True,
    ):
        self.target = target
        self.osc_port = int(osc_port)
        self.osc_host = host if osc_host is None else osc_host  # usually the same bind address
        self.prefix = normalize_prefix(prefix)
        self.name = name
        self.presets = presets  # a PresetStore: its names become VALS of /preset
        self.advertise = advertise
        self._root = _build_tree(self.prefix)
        self._thread: threading.Thread | None = None
        self._zeroconf: Any = None
        self._zc_infos: list[Any] = []
        handler = type("_BoundHandler", (_Handler,), {"query": self})
        try:
            self._httpd = ThreadingHTTPServer((host, int(port)), handler)
        except (OSError, OverflowError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise NodeServerError(f"cannot serve OSCQuery on {host}:{port}: {reason}") from None
        self._httpd.daemon_threads = True

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when constructed with port 0)."""
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> "OSCQueryServer":
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="oscquery", daemon=True
            )
            self._thread.start()
            if self.advertise:
                self._start_zeroconf()
            log.info("OSCQuery on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving, withdraw the zeroconf records, close the socket."""
        self._stop_zeroconf()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=2.0)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "OSCQueryServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- JSON ----------------------------------------------------------------------------------
    def host_info(self) -> dict[str, Any]:
        """`?HOST_INFO`. OSC_IP is left out for a wildcard bind, so clients use the address
        they reached us on (the proposal makes it optional for exactly that case)."""
        info: dict[str, Any] = {"NAME": self.name}
        if self.osc_host not in ("0.0.0.0", "::", ""):
            info["OSC_IP"] = self.osc_host
        info.update({"OSC_PORT": self.osc_port, "OSC_TRANSPORT": "UDP", "EXTENSIONS": dict(EXTENSIONS)})
        return info

    def _find(self, path: str) -> _Node | None:
        node = self._root
        for part in [p for p in path.split("/") if p]:
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def _live(self) -> tuple[dict[str, Any], bool]:
        params = dict(self.target.current_params())
        try:
            paused = self.target.status().state == "paused"
        except Exception:
            paused = False
        return params, paused

    def describe(self, path: str = "/") -> dict[str, Any] | None:
        """The JSON object for `path` (with its whole subtree), or None when unknown."""
        node = self._find(path)
        if node is None:
            return None
        params, paused = self._live()
        return self._node_json(node, params, paused)

    def _node_json(self, node: _Node, params: dict[str, Any], paused: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"FULL_PATH": node.full_path}
        c = node.control
        if c is None:
            out["ACCESS"] = ACCESS_NONE
            out["DESCRIPTION"] = "node-server controls" if node is self._root else "container"
        else:
            out["DESCRIPTION"] = c.description
            if c.kind == "none":
                out["ACCESS"] = ACCESS_NONE  # no value to read or write: an impulse (`/ping`)
            else:
                out["TYPE"] = c.type_tag
                out["ACCESS"] = ACCESS_READ_WRITE if c.readable else ACCESS_WRITE
                out["RANGE"] = self._range(c)
                if c.readable:
                    out["VALUE"] = [_value_of(c, params, paused)]
        if node.children:
            out["CONTENTS"] = {k: self._node_json(v, params, paused) for k, v in node.children.items()}
        return out

    def _range(self, c: Control) -> list[Any] | None:
        if c.action == "recall_preset" and self.presets is not None:
            try:
                return [{"VALS": list(self.presets.names())}]
            except Exception:
                log.warning("OSCQuery: listing presets failed", exc_info=True)
        return c.osc_range()

    # -- zeroconf ------------------------------------------------------------------------------
    def _start_zeroconf(self) -> None:
        try:
            if ipaddress.ip_address(self.host).is_loopback:
                log.debug("OSCQuery bound to loopback; not advertising over zeroconf")
                return
        except ValueError:
            pass
        try:
            import zeroconf  # optional dependency
        except ImportError:
            log.debug("zeroconf not installed; OSCQuery is not advertised")
            return
        try:
            addr = self.host
            if addr in ("0.0.0.0", "::", ""):
                addr = socket.gethostbyname(socket.gethostname())
            packed = [socket.inet_aton(addr)]
            service = self.name.replace(".", "-")
            self._zc_infos = [
                zeroconf.ServiceInfo(
                    "_oscjson._tcp.local.", f"{service}._oscjson._tcp.local.",
                    addresses=packed, port=self.port, properties={},
                ),
                zeroconf.ServiceInfo(
                    "_osc._udp.local.", f"{service}._osc._udp.local.",
                    addresses=packed, port=self.osc_port, properties={},
                ),
            ]
            self._zeroconf = zeroconf.Zeroconf()
            for info in self._zc_infos:
                self._zeroconf.register_service(info)
        except Exception as e:
            log.warning("OSCQuery: zeroconf advertising failed (%s); clients can still connect to %s", e, self.url)
            self._stop_zeroconf()

    def _stop_zeroconf(self) -> None:
        zc, self._zeroconf = self._zeroconf, None
        if zc is None:
            return
        try:
            for info in self._zc_infos:
                zc.unregister_service(info)
            zc.close()
        except Exception as e:
            log.warning("OSCQuery: zeroconf shutdown failed: %s", e)


class _Handler(BaseHTTPRequestHandler):
    """GET /path, /path?ATTRIBUTE, /?HOST_INFO; 404 unknown path, 400 unknown attribute."""

    query: OSCQueryServer
    protocol_version = "HTTP/1.1"
    server_version = "node-server-oscquery"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, code: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        if code != 204:  # a 204 has no body, hence no length
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._get()
        except Exception:
            log.exception("OSCQuery request %r failed", self.path)
            try:
                self._reply(500, {"error": "internal error"})
            except OSError:
                pass

    def _get(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path) or "/"
        attr = unquote(parts.query).split("&")[0].split("=")[0] if parts.query else ""
        q = self.query
        if attr == "HOST_INFO":
            self._reply(200, q.host_info())
            return
        tree = q.describe(path)
        if tree is None:
            self._reply(404, {"error": f"no OSC node at {path}"})
            return
        if not attr:
            self._reply(200, tree)
            return
        if attr not in ATTRIBUTES:
            self._reply(400, {"error": f"unknown attribute {attr}"})
            return
        if attr not in tree:
            self._reply(204)  # the proposal: e.g. VALUE of a node that is not readable
            return
        self._reply(200, {attr: tree[attr]})

"""OSCQuery (https://github.com/Vidvox/OSCQueryProposal) for the same inventory as OSC.

Lets Chataigne, ossia score, VDMX, TouchDesigner's OSCQuery COMPs and friends discover every control
with its type, range and live value instead of typing addresses by hand. Served by `WebServer`
(aiohttp, one asyncio thread; see `control/web.py` for the limits that keep a show network safe);
values are read from `target.current_params()` on every request, so a change made over OSC is
visible at once. Only the running model's controls are listed (an inventory `Control` may name the
model families it applies to; `target.model_info()` says which family runs, None while loading),
`/strength`'s RANGE shows the model's real cap (`max_strength`), and `/preset`'s VALS are the
presets made for the running model (`control/presets.py`).

The tree follows the proposal's model, as OSC 1.0 does: methods are leaves, containers are not
methods (and python-oscquery, for one, refuses anything else). Where the inventory has a method with
children, the tree keeps the method if its children are write-only actions (`/preset` keeps its
value, the last recalled preset; `/preset/save` stays an OSC-only action) and keeps the container if
the children are readable values (`/blend/N/*` faders; the `/blend` pair list stays OSC-only).

Zeroconf advertising (`_oscjson._tcp` and `_osc._udp`) happens only when the optional `zeroconf`
package is importable and the server is not bound to a loopback address; any failure there is a
warning, never fatal.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any, Callable
from urllib.parse import unquote

from aiohttp import web

from node_server.control.inventory import CONTROLS, Control, normalize_prefix
from node_server.control.target import ControlTarget
from node_server.control.web import WebServer

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
IMPULSE_TYPE = "N"  # what OSCQuery clients (Chataigne: N or I) read as a trigger: a method with no value

# Choices offered as RANGE VALS for string controls that take one of a set. `Control.choices`
# (when the inventory has it) wins; tests check every entry here against `Control.coerce`.
# `/refresh` takes every:N for any N in 1..1000: the list offers the usual ones.
CHOICES: dict[str, tuple[str, ...]] = {
    "/refresh": ("on-change", "every-batch", "every:2", "every:4", "every:8", "every:16", "every:32"),
    "/seed_mode": ("fixed", "per-frame"),
    "/cfg": ("none", "self"),
}


def control_families(control: Control) -> tuple[str, ...] | None:
    """The model families a control applies to, or None for all."""
    fams = getattr(control, "families", None)
    return tuple(fams) if fams else None


def model_info(target: Any) -> dict[str, Any] | None:
    """`target.model_info()` when the target has it and a model runs; else None."""
    fn = getattr(target, "model_info", None)
    if fn is None:
        return None
    try:
        info = fn()
    except Exception:
        log.debug("model_info() failed", exc_info=True)
        return None
    return info if isinstance(info, dict) else None


def controls_for(target: Any, controls: tuple[Control, ...] | None = None) -> list[Control]:
    """The controls of the running model's family (all of them while no model is loaded)."""
    if controls is None:
        controls = CONTROLS
    info = model_info(target)
    family = info.get("family") if info else None
    if family is None:
        return list(controls)
    out = []
    for c in controls:
        fams = control_families(c)
        if fams is None or family in fams:
            out.append(c)
    return out


def preset_names(presets: Any, target: Any) -> list[str]:
    """The presets made for the running model (`PresetStore.names(model=...)`): matched against
    `target.preset_model()` where the target has it (the server: the model's name even while it
    loads), else `target.model_info()`; all of them when neither says."""
    fn = getattr(target, "preset_model", None)
    info = None
    if fn is not None:
        try:
            info = fn()
        except Exception:
            log.debug("preset_model() failed", exc_info=True)
    if info is None:
        info = model_info(target)
    return list(presets.names(info))


def choices_of(control: Control) -> tuple[str, ...] | None:
    own = getattr(control, "choices", None)
    if own:
        return tuple(own)
    return CHOICES.get(control.address)


def value_of(control: Control, params: dict[str, Any], paused: bool) -> Any:
    """A readable control's current value as JSON (the OSC type of `control.type_tag`)."""
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


class _Node:
    """A node of the address tree: a container, a method (a control), or (in the inventory) both."""

    def __init__(self, full_path: str):
        self.full_path = full_path
        self.control: Control | None = None
        self.children: dict[str, _Node] = {}

    def controls(self) -> list[Control]:
        out = [] if self.control is None else [self.control]
        for child in self.children.values():
            out += child.controls()
        return out


def _build_tree(prefix: str, controls: list[Control]) -> _Node:
    root = _Node("/")
    for control in controls:
        node = root
        path = ""
        for part in (prefix + control.address).strip("/").split("/"):
            path += "/" + part
            node = node.children.setdefault(part, _Node(path))
        node.control = control
    _to_proposal_model(root)
    return root


def _to_proposal_model(node: _Node) -> None:
    """Make every method a leaf (see the module docstring for the rule)."""
    for child in node.children.values():
        _to_proposal_model(child)
    if node.control is not None and node.children:
        below = [c for child in node.children.values() for c in child.controls()]
        if any(_readable(c) for c in below):
            node.control = None  # a container of readable values
        else:
            node.children = {}  # a method whose children are write-only actions


def _readable(c: Control) -> bool:
    return c.readable or c.action == "recall_preset"


class OSCQueryServer:
    """OSCQuery over HTTP (and, with the console, the same port's WebSocket); `start()`/`close()`."""

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
        web_server: WebServer | None = None,
    ):
        self.target = target
        self.osc_port = int(osc_port)
        self.osc_host = host if osc_host is None else osc_host  # usually the same bind address
        self.prefix = normalize_prefix(prefix)
        self.name = name
        self.presets = presets  # a PresetStore: its names become VALS of /preset
        self.advertise = advertise
        self.web = web_server if web_server is not None else WebServer(host, port, what="OSCQuery")
        self.extensions = dict(EXTENSIONS)
        self.websocket: Callable[[web.Request], Any] | None = None  # set by the LISTEN streamer
        self._zeroconf: Any = None
        self._zc_infos: list[Any] = []
        self._started = False

    @property
    def host(self) -> str:
        return self.web.host

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when constructed with port 0)."""
        return self.web.port

    @property
    def url(self) -> str:
        return self.web.url

    def start(self) -> "OSCQueryServer":
        if not self._started:
            self._started = True
            # The catch-all comes last so that routes added before start() (the console) win.
            self.web.app.router.add_get("/{path:.*}", self._handle)
            self.web.start()
            if self.advertise:
                self._start_zeroconf()
            log.info("OSCQuery on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving, withdraw the zeroconf records, close the socket."""
        self._stop_zeroconf()
        self.web.close()

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
        info.update({"OSC_PORT": self.osc_port, "OSC_TRANSPORT": "UDP", "EXTENSIONS": dict(self.extensions)})
        if self.websocket is not None:  # the WebSocket shares the HTTP port
            if self.host not in ("0.0.0.0", "::", ""):
                info["WS_IP"] = self.host
            info["WS_PORT"] = self.port
        return info

    def tree(self) -> _Node:
        """The address tree of the running model's controls (rebuilt per call: it is small)."""
        return _build_tree(self.prefix, controls_for(self.target))

    def find(self, path: str, root: _Node | None = None) -> _Node | None:
        node = self.tree() if root is None else root
        for part in [p for p in path.split("/") if p]:
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def live(self) -> tuple[dict[str, Any], bool]:
        params = dict(self.target.current_params())
        try:
            paused = self.target.status().state == "paused"
        except Exception:
            paused = False
        return params, paused

    def describe(self, path: str = "/") -> dict[str, Any] | None:
        """The JSON object for `path` (with its whole subtree), or None when unknown."""
        node = self.find(path)
        if node is None:
            return None
        params, paused = self.live()
        return self.node_json(node, params, paused, self._max_strength())

    def node_json(self, node: _Node, params: dict[str, Any], paused: bool,
                  max_strength: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"FULL_PATH": node.full_path}
        c = node.control
        if c is None:
            out["ACCESS"] = ACCESS_NONE
            out["DESCRIPTION"] = "node-server controls" if node.full_path == "/" else "container"
        else:
            out["DESCRIPTION"] = c.description
            if c.kind == "none":  # an impulse (`/ping`): a method with nothing to read or write
                out["TYPE"] = IMPULSE_TYPE
                out["ACCESS"] = ACCESS_NONE
            else:
                out["TYPE"] = c.type_tag
                out["RANGE"] = self._range(c, max_strength)
                value = self.method_value(c, params, paused)
                if value is None:
                    out["ACCESS"] = ACCESS_WRITE
                else:
                    out["ACCESS"] = ACCESS_READ_WRITE
                    out["VALUE"] = [value]
        if node.children:
            out["CONTENTS"] = {k: self.node_json(v, params, paused, max_strength) for k, v in node.children.items()}
        return out

    def method_value(self, c: Control, params: dict[str, Any], paused: bool) -> Any:
        """A method's current value, or None when it has none to read."""
        if c.readable:
            return value_of(c, params, paused)
        if c.action == "recall_preset":  # the last preset recalled ("" before any)
            return str(getattr(self.target, "last_preset", "") or "")
        return None

    def _max_strength(self) -> float | None:
        info = model_info(self.target)
        cap = info.get("max_strength") if info else None
        try:
            return float(cap) if cap is not None else None
        except (TypeError, ValueError):
            return None

    def _range(self, c: Control, max_strength: float | None = None) -> list[Any] | None:
        if c.action == "recall_preset" and self.presets is not None:
            try:
                return [{"VALS": preset_names(self.presets, self.target)}]
            except Exception:
                log.warning("OSCQuery: listing presets failed", exc_info=True)
        vals = choices_of(c)
        if vals:
            return [{"VALS": list(vals)}]
        if c.param == "strength" and max_strength is not None and c.maximum is not None:
            return [{"MIN": c.minimum, "MAX": min(float(c.maximum), max_strength)}]
        return c.osc_range()

    # -- HTTP ----------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """GET /path, /path?ATTRIBUTE, /?HOST_INFO; 404 unknown path, 400 unknown attribute."""
        if self.websocket is not None and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request)
        path = request.path or "/"
        query = unquote(request.query_string)
        attr = query.split("&")[0].split("=")[0] if query else ""
        if attr == "HOST_INFO":
            if path != "/":
                return _json({"error": "HOST_INFO is served at /?HOST_INFO"}, 400)
            return _json(self.host_info())
        tree = await self.web.run_blocking(self.describe, path)
        if tree is None:
            return _json({"error": f"no OSC node at {path}"}, 404)
        if not attr:
            return _json(tree)
        if attr not in ATTRIBUTES:
            return _json({"error": f"unknown attribute {attr}"}, 400)
        if attr == "VALUE" and "VALUE" not in tree:
            return web.Response(status=204)  # the proposal: VALUE of a node that is not readable
        if attr not in tree:
            return _json({})  # the proposal's example: TYPE of a pure container is {}
        return _json({attr: tree[attr]})

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


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)

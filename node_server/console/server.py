"""The web console at `/console`: see the show from a browser, on the OSCQuery port.

The page (plain files in `static/`, no build step) opens one WebSocket (`/console/ws`) and gets:
the OSCQuery tree of the running model's controls (it builds its sliders and fields from it, so a
new inventory entry appears in OSC, OSCQuery and the console alike), the presets made for the
running model (its preset buttons, sent again with the tree when the model has loaded), live values, a status point
every second (fps, latency, dropped, errors, state, prompt; the last 5 minutes are kept for the
plots), `/error` texts as they happen, and, while the page is visible, JPEG thumbnails of the input
and output (binary frames: one byte, 0 input / 1 output, then the JPEG).

Writes (`{"type": "set", "address": ..., "args": [...]}`) go through `control.dispatch`, the
inventory's coercion and the `ControlTarget` calls OSC uses. Who may write: with `--console-token`
only a page that presents the token (`/console?token=...`); without one, any page when the server
is bound to loopback and none when it is bound off loopback (read-only).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from node_server.console.frames import ThumbnailTap
from node_server.control.dispatch import Rejected, apply_message
from node_server.control.listen import ValueWatcher
from node_server.control.oscquery import OSCQueryServer, controls_for, model_info, preset_names
from node_server.control.web import is_loopback

log = logging.getLogger("node_server.console")

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"}
HISTORY_SECONDS = 300
MAX_VIEWERS = 16
MAX_MESSAGE = 16 * 1024
RECENT_ERRORS = 50


class _Viewer:
    def __init__(self, ws: web.WebSocketResponse, writable: bool):
        self.ws = ws
        self.writable = writable
        self.frames = False  # the page is visible and wants thumbnails
        self.frame_busy = False
        self.next_frame: bytes | None = None


class Console:
    """Adds the console's routes to an `OSCQueryServer`'s web server (call before its `start()`)."""

    def __init__(self, target: Any, oscquery: OSCQueryServer, *, watcher: ValueWatcher | None = None,
                 token: str | None = None, thumbnail_fps: float = 5.0):
        self.target = target
        self.oscquery = oscquery
        self.web = oscquery.web
        self.watcher = watcher or ValueWatcher(oscquery)
        self.token = token or None
        self.tap = ThumbnailTap(self._frame_ready, fps=thumbnail_fps)
        self.viewers: set[_Viewer] = set()
        self.history: collections.deque = collections.deque(maxlen=HISTORY_SECONDS)
        self.errors: collections.deque = collections.deque(maxlen=RECENT_ERRORS)
        self.stats = {"viewers": 0, "refused": 0, "sets": 0, "rejected": 0, "read_only": 0, "frames_sent": 0}
        self._apply = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="console-apply")
        self._ticker: asyncio.Task | None = None
        app = self.web.app
        app.router.add_get("/console", self._redirect)
        app.router.add_get("/console/", self._file)
        app.router.add_get("/console/ws", self._socket)
        app.router.add_get("/console/{name}", self._file)
        app.on_startup.append(self._startup)
        self.web.on_close.append(self._shutdown)

    @property
    def url(self) -> str:
        return self.oscquery.url + "console"

    @property
    def writable_without_token(self) -> bool:
        return is_loopback(self.web.host)

    # -- called from the server's threads ---------------------------------------------------------
    def offer_input(self, image: Any) -> None:
        self.tap.offer("input", image)

    def offer_output(self, image: Any) -> None:
        self.tap.offer("output", image)

    def on_error(self, text: str) -> None:
        """An `/error` text (any thread): shown on every open page."""
        item = {"type": "error", "t": time.time(), "text": str(text)[:500]}
        self.web.call_soon(self._error_on_loop, item)

    def close(self) -> None:
        self.tap.close()
        self._apply.shutdown(wait=False, cancel_futures=True)

    # -- loop side ------------------------------------------------------------------------------
    async def _startup(self, app: web.Application) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for v in list(self.viewers):
            await v.ws.close()

    async def _tick(self) -> None:
        """One status point a second, kept for the plots whether or not a page is open."""
        while True:
            try:
                point = await self.web.run_blocking(self._status)
                self.history.append(point)
                self._broadcast(dict(point, type="status"))
            except Exception:
                log.debug("console status failed", exc_info=True)
            await asyncio.sleep(1.0)

    def _status(self) -> dict[str, Any]:
        s = self.target.status()
        info = model_info(self.target)
        return {"t": round(time.time(), 3), "fps": round(float(s.fps), 2), "latency_ms": round(float(s.latency_ms), 2),
                "frames": int(s.frames), "dropped": int(s.dropped), "errors": int(s.errors), "state": s.state,
                "prompt": s.prompt, "preset": str(getattr(self.target, "last_preset", "") or ""),
                "model": info or {}}

    def _broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        for v in list(self.viewers):
            if not v.ws.closed:
                asyncio.get_running_loop().create_task(self._send(v, v.ws.send_str(text)))

    async def _send(self, viewer: _Viewer, coro: Any) -> None:
        try:
            await asyncio.wait_for(coro, 2.0)
        except Exception:  # a page that cannot keep up is closed; it reconnects by itself
            self.viewers.discard(viewer)
            await viewer.ws.close()

    def _error_on_loop(self, item: dict[str, Any]) -> None:
        self.errors.append(item)
        self._broadcast(item)

    def _frame_ready(self, kind: str, jpeg: bytes) -> None:  # encoder thread
        self.web.call_soon(self._send_frame, bytes([0 if kind == "input" else 1]) + jpeg)

    def _send_frame(self, data: bytes) -> None:
        for v in list(self.viewers):
            if not v.frames or v.ws.closed:
                continue
            if v.frame_busy:
                v.next_frame = data  # the newest frame wins for a slow page
                continue
            v.frame_busy = True
            asyncio.get_running_loop().create_task(self._frame_out(v, data))

    async def _frame_out(self, v: _Viewer, data: bytes) -> None:
        try:
            while data is not None:
                await asyncio.wait_for(v.ws.send_bytes(data), 2.0)
                self.stats["frames_sent"] += 1
                data, v.next_frame = v.next_frame, None
        except Exception:
            self.viewers.discard(v)
            await v.ws.close()
        finally:
            v.frame_busy = False
            self._update_watching()

    def _update_watching(self) -> None:
        self.tap.watching = any(v.frames for v in self.viewers)

    # -- HTTP -------------------------------------------------------------------------------------
    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/" + (f"?{request.query_string}" if request.query_string else ""))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        if name not in FILES:
            return web.json_response({"error": f"no console file {name}"}, status=404)
        body = (STATIC / name).read_bytes()
        return web.Response(body=body, content_type=FILES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                                                "connect-src 'self'; style-src 'self'; "
                                                                "frame-ancestors 'none'"})

    def _writable(self, request: web.Request) -> bool:
        if self.token:
            given = request.query.get("token", "")
            return hmac.compare_digest(given.encode(), self.token.encode())
        return self.writable_without_token

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if len(self.viewers) >= MAX_VIEWERS:
            self.stats["refused"] += 1
            return web.json_response({"error": "too many console pages open"}, status=503)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        if hasattr(request.protocol, "websocket"):
            request.protocol.websocket = True
        viewer = _Viewer(ws, self._writable(request))
        self.viewers.add(viewer)
        self.stats["viewers"] += 1

        def on_change(changed: dict[str, Any], tree_changed: bool) -> None:
            if tree_changed:
                self._send_tree(viewer)
            if changed:
                asyncio.get_running_loop().create_task(
                    self._send(viewer, ws.send_str(json.dumps({"type": "values", "values": changed}))))

        try:
            await ws.send_str(json.dumps(await self.web.run_blocking(self._hello, viewer)))
            self.watcher.subscribe(on_change)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._command(viewer, msg.data)
        except Exception as e:
            log.debug("console page dropped: %r", e)
        finally:
            self.watcher.unsubscribe(on_change)
            self.viewers.discard(viewer)
            self._update_watching()
        return ws

    def _hello(self, viewer: _Viewer) -> dict[str, Any]:
        values, _ = self.watcher.snapshot()
        return {"type": "hello", "writable": viewer.writable, "token_required": bool(self.token),
                "read_only_reason": self._read_only_reason(viewer), "prefix": self.oscquery.prefix,
                "tree": self.oscquery.describe("/"), "values": values, "presets": self._presets(),
                "history": list(self.history), "errors": list(self.errors), "status": self._status()}

    def _read_only_reason(self, viewer: _Viewer) -> str:
        if viewer.writable:
            return ""
        if self.token:
            return "read-only: open the console with ?token=... (the server's --console-token)"
        return "read-only: the server is bound off loopback; start it with --console-token to allow changes"

    def _presets(self) -> list[str]:
        """The preset buttons: the presets made for the running model, as OSCQuery's `/preset` VALS."""
        store = self.oscquery.presets
        try:
            return preset_names(store, self.target) if store is not None else []
        except Exception:
            log.debug("listing presets failed", exc_info=True)
            return []

    def _send_tree(self, viewer: _Viewer) -> None:
        async def send() -> None:
            msg = await self.web.run_blocking(
                lambda: {"type": "tree", "tree": self.oscquery.describe("/"), "presets": self._presets()})
            await viewer.ws.send_str(json.dumps(msg))

        asyncio.get_running_loop().create_task(self._send(viewer, send()))

    async def _command(self, viewer: _Viewer, text: str) -> None:
        try:
            msg = json.loads(text)
            kind = msg.get("type")
        except Exception:
            return
        if kind == "watch":
            viewer.frames = bool(msg.get("frames"))
            self._update_watching()
            return
        if kind != "set":
            return
        reply: dict[str, Any] = {"type": "result", "id": msg.get("id"), "ok": False}
        if not viewer.writable:
            self.stats["read_only"] += 1
            reply["error"] = self._read_only_reason(viewer)
        else:
            address = msg.get("address")
            prefix = self.oscquery.prefix
            if isinstance(address, str) and prefix and address.startswith(prefix + "/"):
                address = address[len(prefix):]
            allowed = {c.address for c in controls_for(self.target)}
            loop = asyncio.get_running_loop()
            try:
                remark = await loop.run_in_executor(self._apply, apply_message, self.target, address,
                                                    msg.get("args"), allowed)
                self.stats["sets"] += 1
                reply["ok"] = True
                if remark is not None:  # applied with a remark (e.g. strength held at the model's cap)
                    reply["notice"] = remark
                    self.on_error(remark)
            except Rejected as e:
                self.stats["rejected"] += 1
                reply["error"] = str(e)
                self.on_error(str(e))
            except Exception as e:  # the target's own failure: reported, the page goes on
                self.stats["rejected"] += 1
                reply["error"] = f"{address}: internal error ({type(e).__name__})"
                log.debug("console set failed", exc_info=True)
        await self._send(viewer, viewer.ws.send_str(json.dumps(reply)))

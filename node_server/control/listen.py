"""OSCQuery's WebSocket: `LISTEN`/`IGNORE` for exact paths, new values pushed as binary OSC.

Per the proposal (bi-directional communication): the client opens a WebSocket on the HTTP port and
sends text frames `{"COMMAND": "LISTEN", "DATA": "/strength"}`; from then on every change of that
method's value arrives as a binary frame holding a plain OSC message (`/strength f 0.05`) until the
client sends `IGNORE` for it or goes away. `PATH_CHANGED` (DATA "/") is sent when the address tree
changes (the model loaded and its family's controls replaced the full list).

Values are sampled by `ValueWatcher` on the server's loop every 50 ms while anyone listens (the web
console is a subscriber too), so a change made any way (OSC, a preset, the console) is seen, and a
server nobody watches does no work for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from aiohttp import WSMsgType, web

from node_server.control.feedback import build_message

log = logging.getLogger("node_server.oscquery")

PERIOD = 0.05  # seconds between value samples while someone listens
MAX_CLIENTS = 32  # OSCQuery WebSocket clients at once
MAX_PATHS = 512  # LISTENed paths per client
MAX_MESSAGE = 4096  # bytes in one command
SEND_TIMEOUT = 2.0  # a client that takes longer to take a batch is dropped


class ValueWatcher:
    """Samples the OSCQuery tree's readable values and tells subscribers what changed."""

    def __init__(self, oscquery: Any, period: float = PERIOD):
        self.oscquery = oscquery
        self.period = period
        self.values: dict[str, Any] = {}
        self.paths: frozenset[str] = frozenset()
        self._subs: list[Callable[[dict[str, Any], bool], None]] = []
        self._task: asyncio.Task | None = None

    def snapshot(self) -> tuple[dict[str, Any], frozenset[str]]:
        root = self.oscquery.tree()
        params, paused = self.oscquery.live()
        values: dict[str, Any] = {}
        paths = []
        stack = [root]
        while stack:
            node = stack.pop()
            paths.append(node.full_path)
            stack.extend(node.children.values())
            if node.control is not None:
                value = self.oscquery.method_value(node.control, params, paused)
                if value is not None:
                    values[node.full_path] = value
        return values, frozenset(paths)

    def subscribe(self, fn: Callable[[dict[str, Any], bool], None]) -> None:
        """`fn(changed, tree_changed)` on the loop after each sample with a change; starts sampling."""
        self._subs.append(fn)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unsubscribe(self, fn: Callable[[dict[str, Any], bool], None]) -> None:
        if fn in self._subs:
            self._subs.remove(fn)

    async def _run(self) -> None:
        try:
            self.values, self.paths = await self.oscquery.web.run_blocking(self.snapshot)
        except Exception:
            log.debug("value sample failed", exc_info=True)
        while self._subs:
            await asyncio.sleep(self.period)
            try:
                values, paths = await self.oscquery.web.run_blocking(self.snapshot)
            except Exception:
                log.debug("value sample failed", exc_info=True)
                continue
            changed = {k: v for k, v in values.items() if k not in self.values or self.values[k] != v}
            tree_changed = paths != self.paths
            self.values, self.paths = values, paths
            if changed or tree_changed:
                for fn in list(self._subs):
                    try:
                        fn(changed, tree_changed)
                    except Exception:
                        log.debug("value subscriber failed", exc_info=True)
        self._task = None


class _Client:
    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.paths: set[str] = set()
        self.pending: dict[str, Any] = {}
        self.path_changed = False
        self.sending = False


class ListenHub:
    """The OSCQuery WebSocket on `oscquery`'s port (its `LISTEN` extension)."""

    def __init__(self, oscquery: Any, watcher: ValueWatcher | None = None):
        self.oscquery = oscquery
        self.watcher = watcher or ValueWatcher(oscquery)
        self.clients: set[_Client] = set()
        self.stats = {"clients": 0, "refused": 0, "bad_commands": 0, "ignored_binary": 0, "sent": 0, "dropped": 0}
        oscquery.websocket = self.handle
        oscquery.extensions.update({"LISTEN": True, "PATH_CHANGED": True})
        oscquery.web.on_close.append(self.close_all)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if len(self.clients) >= MAX_CLIENTS:
            self.stats["refused"] += 1
            return web.json_response({"error": "too many WebSocket clients"}, status=503)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        if hasattr(request.protocol, "websocket"):
            request.protocol.websocket = True
        client = _Client(ws)
        self.clients.add(client)
        self.stats["clients"] += 1

        def on_change(changed: dict[str, Any], tree_changed: bool) -> None:
            self._queue(client, changed, tree_changed)

        self.watcher.subscribe(on_change)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._command(client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.stats["ignored_binary"] += 1  # OSC input stays on UDP (docs/CONSOLE.md)
        finally:
            self.watcher.unsubscribe(on_change)
            self.clients.discard(client)
        return ws

    def _command(self, client: _Client, text: str) -> None:
        try:
            msg = json.loads(text)
            command, path = msg["COMMAND"], msg.get("DATA")
        except Exception:
            self.stats["bad_commands"] += 1
            return
        if command == "LISTEN" and isinstance(path, str):
            known = path in self.watcher.paths or (not self.watcher.paths and path.startswith("/"))
            if known and len(path) <= 512 and len(client.paths) < MAX_PATHS:
                client.paths.add(path)
            else:
                self.stats["bad_commands"] += 1
        elif command == "IGNORE" and isinstance(path, str):
            client.paths.discard(path)
        else:
            self.stats["bad_commands"] += 1

    def _queue(self, client: _Client, changed: dict[str, Any], tree_changed: bool) -> None:
        for path, value in changed.items():
            if path in client.paths:
                client.pending[path] = value  # coalesced: a slow client gets the newest value
        client.path_changed |= tree_changed
        if (client.pending or client.path_changed) and not client.sending:
            client.sending = True
            asyncio.get_running_loop().create_task(self._flush(client))

    async def _flush(self, client: _Client) -> None:
        try:
            while client.pending or client.path_changed:
                if client.path_changed:
                    client.path_changed = False
                    await asyncio.wait_for(client.ws.send_str(json.dumps({"COMMAND": "PATH_CHANGED", "DATA": "/"})),
                                           SEND_TIMEOUT)
                batch, client.pending = client.pending, {}
                for path, value in batch.items():
                    if path not in client.paths:
                        continue
                    dgram = build_message(path, *_osc_args(value)).dgram
                    await asyncio.wait_for(client.ws.send_bytes(dgram), SEND_TIMEOUT)
                    self.stats["sent"] += 1
        except Exception as e:  # gone, or too slow to keep up: drop it (it may reconnect)
            self.stats["dropped"] += 1
            log.debug("OSCQuery WebSocket client dropped: %r", e)
            client.paths.clear()
            client.pending.clear()
            asyncio.get_running_loop().create_task(client.ws.close())
        finally:
            client.sending = False

    async def close_all(self) -> None:
        for client in list(self.clients):
            await client.ws.close()


def _osc_args(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]

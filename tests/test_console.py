"""The OSCQuery WebSocket (LISTEN/IGNORE) and the web console, on a live in-process server.

Third-party clients only: `websocket-client` for the WebSockets, python-osc to decode the pushed
OSC, and Debian's Chromium driven by Playwright for the page (skipped where either is missing;
`.ci/run` installs Chromium so CI runs it).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import websocket  # websocket-client
from pythonosc import osc_message, osc_message_builder

from fakes import TransformEngine
from node_server.control.presets import BUILTIN_DIR, PresetStore
from node_server.server.app import ServerApp
from node_server.server.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class PromptTint(TransformEngine):
    """Output = input tinted by the prompt, so a preset visibly changes the picture."""

    def set_params(self, **changes):
        params = super().set_params(**changes)
        self.active_prompt = params.prompt
        return params

    def transform(self, frame):
        tint = np.array([hash(self.active_prompt) % 97, 40, 255 - len(self.active_prompt) % 200], np.uint8)
        return (frame // 2 + tint // 2).astype(np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Feeder(threading.Thread):
    """Frames at ~20 fps: a moving gradient, so consecutive thumbnails differ."""

    def __init__(self, app: ServerApp):
        super().__init__(daemon=True)
        self.app = app
        self.stop = threading.Event()

    def run(self) -> None:
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        i = 0
        while not self.stop.wait(0.05):
            phase = (i * 7) % 256
            frame = np.stack([(x * 4 + phase) % 256, (y * 4) % 256, np.full_like(x, phase)], -1).astype(np.uint8)
            self.app.submit_frame(i, frame, time.perf_counter(), time.time())
            i += 1


def start_app(tmp_path, **config) -> ServerApp:
    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", osc_port=0,
                      oscquery_port=free_port(), size=SIZE, device="cpu", presets_dir=str(tmp_path), **config)
    app = ServerApp(cfg, engine_factory=lambda a, p: PromptTint(), out=io.StringIO(), progress=False)
    app.open()
    app.load()
    return app


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("presets"))
    feeder = Feeder(app)
    feeder.start()
    try:
        yield app
    finally:
        feeder.stop.set()
        feeder.join(2)
        app.close()


def http_json(app: ServerApp, path: str):
    with urllib.request.urlopen(app.oscquery.url.rstrip("/") + path, timeout=5) as r:
        return json.loads(r.read())


def send_osc(app: ServerApp, address: str, *args) -> None:
    b = osc_message_builder.OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b.build().dgram, ("127.0.0.1", app.control.port))


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- the OSCQuery WebSocket -------------------------------------------------------------------------
def test_host_info_advertises_the_websocket(live):
    info = http_json(live, "/?HOST_INFO")
    assert info["EXTENSIONS"]["LISTEN"] is True and info["EXTENSIONS"]["PATH_CHANGED"] is True
    assert info["WS_PORT"] == live.oscquery.port and info["WS_IP"] == "127.0.0.1"


def test_listen_streams_osc_changes_and_ignore_stops_them(live):
    ws = websocket.create_connection(f"ws://127.0.0.1:{live.oscquery.port}/", timeout=5)
    try:
        ws.send(json.dumps({"COMMAND": "LISTEN", "DATA": "/strength"}))
        ws.send(json.dumps({"COMMAND": "LISTEN", "DATA": "/prompt"}))
        time.sleep(0.2)  # the LISTENs are in before the change
        send_osc(live, "/strength", 0.25)
        msg = osc_message.OscMessage(ws.recv())  # a binary frame holding plain OSC
        assert msg.address == "/strength" and msg.params == [pytest.approx(0.25)]
        send_osc(live, "/prompt", "a watercolour")
        msg = osc_message.OscMessage(ws.recv())
        assert (msg.address, msg.params) == ("/prompt", ["a watercolour"])

        ws.send(json.dumps({"COMMAND": "IGNORE", "DATA": "/strength"}))
        time.sleep(0.2)
        send_osc(live, "/strength", 0.75)
        send_osc(live, "/prompt", "after ignore")
        msg = osc_message.OscMessage(ws.recv())  # /prompt still comes; /strength no longer
        assert (msg.address, msg.params) == ("/prompt", ["after ignore"])
        ws.settimeout(0.6)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()
        assert http_json(live, "/strength?VALUE") == {"VALUE": [0.75]}  # it did change
    finally:
        ws.close()


def test_bad_commands_do_not_end_the_socket(live):
    ws = websocket.create_connection(f"ws://127.0.0.1:{live.oscquery.port}/", timeout=5)
    try:
        for junk in ("not json", "[]", json.dumps({"COMMAND": "LISTEN", "DATA": 5}),
                     json.dumps({"COMMAND": "LISTEN", "DATA": "/nope"}), json.dumps({"COMMAND": "RM"})):
            ws.send(junk)
        ws.send_binary(b"\x00" * 16)
        ws.send(json.dumps({"COMMAND": "LISTEN", "DATA": "/seed"}))
        time.sleep(0.2)
        send_osc(live, "/seed", 77)
        assert osc_message.OscMessage(ws.recv()).params == [77]
    finally:
        ws.close()


def test_cross_site_pages_cannot_open_a_websocket(live):
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(f"ws://127.0.0.1:{live.oscquery.port}/console/ws",
                                    origin="http://evil.example", timeout=5)
    assert e.value.status_code == 403
    ok = websocket.create_connection(f"ws://127.0.0.1:{live.oscquery.port}/console/ws",
                                     origin=f"http://127.0.0.1:{live.oscquery.port}", timeout=5)
    assert json.loads(ok.recv())["type"] == "hello"
    ok.close()


# -- the console's WebSocket ------------------------------------------------------------------------
def console_ws(app: ServerApp, query: str = ""):
    ws = websocket.create_connection(f"ws://127.0.0.1:{app.oscquery.port}/console/ws{query}", timeout=5)
    hello = json.loads(ws.recv())
    assert hello["type"] == "hello"
    return ws, hello


def next_of(ws, kind: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ws.recv()
        if isinstance(m, str):
            j = json.loads(m)
            if j["type"] == kind:
                return j
    raise AssertionError(f"no {kind} message")


def test_console_changes_go_through_osc_validation(live):
    ws, hello = console_ws(live)
    try:
        assert hello["writable"] is True  # bound to loopback, no token
        assert "/strength" in [f"/{k}" for k in hello["tree"]["CONTENTS"]]
        ws.send(json.dumps({"type": "set", "id": 1, "address": "/steps", "args": [9]}))
        r = next_of(ws, "result")
        assert r == {"type": "result", "id": 1, "ok": False, "error": "/steps: must be 1..4, got 9"}
        assert next_of(ws, "error")["text"] == "/steps: must be 1..4, got 9"  # shown as it happens
        ws.send(json.dumps({"type": "set", "id": 2, "address": "/nope", "args": []}))
        assert "unknown address" in next_of(ws, "result")["error"]
        ws.send(json.dumps({"type": "set", "id": 3, "address": "/steps", "args": [2]}))
        assert next_of(ws, "result")["ok"] is True
        assert http_json(live, "/steps?VALUE") == {"VALUE": [2]}
        assert next_of(ws, "values")["values"] == {"/steps": 2}
        send_osc(live, "/seed", "x")  # an OSC error reaches the page too
        assert "/seed" in next_of(ws, "error")["text"]
    finally:
        ws.close()


def test_status_points_are_kept_for_the_plots(live):
    ws, hello = console_ws(live)
    try:
        point = next_of(ws, "status")
        assert point["state"] == "running" and point["frames"] > 0 and "fps" in point
        assert {"latency_ms", "dropped", "errors", "prompt", "preset"} <= set(point)
        assert len(live.console.history) >= 1
    finally:
        ws.close()


def test_thumbnails_only_while_watched(live):
    tap = live.console.tap
    wait_for(lambda: not tap.watching, what="no watchers")
    before = tap.encoded
    time.sleep(0.6)  # frames flow at 20 fps meanwhile
    assert tap.encoded == before  # nobody watching: nothing encoded
    ws, _ = console_ws(live)
    try:
        ws.send(json.dumps({"type": "watch", "frames": True}))
        kinds = set()
        deadline = time.monotonic() + 5
        while kinds != {0, 1} and time.monotonic() < deadline:
            m = ws.recv()
            if isinstance(m, bytes):
                assert m[1:3] == b"\xff\xd8"  # a JPEG
                kinds.add(m[0])
        assert kinds == {0, 1}  # input and output
        ws.send(json.dumps({"type": "watch", "frames": False}))
        wait_for(lambda: not tap.watching, what="watching off")
    finally:
        ws.close()
    assert tap.encoded > before


def test_read_only_off_loopback_and_the_token(tmp_path):
    app = start_app(tmp_path, osc_host="0.0.0.0")
    try:
        ws, hello = console_ws(app)
        assert hello["writable"] is False and "--console-token" in hello["read_only_reason"]
        ws.send(json.dumps({"type": "set", "id": 1, "address": "/steps", "args": [3]}))
        assert next_of(ws, "result")["ok"] is False
        ws.close()
        assert http_json(app, "/steps?VALUE") == {"VALUE": [1]}
    finally:
        app.close()
    app = start_app(tmp_path, osc_host="0.0.0.0", console_token="s3cret-token")
    try:
        assert console_ws(app)[1]["writable"] is False
        assert console_ws(app, "?token=wrong-token")[1]["writable"] is False
        ws, hello = console_ws(app, "?token=s3cret-token")
        assert hello["writable"] is True
        ws.send(json.dumps({"type": "set", "id": 1, "address": "/steps", "args": [3]}))
        assert next_of(ws, "result")["ok"] is True
        ws.close()
    finally:
        app.close()


def test_console_token_must_be_long_enough():
    from node_server.errors import NodeServerError
    from node_server.server.config import resolve

    with pytest.raises(NodeServerError, match="console_token"):
        resolve({"console_token": "short", "size": 64})


def test_banner_prints_the_console_address(live):
    text = live.out.getvalue()
    assert f"console     http://127.0.0.1:{live.oscquery.port}/console  (loopback: read and write)" in text


# -- the page in a real browser ---------------------------------------------------------------------
def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")


# The page counts a frame when it sets the image's src, before the browser has decoded it; so wait,
# within the page, until the image in place is decoded, then read it in the same task (a newer src
# can only be set by a later task).
MEAN_OF_IMAGE = """async id => { const img = document.getElementById(id);
  for (let t = 0; t < 200 && !(img.complete && img.naturalWidth > 0); t++) await new Promise(r => setTimeout(r, 10));
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0;
  for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2];
  return s / (d.length / 4); }"""


def test_the_page_in_a_real_browser(live, tmp_path):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    shot = Path(os.environ.get("NODE_SERVER_CONSOLE_SCREENSHOT", tmp_path / "console.png"))
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(live.console.url, wait_until="load")

            # a frame that changes while frames flow
            page.wait_for_function("() => Number(document.getElementById('output').dataset.frames || 0) >= 2")
            first = page.evaluate(MEAN_OF_IMAGE, "output")
            n = int(page.get_attribute("#output", "data-frames"))
            page.wait_for_function("n => Number(document.getElementById('output').dataset.frames) >= n", arg=n + 3)
            assert page.evaluate(MEAN_OF_IMAGE, "output") != first
            assert int(page.get_attribute("#input", "data-frames")) >= 2

            # moving a slider changes the server's value (read back over OSCQuery)
            slider = page.locator('.control[data-path="/strength"] input[type=range]')
            box = slider.bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
            wait_for(lambda: abs(http_json(live, "/strength?VALUE")["VALUE"][0] - 0.5) < 0.05,
                     what="/strength near 0.5 after the click")

            # a preset button switches the prompt
            neon = PresetStore(BUILTIN_DIR, None).recall("neon")["prompt"]
            page.get_by_role("button", name="neon", exact=True).click()
            wait_for(lambda: http_json(live, "/prompt?VALUE")["VALUE"] == [neon], what="the neon prompt")
            page.wait_for_function("p => document.getElementById('prompt').textContent === p", arg=neon)
            assert http_json(live, "/preset?VALUE") == {"VALUE": ["neon"]}

            page.wait_for_timeout(1500)  # a few more plot points and thumbnails for the picture
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert shot.stat().st_size > 10_000

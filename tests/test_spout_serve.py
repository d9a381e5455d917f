"""`serve` with Spout in and out, against the SpoutGL stand-in; and the clear error where SpoutGL
is missing (Linux, macOS, or Windows without the extra)."""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import time

import numpy as np
import pytest

from bridges.spout import SPOUT_ID_BASE
from bridges.zmq_client import ZmqClient
from node_server.cli import main
from node_server.errors import NodeServerError
from node_server.server.config import ServeConfig, load_config_file, resolve
import spoutgl_standin as standin
from fakes import TransformEngine
from spoutgl_standin import DXGI_BGRA, world

SIZE = 32


class EchoEngine(TransformEngine):
    """Deterministic stand-in: the inverted input, nearest-resized to SIZE (orientation kept)."""

    def transform(self, frame):
        h, w = frame.shape[:2]
        rows = np.arange(SIZE) * h // SIZE
        cols = np.arange(SIZE) * w // SIZE
        return 255 - frame[rows][:, cols, :3]


def _bgra(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb[:, :, [2, 1, 0]], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


def _wait(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config_spout_keys_and_no_zmq(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('spout-in = "Resolume Arena"\nspout_out = "node-server"\nno-zmq = true\n')
    assert load_config_file(f) == {"spout_in": "Resolume Arena", "spout_out": "node-server", "no_zmq": True}
    cfg = resolve({}, str(f))
    assert (cfg.spout_in, cfg.spout_out, cfg.no_zmq) == ("Resolume Arena", "node-server", True)
    f.write_text("no-zmq = 1\n")
    with pytest.raises(NodeServerError, match="no_zmq must be true or false"):
        load_config_file(f)
    with pytest.raises(NodeServerError, match="--spout-in NAME"):
        resolve({"no_zmq": True, "spout_out": "x"})
    with pytest.raises(NodeServerError, match="--spout-in NAME and --spout-out NAME"):
        resolve({"no_zmq": True})
    with pytest.raises(NodeServerError, match="255 bytes"):
        resolve({"spout_out": "n" * 300})
    assert ServeConfig().no_zmq is False and ServeConfig().spout_in is None


def test_spout_frames_share_the_zmq_path_and_outputs_go_everywhere(monkeypatch):
    from node_server.server.app import ServerApp

    standin.install(monkeypatch)
    engine = EchoEngine()
    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", spout_in="Cam",
                      spout_out="Styled", size=SIZE, device="cpu")
    out = io.StringIO()
    app = ServerApp(cfg, engine_factory=lambda app, params: engine, out=out, progress=False, osc=False)
    app.open()
    banner = out.getvalue()
    app.load()
    client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
    try:
        assert client.wait_connected(5.0)
        assert 'frames in   spout "Cam"' in banner and 'frames out  spout "Styled"' in banner
        assert app.zmq.in_endpoint in banner  # ZeroMQ stays on beside Spout

        pic = _picture(1)
        world.publish("Cam", _bgra(pic))  # a BGRA sender, like Resolume
        got = client.recv(timeout=5.0)
        assert got is not None
        header, image = got
        assert header["id"] == SPOUT_ID_BASE and "t" not in header and header["prompt"] == ""
        np.testing.assert_array_equal(engine.seen[0], pic)  # colours and orientation as sent
        np.testing.assert_array_equal(image, 255 - pic)
        _wait(lambda: world.texture("Styled") is not None, what="the Spout output")
        rgba, _ = world.texture("Styled")
        np.testing.assert_array_equal(rgba[:, :, :3], 255 - pic)

        # a ZeroMQ frame goes to the Spout output too, with the same counters
        before = app.status().frames
        zpic = _picture(2)
        client.send(zpic, id=7)
        header, image = client.recv(timeout=5.0)
        assert header["id"] == 7
        _wait(lambda: np.array_equal(world.texture("Styled")[0][:, :, :3], 255 - zpic), what="ZeroMQ frame on Spout")
        assert app.status().frames == before + 1
        assert not world.violations
    finally:
        client.close()
        app.close()
    assert world.texture("Styled") is None  # the sender was released on close
    threads = {c.thread for c in world.calls}
    assert threads == {"spout-in", "spout-out"}


def test_serve_command_with_spout_only(monkeypatch, capsys):
    """The real command line: `serve --no-zmq --spout-in Cam --spout-out Styled`, stopped by SIGINT."""
    standin.install(monkeypatch)
    zmq_port = _free_port()
    done = threading.Event()
    outputs: list[int] = []

    def drive():
        try:
            deadline = time.monotonic() + 120  # includes building the tiny model
            k = 0
            while time.monotonic() < deadline and len(outputs) < 3 and not done.is_set():
                world.publish("Cam", _bgra(_picture(k)))
                k += 1
                t = time.monotonic()
                while time.monotonic() - t < 0.5:
                    tex = world.texture("Styled")
                    if tex is not None and (not outputs or tex[1] != outputs[-1]):
                        outputs.append(tex[1])
                        break
                    time.sleep(0.01)
        finally:
            if not done.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, lambda *a: None)  # a late signal must not hit pytest
    driver = threading.Thread(target=drive, daemon=True)
    try:
        driver.start()
        rc = main(["serve", "--model", "synthetic:tiny", "--size", "64", "--device", "cpu", "--no-zmq",
                   "--zmq-in", f"tcp://127.0.0.1:{zmq_port}", "--spout-in", "Cam", "--spout-out", "Styled",
                   "--osc-port", "0", "--oscquery-port", "0"])
        done.set()
        driver.join(5)
    finally:
        signal.signal(signal.SIGINT, previous)
    text = capsys.readouterr().out
    assert rc == 0
    assert len(outputs) >= 3, text
    assert 'frames in   spout "Cam"' in text and 'frames out  spout "Styled"' in text
    assert "ZeroMQ" not in text  # --no-zmq: no sockets
    assert 'spout "Cam": connected, 32x32 BGRA8' in text
    assert not world.violations
    with socket.socket() as s:  # the ZeroMQ address was never bound
        s.bind(("127.0.0.1", zmq_port))


def test_missing_spoutgl_is_one_clear_error_and_binds_nothing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "SpoutGL", None)  # `import SpoutGL` fails, as on Linux
    monkeypatch.setattr(sys, "platform", "linux")
    port = _free_port()
    rc = main(["serve", "--spout-out", "Styled", "--zmq-in", f"tcp://127.0.0.1:{port}", "--osc-port", "0",
               "--oscquery-port", "0", "--model", "synthetic:tiny", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Spout is Windows-only" in err and 'pip install "node-server[spout]"' in err
    assert "Traceback" not in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))

    assert main(["spout-list"]) == 1
    assert "Windows-only" in capsys.readouterr().err

    monkeypatch.setattr(sys, "platform", "win32")
    assert main(["spout-list"]) == 1
    assert 'SpoutGL is not installed; install it with pip install "node-server[spout]"' in capsys.readouterr().err


def test_spout_list_command(monkeypatch, capsys):
    standin.install(monkeypatch)
    assert main(["spout-list"]) == 0
    assert capsys.readouterr().out.strip() == "no Spout senders running"
    world.publish("Resolume Arena", np.zeros((1080, 1920, 4), np.uint8), dxgi=DXGI_BGRA)
    world.publish("TDSyphonSpoutOut", np.zeros((720, 1280, 4), np.uint8))
    assert main(["spout-list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['"Resolume Arena"  1920x1080  [active]', '"TDSyphonSpoutOut"  1280x720']

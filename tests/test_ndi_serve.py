"""`serve` with NDI in and out, over real NDI on loopback (extra IPs 127.0.0.1): a frame sent by an
NDI peer comes back stylized by `synthetic:tiny` through the server's NDI output; the real command
stops cleanly on SIGINT with NDI clients attached; config keys; the clear error without the binding.
The peer (tests/ndi_peer.py) is written straight on the NDI SDK's calls."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from node_server.cli import main
from node_server.errors import NodeServerError
from node_server.server.config import ServeConfig, load_config_file, resolve

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
# The engine's output travels through the runtime's codec once. A random model's output is full of
# fine detail the codec smooths: the mean error over the picture measured here is 5.4 levels
# (deterministic: the same input gives the same output and the same codec error), against 19 to
# 25 for the same output flipped or with its channels swapped.
OUTPUT_MEAN_TOL = 8.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config_ndi_keys(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('ndi-in = "~Arena"\nndi_out = "node-server"\nndi-extra-ips = "10.0.0.2, 127.0.0.1"\n'
                 'ndi-groups = "stage"\nndi-out-format = "uyvy"\nno-zmq = true\n')
    assert load_config_file(f) == {"ndi_in": "~Arena", "ndi_out": "node-server", "ndi_extra_ips": "10.0.0.2, 127.0.0.1",
                                   "ndi_groups": "stage", "ndi_out_format": "uyvy", "no_zmq": True}
    cfg = resolve({}, str(f))
    assert (cfg.ndi_in, cfg.ndi_out, cfg.no_zmq, cfg.ndi_out_format) == ("~Arena", "node-server", True, "uyvy")
    assert resolve({"ndi_in": "TD"}, str(f)).ndi_in == "TD"  # flags win
    assert ServeConfig().ndi_out_format == "bgrx" and ServeConfig().ndi_in is None
    resolve({"no_zmq": True, "spout_in": "Cam", "ndi_out": "out"})  # Spout in, NDI out: fine
    with pytest.raises(NodeServerError, match=r"--spout-out NAME \(Spout\) or --ndi-out NAME \(NDI\)"):
        resolve({"no_zmq": True, "ndi_in": "x"})
    for key, value, match in [("ndi_in", "", "ndi_in needs a source name or ~TEXT"),
                              ("ndi_out", "n" * 256, "ndi_out needs a source name"),
                              ("ndi_extra_ips", "10.0.0.2;rm -rf", "comma-separated IP addresses"),
                              ("ndi_out_format", "rgb", "bgrx or uyvy")]:
        with pytest.raises(NodeServerError, match=match):
            resolve({key: value})
    f.write_text("ndi-in = 3\n")
    with pytest.raises(NodeServerError, match="ndi_in must be a string"):
        load_config_file(f)


def test_missing_binding_is_one_clear_error_and_binds_nothing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "NDIlib", None)  # `import NDIlib` fails
    port = _free_port()
    rc = main(["serve", "--ndi-out", "Styled", "--zmq-in", f"tcp://127.0.0.1:{port}", "--osc-port", "0",
               "--oscquery-port", "0", "--model", "synthetic:tiny", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--ndi-in/--ndi-out:" in errors[0]
    assert "the NDI binding is not installed" in err and 'pip install "node-server[ndi]"' in err
    assert "Traceback" not in err
    with socket.socket() as s:  # nothing was bound
        s.bind(("127.0.0.1", port))
    assert main(["ndi-list"]) == 1
    assert "the NDI binding is not installed" in capsys.readouterr().err


def test_unavailable_messages_name_the_cause():
    from bridges.ndi import unavailable_message

    assert "libavahi-client3" in unavailable_message(ImportError("libavahi-client.so.3: cannot open shared object"))
    assert "Linux x86_64/aarch64, Windows x64 and macOS arm64" in unavailable_message(None, "darwin", "x86_64")
    assert "could not load" in unavailable_message(ImportError("bad ELF"), "linux", "x86_64")


class Recording:
    """The real engine, with every step's input and output kept by frame id."""

    def __init__(self, engine):
        self.engine = engine
        self.log: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def step(self, frames, ids):
        outs = self.engine.step(frames, ids)
        for frame, out in zip(frames, outs):
            self.log[out.id] = (np.array(frame), np.array(out.image))
        return outs


def test_ndi_frame_comes_back_stylized_through_the_ndi_output():
    from ndi_peer import LOOPBACK, PeerReceiver, PeerSender, unique
    from test_ndi_bridge import assert_same_picture, pattern

    from bridges.ndi import NDI_ID_BASE
    from node_server.server.app import ServerApp, default_engine_factory

    src, dst = unique("serve-in"), unique("serve-out")
    cfg = ServeConfig(model="synthetic:tiny", size=SIZE, device="cpu", no_zmq=True, ndi_in=src, ndi_out=dst,
                      ndi_extra_ips=LOOPBACK, prompt="a cat")  # with no prompt frames pass through
    engines: list[Recording] = []

    def factory(app, params):
        engines.append(Recording(default_engine_factory(app, params)))
        return engines[0]

    out = io.StringIO()
    app = ServerApp(cfg, engine_factory=factory, out=out, progress=False, osc=False)
    sender = PeerSender(src)
    picture = pattern(128, 96)  # 4:3: the engine centre-crops it to 96x96 and resizes to 64x64
    stop = threading.Event()
    peer = None

    def pump():
        while not stop.is_set():
            sender.send_rgb(picture)
            time.sleep(0.05)

    pumper = threading.Thread(target=pump, daemon=True)
    try:
        app.open()
        banner = out.getvalue()
        assert f'frames in   ndi "{src}"' in banner and f'frames out  ndi "{dst}"' in banner
        assert "ZeroMQ" not in banner
        app.load()
        pumper.start()
        peer = PeerReceiver(dst)
        got = None
        deadline = time.monotonic() + 120
        while got is None and time.monotonic() < deadline:
            frame = peer.rgb()
            assert frame is not None, out.getvalue()
            rgb, metadata = frame
            frame_id = int(re.search(r'id="(\d+)"', metadata).group(1))
            if frame_id in engines[0].log:
                got = frame_id, rgb
        assert got is not None
    finally:
        stop.set()
        if pumper.is_alive():
            pumper.join(5)
        if peer is not None:
            peer.close()
        app.close()
        sender.close()
    frame_id, rgb = got
    seen, styled = engines[0].log[frame_id]
    assert frame_id >= NDI_ID_BASE
    assert_same_picture(seen, picture)  # the input arrived upright with its colours (NDI in)
    assert rgb.shape == styled.shape == (SIZE, SIZE, 3)
    err = np.abs(rgb.astype(float) - styled).mean()
    assert err <= OUTPUT_MEAN_TOL, err  # the engine's own output, through NDI out
    for wrong in (styled[::-1], styled[:, ::-1], styled[:, :, ::-1]):  # upright, channels in order
        assert np.abs(rgb.astype(float) - wrong).mean() > 2 * err
    rows, cols = np.arange(SIZE) * 96 // SIZE, 16 + np.arange(SIZE) * 96 // SIZE  # the engine's crop, shrunk
    assert np.abs(styled.astype(float) - seen[rows][:, cols]).mean() > 10  # stylized, not echoed
    assert app.status().frames >= 1
    text = out.getvalue()
    assert f'connecting to "' in text and f'({src})" at 127.0.0.1:' in text
    assert f'ndi "{dst}": sending 64x64 BGRX' in text


def test_serve_command_with_ndi_clients_attached_stops_on_sigint():
    """The real command in a subprocess: NDI in and out, a peer feeding it and a peer watching its
    output; SIGINT ends it with exit code 0 within seconds."""
    from ndi_peer import LOOPBACK, PeerReceiver, PeerSender, unique
    from test_ndi_bridge import pattern

    src, dst = unique("cmd-in"), unique("cmd-out")
    sender = PeerSender(src)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "node_server", "serve", "--model", "synthetic:tiny", "--size", str(SIZE),
           "--device", "cpu", "--no-zmq", "--ndi-in", src, "--ndi-out", dst, "--ndi-extra-ips", LOOPBACK,
           "--osc-port", "0", "--oscquery-port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    picture = pattern(64, 48)

    def pump():
        while not stop.is_set():
            sender.send_rgb(picture)
            time.sleep(0.05)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    peer = None
    try:
        peer = PeerReceiver(dst, timeout=120)
        frames = [peer.rgb(timeout=120) for _ in range(3)]
        assert all(f is not None for f in frames)
        assert all(f[0].shape == (SIZE, SIZE, 3) for f in frames)
        assert sender.connections() >= 1  # the server is connected to the peer's source
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        pumper.join(5)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if peer is not None:
            peer.close()
        sender.close()
    assert proc.returncode == 0, err
    assert elapsed < 20.0, elapsed  # about 3 s on an idle 2-core machine, NDI or not
    assert "node-server serve: stopped" in err
    assert f'frames out  ndi "{dst}"' in out and f'ndi "{src}": 64x48 BGRX' in out

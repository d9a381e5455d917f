"""`node-server feed` against a live in-process server over real ZeroMQ sockets."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bridges.file import make_test_clip, open_source
from node_server.cli import main
from node_server.server.config import ServeConfig

SIZE = 64


@pytest.fixture(scope="module")
def server(tiny_bundle):
    """A server with batch size 2 and no OSC (feed only needs the frames)."""
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.server.app import ServerApp

    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", size=SIZE, batch_size=2, device="cpu")

    def factory(app, params):
        return StreamEngine(tiny_bundle, params, size=SIZE, encoder_image_size=64, device="cpu")

    app = ServerApp(cfg, engine_factory=factory, out=io.StringIO(), progress=False, osc=False)
    app.open()
    app.load()
    try:
        yield app
    finally:
        app.close()


def _addr(app) -> list[str]:
    return ["--zmq-in", app.zmq.in_endpoint, "--zmq-out", app.zmq.out_endpoint]


def test_feed_video_to_video_gets_every_frame(server, tmp_path, capsys):
    clip = make_test_clip(tmp_path / "in.mp4", frames=24, size=(96, 64), fps=24)
    out = tmp_path / "out.mp4"
    before = server.status()
    assert main(["feed", str(clip), "--out", str(out), *_addr(server), "--timeout", "20"]) == 0
    text = capsys.readouterr().out
    assert "sent 24, received 24, lost 0" in text
    assert "latency p50" in text and "p95" in text
    result = open_source(out)
    frames = [f for _, f in result]
    assert len(frames) == 24 and frames[0].shape == (SIZE, SIZE, 3)
    status = server.status()
    assert status.frames - before.frames == 24
    assert status.dropped == before.dropped  # the default window never overflows the buffer


def test_feed_folder_to_folder_and_fps_pacing(server, tmp_path, capsys):
    from bridges.file import open_sink

    src = tmp_path / "frames"
    with open_sink(src, fps=10) as sink:
        for i in range(6):
            sink.write(np.full((40, 70, 3), i * 40, np.uint8))
    out = tmp_path / "styled"
    assert main(["feed", str(src), "--out", str(out), *_addr(server), "--fps", "20"]) == 0
    text = capsys.readouterr().out
    assert "sent 6, received 6, lost 0" in text
    assert len(sorted(out.iterdir())) == 6


def test_feed_counts_frames_the_server_dropped(server, tmp_path, capsys):
    """A window far above the batch size floods the buffer: every frame is either back or lost."""
    clip = make_test_clip(tmp_path / "in.mp4", frames=40, size=(96, 64), fps=24)
    assert main(["feed", str(clip), *_addr(server), "--in-flight", "40", "--timeout", "5"]) == 0
    line = capsys.readouterr().out
    sent, received, lost = (int(x) for x in
                            __import__("re").search(r"sent (\d+), received (\d+), lost (\d+)", line).groups())
    assert sent == 40 and received + lost == 40 and received >= 1


def test_feed_without_a_server_fails_clearly(tmp_path, capsys):
    clip = make_test_clip(tmp_path / "in.mp4", frames=2)
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["feed", str(clip), "--zmq-in", f"tcp://127.0.0.1:{port}", "--zmq-out", f"tcp://127.0.0.1:{port}",
               "--timeout", "0.5"])
    assert rc == 1
    assert "could not connect" in capsys.readouterr().err

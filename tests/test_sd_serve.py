"""`render` and `serve` with `synthetic:sd-turbo-tiny` on the CPU, `/blend` over a real OSC socket
(a weight change causes no encode), and the StreamDiffusion race harness end to end at a tiny size."""

from __future__ import annotations

import io
import signal
import threading

import numpy as np
import pytest
from PIL import Image

from test_server import SIZE, Osc, _read_until, _start_serve, _stop, _stream

SD_TINY = "synthetic:sd-turbo-tiny"


def test_render_an_image_with_the_sd_model(tmp_path, capsys):
    from node_server.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    rc = main(["render", str(src), str(out), "--model", SD_TINY, "--prompt", "x", "--size", "64",
               "--device", "cpu", "--quiet", "--strength", "0.5"])
    assert rc == 0, capsys.readouterr().err
    assert "rendered 1 frames" in capsys.readouterr().out
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 64, 3) and img.std() > 1


@pytest.fixture(scope="module")
def sd_live(tmp_path_factory):
    """A ServerApp loading `synthetic:sd-turbo-tiny` through the default engine factory, OSC on."""
    from bridges.zmq_client import ZmqClient
    from node_server.server.app import ServerApp
    from node_server.server.config import ServeConfig

    cfg = ServeConfig(
        zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", osc_port=0, oscquery_port=0,
        presets_dir=str(tmp_path_factory.mktemp("presets")), size=SIZE, device="cpu", model=SD_TINY,
    )
    app = ServerApp(cfg, out=io.StringIO(), progress=False)
    app.open()
    app.load()
    client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
    assert client.wait_connected(5.0)
    osc = Osc(app.control.port)
    try:
        yield app, client, osc
    finally:
        osc.close()
        client.close()
        app.close()


def _settle(engine) -> None:
    for _ in range(1000):
        if not engine.worker.busy:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the conditioning worker never finished")


def test_blend_over_osc_and_a_weight_change_does_not_encode(sd_live):
    app, client, osc = sd_live
    engine = app._engine
    assert type(engine).__name__ == "SDStreamEngine"
    osc.send("/blend", "an oil painting", 0.5, "a neon city", 0.5)
    osc.send("/ping")
    osc.expect("/pong")
    _settle(engine)
    outs = _stream(client, 3, first_id=100)
    assert [h["id"] for h, _ in outs] == [100, 101, 102]
    assert outs[-1][0]["prompt"] == "0.50*an oil painting + 0.50*a neon city"
    params = app.current_params()
    assert (params["blend_1_prompt"], params["blend_2_weight"]) == ("an oil painting", 0.5)
    encodes = engine.encode_count
    osc.send("/blend/2/weight", 0.25)
    osc.send("/ping")
    osc.expect("/pong")
    outs = _stream(client, 2, first_id=200)
    assert outs[-1][0]["prompt"] == f"{0.5 / 0.75:.2f}*an oil painting + {0.25 / 0.75:.2f}*a neon city"
    assert engine.encode_count == encodes  # weights only: the cached embeddings were re-mixed
    assert app.current_params()["blend_2_weight"] == 0.25
    osc.send("/blend/3/weight", 7)  # out of range: answered, not applied
    assert "0..1" in osc.expect("/error")[0]
    osc.send("/blend", "odd")
    assert "pairs" in osc.expect("/error")[0]


def test_serve_subprocess_with_the_sd_model():
    proc, lines = _start_serve("--model", SD_TINY, "--oscquery-port", "0")
    try:
        import re

        from bridges.zmq_client import ZmqClient

        text = _read_until(proc, lines, "running")
        zin = re.search(r"frames in\s+(\S+)", text).group(1)
        zout = re.search(r"frames out\s+(\S+)", text).group(1)
        with ZmqClient(zin, zout) as client:
            assert client.wait_connected(5.0)
            outs = _stream(client, 5)
        assert [h["id"] for h, _ in outs] == list(range(5))
        assert all(img.shape == (SIZE, SIZE, 3) for _, img in outs)
        _stop(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()


KEYS = ("fps", "p50_ms", "p95_ms", "p99_ms", "interval_p50_ms", "interval_p99_ms", "peak_mem_gib", "name",
        "frame_buffer")


@pytest.mark.parametrize("per_call", [1, 2])
def test_race_harness_runs_both_sides(per_call):
    import torch

    pytest.importorskip("streamdiffusion")
    from bench.peer_streamdiffusion import run_ours, run_peer

    common = dict(frames=6, size=64, device="cpu", dtype=torch.float32, churn_every_s=0.0, model=SD_TINY)
    peer, ours = run_peer(per_call, **common), run_ours(per_call, **common)
    assert "StreamDiffusion" in peer["name"] and "node-server" in ours["name"]
    for result in (peer, ours):
        assert set(KEYS) <= set(result)
        assert result["frame_buffer"] == per_call and result["frames"] == 6
        assert result["fps"] > 0 and result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
        assert result["interval_p50_ms"] > 0 and result["peak_mem_gib"] is None  # CPU: no CUDA memory
        assert result["churns"] >= 1  # churn 0 s: a prompt change before every call
    assert ours["encodes"] >= 1  # our churn went through the side-stream encoder

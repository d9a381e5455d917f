"""The TouchDesigner kit (examples_td/) under a fake of the TouchDesigner objects it touches,
talking to a live server on loopback."""

from __future__ import annotations

import ast
import io
import time
from pathlib import Path

import numpy as np
import pytest

from node_server.engine.params import Params
from node_server.server.config import ServeConfig
from fakes import TransformEngine
from td_fakes import InputTOP, ScriptTOP, load_kit_module

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "examples_td"
SIZE = 64


class FlipRevealingEngine(TransformEngine):
    """Deterministic: output = input nearest-resized to SIZE with the top half's red channel set
    to 255, so any row flip on either side of the wire changes the picture."""

    def transform(self, frame):
        return expected_output(frame)


def expected_output(frame_top_left: np.ndarray) -> np.ndarray:
    h, w = frame_top_left.shape[:2]
    out = frame_top_left[np.arange(SIZE) * h // SIZE][:, np.arange(SIZE) * w // SIZE, :3].copy()
    out[: SIZE // 2, :, 0] = 255
    return out


def _picture(h=36, w=60) -> np.ndarray:
    """Top-left origin; every row and column distinct, nothing symmetric."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(y * 7) % 256, (x * 4) % 256, (x * y) % 256], axis=2).astype(np.uint8)


def _serve(engine):
    from node_server.server.app import ServerApp

    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", size=SIZE, device="cpu")
    app = ServerApp(cfg, engine_factory=lambda app, params: engine, out=io.StringIO(), progress=False, osc=False)
    app.open()
    app.load()
    return app


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.fixture
def kit():
    module = load_kit_module(KIT / "zmq_top.py", "zmq_top")
    yield module
    module.onDestroy()


def _setup(kit, app) -> ScriptTOP:
    top = ScriptTOP()
    kit.onSetupParameters(top)
    assert [p.name for p in top.pages] == ["Server"]
    assert (top.par.Address.eval(), top.par.Inport.eval(), top.par.Outport.eval()) == ("127.0.0.1", 5555, 5556)
    top.par.Inport.default = _port(app.zmq.in_endpoint)
    top.par.Outport.default = _port(app.zmq.out_endpoint)
    return top


def _cook_until(kit, top, pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        kit.onCook(top)
        assert time.perf_counter() - t0 < 0.1, "onCook blocked"
        if pred():
            return
        time.sleep(1 / 60)  # one TouchDesigner frame
    raise AssertionError(f"no result; warnings {top.warnings}, errors {top.errors}")


def test_frame_from_the_script_top_comes_back_processed_and_the_right_way_up(kit):
    engine = FlipRevealingEngine()
    app = _serve(engine)
    try:
        top = _setup(kit, app)
        picture = _picture()
        source = InputTOP(picture)
        top.inputs = [source]
        expected = expected_output(picture)
        _cook_until(kit, top, lambda: top.copied and top.copied[-1].shape == (SIZE, SIZE, 3)
                    and np.array_equal(top.copied[-1][::-1], expected))
    finally:
        app.close()
    # the server saw the picture top-left (the kit flipped TouchDesigner's bottom-left rows) ...
    np.testing.assert_array_equal(engine.seen[0], picture)
    # ... and the TOP shows the output bottom-left, as TouchDesigner expects
    shown = top.copied[-1]
    assert shown.dtype == np.uint8
    np.testing.assert_array_equal(shown, expected[::-1])
    assert (shown[SIZE // 2:, :, 0] == 255).all()  # the marked top half sits at the top of the TOP
    assert not top.errors


def test_synthetic_tiny_model_stylizes_through_the_kit(kit, tiny_bundle):
    from node_server.engine.engine import StreamEngine

    def make():
        return StreamEngine(tiny_bundle, Params(), size=SIZE, encoder_image_size=64, device="cpu")

    app = _serve(make())
    try:
        top = _setup(kit, app)
        picture = _picture(SIZE, SIZE)
        top.inputs = [InputTOP(picture)]
        _cook_until(kit, top, lambda: top.copied and top.copied[-1].shape == (SIZE, SIZE, 3), timeout=60)
        shown = top.copied[-1]
    finally:
        app.close()
    reference = make()  # same weights, seed and prompt: the same output for the same frame
    try:
        reference.warmup(progress=False)
        want = reference.step([picture], [0])[0].image
    finally:
        reference.close()
    assert not np.array_equal(want, picture)  # the model changed the picture
    np.testing.assert_array_equal(shown[::-1], want)


def test_changing_the_port_parameter_reconnects(kit):
    engine = FlipRevealingEngine()
    app = _serve(engine)
    try:
        top = ScriptTOP()
        kit.onSetupParameters(top)
        top.inputs = [InputTOP(_picture())]
        kit.onCook(top)  # default ports: nothing listens, and onCook still returns at once
        first = kit._links[top.path]
        top.par.Inport.default = _port(app.zmq.in_endpoint)
        top.par.Outport.default = _port(app.zmq.out_endpoint)
        _cook_until(kit, top, lambda: top.copied and top.copied[-1].shape == (SIZE, SIZE, 3))
        assert kit._links[top.path] is not first
    finally:
        app.close()


def test_osc_snippets_send_the_documented_messages():
    """osc_out.py builds its messages with python-osc here; they must parse as our addresses."""
    osc = load_kit_module(KIT / "osc_out.py", "osc_out")

    class FakeOscOutDAT:
        def __init__(self):
            self.sent = []

        def sendOSC(self, address, values, **kw):
            self.sent.append((address, list(values)))

    dat = FakeOscOutDAT()
    osc.send_prompt(dat, "turn it into a watercolour")
    osc.send_params(dat, strength=0.6, seed=3)
    assert dat.sent == [("/prompt", ["turn it into a watercolour"]), ("/strength", [0.6]), ("/seed", [3])]
    from node_server.control.inventory import CONTROLS

    known = {c.address for c in CONTROLS}
    assert {a for a, _ in dat.sent} <= known
    assert set(osc.CHOP_CHANNELS) <= known


def test_kit_files_are_plain_python():
    for name in ("zmq_top.py", "build_network.py", "osc_out.py", "osc_in_callbacks.py"):
        ast.parse((KIT / name).read_text(), name)

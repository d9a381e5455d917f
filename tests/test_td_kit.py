"""The TouchDesigner kit (examples_td/) run in the stand-in of TouchDesigner's Python API
(td_fakes.py, written from docs.derivative.ca), against a live server on loopback."""

from __future__ import annotations

import ast
import io
import json
import re
import socket
import statistics
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from node_server.engine.params import Params
from node_server.server.config import ServeConfig
from fakes import TransformEngine
import td_fakes
from td_fakes import TouchDesigner, load_kit_module

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "examples_td"
BASE = "/project1/node_server"
SIZE = 256  # the default demo model's frame size, and build_network's default Fit TOP size


class MarkingEngine(TransformEngine):
    """Deterministic: output = input nearest-resized to `size` with the top half's red set to 255,
    so any row flip on either side of the wire changes the picture."""

    def __init__(self, size=SIZE):
        super().__init__()
        self.size = size

    def transform(self, frame):
        return marked(frame, self.size)

    def set_params(self, **changes):
        params = super().set_params(**changes)
        self.active_prompt = params.prompt
        return params


def marked(frame_top_left: np.ndarray, size: int = SIZE) -> np.ndarray:
    h, w = frame_top_left.shape[:2]
    out = frame_top_left[np.arange(size) * h // size][:, np.arange(size) * w // size, :3].copy()
    out[: size // 2, :, 0] = 255
    return out


def picture(h=180, w=320, seed=0) -> np.ndarray:
    """Top-left origin; rows and columns all distinct, nothing symmetric."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    return np.stack([(y * 7 + x) % 256, (x * 3) % 256, rng.integers(0, 256, (h, w))], axis=2).astype(np.uint8)


def serve(engine, size=SIZE, osc=False, feedback=None):
    from node_server.server.app import ServerApp

    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", size=size, device="cpu",
                      osc_port=0, oscquery_port=0, feedback=feedback)
    app = ServerApp(cfg, engine_factory=lambda app, params: engine, out=io.StringIO(), progress=False, osc=osc)
    app.open()
    app.load()
    return app


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def td():
    t = TouchDesigner()
    yield t
    callbacks = t.op(BASE + "/zmq_top_callbacks")
    if callbacks is not None and callbacks.valid:
        callbacks.module.close_links()
    t.close()


def build(td, *args, text=None):
    """Way A of build_network.py's docstring: a Text DAT holding the file, run with the kit folder."""
    dat = td.op("/project1").create(td_fakes.textDAT, "text1")
    dat.text = text if text is not None else (KIT / "build_network.py").read_text()
    dat.run(str(KIT), *args)
    return td.op(BASE)


def node(td, name):
    n = td.op(f"{BASE}/{name}")
    assert n is not None, name
    return n


def fit_image_u8(td) -> np.ndarray:
    """What the Fit TOP holds this frame, top-left, as the uint8 RGB the server should receive."""
    img = node(td, "to_server")._image()
    return np.clip(img[:, :, :3] * 255.0 + 0.5, 0, 255).astype(np.uint8)


def run_frames_until(td, pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        td.run_frame()
        if pred():
            return
        time.sleep(1 / 60)  # one TouchDesigner frame
    raise AssertionError("condition not reached")


def point_zmq_top_at(td, app):
    z = node(td, "zmq_top")
    z.par.Inport = port_of(app.zmq.in_endpoint)
    z.par.Outport = port_of(app.zmq.out_endpoint)
    return z


# -- the network build_network.py creates -----------------------------------------------------


def test_build_network_creates_every_path_with_documented_parameters(td, capsys):
    base = build(td)
    out = capsys.readouterr().out
    assert td.unknown_pars == []  # no parameter name the docs do not list, even looked up leniently
    assert "has no parameter" not in out and "by hand" not in out
    kinds = {c.name: c.OPType for c in base.children}
    assert kinds == {
        "source": "moviefileinTOP", "to_server": "fitTOP",
        "spout_out": "syphonspoutoutTOP", "spout_in": "syphonspoutinTOP", "spout_result": "nullTOP",
        "zmq_top_callbacks": "textDAT", "zmq_top": "scriptTOP", "zmq_result": "nullTOP",
        "cook_every_frame": "executeDAT",
        "ndi_out": "ndioutTOP", "ndi_in": "ndiinTOP", "ndi_result": "nullTOP",
        "oscout1": "oscoutDAT", "osc_out": "textDAT", "controls": "constantCHOP", "oscout_chop": "oscoutCHOP",
        "status": "tableDAT", "errors": "textDAT", "oscin1_callbacks": "textDAT", "oscin1": "oscinDAT"}

    def wired(name):
        return [i.name for i in node(td, name).inputs]

    assert wired("to_server") == ["source"]
    for name in ("spout_out", "zmq_top", "ndi_out"):
        assert wired(name) == ["to_server"], name  # every path sends the server-sized frame
    assert wired("spout_result") == ["spout_in"] and wired("zmq_result") == ["zmq_top"]
    assert wired("ndi_result") == ["ndi_in"] and wired("oscout_chop") == ["controls"]

    fit = node(td, "to_server").par
    assert (fit.outputresolution.val, fit.resolutionw.val, fit.resolutionh.val, fit.fit.val) == \
        ("custom", 256, 256, "fitoutside")
    assert node(td, "spout_out").par.sendername.val == "td-to-node"
    assert node(td, "spout_in").par.sendername.val == "node-server"

    z = node(td, "zmq_top")
    assert z.par.callbacks.val == f"{BASE}/zmq_top_callbacks"
    assert [p.name for p in z.customPages] == ["Server"]
    for name, value in (("Address", "127.0.0.1"), ("Inport", 5555), ("Outport", 5556), ("Active", True)):
        par = getattr(z.par, name)
        assert (par.val, par.default) == (value, value), name  # the value itself, not only the default
    ticker = node(td, "cook_every_frame")
    assert ticker.par.active.val and ticker.par.framestart.val
    assert "def onFrameStart(frame):" in ticker.text

    ndi_out, ndi_in = node(td, "ndi_out").par, node(td, "ndi_in").par
    assert (ndi_out.active.val, ndi_out.name.val, ndi_out.lowperformancebehavior.val) == \
        (True, "td-to-node", "skipframes")
    assert ndi_in.name.val == "" and "Source Name menu" in out  # no server running: the user picks it

    oscout = node(td, "oscout1").par
    assert (oscout.protocol.val, oscout.address.val, oscout.port.val) == ("msging", "127.0.0.1", 9000)
    assert node(td, "controls").chans() == [("/strength", 0.05), ("/seed", 0.0)]
    chop = node(td, "oscout_chop").par
    assert (chop.netaddress.val, chop.port.val, chop.cookalways.val) == ("127.0.0.1", 9000, True)
    oscin = node(td, "oscin1").par
    assert (oscin.port.val, oscin.splitbundle.val, oscin.callbacks.val) == (9002, True, f"{BASE}/oscin1_callbacks")
    for name, filename in (("zmq_top_callbacks", "zmq_top.py"), ("osc_out", "osc_out.py"),
                           ("oscin1_callbacks", "osc_in_callbacks.py")):
        assert node(td, name).text == (KIT / filename).read_text()


def test_build_network_picks_the_paths_and_replaces_an_old_network(td):
    build(td, "ndi")
    names = {c.name for c in td.op(BASE).children}
    assert {"ndi_out", "ndi_in", "oscout1", "oscin1"} <= names
    assert not names & {"zmq_top", "spout_out", "cook_every_frame"}
    td.op("/project1/text1").run(str(KIT), "zmq,spout")  # again: the old network is replaced
    names = {c.name for c in td.op(BASE).children}
    assert {"zmq_top", "spout_out"} <= names and "ndi_out" not in names
    assert [c.name for c in td.op("/project1").children].count("node_server") == 1
    with pytest.raises(ValueError, match="unknown path"):
        td.op("/project1/text1").run(str(KIT), "zmq,rtsp")


def _doc_lines():
    doc = ast.get_docstring(ast.parse((KIT / "build_network.py").read_text()))
    run_line = next(line.strip() for line in doc.splitlines() if ".run(r'" in line)
    exec_line = next(line.strip() for line in doc.splitlines() if "exec(open(" in line)
    return run_line, exec_line


def test_the_two_documented_ways_to_run_build_network_work(td, tmp_path):
    """The exact lines in build_network.py's docstring, with the placeholder path replaced."""
    run_line, exec_line = _doc_lines()
    readme = (KIT / "README.md").read_text()
    assert run_line in readme and exec_line in readme  # the README says the same
    placeholder = r"C:\\path\\to\\node-server\\examples_td".replace("\\\\", "\\")
    assert placeholder in run_line and placeholder in exec_line

    # A: a Text DAT named text1 in /project1 holding the file, run from the Textport
    dat = td.op("/project1").create(td_fakes.textDAT)
    assert dat.path == "/project1/text1"
    dat.text = (KIT / "build_network.py").read_text()
    textport = td.namespace()
    exec(run_line.replace(placeholder, str(KIT)), textport)
    assert node(td, "zmq_top_callbacks").text == (KIT / "zmq_top.py").read_text()
    td.op(BASE).destroy()

    # B: the one-line exec in the Textport (globals and locals are the same dict there)
    textport = td.namespace()
    exec(exec_line.replace(placeholder, str(KIT)), textport)
    assert node(td, "osc_out").text == (KIT / "osc_out.py").read_text()
    assert td.unknown_pars == []
    # the README's Textport line for a preset reaches the OSC Out DAT
    node(td, "oscout1").par.port = free_udp_port()
    line = re.search(r"`(op\('/project1/node_server/osc_out'\)[^`]*)`", readme).group(1)
    exec(line, td.namespace())
    assert td.osc_sent[-1] == (f"{BASE}/oscout1", "/preset", ["watercolor"])


def test_run_script_without_arguments_uses_the_dat_file_parameter(td):
    dat = td.op("/project1").create(td_fakes.textDAT, "builder")
    dat.par.file = str(KIT / "build_network.py")
    dat.text = (KIT / "build_network.py").read_text()
    dat.run()
    assert node(td, "oscin1_callbacks").text == (KIT / "osc_in_callbacks.py").read_text()


def test_pasting_the_file_into_an_interactive_prompt_fails_as_the_old_readme_said():
    """Why the kit no longer says "paste into the Textport": an interactive prompt ends a function
    at its first blank line."""
    import code

    console = code.InteractiveConsole({})
    errors = []
    console.showsyntaxerror = lambda filename=None, **kw: errors.append("syntax")
    console.showtraceback = lambda: errors.append("traceback")
    for line in (KIT / "build_network.py").read_text().splitlines():
        console.push(line)
    assert errors


def test_readme_table_lists_every_parameter_the_kit_sets(td):
    build(td)
    z = node(td, "zmq_top")
    callbacks = node(td, "zmq_top_callbacks").module
    try:
        z.cook(force=True)  # onCook reads its input TOP and the Server page
    finally:
        callbacks.close_links()
    readme = (KIT / "README.md").read_text()
    table = set(re.findall(r"^\| *`?([a-zA-Z]+(?:TOP|DAT|CHOP|COMP))`? *\| *`([A-Za-z0-9]+)`", readme, re.M))
    missing = sorted(td.pars_used - table)
    assert not missing, f"README.md's checked table lacks {missing}"
    for op_type, name in table:  # and every name in the table is one the stand-in knows
        assert op_type in td_fakes.OPS, op_type
        specs, seqs = td_fakes.OPS[op_type][2], td_fakes.OPS[op_type][3]
        in_sequence = any(re.fullmatch(f"{seq}[0-9]+({'|'.join(s for s, _ in block)})", name)
                          for seq, (block, _, _) in seqs.items())
        assert name in specs or in_sequence, (op_type, name)


# -- the ZeroMQ path ---------------------------------------------------------------------------


def test_zmq_path_sends_the_fit_frame_and_shows_the_output_the_right_way_up(td):
    engine = MarkingEngine()
    app = serve(engine)
    try:
        build(td, "zmq")
        z = point_zmq_top_at(td, app)
        node(td, "source").fake_show(picture(180, 320))
        run_frames_until(td, lambda: z.fake_shown() is not None and engine.seen
                         and np.array_equal(z.fake_shown(), marked(engine.seen[-1])))
        sent = fit_image_u8(td)
    finally:
        app.close()
    assert z.errors() == ""
    # the server got the Fit TOP's frame (256x256, the 16:9 source cropped at the sides), top row first
    assert sent.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(engine.seen[-1], sent)
    # ... and the TOP shows the output with the marked (top) half at the top
    shown = z.fake_shown()
    assert (shown[: SIZE // 2, :, 0] == 255).all()
    np.testing.assert_array_equal(shown, marked(sent))
    np.testing.assert_array_equal(node(td, "zmq_result")._image(), z._image())


SERVER_PROCESS = r"""
import json, sys
sys.path[:0] = [{tests!r}, {root!r}]
from test_td_kit import MarkingEngine, port_of, serve
app = serve(MarkingEngine({size}), size={size})
print(json.dumps([port_of(app.zmq.in_endpoint), port_of(app.zmq.out_endpoint)]), flush=True)
sys.stdin.read()
app.close()
"""


@pytest.fixture
def server_process():
    """The server in its own process, as in a show: only the kit's threads share TouchDesigner's
    Python here, so the cook times are not inflated by the server's threads."""
    import json
    import subprocess

    script = SERVER_PROCESS.format(tests=str(ROOT / "tests"), root=str(ROOT), size=SIZE)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        ports = json.loads(proc.stdout.readline())
        yield ports
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_on_cook_stays_off_the_pixels_with_a_1080p_source(td, server_process, capsys):
    """A 1920x1080 source: the Fit TOP hands onCook a 256x256 frame, and every per-pixel step (flip,
    alpha, float to uint8, packing) runs on the link thread. Asserted: no numpy or ZeroMQ call from
    the kit's code and no ufunc on a downloaded frame on the main thread during onCook; the
    conversions ran, on the link thread. Cook times are measured and printed, not asserted."""
    build(td, "zmq")
    z = node(td, "zmq_top")
    z.par.Inport, z.par.Outport = server_process
    source = node(td, "source")
    frames = [td_fakes._to_rgba(picture(1080, 1920, seed=s)) for s in range(4)]
    module = node(td, "zmq_top_callbacks").module
    main = threading.get_ident()
    conversions = []  # (function, thread)
    for name in ("to_protocol", "to_td"):
        original = getattr(module, name)

        def recorded(image, _name=name, _original=original):
            conversions.append((_name, threading.get_ident()))
            return _original(image)

        setattr(module, name, recorded)
    td_calls = {"t": 0.0}
    read_shapes = []
    to_server = node(td, "to_server")
    download, upload = to_server.numpyArray, z.copyNumpyArray

    def numpy_array(delayed=False, writable=False):
        t0 = time.perf_counter()
        a = download(delayed=delayed, writable=writable)
        td_calls["t"] += time.perf_counter() - t0
        read_shapes.append(None if a is None else a.shape)
        return a

    def copy_numpy_array(a, is3D=False, isCube=False):
        t0 = time.perf_counter()
        upload(a, is3D, isCube)
        td_calls["t"] += time.perf_counter() - t0

    to_server.numpyArray, z.copyNumpyArray = numpy_array, copy_numpy_array
    kit_code = f"<DAT {BASE}/zmq_top_callbacks>"
    pixel_calls = []

    def profile(frame, event, arg):
        if frame.f_code.co_filename != kit_code:
            return
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            where = getattr(arg, "__module__", None) or type(owner).__module__
            if isinstance(owner, np.ndarray) or str(where).startswith(("numpy", "zmq")):
                pixel_calls.append(getattr(arg, "__qualname__", repr(arg)))
        elif event == "call" and frame.f_back is not None and frame.f_back.f_code.co_filename == kit_code \
                and "numpy" in frame.f_code.co_filename:
            pixel_calls.append(frame.f_code.co_name)

    cook = module.onCook
    times, cpu, in_td = [], [], []
    checked = {"cooks": 0}

    def on_cook(scriptOp):  # odd cooks profiled (behaviour), even cooks timed (no profiler overhead)
        before = len(td_fakes.ufunc_log())
        td_calls["t"] = 0.0
        profiled = scriptOp.totalCooks % 2 == 1
        c0, t0 = time.thread_time(), time.perf_counter()
        if profiled:
            sys.setprofile(profile)
        try:
            cook(scriptOp)
        finally:
            sys.setprofile(None)
        if profiled:
            checked["cooks"] += 1
        else:
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            in_td.append(td_calls["t"])
        pixel_calls.extend(name for tid, name in td_fakes.ufunc_log()[before:] if tid == main)

    module.onCook = on_cook
    n_frames = 200
    for i in range(n_frames):
        source.fake_show(frames[i % len(frames)])  # a moving picture
        td.run_frame()
        time.sleep(1 / 60)
    link = module._links[z.path]
    received = link.received
    module.close_links()
    assert pixel_calls == [], "per-pixel work on TouchDesigner's main thread in onCook"
    assert checked["cooks"] >= n_frames // 2 - 1
    assert read_shapes and {s for s in read_shapes if s is not None} == {(SIZE, SIZE, 4)}
    assert {name for name, _ in conversions} == {"to_protocol", "to_td"}
    assert all(tid != main for _, tid in conversions), "conversions ran on the main thread"
    assert received > 0 and z.fake_copies >= n_frames - 5
    ms = sorted(1000 * t for t in times[10:])
    td_ms = sorted(1000 * t for t in in_td[10:])
    cpu_ms = sorted(1000 * t for t in cpu[10:])
    with capsys.disabled():
        print(f"\nonCook, 1920x1080 source through the Fit TOP to {SIZE}x{SIZE}, {len(ms)} cooks: wall median "
              f"{statistics.median(ms):.3f} ms, p90 {ms[int(0.9 * len(ms))]:.3f} ms, max {ms[-1]:.3f} ms; "
              f"main-thread CPU median {statistics.median(cpu_ms):.3f} ms, p90 {cpu_ms[int(0.9 * len(cpu_ms))]:.3f} ms; "
              f"in the stand-in's numpyArray + copyNumpyArray median {statistics.median(td_ms):.3f} ms; "
              f"{received} outputs received")


def test_changing_the_server_page_reconnects(td):
    engine = MarkingEngine()
    app = serve(engine)
    try:
        build(td, "zmq")
        z = node(td, "zmq_top")
        node(td, "source").fake_show(picture())
        for _ in range(3):  # default ports: nothing listens there, and the frames still run
            td.run_frame()
        module = node(td, "zmq_top_callbacks").module
        first = module._links[z.path]
        assert first.key == ("127.0.0.1", 5555, 5556)
        point_zmq_top_at(td, app)
        run_frames_until(td, lambda: engine.seen and z.fake_shown() is not None
                         and np.array_equal(z.fake_shown(), marked(engine.seen[-1])))
        assert module._links[z.path] is not first and not first.alive
    finally:
        app.close()


def test_a_server_size_other_than_the_fit_top_is_reported(td):
    engine = MarkingEngine(size=64)
    app = serve(engine, size=64)
    try:
        build(td, "zmq")
        z = point_zmq_top_at(td, app)
        node(td, "source").fake_show(picture())
        run_frames_until(td, lambda: z.fake_shown() is not None and z.fake_shown().shape == (64, 64, 3)
                         and "64x64" in z.warnings())
    finally:
        app.close()
    assert "set the Fit TOP in front to 64x64" in z.warnings()


def test_synthetic_tiny_model_stylizes_through_the_built_network(td, tiny_bundle):
    from node_server.engine.dreamlite.engine import StreamEngine

    size = 64

    def make():
        return StreamEngine(tiny_bundle, Params().replace(prompt="a cat"), size=size, encoder_image_size=64,
                            device="cpu")  # with no prompt the server passes frames through

    app = serve(make(), size=size)
    try:
        build(td, "zmq")
        node(td, "to_server").par.resolutionw = size  # the server runs at 64: the Fit TOP follows
        node(td, "to_server").par.resolutionh = size
        z = point_zmq_top_at(td, app)
        node(td, "source").fake_show(picture(90, 160))
        links = node(td, "zmq_top_callbacks").module._links
        run_frames_until(td, lambda: z.path in links and links[z.path].received > 0, timeout=60)
        td.run_frame()  # the frame after an output arrives shows it
        shown = z.fake_shown()
        sent = fit_image_u8(td)
    finally:
        app.close()
    reference = make()  # same weights, seed and prompt: the same output for the same frame
    try:
        reference.warmup(progress=False)
        want = reference.step([sent], [0])[0].image
    finally:
        reference.close()
    assert not np.array_equal(want, sent)  # the model changed the picture
    np.testing.assert_array_equal(shown, want)


# -- OSC: control out, feedback in --------------------------------------------------------------


def _osc_setup(td, split=True):
    engine = MarkingEngine()
    feedback_port = free_udp_port()
    app = serve(engine, osc=True, feedback=f"127.0.0.1:{feedback_port}")
    build(td, "zmq")
    # the ports the kit documents, then this test's free ones (as a user edits them)
    assert node(td, "oscout1").par.port.val == 9000 and node(td, "oscin1").par.port.val == 9002
    node(td, "oscout1").par.port = app.control.port
    node(td, "oscout_chop").par.port = app.control.port
    node(td, "oscin1").par.port = feedback_port
    node(td, "oscin1").par.splitbundle = split
    return engine, app


def test_osc_controls_reach_the_server_and_status_comes_back(td):
    engine, app = _osc_setup(td)
    try:
        # the Constant CHOP's /strength and /seed go out through the OSC Out CHOP on the first frame
        run_frames_until(td, lambda: engine.params.strength == pytest.approx(0.05))
        assert ("/project1/node_server/oscout_chop", "/strength", [pytest.approx(0.05)]) in td.osc_sent
        oscout = node(td, "oscout1")
        helpers = td.namespace(me=oscout)["mod"]("osc_out")
        helpers.recall_preset(oscout, "sepia")
        run_frames_until(td, lambda: engine.params.prompt == "make it an old sepia photograph")
        helpers.send_prompt(oscout, "show it through night vision goggles")
        helpers.send_params(oscout, strength=0.06, seed=3)
        run_frames_until(td, lambda: (engine.params.prompt, engine.params.seed) ==
                         ("show it through night vision goggles", 3))
        assert engine.params.strength == pytest.approx(0.06)
        status = node(td, "status")
        wanted = {"fps", "latency_ms", "frames", "dropped", "errors", "state", "prompt"}
        run_frames_until(td, lambda: wanted <= {status[i, 0].val for i in range(status.numRows)})
        run_frames_until(td, lambda: status["prompt", 1].val == "show it through night vision goggles")
        assert status["state", 1].val == "running"
        helpers.send_params(oscout, strength=5.0)  # out of range: the server answers /error
        errors = node(td, "errors")
        run_frames_until(td, lambda: "strength" in errors.text)
    finally:
        app.close()


def test_without_split_bundles_the_status_table_stays_empty(td):
    """Why build_network turns Split Bundle into Messages on: the server's /status/* is one bundle."""
    engine, app = _osc_setup(td, split=False)
    try:
        oscin = node(td, "oscin1")
        run_frames_until(td, lambda: oscin.numRows > 0)  # bundles arrive ...
        for _ in range(10):
            td.run_frame()
            time.sleep(1 / 60)
    finally:
        app.close()
    assert node(td, "status").numRows == 0  # ... but no /status/* message reaches the callback


# -- the NDI path -------------------------------------------------------------------------------


def _stand_in_server(td, size=SIZE):
    """What `serve --ndi-in td-to-node --ndi-out node-server` does, on the stand-in NDI network:
    take the first source whose name contains td-to-node, publish the mark as 'GPUBOX (node-server)'."""
    name, frame = td.ndi.find("td-to-node")
    if frame is None:
        return None
    rgb = np.clip(frame[:, :, :3] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    td.ndi.publish("GPUBOX (node-server)", td_fakes._to_rgba(marked(rgb, size)))
    return name, rgb


def test_ndi_path_sends_the_fit_frame_and_shows_the_servers_source(capsys):
    td = TouchDesigner(machine="TDBOX")
    try:
        td.ndi.publish("GPUBOX (node-server)", np.zeros((SIZE, SIZE, 4), np.float32))  # server running
        td.ndi.publish("GPUBOX (other)", np.ones((8, 8, 4), np.float32))
        build(td, "ndi")
        ndi_in = node(td, "ndi_in")
        assert ndi_in.par.name.val == "GPUBOX (node-server)"  # picked from the NDI In TOP's menu
        assert "Source Name menu" not in capsys.readouterr().out
        node(td, "source").fake_show(picture(1080, 1920))
        td.run_frame()
        got = _stand_in_server(td)
        assert got is not None and got[0] == "TDBOX (td-to-node)"
        np.testing.assert_array_equal(got[1], fit_image_u8(td))  # the server-sized frame, right way up
        td.run_frame()
        shown = node(td, "ndi_result")._image()
        np.testing.assert_array_equal(np.clip(shown[:, :, :3] * 255 + 0.5, 0, 255).astype(np.uint8),
                                      marked(got[1]))
    finally:
        td.close()


def test_ndi_server_machine_setting_names_the_source_before_the_server_runs(td, capsys):
    text = (KIT / "build_network.py").read_text()
    edited = text.replace('NDI_SERVER_MACHINE = ""', 'NDI_SERVER_MACHINE = "GPUBOX"', 1)
    edited = edited.replace('NDI_EXTRA_IPS = ""', 'NDI_EXTRA_IPS = "10.0.0.7"', 1)
    assert edited != text
    build(td, "ndi", text=edited)
    assert node(td, "ndi_in").par.name.val == "GPUBOX (node-server)"
    assert node(td, "ndi_in").par.extraips.val == "10.0.0.7"
    assert "Source Name menu" not in capsys.readouterr().out


# -- the small helpers --------------------------------------------------------------------------


def test_osc_helpers_send_addresses_the_server_knows():
    osc = load_kit_module(KIT / "osc_out.py", "osc_out")

    class Recorder:
        def __init__(self):
            self.sent = []

        def sendOSC(self, address, values, asBundle=False, useNonStandardTypes=True):
            self.sent.append((address, list(values)))

    dat = Recorder()
    osc.send_prompt(dat, "make it a soft watercolor painting")
    osc.send_params(dat, strength=0.06, seed=3)
    osc.recall_preset(dat, "neon")
    assert dat.sent == [("/prompt", ["make it a soft watercolor painting"]), ("/strength", [0.06]),
                        ("/seed", [3]), ("/preset", ["neon"])]
    from node_server.control.inventory import CONTROLS

    known = {c.address for c in CONTROLS}
    assert {a for a, _ in dat.sent} <= known
    assert set(osc.CHOP_CHANNELS) <= known


def test_demo_presets_named_by_the_kit_exist_and_suit_the_demo_model():
    osc = load_kit_module(KIT / "osc_out.py", "osc_out")
    demo = json.loads((ROOT / "node_server/models/demo/node_server.json").read_text())
    assert len(osc.DEMO_PRESETS) == 9
    for name in osc.DEMO_PRESETS:
        preset = tomllib.loads((ROOT / "presets" / f"{name}.toml").read_text())
        assert 0 < preset["strength"] <= demo["max_strength"], name
    readme = (KIT / "README.md").read_text()
    for name in osc.DEMO_PRESETS:
        assert f"`{name}`" in readme, name
    build = (KIT / "build_network.py").read_text()
    assert "SERVER_SIZE = (%d, %d)" % (demo["size"], demo["size"]) in build
    assert "STRENGTH = %s" % demo["defaults"]["strength"] in build
    assert "512x512 by default" not in readme


def test_kit_files_are_plain_python():
    for name in ("zmq_top.py", "build_network.py", "osc_out.py", "osc_in_callbacks.py"):
        ast.parse((KIT / name).read_text(), name)

"""The server: freshest-frame buffer, stats, config, and live runs over real ZeroMQ/UDP sockets.

Every socket binds 127.0.0.1 on an ephemeral port, so the tests can run in parallel. The model is
`synthetic:tiny` on the CPU at 64x64.
"""

from __future__ import annotations

import collections
import io
import json
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
import zmq
from pythonosc import osc_message_builder, osc_packet

from bridges.zmq_client import ZmqClient
from bridges.zmq_protocol import encode_frame
from node_server.errors import NodeServerError
from node_server.server.config import ServeConfig, load_config_file, resolve
from node_server.server.latest import LatestBuffer, Pending
from node_server.server.stats import Stats

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


# -- units -------------------------------------------------------------------------------------


def _pending(i: int, recv: float | None = None) -> Pending:
    now = time.perf_counter() if recv is None else recv
    return Pending(i, None, now, time.time())


def test_buffer_keeps_the_freshest_and_counts_drops():
    buf = LatestBuffer(3)
    drops = sum(buf.put(_pending(i)) for i in range(10))
    assert drops == 7
    assert [p.id for p in buf.take(8, timeout=0.1, gather=0)] == [7, 8, 9]
    assert buf.set_capacity(1) == 0
    buf.put(_pending(10))
    assert buf.put(_pending(11)) == 1
    assert [p.id for p in buf.take(8, timeout=0.1, gather=0)] == [11]


def test_buffer_take_waits_briefly_for_a_batch_but_not_for_long():
    buf = LatestBuffer(4)
    buf.put(_pending(0))
    t0 = time.perf_counter()
    got = buf.take(4, timeout=1.0, gather=0.005)
    assert [p.id for p in got] == [0]
    assert time.perf_counter() - t0 < 0.25  # not the 1 s timeout

    buf.put(_pending(1))
    threading.Timer(0.01, lambda: [buf.put(_pending(i)) for i in (2, 3, 4)]).start()
    got = buf.take(4, timeout=1.0, gather=2.0)  # a full batch arrives before the gather limit
    assert [p.id for p in got] == [1, 2, 3, 4]


def test_buffer_close_wakes_a_waiting_take():
    buf = LatestBuffer(1)
    threading.Timer(0.05, buf.close).start()
    t0 = time.perf_counter()
    assert buf.take(1, timeout=5.0) == []
    assert time.perf_counter() - t0 < 2.0


def test_stats_window_fps_and_p50():
    now = [100.0]
    stats = Stats(window=1.0, clock=lambda: now[0])
    for k, lat in enumerate((10, 20, 30, 40, 1000)):
        stats.frame_done(recv=99.0 + k * 0.1 - lat / 1000, sent=99.0 + k * 0.1)
    s = stats.snapshot()  # the window holds sends at 99.0 .. 99.4
    assert s.frames == 5 and s.fps == pytest.approx(5.0)
    assert s.latency_ms == pytest.approx(30.0)
    now[0] = 100.35  # sends before 99.35 leave the window
    s = stats.snapshot()
    assert s.fps == pytest.approx(1.0) and s.latency_ms == pytest.approx(1000.0)
    stats.add_dropped(3)
    stats.add_error()
    stats.set_state("running")
    s = stats.snapshot()
    assert (s.dropped, s.errors, s.state) == (3, 1, "running")
    with pytest.raises(ValueError):
        stats.set_state("exploded")


def test_config_file_flags_override_and_unknown_keys(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('osc-port = 9100\nzmq_in = "tcp://127.0.0.1:6000"\nsize = 256\nfeedback = "127.0.0.1:9200"\n')
    cfg = resolve({"osc_port": 9300, "size": None}, str(f))
    assert cfg.osc_port == 9300  # flag wins
    assert cfg.zmq_in == "tcp://127.0.0.1:6000" and cfg.size == 256  # from the file
    assert cfg.feedback_address() == ("127.0.0.1", 9200)
    assert cfg.zmq_out == ServeConfig().zmq_out  # default

    f.write_text('osc_prot = 9100\n')
    with pytest.raises(NodeServerError, match="unknown key 'osc_prot'"):
        load_config_file(f)
    f.write_text('osc_port = "9100"\n')
    with pytest.raises(NodeServerError, match="osc_port must be an integer"):
        load_config_file(f)
    f.write_text('size = 100\n')
    with pytest.raises(NodeServerError, match="multiple of 32"):
        load_config_file(f)
    f.write_text('osc_port = \n')
    with pytest.raises(NodeServerError, match="not valid TOML"):
        load_config_file(f)
    with pytest.raises(NodeServerError, match="feedback"):
        resolve({"feedback": "nohost"})


def test_cli_reports_a_bad_config_file_without_a_traceback(tmp_path, capsys):
    from node_server.cli import main

    f = tmp_path / "bad.toml"
    f.write_text("colour = 'red'\n")
    assert main(["serve", "--config", str(f)]) == 1
    assert "unknown key 'colour'" in capsys.readouterr().err


def test_presets_dir_default_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NODE_SERVER_PRESETS", str(tmp_path / "p"))
    assert ServeConfig().presets_path() == tmp_path / "p"
    monkeypatch.delenv("NODE_SERVER_PRESETS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert ServeConfig().presets_path() == tmp_path / "cfg" / "node-server" / "presets"


# -- helpers for live servers ------------------------------------------------------------------


def _frame(i: int, h: int = 48, w: int = 80) -> np.ndarray:
    f = np.zeros((h, w, 3), np.uint8)
    f[..., 0] = i % 256
    f[: h // 2, :, 1] = 200
    return f


def _stream(client: ZmqClient, n: int, *, first_id: int = 0, in_flight: int = 1, timeout: float = 20.0):
    """Send n frames keeping at most `in_flight` outstanding; returns the outputs.

    With no more in flight than the batch size (1 here) the server's buffer can never overflow,
    so nothing may be dropped.
    """
    outs: list[tuple[dict, np.ndarray]] = []
    next_id, deadline = first_id, time.monotonic() + timeout
    while len(outs) < n and time.monotonic() < deadline:
        while next_id < first_id + n and next_id - first_id - len(outs) < in_flight:
            assert client.send(_frame(next_id), id=next_id) == next_id
            next_id += 1
        got = client.recv(timeout=0.5)
        if got is not None and got[0]["id"] >= first_id:
            outs.append(got)
    return outs


class Osc:
    """A UDP socket that sends OSC to the server and reads what comes back to it.

    A thread reads the socket all the time: the server's 4 Hz /status bundles would otherwise fill
    the kernel's receive buffer (about 170 packets) in under a minute of a module's tests, and
    then a later /error or /status/prompt would be dropped before `expect` ever looked."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.server = ("127.0.0.1", port)
        self._received: collections.deque[tuple[str, list]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="test-osc-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            messages = [(t.message.address, list(t.message.params)) for t in osc_packet.OscPacket(data).messages]
            with self._cond:
                self._received.extend(messages)
                self._cond.notify_all()

    def send(self, address: str, *args) -> None:
        b = osc_message_builder.OscMessageBuilder(address=address)
        for a in args:
            b.add_arg(a)
        self.sock.sendto(b.build().dgram, self.server)

    def expect(self, address: str, timeout: float = 3.0, match=lambda params: True) -> list:
        """Read (in arrival order, dropping what does not match) until a message to `address` whose
        params satisfy `match`; returns its params."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._received:
                    got, params = self._received.popleft()
                    if got == address and match(params):
                        return params
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {address} within {timeout} s")
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self._reader.join(1.0)
        self.sock.close()


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _header(**over) -> bytes:
    h = {"v": 1, "id": 1, "w": 80, "h": 48, "c": 3, "dtype": "uint8"}
    h.update(over)
    return json.dumps({k: v for k, v in h.items() if v is not None}).encode()


BODY = bytes(80 * 48 * 3)
MALFORMED_WIRE = [
    [b"{not json", BODY],
    [b"\xff\xfe", BODY],
    [b"[1, 2]", BODY],
    [b"", BODY],
    [_header(id=None), BODY],
    [_header(id="1"), BODY],
    [_header(v=2), BODY],
    [_header(dtype="float32"), BODY],
    [_header(c=2), bytes(80 * 48 * 2)],
    [_header(w=5000, h=5000), BODY],
    [_header(), BODY[:-3]],
    [_header(), BODY + b"x"],
    [_header()],
    [b""],
    [_header(), BODY, b"extra"],
    # issue 16: each of these used to end the receive thread while the status said "running"
    [b"[" * 5000 + b"]" * 5000, BODY],
    [b'{"a":' * 5000 + b"1" + b"}" * 5000, BODY],
    [_header(t=10**400), BODY],
]


# -- the in-process server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tiny_bundle, tmp_path_factory):
    """A ServerApp on threads with OSC on; `feedback` is the UDP socket its /status/* go to."""
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.server.app import ServerApp

    feedback = Osc(0)
    presets = tmp_path_factory.mktemp("presets")
    cfg = ServeConfig(
        zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", osc_port=0, oscquery_port=0,
        feedback=f"127.0.0.1:{feedback.port}", presets_dir=str(presets), size=SIZE, device="cpu",
        model="synthetic:tiny",
    )
    out = io.StringIO()

    def factory(app, params):
        return StreamEngine(tiny_bundle, params, size=SIZE, encoder_image_size=64, device="cpu")

    app = ServerApp(cfg, engine_factory=factory, out=out, progress=False)
    app.open()
    banner = out.getvalue()
    app.load()
    client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
    assert client.wait_connected(5.0)
    osc = Osc(app.control.port)
    try:
        yield app, client, osc, feedback, banner, presets
    finally:
        osc.close()
        client.close()
        feedback.close()
        app.close()


def test_banner_lists_every_address_before_loading(live):
    app, _, _, feedback, banner, _ = live
    assert "synthetic:tiny on cpu" in banner
    assert app.zmq.in_endpoint in banner and app.zmq.out_endpoint in banner
    assert f"udp://127.0.0.1:{app.control.port}" in banner
    assert f"udp://127.0.0.1:{feedback.port}" in banner
    assert "running" not in banner  # printed by open(), before load()


def test_sixty_frames_come_back_in_order_with_their_ids(live):
    app, client, *_ = live
    before = app.status()
    outs = _stream(client, 60, first_id=1000)
    ids = [h["id"] for h, _ in outs]
    assert ids == list(range(1000, 1060))
    for header, image in outs:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert (header["w"], header["h"], header["c"], header["v"]) == (SIZE, SIZE, 3, 1)
        assert isinstance(header["t"], float)  # the sender's clock comes back
        server = header["server"]
        assert server["sent"] >= server["recv"] and server["latency_ms"] >= 0
        assert header["prompt"] == app.status().prompt
    status = app.status()
    assert status.frames - before.frames == 60
    assert status.dropped == before.dropped
    assert status.state == "running" and status.fps > 0 and status.latency_ms > 0


def test_freshest_frame_wins_when_the_sender_floods(live):
    app, client, *_ = live
    before = app.status().dropped
    for i in range(40):  # far faster than the engine: the buffer (capacity 1) drops the oldest
        client._push.send_multipart(encode_frame(_frame(i), id=5000 + i))
    got = []
    while (out := client.recv(timeout=1.0)) is not None:
        got.append(out[0]["id"])
    assert got and got == sorted(got) and got[-1] == 5039  # the newest frame is always served
    assert app.status().dropped - before == 40 - len(got)


def test_client_latest_skips_to_the_newest_output(live):
    _, client, *_ = live
    _stream(client, 3, first_id=7000)  # consumed in order by recv
    for i in range(3):  # three outputs waiting, unread
        assert client.send(_frame(i), id=7100 + i) == 7100 + i
        time.sleep(0.15)
    header, image = client.latest(timeout=2.0)
    assert header["id"] == 7102 and image.shape == (SIZE, SIZE, 3)
    assert client.latest(timeout=0.1) is None


def test_malformed_messages_never_disturb_good_frames(live):
    app, client, _, feedback, _, _ = live
    errors_before = app.status().errors
    hooked: list[str] = []
    app.add_error_hook(hooked.append)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(app.zmq.in_endpoint)
    good_ids = []
    try:
        for i in range(1000):
            push.send_multipart(MALFORMED_WIRE[i % len(MALFORMED_WIRE)])
            if i % 50 == 49:
                fid = 9000 + i
                push.send_multipart(encode_frame(_frame(i), id=fid))
                got = client.recv(timeout=10.0)
                assert got is not None, f"good frame {fid} did not come back"
                good_ids.append(got[0]["id"])
                assert got[0]["id"] == fid
    finally:
        push.close(linger=0)
    assert len(good_ids) == 20
    deadline = time.monotonic() + 5
    while app.status().errors - errors_before < 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.status().errors - errors_before == 1000
    assert hooked and all(isinstance(r, str) and r for r in hooked)
    # reported over OSC as /error to the feedback target (rate-limited, at least one)
    reason = feedback.expect("/error", timeout=3.0)[0]
    assert "header" in reason or "frame" in reason
    assert _stream(client, 3, first_id=9990) and app.status().state == "running"
    assert app.threads() == {"zmq-recv": "running", "osc-control": "running", "frame-loop": "running"}
    assert (app.status().threads_down, app.status().restarts) == (0, 0)


def test_status_says_which_threads_run(live):
    """/status/threads_down and /status/restarts: what a soak (or a show's watchdog) reads."""
    app, _, _, feedback, _, _ = live
    assert feedback.expect("/status/threads_down", timeout=3.0) == [0]
    assert feedback.expect("/status/restarts", timeout=3.0) == [0]
    assert set(app.threads()) == {"zmq-recv", "osc-control", "frame-loop"}


def test_ping_answers_pong_to_the_sender(live):
    _, _, osc, *_ = live
    osc.send("/ping")
    assert osc.expect("/pong") == []


def test_prompt_change_over_osc_while_frames_flow(live):
    app, client, osc, feedback, _, _ = live
    new = "turn it into a watercolour"
    stop = threading.Event()
    received: list[tuple[float, dict]] = []

    def pump():
        i = 20000
        while not stop.is_set():
            client.send(_frame(i), id=i)
            got = client.recv(timeout=2.0)
            if got is not None:
                received.append((time.monotonic(), got[0]))
            i += 1

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        osc.send("/prompt", new)
        feedback.expect("/status/prompt", timeout=10.0, match=lambda p: p == [new])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(h["prompt"] == new for _, h in received):
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        stop.set()
        t.join(5)
    assert app.current_params()["prompt"] == new
    assert app.status().prompt == new
    prompts = [h["prompt"] for _, h in received]
    assert new in prompts
    first_new = prompts.index(new)
    assert all(p == new for p in prompts[first_new:])  # never goes back to the old prompt
    ids = [h["id"] for _, h in received]
    assert ids == sorted(ids)
    gaps = np.diff([ts for ts, _ in received])
    assert len(received) > 10 and gaps.max() < 2.0  # frames kept coming during the change


def test_encoder_failure_is_reported_and_frames_keep_flowing(live, monkeypatch):
    app, client, osc, feedback, _, _ = live
    engine = app._engine
    real = engine.encoder.encode

    def flaky(tokens, frames):
        if tokens.prompt == "explode":
            raise MemoryError("simulated encoder failure")
        return real(tokens, frames)

    monkeypatch.setattr(engine.encoder, "encode", flaky)
    # Start from a settled state: no encode left over from an earlier test, and frames made with
    # the current prompt (otherwise "before" could still change under us).
    deadline = time.monotonic() + 10
    while engine.worker.busy or engine.active_prompt != engine.params.prompt:
        assert time.monotonic() < deadline, "the engine did not settle"
        _stream(client, 1, first_id=49_000)
    before = engine.params.prompt
    osc.send("/prompt", "explode")
    deadline = time.monotonic() + 10
    while engine.worker.failures == 0:
        assert time.monotonic() < deadline, "the failing encode never ran"
        time.sleep(0.01)
    outs = _stream(client, 5, first_id=50_000)
    assert len(outs) == 5 and all(h["prompt"] == before for h, _ in outs)
    feedback.expect("/error", timeout=5, match=lambda p: "simulated encoder failure" in p[0])
    osc.send("/prompt", before)


def test_a_server_failure_is_forwarded_during_a_flood_of_bad_inputs(live):
    """What used to make test_encoder_failure_is_reported... flaky: the 1000 malformed frames of an
    earlier test had used up the second's allowance when the encoder failure came."""
    from node_server.server.app import ERRORS_PER_SECOND

    app = live[0]
    forwarded: list[str] = []
    app.add_error_hook(forwarded.append)
    for k in range(ERRORS_PER_SECOND + 5):
        app.report_error(f"bad frame {k}")
    app.report_server_error("conditioning encode failed: MemoryError")
    assert "conditioning encode failed: MemoryError" in forwarded
    assert len([r for r in forwarded if r.startswith("bad frame")]) <= ERRORS_PER_SECOND * 2  # limited


def test_bad_osc_value_is_an_error_and_counted(live):
    app, _, osc, *_ = live
    before = app.status().errors
    osc.send("/steps", 9)
    reason = osc.expect("/error")[0]
    assert reason.startswith("/steps")
    assert app.current_params()["steps"] == 1
    deadline = time.monotonic() + 2
    while app.status().errors == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.status().errors == before + 1


def test_preset_saves_and_recalls_over_osc(live):
    app, _, osc, _, _, presets = live
    osc.send("/prompt", "saved look")
    osc.send("/seed", 77)
    osc.send("/preset/save", "mine")
    deadline = time.monotonic() + 3
    while not (presets / "mine.toml").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 'prompt = "saved look"' in (presets / "mine.toml").read_text()
    osc.send("/prompt", "something else")
    osc.send("/seed", 1)
    osc.send("/preset", "mine")
    osc.send("/ping")
    osc.expect("/pong")  # messages are handled in order: the recall is done
    params = app.current_params()
    assert (params["prompt"], params["seed"]) == ("saved look", 77)
    osc.send("/preset", "no-such-preset")
    assert "no preset named" in osc.expect("/error")[0]


def test_pause_drops_frames_and_resume_serves_again(live):
    app, client, osc, *_ = live
    osc.send("/pause", True)
    deadline = time.monotonic() + 3
    while app.status().state != "paused" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.status().state == "paused"
    while client.recv(timeout=0.2) is not None:
        pass
    dropped = app.status().dropped
    for i in range(5):
        assert client.send(_frame(i), id=30000 + i) == 30000 + i
        time.sleep(0.01)
    assert client.recv(timeout=0.5) is None  # nothing is rendered while paused
    assert app.status().dropped - dropped == 5  # and the frames count as dropped
    osc.send("/pause", False)
    osc.send("/ping")
    osc.expect("/pong")
    assert app.status().state == "running"
    assert [h["id"] for h, _ in _stream(client, 3, first_id=30100)] == [30100, 30101, 30102]


# -- the real command in a subprocess ----------------------------------------------------------


def _start_serve(*extra: str) -> tuple[subprocess.Popen, list[str]]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "node_server", "serve", "--size", str(SIZE), "--device", "cpu",
           "--zmq-in", "tcp://127.0.0.1:0", "--zmq-out", "tcp://127.0.0.1:0", "--osc-port", "0", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, []


def _read_until(proc: subprocess.Popen, lines: list[str], needle: str, timeout: float = 90.0) -> str:
    """Read stdout lines until one contains `needle` (the banner comes on stdout)."""
    result: list[str] = []

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                result.append(line)
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        proc.kill()
        raise AssertionError(f"serve never printed {needle!r}; stdout: {''.join(lines)}; stderr: {proc.stderr.read()}")
    return "".join(lines)


def _stop(proc: subprocess.Popen, sig: int) -> float:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return time.monotonic() - t0


def test_serve_subprocess_streams_and_stops_on_sigint(tmp_path):
    query_port = _free_tcp_port()
    proc, lines = _start_serve("--oscquery-port", str(query_port), "--presets-dir", str(tmp_path),
                               "--preset", "neon")
    try:
        text = _read_until(proc, lines, "running")
        zin = re.search(r"frames in\s+(\S+)", text).group(1)
        zout = re.search(r"frames out\s+(\S+)", text).group(1)
        osc_port = int(re.search(r"OSC in\s+udp://127\.0\.0\.1:(\d+)", text).group(1))
        assert f"http://127.0.0.1:{query_port}/" in text
        with ZmqClient(zin, zout) as client:
            assert client.wait_connected(5.0)
            outs = _stream(client, 60)
        assert [h["id"] for h, _ in outs] == list(range(60))
        neon = tomllib.loads((ROOT / "presets" / "neon.toml").read_text())["prompt"]
        assert outs[-1][0]["prompt"] == neon  # --preset was recalled at start-up
        osc = Osc(osc_port)
        try:
            osc.send("/ping")
            osc.expect("/pong")
        finally:
            osc.close()
        elapsed = _stop(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert elapsed < 2.0
    # every socket was closed: the same addresses can be bound again at once
    ctx = zmq.Context.instance()
    for addr in (zin, zout):
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(addr)
        s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", osc_port))
    u.close()


def test_serve_subprocess_stops_on_sigterm_while_loading():
    proc, lines = _start_serve("--oscquery-port", "0")
    try:
        _read_until(proc, lines, "frames out")  # the banner: bound, about to load
        elapsed = _stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert elapsed < 2.0

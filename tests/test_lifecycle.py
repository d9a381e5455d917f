"""Signals at every phase of `serve` (issue 16, defect 3): status 0 within 2 s, ports free after.

On main (d041857) a SIGINT or SIGTERM during the model load or the warm-up aborted the process
(`terminate called without an active exception`, status 134), and two quick SIGINTs while frames
flowed did the same; a SIGINT during start-up ended with status 130. The subprocess tests run the
real `python -m node_server serve`; the in-process ones pin the lifecycle's rules with a fake app.
"""

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
import zmq

from bridges.zmq_client import ZmqClient
from node_server.errors import NodeServerError
from node_server.server.lifecycle import Lifecycle

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 2.0  # the promise: Ctrl-C at any moment ends the process within 2 s


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`python -m node_server serve` in a subprocess, its output collected by a reader thread."""

    def __init__(self, model: str, *extra: str):
        self.zmq_in, self.zmq_out = _free_port(), _free_port()
        self.osc, self.query = _free_port(socket.SOCK_DGRAM), _free_port()
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "node_server", "serve", "--model", model, "--device", "cpu",
               "--zmq-in", f"tcp://127.0.0.1:{self.zmq_in}", "--zmq-out", f"tcp://127.0.0.1:{self.zmq_out}",
               "--osc-port", str(self.osc), "--oscquery-port", str(self.query), *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while needle not in "".join(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.proc.kill()
                    raise AssertionError(f"serve never printed {needle!r}:\n{''.join(self.lines)}")
                self._cond.wait(min(left, 0.1))

    def wait_signals_taken(self, timeout: float = 30.0) -> None:
        """Until the process catches SIGTERM (Linux: /proc/PID/status SigCgt): the lifecycle's
        handlers are in, and the start-up (imports, config, binding) is under way."""
        deadline = time.monotonic() + timeout
        bit = 1 << (signal.SIGTERM - 1)
        while time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{self.proc.pid}/status").read_text()
            except OSError:
                break
            caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
            if caught & bit:
                return
            time.sleep(0.002)
        raise AssertionError("serve never installed its signal handlers")

    def stop(self, *signals: int, gap: float = 0.05) -> float:
        """Send the signals; returns the seconds from the first one to the process's end."""
        t0 = time.monotonic()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"serve still running 15 s after {signals}:\n{self.text}")
        return time.monotonic() - t0

    def assert_ports_free(self) -> None:
        """Nothing listens any more: a new server could bind every address at once (with
        SO_REUSEADDR, as ZeroMQ and HTTP servers bind, so closed connections do not count)."""
        for port in (self.zmq_in, self.zmq_out, self.query):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", self.osc))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _check_clean_exit(serve: Serve, elapsed: float) -> None:
    out = serve.text
    assert serve.proc.returncode == 0, out
    assert elapsed < LIMIT_S, f"took {elapsed:.2f} s\n{out}"
    assert "Traceback" not in out and "terminate called" not in out, out
    serve.assert_ports_free()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the start-up phase")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up(sig):
    serve = Serve("demo")
    try:
        serve.wait_signals_taken()
        elapsed = serve.stop(sig)
    finally:
        serve.kill()
    _check_clean_exit(serve, elapsed)
    assert "during start-up" in serve.text or "stopped" in serve.text


@pytest.mark.parametrize("sig, wait_for, delay", [
    (signal.SIGINT, "loading model", 0.3),  # inside from_pretrained / the weights' load
    (signal.SIGTERM, "loading model", 0.3),
    (signal.SIGINT, "warming up", 0.0),  # inside the first conditioning and engine step
    (signal.SIGTERM, "warming up", 0.0),
], ids=["sigint-load", "sigterm-load", "sigint-warmup", "sigterm-warmup"])
def test_signal_during_load_or_warm_up(sig, wait_for, delay):
    serve = Serve("demo")
    try:
        serve.wait_for(wait_for)
        time.sleep(delay)
        elapsed = serve.stop(sig)
    finally:
        serve.kill()
    _check_clean_exit(serve, elapsed)


def _serve_with_frames_flowing(model: str, *extra: str) -> tuple[Serve, ZmqClient, threading.Event]:
    serve = Serve(model, *extra)
    serve.wait_for("serve: running")
    client = ZmqClient(f"tcp://127.0.0.1:{serve.zmq_in}", f"tcp://127.0.0.1:{serve.zmq_out}")
    assert client.wait_connected(5.0)
    stop = threading.Event()
    got = []

    def pump():
        i = 0
        while not stop.is_set():
            try:
                client.send(np.full((64, 64, 3), i % 256, np.uint8), id=i)
                if client.recv(timeout=0.0) is not None:
                    got.append(i)
            except zmq.ZMQError:
                return
            i += 1
            time.sleep(1 / 30)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got, "no frame came back before the signal"
    return serve, client, stop


@pytest.mark.parametrize("model, signals", [
    ("demo", (signal.SIGINT,)),
    ("demo", (signal.SIGINT, signal.SIGINT)),  # two quick Ctrl-Cs
    ("synthetic:tiny", (signal.SIGTERM,)),
    ("synthetic:tiny", (signal.SIGTERM, signal.SIGINT)),
], ids=["sigint", "double-sigint", "sigterm", "sigterm-then-sigint"])
def test_signal_while_frames_flow(model, signals):
    extra = ("--size", "64") if model.startswith("synthetic") else ()
    serve, client, stop = _serve_with_frames_flowing(model, *extra)
    try:
        elapsed = serve.stop(*signals)
    finally:
        stop.set()
        time.sleep(0.05)
        client.close()
        serve.kill()
    _check_clean_exit(serve, elapsed)


def test_sigint_right_after_the_banner_with_the_tiny_model():
    serve = Serve("synthetic:tiny", "--size", "64")
    try:
        serve.wait_for("frames out")
        elapsed = serve.stop(signal.SIGINT)
    finally:
        serve.kill()
    _check_clean_exit(serve, elapsed)


# -- the rules, in process, with a fake app ----------------------------------------------------


class Exited(BaseException):
    """What the fast exit raises in these tests instead of ending pytest."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class FakeApp:
    def __init__(self, load=lambda: None):
        self._load = load
        self.events: list[str] = []

    def open(self):
        self.events.append("open")

    def load(self):
        self.events.append("load")
        self._load()

    def close(self):
        self.events.append("close")


def _signal_later(delay: float, sig: int = signal.SIGINT, times: int = 1) -> None:
    def send():
        for _ in range(times):
            time.sleep(delay)
            os.kill(os.getpid(), sig)

    threading.Thread(target=send, daemon=True).start()


def _exits(life: Lifecycle) -> list[int]:
    codes: list[int] = []

    def exit_now(code: int) -> None:
        codes.append(code)
        raise Exited(code)

    life.exit_now = exit_now
    return codes


def test_a_load_in_native_code_is_not_waited_for():
    """A load that will not notice the stop (as C++ would not): the fast exit, at once."""
    release = threading.Event()
    app = FakeApp(load=lambda: release.wait(30))
    err = io.StringIO()
    life = Lifecycle(owns_process=True, err=err)
    codes = _exits(life)
    _signal_later(0.2)
    t0 = time.monotonic()
    try:
        with pytest.raises(Exited):
            life.run(lambda: app)
    finally:
        life.restore()
        release.set()
    assert codes == [0] and time.monotonic() - t0 < 0.2 + 1.0
    assert app.events == ["open", "load", "close"]
    assert "stopped (not waiting for: model-load)" in err.getvalue()


def test_a_step_that_ends_soon_is_waited_for():
    """A thread that stops at its next check (a frame-loop step) gets until the deadline."""
    stop = threading.Event()
    worker = []

    class App(FakeApp):
        def open(self):
            super().open()
            t = threading.Thread(target=lambda: (stop.wait(30), time.sleep(0.3)), name="frame-loop")
            t.start()
            worker.append(t)

        def close(self):
            super().close()
            stop.set()

    err = io.StringIO()
    life = Lifecycle(err=err)
    _signal_later(0.2)
    assert life.run(App) == 0
    assert not worker[0].is_alive() and life.left_running == []
    assert err.getvalue().splitlines()[-1] == "node-server serve: stopped"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_second_signal_leaves_at_once():
    release = threading.Event()

    class SlowClose(FakeApp):
        def close(self):
            super().close()
            release.wait(30)  # a close that would take long

    life = Lifecycle(owns_process=True, err=io.StringIO())
    codes = _exits(life)
    _signal_later(0.2, times=2)
    t0 = time.monotonic()
    try:
        with pytest.raises(Exited):
            life.run(SlowClose)
    finally:
        life.restore()
        release.set()
    assert codes == [0] and time.monotonic() - t0 < 1.0
    assert "again: not waiting" in life.err.getvalue()


def test_a_signal_during_start_up_leaves_at_once():
    life = Lifecycle(owns_process=True, err=io.StringIO())
    codes = _exits(life)

    def slow_make():  # as a slow import or config read on the main thread
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return FakeApp()

    t0 = time.monotonic()
    try:
        with pytest.raises(Exited):
            life.run(slow_make)
    finally:
        life.restore()
    assert codes == [0] and time.monotonic() - t0 < 1.0
    assert "SIGTERM during start-up" in life.err.getvalue()


def test_not_owning_the_process_a_signal_is_always_an_orderly_stop():
    app = FakeApp()
    life = Lifecycle(err=io.StringIO())
    codes = _exits(life)

    def make():
        os.kill(os.getpid(), signal.SIGINT)  # during start-up, twice
        os.kill(os.getpid(), signal.SIGINT)
        return app

    assert life.run(make) == 0
    assert codes == [] and app.events == ["open", "close"]  # no load was started


def test_a_failed_load_is_raised_after_the_stop():
    def fail():
        raise NodeServerError("model folder x: no unet")

    app = FakeApp(load=fail)
    life = Lifecycle(err=io.StringIO())
    with pytest.raises(NodeServerError, match="no unet"):
        life.run(lambda: app)
    assert app.events == ["open", "load", "close"]


def test_an_address_in_use_is_one_line():
    class Busy(FakeApp):
        def open(self):
            raise OSError("cannot bind ZeroMQ address tcp://127.0.0.1:5555: Address already in use")

    with pytest.raises(NodeServerError, match="Address already in use"):
        Lifecycle(err=io.StringIO()).run(Busy)

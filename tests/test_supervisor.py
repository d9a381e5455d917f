"""The I/O thread supervisor, and the ZeroMQ receive thread under it (issue 16, defect 2)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from bridges.zmq_protocol import encode_frame
from bridges.zmq_server import ZmqFrameServer
from node_server.server.supervisor import ENDED, RESTARTING, RUNNING, Supervisor


def _wait(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class Reports(list):
    def __call__(self, reason: str) -> None:
        self.append(reason)


def test_a_body_that_raises_is_reported_and_run_again():
    reports = Reports()
    sup = Supervisor(reports, first_backoff=0.01, max_backoff=0.04)
    runs = []
    release = threading.Event()

    def body():
        runs.append(1)
        if len(runs) <= 3:
            raise RuntimeError(f"boom {len(runs)}")
        release.wait(5)  # the fourth run stays up

    thread = sup.spawn("worker", body)
    assert _wait(lambda: len(runs) == 4)
    assert sup.states() == {"worker": RUNNING} and sup.down() == []
    assert sup.restarts == 3
    assert [r.split(";")[0] for r in reports] == [
        f"thread worker stopped unexpectedly (RuntimeError: boom {i})" for i in (1, 2, 3)]
    assert "restarting it in 0.01 s" in reports[0] and "0.04 s" in reports[2]  # 0.01, 0.02, 0.04
    sup.stop()
    release.set()
    thread.join(2)
    assert not thread.is_alive() and sup.states() == {"worker": ENDED}


def test_a_body_that_returns_while_not_stopping_counts_as_dead():
    reports = Reports()
    sup = Supervisor(reports, first_backoff=0.2)
    runs = []
    sup.spawn("quitter", lambda: runs.append(1))
    assert _wait(lambda: sup.states()["quitter"] == RESTARTING)
    assert sup.down() == ["quitter"]  # what /status/threads_down counts
    assert "thread quitter stopped unexpectedly (returned)" in reports[0]
    assert _wait(lambda: len(runs) >= 2)  # run again after the backoff
    sup.stop()


def test_stop_ends_threads_without_a_report_or_a_restart():
    reports = Reports()
    sup = Supervisor(reports, first_backoff=0.01)
    stop = threading.Event()
    thread = sup.spawn("loop", lambda: stop.wait(5))
    sup.stop()
    stop.set()
    thread.join(2)
    assert reports == [] and sup.restarts == 0
    assert sup.states() == {"loop": ENDED} and sup.down() == []


def test_stop_interrupts_a_backoff():
    sup = Supervisor(Reports(), first_backoff=30.0)
    thread = sup.spawn("x", lambda: None)
    assert _wait(lambda: sup.states()["x"] == RESTARTING)
    t0 = time.monotonic()
    sup.stop()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0


def test_a_failing_reporter_does_not_stop_the_restart():
    def reporter(reason):
        raise ValueError("reporter broke")

    sup = Supervisor(reporter, first_backoff=0.01)
    runs = []

    def body():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("once")
        time.sleep(5)

    sup.spawn("w", body)
    assert _wait(lambda: len(runs) == 2)
    sup.stop()


def test_two_running_threads_cannot_share_a_name():
    sup = Supervisor(Reports())
    stop = threading.Event()
    sup.spawn("same", lambda: stop.wait(5))
    with pytest.raises(ValueError, match="already running"):
        sup.spawn("same", lambda: None)
    sup.stop()
    stop.set()


# -- the ZeroMQ receive thread -----------------------------------------------------------------


@pytest.fixture
def receiver():
    """A ZmqFrameServer on ephemeral ports, started under a supervisor; yields (server, push
    socket, frames received, input errors, server failures, supervisor)."""
    frames, errors, failures = [], Reports(), Reports()
    sup = Supervisor(failures, first_backoff=0.05)
    server = ZmqFrameServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0",
                            lambda h, px, recv, wall: frames.append(h.id), errors, on_failure=failures)
    server.start(spawn=sup.spawn)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(server.in_endpoint)
    try:
        yield server, push, frames, errors, failures, sup
    finally:
        sup.stop()
        push.close(0)
        ctx.term()
        server.close()


def _good(i: int) -> list:
    return encode_frame(np.zeros((2, 3, 3), np.uint8), id=i)


ISSUE_HEADERS = [
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    json.dumps({"v": 1, "id": 1, "w": 3, "h": 2, "c": 3, "dtype": "uint8", "t": 10**400}).encode(),
]


def test_the_issues_headers_no_longer_stop_frame_input(receiver):
    """Each header of issue 16 used to end the receive thread; every later frame was lost."""
    server, push, frames, errors, failures, sup = receiver
    for i, head in enumerate(ISSUE_HEADERS):
        push.send_multipart([head, bytes(18)])
        push.send_multipart(_good(100 + i))
    assert _wait(lambda: len(frames) == 3)
    assert frames == [100, 101, 102]
    assert len(errors) == 3 and "nests 5000 levels deep" in errors[0] and "'t' must be a finite" in errors[2]
    assert failures == [] and sup.down() == [] and sup.restarts == 0
    assert (server.received, server.rejected) == (6, 3)


def test_a_bug_on_the_receive_path_costs_one_message(receiver, monkeypatch):
    import bridges.zmq_server as zs

    server, push, frames, errors, failures, sup = receiver
    real = zs.decode_message
    monkeypatch.setattr(zs, "decode_message", lambda parts: (_ for _ in ()).throw(KeyError("bug")))
    push.send_multipart(_good(1))
    assert _wait(lambda: len(failures) == 1)
    assert "frame rejected: checking it failed (KeyError" in failures[0]
    monkeypatch.setattr(zs, "decode_message", real)
    push.send_multipart(_good(2))
    assert _wait(lambda: frames == [2])
    assert sup.restarts == 0


def test_a_receive_loop_that_dies_anyway_is_restarted(receiver, monkeypatch):
    """Beyond what the loop catches (here a BaseException from the socket): the supervisor."""
    server, push, frames, errors, failures, sup = receiver
    real = server._drain
    calls = []

    def dying_drain():
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("the loop itself ended")
        real()

    monkeypatch.setattr(server, "_drain", dying_drain)
    push.send_multipart(_good(1))
    assert _wait(lambda: sup.restarts == 1)
    assert "thread zmq-recv stopped unexpectedly (SystemExit: the loop itself ended)" in failures[0]
    push.send_multipart(_good(2))
    assert _wait(lambda: 2 in frames)
    assert _wait(lambda: sup.down() == [])


# -- the OSC receive thread ------------------------------------------------------------------


class _LoopKiller(BaseException):
    """Not an `Exception`: gets past the OSC loop's own catch-all, as a bug there could."""


def test_the_osc_loop_is_supervised_restarted_and_reported(tmp_path, monkeypatch):
    """A body that dies is run again by the server's supervisor (on the same named thread), the
    death is a server error (`/error` hooks, /status/threads_down while it is down) and OSC
    applies messages again afterwards; close still returns within about one poll interval."""
    import io

    from pythonosc import udp_client

    from fakes import TransformEngine
    from node_server.server.app import ServerApp
    from node_server.server.config import ServeConfig

    class Same(TransformEngine):
        def transform(self, frame):
            return frame

    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", osc_port=0, oscquery_port=0,
                      presets_dir=str(tmp_path), size=32, device="cpu")
    app = ServerApp(cfg, engine_factory=lambda a, p: Same(), out=io.StringIO(), progress=False)
    app.open()
    app.load()
    seen_while_down = []

    def on_error(reason: str) -> None:  # called by the supervisor between the death and the restart
        if "osc-control" in reason:
            seen_while_down.append((reason, app.threads().get("osc-control"), app.status().threads_down))

    app.add_error_hook(on_error)
    control = app.control
    try:
        assert app.threads()["osc-control"] == RUNNING and app.status().threads_down == 0
        thread = control._thread
        real = control._handle_datagram
        kills = []

        def dying(*args):
            if not kills:
                kills.append(1)
                raise _LoopKiller("the OSC loop itself ended")
            real(*args)

        monkeypatch.setattr(control, "_handle_datagram", dying)
        client = udp_client.SimpleUDPClient("127.0.0.1", control.port)
        client.send_message("/prompt", "lost with the loop")
        assert _wait(lambda: app.supervisor.restarts == 1)
        assert len(seen_while_down) == 1
        reason, state, down = seen_while_down[0]
        assert reason.startswith("thread osc-control stopped unexpectedly (_LoopKiller: the OSC loop itself ended)")
        assert (state, down) == (RESTARTING, 1)
        assert _wait(lambda: app.threads()["osc-control"] == RUNNING and app.status().threads_down == 0)
        assert app.current_params()["prompt"] == ""  # the datagram that met the bug was not applied
        client.send_message("/prompt", "after the restart")
        assert _wait(lambda: app.current_params()["prompt"] == "after the restart")
        assert control._thread is thread and thread.is_alive()  # the same supervised thread
        assert app.status().restarts == 1
    finally:
        t0 = time.monotonic()
        app.close()
        closed_in = time.monotonic() - t0
    assert not control.serving and app.threads()["osc-control"] == ENDED
    assert closed_in < 1.0, closed_in  # one poll interval (0.05 s) in practice; generous under load

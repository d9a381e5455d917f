"""Issue 16's OSC defects, over real UDP sockets on 127.0.0.1 (and the real command for defect 1).

1: a bundle with a negative element size stopped OSC for good and hung shutdown.
5: rejected datagrams were answered with longer `/error`s (amplification) and flooded the log.
6: a float without data bytes, an unknown type tag, a bundle element that is neither message
   nor bundle were applied or dropped silently; bundle contents followed their time tags.
8: no source allow-list; the feedback sender was bound to the wildcard address.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fakes import FakeTarget
from node_server.control import OscControl
from node_server.control.feedback import Feedback
from node_server.control.osc import LOG_BURST, MAX_SOURCES, REPLY_BURST, parse_allow
from node_server.control.presets import BUILTIN_DIR, PresetStore
from node_server.errors import NodeServerError
from test_osc import msg, recv_until, send, udp_socket, verify, wait_for

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "fuzz" / "osc"
POISON = ["bundle-element-size-negative.bin", "bundle-nested-element-size-negative.bin"]


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


class Clock:
    """A clock the test moves by hand (token buckets refill only when it does)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def target(tmp_path):
    return FakeTarget(PresetStore(BUILTIN_DIR, tmp_path / "user"))


@pytest.fixture
def client():
    s = udp_socket()
    yield s
    s.close()


def close_within(ctl: OscControl, limit: float) -> float:
    """Close on a helper thread so that a close that never returns fails instead of hanging."""
    t0 = time.monotonic()
    closer = threading.Thread(target=ctl.close, daemon=True)
    closer.start()
    closer.join(limit + 1.0)
    elapsed = time.monotonic() - t0
    assert not closer.is_alive(), "close() did not return"
    assert elapsed < limit, f"close() took {elapsed:.2f} s"
    return elapsed


def replies_until_pong(sock: socket.socket, prefix: str = "") -> list[bytes]:
    """Every datagram `sock` receives up to the `/pong` (not included)."""
    out = []
    deadline = time.monotonic() + 3.0
    pong = prefix.encode() + b"/pong\x00"
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data, _ = sock.recvfrom(65535)
        if data.startswith(pong):
            return out
        out.append(data)
    pytest.fail("no /pong")


# -- defect 1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POISON)
def test_poison_bundle_is_answered_and_control_goes_on(target, client, name):
    ctl = OscControl(target, port=0).start()
    try:
        verify(client, ctl)
        send(client, ctl, corpus(name))
        (text,) = recv_until(client, "/error")
        assert text.startswith("packet: not a valid OSC message or bundle") and "size -4" in text
        send(client, ctl, msg("/prompt", "still in control"))
        wait_for(lambda: target.params["prompt"] == "still in control", timeout=1.0)
        assert ctl.errors == 1 and ctl.applied == 2 and ctl.serving
    finally:
        close_within(ctl, 1.0)
    assert not ctl.serving


def test_close_never_waits_for_a_handler_stuck_in_the_target(target, client):
    release = threading.Event()
    entered = threading.Event()

    def stuck(**_):
        entered.set()
        release.wait(30)

    target.set_params = stuck
    ctl = OscControl(target, port=0).start()
    try:
        send(client, ctl, msg("/seed", 1))
        assert entered.wait(2.0)
        close_within(ctl, 1.5)
    finally:
        release.set()


def _serve(*extra: str) -> subprocess.Popen:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "node_server", "serve", "--size", "64", "--device", "cpu", "--oscquery-port", "0",
           "--zmq-in", "tcp://127.0.0.1:0", "--zmq-out", "tcp://127.0.0.1:0", "--osc-port", "0", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 90.0) -> re.Match:
    found: list[re.Match] = []
    seen: list[str] = []

    def reader():
        for line in proc.stdout:
            seen.append(line)
            m = re.search(pattern, "".join(seen))
            if m:
                found.append(m)
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not found:
        proc.kill()
        pytest.fail(f"serve never printed {pattern!r}: {''.join(seen)} {proc.stderr.read()}")
    return found[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_on_a_signal_after_the_poison_bundle(sig):
    proc = _serve("--osc-allow", "127.0.0.1")
    try:
        port = int(_wait_for_line(proc, r"OSC in\s+udp://127\.0\.0\.1:(\d+) .*only from 127\.0\.0\.1").group(1))
        _wait_for_line(proc, r"running")
        s = udp_socket()
        try:
            for name in POISON:
                s.sendto(corpus(name), ("127.0.0.1", port))
            s.sendto(msg("/ping"), ("127.0.0.1", port))
            recv_until(s, "/pong")  # the OSC thread got past both and still answers
        finally:
            s.close()
        stopped: list[float] = []

        def watch_stderr():
            for line in proc.stderr:
                if "serve: stopped" in line:
                    stopped.append(time.monotonic())

        watcher = threading.Thread(target=watch_stderr, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=15)  # the interpreter's own exit (torch teardown) is not OSC's to bound
        watcher.join(2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert stopped and stopped[0] - t0 < 1.0  # every part closed, OSC included, within a second


# -- defect 5 ---------------------------------------------------------------------------------

UNANSWERED_SIZES = [
    corpus("four-zero-bytes.bin"),
    corpus("bundle-element-size-negative.bin"),
    corpus("float-tag-without-data-blend-2-weight.bin"),
    msg("/x", 1),
    msg("/steps", 9),
    msg("/s*"),
    b"/" + b"\xff" * 63,
]


@pytest.mark.parametrize("dgram", UNANSWERED_SIZES, ids=lambda d: f"{len(d)}B")
def test_a_new_source_never_gets_more_bytes_than_it_sent(target, dgram):
    feedback_rx = udp_socket()
    ctl = OscControl(target, port=0, feedback=feedback_rx.getsockname()).start()
    fresh = udp_socket()  # a source that has not spoken valid OSC yet
    try:
        send(fresh, ctl, dgram)
        send(fresh, ctl, msg("/ping"))  # answered after the datagram's own answers
        replies = replies_until_pong(fresh)
        assert sum(len(r) for r in replies) <= len(dgram)
        (full,) = recv_until(feedback_rx, "/error")  # the feedback target gets the whole text
        for r in replies:  # a cut answer is still the start of the real one
            text = r[r.index(b",s\x00\x00") + 4:].rstrip(b"\x00").decode()
            assert full.startswith(text)
        assert ctl.errors == 1
    finally:
        fresh.close()
        ctl.close()
        feedback_rx.close()


def test_answers_to_one_source_are_rate_limited_and_everything_is_counted(target, client):
    clock = Clock()  # frozen: the buckets never refill during the test
    counted: list[str] = []
    ctl = OscControl(target, port=0, clock=clock, on_error=counted.append).start()
    other = udp_socket()
    try:
        verify(client, ctl)  # one answer used
        for _ in range(300):
            send(client, ctl, msg("/steps", 9))
        send(other, ctl, msg("/ping"))  # another source is answered: its own allowance
        recv_until(other, "/pong")
        wait_for(lambda: ctl.packets == 302, timeout=5.0)
        client.settimeout(0.3)
        answers = 0
        try:
            while True:
                client.recvfrom(65535)
                answers += 1
        except socket.timeout:
            pass
        assert answers == REPLY_BURST - 1
        assert ctl.errors == 300 and len(counted) == 300  # every rejection counted (/status/errors)
        assert ctl.stats()["replies_dropped"] == 300 - answers
        clock.now += 10.0  # the allowance comes back
        verify(client, ctl)
    finally:
        other.close()
        ctl.close()


def test_log_lines_per_source_are_rate_limited(target, client, caplog):
    clock = Clock()
    ctl = OscControl(target, port=0, clock=clock).start()
    try:
        with caplog.at_level(logging.DEBUG, logger="node_server.osc"):
            for _ in range(50):
                send(client, ctl, msg("/steps", 9))
            wait_for(lambda: ctl.packets == 50)
            lines = [r for r in caplog.records if r.name == "node_server.osc"]
            assert len(lines) == LOG_BURST
            assert ctl.stats()["logs_dropped"] == 50 - LOG_BURST
            clock.now += 10.0
            send(client, ctl, msg("/steps", 9))
            wait_for(lambda: ctl.packets == 51)
        last = [r for r in caplog.records if r.name == "node_server.osc"][-1].getMessage()
        assert f"({50 - int(LOG_BURST)} earlier lines about this source not logged)" in last
    finally:
        ctl.close()


def test_a_65000_byte_datagram_of_unknown_type_tags_logs_almost_nothing(target, client, caplog):
    ctl = OscControl(target, port=0).start()
    try:
        with caplog.at_level(logging.DEBUG):  # every logger, python-osc's included
            verify(client, ctl)
            send(client, ctl, corpus("unknown-type-tags-65000-bytes.bin"))
            assert "unknown type tag 'x'" in recv_until(client, "/error")[0]
        assert sum(len(r.getMessage()) for r in caplog.records) < 2000
        assert target.params["prompt"] == ""
    finally:
        ctl.close()


def test_the_per_source_table_is_bounded(target):
    ctl = OscControl(target, port=0)  # not started: datagrams are handed in directly
    try:
        sock = ctl._socks[0]
        for i in range(MAX_SOURCES + 500):
            ctl._handle_datagram(b"\x00\x00\x00\x00", (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 9), sock)
        stats = ctl.stats()
        assert stats["sources"] == MAX_SOURCES
        assert stats["packets"] == stats["errors"] == MAX_SOURCES + 500
        assert stats["replies_dropped"] == MAX_SOURCES + 500  # 4 bytes in: no `/error` fits
    finally:
        ctl.close()


# -- defect 6 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,param",
    [("float-tag-without-data-blend-2-weight.bin", "blend_2_weight"),
     ("float-tag-without-data-lllite-strength.bin", "lllite_strength")],
)
def test_a_float_without_data_bytes_is_an_error_not_zero(target, client, name, param):
    ctl = OscControl(target, port=0).start()
    try:
        before = target.params[param]
        verify(client, ctl)
        send(client, ctl, corpus(name))
        assert "needs 4 bytes, 0 left" in recv_until(client, "/error")[0]
        assert target.params[param] == before and target.calls == []
    finally:
        ctl.close()


def test_an_unknown_type_tag_rejects_the_whole_message(target, client):
    ctl = OscControl(target, port=0).start()
    try:
        verify(client, ctl)
        send(client, ctl, corpus("unknown-type-tag-before-valid-int.bin"))
        assert recv_until(client, "/error")[0].endswith("/seed: unknown type tag 'x'")
        assert target.params["seed"] == 0 and target.calls == []
    finally:
        ctl.close()


def test_a_bundle_element_that_is_neither_message_nor_bundle_rejects_the_bundle(target, client):
    ctl = OscControl(target, port=0).start()
    try:
        verify(client, ctl)
        send(client, ctl, corpus("bundle-element-neither-message-nor-bundle.bin"))
        assert "is neither an OSC message" in recv_until(client, "/error")[0]
        assert target.params["seed"] == 0 and target.calls == []  # its valid /seed 5 included
    finally:
        ctl.close()


def test_bundle_contents_apply_in_datagram_order_not_time_tag_order(target, client):
    ctl = OscControl(target, port=0).start()
    try:
        send(client, ctl, corpus("bundle-time-tags-out-of-datagram-order.bin"))
        wait_for(lambda: ctl.applied == 2)
        assert [c[1]["prompt"] for c in target.calls] == ["first", "second"]
        assert target.params["prompt"] == "second"
    finally:
        ctl.close()


# -- defect 8 ---------------------------------------------------------------------------------


def _socket_at(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(2.0)
    return s


def test_the_allow_list_refuses_other_sources_silently(target, caplog):
    ctl = OscControl(target, port=0, allow="127.0.0.2").start()
    outsider, insider = _socket_at("127.0.0.1"), _socket_at("127.0.0.2")
    try:
        with caplog.at_level(logging.WARNING, logger="node_server.osc"):
            for dgram in (msg("/seed", 5), msg("/ping"), b"junk"):
                outsider.sendto(dgram, ("127.0.0.1", ctl.port))
            insider.sendto(msg("/ping"), ("127.0.0.1", ctl.port))
            assert recv_until(insider, "/pong") == []
            roundtrip_ok = ctl.stats()
        outsider.settimeout(0.3)
        with pytest.raises(socket.timeout):
            outsider.recvfrom(1024)  # nothing at all is answered
        assert target.params["seed"] == 0
        assert roundtrip_ok["refused"] == 3 and roundtrip_ok["errors"] == 0 and roundtrip_ok["packets"] == 4
        assert "OSC from 127.0.0.1 refused: not in --osc-allow" in caplog.text
    finally:
        outsider.close()
        insider.close()
        ctl.close()


def test_the_allow_list_takes_networks(target):
    ctl = OscControl(target, port=0, allow=["10.0.0.0/8", "127.0.0.0/30"]).start()
    s = _socket_at("127.0.0.3")
    try:
        s.sendto(msg("/seed", 5), ("127.0.0.1", ctl.port))
        s.sendto(msg("/ping"), ("127.0.0.1", ctl.port))
        recv_until(s, "/pong")
        assert target.params["seed"] == 5 and ctl.refused == 0
    finally:
        s.close()
        ctl.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_the_allow_list_applies_to_the_ipv6_loopback_listener(target):
    ctl = OscControl(target, port=0, allow="127.0.0.1").start()
    s6 = _socket_at("::1")
    try:
        s6.sendto(msg("/seed", 5), ("::1", ctl.port))
        wait_for(lambda: ctl.refused == 1)
        assert target.params["seed"] == 0
    finally:
        s6.close()
        ctl.close()


@pytest.mark.parametrize(
    "value,reason",
    [("", "is empty"), ("localhost", "does not appear to be an IPv4 or IPv6"),
     ("192.168.1.5/24", "has host bits set"), (5, "expected addresses or networks")],
)
def test_a_bad_allow_list_is_one_clear_line(value, reason):
    with pytest.raises(NodeServerError, match=reason) as info:
        parse_allow(value)
    assert "\n" not in str(info.value)


def test_osc_allow_from_the_flag_and_the_config_file(tmp_path):
    import argparse

    from node_server.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    conf = tmp_path / "serve.toml"
    conf.write_text('model = "synthetic:tiny"\nsize = 64\nosc_allow = ["127.0.0.1", "192.168.1.0/24"]\n')
    assert serve.config_from_args(parser.parse_args(["--config", str(conf)])).osc_allow == "127.0.0.1,192.168.1.0/24"
    args = parser.parse_args(["--config", str(conf), "--osc-allow", "10.0.0.0/8"])
    assert serve.config_from_args(args).osc_allow == "10.0.0.0/8"
    conf.write_text('model = "synthetic:tiny"\nsize = 64\nosc-allow = "10.0.0.300"\n')
    with pytest.raises(NodeServerError, match=r"serve\.toml: osc_allow: .*10\.0\.0\.300"):
        serve.config_from_args(parser.parse_args(["--config", str(conf)]))


def test_the_feedback_sender_is_bound_to_the_routes_address_not_the_wildcard(target):
    rx = udp_socket()
    fb = Feedback(target, *rx.getsockname())
    try:
        assert fb.local_address is not None and fb.local_address[0] == "127.0.0.1"
        fb.send_error("hello")
        data, sender = rx.recvfrom(1024)
        assert sender == fb.local_address
    finally:
        fb.close()
        rx.close()


def test_an_unreachable_feedback_target_is_retried_and_never_fatal(target):
    fb = Feedback(target, "no-such-host.invalid", 9)
    try:
        assert fb.local_address is None and fb.send_failures == 1
        fb.send_error("x")
        assert fb.send_failures == 2
    finally:
        fb.close()

"""OSC control over real UDP sockets on 127.0.0.1 against a fake target."""

from __future__ import annotations

import random
import socket
import time

import pytest
from pythonosc import osc_bundle_builder, osc_message_builder, osc_packet
from pythonosc.osc_bundle import OscBundle

from fakes import INITIAL, FakeTarget
from node_server.control import OscControl
from node_server.control.docs import DOC_PATH, render_osc_markdown
from node_server.control.feedback import Feedback, parse_address
from node_server.control.inventory import CONTROLS, FEEDBACK, REPLIES, normalize_prefix
from node_server.control.presets import BUILTIN_DIR, PresetStore
from node_server.errors import NodeServerError

# -- helpers ---------------------------------------------------------------------------------


def msg(address: str, *args, tags: str | None = None) -> bytes:
    b = osc_message_builder.OscMessageBuilder(address=address)
    for i, a in enumerate(args):
        b.add_arg(a, tags[i] if tags else None)
    return b.build().dgram


def bundle(*dgrams_msgs, timestamp=osc_bundle_builder.IMMEDIATELY) -> bytes:
    bb = osc_bundle_builder.OscBundleBuilder(timestamp)
    for address, args in dgrams_msgs:
        mb = osc_message_builder.OscMessageBuilder(address=address)
        for a in args:
            mb.add_arg(a)
        bb.add_content(mb.build())
    return bb.build().dgram


def udp_socket(timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def recv_messages(sock: socket.socket) -> tuple[list[tuple[str, list]], bool]:
    """One datagram -> [(address, params)], is_bundle."""
    data, _ = sock.recvfrom(65535)
    packet = osc_packet.OscPacket(data)
    return [(m.message.address, list(m.message.params)) for m in packet.messages], OscBundle.dgram_is_bundle(data)


def recv_until(sock: socket.socket, address: str, timeout: float = 2.0) -> list:
    """Params of the first message at `address` (skips others), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages, _ = recv_messages(sock)
        except socket.timeout:
            break
        for addr, params in messages:
            if addr == address:
                return params
    pytest.fail(f"no {address} within {timeout} s")


def wait_for(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    assert predicate()


@pytest.fixture
def store(tmp_path):
    return PresetStore(BUILTIN_DIR, tmp_path / "user")


@pytest.fixture
def target(store):
    return FakeTarget(store)


@pytest.fixture
def client():
    s = udp_socket()
    yield s
    s.close()


@pytest.fixture
def ctl(target):
    c = OscControl(target, port=0).start()
    yield c
    c.close()


def send(sock, ctl, dgram: bytes) -> None:
    sock.sendto(dgram, ("127.0.0.1", ctl.port))


def verify(sock, ctl) -> None:
    """Have `sock` speak valid OSC (a ping): from then on its `/error` answers are not cut to size."""
    send(sock, ctl, msg(ctl.prefix + "/ping"))
    recv_until(sock, ctl.prefix + "/pong")


def roundtrip(sock, ctl, dgram: bytes) -> None:
    """Send, then ping on the same socket: replies come in order, so the message was handled."""
    send(sock, ctl, dgram)
    send(sock, ctl, msg(ctl.prefix + "/ping"))
    recv_until(sock, ctl.prefix + "/pong")


# -- applying --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address,args,expected",
    [
        ("/prompt", ["turn it into a watercolor"], ("set_params", {"prompt": "turn it into a watercolor"})),
        ("/strength", [0.25], ("set_params", {"strength": 0.25})),
        ("/strength", [1], ("set_params", {"strength": 1.0})),  # int for a float
        ("/seed", [1234], ("set_params", {"seed": 1234})),
        ("/seed", [3.0], ("set_params", {"seed": 3})),  # integral float for an int
        ("/seed", [2**31 - 1], ("set_params", {"seed": 2**31 - 1})),
        ("/steps", [4], ("set_params", {"steps": 4})),
        ("/refresh", ["every:10"], ("set_params", {"refresh": "every:10"})),
        ("/refresh", ["every-batch"], ("set_params", {"refresh": "every-batch"})),
        ("/pause", [True], ("set_paused", True)),
        ("/pause", [False], ("set_paused", False)),
        ("/pause", [1], ("set_paused", True)),
        ("/pause", [0.0], ("set_paused", False)),
        ("/preset", ["neon"], ("recall_preset", "neon")),
    ],
)
def test_each_address_applies(ctl, target, client, address, args, expected):
    roundtrip(client, ctl, msg(address, *args))
    assert expected in target.calls
    assert ctl.errors == 0
    if expected[0] == "set_params":
        (name, value), = expected[1].items()
        assert target.params[name] == value and type(target.params[name]) is type(value)


def test_preset_recall_and_save(ctl, target, client, store):
    roundtrip(client, ctl, msg("/preset", "oil-painting"))
    assert target.params["prompt"] == store.recall("oil-painting")["prompt"]
    roundtrip(client, ctl, msg("/seed", 99))
    roundtrip(client, ctl, msg("/preset/save", "my-look"))
    assert ctl.errors == 0
    assert (store.user_dir / "my-look.toml").is_file()
    assert store.recall("my-look")["seed"] == 99


def test_ping_answers_the_senders_socket(ctl, client):
    other = udp_socket(timeout=0.3)
    try:
        send(client, ctl, msg("/ping"))
        params, = [recv_until(client, "/pong")]
        assert params == []
        with pytest.raises(socket.timeout):
            other.recvfrom(1024)  # nobody else is answered
    finally:
        other.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_localhost_over_ipv6_is_served_too(ctl, target):
    """`oscsend localhost ...` resolves to ::1: the loopback default must answer there as well."""
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.bind(("::1", 0))
    s6.settimeout(2.0)
    try:
        s6.sendto(msg("/seed", 77), ("::1", ctl.port))
        s6.sendto(msg("/ping"), ("::1", ctl.port))
        assert recv_until(s6, "/pong") == []
        assert target.params["seed"] == 77
    finally:
        s6.close()


def test_bundles_apply_every_message_and_ignore_time_tags(ctl, target, client):
    future = time.time() + 30  # TouchDesigner stamps bundles; they must not be delayed
    t0 = time.monotonic()
    roundtrip(client, ctl, bundle(("/seed", [5]), ("/steps", [2]), ("/nope", [1]), timestamp=future))
    assert time.monotonic() - t0 < 1.0
    assert target.params["seed"] == 5 and target.params["steps"] == 2
    assert ctl.errors == 1  # only the unknown address


# -- rejecting -------------------------------------------------------------------------------

BAD = [
    (msg("/steps", 9), "/steps: must be 1..4, got 9"),
    (msg("/steps", 2.5), "/steps: must be a whole number, got 2.5"),
    (msg("/seed", 3.5), "/seed: must be a whole number"),
    (msg("/seed", -1), "/seed: must be 0..2147483647"),
    (msg("/seed", "7"), "/seed: expected a number"),
    (msg("/seed", True), "/seed: expected a number, got T"),
    (msg("/strength", 0.0), "/strength: must be 0 < x <= 1"),
    (msg("/strength", 1.5), "/strength: must be 0 < x <= 1"),
    (msg("/strength", float("nan")), "/strength: expected a finite number"),
    (msg("/strength"), "/strength: takes exactly 1 argument"),
    (msg("/strength", 0.5, 0.5), "/strength: takes exactly 1 argument"),
    (msg("/prompt", 5), "/prompt: expected a string"),
    (msg("/prompt", "x" * 501), "/prompt: longer than 500 characters (501)"),
    (msg("/refresh", "every:0"), "/refresh: every:N needs N in 1..1000"),
    (msg("/refresh", "sometimes"), "/refresh: must be on-change, every-batch or every:N"),
    (msg("/pause", 2), "/pause: expected T/F or 0/1"),
    (msg("/pause", "yes"), "/pause: expected T/F or 0/1"),
    (msg("/ping", 1), "/ping: takes no arguments"),
    (msg("/preset", "../etc/passwd"), "/preset: invalid preset name"),
    (msg("/preset", "does-not-exist"), "/preset: no preset named 'does-not-exist'"),
    (msg("/preset/save", "a/b"), "/preset/save: invalid preset name"),
    (msg("/volume", 1.0), "/volume: unknown address"),
    (msg("/s*", 1), "/s*: OSC address patterns are not supported"),
    (b"\x00\x01garbage that is not OSC", "packet: not a valid OSC message or bundle"),
    (b"/seed\x00\x00\x00,i\x00\x00", "packet: not a valid OSC message or bundle"),  # int missing
    (msg("/strength", 0.5)[:-2], "packet: not a valid OSC message or bundle (18 bytes): size is not a multiple of 4"),
]


@pytest.mark.parametrize("dgram,expected", BAD, ids=[e for _, e in BAD])
def test_bad_input_is_answered_and_not_applied(target, client, dgram, expected):
    feedback_rx = udp_socket()
    ctl = OscControl(target, port=0, feedback=feedback_rx.getsockname()).start()
    try:
        verify(client, ctl)  # a sender that has spoken valid OSC gets whole answers
        before = target.current_params()
        send(client, ctl, dgram)
        (text,) = recv_until(client, "/error")
        assert text.startswith(expected), text
        assert recv_until(feedback_rx, "/error") == [text]  # also forwarded to the feedback target
        assert ctl.errors == 1 and ctl.applied == 1  # the ping
        assert target.current_params() == before
        assert [c for c in target.calls if c[0] != "recall_preset"] == []
        assert not target.paused
    finally:
        ctl.close()
        feedback_rx.close()


def test_target_rejection_is_reported(ctl, target, client):
    target.reject["prompt"] = "contains a blocked word"
    verify(client, ctl)
    send(client, ctl, msg("/prompt", "something"))
    assert recv_until(client, "/error") == ["/prompt: contains a blocked word"]
    assert target.params["prompt"] == ""
    assert ctl.errors == 1


def test_handler_crash_does_not_kill_the_server(ctl, target, client):
    def boom(**_):
        raise RuntimeError("bug in the server")

    target.set_params = boom
    verify(client, ctl)
    send(client, ctl, msg("/seed", 1))
    assert recv_until(client, "/error") == ["/seed: internal error (see the server log)"]
    roundtrip(client, ctl, msg("/pause", True))
    assert target.paused


def _fuzz_packets(rng: random.Random, n: int) -> list[bytes]:
    good = [msg("/prompt", "hello there"), msg("/seed", 5), msg("/strength", 0.5), msg("/refresh", "every:3")]
    wrong = [
        msg("/seed", "abc"), msg("/steps", 0), msg("/steps", 7.5), msg("/strength", -1.0),
        msg("/pause", 3), msg("/prompt", 1.0), msg("/refresh", "every:100000"), msg("/ping", "x"),
        msg("/preset", ".hidden"), msg("/preset", "x" * 65), msg("/seed", b"\x00\x01", tags="b"),
        msg("/seed", 2**40, tags="h"), msg("/prompt"), msg("/steps", 1, 2),
    ]
    out = []
    for _ in range(n):
        kind = rng.randrange(7)
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))))
        elif kind == 1:
            g = rng.choice(good)
            out.append(g[: rng.randrange(1, len(g))])  # truncated anywhere
        elif kind == 2:
            out.append(rng.choice(wrong))
        elif kind == 3:
            name = "".join(rng.choice("abcxyz/_-*?{") for _ in range(rng.randrange(1, 30)))
            out.append(msg("/" + name + "Q", rng.random()))  # the Q keeps it off real addresses
        elif kind == 4:
            out.append(msg("/prompt", "y" * rng.randrange(501, 60000)))  # huge strings
        elif kind == 5:
            out.append(bundle(("/steps", [rng.randrange(5, 100)]), ("/nowhere", [])))
        else:
            head = b"/seed\x00\x00\x00,i\x00\x00"
            out.append(head + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3))))
    return out


def test_fuzz_1000_malformed_packets(ctl, target, client):
    packets = _fuzz_packets(random.Random(1234), 1000)
    t0 = time.monotonic()
    for i, p in enumerate(packets):
        send(client, ctl, p)
        if i % 25 == 24:  # bursts as fast as the socket takes them, but no more than the kernel
            wait_for(lambda: ctl.packets >= i + 1, timeout=5.0)  # buffer holds (huge strings)
    wait_for(lambda: ctl.packets >= 1000, timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    assert ctl.packets == 1000  # nothing lost
    assert ctl.applied == 0
    assert ctl.errors >= 1000  # every packet rejected (a bad bundle counts each message)
    assert target.calls == [] and target.current_params() == INITIAL

    fresh = udp_socket()
    try:
        send(fresh, ctl, msg("/ping"))
        assert recv_until(fresh, "/pong") == []
        roundtrip(fresh, ctl, msg("/prompt", "turn it into a mosaic"))
        assert target.params["prompt"] == "turn it into a mosaic"
    finally:
        fresh.close()


# -- prefix, lifecycle -----------------------------------------------------------------------


def test_prefix_namespaces_everything(target, client):
    ctl = OscControl(target, port=0, prefix="/vj1").start()
    try:
        roundtrip(client, ctl, msg("/vj1/seed", 77))
        assert target.params["seed"] == 77
        send(client, ctl, msg("/seed", 1))
        assert recv_until(client, "/vj1/error") == ["/seed: unknown address (see docs/OSC.md)"]
        assert target.params["seed"] == 77
    finally:
        ctl.close()


@pytest.mark.parametrize("bad", ["/a b", "/x*", "/x/{y}", "/#a", "/a//b"])
def test_invalid_prefix_is_refused(target, bad):
    with pytest.raises(NodeServerError, match="invalid OSC prefix"):
        OscControl(target, port=0, prefix=bad)


def test_prefix_normalisation():
    assert normalize_prefix("") == "" and normalize_prefix("/") == ""
    assert normalize_prefix("vj/") == "/vj" and normalize_prefix("/a/b") == "/a/b"


def test_close_is_prompt_and_frees_the_port(target):
    ctl = OscControl(target, port=0).start()
    port = ctl.port
    t0 = time.monotonic()
    ctl.close()
    assert time.monotonic() - t0 < 0.5
    again = OscControl(target, port=port)  # rebinding works: the socket was closed
    again.close()  # never started: must not hang
    ctl.close()  # idempotent


def test_port_in_use_is_a_clear_error(ctl, target):
    with pytest.raises(NodeServerError, match="cannot listen for OSC"):
        OscControl(target, port=ctl.port)


# -- feedback --------------------------------------------------------------------------------


def test_feedback_bundles_at_least_2hz_with_all_fields(target):
    rx = udp_socket()
    fb = Feedback(target, *rx.getsockname(), rate_hz=4.0).start()
    try:
        arrivals, fields = [], {}
        deadline = time.monotonic() + 1.3
        while time.monotonic() < deadline:
            messages, is_bundle = recv_messages(rx)
            if is_bundle:
                arrivals.append(time.monotonic())
                fields = dict((a, p) for a, p in messages)
        assert len(arrivals) >= 3
        assert max(b - a for a, b in zip(arrivals, arrivals[1:])) <= 0.5
        assert set(fields) == {r.address for r in FEEDBACK}
        assert fields["/status/fps"] == [pytest.approx(29.5)]
        assert fields["/status/latency_ms"] == [pytest.approx(12.25)]
        assert fields["/status/dropped"] == [3] and fields["/status/state"] == ["running"]
    finally:
        fb.close()
        rx.close()


def test_feedback_prompt_change_is_sent_quickly(target):
    rx = udp_socket()
    fb = Feedback(target, *rx.getsockname(), rate_hz=2.0).start()
    try:
        recv_until(rx, "/status/prompt")  # the initial value
        time.sleep(0.1)
        target.active_prompt = "make it neon"
        t0 = time.monotonic()
        while True:
            messages, _ = recv_messages(rx)
            if ("/status/prompt", ["make it neon"]) in messages:
                break
        assert time.monotonic() - t0 < 0.15  # the 2 Hz bundle alone would take up to 0.5 s
    finally:
        fb.close()
        rx.close()


def test_osc_control_owns_feedback_with_prefix(target, client):
    rx = udp_socket()
    ctl = OscControl(target, port=0, prefix="/a", feedback="127.0.0.1:%d" % rx.getsockname()[1]).start()
    try:
        assert recv_until(rx, "/a/status/state") == ["running"]
        roundtrip(client, ctl, msg("/a/pause", True))
        assert recv_until(rx, "/a/status/state") == ["paused"]
    finally:
        t0 = time.monotonic()
        ctl.close()
        assert time.monotonic() - t0 < 0.5
        rx.close()


def test_parse_address():
    assert parse_address("10.0.0.2:7000") == ("10.0.0.2", 7000)
    for bad in ["10.0.0.2", ":7000", "host:0", "host:x", "host:70000"]:
        with pytest.raises(NodeServerError, match="HOST:PORT"):
            parse_address(bad)


# -- docs ------------------------------------------------------------------------------------


def test_osc_md_matches_the_inventory():
    assert DOC_PATH.read_text(encoding="utf-8") == render_osc_markdown(), (
        "docs/OSC.md is stale: run python -m node_server.control.docs"
    )


def test_docs_list_every_address_with_prefix():
    text = render_osc_markdown("/vj")
    for entry in (*CONTROLS, *FEEDBACK, *REPLIES):
        assert f"`/vj{entry.address}`" in text

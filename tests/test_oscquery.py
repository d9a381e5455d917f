"""OSCQuery over real HTTP (TCP) on 127.0.0.1, with changes made over real OSC/UDP."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pythonosc import osc_message_builder

from fakes import FakeTarget
from node_server.control import OSCQueryServer, OscControl
from node_server.control import oscquery as oq
from node_server.control.inventory import CONTROLS
from node_server.control.presets import BUILTIN_DIR, PresetStore
from node_server.control.web import WebServer

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OSC_ONLY = {"/preset/save", "/blend", "/seed_blend"}  # methods with children: see oscquery's docstring


def get(server: OSCQueryServer, path: str, headers: dict | None = None) -> tuple[int, object]:
    req = urllib.request.Request(server.url.rstrip("/") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as e:
        return e.code, None


def raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or answers with Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def node_at(tree: dict, full_path: str) -> dict:
    node = tree
    for part in full_path.strip("/").split("/"):
        node = node["CONTENTS"][part]
    return node


def walk(node: dict):
    yield node
    for child in node.get("CONTENTS", {}).values():
        yield from walk(child)


@pytest.fixture
def target():
    return FakeTarget(PresetStore(BUILTIN_DIR, None))


@pytest.fixture
def query(target):
    q = OSCQueryServer(target, osc_port=9000, port=0, advertise=False, presets=target.store).start()
    yield q
    q.close()


def test_host_info(query):
    status, info = get(query, "/?HOST_INFO")
    assert status == 200
    assert info["OSC_PORT"] == 9000 and info["OSC_TRANSPORT"] == "UDP" and info["NAME"] == "node-server"
    assert info["EXTENSIONS"]["VALUE"] is True and info["EXTENSIONS"]["RANGE"] is True


def test_root_tree_describes_every_control(query, target):
    status, tree = get(query, "/")
    assert status == 200 and tree["FULL_PATH"] == "/"
    for c in CONTROLS:
        if c.address in OSC_ONLY:
            continue
        node = node_at(tree, c.address)
        assert node["FULL_PATH"] == c.address
        assert node["DESCRIPTION"] == c.description
        if c.kind == "none":  # /ping: an impulse, typed so clients see a method (a trigger)
            assert node["ACCESS"] == 0 and node["TYPE"] == "N" and "VALUE" not in node
            continue
        assert node["TYPE"] == c.type_tag
        assert len(node["RANGE"]) == 1
        if c.param:
            assert node["ACCESS"] == 3 and node["VALUE"] == [target.params[c.param]]
        elif c.action == "pause":
            assert node["ACCESS"] == 3 and node["VALUE"] == [False]
        else:
            assert c.action == "recall_preset"
            assert node["ACCESS"] == 3 and node["VALUE"] == [""]  # nothing recalled yet
    assert node_at(tree, "/strength")["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}]
    assert node_at(tree, "/steps")["RANGE"] == [{"MIN": 1, "MAX": 4}]
    assert "neon" in node_at(tree, "/preset")["RANGE"][0]["VALS"]


def test_every_method_is_a_leaf(query):
    """The proposal's model (and OSC 1.0's): a node with CONTENTS is a container, not a method."""
    tree = get(query, "/")[1]
    for node in walk(tree):
        if "CONTENTS" in node:
            assert "VALUE" not in node and "TYPE" not in node and node["ACCESS"] == 0, node["FULL_PATH"]
        elif node["ACCESS"] != 0:
            assert node["VALUE"], node["FULL_PATH"]  # python-oscquery needs a value on every method
    assert "CONTENTS" not in node_at(tree, "/preset")
    assert "TYPE" not in node_at(tree, "/blend") and "1" in node_at(tree, "/blend")["CONTENTS"]


def test_enum_like_controls_offer_vals_that_the_inventory_accepts(query):
    tree = get(query, "/")[1]
    by_address = {c.address: c for c in CONTROLS}
    for address in ("/refresh", "/cfg", "/seed_mode"):
        vals = node_at(tree, address)["RANGE"][0]["VALS"]
        assert len(vals) >= 2
        for v in vals:  # every offered choice is one OSC would accept
            assert by_address[address].coerce([v]) == v
    assert by_address["/cfg"].coerce(["none"]) == "none"
    assert node_at(tree, "/cfg")["RANGE"][0]["VALS"] == ["none", "self"]
    assert node_at(tree, "/seed_mode")["RANGE"][0]["VALS"] == ["fixed", "per-frame"]
    assert node_at(tree, "/pause")["RANGE"] == [{"VALS": [False, True]}]


def test_value_follows_osc_changes(query, target):
    ctl = OscControl(target, port=0).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        for address, value in (("/prompt", "make it pixel art"), ("/seed", 42), ("/pause", True),
                               ("/preset", "neon")):
            b = osc_message_builder.OscMessageBuilder(address=address)
            b.add_arg(value)
            s.sendto(b.build().dgram, ("127.0.0.1", ctl.port))
        s.sendto(osc_message_builder.OscMessageBuilder(address="/ping").build().dgram, ("127.0.0.1", ctl.port))
        s.recvfrom(1024)  # /pong: everything before it was handled
        neon = target.store.recall("neon")["prompt"]
        assert get(query, "/prompt?VALUE") == (200, {"VALUE": [neon]})
        assert get(query, "/pause?VALUE") == (200, {"VALUE": [True]})
        assert get(query, "/preset?VALUE") == (200, {"VALUE": ["neon"]})  # the last recalled preset
    finally:
        s.close()
        ctl.close()


def test_sub_paths_attributes_and_errors(query):
    status, node = get(query, "/seed_blend")
    assert status == 200 and node["FULL_PATH"] == "/seed_blend" and "1" in node["CONTENTS"]
    assert get(query, "/preset?TYPE") == (200, {"TYPE": "s"})
    assert get(query, "/ping?VALUE")[0] == 204  # an impulse: no value to read
    assert get(query, "/blend?TYPE") == (200, {})  # the proposal: a pure container has no TYPE
    assert get(query, "/preset/save")[0] == 404  # an OSC-only action (see oscquery's docstring)
    assert get(query, "/nope")[0] == 404
    assert get(query, "/prompt/deeper")[0] == 404
    assert get(query, "/prompt?BOGUS")[0] == 400


def test_host_info_only_at_the_root(query):
    assert get(query, "/?HOST_INFO")[0] == 200
    assert get(query, "/prompt?HOST_INFO")[0] == 400
    assert get(query, "/foo?HOST_INFO")[0] == 400


def test_foreign_host_header_is_refused(query):
    """DNS rebinding: a page on evil.example whose name now points here must not read the tree."""
    port = query.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
        assert get(query, "/", {"Host": host})[0] == 421, host
        assert get(query, "/?HOST_INFO", {"Host": host})[0] == 421, host
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST."):
        assert get(query, "/", {"Host": host})[0] == 200, host
    assert query.web.stats["bad_host"] == 8


def test_off_loopback_names_are_allowed():
    from node_server.control.web import allowed_host_names

    wild = allowed_host_names("0.0.0.0")
    assert {"localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname().lower()} <= wild
    lan = allowed_host_names("192.0.2.7")
    assert "192.0.2.7" in lan and "localhost" in lan and "127.0.0.1" not in lan
    assert allowed_host_names("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}


def test_prefix_applies_to_the_tree(target):
    q = OSCQueryServer(target, osc_port=9100, port=0, prefix="/vj/a", advertise=False).start()
    try:
        status, tree = get(q, "/")
        assert list(tree["CONTENTS"]) == ["vj"]
        assert node_at(tree, "/vj/a/steps")["FULL_PATH"] == "/vj/a/steps"
        assert get(q, "/vj/a/steps?VALUE") == (200, {"VALUE": [1]})
        assert get(q, "/steps")[0] == 404
    finally:
        q.close()


def test_close_frees_the_port_quickly_with_connections_held(target):
    q = OSCQueryServer(target, osc_port=9000, port=0, advertise=False).start()
    port = q.port
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    held[0].sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # one mid-request
    time.sleep(0.2)
    t0 = time.monotonic()
    q.close()
    took = time.monotonic() - t0
    for s in held:
        s.close()
    with socket.socket() as s:  # the server's own closes leave TIME_WAIT: rebind as a restart does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    assert took < 2.0, took
    assert not [t for t in threading.enumerate() if t.name == "oscquery-server"]


def test_host_info_leaves_out_a_wildcard_osc_ip(target):
    q = OSCQueryServer(target, osc_port=9000, osc_host="0.0.0.0", port=0, advertise=False).start()
    try:
        info = get(q, "/?HOST_INFO")[1]
        assert "OSC_IP" not in info and info["OSC_PORT"] == 9000
    finally:
        q.close()
    assert get_ip(target) == "127.0.0.1"


def get_ip(target) -> str:
    with OSCQueryServer(target, osc_port=1, port=0, advertise=False) as q:
        return get(q, "/?HOST_INFO")[1]["OSC_IP"]


def test_busy_port_is_one_line_error(target):
    from node_server.errors import NodeServerError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(NodeServerError, match=r"cannot serve OSCQuery on 127\.0\.0\.1:\d+"):
            OSCQueryServer(target, osc_port=1, port=s.getsockname()[1], advertise=False)


# -- the running model: its controls and its strength range --------------------------------------
class ModelTarget(FakeTarget):
    def __init__(self, store=None):
        super().__init__(store)
        self.info = None

    def model_info(self):
        return self.info


def test_only_the_running_models_controls_and_its_strength_cap():
    """The inventory's `Control.families`: `/cfg`, `/guidance`, `/seed_mode` are SD-class only,
    `/refresh` DreamLite only; blending and everything else serve both families."""
    target = ModelTarget(PresetStore(BUILTIN_DIR, None))
    with OSCQueryServer(target, osc_port=9000, port=0, advertise=False, presets=target.store) as q:
        tree = get(q, "/")[1]  # no model yet: everything, the inventory's range
        assert {"cfg", "blend", "refresh"} <= set(tree["CONTENTS"])
        assert node_at(tree, "/strength")["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}]
        target.info = {"family": "dreamlite", "max_strength": 0.08}
        tree = get(q, "/")[1]
        assert node_at(tree, "/strength")["RANGE"] == [{"MIN": 0.0, "MAX": 0.08}]
        for gone in ("cfg", "guidance", "seed_mode"):
            assert gone not in tree["CONTENTS"], gone
        assert get(q, "/cfg")[0] == 404
        assert {"prompt", "strength", "seed", "steps", "refresh", "preset", "pause", "lllite", "blend",
                "seed_blend"} <= set(tree["CONTENTS"])
        target.info = {"family": "sd", "max_strength": 1.0}
        tree = get(q, "/")[1]
        assert "cfg" in tree["CONTENTS"] and "refresh" not in tree["CONTENTS"]
        assert node_at(tree, "/strength")["RANGE"][0]["MAX"] == 1.0


def test_controls_for_every_family_are_always_listed():
    target = ModelTarget()
    for family in ("dreamlite", "sd"):
        target.info = {"family": family, "max_strength": 1.0}
        shown = oq.controls_for(target)
        assert [c for c in CONTROLS if len(c.families) == 2] == [c for c in shown if len(c.families) == 2]
        assert all(family in c.families for c in shown)


# -- a third-party client -----------------------------------------------------------------------
def test_python_oscquery_client_reads_the_whole_tree(query, target):
    from pythonoscquery.osc_query_client import OSCQueryClient
    from zeroconf import ServiceInfo

    target.recall_preset("sepia")
    info = ServiceInfo("_oscjson._tcp.local.", "node-server._oscjson._tcp.local.",
                       addresses=[socket.inet_aton("127.0.0.1")], port=query.port)
    client = OSCQueryClient(info)
    host = client.get_host_info()
    assert host.name == "node-server" and host.osc_port == 9000 and host.osc_ip == "127.0.0.1"
    root = client.query_node("/")  # python-oscquery 0.4.0 raised ValueError here before
    assert root is not None
    paths = {n.full_path for n in root}
    assert {"/prompt", "/strength", "/preset", "/ping", "/blend/1/weight"} <= paths
    assert root.find_subnode("/preset").value == ["sepia"]
    assert root.find_subnode("/steps").value == [1]
    assert root.find_subnode("/ping").is_container is True  # how 0.4.0 models any node without a value
    assert client.query_node("/strength").value == [target.params["strength"]]
    assert client.query_node("/nope") is None


# -- robustness: held connections, bursts, resets -------------------------------------------------
SERVER_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from fakes import FakeTarget
    from node_server.control import OSCQueryServer
    q = OSCQueryServer(FakeTarget(), osc_port=9000, port=0, advertise=False).start()
    print(q.port, flush=True)
    sys.stdin.read()
    q.close()
""")


@pytest.fixture
def server_proc():
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT.format(tests=str(TESTS))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield proc, port
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_thousand_held_connections_cost_no_threads_and_bounded_fds(server_proc):
    proc, port = server_proc
    threads0, fds0 = _threads(proc.pid), _fds(proc.pid)
    held = []
    try:
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half of them stall mid-request
            held.append(s)
        status = raw(port, b"GET /steps?VALUE HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), status[:80]
        assert b'{"VALUE": [1]}' in status
        threads, fds = _threads(proc.pid), _fds(proc.pid)
    finally:
        for s in held:
            s.close()
    assert threads <= threads0 + 2, (threads0, threads)  # the stdlib server: one thread each
    assert fds <= fds0 + 256 + 8, (fds0, fds)  # the connection cap, not one per client


def _listen_overflows() -> int:
    text = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(text[::2], text[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["ListenOverflows"])
    raise AssertionError("no TcpExt line")


@pytest.mark.skipif(not Path("/proc/net/netstat").exists(), reason="needs Linux /proc")
def test_a_burst_of_200_connects_is_accepted_not_dropped(server_proc):
    """With a backlog of 5 the kernel drops SYNs of a burst and clients retry after 1 s."""
    proc, port = server_proc
    before = _listen_overflows()
    barrier = threading.Barrier(200)
    answers: list[bytes] = []
    took: list[float] = []

    def one() -> None:
        barrier.wait()
        t0 = time.monotonic()
        s = socket.socket()
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /seed?VALUE HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        took.append(time.monotonic() - t0)
        answers.append(data)

    workers = [threading.Thread(target=one) for _ in range(200)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert len(answers) == 200 and all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert _listen_overflows() == before  # not one connect had to be retried
    print(f"200 simultaneous connects: slowest answered in {max(took) * 1000:.0f} ms")


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, not FIN


def test_clients_that_vanish_mid_request_print_no_traceback(query, capfd, caplog):
    port = query.port
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers cut short
        else:  # a full request for the whole tree, gone before the answer is read
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 50)
        _reset(s)
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GARBAGE \x00\xff\r\n\r\n")
    _reset(s)
    deadline = time.monotonic() + 5
    while query.web.stats["disconnects"] < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get(query, "/steps?VALUE") == (200, {"VALUE": [1]})  # still serving
    assert query.web.stats["disconnects"] >= 10
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_idle_connections_are_closed(target):
    web = WebServer("127.0.0.1", 0, what="OSCQuery", idle_timeout=0.5)
    with OSCQueryServer(target, osc_port=9000, advertise=False, web_server=web) as q:
        s = socket.create_connection(("127.0.0.1", q.port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\n")  # and then nothing more
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 9
        s.close()


def test_the_cap_closes_idle_connections_first(target):
    web = WebServer("127.0.0.1", 0, what="OSCQuery", max_connections=8)
    with OSCQueryServer(target, osc_port=9000, advertise=False, web_server=web) as q:
        held = [socket.create_connection(("127.0.0.1", q.port)) for _ in range(30)]
        try:
            assert get(q, "/steps?VALUE") == (200, {"VALUE": [1]})
            assert web.open_connections() <= 8
            assert web.stats["evicted"] >= 22
            closed = sum(1 for s in held[:10] if _closed(s))
            assert closed == 10  # the oldest went first
        finally:
            for s in held:
                s.close()


def _closed(s: socket.socket) -> bool:
    s.settimeout(2)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return False


# -- parsers in our hands: property tests ---------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_host_header_parser_takes_anything(header):
    from node_server.control.web import allowed_host_names, host_of

    host = host_of(header)
    assert isinstance(host, str)
    if host in allowed_host_names("127.0.0.1"):  # only these exact names pass on loopback
        assert host in ("localhost", "127.0.0.1", "::1")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(["COMMAND", "DATA", "x"]), kids, max_size=3),
    max_leaves=12).map(json.dumps)))
def test_listen_commands_never_raise(text):
    from node_server.control.listen import ListenHub, _Client

    class Stub:  # just what ListenHub touches
        extensions: dict = {}
        websocket = None
        web = type("W", (), {"on_close": []})()

    hub = ListenHub(Stub())
    hub.watcher.paths = frozenset({"/", "/strength"})
    client = _Client(ws=None)
    hub._command(client, text)
    assert client.paths <= hub.watcher.paths  # only known paths are ever listened to

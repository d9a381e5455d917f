"""OSCQuery over real HTTP (TCP) on 127.0.0.1, with changes made over real OSC/UDP."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from pythonosc import osc_message_builder

from fakes import FakeTarget
from node_server.control import OSCQueryServer, OscControl
from node_server.control.inventory import CONTROLS
from node_server.control.presets import BUILTIN_DIR, PresetStore


def get(server: OSCQueryServer, path: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=2) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as e:
        return e.code, None


def node_at(tree: dict, full_path: str) -> dict:
    node = tree
    for part in full_path.strip("/").split("/"):
        node = node["CONTENTS"][part]
    return node


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
        node = node_at(tree, c.address)
        assert node["FULL_PATH"] == c.address
        assert node["DESCRIPTION"] == c.description
        if c.kind == "none":  # /ping: an impulse, no value to type or range
            assert node["ACCESS"] == 0 and "TYPE" not in node
            continue
        assert node["TYPE"] == c.type_tag
        assert len(node["RANGE"]) == 1
        if c.param:
            assert node["ACCESS"] == 3 and node["VALUE"] == [target.params[c.param]]
        elif c.action == "pause":
            assert node["ACCESS"] == 3 and node["VALUE"] == [False]
        else:
            assert node["ACCESS"] == 2 and "VALUE" not in node
    assert node_at(tree, "/strength")["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}]
    assert node_at(tree, "/steps")["RANGE"] == [{"MIN": 1, "MAX": 4}]
    assert "neon" in node_at(tree, "/preset")["RANGE"][0]["VALS"]


def test_value_follows_osc_changes(query, target):
    ctl = OscControl(target, port=0).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        for address, value in (("/prompt", "make it pixel art"), ("/seed", 42), ("/pause", True)):
            b = osc_message_builder.OscMessageBuilder(address=address)
            b.add_arg(value)
            s.sendto(b.build().dgram, ("127.0.0.1", ctl.port))
        s.sendto(osc_message_builder.OscMessageBuilder(address="/ping").build().dgram, ("127.0.0.1", ctl.port))
        s.recvfrom(1024)  # /pong: everything before it was handled
        assert get(query, "/prompt?VALUE") == (200, {"VALUE": ["make it pixel art"]})
        assert get(query, "/seed")[1]["VALUE"] == [42]
        assert get(query, "/pause?VALUE") == (200, {"VALUE": [True]})
    finally:
        s.close()
        ctl.close()


def test_sub_paths_attributes_and_errors(query):
    status, node = get(query, "/preset")
    assert status == 200 and node["FULL_PATH"] == "/preset" and "save" in node["CONTENTS"]
    assert get(query, "/preset/save?TYPE") == (200, {"TYPE": "s"})
    assert get(query, "/preset/save?VALUE")[0] == 204  # write-only: no value to read
    assert get(query, "/nope")[0] == 404
    assert get(query, "/prompt/deeper")[0] == 404
    assert get(query, "/prompt?BOGUS")[0] == 400


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


def test_close_frees_the_port(target):
    q = OSCQueryServer(target, osc_port=9000, port=0, advertise=False).start()
    port = q.port
    q.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


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

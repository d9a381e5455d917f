"""Fuzz target: the `serve --config FILE.toml` loader (`node_server.server.config`).

Contract: `load_config_file` and `resolve` raise `NodeServerError` (one line for the user) and
nothing else, whatever the file holds; what they accept is in range (ports 0..65535, ZeroMQ
addresses with a real port). Each input is also tried wrapped in structure (a nesting depth, a
huge number, a port) so that a mutation-based fuzzer reaches those cases.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from node_server.errors import NodeServerError
from node_server.server.config import ServeConfig, load_config_file, resolve

MAX_LEN = 8192

SEEDS: list[bytes] = [
    b'osc-port = 9000\nzmq_in = "tcp://127.0.0.1:5555"\nsize = 256\n',
    b'zmq_in = "tcp://127.0.0.1:70000"\n',
    b'zmq_out = "tcp://*:65536"\n',
    b"osc_port = 99999999999999999999999999\n",
    b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    b"a = " + b"{b = " * 2000 + b"1" + b"}" * 2000 + b"\n",
    b"\xff\xfe\x00junk",
    b"size = 1" + b"0" * 5000 + b"\n",
]

_FILE = Path(tempfile.gettempdir()) / f"node-server-fuzz-config-{os.getpid()}.toml"


def _structural(data: bytes) -> list[bytes]:
    if len(data) < 2:
        return []
    depth = (data[0] << 8 | data[1]) % 4000
    port = int.from_bytes(data[:3].ljust(3, b"\0"), "big") * 7
    return [
        b"osc_port = " + b"[" * depth + b"1" + b"]" * depth + b"\n",
        b"x = " + b"{a = " * depth + b"1" + b"}" * depth,
        f'zmq_in = "tcp://127.0.0.1:{port}"\nosc-port = {port}\n'.encode(),
        b"batch_size = " + b"9" * (depth + 1) + b"\n",
    ]


def _check(raw: bytes) -> None:
    _FILE.write_bytes(raw)
    try:
        values = load_config_file(_FILE)
    except NodeServerError:
        return
    for key in ("osc_port", "oscquery_port"):
        if key in values:
            assert 0 <= values[key] <= 65535, values
    for key in ("zmq_in", "zmq_out"):
        if key in values and values[key].startswith("tcp://"):
            port = values[key].rpartition(":")[2]
            assert port == "*" or 0 <= int(port) <= 65535, values
    values.pop("model", None)  # a random path as a model folder is the loader's business
    values.pop("lllite", None)
    try:
        config = resolve(values)
    except NodeServerError:
        return
    assert isinstance(config, ServeConfig)


def fuzz_one(data: bytes) -> None:
    _check(data)
    for raw in _structural(data):
        _check(raw)

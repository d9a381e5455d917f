"""Fuzz target: the preset loader (`node_server.control.presets`), which OSC's `/preset NAME`
reaches from the network.

Contract: `PresetStore.recall` raises `NodeServerError` (sent back as a one-line `/error`) and
nothing else, whatever the file holds; what it returns passed the same checks as OSC values.
Each input is also tried wrapped in structure (a nesting depth, a huge number).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from node_server.control.presets import PRESET_KEYS, PresetStore
from node_server.errors import NodeServerError

MAX_LEN = 8192

SEEDS: list[bytes] = [
    b'prompt = "make it neon"\nseed = 3\nsteps = 2\nstrength = 0.5\nrefresh = "every:4"\n',
    b"prompt = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    b"seed = " + b"{a = " * 3000 + b"1" + b"}" * 3000 + b"\n",
    b"seed = 1" + b"0" * 5000 + b"\n",
    b"strength = nan\n",
    b"strength = inf\nsteps = -9223372036854775809\n",
    b'prompt = """' + b"x" * 600 + b'"""\n',
    b"\x00\x01\x02\xff",
]

_DIR = Path(tempfile.gettempdir()) / f"node-server-fuzz-presets-{os.getpid()}"
_STORE = PresetStore(builtin_dir=None, user_dir=_DIR)


def _structural(data: bytes) -> list[bytes]:
    if len(data) < 2:
        return []
    depth = (data[0] << 8 | data[1]) % 4000
    return [
        b"seed = " + b"[" * depth + b"1" + b"]" * depth + b"\n",
        b"prompt = " + b"{a = " * depth + b'"x"' + b"}" * depth,
        b"seed = " + b"9" * (depth + 1) + b"\nstrength = 1e" + str(depth).encode() + b"\n",
    ]


def _check(raw: bytes) -> None:
    _DIR.mkdir(exist_ok=True)
    (_DIR / "p.toml").write_bytes(raw)
    try:
        params = _STORE.recall("p")
    except NodeServerError:
        return
    assert set(params) <= set(PRESET_KEYS), params
    for value in params.values():
        assert not isinstance(value, float) or math.isfinite(value), params


def fuzz_one(data: bytes) -> None:
    _check(data)
    for raw in _structural(data):
        _check(raw)

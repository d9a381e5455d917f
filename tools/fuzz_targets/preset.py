"""Fuzz target: the preset loader (`node_server.control.presets`), which OSC's `/preset NAME`
reaches from the network.

Contract: `PresetStore.recall` raises `NodeServerError` (sent back as a one-line `/error`) and
nothing else, whatever the file holds, for no running model and for a few (the keys `models` and
`family` say which models a preset is for); what it returns passed the same checks as OSC values,
and `names(model)` lists a preset exactly when recalling it is not refused as made for another
model. Each input is also tried wrapped in structure (a nesting depth, a huge number, long lists).
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
    b'models = ["demo"]\nfamily = "dreamlite"\nprompt = "make it sepia"\n',
    b'family = ["dreamlite", "sd"]\nmodels = "owner/name"\n',
    b"models = []\nfamily = {a = 1}\n",
]
MODELS = (None, {"model": "demo", "family": "dreamlite"}, {"model": "owner/name@v1", "family": "sd"},
          {"model": "some/folder"})

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
        b"models = " + b"[" * depth + b'"demo"' + b"]" * depth + b"\n",
        b"models = [" + b'"demo", ' * depth + b'"x"]\nfamily = "' + data[2:2 + depth % 64] + b'"\n',
        b'family = ["sd", ' + b'"dreamlite", ' * (depth % 40) + b'"sd"]\nmodels = "' + b"m" * depth + b'"\n',
    ]


def _check(raw: bytes) -> None:
    _DIR.mkdir(exist_ok=True)
    (_DIR / "p.toml").write_bytes(raw)
    try:
        _STORE.recall("p")
    except NodeServerError as exc:  # a file that cannot be read: one line, and listed for every model
        assert "\n" not in str(exc), exc
        assert "p" in _STORE.names(MODELS[1]), exc
        return
    for model in MODELS:
        listed = "p" in _STORE.names(model)
        try:
            params = _STORE.recall("p", model)
        except NodeServerError as exc:
            assert "\n" not in str(exc), exc
            refused = " is made for " in str(exc) and "; the running model is " in str(exc)
            assert listed != refused, (model, exc)
            continue
        assert listed, model
        assert set(params) <= set(PRESET_KEYS), params
        for value in params.values():
            assert not isinstance(value, float) or math.isfinite(value), params


def fuzz_one(data: bytes) -> None:
    _check(data)
    for raw in _structural(data):
        _check(raw)

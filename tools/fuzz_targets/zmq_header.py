"""Fuzz target: the ZeroMQ frame header parser (`bridges.zmq_protocol`).

Contract: `parse_header` and `decode_message` raise `ProtocolError` and nothing else, whatever
the bytes; what they accept is a frame the engine can take (sizes, channels, finite `t`).
Besides the raw bytes, each input is also tried as a nesting depth and a number wrapped around a
valid header, so that a mutation-based fuzzer reaches the structural cases (deep nesting, huge
numbers) that random bytes almost never spell.
"""

from __future__ import annotations

import json
import math

from bridges.zmq_protocol import (
    CHANNELS,
    MAX_HEADER_BYTES,
    MAX_PIXELS,
    FrameHeader,
    ProtocolError,
    decode_message,
    parse_header,
)

MAX_LEN = MAX_HEADER_BYTES + 64

_GOOD = {"v": 1, "id": 1, "w": 2, "h": 1, "c": 3, "dtype": "uint8"}

SEEDS: list[bytes] = [
    json.dumps({**_GOOD, "t": 1.5}).encode(),
    json.dumps({**_GOOD, "server": {"recv": 1.0, "batch": [1, 2]}}).encode(),
    b"[" * 5000,
    b'{"a":' * 3000,
    b'{"v":1,"id":1,"w":1,"h":1,"c":3,"dtype":"uint8","t":1' + b"0" * 400 + b"}",
    b'{"v":1,"id":1,"w":1,"h":1,"c":3,"dtype":"uint8","t":1e999}',
    b'"' + b'\\"' * 2000,
]


def _check_accepted(header: FrameHeader) -> None:
    assert header.v == 1
    assert -(2**63) <= header.id < 2**63
    assert 1 <= header.w and 1 <= header.h and header.w * header.h <= MAX_PIXELS
    assert header.c in CHANNELS and header.dtype == "uint8"
    assert header.t is None or (isinstance(header.t, float) and math.isfinite(header.t))


def _parse(raw: bytes) -> None:
    try:
        header = parse_header(raw)
    except ProtocolError:
        return
    _check_accepted(header)


def _structural(data: bytes) -> list[bytes]:
    """Headers built from the input: nesting `depth` levels deep, and a `t` of many digits."""
    if len(data) < 2:
        return []
    depth = (data[0] << 8 | data[1]) % 6000
    opener, closer = (b'{"a":', b"}") if data[0] & 1 else (b"[", b"]")
    digits = b"9" * ((data[1] * 37) % 5000 + 1)
    return [
        opener * depth + b"1" + closer * depth,
        opener * depth,  # cut short
        json.dumps({**_GOOD, "x": None}).encode().replace(b"null", opener * (depth % 64) + b"0" + closer * (depth % 64)),
        json.dumps(_GOOD).encode()[:-1] + b',"t":' + digits + b"}",
        json.dumps(_GOOD).encode()[:-1] + b',"t":-' + digits + b"e" + digits[:4] + b"}",
    ]


def fuzz_one(data: bytes) -> None:
    _parse(data)
    for raw in _structural(data):
        _parse(raw)
    # the whole message: the pixel frame's size is checked against the header
    try:
        decode_message([data, bytes(len(data) % 13)])
    except ProtocolError:
        pass

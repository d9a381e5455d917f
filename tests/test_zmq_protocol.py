"""The ZeroMQ wire format: round trips and every kind of malformed message (unit, no sockets)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridges.zmq_protocol as protocol
from bridges.zmq_protocol import (
    MAX_HEADER_BYTES,
    MAX_HEADER_DEPTH,
    MAX_PIXELS,
    ProtocolError,
    decode_message,
    encode_frame,
    nesting_depth,
    parse_header,
)


def _msg(header: dict, body: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), body]


def _good(**over) -> dict:
    h = {"v": 1, "id": 7, "w": 4, "h": 2, "c": 3, "dtype": "uint8", "t": 12.5}
    h.update(over)
    return h


@pytest.mark.parametrize("shape", [(2, 4, 3), (2, 4, 4), (2, 4, 1), (5, 3)])
def test_round_trip_keeps_pixels_id_and_time(shape):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    parts = encode_frame(frame, id=42, t=1.25)
    header, pixels = decode_message([parts[0], memoryview(parts[1]).cast("B")])
    assert (header.id, header.t, header.w, header.h) == (42, 1.25, shape[1], shape[0])
    assert header.c == (shape[2] if len(shape) == 3 else 1)
    np.testing.assert_array_equal(pixels.reshape(frame.shape), frame)


def test_t_is_optional_and_extra_fields_survive():
    raw = json.dumps({"v": 1, "id": 1, "w": 1, "h": 1, "c": 3, "dtype": "uint8", "prompt": "x", "server": {"a": 1}})
    header = parse_header(raw.encode())
    assert header.t is None
    assert header.extra == {"prompt": "x", "server": {"a": 1}}
    assert header.to_dict()["server"] == {"a": 1}
    assert "t" not in header.to_dict()


def test_decode_is_zero_copy():
    body = bytearray(2 * 4 * 3)
    _, pixels = decode_message([json.dumps(_good()).encode(), body])
    body[0] = 99
    assert pixels[0, 0, 0] == 99


def test_encode_makes_non_contiguous_frames_contiguous():
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)[:, ::2]
    parts = encode_frame(frame, id=0)
    _, pixels = decode_message(parts)
    np.testing.assert_array_equal(pixels, frame)


@pytest.mark.parametrize(
    "frame, id",
    [
        (np.zeros((2, 2, 3), np.float32), 0),  # not uint8
        (np.zeros((2, 2, 2), np.uint8), 0),  # two channels
        (np.zeros((2, 2, 3, 1), np.uint8), 0),  # 4-D
        (np.zeros((0, 2, 3), np.uint8), 0),  # empty
        (np.zeros((2, 2, 3), np.uint8), "7"),  # id not an int
        (np.zeros((2, 2, 3), np.uint8), True),  # bool is not an id
    ],
)
def test_encode_rejects_bad_frames(frame, id):
    with pytest.raises(ProtocolError):
        encode_frame(frame, id=id)


BODY = bytes(2 * 4 * 3)

MALFORMED = {
    "not json": [b"{not json", BODY],
    "not utf-8": [b"\xff\xfe{}", BODY],
    "json array": [b"[1, 2, 3]", BODY],
    "json string": [b'"hello"', BODY],
    "NaN t": [b'{"v":1,"id":1,"w":4,"h":2,"c":3,"dtype":"uint8","t":NaN}', BODY],
    "missing v": _msg({k: v for k, v in _good().items() if k != "v"}, BODY),
    "missing id": _msg({k: v for k, v in _good().items() if k != "id"}, BODY),
    "missing w": _msg({k: v for k, v in _good().items() if k != "w"}, BODY),
    "missing h": _msg({k: v for k, v in _good().items() if k != "h"}, BODY),
    "missing c": _msg({k: v for k, v in _good().items() if k != "c"}, BODY),
    "missing dtype": _msg({k: v for k, v in _good().items() if k != "dtype"}, BODY),
    "version 2": _msg(_good(v=2), BODY),
    "id as string": _msg(_good(id="7"), BODY),
    "id as bool": _msg(_good(id=True), BODY),
    "id as float": _msg(_good(id=7.0), BODY),
    "id over 64 bits": _msg(_good(id=2**70), BODY),
    "w as float": _msg(_good(w=4.0), BODY),
    "h as string": _msg(_good(h="2"), BODY),
    "c as null": _msg(_good(c=None), BODY),
    "t as string": _msg(_good(t="now"), BODY),
    "t as bool": _msg(_good(t=True), BODY),
    "zero width": _msg(_good(w=0), b""),
    "negative height": _msg(_good(h=-2), BODY),
    "two channels": _msg(_good(c=2), bytes(16)),
    "five channels": _msg(_good(c=5), bytes(40)),
    "float32 dtype": _msg(_good(dtype="float32"), BODY),
    "dtype as number": _msg(_good(dtype=8), BODY),
    "over 16 megapixels": _msg(_good(w=4097, h=4096, c=1), BODY),
    "pixels too short": _msg(_good(), BODY[:-1]),
    "pixels too long": _msg(_good(), BODY + b"\0"),
    "no pixels frame": [json.dumps(_good()).encode()],
    "three frames": _msg(_good(), BODY) + [b"extra"],
    "empty message": [],
    "header too big": [json.dumps(_good(pad="x" * MAX_HEADER_BYTES)).encode(), BODY],
    # issue 16: each of these used to kill the server's receive thread
    "deeply nested array": [b"[" * 5000 + b"]" * 5000, BODY],
    "deeply nested object": [b'{"a":' * 5000 + b"1" + b"}" * 5000, BODY],
    "deep nesting cut short": [b"[" * 60000, BODY],
    "deep field in a good header": [json.dumps(_good()).encode()[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}", BODY],
    "t an int too large for a float": [json.dumps(_good(t=10**400)).encode(), BODY],
    "t overflows to infinity": [json.dumps(_good())[:-1].encode() + b',"t":1e999}', BODY],
    "t minus infinity": [json.dumps(_good())[:-1].encode() + b',"t":-1e400}', BODY],
    "extra field infinite": [json.dumps(_good())[:-1].encode() + b',"x":[2e308]}', BODY],
    "id of 5000 digits": [json.dumps(_good())[:-1].encode().replace(b'"id": 7', b'"id": 1' + b"0" * 5000) + b"}", BODY],
    "w of 400 digits": [json.dumps(_good(w=10**400)).encode(), BODY],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_rejected_with_a_reason(name):
    with pytest.raises(ProtocolError) as info:
        decode_message(MALFORMED[name])
    assert str(info.value)  # a reason the server can forward as /error


def test_pixel_limit_is_checked_before_the_size_match():
    """A huge header must be refused for its size, not only because the body does not match."""
    with pytest.raises(ProtocolError, match="megapixel"):
        decode_message(_msg(_good(w=1 << 20, h=1 << 20), b""))


def test_largest_legal_frame_header_is_accepted():
    header = parse_header(json.dumps(_good(w=4096, h=MAX_PIXELS // 4096, c=4)).encode())
    assert header.nbytes == MAX_PIXELS * 4


def test_deep_nesting_is_refused_before_json_builds_it(monkeypatch):
    """The depth is measured on the text; `json.loads` (which recurses per level) never sees it."""
    calls = []
    real = json.loads
    monkeypatch.setattr(protocol.json, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    for raw in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000):
        with pytest.raises(ProtocolError, match=f"nests {3000 if raw[0:1] == b'{' else 5000} levels deep"):
            parse_header(raw)
    assert calls == []


def test_nesting_up_to_the_limit_is_accepted():
    def nested(levels: int):
        value: object = 1
        for _ in range(levels):
            value = {"a": value}
        return value

    ok = _good(x=nested(MAX_HEADER_DEPTH - 1))  # the header object itself is one level
    assert parse_header(json.dumps(ok).encode()).extra["x"] == nested(MAX_HEADER_DEPTH - 1)
    with pytest.raises(ProtocolError, match=f"nests {MAX_HEADER_DEPTH + 1} levels deep"):
        parse_header(json.dumps(_good(x=nested(MAX_HEADER_DEPTH))).encode())


@pytest.mark.parametrize("text, depth", [
    ("{}", 1), ("[[]]", 2), ('{"a": "[[[[{{{"}', 1), ('["\\"]', 1), ('["\\\"]]]"]', 1),
    ('[1, {"b": [2]}]', 3), ('"[["', 0), ("", 0), ('"unterminated [[[', 0),
])
def test_nesting_depth_ignores_brackets_in_strings(text, depth):
    assert nesting_depth(text) == depth


def test_hostile_escapes_are_scanned_in_linear_time():
    """A regex with failing matches would take minutes on 32K escaped quotes; this one does not."""
    raw = b'"' + b'\\"' * (MAX_HEADER_BYTES // 2 - 1)
    with pytest.raises(ProtocolError):  # not JSON; the point is that it returns at all
        parse_header(raw)


def test_t_keeps_its_value_when_it_is_a_big_but_finite_int():
    assert parse_header(json.dumps(_good(t=10**300)).encode()).t == 1e300


# -- properties (hypothesis) ---------------------------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**500), max_value=10**500) \
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
_json_value = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=40)


def _true_depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_true_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_true_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(_json_value)
def test_nesting_depth_matches_the_structure(value):
    text = json.dumps(value)
    assert nesting_depth(text) == _true_depth(value)


_FIELDS = ("v", "id", "w", "h", "c", "dtype", "t")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=6), _json_value, max_size=8),
       st.fixed_dictionaries({}, optional={k: _json_value for k in _FIELDS}))
def test_any_json_header_is_accepted_valid_or_refused_with_protocol_error(extra, fields):
    header = {**_good(), **extra, **fields}
    try:
        h = parse_header(json.dumps(header).encode())
    except ProtocolError:
        return
    assert h.v == 1 and h.c in (1, 3, 4) and 1 <= h.w * h.h <= MAX_PIXELS and h.dtype == "uint8"
    assert h.t is None or math.isfinite(h.t)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_are_a_header_or_a_protocol_error(raw):
    try:
        parse_header(raw)
    except ProtocolError:
        pass


_CLOSERS = {b"[": b"]", b'{"a":': b"}", b'{"a":[': b"]}"}


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=8000), st.sampled_from(sorted(_CLOSERS)), st.booleans())
def test_any_nesting_depth_is_handled(depth, opener, closed):
    raw = opener * depth + b"1" + (_CLOSERS[opener] * depth if closed else b"")
    if len(raw) > MAX_HEADER_BYTES:
        raw = raw[:MAX_HEADER_BYTES]
    with pytest.raises(ProtocolError):  # never a header object with v, id, w, h, c
        parse_header(raw)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=200))
def test_every_truncation_of_a_valid_header_is_refused_cleanly(cut):
    raw = json.dumps(_good(t=1718000000.25, server={"batch": [1, 2]})).encode()
    cut = min(cut, len(raw))
    if cut == len(raw):
        assert parse_header(raw[:cut]).id == 7
    else:
        with pytest.raises(ProtocolError):
            parse_header(raw[:cut])

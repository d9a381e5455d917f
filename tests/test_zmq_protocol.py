"""The ZeroMQ wire format: round trips and every kind of malformed message (unit, no sockets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bridges.zmq_protocol import (
    MAX_HEADER_BYTES,
    MAX_PIXELS,
    ProtocolError,
    decode_message,
    encode_frame,
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

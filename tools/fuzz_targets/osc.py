"""Fuzz target: one UDP datagram through the OSC packet parser and the inventory's value checks.

Everything the OSC thread does with a datagram short of calling the server: `parse_packet` must
return messages or raise `OscParseError`, and each message for a known address must coerce to a
value or raise `ControlValueError`. Any other exception is a bug; so is a hang (the runner's time
bound catches it).
"""

from __future__ import annotations

import struct

from node_server.control.inventory import BY_ADDRESS, ControlValueError
from node_server.control.osc_packet import MAX_MESSAGES, Message, OscParseError, parse_packet

MAX_LEN = 65507  # the largest UDP payload over IPv4


def _s(text: str) -> bytes:
    raw = text.encode() + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def _bundle(*elements: bytes, timetag: int = 1) -> bytes:
    return b"#bundle\x00" + struct.pack(">Q", timetag) + b"".join(struct.pack(">i", len(e)) + e for e in elements)


_PROMPT = _s("/prompt") + _s(",s") + _s("turn it into a watercolour")
_WEIGHT = _s("/blend/2/weight") + _s(",f") + struct.pack(">f", 0.5)

SEEDS = [
    _PROMPT,
    _WEIGHT,
    _s("/ping"),
    _s("/seed") + _s(",h") + struct.pack(">q", 7),
    _s("/blend") + _s(",sfsf") + _s("oil") + struct.pack(">f", 0.7) + _s("neon") + struct.pack(">f", 0.3),
    _s("/pause") + _s(",T"),
    _s("/a") + _s(",[i[s]]bcrmtdNI") + struct.pack(">i", 1) + _s("x") + struct.pack(">i", 2) + b"ab\x00\x00"
    + bytes(12) + bytes(8) + bytes(8),  # c r m, t, d
    _bundle(_PROMPT, _bundle(_WEIGHT, timetag=2**40), timetag=2**63),
]


def fuzz_one(data: bytes) -> None:
    try:
        messages = parse_packet(data)
    except OscParseError as e:
        if not isinstance(e.reason, str) or not e.reason or "\n" in e.reason:
            raise AssertionError(f"parse error without a one-line reason: {e.reason!r}") from None
        return
    if len(messages) > MAX_MESSAGES:
        raise AssertionError(f"{len(messages)} messages: more than the bound")
    for message in messages:
        if not isinstance(message, Message) or not message.address.startswith("/"):
            raise AssertionError(f"not a message: {message!r}")
        control = BY_ADDRESS.get(message.address)
        if control is None:
            continue
        try:
            control.coerce(message.args)
        except ControlValueError as e:
            if not e.reason or "\n" in e.reason:
                raise AssertionError(f"value error without a one-line reason: {e.reason!r}") from None

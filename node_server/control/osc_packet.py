"""OSC 1.0 packets parsed defensively: one datagram in, its messages out, or one clear reason.

Why the project parses OSC itself: python-osc 1.10.2 (the newest release) loops forever on a bundle
element with a negative size, zero-pads a float that has no data bytes, skips unknown type tags
(applying the rest) and sorts bundle contents by time tag. Here every size is checked before it is
used, nesting depth and counts are bounded, and anything that is not exactly OSC rejects the whole
datagram, so a message is either applied as sent or not at all.

Rules (OSC 1.0, opensoundcontrol.org spec-1_0):
- A packet is a message (starts with '/') or a bundle ('#bundle\\0', an 8-byte time tag, then
  elements: an int32 size, a multiple of 4 and > 0, followed by that many bytes of message or
  bundle). Its size is a multiple of 4.
- Strings end with a NUL and are padded with NULs to a multiple of 4; they must be UTF-8.
  Blobs: an int32 size, the bytes, NUL padding to a multiple of 4.
- Type tags: the standard `i f s b`, the common extensions `h d t S c r m T F N I` and arrays
  `[ ]`. Any other tag rejects the message: its size is unknown, so nothing after it can be read.
- A message with no type tag string at all (older senders, as the spec allows) has no arguments.
- Time tags are read past and ignored: messages come out in datagram order, depth first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

MAX_BUNDLE_DEPTH = 8  # bundles inside bundles; the datagram itself is depth 0
MAX_MESSAGES = 1024  # per datagram, all bundles together
MAX_ARGS = 1024  # per message, array contents included
MAX_ARRAY_DEPTH = 8

BUNDLE_HEADER = b"#bundle\x00"

_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_INT64 = struct.Struct(">q")
_UINT64 = struct.Struct(">Q")
_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")


class OscParseError(ValueError):
    """The datagram is not exactly OSC; `reason` is user-facing (one line, no bytes dumped)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Message(NamedTuple):
    """One OSC message: its address and arguments as Python values (see `parse_packet`)."""

    address: str
    args: tuple


@dataclass(frozen=True)
class TimeTag:
    """A `t` argument (NTP seconds and fraction); no control accepts one."""

    seconds: int
    fraction: int


@dataclass(frozen=True)
class Char:
    """A `c` argument (one character sent as 32 bits); no control accepts one."""

    char: str


@dataclass(frozen=True)
class Rgba:
    """An `r` argument (32-bit RGBA colour); no control accepts one."""

    value: int


@dataclass(frozen=True)
class Midi:
    """An `m` argument (port, status, data1, data2); no control accepts one."""

    data: tuple[int, int, int, int]


def parse_packet(data: bytes) -> list[Message]:
    """Every message of one datagram in datagram order, or `OscParseError`.

    Values: `i`/`h` int, `f`/`d` float, `s`/`S` str, `b` bytes, `T`/`F` bool, `N` None,
    `I` float('inf'), `t`/`c`/`r`/`m` the small classes above, `[...]` a list.
    """
    data = bytes(data)
    if not data:
        raise OscParseError("empty packet")
    if len(data) % 4:  # OSC 1.0: always a multiple of 4; else it was cut short in transit
        raise OscParseError("size is not a multiple of 4")
    out: list[Message] = []
    _element(data, 0, len(data), 0, out)
    return out


def is_bundle(data: bytes) -> bool:
    return data.startswith(BUNDLE_HEADER)


def string_size(text: str) -> int:
    """Bytes an OSC-string takes on the wire (UTF-8, a NUL, padded to 4)."""
    return _padded(len(text.encode("utf-8")) + 1)


def _padded(n: int) -> int:
    return (n + 3) & ~3


def _element(data: bytes, start: int, end: int, depth: int, out: list[Message]) -> None:
    """Parse one message or bundle occupying data[start:end]; recursion is bounded by depth."""
    if data.startswith(BUNDLE_HEADER, start, end):
        _bundle(data, start, end, depth, out)
    elif data[start] == 0x2F:  # '/'
        out.append(_message(data, start, end))
        if len(out) > MAX_MESSAGES:
            raise OscParseError(f"more than {MAX_MESSAGES} messages in one packet")
    else:
        where = "packet" if depth == 0 else f"bundle element at byte {start}"
        raise OscParseError(f"{where} is neither an OSC message (starts with '/') nor a bundle ('#bundle')")


def _bundle(data: bytes, start: int, end: int, depth: int, out: list[Message]) -> None:
    if depth >= MAX_BUNDLE_DEPTH:
        raise OscParseError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}")
    pos = start + len(BUNDLE_HEADER) + 8  # the time tag is ignored (messages apply on arrival)
    if pos > end:
        raise OscParseError(f"bundle at byte {start} is shorter than its 16-byte header")
    while pos < end:
        if end - pos < 4:  # cannot happen while sizes are multiples of 4; kept as a guard
            raise OscParseError(f"bundle element at byte {pos}: size cut short")
        (size,) = _INT32.unpack_from(data, pos)
        pos += 4
        if size <= 0:
            raise OscParseError(f"bundle element at byte {pos - 4}: size {size} (must be above 0)")
        if size % 4:
            raise OscParseError(f"bundle element at byte {pos - 4}: size {size} is not a multiple of 4")
        if size > end - pos:
            raise OscParseError(f"bundle element at byte {pos - 4}: size {size} runs past the end ({end - pos} left)")
        _element(data, pos, pos + size, depth + 1, out)
        pos += size


def _string(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    nul = data.find(b"\x00", pos, end)
    if nul < 0:
        raise OscParseError(f"{what} at byte {pos} has no terminating NUL")
    stop = _padded(nul + 1 - pos) + pos
    if stop > end:
        raise OscParseError(f"{what} at byte {pos} is not padded to a multiple of 4")
    if data.count(b"\x00", nul, stop) != stop - nul:
        raise OscParseError(f"{what} at byte {pos} has non-NUL bytes in its padding")
    try:
        text = data[pos:nul].decode("utf-8")
    except UnicodeDecodeError:
        raise OscParseError(f"{what} at byte {pos} is not valid UTF-8") from None
    return text, stop


def _need(n: int, pos: int, end: int, tag: str) -> None:
    if end - pos < n:
        raise OscParseError(f"argument '{tag}' at byte {pos} needs {n} bytes, {end - pos} left")


def _message(data: bytes, start: int, end: int) -> Message:
    address, pos = _string(data, start, end, "address")
    if pos == end:  # no type tag string: an older sender's message without arguments
        return Message(address, ())
    if data[pos] != 0x2C:  # ','
        raise OscParseError(f"{shown_address(address)}: type tag string at byte {pos} does not start with ','")
    tags, pos = _string(data, pos, end, "type tag string")
    try:
        args, pos = _arguments(data, pos, end, tags[1:])
    except OscParseError as e:
        raise OscParseError(f"{shown_address(address)}: {e.reason}") from None
    if pos != end:
        raise OscParseError(f"{shown_address(address)}: {end - pos} bytes after the last argument")
    return Message(address, args)


def _arguments(data: bytes, pos: int, end: int, tags: str) -> tuple[tuple, int]:
    top: list[Any] = []
    stack = [top]  # open arrays; stack[-1] receives values
    count = 0
    for tag in tags:
        if tag == "[":
            if len(stack) > MAX_ARRAY_DEPTH:
                raise OscParseError(f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
            inner: list[Any] = []
            stack[-1].append(inner)
            stack.append(inner)
            continue
        if tag == "]":
            if len(stack) == 1:
                raise OscParseError("']' without '[' in the type tags")
            stack.pop()
            continue
        count += 1
        if count > MAX_ARGS:
            raise OscParseError(f"more than {MAX_ARGS} arguments")
        value, pos = _argument(data, pos, end, tag)
        stack[-1].append(value)
    if len(stack) != 1:
        raise OscParseError("'[' without ']' in the type tags")
    return tuple(top), pos


def _argument(data: bytes, pos: int, end: int, tag: str) -> tuple[Any, int]:
    if tag == "i":
        _need(4, pos, end, tag)
        return _INT32.unpack_from(data, pos)[0], pos + 4
    if tag == "f":
        _need(4, pos, end, tag)
        return _FLOAT32.unpack_from(data, pos)[0], pos + 4
    if tag in "sS":
        return _string(data, pos, end, f"argument '{tag}'")
    if tag == "b":
        _need(4, pos, end, tag)
        (size,) = _INT32.unpack_from(data, pos)
        if size < 0:
            raise OscParseError(f"blob at byte {pos} has size {size}")
        stop = pos + 4 + _padded(size)
        if stop > end:
            raise OscParseError(f"blob at byte {pos} of {size} bytes runs past the end")
        blob = data[pos + 4 : pos + 4 + size]
        if data.count(b"\x00", pos + 4 + size, stop) != stop - (pos + 4 + size):
            raise OscParseError(f"blob at byte {pos} has non-NUL bytes in its padding")
        return blob, stop
    if tag == "h":
        _need(8, pos, end, tag)
        return _INT64.unpack_from(data, pos)[0], pos + 8
    if tag == "d":
        _need(8, pos, end, tag)
        return _FLOAT64.unpack_from(data, pos)[0], pos + 8
    if tag == "t":
        _need(8, pos, end, tag)
        value = _UINT64.unpack_from(data, pos)[0]
        return TimeTag(value >> 32, value & 0xFFFFFFFF), pos + 8
    if tag == "c":
        _need(4, pos, end, tag)
        code = _UINT32.unpack_from(data, pos)[0]
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise OscParseError(f"char at byte {pos} is not a character ({code})")
        return Char(chr(code)), pos + 4
    if tag == "r":
        _need(4, pos, end, tag)
        return Rgba(_UINT32.unpack_from(data, pos)[0]), pos + 4
    if tag == "m":
        _need(4, pos, end, tag)
        return Midi(tuple(data[pos : pos + 4])), pos + 4  # type: ignore[arg-type]
    if tag == "T":
        return True, pos
    if tag == "F":
        return False, pos
    if tag == "N":
        return None, pos
    if tag == "I":
        return float("inf"), pos
    raise OscParseError(f"unknown type tag {tag!r}")


def shown_address(address: str, limit: int = 80) -> str:
    """An address as it can go into an error text: printable and short."""
    text = address if address.isprintable() else ascii(address)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The ZeroMQ frame protocol: two-frame messages, a small JSON header and the raw pixels.

Shared by the server (`bridges.zmq_server`) and the client (`bridges.zmq_client`), so both sides
agree on one validator. numpy only (no torch, no node_server import): the client must load in
TouchDesigner's Python. Validation looks only at the header and the byte count, so a hostile or
buggy header is rejected before anything big is allocated; decoding is zero-copy.

`parse_header` raises only `ProtocolError`, whatever the bytes: the header's size is capped, its
nesting depth is measured before `json` (which recurses once per level) builds anything, and
every number is checked to be finite and in range. See docs/PROTOCOL.md for the wire format.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

VERSION = 1
MAX_PIXELS = 16 * 1024 * 1024  # 16 megapixels (4096 x 4096)
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_DEPTH = 16  # nested arrays/objects in a header; the server's own output header uses 2
CHANNELS = (1, 3, 4)  # grey, RGB, RGBA
DTYPES = ("uint8",)
# The largest legal message body; the server also sets ZMQ_MAXMSGSIZE a little above this.
MAX_PIXEL_BYTES = MAX_PIXELS * max(CHANNELS)

__all__ = [
    "VERSION",
    "MAX_PIXELS",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_DEPTH",
    "CHANNELS",
    "ProtocolError",
    "FrameHeader",
    "parse_header",
    "decode_message",
    "encode_frame",
    "encode_header",
]


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text says what was wrong."""


@dataclass(frozen=True)
class FrameHeader:
    """A validated header. `extra` holds the fields this side does not interpret (e.g. `server`)."""

    id: int
    w: int
    h: int
    c: int
    dtype: str = "uint8"
    t: float | None = None
    v: int = VERSION
    extra: dict[str, Any] | None = None

    @property
    def nbytes(self) -> int:
        return self.w * self.h * self.c

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.h, self.w, self.c)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra or {})
        d.update(v=self.v, id=self.id, w=self.w, h=self.h, c=self.c, dtype=self.dtype)
        if self.t is not None:
            d["t"] = self.t
        return d


def _reject_constant(name: str):
    raise ProtocolError(f"header is not strict JSON ({name} is not allowed)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ProtocolError(f"header number {text[:40]} is out of range")
    return value


# A JSON string, or an unterminated one up to the end of the text: brackets inside one do not
# nest. The pattern matches from every quote it starts at (no failed attempts to backtrack
# from), so the scan is linear in the header's length even for hostile input.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str) -> int:
    """The deepest array/object nesting in JSON `text`, found without parsing it.

    For text that is not valid JSON the count may be too high, never too low for the part that
    `json` would read before it fails, so a depth check before `json.loads` bounds its recursion.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.encode("ascii"), np.uint8)
    opens = (steps == ord("[")) | (steps == ord("{"))
    return int(np.cumsum(np.where(opens, 1, -1), dtype=np.int64).max())


def _loads_header(raw: bytes | memoryview) -> Any:
    """UTF-8 JSON with a size cap, a depth cap and finite numbers only; raises `ProtocolError`."""
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {size} bytes; the maximum is {MAX_HEADER_BYTES}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from None
    depth = nesting_depth(text)
    if depth > MAX_HEADER_DEPTH:
        raise ProtocolError(f"header nests {depth} levels deep; the maximum is {MAX_HEADER_DEPTH}")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:  # ValueError: also ints of over 4300 digits
        raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from None


def _int_field(d: dict, name: str) -> int:
    if name not in d:
        raise ProtocolError(f"header misses field {name!r}")
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"header field {name!r} must be an integer, got {_shown(v)}")
    return v


def _shown(value: Any) -> str:
    """A value for an error message, cut short (a hostile header may hold huge values)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "an integer of " + str(len(str(abs(value)))) + " digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_header(raw: bytes | memoryview) -> FrameHeader:
    """Validate one header frame (UTF-8 JSON object); raises `ProtocolError` and nothing else."""
    d = _loads_header(raw)
    if not isinstance(d, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(d).__name__}")
    v = _int_field(d, "v")
    if v != VERSION:
        raise ProtocolError(f"unsupported protocol version {_shown(v)}; this server speaks v={VERSION}")
    fid = _int_field(d, "id")
    if not -(2**63) <= fid < 2**63:
        raise ProtocolError(f"header field 'id' must fit in 64 bits, got {_shown(fid)}")
    w = _int_field(d, "w")
    h = _int_field(d, "h")
    c = _int_field(d, "c")
    if w < 1 or h < 1:
        raise ProtocolError(f"frame size must be at least 1x1, got {_shown(w)}x{_shown(h)}")
    if w > MAX_PIXELS or h > MAX_PIXELS or w * h > MAX_PIXELS:
        raise ProtocolError(f"frame {_shown(w)}x{_shown(h)} is over the {MAX_PIXELS // (1024 * 1024)} megapixel limit")
    if c not in CHANNELS:
        raise ProtocolError(f"channels c={_shown(c)} not supported; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    dtype = d.get("dtype", None)
    if dtype is None:
        raise ProtocolError("header misses field 'dtype'")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"dtype {_shown(dtype)} not supported; expected 'uint8'")
    t = d.get("t", None)
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ProtocolError(f"header field 't' must be a finite number, got {_shown(t)}")
        try:
            t = float(t)  # an int too large for a float raises OverflowError
        except OverflowError:
            raise ProtocolError(f"header field 't' must be a finite number, got {_shown(t)}") from None
    known = ("v", "id", "w", "h", "c", "dtype", "t")
    extra = {k: val for k, val in d.items() if k not in known} or None
    return FrameHeader(id=fid, w=w, h=h, c=c, dtype=dtype, t=t, v=v, extra=extra)


def decode_message(parts: Sequence[Any]) -> tuple[FrameHeader, np.ndarray]:
    """Validate a received multipart message and view its pixels as an HxWxC uint8 array.

    `parts` are `bytes`, `memoryview`s or `zmq.Frame`s. The array shares memory with the
    message (no copy) and keeps it alive.
    """
    if len(parts) != 2:
        raise ProtocolError(f"expected 2 message frames (header, pixels), got {len(parts)}")
    head, body = (_buffer(p) for p in parts)
    header = parse_header(head)
    if body.nbytes != header.nbytes:
        raise ProtocolError(
            f"pixel frame is {body.nbytes} bytes but the header says {header.w}x{header.h}x{header.c}"
            f" uint8 = {header.nbytes} bytes"
        )
    pixels = np.frombuffer(body, dtype=np.uint8).reshape(header.shape)
    return header, pixels


def _buffer(part: Any) -> memoryview:
    buf = getattr(part, "buffer", None)  # zmq.Frame
    if buf is not None:
        return buf
    return memoryview(part)


def encode_header(fields: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON for one header dict."""
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_frame(
    frame: np.ndarray, id: int, t: float | None = None, extra: dict[str, Any] | None = None
) -> list[Any]:
    """The two frames of one message for an HxW, HxWx1, HxWx3 or HxWx4 uint8 array.

    The pixel frame is the array itself when it is C-contiguous (send with copy=False to avoid
    a copy), otherwise a contiguous copy.
    """
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise ProtocolError(f"frames must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in CHANNELS:
        raise ProtocolError(f"frame must be HxW or HxWxC with C in {CHANNELS}, got shape {arr.shape}")
    h, w, c = arr.shape
    if h < 1 or w < 1 or w * h > MAX_PIXELS:
        raise ProtocolError(f"frame size {w}x{h} is empty or over the pixel limit")
    if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
        raise ProtocolError(f"id must be an integer, got {id!r}")
    fields: dict[str, Any] = dict(extra or {})
    fields.update(v=VERSION, id=int(id), w=w, h=h, c=c, dtype="uint8")
    if t is not None:
        fields["t"] = float(t)
    return [encode_header(fields), np.ascontiguousarray(arr)]

"""The per-frame NDI metadata node-server reads and writes: `<node_server id="..." t="..."/>`.

NDI video frames carry an optional XML string. The server's NDI output puts the output's frame id,
the input's `t` (when known) and the server's latency in it, like the ZeroMQ output header, so a
client can match outputs to inputs. An NDI input may carry `<node_server t="SECONDS"/>` (the
sender's own clock, as ZeroMQ's `t`); it is echoed back as the output's `t`. Without it, `t` is
the frame's NDI timestamp (the sending runtime's clock at send, in seconds since 1970).
Parsing is a bounded regular-expression scan, never an XML parser: the text comes from the network.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_METADATA = 4096  # longer metadata is not scanned
_ELEMENT = re.compile(r"<node_server\b([^<>]{0,1024})/?>")
_T_ATTR = re.compile(r"""\bt\s*=\s*(["'])([^"'<>]{1,64})\1""")
NDI_TIMESTAMP_UNDEFINED = (1 << 63) - 1  # NDIlib_recv_timestamp_undefined
_TICKS = 10_000_000  # NDI times are in 100 ns units


def parse_t(metadata: Any) -> float | None:
    """The `t` attribute of a `<node_server .../>` element in `metadata`, or None."""
    if not isinstance(metadata, str) or not metadata or len(metadata) > MAX_METADATA:
        return None
    element = _ELEMENT.search(metadata)
    if element is None:
        return None
    attr = _T_ATTR.search(element.group(1))
    if attr is None:
        return None
    try:
        value = float(attr.group(2))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def timestamp_seconds(timestamp: Any) -> float | None:
    """An NDI frame timestamp (100 ns units since 1970) in seconds, or None when undefined."""
    try:
        ticks = int(timestamp)
    except (TypeError, ValueError, OverflowError):
        return None
    if ticks <= 0 or ticks >= NDI_TIMESTAMP_UNDEFINED:
        return None
    return ticks / _TICKS


def frame_t(metadata: Any, timestamp: Any) -> float | None:
    """The `t` of a received frame: the sender's own `t` when it sent one, else the NDI timestamp."""
    t = parse_t(metadata)
    return t if t is not None else timestamp_seconds(timestamp)


def format_output(fields: dict[str, Any]) -> str:
    """`<node_server id=".." t=".." latency_ms=".."/>` for an output's header fields."""
    parts = [f'id="{int(fields.get("id", 0))}"']
    t = fields.get("t")
    if isinstance(t, (int, float)) and math.isfinite(t):
        parts.append(f't="{float(t)!r}"')
    server = fields.get("server") or {}
    latency = server.get("latency_ms") if isinstance(server, dict) else None
    if isinstance(latency, (int, float)) and math.isfinite(latency):
        parts.append(f'latency_ms="{float(latency):.3f}"')
    return f"<node_server {' '.join(parts)}/>"

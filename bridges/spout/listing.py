"""The Spout senders running on this machine (for `node-server spout-list`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._spoutgl import load_spoutgl


@dataclass(frozen=True)
class SenderEntry:
    name: str
    width: int | None
    height: int | None
    active: bool


def list_senders(spoutgl: Any = None) -> list[SenderEntry]:
    """Every registered sender with its size (None when Spout cannot read its information)."""
    module = load_spoutgl(spoutgl)
    with module.SpoutReceiver() as receiver:
        names = list(receiver.getSenderList())
        active = receiver.getActiveSender()
        out = []
        for name in names:
            info = receiver.getSenderInfo(name)
            width = getattr(info, "width", None) if info is not None else None
            height = getattr(info, "height", None) if info is not None else None
            out.append(SenderEntry(name, width, height, bool(active) and name == active))
    return out

"""`node-server spout-list`: the Spout senders on this machine (names to pass to --spout-in)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from bridges.spout import SpoutUnavailable, list_senders

    from ..errors import NodeServerError

    try:
        senders = list_senders()
    except SpoutUnavailable as exc:
        raise NodeServerError(str(exc)) from None
    if not senders:
        print("no Spout senders running")
        return 0
    for s in senders:
        size = f"{s.width}x{s.height}" if s.width is not None else "size unknown"
        print(f'"{s.name}"  {size}{"  [active]" if s.active else ""}')
    return 0

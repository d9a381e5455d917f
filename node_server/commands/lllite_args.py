"""The temporal flags `serve` and `render` share: ControlNet-LLLite's (docs/LLLITE.md; the checks and
the conversions of their values live with the server's settings, node_server/server/lllite_settings.py)
and the temporal output blend's."""

from __future__ import annotations

import argparse


def add_lllite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lllite", default=None, metavar="FILE",
                   help="a ControlNet-LLLite .safetensors adapter for the model's U-Net (dreamlite-lllite's format "
                        "for DreamLite, kohya-ss's for SD; node-server synth-lllite writes a random one), or "
                        "demo-temporal: the demo model's trained temporal adapter (less flicker on moving video)")
    p.add_argument("--lllite-blocks", default=None, metavar="BLOCKS",
                   help="hook only these parts of the adapter: all (default) or a comma list of down, mid, up "
                        "(the paper's runtime: down)")
    p.add_argument("--lllite-refresh", type=int, default=None, metavar="N",
                   help="run the adapter's conditioning (flow + CNNs) every N batches (default 1; OSC /lllite/refresh)")
    p.add_argument("--lllite-strength", type=float, default=None, metavar="F",
                   help="adapter strength 0..2 (default 1; OSC /lllite/strength)")
    p.add_argument("--lllite-source", default=None, choices=("temporal", "frame"),
                   help="conditioning image: temporal (previous output warped by optical flow, default) or frame")


def add_temporal_blend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temporal-blend", type=float, default=None, metavar="A",
                   help="less flicker on moving video: carry this share (0..0.9) of the previous output, moved "
                        "along the optical flow, into each output frame (default 0 = off; OSC /temporal/blend)")

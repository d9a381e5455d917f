"""The ControlNet-LLLite flags `serve` and `render` share (docs/LLLITE.md), checked before a model loads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError


def add_lllite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lllite", default=None, metavar="FILE",
                   help="a ControlNet-LLLite .safetensors adapter for the model's U-Net (kohya-ss format; "
                        "node-server synth-lllite writes a random one)")
    p.add_argument("--lllite-blocks", default=None, metavar="BLOCKS",
                   help="hook only these parts of the adapter: all (default) or a comma list of down, mid, up")
    p.add_argument("--lllite-refresh", type=int, default=None, metavar="N",
                   help="run the adapter's conditioning (flow + CNNs) every N batches (default 1; OSC /lllite/refresh)")
    p.add_argument("--lllite-strength", type=float, default=None, metavar="F",
                   help="adapter strength 0..2 (default 1; OSC /lllite/strength)")
    p.add_argument("--lllite-source", default=None, choices=("temporal", "frame"),
                   help="conditioning image: temporal (previous output warped by optical flow, default) or frame")


def check_lllite(values: dict[str, Any]) -> None:
    """Fail early and clearly: a missing file, bad blocks, or LLLite settings without a file."""
    from ..engine.lllite import parse_blocks

    file = values.get("lllite")
    if file is None:
        given = [k for k in ("lllite_blocks", "lllite_source") if values.get(k) is not None]
        if given:
            raise ModelLoadError(f"--{given[0].replace('_', '-')} needs --lllite FILE")
        return
    if not Path(file).expanduser().is_file():
        raise ModelLoadError(f"LLLite file not found: {file}")
    parse_blocks(values.get("lllite_blocks"))
    source = values.get("lllite_source")
    if source is not None and source not in ("temporal", "frame"):
        raise ModelLoadError(f"lllite_source must be temporal or frame, got {source!r}")


def engine_options(values: dict[str, Any]) -> dict[str, Any]:
    """`build_engine` keywords for the adapter (empty without one)."""
    if values.get("lllite") is None:
        return {}
    return {"lllite": str(Path(values["lllite"]).expanduser()), "lllite_blocks": values.get("lllite_blocks"),
            "lllite_source": values.get("lllite_source") or "temporal"}


def param_changes(values: dict[str, Any]) -> dict[str, Any]:
    """`Params` changes for the adapter's run-time settings that were given."""
    return {k: values[k] for k in ("lllite_refresh", "lllite_strength") if values.get(k) is not None}

"""The ControlNet-LLLite settings (docs/LLLITE.md) that `serve`'s config and `render` share: checked
before a model loads, then split into the engine's build keywords and its run-time parameters."""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError


def check_lllite(values: dict[str, Any]) -> None:
    """Fail early and clearly: a missing or unreadable file, bad blocks, or LLLite settings without
    a file. (The file's shapes are checked against the U-Net once the model has loaded.)"""
    from ..engine.lllite.adapter import parse_blocks

    file = values.get("lllite")
    if file is None:
        given = [k for k in ("lllite_blocks", "lllite_source") if values.get(k) is not None]
        if given:
            raise ModelLoadError(f"--{given[0].replace('_', '-')} needs --lllite FILE")
        return
    from ..models.lllite_file import probe_lllite, resolve_adapter

    path = resolve_adapter(file)  # a file, or a built-in adapter's name (demo-temporal)
    if not path.is_file():
        raise ModelLoadError(f"LLLite file not found: {file}")
    probe_lllite(path)  # not an adapter file: fail now, not after the model loads
    parse_blocks(values.get("lllite_blocks"))
    source = values.get("lllite_source")
    if source is not None and source not in ("temporal", "frame"):
        raise ModelLoadError(f"lllite_source must be temporal or frame, got {source!r}")


def engine_options(values: dict[str, Any]) -> dict[str, Any]:
    """`build_engine` keywords for the adapter (empty without one)."""
    if values.get("lllite") is None:
        return {}
    from ..models.lllite_file import resolve_adapter

    return {"lllite": str(resolve_adapter(values["lllite"])), "lllite_blocks": values.get("lllite_blocks"),
            "lllite_source": values.get("lllite_source") or "temporal"}


def param_changes(values: dict[str, Any]) -> dict[str, Any]:
    """`Params` changes for the adapter's run-time settings that were given."""
    return {k: values[k] for k in ("lllite_refresh", "lllite_strength") if values.get(k) is not None}

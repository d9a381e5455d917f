"""Presets: small flat TOML files recalled by name over OSC (`/preset`, `/preset/save`).

Built-in presets live in the repository's `presets/` folder; user presets are saved to a
separate folder and shadow built-ins of the same name, so saving never edits shipped files.
Values are checked with the same inventory rules as OSC messages, so a preset can never apply
something `/seed` or `/steps` would have rejected.

A preset name is recalled over the network, so loading holds for any file: nothing outside the
preset folders is read (a file that links elsewhere is refused), and a file of junk, a deep
nesting or a huge one is a one-line error (`node_server.toml_file`), never a traceback.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from node_server.control.inventory import PARAM_CONTROLS, ControlValueError, check_preset_name
from node_server.errors import NodeServerError
from node_server.toml_file import read_toml

PRESET_KEYS = ("prompt", "seed", "steps", "strength", "refresh")
META_KEYS = ("description",)
SUFFIX = ".toml"
MAX_PRESET_BYTES = 64 * 1024  # a preset is a few lines (a prompt is at most 500 characters)

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "presets"


def default_user_dir() -> Path:
    """Per-user preset folder: %APPDATA%/node-server/presets or $XDG_CONFIG_HOME/node-server/presets."""
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "node-server" / "presets"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "node-server" / "presets"


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """One TOML value for the flat types presets use (str, int, float, bool)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return _toml_string(value)
    raise TypeError(f"cannot write {type(value).__name__} to a preset")


def dump_flat_toml(values: Mapping[str, Any]) -> str:
    """Serialise a flat mapping of bare keys to TOML (no tables, no arrays: presets need none)."""
    lines = []
    for key, value in values.items():
        if not key.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"not a bare TOML key: {key!r}")
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def _inside(folder: Path, path: Path) -> bool:
    """True when `path`, with every link followed, is in `folder` (itself possibly a link)."""
    try:
        return path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except (OSError, RuntimeError):  # a broken link or a loop of links
        return False


def _check_values(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate preset keys/values with the inventory's rules; return the params to apply."""
    params: dict[str, Any] = {}
    for key, value in values.items():
        if key in META_KEYS:
            if not isinstance(value, str):
                raise NodeServerError(f"{where}: 'description' must be a string")
            continue
        if key not in PRESET_KEYS:
            raise NodeServerError(
                f"{where}: unknown key {key!r} (allowed: {', '.join(PRESET_KEYS + META_KEYS)})"
            )
        try:
            params[key] = PARAM_CONTROLS[key].coerce([value])
        except ControlValueError as e:
            raise NodeServerError(f"{where}: {key}: {e.reason}") from None
    return params


class PresetStore:
    """Built-in presets (read-only) plus a user folder that `save` writes to."""

    def __init__(self, builtin_dir: str | os.PathLike | None = BUILTIN_DIR, user_dir: str | os.PathLike | None = None):
        self.builtin_dir = Path(builtin_dir) if builtin_dir is not None else None
        self.user_dir = Path(user_dir) if user_dir is not None else None

    def _dirs(self) -> list[Path]:
        return [d for d in (self.user_dir, self.builtin_dir) if d is not None]

    def names(self) -> list[str]:
        """All recallable names, sorted (a user preset and a built-in of one name count once)."""
        found: set[str] = set()
        for d in self._dirs():
            if d.is_dir():
                for p in d.glob("*" + SUFFIX):
                    if not _inside(d, p):
                        continue  # links out of the folder: never read, so not listed
                    name = p.name[: -len(SUFFIX)]
                    try:
                        found.add(check_preset_name(name))
                    except NodeServerError:
                        continue  # a stray file with an unusable name is not a preset
        return sorted(found)

    def path(self, name: str) -> Path:
        """The file `recall(name)` reads: the user's if present, else the built-in one."""
        check_preset_name(name)
        for d in self._dirs():
            p = d / (name + SUFFIX)
            if p.is_file():
                if not _inside(d, p):
                    raise NodeServerError(f"preset {name!r} ({p}) links outside its folder {d}; "
                                          "presets are only read from their folders")
                return p
        known = self.names()
        listing = ", ".join(known) if known else "none"
        raise NodeServerError(f"no preset named {name!r} (available: {listing})")

    def is_builtin(self, name: str) -> bool:
        """True when `name` resolves to a shipped (not user) preset."""
        return self.builtin_dir is not None and self.path(name).parent == self.builtin_dir

    def load(self, name: str) -> dict[str, Any]:
        """Raw validated file content including `description` (for listings)."""
        p = self.path(name)
        where = f"preset {name!r} ({p})"
        raw = read_toml(p, where, max_bytes=MAX_PRESET_BYTES)
        params = _check_values(raw, where)
        if "description" in raw:
            params["description"] = raw["description"]
        return params

    def recall(self, name: str) -> dict[str, Any]:
        """The parameters a preset sets (never `description`); raises `NodeServerError`."""
        params = self.load(name)
        params.pop("description", None)
        return params

    def save(self, name: str, params: Mapping[str, Any], *, description: str | None = None) -> Path:
        """Write the preset keys found in `params` to the user folder (other keys are ignored,
        so `save(name, target.current_params())` works); returns the file written."""
        check_preset_name(name)
        if self.user_dir is None:
            raise NodeServerError("cannot save presets: no user preset folder is configured")
        values = {k: (str(params[k]) if k == "refresh" else params[k]) for k in PRESET_KEYS if k in params}
        if not values:
            raise NodeServerError(f"preset {name!r}: nothing to save (none of {', '.join(PRESET_KEYS)} given)")
        checked = _check_values(values, f"preset {name!r}")
        if description is not None:
            checked = {"description": str(description), **checked}
        try:
            self.user_dir.mkdir(parents=True, exist_ok=True)
            target = self.user_dir / (name + SUFFIX)
            fd, tmp = tempfile.mkstemp(dir=self.user_dir, prefix=".tmp-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(dump_flat_toml(checked))
                os.replace(tmp, target)  # atomic: a crash never leaves half a preset
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise NodeServerError(f"cannot save preset {name!r} to {self.user_dir}: {e.strerror or e}") from None
        return target

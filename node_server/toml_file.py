"""Reading a small TOML file (the `--config` file, a preset) with one-line errors for any bytes.

Whatever the path points at (a folder, a device, a file of junk, a nesting a thousand levels
deep, a number of a million digits), the caller gets the table or a `NodeServerError` whose text
says what was wrong, never a traceback: these files come from users and from the network (a
preset recalled over OSC), so the loader must hold for every input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

from .errors import NodeServerError

MAX_BYTES = 1024 * 1024  # a config file or a preset is a few lines


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text; `where` starts every error message (e.g. "config file x.toml")."""
    try:
        return tomllib.loads(text)
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise NodeServerError(f"{where}: not valid TOML: values nest too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, and int() refusing a number of 4300+ digits
        raise NodeServerError(f"{where}: not valid TOML: {_brief(exc)}") from None


def read_toml(path: str | os.PathLike, where: str, *, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Read and parse the regular file at `path`, of at most `max_bytes` bytes, as UTF-8 TOML."""
    p = Path(path)
    try:
        if not p.exists():
            raise NodeServerError(f"{where}: does not exist")
        if p.is_dir():
            raise NodeServerError(f"{where}: is a folder, not a file")
        if not p.is_file():  # a device (/dev/zero), a pipe, a socket: reading could never end
            raise NodeServerError(f"{where}: is not a regular file")
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise NodeServerError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path with a NUL byte
        raise NodeServerError(f"{where}: cannot be read: {exc}") from None
    if len(data) > max_bytes:
        raise NodeServerError(f"{where}: is larger than {max_bytes // 1024} KiB; expected a short TOML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NodeServerError(
            f"{where}: is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    return parse_toml(text, where)


def _brief(exc: Exception, limit: int = 160) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

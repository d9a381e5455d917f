"""Frame sizes as users write them: `512` (square) or `WxH` such as `448x256`.

One parser for every entry point (`serve --size`, `render --size`, the `size` key of a config file),
kept free of torch so argument checking stays fast. The engine's order is (height, width); people
write width first, as video sizes are written (1920x1080).
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ParamError

SIZE_MIN, SIZE_MAX, SIZE_STEP = 32, 4096, 32
_SIZE_RE = re.compile(r"(\d{1,9})(?:\s*[x×X]\s*(\d{1,9}))?")


def parse_size(value: Any) -> tuple[int, int]:
    """`512`, `"512"`, `"448x256"` (width x height) or a (height, width) pair -> (height, width),
    each a multiple of 32 in 32..4096; raises `ParamError("size", ...)` with a one-line reason."""
    if isinstance(value, bool):
        raise ParamError("size", f"expected 512 or WxH such as 448x256, got {value!r}")
    if isinstance(value, int):
        h = w = value
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        h, w = value
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip())
        if not m:
            raise ParamError("size", f"expected 512 or WxH such as 448x256, got {value!r}")
        w = int(m.group(1))
        h = int(m.group(2)) if m.group(2) else w
    else:
        raise ParamError("size", f"expected 512 or WxH such as 448x256, got {value!r}")
    for name, v in (("width", w), ("height", h)):
        if not (SIZE_MIN <= v <= SIZE_MAX and v % SIZE_STEP == 0):
            raise ParamError("size", f"{name} must be a multiple of {SIZE_STEP} in {SIZE_MIN}..{SIZE_MAX}, got {v}")
    return h, w


def size_text(size: "int | tuple[int, int]") -> str:
    """(height, width) or a square side -> `WxH`, as users write it."""
    h, w = (size, size) if isinstance(size, int) else size
    return f"{w}x{h}"

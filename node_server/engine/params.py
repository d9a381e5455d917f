"""Validated stream parameters.

Every way a parameter can change (CLI flag, OSC message, preset, config file) goes through
`Params.replace`, so there is one place that says which values are legal and why.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParamError

PROMPT_MAX_CHARS = 500
SEED_MAX = 2**31 - 1
STEPS_RANGE = (1, 4)
BATCH_RANGE = (1, 16)
REFRESH_EVERY_MAX = 1000

_EVERY_RE = re.compile(r"^every[:=\s-]?(\d+)$")


@dataclass(frozen=True)
class RefreshPolicy:
    """When the conditioning encoder runs again without a prompt change.

    - `on-change`: only when the prompt changes (text plus the latest frame at that moment);
    - `every:N`: also every N batches, the encoder seeing the newest frame;
    - `every-batch`: every batch, each frame of the batch seen by the encoder (the paper's point).
    """

    kind: str = "on-change"  # "on-change" | "every" | "every-batch"
    every: int = 0

    @classmethod
    def parse(cls, text: "str | RefreshPolicy") -> "RefreshPolicy":
        if isinstance(text, RefreshPolicy):
            return text
        if not isinstance(text, str):
            raise ParamError("refresh", f"expected a policy string, got {type(text).__name__}")
        t = text.strip().lower().replace("_", "-")
        if t in ("on-change", "onchange", "change"):
            return cls("on-change", 0)
        if t in ("every-batch", "everybatch", "batch", "every:batch"):
            return cls("every-batch", 0)
        m = _EVERY_RE.match(t)
        if m:
            n = int(m.group(1))
            if not 1 <= n <= REFRESH_EVERY_MAX:
                raise ParamError("refresh", f"every:N needs N in 1..{REFRESH_EVERY_MAX}, got {n}")
            return cls("every-batch", 0) if n == 1 else cls("every", n)
        raise ParamError("refresh", f"unknown policy {text!r}; expected 'on-change', 'every:N' or 'every-batch'")

    def __str__(self) -> str:
        return f"every:{self.every}" if self.kind == "every" else self.kind

    def due(self, batch_index: int) -> bool:
        """Whether the batch with this running index should refresh the conditioning."""
        if self.kind == "every-batch":
            return True
        if self.kind == "every":
            return batch_index % self.every == 0
        return False


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ParamError(name, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ParamError(name, f"expected an integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ParamError(name, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str):
        try:
            v = float(value.strip())
        except ValueError:
            raise ParamError(name, f"expected a number, got {value!r}") from None
    else:
        raise ParamError(name, f"expected a number, got {value!r}")
    if v != v or v in (float("inf"), float("-inf")):
        raise ParamError(name, f"expected a finite number, got {value!r}")
    return v


def _in_range(name: str, v, lo, hi):
    if not lo <= v <= hi:
        raise ParamError(name, f"must be {lo}..{hi}, got {v}")
    return v


def _check_prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise ParamError("prompt", f"expected text, got {type(value).__name__}")
    if len(value) > PROMPT_MAX_CHARS:
        raise ParamError("prompt", f"is {len(value)} characters; the maximum is {PROMPT_MAX_CHARS}")
    if "\x00" in value:
        raise ParamError("prompt", "contains a NUL character")
    return value


_CHECKS = {
    "prompt": _check_prompt,
    "seed": lambda v: _in_range("seed", _as_int("seed", v), 0, SEED_MAX),
    "steps": lambda v: _in_range("steps", _as_int("steps", v), *STEPS_RANGE),
    "strength": lambda v: _strength(v),
    "batch_size": lambda v: _in_range("batch_size", _as_int("batch_size", v), *BATCH_RANGE),
    "refresh": RefreshPolicy.parse,
}


def _strength(value: Any) -> float:
    v = _as_float("strength", value)
    if not 0.0 < v <= 1.0:
        raise ParamError("strength", f"must be in (0, 1] (1 = start from pure noise), got {v}")
    return v


@dataclass(frozen=True)
class Params:
    """The parameters of the stream. Immutable: a change makes a new, validated value."""

    prompt: str = ""
    seed: int = 0
    steps: int = 1
    strength: float = 1.0
    batch_size: int = 1
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)

    def replace(self, **changes: Any) -> "Params":
        """A copy with `changes` applied; all values are checked before any is applied."""
        unknown = sorted(set(changes) - set(_CHECKS))
        if unknown:
            raise ParamError(unknown[0], f"unknown parameter; known: {', '.join(_CHECKS)}")
        checked = {name: _CHECKS[name](value) for name, value in changes.items()}
        return dataclasses.replace(self, **checked)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["refresh"] = str(self.refresh)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Params":
        return cls().replace(**d)

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


BLEND_SLOTS = 4
BLEND_WEIGHT_RANGE = (0.0, 1.0)
SEED_MODES = ("fixed", "per-frame")
CFG_TYPES = ("none", "self")
GUIDANCE_RANGE = (1.0, 5.0)
LLLITE_STRENGTH_RANGE = (0.0, 2.0)
LLLITE_REFRESH_RANGE = (1, 1000)
TEMPORAL_BLEND_RANGE = (0.0, 0.9)  # engine/output_blend.py: the share of the previous output carried


def _weight(name: str, value: Any) -> float:
    return _in_range(name, _as_float(name, value), *BLEND_WEIGHT_RANGE)


def _pairs(name: str, value: Any, first) -> tuple:
    """A weighted list: pairs, or a flat alternating list [x1, w1, x2, w2, ...]; at most BLEND_SLOTS
    pairs. Returned padded to BLEND_SLOTS slots (unused slots have weight 0)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ParamError(name, f"expected a list of (value, weight) pairs, got {type(value).__name__}")
    items = list(value)
    if items and not all(isinstance(v, (list, tuple)) for v in items):
        if len(items) % 2:
            raise ParamError(name, f"expected alternating value/weight arguments, got {len(items)} (odd)")
        items = [items[i : i + 2] for i in range(0, len(items), 2)]
    if len(items) > BLEND_SLOTS:
        raise ParamError(name, f"at most {BLEND_SLOTS} pairs, got {len(items)}")
    out = []
    for pair in items:
        if len(pair) != 2:
            raise ParamError(name, f"expected (value, weight) pairs, got {pair!r}")
        out.append((first(pair[0]), _weight(name, pair[1])))
    pad = (first.empty, 0.0)
    return tuple(out) + (pad,) * (BLEND_SLOTS - len(out))


def _blend_prompt(value: Any) -> str:
    return _check_prompt(value)


def _blend_seed(value: Any) -> int:
    return _in_range("seed", _as_int("seed", value), 0, SEED_MAX)


_blend_prompt.empty = ""  # type: ignore[attr-defined]
_blend_seed.empty = 0  # type: ignore[attr-defined]


def _choice(name: str, options: tuple[str, ...]):
    def check(value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in options:
            raise ParamError(name, f"must be one of {', '.join(options)}, got {value!r}")
        return text
    return check


# Per-slot keys (`blend_2_weight`) change one slot of `blend` / `seed_blend`: (field, slot, part).
SLOT_KEYS: dict[str, tuple[str, int, int]] = {}
for _i in range(1, BLEND_SLOTS + 1):
    SLOT_KEYS[f"blend_{_i}_prompt"] = ("blend", _i - 1, 0)
    SLOT_KEYS[f"blend_{_i}_weight"] = ("blend", _i - 1, 1)
    SLOT_KEYS[f"seed_blend_{_i}_seed"] = ("seed_blend", _i - 1, 0)
    SLOT_KEYS[f"seed_blend_{_i}_weight"] = ("seed_blend", _i - 1, 1)


def _slot_check(key: str):
    field_name, _, part = SLOT_KEYS[key]
    if part == 1:
        return lambda v: _weight(key, v)
    return _blend_prompt if field_name == "blend" else (lambda v: _in_range(key, _as_int(key, v), 0, SEED_MAX))


_CHECKS = {
    "prompt": _check_prompt,
    "seed": lambda v: _in_range("seed", _as_int("seed", v), 0, SEED_MAX),
    "steps": lambda v: _in_range("steps", _as_int("steps", v), *STEPS_RANGE),
    "strength": lambda v: _strength(v),
    "batch_size": lambda v: _in_range("batch_size", _as_int("batch_size", v), *BATCH_RANGE),
    "refresh": RefreshPolicy.parse,
    "blend": lambda v: _pairs("blend", v, _blend_prompt),
    "seed_blend": lambda v: _pairs("seed_blend", v, _blend_seed),
    "seed_mode": _choice("seed_mode", SEED_MODES),
    "cfg": _choice("cfg", CFG_TYPES),
    "guidance": lambda v: _in_range("guidance", _as_float("guidance", v), *GUIDANCE_RANGE),
    "lllite_strength": lambda v: _in_range("lllite_strength", _as_float("lllite_strength", v), *LLLITE_STRENGTH_RANGE),
    "lllite_refresh": lambda v: _in_range("lllite_refresh", _as_int("lllite_refresh", v), *LLLITE_REFRESH_RANGE),
    "temporal_blend": lambda v: _in_range("temporal_blend", _as_float("temporal_blend", v), *TEMPORAL_BLEND_RANGE),
}
_CHECKS.update({key: _slot_check(key) for key in SLOT_KEYS})

_NO_BLEND = (("", 0.0),) * BLEND_SLOTS
_NO_SEED_BLEND = ((0, 0.0),) * BLEND_SLOTS


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
    # Prompt blending (SD-class engines): BLEND_SLOTS (prompt, weight) slots; while any weight is
    # above 0 the weighted mix of the slots' embeddings replaces `prompt` (see docs/SD_MODELS.md).
    blend: tuple = _NO_BLEND
    # Seed blending: (seed, weight) slots; while any weight is above 0 they replace `seed`.
    seed_blend: tuple = _NO_SEED_BLEND
    seed_mode: str = "fixed"  # "fixed": one noise for every frame; "per-frame": new noise each frame
    cfg: str = "none"  # residual classifier-free guidance: "none" or "self" (SD-class engines)
    guidance: float = 1.2  # guidance scale when cfg is "self"
    # ControlNet-LLLite (engines started with an adapter; see docs/LLLITE.md): the adapter's
    # strength, and how often (every N batches) its conditioning CNNs run.
    lllite_strength: float = 1.0
    lllite_refresh: int = 1
    # The temporal output blend (engine/output_blend.py): the share of the previous output, carried
    # along the motion, in each output frame; 0 = off.
    temporal_blend: float = 0.0

    def replace(self, **changes: Any) -> "Params":
        """A copy with `changes` applied; all values are checked before any is applied.

        Whole lists (`blend`, `seed_blend`) apply before per-slot keys (`blend_2_weight`)."""
        unknown = sorted(set(changes) - set(_CHECKS))
        if unknown:
            known = [k for k in _CHECKS if k not in SLOT_KEYS] + ["blend_N_prompt|weight", "seed_blend_N_seed|weight"]
            raise ParamError(unknown[0], f"unknown parameter; known: {', '.join(known)}")
        checked = {name: _CHECKS[name](value) for name, value in changes.items()}
        slots = {k: checked.pop(k) for k in list(checked) if k in SLOT_KEYS}
        for key, value in slots.items():
            field_name, index, part = SLOT_KEYS[key]
            current = [list(pair) for pair in checked.get(field_name, getattr(self, field_name))]
            current[index][part] = value
            checked[field_name] = tuple(tuple(pair) for pair in current)
        return dataclasses.replace(self, **checked)

    def to_dict(self) -> dict[str, Any]:
        """Flat values by name (what OSCQuery and presets read): blend slots as `blend_N_*` keys."""
        d = dataclasses.asdict(self)
        d["refresh"] = str(self.refresh)
        for name in ("blend", "seed_blend"):
            del d[name]
        for key, (field_name, index, part) in SLOT_KEYS.items():
            d[key] = getattr(self, field_name)[index][part]
        return d

    def active_blend(self) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """(prompts, weights) to condition on: the blend slots with weight > 0, merged by prompt,
        or (`prompt`,) with weight 1 when no slot has weight."""
        return _active(self.blend, self.prompt)

    def active_seeds(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(seeds, weights) of the noise: the seed slots with weight > 0, or (`seed`,) alone."""
        return _active(self.seed_blend, self.seed)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Params":
        return cls().replace(**d)


class ParamNotice(ParamError):
    """A change that *was* applied, with a remark its sender should see (raised after applying;
    the OSC side answers it like an error, so it reaches the sender and the feedback target)."""


def strength_notice(changes: dict[str, Any], applied: Params) -> "ParamNotice | None":
    """The notice for a requested strength that runs lower (held at the model's `max_strength`),
    or None. Only a change that sets the strength can produce one."""
    if "strength" not in changes:
        return None
    asked = _strength(changes["strength"])
    if asked <= applied.strength:
        return None
    return ParamNotice("strength", f"{asked:g} is above this model's max_strength {applied.strength:g} "
                       f"(the top of its training); running at {applied.strength:g}")


def _active(slots, single):
    merged: dict[Any, float] = {}
    for value, weight in slots:
        if weight > 0:
            merged[value] = merged.get(value, 0.0) + weight
    if not merged:
        return (single,), (1.0,)
    return tuple(merged), tuple(merged.values())

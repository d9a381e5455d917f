"""The one list of OSC controls: dispatch, validation, `docs/OSC.md` and OSCQuery all read it.

Keeping a single inventory means an address cannot be documented but unhandled (or handled
but undocumented): the OSC server dispatches only what is listed here, the Markdown reference
is generated from it (a test fails when the file drifts) and OSCQuery serves the same entries.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from node_server.errors import NodeServerError

PROMPT_MAX_CHARS = 500
SEED_MAX = 2**31 - 1
STEPS_MIN, STEPS_MAX = 1, 4
REFRESH_EVERY_MAX = 1000
PRESET_NAME_MAX = 64
BLEND_SLOTS = 4  # prompt and seed blend slots (engine/params.py BLEND_SLOTS)
GUIDANCE_MIN, GUIDANCE_MAX = 1.0, 5.0
# Model families (the engine's `family`): which controls do something depends on the running model.
FAMILIES = ("dreamlite", "sd")
FAMILY_NAMES = {"dreamlite": "DreamLite (vision-aware edit)", "sd": "SD-class (CLIP img2img)"}

# Letters, digits, '-', '_', '.'; never a leading '.', so no hidden files and no '..' traversal
# (and no '/' or '\\', so a name can never leave the preset folder).
_PRESET_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_REFRESH_RE = re.compile(r"every:(\d{1,9})")
# One prefix segment: what is safe in an OSC address and never an OSC pattern character.
_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.-]+")


class ControlValueError(ValueError):
    """An OSC argument list that does not fit an inventory entry; `reason` is user-facing."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def check_preset_name(name: Any) -> str:
    """Return `name` if it is a valid preset name, else raise `NodeServerError` saying why."""
    if not isinstance(name, str):
        raise NodeServerError(f"preset name must be a string, got {type(name).__name__}")
    if not name:
        raise NodeServerError("preset name is empty")
    if len(name) > PRESET_NAME_MAX:
        raise NodeServerError(f"preset name is longer than {PRESET_NAME_MAX} characters ({len(name)})")
    if not _PRESET_NAME_RE.fullmatch(name):
        raise NodeServerError(
            f"invalid preset name {name!r}: use letters, digits, '-', '_' and '.' (not first), "
            "no path separators"
        )
    return name


def check_refresh(text: str) -> str:
    """Validate a refresh policy string (the engine's `RefreshPolicy.parse` has the final word)."""
    if text in ("on-change", "every-batch"):
        return text
    m = _REFRESH_RE.fullmatch(text)
    if m:
        n = int(m.group(1))
        if 1 <= n <= REFRESH_EVERY_MAX:
            return f"every:{n}"
        raise ControlValueError(f"every:N needs N in 1..{REFRESH_EVERY_MAX}, got {n}")
    raise ControlValueError(
        f"must be on-change, every-batch or every:N (N 1..{REFRESH_EVERY_MAX}), got {_short(text)}"
    )


def normalize_prefix(prefix: str | None) -> str:
    """Canonical form of `--osc-prefix`: '' or '/seg[/seg...]' (a missing leading '/' is added)."""
    if prefix is None:
        return ""
    p = prefix.strip()
    if p in ("", "/"):
        return ""
    if not p.startswith("/"):
        p = "/" + p
    p = p.rstrip("/")
    for seg in p[1:].split("/"):
        if not _PREFIX_SEGMENT_RE.fullmatch(seg):
            raise NodeServerError(
                f"invalid OSC prefix {prefix!r}: segments may hold letters, digits, '-', '_', '.' "
                "(no spaces, no OSC pattern characters * ? [ ] { } #), e.g. /vj1"
            )
    return p


def _short(value: Any, limit: int = 40) -> str:
    """repr() of a value, cut so an error message stays readable (prompts can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_arg(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, (bytes, bytearray)):
        return f"a blob of {len(value)} bytes"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if value is None:
        return "nil"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)}"
    return _short(value)


def _number(value: Any) -> float | int:
    """Accept OSC ints and floats (not booleans, which Python treats as ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlValueError(f"expected a number, got {_describe_arg(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ControlValueError(f"expected a finite number, got {value}")
    return value


@dataclass(frozen=True)
class Control:
    """One OSC address the server accepts and how it maps onto the `ControlTarget`."""

    address: str  # without prefix
    kind: str  # "string" | "float" | "int" | "bool" | "none" | "pairs"
    type_tag: str  # canonical OSC type tag string ("" when no argument)
    accepts: str  # the type tags actually accepted, for the docs
    range_text: str  # the range in words, for the docs
    description: str
    default: Any = None
    param: str | None = None  # keyword for `set_params`, or None for an action
    action: str | None = None  # "pause" | "recall_preset" | "save_preset" | "ping" | "blend" | "seed_blend"
    minimum: float | None = None
    maximum: float | None = None
    min_exclusive: bool = False
    max_chars: int | None = None
    check: Callable[[str], str] | None = None  # extra rule for strings; may normalise
    families: tuple[str, ...] = FAMILIES  # model families it applies to; elsewhere it is an /error

    @property
    def readable(self) -> bool:
        """Parameters (and pause) have a current value; actions do not (OSCQuery ACCESS)."""
        return self.param is not None or self.action == "pause"

    def coerce(self, args: tuple | list) -> Any:
        """Turn the OSC arguments into the value to apply, or raise `ControlValueError`."""
        args = tuple(args)
        if self.kind == "pairs":
            return self._coerce_pairs(args)
        if self.kind == "none":
            if args:
                raise ControlValueError(f"takes no arguments, got {len(args)}")
            return None
        if len(args) != 1:
            raise ControlValueError(f"takes exactly 1 argument ({self.accepts}), got {len(args)}")
        value = args[0]
        if self.kind == "string":
            return self._coerce_string(value)
        if self.kind == "bool":
            return self._coerce_bool(value)
        if self.kind == "int":
            number = _number(value)
            if isinstance(number, float):
                if not number.is_integer():
                    raise ControlValueError(f"must be a whole number, got {number}")
                number = int(number)
            self._check_range(number)
            return number
        if self.kind == "float":
            number = float(_number(value))
            self._check_range(number)
            return number
        raise AssertionError(f"unknown kind {self.kind}")  # pragma: no cover - inventory bug

    def _coerce_pairs(self, args: tuple) -> list:
        """Alternating value/weight arguments (`type_tag` names one pair, e.g. `sf`); none clears."""
        if len(args) % 2:
            raise ControlValueError(f"takes value/weight pairs, got {len(args)} arguments (odd)")
        if len(args) > 2 * BLEND_SLOTS:
            raise ControlValueError(f"takes at most {BLEND_SLOTS} pairs, got {len(args) // 2}")
        pairs = []
        for i in range(0, len(args), 2):
            value, weight = args[i], args[i + 1]
            if self.type_tag[0] == "s":
                if not isinstance(value, str):
                    raise ControlValueError(f"argument {i + 1}: expected a prompt string, got {_describe_arg(value)}")
                if len(value) > PROMPT_MAX_CHARS:
                    raise ControlValueError(f"argument {i + 1}: longer than {PROMPT_MAX_CHARS} characters")
            else:
                value = _number(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ControlValueError(f"argument {i + 1}: seed must be a whole number, got {value}")
                value = int(value)
                if not 0 <= value <= SEED_MAX:
                    raise ControlValueError(f"argument {i + 1}: seed must be 0..{SEED_MAX}, got {value}")
            weight = float(_number(weight))
            if not 0.0 <= weight <= 1.0:
                raise ControlValueError(f"argument {i + 2}: weight must be 0..1, got {weight}")
            pairs.append((value, weight))
        return pairs

    def _coerce_string(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ControlValueError(f"expected a string, got {_describe_arg(value)}")
        if self.max_chars is not None and len(value) > self.max_chars:
            raise ControlValueError(f"longer than {self.max_chars} characters ({len(value)})")
        if self.check is not None:
            try:
                return self.check(value)
            except NodeServerError as e:  # preset names
                raise ControlValueError(str(e)) from None
        return value

    def _coerce_bool(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ControlValueError(f"expected T/F or 0/1, got {_describe_arg(value)}")

    def _check_range(self, number: float) -> None:
        lo, hi = self.minimum, self.maximum
        too_low = lo is not None and (number <= lo if self.min_exclusive else number < lo)
        too_high = hi is not None and number > hi
        if too_low or too_high:
            raise ControlValueError(f"must be {self.range_text}, got {number}")

    def osc_range(self) -> list[Any] | None:
        """OSCQuery RANGE: one object per argument (None where a value has no range)."""
        if self.kind == "none":
            return None
        if self.kind == "pairs":
            return [None]
        if self.kind in ("int", "float"):
            return [{"MIN": self.minimum, "MAX": self.maximum}]
        if self.kind == "bool":
            return [{"VALS": [False, True]}]
        return [None]


@dataclass(frozen=True)
class Reply:
    """A message the server sends (feedback, errors, pong); listed once for docs and senders."""

    address: str
    type_tag: str
    description: str


PRESET_NAME_RANGE = f"a preset name (letters, digits, `-`, `_`, `.` not first; at most {PRESET_NAME_MAX} characters)"

CONTROLS: tuple[Control, ...] = (
    Control(
        "/prompt", "string", "s", "s", f"0..{PROMPT_MAX_CHARS} characters (longer is an error)",
        "Edit instruction for the model, e.g. \"make it an old sepia photograph\" (the demo model "
        "knows the nine styles of its presets). Re-encoded once when it changes; the new look appears "
        "when its conditioning is ready (watch `/status/prompt`). Empty (the default at start) means "
        "no edit: frames pass through unchanged (cropped and resized to the output size).",
        default="", param="prompt", max_chars=PROMPT_MAX_CHARS,
    ),
    Control(
        "/strength", "float", "f", "f, i", "0 < x <= 1",
        "How far each frame moves from the input: 1 = full edit, small values stay close to the "
        "camera image. 0 is excluded (it would leave the frame unedited). A model may cap it at the "
        "top of its training (`max_strength` in its folder; the demo model's is 0.08, its default "
        "0.05; OSCQuery shows the running model's range): a higher value runs at the cap, and the "
        "sender and the feedback target get one `/error` saying so (`/strength: 0.5 is above this "
        "model's max_strength 0.08 (the top of its training); running at 0.08`).",
        default=1.0, param="strength", minimum=0.0, maximum=1.0, min_exclusive=True,
    ),
    Control(
        "/seed", "int", "i", "i, f (whole numbers only)", f"0..{SEED_MAX}",
        "Noise seed; the same seed with the same input gives the same output.",
        default=0, param="seed", minimum=0, maximum=SEED_MAX,
    ),
    Control(
        "/steps", "int", "i", "i, f (whole numbers only)", f"{STEPS_MIN}..{STEPS_MAX}",
        "Denoising steps per frame: 1 is fastest, more steps give cleaner detail at lower fps.",
        default=1, param="steps", minimum=STEPS_MIN, maximum=STEPS_MAX,
    ),
    Control(
        "/refresh", "string", "s", "s",
        f"`on-change`, `every-batch`, or `every:N` with N 1..{REFRESH_EVERY_MAX}",
        "When the multimodal encoder looks at the camera again: only when the prompt changes, "
        "every batch, or every N batches. DreamLite models (SD-class models never look at the frame).",
        default="on-change", param="refresh", check=check_refresh, families=("dreamlite",),
    ),
    Control(
        "/preset", "string", "s", "s",
        PRESET_NAME_RANGE,
        "Recall a preset by name: sets every parameter the preset file lists. User presets "
        "shadow built-in ones of the same name.",
        action="recall_preset", check=check_preset_name,
    ),
    Control(
        "/preset/save", "string", "s", "s",
        PRESET_NAME_RANGE,
        "Save the current parameters as a user preset with this name (overwrites a user preset "
        "of the same name).",
        action="save_preset", check=check_preset_name,
    ),
    Control(
        "/pause", "bool", "T", "T, F, i or f (0 or 1)", "true/false (T/F, 1/0)",
        "Pause (true) or resume (false) processing; while paused no frames are produced.",
        default=False, action="pause",
    ),
    Control(
        "/ping", "none", "", "(none)", "-",
        "Liveness check: answered with `/pong` sent back to the sender's address and port.",
        action="ping",
    ),
)

def _blend_controls() -> tuple[Control, ...]:
    """Prompt and seed blending (both families), then the SD-class-only noise and guidance controls."""
    out = [
        Control(
            "/blend", "pairs", "sf", f"s f pairs (up to {BLEND_SLOTS}); no arguments clears",
            "prompt/weight pairs, weights 0..1",
            "Prompt blending: `/blend \"oil painting\" 0.7 \"neon city\" 0.3` sets the blend slots in "
            "order (the rest are cleared). While any slot has a weight above 0 the conditioning is "
            "the weighted mean (weights normalised) of the slots' prompt embeddings and replaces "
            "`/prompt`. A new prompt is encoded once; changing only weights never re-encodes. On "
            "DreamLite models every prompt is encoded with the same frame(s) under the `/refresh` "
            "policy, and the mean at each token is over the prompts that have a token there.",
            action="blend",
        ),
        Control(
            "/seed_blend", "pairs", "if", f"i f pairs (up to {BLEND_SLOTS}); no arguments clears",
            f"seed/weight pairs, seeds 0..{SEED_MAX}, weights 0..1",
            "Seed blending: while any slot has a weight above 0 the starting noise is the weighted "
            "mix of the seeds' noises (rescaled to unit variance) and replaces `/seed`.",
            action="seed_blend",
        ),
    ]
    for i in range(1, BLEND_SLOTS + 1):
        out += [
            Control(f"/blend/{i}/prompt", "string", "s", "s", f"0..{PROMPT_MAX_CHARS} characters",
                    f"Prompt of blend slot {i}.", default="", param=f"blend_{i}_prompt",
                    max_chars=PROMPT_MAX_CHARS),
            Control(f"/blend/{i}/weight", "float", "f", "f, i", "0..1",
                    f"Weight of blend slot {i} (0 = off; a fader).", default=0.0, param=f"blend_{i}_weight",
                    minimum=0.0, maximum=1.0),
            Control(f"/seed_blend/{i}/seed", "int", "i", "i, f (whole numbers only)", f"0..{SEED_MAX}",
                    f"Seed of seed-blend slot {i}.", default=0, param=f"seed_blend_{i}_seed",
                    minimum=0, maximum=SEED_MAX),
            Control(f"/seed_blend/{i}/weight", "float", "f", "f, i", "0..1",
                    f"Weight of seed-blend slot {i} (0 = off).", default=0.0, param=f"seed_blend_{i}_weight",
                    minimum=0.0, maximum=1.0),
        ]
    out += [
        Control("/seed_mode", "string", "s", "s", "`fixed` or `per-frame`",
                "`fixed`: the same noise for every frame (steady image); `per-frame`: new noise each "
                "frame (seed blending is then ignored). SD-class models.",
                default="fixed", param="seed_mode", check=_check_seed_mode, families=("sd",)),
        Control("/cfg", "string", "s", "s", "`none` or `self`",
                "Residual classifier-free guidance (StreamDiffusion's RCFG): `self` pushes each step "
                "away from its own input noise by `/guidance`, at no extra U-Net cost. SD-class models.",
                default="none", param="cfg", check=_check_cfg, families=("sd",)),
        Control("/guidance", "float", "f", "f, i", f"{GUIDANCE_MIN:g}..{GUIDANCE_MAX:g}",
                "Guidance scale used when `/cfg` is `self` (1 = no effect). SD-class models.",
                default=1.2, param="guidance", minimum=GUIDANCE_MIN, maximum=GUIDANCE_MAX, families=("sd",)),
    ]
    return tuple(out)


def _check_choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in options:
            raise ControlValueError(f"must be {' or '.join(options)}, got {_short(text)}")
        return text
    return check


_check_seed_mode = _check_choice(("fixed", "per-frame"))
_check_cfg = _check_choice(("none", "self"))

LLLITE_STRENGTH_MAX = 2.0  # engine/params.py LLLITE_STRENGTH_RANGE
LLLITE_REFRESH_MAX = 1000  # engine/params.py LLLITE_REFRESH_RANGE


def _lllite_controls() -> tuple[Control, ...]:
    """ControlNet-LLLite (servers started with `--lllite FILE`; see docs/LLLITE.md)."""
    return (
        Control("/lllite/strength", "float", "f", "f, i", f"0..{LLLITE_STRENGTH_MAX:g}",
                "Strength of the ControlNet-LLLite adapter (0 = off, 1 = as trained). Changes a value "
                "the compiled graph reads; nothing re-compiles. Without `--lllite` the value is kept "
                "but has no effect.",
                default=1.0, param="lllite_strength", minimum=0.0, maximum=LLLITE_STRENGTH_MAX),
        Control("/lllite/refresh", "int", "i", "i, f (whole numbers only)", f"1..{LLLITE_REFRESH_MAX}",
                "Run the adapter's conditioning (its CNNs and, for the temporal adapter, the optical "
                "flow) every N batches; in between the last conditioning stays. 1 = every batch.",
                default=1, param="lllite_refresh", minimum=1, maximum=LLLITE_REFRESH_MAX),
    )


TEMPORAL_BLEND_MAX = 0.9  # engine/params.py TEMPORAL_BLEND_RANGE


def _temporal_controls() -> tuple[Control, ...]:
    """The temporal output blend (engine/output_blend.py), any model."""
    return (
        Control("/temporal/blend", "float", "f", "f, i", f"0..{TEMPORAL_BLEND_MAX:g}",
                "Less flicker on moving video: each output frame carries this share of the previous "
                "output, moved along the input's optical flow (0 = off). Where the picture changes "
                "(an occlusion, a cut) and after a prompt change nothing is carried. 0.3-0.5 steadies "
                "the demo model's styles (docs/DEMO_MODEL.md); higher values trail fast motion.",
                default=0.0, param="temporal_blend", minimum=0.0, maximum=TEMPORAL_BLEND_MAX),
    )


CONTROLS = CONTROLS + _blend_controls() + _lllite_controls() + _temporal_controls()

FEEDBACK: tuple[Reply, ...] = (
    Reply("/status/fps", "f", "Frames per second delivered over the last second."),
    Reply("/status/latency_ms", "f", "Median latency over the last second, frame in to frame out, in ms."),
    Reply("/status/frames", "i", "Frames delivered since start."),
    Reply("/status/dropped", "i", "Input frames dropped because a fresher one arrived."),
    Reply("/status/errors", "i", "Malformed inputs seen since start (OSC messages and frames)."),
    Reply("/status/state", "s", "`loading`, `warming`, `running` or `paused`."),
    Reply("/status/prompt", "s", "The prompt whose conditioning is active now (a blend as "
          "`0.70*a + 0.30*b`); also sent on its own as soon as it changes. Empty while frames pass "
          "through unchanged: no prompt set (the default at start), or a first prompt still encoding."),
    Reply("/status/threads_down", "i", "Server threads (frame input, frame loop, outputs) that are not "
          "running now; 0 while all are. One that stops unexpectedly is restarted after a short pause "
          "and reported as `/error`."),
    Reply("/status/restarts", "i", "Server threads restarted since start (each restart is also an `/error`)."),
)

REPLIES: tuple[Reply, ...] = (
    Reply("/error", "s", "A rejected message: `\"<address>: <reason>\"`, e.g. "
          "`\"/steps: must be 1..4, got 9\"`, or `\"/cfg: applies to SD-class (CLIP img2img) models "
          "only; the running model is of the DreamLite (vision-aware edit) family\"`. Sent to the "
          "sender and to the feedback target; nothing of the rejected message is applied, except for "
          "a strength above the model's cap, which is applied at the cap (the reason says so)."),
    Reply("/pong", "", "Answer to `/ping`, sent to the address and port the ping came from."),
)

BY_ADDRESS: dict[str, Control] = {c.address: c for c in CONTROLS}
PARAM_CONTROLS: dict[str, Control] = {c.param: c for c in CONTROLS if c.param}


def families_of(key: str) -> tuple[str, ...]:
    """The model families a `set_params` key applies to (a parameter, or the whole-list actions
    `blend` / `seed_blend`); every family for a key no control lists."""
    control = PARAM_CONTROLS.get(key) or next((c for c in CONTROLS if c.action == key), None)
    return control.families if control is not None else FAMILIES


def family_mismatch(key: str, family: str) -> str | None:
    """The `/error` reason when `key` does nothing on a model of `family`, else None."""
    families = families_of(key)
    if family in families:
        return None
    wanted = " and ".join(FAMILY_NAMES.get(f, f) for f in families)
    return f"applies to {wanted} models only; the running model is of the {FAMILY_NAMES.get(family, family)} family"


def lookup(address: str) -> Control | None:
    """The entry for an un-prefixed address, or None."""
    return BY_ADDRESS.get(address)

"""Apply one control message to a `ControlTarget`: the same coercion and target calls as OSC.

The web console sends `{address, args}`; it is checked by the inventory entry's `coerce` (what an
OSC message with those arguments would get) and applied through the same `ControlTarget` methods
the OSC server calls, so no way in can set a value OSC would refuse.
"""

from __future__ import annotations

from typing import Any

from node_server.control.inventory import BY_ADDRESS, Control, ControlValueError
from node_server.control.target import ControlTarget
from node_server.engine.params import ParamNotice
from node_server.errors import NodeServerError, ParamError


class Rejected(ValueError):
    """A message that was not applied; `str()` is the one-line `/error` text."""


def apply(target: ControlTarget, control: Control, value: Any) -> None:
    """Apply an already coerced value (the mapping `OscControl` uses; `/ping` has nothing to apply)."""
    if control.param is not None:
        target.set_params(**{control.param: value})
    elif control.action == "pause":
        target.set_paused(value)
    elif control.action == "recall_preset":
        target.recall_preset(value)
    elif control.action == "save_preset":
        target.save_preset(value)
    elif control.action in ("blend", "seed_blend"):  # the whole weighted list at once
        target.set_params(**{control.action: value})
    elif control.action == "ping":
        pass
    else:  # pragma: no cover - inventory bug
        raise AssertionError(f"no mapping for {control.address}")


def apply_message(target: ControlTarget, address: Any, args: Any,
                  allowed: set[str] | None = None) -> str | None:
    """Validate and apply `address args` (un-prefixed); raises `Rejected` with the reason.

    Returns None, or the remark of a change applied with one (a strength held at the model's cap).

    `allowed` limits the addresses to those shown for the running model (None: any in the inventory).
    """
    if not isinstance(address, str) or not isinstance(args, (list, tuple)):
        raise Rejected("expected an address string and a list of arguments")
    shown = address if len(address) <= 80 else address[:77] + "..."
    control = BY_ADDRESS.get(address)
    if control is None or (allowed is not None and address not in allowed):
        raise Rejected(f"{shown}: unknown address (see docs/OSC.md)")
    try:
        value = control.coerce(list(args))
        apply(target, control, value)
    except ParamNotice as e:  # applied; the sender should still see the remark
        return f"{shown}: {e.reason}"
    except ControlValueError as e:
        raise Rejected(f"{shown}: {e.reason}") from None
    except ParamError as e:
        raise Rejected(f"{shown}: {e.reason}") from None
    except (NodeServerError, ValueError) as e:
        raise Rejected(f"{shown}: {e}") from None
    return None

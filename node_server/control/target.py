"""What the control surface (OSC, OSCQuery) may ask of the running server.

The OSC side depends only on this protocol, so it can be tested against a small fake and the
server can change its internals without touching the control code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Status:
    """A snapshot of the frame loop, fed back as `/status/*`."""

    fps: float = 0.0
    latency_ms: float = 0.0  # p50 over the last second, frame in to frame out
    frames: int = 0  # frames delivered since start
    dropped: int = 0  # input frames dropped (freshest-frame policy)
    errors: int = 0  # malformed inputs seen (OSC and frames)
    state: str = "loading"  # loading | warming | running | paused
    prompt: str = ""  # the prompt whose conditioning is active now
    threads_down: int = 0  # supervised I/O threads not running now (0 = all alive)
    restarts: int = 0  # supervised I/O threads restarted since start


class ControlTarget(Protocol):
    """Implemented by the server; called from the OSC thread(s)."""

    def current_params(self) -> dict[str, Any]:
        """Current parameter values by name (prompt, seed, steps, strength, refresh, ...)."""

    def set_params(self, **changes: Any) -> None:
        """Apply validated changes atomically; raises `ParamError` naming the bad value."""

    def set_paused(self, paused: bool) -> None: ...

    def recall_preset(self, name: str) -> None:
        """Raises `NodeServerError` when the name is invalid or the preset does not exist."""

    def save_preset(self, name: str) -> None: ...

    def status(self) -> Status: ...

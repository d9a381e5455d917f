"""A small in-memory `ControlTarget` for the control-surface tests (no engine, no GPU)."""

from __future__ import annotations

import threading
from typing import Any

from node_server.control.target import Status
from node_server.errors import NodeServerError, ParamError

INITIAL = {"prompt": "", "seed": 0, "steps": 1, "strength": 1.0, "refresh": "on-change", "batch_size": 1,
           "seed_mode": "fixed", "cfg": "none", "guidance": 1.2, "blend": [], "seed_blend": [],
           "lllite_strength": 1.0, "lllite_refresh": 1, "temporal_blend": 0.0}
for _i in range(1, 5):  # blend slots, as Params.to_dict() lists them
    INITIAL.update({f"blend_{_i}_prompt": "", f"blend_{_i}_weight": 0.0,
                    f"seed_blend_{_i}_seed": 0, f"seed_blend_{_i}_weight": 0.0})


class FakeTarget:
    """Records every call; `reject` maps a param name to a reason `set_params` raises with."""

    def __init__(self, store=None):
        self.lock = threading.Lock()
        self.params: dict[str, Any] = dict(INITIAL)
        self.paused = False
        self.calls: list[tuple[str, Any]] = []
        self.store = store
        self.reject: dict[str, str] = {}
        self.active_prompt = ""  # what status() reports; tests move it to simulate conditioning
        self.frames = 0
        self.last_preset = ""  # the last preset recalled (OSCQuery shows it as /preset's VALUE)

    def current_params(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.params)

    def set_params(self, **changes: Any) -> None:
        with self.lock:
            for name in changes:
                if name not in self.params:
                    raise ParamError(name, "unknown parameter")
                if name in self.reject:
                    raise ParamError(name, self.reject[name])
            self.params.update(changes)
            self.calls.append(("set_params", dict(changes)))

    def set_paused(self, paused: bool) -> None:
        with self.lock:
            self.paused = paused
            self.calls.append(("set_paused", paused))

    def recall_preset(self, name: str) -> None:
        if self.store is None:
            raise NodeServerError("no preset store")
        self.set_params(**self.store.recall(name))
        self.last_preset = name
        self.calls.append(("recall_preset", name))

    def save_preset(self, name: str) -> None:
        if self.store is None:
            raise NodeServerError("no preset store")
        self.store.save(name, self.current_params())
        self.calls.append(("save_preset", name))

    def status(self) -> Status:
        with self.lock:
            return Status(
                fps=29.5,
                latency_ms=12.25,
                frames=self.frames,
                dropped=3,
                errors=1,
                state="paused" if self.paused else "running",
                prompt=self.active_prompt,
            )


class TransformEngine:
    """A deterministic fake engine for bridge and kit tests: each output is `self.transform(frame)`;
    the frames it saw are kept in `seen`. Subclasses define `transform`."""

    def __init__(self):
        from node_server.engine.params import Params

        self.params = Params()
        self.active_prompt = ""
        self.seen: list = []

    def transform(self, frame):
        raise NotImplementedError

    def set_params(self, **changes):
        self.params = self.params.replace(**changes)
        return self.params

    def warmup(self, progress=True):
        return 0.0

    def step(self, frames, ids):
        from node_server.engine.base import FrameOut

        outs = []
        for frame, i in zip(frames, ids):
            self.seen.append(frame.copy())
            outs.append(FrameOut(i, self.transform(frame), self.params.prompt))
        return outs

    def close(self):
        pass

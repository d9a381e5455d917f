"""What every engine family shares: the output frame (`FrameOut`), a model's own parameter defaults,
the compile-mode choice, a prompt set's tokens and remembered blend weights, parameter reads,
encoder status, device copies of control-side tensors, warm-up and lifecycle.
`StreamEngine` (DreamLite) and `SDStreamEngine` build on it, so the server and `render` see one
interface whatever the model.

A subclass provides `_lock`, `_params`, `worker` (a `ConditioningWorker`), `device`, `size`,
`_tokens` (the prompt set in use, or None), `_device_inputs` and `_weights_of` (dicts) and `step`,
and may override `_after_warmup`. It calls `_resolve_compile` right after `_place`. An engine
started with a ControlNet-LLLite file calls `_attach_lllite` before its first step and brackets its
denoiser with `self.lllite.before` / `.after` (`engine/lllite/runner.py`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..errors import ParamError
from ..progress import step as announce
from .blend import prompt_set_key
from .frames import check_size
from .module_view import module_view
from .params import BATCH_RANGE, Params

log = logging.getLogger("node_server.engine")
# An engine's `compile` choices, every family: auto (compiled CUDA graphs on a GPU, eager on the
# CPU), off (eager), graphs (CUDA graphs of eager kernels), default or max-autotune (Inductor + graphs).
COMPILE_MODES = ("auto", "off", "graphs", "default", "max-autotune")
WEIGHT_SETS = 64  # prompt sets whose latest blend weights an engine remembers


@dataclass
class FrameOut:
    """One stylized frame, carrying its input's id and the prompt whose conditioning made it."""

    id: int
    image: np.ndarray  # (H, W, 3) uint8
    prompt: str


def with_model_defaults(bundle: Any, params: Optional[Params]) -> Params:
    """`params` with the model's own defaults (`bundle.defaults`) filled in for every setting that is
    still at the global default; what the user set explicitly to another value wins."""
    params = params if params is not None else Params()
    base = Params()
    fill = {k: v for k, v in (getattr(bundle, "defaults", None) or {}).items() if getattr(params, k) == getattr(base, k)}
    return params.replace(**fill) if fill else params


def _encoder_device(choice, device: torch.device) -> torch.device:
    """The encoder's device (`--encoder-device`; None: the engine's own), checked to exist."""
    if choice is None:
        return device
    try:
        dev = torch.device(choice)
    except (RuntimeError, TypeError):
        raise ParamError("encoder_device", f"must be cpu, cuda or cuda:N, got {choice!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= count or not count:
            raise ParamError("encoder_device", f"{choice} was asked for but this machine has {count} CUDA device(s)")
    elif dev.type != "cpu":
        raise ParamError("encoder_device", f"must be cpu, cuda or cuda:N, got {choice!r}")
    return dev


class EngineBase:
    def _place(self, bundle, size, device, dtype, encoder_device=None) -> None:
        """Set `size`, `device`, `dtype`, `encoder_device`, `bundle` and the engine's own views of
        its modules, `unet`, `vae` and `text_encoder` (engine/module_view.py: the bundle itself is
        never changed; weights are shared unless the device or dtype asked for differs from where
        they are, default: where they are). The text encoder goes to `encoder_device` (default:
        the engine's device)."""
        self.size = check_size(size)
        first = next(bundle.unet.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else first.dtype
        self.encoder_device = _encoder_device(encoder_device, self.device)
        self.bundle = bundle
        self.unet = module_view(bundle.unet, self.device, self.dtype)
        self.vae = module_view(bundle.vae, self.device, self.dtype)
        self.text_encoder = module_view(bundle.text_encoder, self.encoder_device, self.dtype)

    def _resolve_compile(self, compile: str) -> str:
        """Set and return `compile_mode`: `compile` (one of `COMPILE_MODES`) on this engine's
        device, auto being default on a GPU and off elsewhere; any mode but off needs CUDA. Called
        right after `_place`, before anything is built or started, so a bad choice leaves nothing."""
        if compile not in COMPILE_MODES:
            raise ParamError("compile", f"must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        mode = compile if compile != "auto" else ("default" if self.device.type == "cuda" else "off")
        if mode != "off" and self.device.type != "cuda":
            raise ParamError("compile", f"{mode} needs a CUDA device; use auto or off on {self.device}")
        self.compile_mode = mode
        return mode

    family = "dreamlite"  # the model family (control/inventory.py tags each control with the families it serves)
    _warming = False  # True during `warmup`: the empty prompt is encoded and denoised once, to compile

    @property
    def max_strength(self) -> float:
        """The highest strength this model runs (`max_strength` in its folder's node_server.json;
        1 when it names none). A model trained only at low strengths, like the demo model,
        overshoots into noise above its range."""
        return float(getattr(self.bundle, "max_strength", 1.0))

    def model_info(self) -> dict:
        """What the control side shows about the running model: its family, the real strength
        range and the frame size."""
        h, w = self.size
        return {"family": self.family, "max_strength": self.max_strength, "width": w, "height": h}

    def _cap_strength(self, new: Params) -> Params:
        """`new` with its strength held at `max_strength`. The stored strength is always the one
        that runs, so this only fires for a request above the cap (never on unrelated changes)."""
        top = self.max_strength
        if new.strength <= top:
            return new
        log.info("strength %g is above this model's max_strength %g (the top of its training); running at %g",
                 new.strength, top, top)
        return new.replace(strength=top)

    def _schedule_strength(self, requested: float) -> float:
        """The strength the schedule is built from (already capped by `_cap_strength`)."""
        return min(requested, self.max_strength)

    def _schedule_for(self, new: Params):
        """The denoising schedule `new` runs: the current one unless its steps or strength
        changed, else a new one from the family's `_build_schedule(steps, strength)`."""
        if self._schedule is None or (new.steps, new.strength) != (self._params.steps, self._params.strength):
            return self._build_schedule(new.steps, self._schedule_strength(new.strength))
        return self._schedule

    lllite = None  # an LLLiteRunner when the engine was started with an adapter
    output_blend = None  # an OutputBlend once `temporal_blend` was first set above 0

    def _blend_output(self, x: torch.Tensor, out: torch.Tensor, n: int, params: Params, prompt: str) -> torch.Tensor:
        """The denoiser's uint8 outputs with the temporal output blend applied (engine/output_blend.py);
        `prompt`: the prompt set's key, so that a new set starts afresh and a weight change does not."""
        if self.output_blend is None:
            if params.temporal_blend <= 0:
                return out
            from .output_blend import OutputBlend

            self.output_blend = OutputBlend(self.size, self.device)
        return self.output_blend.apply(x, out, n, params.temporal_blend, prompt)

    def forget_shown(self) -> None:
        """Nothing stylized is on screen to carry on from (after the warm-up, a pass-through, or a
        new shot in the demo tools): the temporal adapter and the output blend start afresh."""
        if self.lllite is not None:
            self.lllite.reset()
        if self.output_blend is not None:
            self.output_blend.reset()

    def _attach_lllite(self, file, *, blocks=None, source: str = "temporal", edit_layout: bool,
                       compiled: bool) -> None:
        """Load a ControlNet-LLLite file (or already-read `HookWeights`) into the U-Net's module
        tree, before anything is compiled or captured."""
        if file is None:
            return
        from ..models.lllite_file import read_lllite
        from .lllite.adapter import LLLite
        from .lllite.runner import LLLiteRunner

        hooks = list(file) if isinstance(file, (list, tuple)) else read_lllite(file, self.unet)
        adapter = LLLite(self.unet, hooks, self.size, edit_layout=edit_layout, max_rows=BATCH_RANGE[1],
                         blocks=blocks)
        self.lllite = LLLiteRunner(adapter, self.size, source=source, compile=compiled)

    def _prompt_set(self, new: Params, tokenize) -> tuple[str, tuple[float, ...], Any]:
        """`new`'s prompt set (its prompt, or its blend): the set's key, its weights and, only when
        it is not the set in use (`_tokens`), its tokens from `tokenize` (the one tokenising per
        change, on the control side; it may raise ParamError, before anything is applied)."""
        prompts, weights = new.active_blend()
        key = prompt_set_key(prompts)
        tokens = None if self._tokens is not None and self._tokens.prompt == key else tokenize(prompts)
        return key, weights, tokens

    def _remember_weights(self, key: str, weights: tuple[float, ...]) -> None:
        """Note `weights` as the latest blend weights of prompt set `key` (call it holding `_lock`),
        newest last: a weight change never re-encodes, the frame loop mixes the set's conditioning
        with them (`_weights_for`). Only the `WEIGHT_SETS` newest sets are kept."""
        self._weights_of.pop(key, None)
        self._weights_of[key] = weights
        while len(self._weights_of) > WEIGHT_SETS:
            self._weights_of.pop(next(iter(self._weights_of)))

    def _weights_for(self, key: str, count: int) -> tuple[float, ...]:
        """The latest weights of the `count` prompts of set `key` (equal ones if none are known)."""
        with self._lock:
            return self._weights_of.get(key, (1.0,) * count)

    @property
    def params(self) -> Params:
        with self._lock:
            return self._params

    @property
    def encode_count(self) -> int:
        return self.worker.encode_count

    def pop_encoder_error(self) -> Optional[str]:
        """A failed encode since the last call, as text (the previous conditioning stayed active)."""
        err = self.worker.pop_error()
        return None if err is None else f"conditioning encode failed: {type(err).__name__}: {err}"

    def _on_device(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """`value` (a CPU tensor made by the control side) on the device, copied on the main stream
        only when it changed, so a parameter change never races the frame loop."""
        cached = self._device_inputs.get(name)
        if cached is None or cached[0] is not value:
            cached = (value, value.to(self.device))
            self._device_inputs[name] = cached
        return cached[1]

    def warmup(self, progress: bool = True) -> float:
        """Run the first conditioning and one batch so the first live frame is not slow."""
        start = time.perf_counter()
        announce("warming up: first conditioning and one batch...", enabled=progress)
        grey = np.full((*self.size, 3), 128, np.uint8)
        n = self.params.batch_size
        self._warming = True  # the denoiser runs (and compiles) even when frames would pass through
        try:
            self.step([grey] * n, list(range(-n, 0)))
        finally:
            self._warming = False
        if self.lllite is not None:
            self.lllite.compile_ahead(n)
        self.forget_shown()  # the grey warm-up frame is not a frame the audience saw
        self._after_warmup()
        elapsed = time.perf_counter() - start
        announce(f"warm-up done in {elapsed:.1f} s", enabled=progress)
        return elapsed

    def _after_warmup(self) -> None:
        """Hook: drop state the warm-up batch left behind (nothing by default)."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.worker.close()
            if self.lllite is not None:
                self.lllite.lllite.detach()  # the engine's U-Net view is as it was built

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""`GraphedDenoiser`: the denoiser's pieces compiled and captured into one CUDA graph per (batch, steps).

A frame's whole pass (VAE encode, 1..4 U-Net steps, VAE decode to uint8) replays as one graph:
the host launches it with a single call, so the GPU never waits on Python. Inputs are copied into
fixed-address buffers before each replay (a few device-to-device copies), which is why a strength,
seed or prompt change only changes buffer contents and never re-captures. A new batch size or
step count captures a new graph (and, the first time, compiles); the schedule's values do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .denoiser import Denoiser

# Inductor modes for the U-Net step alone (`GraphedDenoiser(unet_mode=...)`); no mode with its own
# CUDA graphs: the whole pass is captured as one graph here.
UNET_COMPILE_MODES = ("eager", "default", "max-autotune-no-cudagraphs")


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    x: torch.Tensor
    embeds: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    out: torch.Tensor  # uint8 [n,H,W,3], rewritten by every replay


class GraphedDenoiser:
    """Runs `Denoiser.run` through captured CUDA graphs; `mode` picks how the pieces are compiled:
    `graphs` (eager kernels, captured), `default` (Inductor) or `max-autotune` (Inductor with
    autotuned kernels; slow to compile)."""

    def __init__(self, denoiser: Denoiser, device: torch.device, *, mode: str = "default",
                 announce: Optional[Callable[[str], None]] = None, unet_mode: Optional[str] = None):
        """`unet_mode`: an Inductor mode for the U-Net step alone (`default`,
        `max-autotune-no-cudagraphs`, ...; `eager` leaves it uncompiled), overriding `mode`'s for
        that piece: the U-Net dominates the step, so autotuning only it is the cheaper experiment."""
        if mode not in ("graphs", "default", "max-autotune"):
            raise ValueError(f"unknown compile mode {mode!r}")
        if unet_mode is not None and unet_mode not in UNET_COMPILE_MODES:
            raise ValueError(f"unknown U-Net compile mode {unet_mode!r}; one of {', '.join(UNET_COMPILE_MODES)}")
        self.den = denoiser
        self.device = torch.device(device)
        self.mode = mode
        self.announce = announce or (lambda text: None)
        fns = (denoiser.encode_source, denoiser.unet_step, denoiser.decode_uint8)
        if mode == "graphs":
            pieces = list(fns)
        else:
            inductor_mode = "max-autotune-no-cudagraphs" if mode == "max-autotune" else None
            pieces = [torch.compile(fn, dynamic=False, mode=inductor_mode) for fn in fns]
        if unet_mode == "eager":
            pieces[1] = denoiser.unet_step
        elif unet_mode is not None:
            pieces[1] = torch.compile(denoiser.unet_step, dynamic=False,
                                      mode=None if unet_mode == "default" else unet_mode)
        self.unet_mode = unet_mode
        self.pieces = tuple(pieces)
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self.capture_seconds: dict[tuple[int, int], float] = {}

    def _run_pieces(self, c: _Captured) -> torch.Tensor:
        enc, step, dec = self.pieces
        return self.den.run(c.x, c.embeds, c.mask, c.noise, c.sigmas, c.timesteps,
                            encode=enc, step=step, decode=dec)

    def _capture(self, x, embeds, mask, noise, sigmas, timesteps) -> _Captured:
        key = (x.shape[0], timesteps.shape[0])
        start = time.perf_counter()
        first = not self._graphs and (self.mode != "graphs" or self.unet_mode not in (None, "eager"))
        self.announce(
            f"capturing the denoiser for batch {key[0]}, {key[1]} step(s)"
            + (" (compiling first: about a minute)..." if first else "...")
        )
        c = _Captured(None, x.clone(), embeds.clone(), mask.clone(), noise.clone(), sigmas.clone(),
                      timesteps.clone(), None)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # compile and warm up off the capture
            for _ in range(2):
                self._run_pieces(c)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the conditioning worker may be encoding on its own stream meanwhile.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            c.out = self._run_pieces(c)
        c.graph = graph
        self._graphs[key] = c
        self.capture_seconds[key] = time.perf_counter() - start
        self.announce(f"captured in {self.capture_seconds[key]:.1f} s")
        return c

    def run(self, x: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
            sigmas: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Same contract as `Denoiser.run`; the result is a graph-owned buffer, valid until the next
        call (copy it out before then)."""
        key = (x.shape[0], timesteps.shape[0])
        c = self._graphs.get(key)
        if c is None:
            c = self._capture(x, embeds, mask, noise, sigmas, timesteps)
        else:
            for dst, src in ((c.x, x), (c.embeds, embeds), (c.mask, mask), (c.noise, noise),
                             (c.sigmas, sigmas), (c.timesteps, timesteps)):
                if dst.shape != src.shape:
                    raise ValueError(f"graph input shape changed: {tuple(src.shape)} != {tuple(dst.shape)}")
                dst.copy_(src, non_blocking=True)
        c.graph.replay()
        return c.out

    @property
    def captured(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)


class CapturedCalls:
    """A pure function of tensors replayed from one CUDA graph per input shape: the encoder's
    forward per (batch, bucket). Called from one thread at a time (the conditioning worker), on
    that thread's current stream, which must not be the default stream. The result is a
    graph-owned buffer, rewritten by the next call of the same shapes: copy it out before then."""

    def __init__(self, fn: Callable[..., torch.Tensor], device: torch.device, *, warmup: int = 2):
        self.fn = fn
        self.device = torch.device(device)
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple, tuple["torch.cuda.CUDAGraph", list[torch.Tensor], torch.Tensor]] = {}
        self.capture_seconds: dict[tuple, float] = {}

    @staticmethod
    def key(args) -> tuple:
        return tuple((tuple(a.shape), a.dtype) for a in args)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = self.key(args)
        held = self._graphs.get(key)
        if held is None:
            return self._capture(key, args)
        graph, inputs, out = held
        for dst, src in zip(inputs, args):
            if dst is not src:
                dst.copy_(src, non_blocking=True)
        graph.replay()
        return out

    def _capture(self, key: tuple, args) -> torch.Tensor:
        start = time.perf_counter()
        stream = torch.cuda.current_stream(self.device)
        inputs = [a.clone() for a in args]
        for _ in range(self.warmup):  # compiles (the first time) and settles the allocator
            self.fn(*inputs)
        graph = torch.cuda.CUDAGraph()
        # Captured on this thread's own stream, with no device-wide synchronize or cache release
        # around it (torch.cuda.graph() does both): the frame loop keeps running, replaying its own
        # graphs and allocating, meanwhile. thread_local: only this thread's calls are checked.
        stream.synchronize()
        graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
        try:
            out = self.fn(*inputs)
        finally:
            graph.capture_end()
        self._graphs[key] = (graph, inputs, out)
        self.capture_seconds[key] = time.perf_counter() - start
        graph.replay()
        return out

    @property
    def captured(self) -> list[tuple]:
        return sorted(self._graphs, key=str)

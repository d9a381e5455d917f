"""When, and from which image, an engine refreshes its ControlNet-LLLite conditioning.

The paper's third mechanism: the adapter's conditioning CNNs do not run every frame. They run on
every N-th batch (`lllite_refresh`, OSC `/lllite/refresh`), and the embeddings they write stay in
the U-Net's fixed buffers for the batches in between. The conditioning image is

- `temporal` (the default): the previous stylized output warped toward each current frame by
  optical flow from the current input frame to the previous one (`engine/lllite/flow.py`, on the GPU),
  so the adapter pulls each frame toward what was just shown (temporal stability). The first
  batch, with nothing shown yet, uses the frame itself.
- `frame`: the current input frame (an adapter trained on the camera image).

The conditioning image enters the CNNs in [-1, 1] at the adapter's conditioning size (`cond_hw`:
each CNN's stride times its block's grid, the frame size for adapters trained as `dreamlite-lllite`
and kohya train them; resized when it differs). On an edit U-Net, whose input is target and source
side by side, the embeddings cover the target half only and are zero on the source half
(`LLLiteProjection.embed`), as `dreamlite-lllite` lays them out.

Everything here runs on the main stream between frames: strength changes fill one device scalar,
refreshes rewrite buffer contents, so the captured denoiser graph never changes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...errors import ParamError
from .adapter import LLLite

SOURCES = ("temporal", "frame")


def _flow_for(size: tuple[int, int]):
    """`FlowWarp` with its defaults, with fewer pyramid levels (and less downsampling) where the
    frame is too small for them (tests' 64x64 frames)."""
    from .flow import FlowWarp

    window, scale = 7, 4
    if min(size) // scale < window or size[0] % scale or size[1] % scale:
        scale = 1
    levels, side = 1, min(size) // scale
    while levels < 3 and (side + 1) // 2 >= window:
        levels, side = levels + 1, (side + 1) // 2
    return FlowWarp(size, scale=scale, levels=levels, window=window)


class LLLiteRunner:
    def __init__(self, lllite: LLLite, size: tuple[int, int], *, source: str = "temporal", compile=False):
        """`compile`: False (eager), True (Inductor) or a `torch.compile` backend (tests)."""
        if source not in SOURCES:
            raise ParamError("lllite_source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
        self.lllite = lllite
        self.size = size
        self.source = source
        self.flow = None
        if source == "temporal":
            self.flow = _flow_for(size).to(lllite.device)
        self.prev_in: Optional[torch.Tensor] = None  # [1,3,H,W] float in [0,1], the last frame shown
        self.prev_out: Optional[torch.Tensor] = None  # [1,3,H,W] float in [0,1], its stylized output
        self.batches = 0
        self.refreshes = 0
        self._every = None
        self._strength = None
        self._temporal = self._temporal_embeddings
        self._plain = self._plain_embeddings
        if compile is not False:
            backend = "inductor" if compile is True else compile
            self._temporal = torch.compile(self._temporal_embeddings, fullgraph=True, dynamic=False, backend=backend)
            self._plain = torch.compile(self._plain_embeddings, fullgraph=True, dynamic=False, backend=backend)

    # -- the two conditioning images (pure functions of tensors; compiled on a GPU) ---------
    def _layout(self, cond: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] in [0, 1] at the frame size -> the CNNs' input: [-1, 1] at `cond_hw`."""
        if tuple(cond.shape[-2:]) != tuple(self.lllite.cond_hw):
            cond = torch.nn.functional.interpolate(cond, size=self.lllite.cond_hw, mode="bilinear",
                                                   align_corners=False, antialias=False)
        return cond * 2 - 1

    def _plain_embeddings(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.lllite.embeddings(self._layout(x))

    def _temporal_embeddings(self, x: torch.Tensor, prev_in: torch.Tensor, prev_out: torch.Tensor) -> list[torch.Tensor]:
        warped = self.flow(x.float(), prev_in, prev_out).to(x.dtype)
        return self.lllite.embeddings(self._layout(warped))

    # -- per batch -------------------------------------------------------------------------
    @torch.no_grad()
    def before(self, x: torch.Tensor, strength: float, every: int) -> None:
        """Before the denoiser runs on `x` ([rows,3,H,W] in [0,1], on the device)."""
        if strength != self._strength:
            self.lllite.set_strength(strength)
            self._strength = strength
        if every != self._every:  # a new schedule starts with a refresh
            self._every = every
            self.batches = 0
        if self.batches % every == 0:
            x = x.contiguous()  # one layout for the compiled refresh, whatever the ingest produced
            if self.flow is not None and self.prev_in is not None:
                embeddings = self._temporal(x, self.prev_in, self.prev_out)
            else:
                embeddings = self._plain(x)
            self.lllite.write(embeddings)
            self.refreshes += 1
        self.batches += 1

    def after(self, x: torch.Tensor, out: torch.Tensor, n: int) -> None:
        """After the denoiser: keep the last real frame and its output ([rows,H,W,3] uint8) when the
        next batch refreshes a temporal conditioning (a device-side copy of one frame)."""
        if self.flow is None or self.batches % self._every != 0:
            return
        if self.prev_in is None:  # fixed, contiguous buffers: the compiled refresh sees one layout
            self.prev_in, self.prev_out = self._frame_buffer(), self._frame_buffer()
        self.prev_in.copy_(x[n - 1:n])
        self.prev_out.copy_(out[n - 1:n].permute(0, 3, 1, 2))
        self.prev_out.div_(255.0)

    def _frame_buffer(self) -> torch.Tensor:
        return torch.empty((1, 3, *self.size), device=self.lllite.device, dtype=torch.float32)

    @torch.no_grad()  # as in `before` (the engine's step): grad mode is part of what a compile is for
    def compile_ahead(self, rows: int) -> None:
        """Compile both conditioning paths now (the warm-up), not on the first live refresh; a
        compiled function is compiled on its first call, which would stall the show."""
        if self._plain is self._plain_embeddings:
            return  # eager: nothing to prepare
        x = torch.zeros((rows, 3, *self.size), device=self.lllite.device)  # frames arrive as float32
        self._plain(x)
        if self.flow is not None:  # two distinct tensors, as live (aliased inputs compile apart)
            self._temporal(x, self._frame_buffer().zero_(), self._frame_buffer().zero_())

    def reset(self) -> None:
        """Forget the frames shown (e.g. after the warm-up batch)."""
        self.prev_in = self.prev_out = None
        self.batches = 0

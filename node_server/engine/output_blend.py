"""Temporal output blend: less flicker by carrying part of the previous output along the motion.

The paper's runtime has it beside its temporal adapter (dreamlite-stream: `output_blend.py`, and
`demo_camera.py --temporal_blend_alpha --temporal_blend_warp`; read, not copied). Each output
frame becomes

    out_t = (1 - a) * model_t + a * warp(out_t-1)

where `warp` follows the optical flow from the current input frame to the previous one (the
temporal adapter's `FlowWarp`, on the device) and `a` is `temporal_blend` (0 = off, the default).
Unlike the paper's blend, the carry is guarded per pixel: where the previous input, warped the
same way, differs from the current input (an occlusion, a scene cut, a flash, the flow's own
failure), the carry fades out (`GUARD`), and a frame whose inputs differ on average by more than
`CUT` is treated as a cut and carries nothing. A prompt change (a new prompt or prompt set; not a
blend weight gliding between the prompts of a set) also starts afresh, so a new style is not
dragged in over several frames.

The blend runs after the denoiser on the main stream, in eager kernels of fixed shapes, with no
host synchronisation: the compiled denoiser graph does not change. Frames of one batch are blended
in order (each carries the one before it). It applies wherever the engine's outputs are its own
inputs' frames (not to the SD engine's stream batch, whose outputs belong to earlier inputs).
"""

from __future__ import annotations

from typing import Optional

import torch

# Per-pixel guard, on the input frames in [0, 1] (mean over RGB): the carry falls linearly from
# full at no difference to none at GUARD. Sensor noise (about 0.02) and exposure flicker (a few
# percent) keep most of it; an occluder or new content does not.
GUARD = 0.15
# Mean input difference above which a frame counts as a cut: nothing is carried.
CUT = 0.12
BLEND_RANGE = (0.0, 0.9)


class OutputBlend:
    def __init__(self, size: tuple[int, int], device):
        from .lllite.runner import _flow_for

        self.flow = _flow_for(size).to(device)
        self.prev_in: Optional[torch.Tensor] = None  # [1,3,H,W] float in [0,1]: the last input frame
        self.prev_out: Optional[torch.Tensor] = None  # [1,3,H,W] float in [0,1]: its (blended) output
        self.key: Optional[str] = None  # the prompt set the previous output was made with

    def reset(self) -> None:
        self.prev_in = self.prev_out = self.key = None

    @torch.no_grad()
    def apply(self, x: torch.Tensor, out: torch.Tensor, n: int, amount: float, key: str) -> torch.Tensor:
        """`x`: the batch's input frames ([rows,3,H,W] in [0,1]); `out`: the denoiser's outputs
        ([rows,H,W,3] uint8); the first `n` rows are real frames. Returns `out` with those `n` rows
        blended (a new tensor when there was anything to carry; the denoiser's own is left alone)."""
        if amount <= 0:
            self.reset()
            return out
        if key != self.key:
            self.reset()
            self.key = key
        cur_in = x[:n].float()
        cur_out = out[:n].permute(0, 3, 1, 2).float() / 255
        if self.prev_in is None:  # nothing shown yet: the first frame stays as it is
            prev_in, first = cur_in[:-1], 1
        else:
            prev_in, first = torch.cat([self.prev_in, cur_in[:-1]], 0), 0
        if first < n:
            # every frame's flow to its predecessor, and the guard, in one batched call each
            cur = cur_in[first:]
            flow = self.flow.flow(cur, prev_in)
            diff = (self.flow.warp(prev_in, flow) - cur).abs().mean(1, keepdim=True)
            carry = (1 - diff / GUARD).clamp(0, 1) * (diff.mean((1, 2, 3), keepdim=True) <= CUT).float() * amount
            blended = [cur_out[:first]] if first else []
            prev = self.prev_out if first == 0 else cur_out[:1]
            for i in range(cur.shape[0]):  # in order: each frame carries the blended one before it
                warped = self.flow.warp(prev, flow[i:i + 1])
                b = torch.lerp(cur_out[first + i:first + i + 1], warped, carry[i:i + 1])
                blended.append(b)
                prev = b
            cur_out = torch.cat(blended, 0)
            done = (cur_out * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            out = torch.cat([done, out[n:]], 0)
        self.prev_in = cur_in[-1:].clone()
        self.prev_out = cur_out[-1:].clone()
        return out

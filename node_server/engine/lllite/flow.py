"""Dense optical flow and backward warp for the temporal adapter (torch only, no weights).

Every N batches the previous stylized output is warped toward the current input frame and the
warped image becomes a ControlNet-LLLite conditioning image. `FlowWarp` estimates the flow from
the current input frame to the previous input frame and resamples the previous output with it.

Method (see docs/FLOW.md): luminance, area downsampling by `scale`, a `levels`-deep image
pyramid, and coarse-to-fine iterative Lucas-Kanade with `iters` Gauss-Newton updates per level
(symmetric gradients, box windows, a per-window brightness offset, closed-form 2x2 solve with a
Tikhonov term), then bilinear upsampling of the flow to full resolution and `grid_sample`
(border padding).

Everything is fixed at construction: sizes of every level, base sampling grids (buffers), kernel
weights, iteration counts. There are no branches on tensor values, no `.item()`, no host syncs
and no data-dependent shapes, so the same code runs eagerly on the CPU, under
`torch.compile(fullgraph=True)` and inside a CUDA graph capture. Computation is float32
whatever the input dtype; `flow` returns float32 and `warp` returns the image's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FlowWarp"]

# Rec. 601 luma weights.
_LUMA = (0.299, 0.587, 0.114)
# Tikhonov term added to the diagonal of the windowed, centred structure tensor (window variance
# of the gradients of [0,1] luminance). Flat windows keep the flow they had (0 at the coarsest
# level); textured windows (trace typically 1e-4 .. 1e-2 on photos) are barely affected.
_REG = 1e-5
# Largest Gauss-Newton update per iteration, in pixels of the current level: one linearisation
# is only valid over about a pixel or two, and a clamp keeps a bad window from running away.
_MAX_STEP = 2.0


def _base_grid(h: int, w: int) -> Tensor:
    """[1,h,w,2] grid_sample coordinates (x, y) of the pixel centres, align_corners=False."""
    ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).unsqueeze(0)


class FlowWarp(torch.nn.Module):
    """Backward warp of `prev_out` toward the current frame, by optical flow from the current input frame to the previous input frame."""

    def __init__(self, size: tuple[int, int], *, scale: int = 4, levels: int = 3, iters: int = 3, window: int = 7):
        super().__init__()
        h, w = (int(s) for s in size)
        scale, levels, iters, window = int(scale), int(levels), int(iters), int(window)
        if scale < 1 or levels < 1 or iters < 1:
            raise ValueError(f"scale, levels and iters must be >= 1, got {scale}, {levels}, {iters}")
        if window < 3 or window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 3, got {window}")
        if h % scale or w % scale:
            raise ValueError(f"size {h}x{w} must be a multiple of scale {scale}")
        self.size = (h, w)
        self.scale = scale
        self.levels = levels
        self.iters = iters
        self.window = window

        # Level sizes, finest (index 0: size // scale) to coarsest; each level halves (rounding).
        sizes = [(h // scale, w // scale)]
        for _ in range(levels - 1):
            ph, pw = sizes[-1]
            sizes.append(((ph + 1) // 2, (pw + 1) // 2))
        if min(sizes[-1]) < window:
            raise ValueError(
                f"the coarsest level ({sizes[-1][0]}x{sizes[-1][1]}) is smaller than the window "
                f"({window}): use fewer levels or a smaller scale for size {h}x{w}"
            )
        self.level_sizes: tuple[tuple[int, int], ...] = tuple(sizes)

        self.register_buffer("luma", torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # Scharr-like derivative kernels: central difference times [3,10,3]/16 smoothing.
        d = torch.tensor([-0.5, 0.0, 0.5])
        s = torch.tensor([3.0, 10.0, 3.0]) / 16
        kx = s[:, None] * d[None, :]
        self.register_buffer("grad_kernel", torch.stack((kx, kx.t())).unsqueeze(1).contiguous(), persistent=False)
        self.register_buffer("grid_full", _base_grid(h, w), persistent=False)
        for i, (lh, lw) in enumerate(sizes):
            self.register_buffer(f"grid_{i}", _base_grid(lh, lw), persistent=False)

    # -- pieces -----------------------------------------------------------------------------

    def _grad(self, x: Tensor) -> Tensor:
        """[n,1,h,w] -> [n,2,h,w] (d/dx, d/dy) with replicated borders."""
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.grad_kernel.float())

    def _box(self, x: Tensor) -> Tensor:
        """Mean over the window x window neighbourhood (separable; the part inside the image)."""
        k, p = self.window, self.window // 2
        x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, p), count_include_pad=False)
        return F.avg_pool2d(x, (k, 1), stride=1, padding=(p, 0), count_include_pad=False)

    @staticmethod
    def _sample(x: Tensor, grid: Tensor, flow: Tensor) -> Tensor:
        """x [n,C,h,w] float32 sampled at p + flow(p) (flow [n,2,h,w] in pixels of x)."""
        h, w = x.shape[-2:]
        # Python-scalar factors (no tensor constants: a host-to-device copy breaks graph capture).
        offset = torch.stack((flow[:, 0] * (2.0 / w), flow[:, 1] * (2.0 / h)), dim=-1)
        g = grid.float() + offset
        return F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)

    def _lk_level(self, cur: Tensor, prev: Tensor, flow: Tensor, grid: Tensor) -> Tensor:
        """`iters` Gauss-Newton updates of `flow` so that cur(p) ~= prev(p + flow(p))."""
        gc = self._grad(cur)
        # prev and its gradient are warped together: one grid_sample per iteration.
        prev_g = torch.cat((prev, self._grad(prev)), dim=1)
        for _ in range(self.iters):
            warped = self._sample(prev_g, grid, flow)
            g = 0.5 * (gc + warped[:, 1:3])
            gx, gy = g[:, 0:1], g[:, 1:2]
            ux, uy = flow[:, 0:1], flow[:, 1:2]
            # Residual linearised back to zero displacement: each pixel q of a window then votes
            # for the window's own displacement, not for a correction of its own flow(q).
            res = cur - warped[:, 0:1] + gx * ux + gy * uy
            # Least squares over the window for (flow, brightness offset): centring the
            # gradients and the residual by their window means eliminates the offset, so an
            # exposure change or a light does not read as motion.
            terms = torch.cat((gx * gx, gx * gy, gy * gy, gx * res, gy * res, gx, gy, res), dim=1)
            m = self._box(terms)
            mgx, mgy, mres = m[:, 5:6], m[:, 6:7], m[:, 7:8]
            a = m[:, 0:1] - mgx * mgx + _REG
            b = m[:, 1:2] - mgx * mgy
            c = m[:, 2:3] - mgy * mgy + _REG
            # Tikhonov term toward the current estimate: a flat window keeps its flow.
            bx = m[:, 3:4] - mgx * mres + _REG * ux
            by = m[:, 4:5] - mgy * mres + _REG * uy
            # A centred Gram matrix plus _REG * I: det >= _REG**2 up to rounding, and the clamp
            # keeps it there, so flat windows give 0 / _REG**2 = 0, never NaN.
            det = (a * c - b * b).clamp_min(_REG * _REG)
            new = torch.cat((c * bx - b * by, a * by - b * bx), dim=1) / det
            flow = flow + (new - flow).clamp(-_MAX_STEP, _MAX_STEP)
        return flow

    @staticmethod
    def _resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
        """Bilinear resize of a flow field to `size`, its vectors scaled by the size ratio."""
        h, w = flow.shape[-2:]
        up = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
        return torch.cat((up[:, 0:1] * (size[1] / w), up[:, 1:2] * (size[0] / h)), dim=1)

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        """[n,3,H,W] -> luminance pyramid, finest (size // scale) first, float32, area averaging."""
        y = (x.float() * self.luma.float()).sum(dim=1, keepdim=True)
        out = [F.interpolate(y, size=self.level_sizes[0], mode="area")]
        for lsize in self.level_sizes[1:]:
            out.append(F.interpolate(out[-1], size=lsize, mode="area"))
        return out

    # -- API --------------------------------------------------------------------------------

    def flow(self, cur: Tensor, prev: Tensor) -> Tensor:
        """cur, prev: [n,3,H,W] in [0,1] (H,W == size). Returns flow [n,2,H,W] in pixels (dx, dy) such that cur(p) ~= prev(p + flow(p))."""
        n = cur.shape[0]
        pc = self._pyramid(cur)
        # A batch-1 prev is reduced once and broadcast at the coarse levels.
        pp = [p.expand(n, -1, -1, -1) for p in self._pyramid(prev)]
        ch, cw = self.level_sizes[-1]
        flow = torch.zeros(n, 2, ch, cw, dtype=torch.float32, device=cur.device)
        for i in range(self.levels - 1, -1, -1):
            if i < self.levels - 1:
                flow = self._resize_flow(flow, self.level_sizes[i])
            flow = self._lk_level(pc[i], pp[i], flow, getattr(self, f"grid_{i}"))
        return self._resize_flow(flow, self.size)

    def warp(self, img: Tensor, flow: Tensor) -> Tensor:
        """img [n,C,H,W] (or [1,C,H,W] broadcast to flow's n) sampled at p + flow(p) (bilinear, border padding)."""
        n = flow.shape[0]
        x = img.expand(n, -1, -1, -1).float()
        return self._sample(x, self.grid_full, flow.float()).to(img.dtype)

    def forward(self, cur: Tensor, prev: Tensor, prev_out: Tensor) -> Tensor:
        """warp(prev_out, flow(cur, prev)); prev and prev_out may have batch 1 and are broadcast to cur's batch."""
        return self.warp(prev_out, self.flow(cur, prev))

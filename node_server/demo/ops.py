"""Small image operations in torch that the styles are built from (blur, edges, colour space).

Everything works on float batches `[N, 3, H, W]` in [0, 1] on any device, so the training data can be
made on the GPU and the tests can compute the same targets on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] -> [N,1,H,W] (Rec. 601 weights)."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders (radius 3 sigma)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def sobel_magnitude(g: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of a one-channel image (Sobel, replicated borders); about 1 at a 0->1 step."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=g.device, dtype=g.dtype) / 4
    p = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(p, kx.view(1, 1, 3, 3))
    gy = F.conv2d(p, kx.t().reshape(1, 1, 3, 3))
    return torch.sqrt(gx * gx + gy * gy + 1e-12)


def saturate(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Scale the distance from grey: >1 more colourful, 0 grey."""
    g = luminance(x)
    return (g + (x - g) * amount).clamp(0, 1)


def bilateral(x: torch.Tensor, radius: int = 3, sigma_space: float = 2.0, sigma_range: float = 0.12) -> torch.Tensor:
    """Edge-preserving smoothing: each pixel averages neighbours that are near in space and colour."""
    n, c, h, w = x.shape
    p = F.pad(x, (radius,) * 4, mode="reflect")
    acc = torch.zeros_like(x)
    norm = torch.zeros(n, 1, h, w, device=x.device, dtype=x.dtype)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = p[:, :, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            d2 = ((shifted - x) ** 2).sum(1, keepdim=True)
            wgt = torch.exp(torch.tensor(-(dy * dy + dx * dx) / (2 * sigma_space**2), device=x.device, dtype=x.dtype)
                            - d2 / (2 * sigma_range**2))
            acc += wgt * shifted
            norm += wgt
    return acc / norm


def kuwahara(x: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Kuwahara filter: the mean of the least varied of the four quadrants around each pixel
    (flat, painterly patches with sharp borders between them)."""
    k = radius + 1
    g = luminance(x)
    h, w = x.shape[-2:]
    p = F.pad(torch.cat([x, g, g * g], 1), (radius,) * 4, mode="reflect")
    m = F.avg_pool2d(p, k, stride=1)  # means over every k x k window, top-left anchored
    best_var = None
    out = None
    for oy in (0, radius):
        for ox in (0, radius):
            win = m[:, :, oy : oy + h, ox : ox + w]
            var = win[:, 4:5] - win[:, 3:4] ** 2
            if best_var is None:
                best_var, out = var, win[:, :3]
            else:
                better = var < best_var
                best_var = torch.where(better, var, best_var)
                out = torch.where(better, win[:, :3], out)
    return out


def colormap(v: torch.Tensor, stops: list[tuple[float, tuple[float, float, float]]]) -> torch.Tensor:
    """Piecewise-linear colour map of a one-channel image in [0, 1] -> [N,3,H,W]."""
    pos = torch.tensor([s[0] for s in stops], device=v.device, dtype=v.dtype)
    cols = torch.tensor([s[1] for s in stops], device=v.device, dtype=v.dtype)  # [K,3]
    v = v.clamp(0, 1)[:, 0]
    idx = torch.bucketize(v.contiguous(), pos[1:-1])  # segment 0..K-2
    lo, hi = pos[idx], pos[idx + 1]
    t = ((v - lo) / (hi - lo)).clamp(0, 1).unsqueeze(-1)
    rgb = cols[idx] * (1 - t) + cols[idx + 1] * t  # [N,H,W,3]
    return rgb.permute(0, 3, 1, 2).contiguous()

"""FP8 matrix products for a U-Net's linears and pointwise convolutions (a benchmark lever).

Hopper runs float8 matrix products at twice the bf16 rate. Each weight is quantized once, when
the engine is built, to float8_e4m3fn with one scale per output channel; each activation row (a
token, or a pixel of a 1x1 convolution) gets its own scale at run time; `torch._scaled_mm`
multiplies with fp32 accumulation and returns the engine's dtype. This is an approximation, so it
is off unless asked for (`StreamEngine(fp8=True)`, `bench.run --fp8 on`). Measured on an H100
(docs/BENCHMARKS.md) it does not pay on the paper's U-Net: the step is 1.13-1.15x slower (the
per-row quantization is one more pass over every activation, and the products are small), and
the picture is 36-39 dB from bf16's. So no user flag offers it.
The same code runs on the CPU (torch's CPU `_scaled_mm`), where it is only a test of the arithmetic.

Only modules inside the U-Net's transformer and resnet blocks are swapped, and only where both
dimensions are multiples of 16 (`_scaled_mm`'s rule): the time embedding's linears see one row
per frame and gain nothing. `use_fp8` changes the module tree it is given: an engine calls it on
its own view (engine/module_view.py), never on a bundle's U-Net.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ParamError

log = logging.getLogger("node_server.engine")

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (float8 [M, K], fp32 scale [M, 1]) with x ~= q * scale, each row's largest
    magnitude mapped to float8's largest finite value."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def _fits(k: int, n: int) -> bool:
    return k % 16 == 0 and n % 16 == 0


class Fp8Matmul(nn.Module):
    """`x @ W.T + b` with W in float8 (per output channel) and x quantized per row."""

    def __init__(self, weight: torch.Tensor, bias: "torch.Tensor | None"):
        super().__init__()
        q, scale = quantize_rows(weight.detach().reshape(weight.shape[0], -1))
        self.register_buffer("weight_fp8", q)  # [N, K], row-major: .t() is the column-major B
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        """[M, K] in the engine's dtype -> [M, N] in the same dtype."""
        q, scale = quantize_rows(rows.contiguous())  # row-major A (a 1x1 conv's rows at batch 1 are not)
        out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=rows.dtype)
        return out if self.bias is None else out + self.bias.to(out.dtype)


class Fp8Linear(Fp8Matmul):
    def __init__(self, linear: nn.Linear):
        super().__init__(linear.weight, linear.bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)


class Fp8PointwiseConv(Fp8Matmul):
    """A 1x1 convolution (stride 1, no groups) as a matrix product over pixels; the output is a
    channels-last view in NCHW shape, which the next convolution or norm takes as it is."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv.weight, conv.bias)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        return self.matmul(rows).view(b, h, w, self.out_channels).permute(0, 3, 1, 2)


def _swappable(module: nn.Module) -> "type[Fp8Matmul] | None":
    if isinstance(module, nn.Linear) and _fits(module.in_features, module.out_features):
        return Fp8Linear
    if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.padding == (0, 0) and module.groups == 1 and module.padding_mode == "zeros"
            and _fits(module.in_channels, module.out_channels)):
        return Fp8PointwiseConv
    return None


BLOCKS = ("down_blocks", "mid_block", "up_blocks")  # the U-Net's blocks; not its time embedding


def check_device(device: torch.device) -> None:
    """A GPU without float8 matrix units (before Ada/Hopper) is refused in one line; on the CPU the
    products are emulated (the same arithmetic, slower), which only tests use."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise ParamError("fp8", f"needs a GPU with float8 matrix units (compute capability 8.9 or later: "
                             f"Ada, Hopper); {torch.cuda.get_device_name(device)} is "
                             f"{capability[0]}.{capability[1]}")
    else:
        log.warning("fp8 on %s: float8 is emulated there and runs slower than without it", device)


def use_fp8(unet: nn.Module, device: "torch.device | None" = None) -> int:
    """Swap `unet`'s eligible linears and 1x1 convolutions inside its blocks for FP8 ones; returns
    how many were swapped. A ControlNet-LLLite hook (engine/lllite) keeps its projection and its
    own small layers in the engine's dtype. With `device` (an engine's), `check_device` first."""
    if device is not None:
        check_device(torch.device(device))
    swapped = 0
    for block in BLOCKS:
        root = getattr(unet, block, None)
        if root is None:
            continue
        named = list(root.named_modules())
        hooked = tuple(name + "." for name, m in named if type(m).__name__ == "LLLiteProjection")
        for name, module in named:
            kind = _swappable(module)
            if kind is None or not name or type(module) not in (nn.Linear, nn.Conv2d) or name.startswith(hooked):
                continue
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, child, kind(module))
            swapped += 1
    return swapped

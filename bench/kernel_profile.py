"""Where a compiled piece's device time goes: its kernels from the PyTorch profiler, the top ones
by time and the share of each kind (convolution, matrix product, attention, Inductor's fused
Triton kernels, the rest), plus its FLOP count, so a run says what the U-Net step is spent on.

Used by `bench.run --profile-unet`; `bench.profile_unet --profile` prints the profiler's own table.
"""

from __future__ import annotations

from typing import Callable

import torch

# Kernel name fragments -> kind; the first match wins (lower-cased names).
KINDS = (
    ("attention", ("fmha", "flash", "attention", "efficient_attention", "sdpa", "cutlassf", "mem_eff")),
    ("convolution", ("conv", "implicit_gemm", "fprop", "dgrad", "wgrad", "winograd", "cudnn")),
    ("matmul", ("gemm", "matmul", "nvjet", "cutlass", "xmma", "sm90_", "ampere_", "hopper")),
    ("norm (triton)", ("native_group_norm", "group_norm", "layer_norm", "rms")),
    ("triton fused", ("triton_",)),
    ("copy / cast", ("copy", "memcpy", "memset", "cast", "fill")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, fragments in KINDS:
        if any(f in low for f in fragments):
            return kind
    return "other"


def profile_kernels(fn: Callable[[], object], *, calls: int = 10, top: int = 12) -> dict:
    """Run `fn` `calls` times under the profiler (after one warm call); per call: total kernel ms,
    the `top` kernels (name, ms, share) and the share of each kind."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = {}
    for event in prof.events():
        if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        us = float(getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0) or 0.0)
        per_kernel[event.name] = per_kernel.get(event.name, 0.0) + us
    total = sum(per_kernel.values()) or 1.0
    kinds: dict[str, float] = {}
    for name, us in per_kernel.items():
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + us
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]
    return {
        "kernel_ms_per_call": round(total / calls / 1e3, 3),
        "top": [[name[:90], round(us / calls / 1e3, 4), round(us / total, 3)] for name, us in ranked],
        "kinds": {k: round(v / total, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
    }


def gflop(fn: Callable[[], object]) -> float:
    """FLOPs of one call of `fn` (PyTorch's FLOP counter: matrix products and convolutions), in G."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return round(counter.get_total_flops() / 1e9, 1)


def format_profile(title: str, prof: dict) -> str:
    lines = [f"{title}: {prof['kernel_ms_per_call']} ms of kernels per call; by kind: "
             + ", ".join(f"{k} {v:.0%}" for k, v in prof["kinds"].items())]
    lines += [f"  {ms:8.4f} ms {share:6.1%}  {name}" for name, ms, share in prof["top"]]
    return "\n".join(lines)

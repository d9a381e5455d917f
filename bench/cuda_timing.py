"""Milliseconds per call of a piece of GPU work, by CUDA events: the one timing helper of the
bench tools (`bench.run`'s breakdown and LLLite refresh, `bench.profile_unet`, `bench.profile_attention`)."""

from __future__ import annotations

from typing import Callable

import torch


def cuda_ms(fn: Callable[[], object], *, repeats: int = 50, warmup: int = 2, graph: bool = False) -> float:
    """Mean time of `fn` over `repeats` calls on the current stream, after `warmup` calls.

    With `graph`, `fn` is captured once as a CUDA graph and the replays are timed (launch overhead
    out, as in the engine); the warm-up then runs on a side stream, as capture requires."""
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            fn()
        call = captured.replay
    else:
        for _ in range(warmup):
            fn()
        call = fn
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats

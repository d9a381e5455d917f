"""`bench.cuda_timing.cuda_ms`, the bench tools' one GPU timer (CUDA only; run on the device)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("graph", [False, True])
def test_timed_work_really_runs_and_more_work_takes_longer(graph):
    from bench.cuda_timing import cuda_ms

    x = torch.randn(2048, 2048, device="cuda")
    out = torch.zeros_like(x)
    calls = []

    def small():
        calls.append(1)
        out.copy_(x * 2)

    def large():
        for _ in range(8):
            out.copy_(x @ x)

    t_small = cuda_ms(small, repeats=10, graph=graph)
    out.zero_()
    t_small = cuda_ms(small, repeats=10, graph=graph)  # replays (or calls) write `out` again
    torch.cuda.synchronize()
    torch.testing.assert_close(out, x * 2)
    # eager: warm-up + repeats, all in Python; graph: warm-up + one capture, then replays only
    assert len(calls) == (2 * (2 + 10) if not graph else 2 * (2 + 1))
    t_large = cuda_ms(large, repeats=5, graph=graph)
    assert 0 < t_small < t_large

"""The opt-in FP8 U-Net (engine/fp8.py): its quantizer's error bound, the swapped modules against
the originals, and an engine built with it, on the CPU (torch's CPU `_scaled_mm`: the arithmetic,
not the speed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node_server.engine import fp8
from node_server.engine.module_view import module_view
from node_server.engine.params import Params


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), exponent=st.integers(-30, 30),
       zero_row=st.booleans(), seed=st.integers(0, 2**16))
def test_row_quantizer_error_is_within_float8_precision(rows, cols, exponent, zero_row, seed):
    """Any magnitude (2^-30 .. 2^30), an all-zero row, one column: no NaN, no overflow, and each
    value within float8 e4m3's half-step (1/16 of the value) or the row's smallest normal step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 2.0 ** exponent
    if zero_row:
        x[0] = 0
    q, scale = fp8.quantize_rows(x)
    assert q.dtype == fp8.E4M3 and scale.shape == (rows, 1)
    back = q.float() * scale
    assert torch.isfinite(back).all()
    tol = x.abs() / 16 + scale * 2.0 ** -6  # relative rounding, or the subnormal step
    assert ((back - x).abs() <= tol * 1.0001).all()
    if zero_row:
        assert (back[0] == 0).all()


def test_swapped_modules_match_the_originals_closely(monkeypatch):
    real = torch._scaled_mm

    def row_major_a(a, b, **kw):  # cuBLASLt takes only a row-major A (the CPU takes any)
        assert a.is_contiguous() and b.t().is_contiguous()
        return real(a, b, **kw)

    monkeypatch.setattr(torch, "_scaled_mm", row_major_a)
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    conv = torch.nn.Conv2d(32, 16, 1)
    x = torch.randn(3, 5, 64)
    img = torch.randn(1, 32, 6, 7)  # batch 1: the NCHW rows view is column-major
    for original, swapped, inp in ((lin, fp8.Fp8Linear(lin), x), (conv, fp8.Fp8PointwiseConv(conv), img)):
        want, got = original(inp), swapped(inp)
        assert got.shape == want.shape
        rel = (got - want).norm() / want.norm()
        assert 1e-4 < rel < 0.06, float(rel)  # float8, not a copy of the float32 result
    assert fp8._swappable(torch.nn.Linear(64, 40)) is None  # 40 is no multiple of 16
    assert fp8._swappable(torch.nn.Conv2d(32, 32, 3)) is None
    assert fp8._swappable(torch.nn.Conv2d(32, 32, 1, groups=2)) is None


def test_use_fp8_swaps_only_the_blocks_and_not_the_hooks(tiny_bundle, tmp_path):
    from node_server.engine.lllite.adapter import LLLite
    from node_server.models.lllite_file import read_lllite, synth_hooks, write_lllite

    unet = module_view(tiny_bundle.unet)
    path = write_lllite(tmp_path / "a.safetensors", synth_hooks(unet, blocks="down"))
    adapter = LLLite(unet, read_lllite(path, unet), (64, 64), edit_layout=True, max_rows=1, blocks="down")
    swapped = fp8.use_fp8(unet)
    assert swapped > 20
    kinds = {type(m).__name__ for m in unet.modules()}
    assert {"Fp8Linear", "Fp8PointwiseConv"} <= kinds
    assert all(type(m.base) is torch.nn.Linear for m in adapter.modules)  # the hooked projections kept
    assert all(type(sub) in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Sequential) or
               not isinstance(sub, fp8.Fp8Matmul) for m in adapter.modules for sub in m.modules())
    assert not any(isinstance(m, fp8.Fp8Matmul) for m in unet.time_embedding.modules())
    assert not any(isinstance(m, fp8.Fp8Matmul) for m in tiny_bundle.unet.modules())  # the bundle untouched


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_an_fp8_engine_draws_what_the_plain_one_draws(tiny_bundle):
    """The same frames through an engine with and without `fp8`: close (the tiny random model,
    so the bound is loose) but not identical, and the bundle keeps its own modules."""
    from node_server.engine.dreamlite.engine import StreamEngine

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    params = Params().replace(prompt="oil painting", batch_size=2, strength=0.5)
    outs = []
    for use in (False, True):
        with StreamEngine(tiny_bundle, params, size=64, encoder_image_size=64, fp8=use) as eng:
            assert (eng.fp8_modules > 0) == use
            outs.append(np.stack([o.image for o in eng.step(frames, [0, 1])]))
    plain, quant = outs
    assert not np.array_equal(plain, quant)
    assert _psnr(plain, quant) > 30, _psnr(plain, quant)
    assert not any(isinstance(m, fp8.Fp8Matmul) for m in tiny_bundle.unet.modules())


def test_an_unknown_attention_mode_is_refused(tiny_bundle):
    from node_server.engine.dreamlite.engine import StreamEngine

    with pytest.raises(ValueError, match="attention mode"):
        StreamEngine(tiny_bundle, size=64, encoder_image_size=64, attention="flash")

"""The fixed-shape encoder forward equals transformers' own Qwen3-VL forward (tiny model, CPU, fp32)."""

from __future__ import annotations

import torch

from node_server.engine.encoder import PromptEncoder


def _frames(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_fixed_shape_forward_matches_stock_forward(tiny_bundle):
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    for prompt, n, seed in (("oil painting", 1, 0), ("a much longer instruction about neon light", 3, 1), ("", 2, 2)):
        tokens = enc.tokenize(prompt)
        frames = _frames(n, seed)
        fast, fast_mask = enc.encode(tokens, frames)
        ref, ref_mask = enc.encode_stock(tokens, frames)
        assert fast.shape == ref.shape == (n, enc.cond_length, ref.shape[-1])
        assert torch.equal(fast_mask, ref_mask)
        err = (fast - ref).norm() / ref.norm()
        assert err < 1e-5, (prompt, n, float(err))


def test_fixed_shape_forward_sees_each_frame(tiny_bundle):
    """Per-frame rows differ when the frames differ (the image really reaches the text tokens)."""
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    tokens = enc.tokenize("sketch")
    frames = _frames(2, 5)
    out, _ = enc.encode(tokens, frames)
    single, _ = enc.encode(tokens, frames[1:])
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert torch.allclose(out[1], single[0], atol=1e-5)

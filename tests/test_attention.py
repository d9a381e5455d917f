"""The aligned-head attention processor computes exactly what DreamLite's own processor does."""

from __future__ import annotations

import copy

import pytest
import torch

from node_server.engine.attention import AlignedHeadAttnProcessor, use_aligned_heads


def _unet_inputs(unet, n=2, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config.in_channels
    x = torch.randn(n, c, 8, 16, generator=g)
    emb = torch.randn(n, length, unet.config.cross_attention_dim, generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 25:] = 0
    mask[1, 10:] = 0
    return dict(sample=x, timestep=torch.tensor([700.0, 300.0]), encoder_hidden_states=emb,
                encoder_attention_mask=mask, added_cond_kwargs={"time_ids": torch.tensor([[64.0, 64.0]] * n)},
                return_dict=False)


def _run(unet, device, dtype=torch.float32):
    kw = _unet_inputs(unet)
    kw = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in kw.items()}
    kw["added_cond_kwargs"] = {"time_ids": kw["added_cond_kwargs"]["time_ids"].to(device)}
    with torch.no_grad():
        return unet.to(device, dtype)(**kw)[0].float().cpu()


def _pair(tiny_bundle):
    stock = copy.deepcopy(tiny_bundle.unet)
    ours = copy.deepcopy(tiny_bundle.unet)
    assert use_aligned_heads(ours) > 0
    assert use_aligned_heads(ours) == 0  # already swapped: nothing left to change
    assert not any(isinstance(getattr(m, "processor", None), AlignedHeadAttnProcessor) for m in stock.modules())
    return stock, ours


def test_matches_dreamlite_processor_on_cpu(tiny_bundle):
    stock, ours = _pair(tiny_bundle)
    a, b = _run(stock, "cpu"), _run(ours, "cpu")
    assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_padded_heads_match_on_cuda(tiny_bundle):
    torch.backends.cuda.matmul.allow_tf32 = False
    stock, ours = _pair(tiny_bundle)
    a, b = _run(stock, "cuda"), _run(ours, "cuda")
    err = (a - b).norm() / a.norm()
    assert err < 1e-5, float(err)

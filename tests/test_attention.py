"""The aligned-head attention processor computes exactly what DreamLite's own processor does."""

from __future__ import annotations

import copy

import pytest
import torch

from node_server.engine.dreamlite import attention
from node_server.engine.dreamlite.attention import AlignedHeadAttnProcessor, use_aligned_heads


@pytest.fixture(scope="module")
def narrow_head_unet():
    """A tiny DreamLite U-Net with the paper's narrow heads (10 and 20 channels: the tiny model's
    are 8 and 16, which need no padding)."""
    from diffusers import DreamLiteUNetModel

    from node_server.models.synthetic import unet_config

    config = dict(unet_config("tiny"), block_out_channels=(40, 80))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = DreamLiteUNetModel(**config).eval().requires_grad_(False)
    heads = {m.inner_dim // m.heads for m in unet.modules() if hasattr(m, "processor")}
    assert heads == {10, 20}
    return unet


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


def _pair(tiny_bundle, unet=None, pad_on_cpu=None):
    """`tiny_bundle`'s U-Net (or `unet`) twice: DreamLite's processors and the aligned-head ones.
    The first assertion fails when an engine has changed the shared bundle's U-Net."""
    unet = tiny_bundle.unet if unet is None else unet
    stock = copy.deepcopy(unet)
    ours = copy.deepcopy(unet)
    assert use_aligned_heads(ours, pad_on_cpu=pad_on_cpu) > 0
    assert use_aligned_heads(ours) == 0  # already swapped: nothing left to change
    assert not any(isinstance(getattr(m, "processor", None), AlignedHeadAttnProcessor) for m in stock.modules())
    return stock, ours


def test_matches_dreamlite_processor_on_cpu(tiny_bundle):
    stock, ours = _pair(tiny_bundle)
    a, b = _run(stock, "cpu"), _run(ours, "cpu")
    assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()


class _PadSpy:
    """Counts the head paddings the processor does (F.pad calls in engine/dreamlite/attention.py)."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = attention.F.pad

        def pad(t, widths, *args, **kwargs):
            self.calls.append((t.shape[-1], tuple(widths)))
            return original(t, widths, *args, **kwargs)

        monkeypatch.setattr(attention.F, "pad", pad)


@pytest.mark.parametrize("pad_on_cpu", [False, True])
def test_padded_heads_on_the_cpu_match_dreamlite_processor(tiny_bundle, narrow_head_unet, monkeypatch, pad_on_cpu):
    """The GPU's zero-padded heads, run on the CPU through the test switch, equal DreamLite's own
    processor: the CPU suite covers the padding arithmetic, not only the unpadded path."""
    stock, ours = _pair(tiny_bundle, narrow_head_unet, pad_on_cpu=pad_on_cpu)
    spy = _PadSpy(monkeypatch)
    b = _run(ours, "cpu")
    assert {c[0] for c in spy.calls} == ({10, 20} if pad_on_cpu else set())  # padded (or not) as asked
    assert all(w == (0, (-head) % 8) for head, w in spy.calls)
    a = _run(stock, "cpu")
    assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()


def test_the_module_switch_turns_cpu_padding_on(narrow_head_unet, monkeypatch):
    monkeypatch.setattr(attention, "PAD_ON_CPU", True)
    unet = copy.deepcopy(narrow_head_unet)
    use_aligned_heads(unet)
    assert all(m.processor.pad_on_cpu for m in unet.modules() if isinstance(getattr(m, "processor", None),
                                                                           AlignedHeadAttnProcessor))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_padded_heads_match_on_cuda(tiny_bundle, narrow_head_unet, monkeypatch):
    stock, ours = _pair(tiny_bundle, narrow_head_unet)
    spy = _PadSpy(monkeypatch)
    # full fp32 in matmuls and convolutions (monkeypatch would delete these settings on undo): with
    # TF32 convolutions, the last-bit differences of the padded attention grow to ~1e-4 downstream
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        b = _run(ours, "cuda")
        a = _run(stock, "cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert {c[0] for c in spy.calls} == {10, 20}  # the GPU pads the narrow heads
    err = (a - b).norm() / a.norm()
    assert err < 1e-5, float(err)


def test_the_shared_bundle_was_not_changed_by_earlier_tests(tiny_bundle):
    """Run after the engine tests (any order): the session's bundle still has DreamLite's processors."""
    _pair(tiny_bundle)


@pytest.mark.parametrize("head", [5, 8, 10, 20])
def test_folded_key_mask_equals_the_masked_attention(head):
    """`fold_key_mask` carries the key mask inside the heads: the unmasked attention of its result
    equals the masked attention, for head sizes with and without spare padding."""
    g = torch.Generator().manual_seed(head)
    q, k, v = (torch.randn(2, 3, n, head, generator=g) for n in (7, 11, 11))
    keep = torch.ones(2, 11, dtype=torch.bool)
    keep[0, 6:] = False
    keep[1, 2:] = False
    mask = torch.zeros(2, 3, 1, 11).masked_fill(~keep[:, None, None, :], -10000.0)
    scale = head ** -0.5
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    fq, fk, fv, no_mask = attention.fold_key_mask(q, k, v, mask, scale)
    assert no_mask is None and fq.shape[-1] % 8 == 0 and fq.shape[-1] > head
    got = torch.nn.functional.scaled_dot_product_attention(fq, fk, fv, scale=scale)[..., :head]
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    unmasked = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    assert not torch.allclose(got, unmasked, atol=1e-3)  # the mask did change the result


def test_folded_mask_unet_matches_dreamlite_processor_on_the_cpu(narrow_head_unet):
    """The whole U-Net with the mask folded into the heads (the CPU test switch on) equals
    DreamLite's own processor."""
    stock, ours = copy.deepcopy(narrow_head_unet), copy.deepcopy(narrow_head_unet)
    assert use_aligned_heads(ours, pad_on_cpu=True, fold_mask=True) > 0
    assert all(m.processor.fold_mask for m in ours.modules() if isinstance(getattr(m, "processor", None),
                                                                           AlignedHeadAttnProcessor))
    a, b = _run(stock, "cpu"), _run(ours, "cpu")
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_folded_mask_matches_on_cuda(narrow_head_unet):
    stock, ours = copy.deepcopy(narrow_head_unet), copy.deepcopy(narrow_head_unet)
    use_aligned_heads(ours, fold_mask=True)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        a, b = _run(stock, "cuda"), _run(ours, "cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    err = (a - b).norm() / a.norm()
    assert err < 1e-5, float(err)

"""Attention for the DreamLite U-Net that keeps masked cross-attention on a fused GPU kernel.

The DreamLite U-Net uses many narrow heads (head size 10 and 20). PyTorch's fused kernels refuse
that combination with a mask: flash attention takes no mask and the memory-efficient kernel needs
a head size divisible by 8, so every masked cross-attention falls back to the math path, which
upcasts bf16 to fp32 (measured on an H200: about 1 ms per 2048-query cross-attention at batch 1,
over half the compiled U-Net step). Padding the heads with zeros to the next multiple of 8 changes
no dot product and no output value (the scale stays that of the real head size), and lets the
memory-efficient kernel run. On the CPU nothing is padded (no kernel needs it), unless
`pad_on_cpu` (or the module switch `PAD_ON_CPU`, a test hook) asks for it, so the CPU tests cover
the padded path too.

The engine's default goes one step further (`fold_mask`, `fold_key_mask`): the key mask rides in
one spare head slot, so no mask is left and flash attention (cuDNN's sm90 kernel on Hopper) takes
the call. It is as exact as the padding (a CUDA test compares it in fp32) and measured 1.04-1.07x
the frame rate at points I, S and P on an H100 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


ATTENTION_MODES = ("pad", "fold")  # `StreamEngine(attention=...)`: beside a mask, or the mask folded in
PAD_ON_CPU = False  # test hook: pad the heads on the CPU as well (`use_aligned_heads`' default)


class AlignedHeadAttnProcessor:
    """Drop-in processor for diffusers `Attention` modules of the DreamLite U-Net (GQA, q/k norms)."""

    def __init__(self, pad_on_cpu: bool = False, fold_mask: bool = False):
        self.pad_on_cpu = pad_on_cpu
        self.fold_mask = fold_mask

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        b = hidden_states.shape[0]
        keys_len = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, keys_len, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)

        head = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head
        query = query.view(b, -1, attn.heads, head)
        key = key.view(b, -1, kv_heads, head)
        value = value.view(b, -1, kv_heads, head)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if kv_heads != attn.heads:  # grouped-query attention: share each K/V head among its queries
            repeat = attn.heads // kv_heads
            key = key.repeat_interleave(repeat, dim=2)
            value = value.repeat_interleave(repeat, dim=2)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # [b, heads, tokens, head]

        scale = head**-0.5
        aligned = query.is_cuda or self.pad_on_cpu
        fold = aligned and self.fold_mask and (attention_mask is None or attention_mask.shape[-2] == 1)
        if fold:
            query, key, value, attention_mask = fold_key_mask(query, key, value, attention_mask, scale)
            pad = query.shape[-1] - head
        else:
            pad = (-head) % 8 if aligned and attention_mask is not None else 0
            if pad:
                query, key, value = (F.pad(t, (0, pad)) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        if pad:
            out = out[..., :head]
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def fold_key_mask(query, key, value, mask, scale: float):
    """[b, heads, tokens, head] q/k/v and an additive key mask ([b, heads, 1, keys] or None) ->
    the same attention with no mask: the mask rides in one extra head slot (1 in every query, the
    key's bias / scale in its key, 0 in its value), so q.k * scale gains exactly the bias, and the
    heads are zero-padded to a multiple of 8. With no mask to carry, flash attention (which takes
    no mask) and cuDNN's flash kernel accept the result. The caller passes `scale` (the real head
    size's) and cuts the output back to the real head size."""
    head = query.shape[-1]
    if mask is not None:
        bias = (mask[:, :1].transpose(-1, -2) / scale).to(key.dtype)  # [b, 1, keys, 1]
        query = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1)
        key = torch.cat([key, bias.expand(-1, key.shape[1], -1, -1)], dim=-1)
        value = torch.cat([value, torch.zeros_like(value[..., :1])], dim=-1)
    pad = (-query.shape[-1]) % 8
    if pad:
        query, key, value = (F.pad(t, (0, pad)) for t in (query, key, value))
    return query, key, value, None


def use_aligned_heads(unet, pad_on_cpu: "bool | None" = None, fold_mask: bool = False) -> int:
    """Give every attention module of `unet` that runs DreamLite's processor the aligned-head one;
    returns how many were changed (0 for other U-Nets, which keep their own). `fold_mask`: carry
    the key mask inside the heads (`fold_key_mask`) instead of padding beside a mask. This changes
    `unet`: an engine calls it on its own view (engine/module_view.py), never on a bundle's U-Net."""
    pad_on_cpu = PAD_ON_CPU if pad_on_cpu is None else pad_on_cpu
    changed = 0
    for module in unet.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and type(processor).__name__ == "DreamLiteAttnProcessor2_0":
            module.set_processor(AlignedHeadAttnProcessor(pad_on_cpu=pad_on_cpu, fold_mask=fold_mask))
            changed += 1
    return changed

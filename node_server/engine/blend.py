"""Prompt and seed blending shared by both engine families: prompt-set keys, the weighted mix of
cached conditionings and the weighted mix of seed noises.

A blend is a set of up to four prompts (or seeds) with weights. The set is encoded once when it
changes (DreamLite: `dreamlite/prompt_sets.py`; SD: one batched CLIP call, `sd/encoder.py`); a
weight change only re-mixes what is cached, on the main stream, into a tensor of the same shape
as a single prompt's conditioning, so nothing is re-encoded and no graph is re-captured.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import torch

BLEND_KEY_PREFIX = "\x00blend:"  # prompts never contain NUL (Params rejects it): no clash with a prompt


def prompt_set_key(prompts: Sequence[str]) -> str:
    """The cache key of a prompt set: the prompt itself for one, a NUL-prefixed JSON list for several."""
    prompts = tuple(prompts)
    return prompts[0] if len(prompts) == 1 else BLEND_KEY_PREFIX + json.dumps(list(prompts))


def prompts_of_key(key: str) -> tuple[str, ...]:
    if key.startswith(BLEND_KEY_PREFIX):
        return tuple(json.loads(key[len(BLEND_KEY_PREFIX):]))
    return (key,)


def is_passthrough(key: Optional[str]) -> bool:
    """The empty prompt (and no blend) means "no edit": frames go out as they came in."""
    return key == ""


def describe_blend(prompts: Sequence[str], weights: Sequence[float]) -> str:
    """What `/status/prompt` and the output header show: the prompt, or `0.70*a + 0.30*b`."""
    if len(prompts) == 1:
        return prompts[0]
    total = sum(weights)
    return " + ".join(f"{w / total:.2f}*{p}" for p, w in zip(prompts, weights))


def mix_conditioning(embeds: torch.Tensor, mask: torch.Tensor, weights: Sequence[float]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """k prompts' conditionings `[k*n, L, D]` / `[k*n, L]` -> one `[n, L, D]` / `[n, L]`.

    At each token position the result is the weighted mean of the prompts that have a token
    there (weights renormalised over those prompts), and the mask is their union: the image and
    template tokens, which every prompt shares, interpolate; a token only the longer prompt has
    keeps its own value instead of fading towards zero. One prompt with weight 1 is returned
    exactly."""
    k = len(weights)
    if k == 1:
        return embeds, mask
    n = embeds.shape[0] // k
    e = embeds.view(k, n, *embeds.shape[1:]).float()
    m = mask.view(k, n, mask.shape[1]).to(torch.float32)
    w = torch.tensor(weights, dtype=torch.float32, device=embeds.device).view(k, 1, 1)
    wm = w * m  # [k, n, L]
    total = wm.sum(0)  # [n, L]
    mixed = (e * wm.unsqueeze(-1)).sum(0) / total.clamp_min(1e-12).unsqueeze(-1)
    union = total > 0
    return mixed.to(embeds.dtype), union.to(mask.dtype)


def blend_noise(noises: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mix of the seeds' noises, rescaled to unit variance: sum w_i n_i / |w| with the
    weights normalised to sum 1 (independent unit normals stay a unit normal)."""
    if len(noises) == 1:
        return noises[0]
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    mix = sum(float(wi) * n.double() for wi, n in zip(w, noises))
    return (mix / float(w.pow(2).sum().sqrt())).to(noises[0].dtype)

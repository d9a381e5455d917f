"""Prompt and seed blending shared by both engine families: prompt-set keys, the weighted mix of
cached conditionings and the weighted mix of seed noises.

A blend is a set of up to four prompts (or seeds) with weights. The set is encoded once when it
changes; a weight change only re-mixes what is cached, on the main stream, into a tensor of the
same shape as a single prompt's conditioning, so nothing is re-encoded and no graph is re-captured.

For the vision-aware DreamLite encoder a set's conditioning is every prompt encoded with the same
frame(s) (`PromptSetEncoder`): under `on-change` once per set change with the latest frame, under
`every:N` / `every-batch` with the newest frame / each frame of the batch, as for one prompt. The
prompts of a set are encoded one after another inside one conditioning job, each with the shape a
single prompt uses, so the (compiled) encoder never sees a new shape either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PromptSetTokens:
    """The tokens of every prompt of a blend (each a `PromptTokens`), under the set's key."""

    prompt: str  # prompt_set_key(prompts): what the conditioning cache is keyed by
    parts: tuple


class PromptSetEncoder:
    """Wraps `PromptEncoder` so `ConditioningWorker` encodes prompt sets unchanged: one prompt is
    encoded exactly as before; a set gives `(embeds [k*n, Lc, D], mask [k*n, Lc])`, prompt-major
    (rows `i*n .. i*n+n-1` are prompt i with each of the n frames)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.device = encoder.device  # the worker runs where the encoder lives (--encoder-device)

    def tokenize(self, prompts: "str | Sequence[str]"):
        """On the caller's thread, once per set change; raises ParamError for a too-long prompt."""
        prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts)
        if len(prompts) == 1:
            return self.encoder.tokenize(prompts[0])
        return PromptSetTokens(prompt_set_key(prompts), tuple(self.encoder.tokenize(p) for p in prompts))

    @torch.no_grad()
    def encode(self, tokens, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(tokens, PromptSetTokens):
            return self.encoder.encode(tokens, frames)
        parts = [self.encoder.encode(part, frames) for part in tokens.parts]
        length = max(e.shape[1] for e, _ in parts)
        embeds, masks = [], []
        for e, m in parts:  # equal lengths today; padded (masked out) should a prompt's length differ
            pad = length - e.shape[1]
            if pad:
                e = torch.cat([e, e.new_zeros(e.shape[0], pad, e.shape[2])], 1)
                m = torch.cat([m, m.new_zeros(m.shape[0], pad)], 1)
            embeds.append(e)
            masks.append(m)
        return torch.cat(embeds, 0), torch.cat(masks, 0)


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

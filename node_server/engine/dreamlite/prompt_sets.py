"""DreamLite prompt sets: every prompt of a blend encoded with the same frame(s).

The vision-aware DreamLite encoder looks at the frame, so a set's conditioning is every prompt
encoded with the same frame(s) (`PromptSetEncoder`): under `on-change` once per set change with the
latest frame, under `every:N` / `every-batch` with the newest frame / each frame of the batch, as
for one prompt. The prompts of a set are encoded one after another inside one conditioning job,
each with the shape a single prompt uses, so the (compiled) encoder never sees a new shape either.
The mix by weight is `blend.mix_conditioning`, on the main stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..blend import prompt_set_key


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

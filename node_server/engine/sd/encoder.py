"""The CLIP prompt encoder of SD-class models, shaped like `PromptEncoder` so `ConditioningWorker`
runs it unchanged on its side thread and stream.

Tokenising happens once per change of the prompt set, on the caller's thread (`tokenize`); an
encode is one batched CLIP forward over every prompt of a blend with the fixed 77-token length,
so the U-Net always sees the same conditioning shape. The frame is not looked at (text-only
conditioning): `encode` accepts and ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..blend import prompt_set_key


@dataclass(frozen=True)
class ClipTokens:
    """Token ids of one prompt set (CPU tensors; the worker moves them on its own stream)."""

    prompt: str  # the set's key (what the conditioning cache is keyed by)
    prompts: tuple[str, ...]
    input_ids: torch.Tensor  # [k, 77] long, padded and truncated like the diffusers SD pipelines
    attention_mask: torch.Tensor  # [k, 77] long (used only by encoders whose config asks for it)


class ClipPromptEncoder:
    """`tokenize(prompts) -> ClipTokens`, `encode(tokens, frames=None) -> (embeds [k,77,D], mask [k,77])`.

    The embeddings are the text encoder's last hidden state, exactly what the diffusers SD
    pipelines' `encode_prompt` returns (no clip-skip, no attention mask unless the encoder's config
    asks for one).
    """

    def __init__(self, text_encoder, tokenizer, device: torch.device, dtype: torch.dtype):
        self.model = text_encoder
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.length = int(min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings))
        self.use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
        self.tokenize_count = 0

    def tokenize(self, prompts: "str | Sequence[str]") -> ClipTokens:
        """Once per prompt-set change, on the CPU. Over-long prompts are cut at 77 tokens, as every
        SD tool does (the diffusers pipelines warn and truncate)."""
        prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts)
        out = self.tokenizer(list(prompts), padding="max_length", max_length=self.length, truncation=True,
                             return_tensors="pt")
        self.tokenize_count += 1
        return ClipTokens(prompt_set_key(prompts), prompts, out.input_ids, out.attention_mask)

    @torch.no_grad()
    def encode(self, tokens: ClipTokens, frames: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokens.input_ids.to(self.device, non_blocking=True)
        if self.use_mask:
            mask = tokens.attention_mask.to(self.device, non_blocking=True)
            out = self.model(ids, attention_mask=mask)
        else:
            mask = torch.ones_like(ids)
            out = self.model(ids)
        return out[0].to(self.dtype), mask

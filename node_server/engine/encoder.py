"""The vision-aware prompt encoder: Qwen3-VL reads the instruction and the frame.

Tokenising and the multimodal rotary positions are computed once per prompt on the CPU
(`tokenize`); per encode only the frame's patches change (`encode`), so the forward has fixed
shapes, no host round trips and no processor object (which would need torchvision). The token
layout, template and dropped prefix are the stock `DreamLiteMobilePipeline.encode_prompt(mode="edit")`
ones; `tests/test_equivalence.py` pins the result to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ParamError
from .patchify import patchify

# The instruction wrapper the stock pipeline puts around the user's prompt in edit mode.
EDIT_INSTRUCTION = (
    "[Edit]: A diptych with two side-by-side images of the same scene. "
    "Compared to the right side, the left one has {}"
)
DEFAULT_MAX_PROMPT_TOKENS = 192


def _edit_template() -> tuple[str, int]:
    """The stock pipeline's edit chat template and the number of prefix tokens it drops."""
    from diffusers import DreamLiteMobilePipeline

    stock = DreamLiteMobilePipeline(None, None, None, None, None, None)
    return stock.prompt_template_encode_edit, stock.prompt_template_encode_edit_start_idx


@dataclass(frozen=True)
class PromptTokens:
    """Everything about one prompt that does not depend on the frame (CPU tensors; the encoder
    thread moves them to the device on its own stream)."""

    prompt: str
    input_ids: torch.Tensor  # [1, L] long, right-padded to the fixed length
    attention_mask: torch.Tensor  # [1, L] long
    mm_token_type_ids: torch.Tensor  # [1, L] int (1 = image token)
    position_ids: torch.Tensor  # [3, 1, L] long, multimodal rotary positions
    length: int  # valid tokens before padding
    image_index: torch.Tensor  # [1, L] long: which image token sits at each position (0 elsewhere)


class PromptEncoder:
    """Edit-mode conditioning for a batch of frames with fixed shapes.

    Output: `(embeds [n, Lc, D], mask [n, Lc])` where `Lc` is fixed for the encoder's image size
    and `max_prompt_tokens`, so the denoiser sees one shape whatever the prompt.
    """

    def __init__(self, bundle, device: torch.device, dtype: torch.dtype, *, image_size: int = 512,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, compile: bool = False):
        """`compile`: run the fixed-shape forward through `torch.compile` (a GPU option; the first
        encode of each batch size then compiles)."""
        self.model = bundle.text_encoder
        self.tokenizer = bundle.tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        cfg = bundle.image_processor
        self.patch = int(cfg.get("patch_size", 16))
        self.temporal = int(cfg.get("temporal_patch_size", 2))
        self.merge = int(cfg.get("merge_size", 2))
        self.mean = tuple(cfg.get("image_mean", (0.5, 0.5, 0.5)))
        self.std = tuple(cfg.get("image_std", (0.5, 0.5, 0.5)))
        unit = self.patch * self.merge
        if image_size < unit or image_size % unit:
            raise ParamError("encoder_size", f"must be a positive multiple of {unit}, got {image_size}")
        self.image_size = image_size
        self.grid = (1, image_size // self.patch, image_size // self.patch)
        self.image_tokens = self.grid[1] * self.grid[2] // self.merge**2
        self.template, self.drop = _edit_template()
        self.max_prompt_tokens = max_prompt_tokens
        config = self.model.config
        self.image_token_id = config.image_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        base = self._token_ids("")
        self.length = len(base) + max_prompt_tokens  # fixed token length of every encode
        self.cond_length = self.length - self.drop  # fixed conditioning length for the U-Net
        from .encoder_forward import FixedShapeEditForward

        self.forward = FixedShapeEditForward(self.model.model, self.grid)
        self.compiled = torch.compile(self.forward, dynamic=False) if compile else None

    # -- once per prompt, on the CPU -------------------------------------------------------
    def _token_ids(self, prompt: str) -> list[int]:
        text = self.template.format(EDIT_INSTRUCTION.format(prompt))
        text = text.replace("<|image_pad|>", "<|image_pad|>" * self.image_tokens, 1)
        return list(self.tokenizer(text)["input_ids"])

    def tokenize(self, prompt: str) -> PromptTokens:
        """Tokens, mask and rotary positions for `prompt`; raises ParamError if it is too long."""
        ids = self._token_ids(prompt)
        n_prompt = len(ids) - (self.length - self.max_prompt_tokens)
        if len(ids) > self.length:
            raise ParamError(
                "prompt", f"is {n_prompt} tokens long; the maximum is {self.max_prompt_tokens} tokens"
            )
        n = len(ids)
        pad = self.length - n
        input_ids = torch.tensor([ids + [self.pad_id] * pad], dtype=torch.long)
        mask = torch.zeros(1, self.length, dtype=torch.long)
        mask[0, :n] = 1
        types = (input_ids == self.image_token_id).int()
        positions = self._positions(types[0, :n])
        pos = torch.zeros(3, 1, self.length, dtype=torch.long)
        pos[:, 0, :n] = positions
        image_index = (types.cumsum(-1) - 1).clamp(min=0) * types  # k-th image token -> k
        return PromptTokens(prompt, input_ids, mask, types, pos, n, image_index.long())

    def _positions(self, types: torch.Tensor) -> torch.Tensor:
        """Qwen3-VL's 3-axis rotary positions: text counts up on all axes; the image block takes
        (t, row, column) offsets from its start, and text after it resumes at start + max(h, w)."""
        gh, gw = self.grid[1] // self.merge, self.grid[2] // self.merge
        out = torch.zeros(3, types.numel(), dtype=torch.long)
        pos = 0
        i = 0
        t = types.tolist()
        while i < len(t):
            if t[i] == 0:
                out[:, i] = pos
                pos += 1
                i += 1
                continue
            count = gh * gw
            if t[i : i + count] != [1] * count:
                raise RuntimeError("image tokens are not one contiguous block")
            rows = torch.arange(gh).repeat_interleave(gw)
            cols = torch.arange(gw).repeat(gh)
            out[0, i : i + count] = pos
            out[1, i : i + count] = pos + rows
            out[2, i : i + count] = pos + cols
            pos += max(gh, gw)
            i += count
        return out

    # -- per encode, on the device ---------------------------------------------------------
    def prepare_images(self, frames: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] in [0,1] -> the encoder's view of the frame (resized to its image size)."""
        if frames.shape[-2:] != (self.image_size, self.image_size):
            frames = F.interpolate(frames.float(), size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True).clamp(0, 1)
        return frames

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        images = self.prepare_images(frames)
        pixel_values, _ = patchify(
            images, patch_size=self.patch, temporal_patch_size=self.temporal, merge_size=self.merge,
            image_mean=self.mean, image_std=self.std,
        )
        return pixel_values.to(self.dtype)

    @torch.no_grad()
    def encode(self, tokens: PromptTokens, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning for `tokens` with each of `frames` ([n,3,H,W] in [0,1] on the device),
        through the fixed-shape forward (compiled when asked): no host round trip inside."""
        n = frames.shape[0]
        dev = self.device
        ids, attn = tokens.input_ids.to(dev), tokens.attention_mask.to(dev)
        positions, index = tokens.position_ids.to(dev), tokens.image_index.to(dev)
        image_mask = tokens.mm_token_type_ids.to(dev).bool().unsqueeze(-1)
        self.forward.grid_terms(dev, self.dtype)
        run = self.compiled if self.compiled is not None else self.forward
        hidden = run(self._pixels(frames), ids.expand(n, -1), attn.expand(n, -1), positions.expand(-1, n, -1),
                     index.expand(n, -1), image_mask.expand(n, -1, -1))
        return self._finish(hidden, attn, n)

    def _finish(self, hidden: torch.Tensor, attn: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = hidden[:, self.drop :]
        mask = attn[:, self.drop :].expand(n, -1)
        embeds = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return embeds.to(self.dtype), mask

    @torch.no_grad()
    def encode_stock(self, tokens: PromptTokens, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same conditioning through transformers' own forward (the reference for `encode`)."""
        n = frames.shape[0]
        dev = self.device
        ids, attn = tokens.input_ids.to(dev), tokens.attention_mask.to(dev)
        types, positions = tokens.mm_token_type_ids.to(dev), tokens.position_ids.to(dev)
        images = self.prepare_images(frames)
        pixel_values, grid_thw = patchify(
            images, patch_size=self.patch, temporal_patch_size=self.temporal, merge_size=self.merge,
            image_mean=self.mean, image_std=self.std,
        )
        out = self.model.model(
            input_ids=ids.expand(n, -1),
            attention_mask=attn.expand(n, -1),
            position_ids=positions.expand(-1, n, -1),
            pixel_values=pixel_values.to(self.dtype),
            image_grid_thw=grid_thw,  # on the device: transformers 5 builds its vision indices there
            mm_token_type_ids=types.expand(n, -1),
            use_cache=False,
        )
        return self._finish(out.last_hidden_state, attn, n)

"""The vision-aware prompt encoder: Qwen3-VL reads the instruction and the frame.

Tokenising and the multimodal rotary positions are computed once per prompt on the CPU
(`tokenize`); per encode only the frame's patches change (`encode`), so the forward has fixed
shapes, no host round trips and no processor object (which would need torchvision). The token
layout, template and dropped prefix are the stock `DreamLiteMobilePipeline.encode_prompt(mode="edit")`
ones; `tests/test_equivalence.py` pins the result to it.

The work follows the real prompt, not the padded maximum: a prompt runs at the length of the
smallest bucket (`buckets`, in prompt tokens) that holds it, chosen once when it is tokenised, so
there is one compiled shape (and one CUDA graph) per (batch, bucket); the output is padded back to
the fixed conditioning length, so the U-Net's graph never changes. Right padding under causal
attention changes no valid position, so this is exact. The system prompt before the image is
computed once (`FixedShapeEditForward.cache_prefix`) and left out of every encode.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from ...errors import ParamError
from .patchify import patchify

# The instruction wrapper the stock pipeline puts around the user's prompt in edit mode.
EDIT_INSTRUCTION = (
    "[Edit]: A diptych with two side-by-side images of the same scene. "
    "Compared to the right side, the left one has {}"
)
DEFAULT_MAX_PROMPT_TOKENS = 192
DEFAULT_BUCKETS = (16, 32, 64, 192)  # prompt lengths (tokens) an encode runs at; the maximum is always one


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
    run_length: int = 0  # tokens an encode runs (the prompt's bucket); 0: all L


class PromptEncoder:
    """Edit-mode conditioning for a batch of frames with fixed shapes.

    Output: `(embeds [n, Lc, D], mask [n, Lc])` where `Lc` is fixed for the encoder's image size
    and `max_prompt_tokens`, so the denoiser sees one shape whatever the prompt.
    """

    def __init__(self, bundle, device: torch.device, dtype: torch.dtype, *, image_size: int = 512,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, compile: bool = False,
                 buckets: "tuple[int, ...] | None" = DEFAULT_BUCKETS, prefix_cache: bool = True,
                 graphs: bool = False, model=None):
        """`compile`: run the fixed-shape forward's vision blocks and decoder layers through
        `torch.compile` (a GPU option; the first encode of each (batch, bucket) then compiles one
        block and one layer, `FixedShapeEditForward.compile_regions`). `buckets`: prompt lengths an encode runs at
        (None or empty: always the maximum). `prefix_cache`: compute the system prompt's keys and
        values once (used only without gradients: training changes the weights they come from).
        `graphs`: replay each (batch, bucket) from a CUDA graph (CUDA only). `model`: the text
        encoder module to run (default: the bundle's own)."""
        self.model = model if model is not None else bundle.text_encoder
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
        self.base_length = len(base)
        self.length = len(base) + max_prompt_tokens  # fixed token length of every encode
        self.cond_length = self.length - self.drop  # fixed conditioning length for the U-Net
        self.buckets = tuple(sorted({b for b in (buckets or ()) if 0 < b < max_prompt_tokens} | {max_prompt_tokens}))
        # The prefix every prompt shares before the image (the system prompt), no longer than the
        # part of the output the U-Net never reads.
        other = self._token_ids("x y")
        shared = next((i for i, (a, b) in enumerate(zip(base, other)) if a != b), len(base))
        first_image = base.index(self.image_token_id)
        self.prefix_length = min(shared, first_image, self.drop) if prefix_cache else 0
        self._prefix_ids = torch.tensor([base[: self.prefix_length]], dtype=torch.long)
        self._device_tokens: Optional[tuple[PromptTokens, tuple]] = None  # the last prompt's device tensors
        from .encoder_forward import FixedShapeEditForward

        self.forward = FixedShapeEditForward(self.model.model, self.grid)
        self.compiled = bool(compile)
        if compile:  # one version per (batch, bucket) of each region, shared by every encoder
            _allow_recompiles(64)
            self.forward.compile_regions()
        self.graphed = None
        if graphs and self.device.type == "cuda":
            from .graphs import CapturedCalls

            self.graphed = CapturedCalls(self._device_forward, self.device)

    @property
    def shape_bound(self) -> bool:
        """True when the first encode of a new (batch, bucket) compiles and/or captures a CUDA
        graph (seconds on the worker thread, holding the GIL), so every shape a show will use
        belongs in the warm-up (`bucket_probes`); False for the eager forward (the CPU)."""
        return self.compiled or self.graphed is not None

    def bucket_probes(self) -> list[PromptTokens]:
        """One token set per bucket, the empty prompt run at that bucket's length: the exact
        shapes of every prompt of the bucket (the rest is padding under the causal mask), so
        encoding each once (at each batch the worker sends) compiles and captures all of them."""
        empty = self.tokenize("")
        return [replace(empty, run_length=self.base_length + b) for b in self.buckets]

    # -- once per prompt, on the CPU -------------------------------------------------------
    def _token_ids(self, prompt: str) -> list[int]:
        text = self.template.format(EDIT_INSTRUCTION.format(prompt))
        text = text.replace("<|image_pad|>", "<|image_pad|>" * self.image_tokens, 1)
        return list(self.tokenizer(text)["input_ids"])

    def tokenize(self, prompt: str) -> PromptTokens:
        """Tokens, mask and rotary positions for `prompt`, and the bucket its encodes run at;
        raises ParamError if it is too long."""
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
        bucket = next(b for b in self.buckets if self.base_length + b >= n)
        return PromptTokens(prompt, input_ids, mask, types, pos, n, image_index.long(),
                            run_length=self.base_length + bucket)

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
            image_mean=self._norm("mean", images), image_std=self._norm("std", images), grid_device="cpu",
        )
        return pixel_values.to(self.dtype)

    def _norm(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """The image mean or std as a device tensor, made once (no host copy inside a graph)."""
        key = (name, images.device, images.dtype)
        cache = self.__dict__.setdefault("_norms", {})
        if key not in cache:
            cache[key] = torch.tensor(getattr(self, name), dtype=images.dtype, device=images.device)
        return cache[key]

    def _token_inputs(self, tokens: PromptTokens, start: int, stop: int) -> tuple:
        """The prompt's tensors on the device for positions [start, stop), copied once per prompt
        (the worker encodes one prompt many times in a row)."""
        held = self._device_tokens
        if held is not None and held[0] is tokens and held[1] == (start, stop):
            return held[2]
        dev = self.device
        cut = slice(start, stop)
        inputs = (tokens.input_ids[:, cut].to(dev), tokens.attention_mask[:, cut].to(dev),
                  tokens.position_ids[..., cut].to(dev), tokens.image_index[:, cut].to(dev),
                  tokens.mm_token_type_ids[:, cut].to(dev).bool().unsqueeze(-1),
                  tokens.attention_mask[:, self.drop:].to(dev))
        self._device_tokens = (tokens, (start, stop), inputs)
        return inputs

    def _ensure_prefix(self) -> None:
        self.forward.grid_terms(self.device, self.dtype)
        if self.prefix_length and self.forward.prefix_length != self.prefix_length:
            positions = torch.arange(self.prefix_length, device=self.device).view(1, 1, -1).expand(3, 1, -1)
            self.forward.cache_prefix(self._prefix_ids.to(self.device), positions)

    def _device_forward(self, frames, ids, attn, positions, index, image_mask, use_prefix: bool = True):
        """Frames and one prompt's token tensors ([n, ...] rows) -> hidden states: what a CUDA
        graph captures per (batch, bucket)."""
        return self.forward(self._pixels(frames), ids, attn, positions, index, image_mask, use_prefix)

    @torch.no_grad()
    def encode(self, tokens: PromptTokens, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning for `tokens` with each of `frames` ([n,3,H,W] in [0,1] on the device),
        through the fixed-shape forward at the prompt's bucket (compiled, and replayed from a CUDA
        graph, when asked): no host round trip inside."""
        n = frames.shape[0]
        cached = self.prefix_length > 0 and not torch.is_grad_enabled()  # training: the full forward
        start = self.prefix_length if cached else 0
        stop = tokens.run_length or self.length
        ids, attn, positions, index, image_mask, cond_mask = self._token_inputs(tokens, start, stop)
        if cached:
            self._ensure_prefix()
        else:
            self.forward.grid_terms(self.device, self.dtype)
        rows = (ids.expand(n, -1), attn.expand(n, -1), positions.expand(-1, n, -1), index.expand(n, -1),
                image_mask.expand(n, -1, -1))
        if self.graphed is not None and cached:
            hidden = self.graphed(frames, *rows)
        else:
            hidden = self._device_forward(frames, *rows, use_prefix=cached)
        return self._finish(hidden, attn, cond_mask, start, n)

    def _finish(self, hidden: torch.Tensor, attn: torch.Tensor, cond_mask: torch.Tensor, start: int,
                n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of positions [start, stop) -> the U-Net's fixed-length conditioning: the
        positions from `drop` on, masked, zero-padded to `cond_length`."""
        hidden = hidden[:, self.drop - start:]
        valid = hidden.shape[1]
        mask = attn[:, self.drop - start:].expand(n, -1)
        embeds = hidden.new_zeros(n, self.cond_length, hidden.shape[-1], dtype=self.dtype)
        embeds[:, :valid] = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return embeds, cond_mask.expand(n, -1)

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
        hidden = out.last_hidden_state[:, self.drop:]
        mask = attn[:, self.drop:].expand(n, -1)
        return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(self.dtype), mask


def _allow_recompiles(count: int) -> None:
    """Let dynamo keep one compiled version per (batch, bucket) of the encoder forward, for every
    encoder of the process (its default limit of 8 versions per function would fall back to eager
    past it, silently slow)."""
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < count:
            setattr(config, name, count)

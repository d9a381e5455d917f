"""A fixed-shape forward of Qwen3-VL's edit encoding that `torch.compile` can take whole.

The stock forward syncs with the host several times per call (`.tolist()` of the image grid for
splits, boolean-mask indexing for the image and DeepStack scatter, per-image attention chunks).
For a fixed batch of equally sized frames none of that is needed: every image has the same
number of patches, so vision attention is one batched call; the image block's place in the token
sequence is given by a per-prompt gather index, so the scatter is a `where`. Everything that only
depends on the grid (learned position embeddings resampled to the grid, the vision rotary
angles) is taken once from the stock vision tower itself (run with a zeroed patch embedding), so
this module reuses the model's own submodules and stays exact: `tests/test_encoder_forward.py`
compares it with the stock forward.

The language model's layers run here too (the model's own projections, norms and MLPs around one
attention call), so a fixed token prefix can be left out of every call: the system prompt before
the image is the same for every frame and prompt, and under causal attention its keys and values
depend on nothing after it. `cache_prefix` computes them once (with their own rotary positions);
a call then runs only the tokens after the prefix, attending to the cached keys first. DeepStack
features are added at image positions only, which lie after the prefix, so the cache is exact.

`compile_regions` compiles one vision block and one decoder layer rather than the whole forward:
every block (every layer) has the same code and parameter shapes, so one compiled version per
(batch, bucket) serves all of them, and a shape compiles in about one block's time instead of
the tower's (the cold start of a server, which primes every bucket, was minutes). The glue
between them (patch embedding, gathers, rotary angles, mergers) stays eager; on a GPU the whole
call is replayed from one CUDA graph anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class FixedShapeEditForward:
    """`__call__(pixel_values, input_ids, attention_mask, position_ids, image_index, image_mask)` ->
    last hidden state [n, L, D]; n images of `grid` patches each."""

    def __init__(self, model, grid_thw: tuple[int, int, int]):
        self.model = model  # Qwen3VLModel (the `.model` of Qwen3VLForConditionalGeneration)
        self.visual = model.visual
        self.lm = model.language_model
        self.grid = grid_thw
        self.tokens_per_image = grid_thw[0] * grid_thw[1] * grid_thw[2]
        self.deepstack = list(self.visual.deepstack_visual_indexes)
        self._grid_terms = None  # (pos_embeds [T, D], cos [T, hd], sin [T, hd]) on the model device
        self._prefix = None  # (P, [(keys, values) [1, kv heads, P, head] per layer]) once cached
        self._block = self._vision_block  # the per-block and per-layer calls (compiled by compile_regions)
        self._decoder = self._layer

    def compile_regions(self) -> None:
        """Run every vision block and every decoder layer through one `torch.compile`d function
        each (fixed shapes: one version per (batch, bucket), shared by all blocks or layers)."""
        self._block = torch.compile(FixedShapeEditForward._vision_block, dynamic=False)
        self._decoder = torch.compile(FixedShapeEditForward._layer, dynamic=False)

    # -- once per encoder ------------------------------------------------------------------
    @torch.no_grad()
    def grid_terms(self, device, dtype):
        """Position embeddings and rotary angles of one image of this grid, from the stock tower."""
        if self._grid_terms is not None:
            return self._grid_terms
        seen: dict = {}
        visual = self.visual

        def zero_patches(module, args, output):
            return torch.zeros_like(output)

        def first_block(module, args, kwargs):
            seen["hidden"] = (args[0] if args else kwargs["hidden_states"]).clone()
            seen["rope"] = tuple(t.clone() for t in kwargs["position_embeddings"])

        hooks = [visual.patch_embed.register_forward_hook(zero_patches),
                 visual.blocks[0].register_forward_pre_hook(first_block, with_kwargs=True)]
        try:
            t, h, w = self.grid
            c = visual.patch_embed.in_channels * visual.patch_embed.temporal_patch_size * visual.patch_embed.patch_size**2
            pixels = torch.zeros(self.tokens_per_image, c, device=device, dtype=dtype)
            grid = torch.tensor([[t, h, w]], device=device)
            visual(pixels, grid_thw=grid)
        finally:
            for hook in hooks:
                hook.remove()
        self._grid_terms = (seen["hidden"], seen["rope"][0], seen["rope"][1])
        return self._grid_terms

    # -- per encode (compiled) -------------------------------------------------------------
    def vision(self, pixel_values: torch.Tensor, n: int):
        """n images' patches -> (merged image tokens [n*Ti, D_out], DeepStack features)."""
        visual = self.visual
        pos, cos, sin = self._grid_terms
        T = self.tokens_per_image
        hidden = visual.patch_embed(pixel_values)
        hidden = (hidden.view(n, T, -1) + pos).view(n * T, -1)
        cos_n, sin_n = cos.repeat(n, 1), sin.repeat(n, 1)
        features = []
        for layer, block in enumerate(visual.blocks):
            hidden = self._block(block, hidden, cos_n, sin_n, n)
            if layer in self.deepstack:
                features.append(visual.deepstack_merger_list[self.deepstack.index(layer)](hidden))
        return visual.merger(hidden), features

    @staticmethod
    def _vision_block(block, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n: int):
        """One vision block over n images' patches ([n*T, D]; attention within each image)."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

        attn = block.attn
        tokens = hidden.shape[0]
        x = block.norm1(hidden)
        q, k, v = attn.qkv(x).reshape(tokens, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        q, k, v = (t.reshape(n, tokens // n, attn.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
        hidden = hidden + attn.proj(out.transpose(1, 2).reshape(tokens, -1))
        return hidden + block.mlp(block.norm2(hidden))

    # -- the language model ------------------------------------------------------------------
    @staticmethod
    def _layer(layer, hidden: torch.Tensor, rope, mask: torch.Tensor, past=None):
        """One decoder layer of the language model, from its own submodules (transformers'
        Qwen3-VL text layer with SDPA attention); `past` = cached (keys, values) [1, kv heads, P,
        head] that come before this call's tokens. Returns (hidden, this call's keys, values)."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = k, v
        if past is not None:
            n = k.shape[0]
            keys = torch.cat([past[0].expand(n, -1, -1, -1), k], 2)
            values = torch.cat([past[1].expand(n, -1, -1, -1), v], 2)
        groups = q.shape[1] // keys.shape[1]
        if groups > 1:  # grouped-query attention: each K/V head serves `groups` query heads
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
        out = attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1))
        hidden = hidden + out
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, k, v

    @property
    def prefix_length(self) -> int:
        return 0 if self._prefix is None else self._prefix[0]

    @torch.no_grad()
    def cache_prefix(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> None:
        """Keys and values of every layer for a fixed, image-free token prefix ([1, P] ids and
        their [3, 1, P] rotary positions); later calls pass only the tokens after it."""
        lm = self.lm
        hidden = lm.embed_tokens(input_ids)
        length = input_ids.shape[1]
        mask = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()[None, None]
        rope = lm.rotary_emb(hidden, position_ids)
        cache = []
        for layer in lm.layers:
            hidden, k, v = self._layer(layer, hidden, rope, mask)
            cache.append((k, v))
        self._prefix = (length, cache)

    def __call__(self, pixel_values, input_ids, attention_mask, position_ids, image_index, image_mask,
                 use_prefix: bool = True):
        """`image_index` [n, L] long: for each position, which of the image's merged tokens sits
        there (any value where `image_mask` [n, L, 1] is False). With a cached prefix (and
        `use_prefix`), every input covers only the L positions after it, and so does the output."""
        n, L = input_ids.shape
        lm = self.lm
        merged, features = self.vision(pixel_values, n)
        per_image = merged.shape[0] // n

        def placed(tokens: torch.Tensor) -> torch.Tensor:  # [n*Ti, D] -> [n, L, D] at the image slots
            tokens = tokens.view(n, per_image, -1)
            return torch.gather(tokens, 1, image_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

        embeds = lm.embed_tokens(input_ids)
        hidden = torch.where(image_mask, placed(merged).to(embeds.dtype), embeds)
        keys = attention_mask.bool()
        causal = torch.ones(L, L, dtype=torch.bool, device=hidden.device).tril()
        mask = causal[None, None] & keys[:, None, None, :]
        cache = None
        if use_prefix and self._prefix is not None:  # the prefix's keys are valid for every position after it
            length, cache = self._prefix
            mask = torch.cat([torch.ones(n, 1, L, length, dtype=torch.bool, device=hidden.device), mask], -1)
        rope = lm.rotary_emb(hidden, position_ids)
        for layer, decoder in enumerate(lm.layers):
            hidden = self._decoder(decoder, hidden, rope, mask, None if cache is None else cache[layer])[0]
            if layer < len(features):
                hidden = hidden + torch.where(image_mask, placed(features[layer]).to(hidden.dtype), 0)
        return lm.norm(hidden)

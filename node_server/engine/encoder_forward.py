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
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

        visual = self.visual
        pos, cos, sin = self._grid_terms
        T = self.tokens_per_image
        hidden = visual.patch_embed(pixel_values)
        hidden = (hidden.view(n, T, -1) + pos).view(n * T, -1)
        cos_n, sin_n = cos.repeat(n, 1), sin.repeat(n, 1)
        features = []
        for layer, block in enumerate(visual.blocks):
            attn = block.attn
            x = block.norm1(hidden)
            q, k, v = attn.qkv(x).reshape(n * T, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = apply_rotary_pos_emb_vision(q, k, cos_n, sin_n)
            q, k, v = (t.reshape(n, T, attn.num_heads, -1).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
            hidden = hidden + attn.proj(out.transpose(1, 2).reshape(n * T, -1))
            hidden = hidden + block.mlp(block.norm2(hidden))
            if layer in self.deepstack:
                features.append(visual.deepstack_merger_list[self.deepstack.index(layer)](hidden))
        return visual.merger(hidden), features

    def __call__(self, pixel_values, input_ids, attention_mask, position_ids, image_index, image_mask):
        """`image_index` [n, L] long: for each position, which of the image's merged tokens sits
        there (any value where `image_mask` [n, L, 1] is False)."""
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
        rope = lm.rotary_emb(hidden, position_ids)
        for layer, decoder in enumerate(lm.layers):
            # No cache argument: its name differs between transformers 4.57 (past_key_values) and
            # 5.x (cache, which warns on the old name), and both default to none.
            hidden = decoder(hidden, attention_mask=mask, position_ids=None, position_embeddings=rope)
            if layer < len(features):
                hidden = hidden + torch.where(image_mask, placed(features[layer]).to(hidden.dtype), 0)
        return lm.norm(hidden)

"""DreamLite-mobile's U-Net as published, with random weights, for the benchmark.

`synthetic:paper` builds the U-Net from `DreamLiteUNetModel`'s library defaults (0.43B; 31
ControlNet-LLLite targets, 12 on the down blocks). The released DreamLite-mobile checkpoint's
`unet/config.json` (the DreamLite code's `modules/dreamlite.json`, block names as diffusers spells
them) is another layout: 0.39B, three transformer depths (1, 2, 4), an `encoder_hid_proj` from the
text encoder's 2048 to 2304, size conditioning. The paper's LLLite numbers refer to it:
dreamlite-lllite's README counts 108 modules, and the paper's runtime loads the 38 on its down
blocks. `python -m bench.run --unet mobile` times the engine on this layout.
"""

from __future__ import annotations

import torch

DREAMLITE_MOBILE_UNET = dict(
    addition_embed_type="time", addition_time_embed_dim=256, attention_head_dim=[4, 8, 14],
    block_out_channels=[256, 512, 896], cross_attention_dim=2304,
    down_block_types=["DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnNoSelfAttnDownBlock2D",
                      "DreamLiteCrossAttnDownBlock2D"],
    encoder_hid_dim=2048, encoder_hid_dim_type="text_proj_rms", ff_mult=3, layers_per_block=2,
    mid_block_type="DreamLiteUNetMidBlock2DCrossAttn", num_kv_heads=1, num_mid_layers=1,
    projection_class_embeddings_input_dim=512, qk_norm="rms_norm", sample_size=128,
    transformer_layers_per_block=[1, 2, 4],
    up_block_types=["DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnNoSelfAttnUpBlock2D", "DreamLiteUpBlock2D"],
    use_linear_projection=True, use_sep_conv=True,
)


def mobile_unet(bundle, device, dtype) -> torch.nn.Module:
    """A random U-Net of the published layout for `bundle`'s text encoder (its hidden size feeds
    `encoder_hid_proj`: 2048 for the paper's Qwen3-VL-2B), on `device` in `dtype`, eval, no grad."""
    from diffusers import DreamLiteUNetModel

    config = bundle.text_encoder.config
    hidden = getattr(getattr(config, "text_config", config), "hidden_size", 2048)
    with torch.device(device):
        unet = DreamLiteUNetModel(**dict(DREAMLITE_MOBILE_UNET, encoder_hid_dim=hidden))
    return unet.to(dtype).eval().requires_grad_(False)

"""The demo model's architecture: the real DreamLite classes at sizes a 2-core CPU renders at
256x256 and >= 5 fps.

Sizes were chosen by timing (see docs/DEMO_MODEL.md): the tiny Qwen3-VL encoder (vision tower
included) of `synthetic:tiny`; a three-level `DreamLiteUNetModel` whose attention sits only at the
lowest resolution (attention over ~290 conditioning tokens at full latent resolution cost more than
everything else together on the CPU); an `AutoencoderTiny` with 24 channels and 8 latent channels.
"""

from __future__ import annotations

import torch

from ..models.bundle import DreamLiteBundle
from ..models.synthetic import IMAGE_PROCESSOR_CONFIG, SCHEDULER_CONFIG, _calibrate_vae, text_encoder_config
from ..models.tokenizer import build_tokenizer

LATENT_CHANNELS = 8


def unet_config() -> dict:
    return dict(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 128),
        down_block_types=("DreamLiteDownBlock2D", "DreamLiteDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
        up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteUpBlock2D", "DreamLiteUpBlock2D"),
        mid_block_type="DreamLiteUNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=64,  # the tiny encoder's hidden size
        attention_head_dim=32,
        ff_mult=2,
    )


def vae_config() -> dict:
    return dict(
        encoder_block_out_channels=(24, 24, 24, 24),
        decoder_block_out_channels=(24, 24, 24, 24),
        num_encoder_blocks=(1, 1, 2, 2),
        num_decoder_blocks=(2, 2, 1, 1),
        latent_channels=LATENT_CHANNELS,
    )


def build_demo(seed: int = 0, device="cpu") -> DreamLiteBundle:
    """An untrained demo model (random weights from `seed`), the starting point of training."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3VLForConditionalGeneration(text_encoder_config("tiny", tokenizer))
    torch.manual_seed(seed + 1)
    unet = DreamLiteUNetModel(**unet_config())
    torch.manual_seed(seed + 2)
    vae = AutoencoderTiny(**vae_config())
    _calibrate_vae(vae, seed)  # latents of std ~1 and visible decoded contrast from the start
    bundle = DreamLiteBundle(
        name="demo", text_encoder=text_encoder, tokenizer=tokenizer, image_processor=dict(IMAGE_PROCESSOR_CONFIG),
        unet=unet, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )
    return bundle.to(device)

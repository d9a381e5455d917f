"""The demo model's architecture: the real DreamLite classes at sizes a 2-core CPU renders at
256x256 and >= 5 fps.

Sizes were chosen by timing (see docs/DEMO_MODEL.md): the tiny Qwen3-VL encoder (vision tower
included) of `synthetic:tiny`; a three-level `DreamLiteUNetModel` (64/96/128 channels) with attention (self + cross) at
its two lower resolutions and in the mid block; an `AutoencoderTiny` with 24 channels and 16
latent channels (8 in the earlier versions: 16 halves its reconstruction error on held-out photos'
styled versions, the ceiling of what the U-Net can draw, for about 10 ms more per CPU frame).

Why attention at the middle level: the engine edits with the latents side by side, [target |
source] (32x64 for a 256 frame). The clean detail of the frame sits in the source half, 32 latent
pixels away from where the target half needs it, beyond the reach of the U-Net's convolutions.
Self-attention over the whole side-by-side width lets every target token read the source tokens;
at the 16x32 level (512 tokens, 32-wide heads) that costs a few milliseconds on a CPU, and it
carries detail at twice the resolution of the 8x16 level (the only one the first version had).
"""

from __future__ import annotations

import torch

from ..models.bundle import DreamLiteBundle
from ..models.synthetic import IMAGE_PROCESSOR_CONFIG, SCHEDULER_CONFIG, _calibrate_vae, text_encoder_config
from ..models.tokenizer import build_tokenizer

LATENT_CHANNELS = 16
# An optional root-mean-square the autoencoder's latents are trained to (None: left free, as in the
# shipped model, whose latents settle near 0.55). The engine's edit starts from
# `(1 - s) * frame_latent + s * noise` with unit noise, so a larger scale leaves more of the frame
# readable in the target half. A 5-minute H200 run at 2.0 came out clearly worse than the shipped
# 7.6-minute run without it (docs/DEMO_MODEL.md, second version), so it is off by default.
LATENT_RMS = None
# The frame size the demo model is trained and evaluated at; written to the model folder's
# node_server.json ("size"), so `serve` and `render` use it when no --size is given.
FRAME_SIZE = 256
# latent resolution 32x64, 16x32 and 8x16 for a 256 frame; 64 at the top level since the fifth version
# (48 before; its CPU cost is within the timing noise, see docs/DEMO_MODEL.md)
UNET_CHANNELS = (64, 96, 128)
HEAD_SIZE = 32  # channels per attention head


def unet_config(latent_channels: int = LATENT_CHANNELS, channels: tuple[int, ...] = UNET_CHANNELS) -> dict:
    return dict(
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(channels),
        down_block_types=("DreamLiteDownBlock2D", "DreamLiteCrossAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
        up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnUpBlock2D", "DreamLiteUpBlock2D"),
        mid_block_type="DreamLiteUNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=64,  # the tiny encoder's hidden size
        # diffusers' `attention_head_dim` is the number of heads per level (its historical naming):
        # heads of HEAD_SIZE channels, one per level 0 (which has no attention)
        attention_head_dim=tuple(max(1, c // HEAD_SIZE) for c in channels),
        ff_mult=2,
    )


def vae_config(latent_channels: int = LATENT_CHANNELS) -> dict:
    return dict(
        encoder_block_out_channels=(24, 24, 24, 24),
        decoder_block_out_channels=(24, 24, 24, 24),
        num_encoder_blocks=(1, 1, 2, 2),
        num_decoder_blocks=(2, 2, 1, 1),
        latent_channels=latent_channels,
    )


def build_demo(seed: int = 0, device="cpu", latent_channels: int = LATENT_CHANNELS,
               unet_channels: tuple[int, ...] = UNET_CHANNELS) -> DreamLiteBundle:
    """An untrained demo model (random weights from `seed`), the starting point of training."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3VLForConditionalGeneration(text_encoder_config("tiny", tokenizer))
    torch.manual_seed(seed + 1)
    unet = DreamLiteUNetModel(**unet_config(latent_channels, unet_channels))
    torch.manual_seed(seed + 2)
    vae = AutoencoderTiny(**vae_config(latent_channels))
    _calibrate_vae(vae, seed)  # latents of std ~1 and visible decoded contrast from the start
    if LATENT_RMS is not None:
        with torch.no_grad():  # ... then LATENT_RMS
            vae.encoder.layers[-1].weight.mul_(LATENT_RMS)
            vae.encoder.layers[-1].bias.mul_(LATENT_RMS)
    bundle = DreamLiteBundle(
        name="demo", text_encoder=text_encoder, tokenizer=tokenizer, image_processor=dict(IMAGE_PROCESSOR_CONFIG),
        unet=unet, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )
    bundle.to(device)
    if torch.device(device).type == "cpu":
        from ..models.loading import use_cpu_layout

        use_cpu_layout(bundle)  # the layout `load_model` gives a model on the CPU (and its speed)
    return bundle

"""Random-weight DreamLite models: the real architectures, built from a config with no download.

`paper` has the published shapes (Qwen3-VL-2B encoder, default DreamLite U-Net, default tiny
autoencoder) for benchmarks; `tiny` keeps every architectural feature (DeepStack, interleaved M-RoPE,
DreamLite cross-attention blocks, 8x autoencoder) at a few million parameters for tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .bundle import DreamLiteBundle
from .tokenizer import build_tokenizer, special_token_ids

SYNTHETIC_SIZES = ("tiny", "paper")

PAPER_VOCAB_SIZE = 151936
PAPER_TEXT_ENCODER_PARAMS = 2_127_532_032

# Qwen3-VL's stock image-processor settings (preprocessor_config.json of the Qwen3-VL repos).
IMAGE_PROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "min_pixels": 65536,
    "max_pixels": 16777216,
}

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.16,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

PIPELINE_CLASS = "DreamLiteMobilePipeline"


def _check_size(size: str) -> None:
    if size not in SYNTHETIC_SIZES:
        raise ModelLoadError(
            f"unknown synthetic model size {size!r}; expected one of: {', '.join(SYNTHETIC_SIZES)}"
        )


def text_encoder_config(size: str, tokenizer=None):
    """`Qwen3VLConfig` for a size; special-token ids come from `tokenizer` (the synthetic one by default)."""
    from transformers import Qwen3VLConfig

    _check_size(size)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    ids = special_token_ids(tokenizer)
    if size == "paper":
        text = dict(
            vocab_size=PAPER_VOCAB_SIZE,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=262144,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        )
        vision = dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            out_hidden_size=2048,
            deepstack_visual_indexes=[5, 11, 17],
            num_position_embeddings=2304,
        )
    else:
        vocab = -(-len(tokenizer) // 128) * 128  # room for every token, rounded up
        text = dict(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [4, 2, 2],  # sums to head_dim / 2, like [24, 20, 20] for 128
                "mrope_interleaved": True,
            },
        )
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            deepstack_visual_indexes=[0, 1],
            num_position_embeddings=256,
        )
    text.update(hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False, pad_token_id=ids["pad_token_id"])
    vision.update(
        hidden_act="gelu_pytorch_tanh",
        in_channels=3,
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=True,
    )


def unet_config(size: str) -> dict:
    """`DreamLiteUNetModel` keyword arguments ({} = the library defaults, which are the paper's)."""
    _check_size(size)
    if size == "paper":
        return {}
    return dict(
        block_out_channels=(32, 64),
        down_block_types=("DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
        up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnNoSelfAttnUpBlock2D"),
        mid_block_type="DreamLiteUNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=64,
        attention_head_dim=4,
        ff_mult=2,
    )


def vae_config(size: str) -> dict:
    """`AutoencoderTiny` keyword arguments; tiny keeps 4 blocks so the scale factor stays 8."""
    _check_size(size)
    if size == "paper":
        return {}
    return dict(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )


def _rescale_output_conv(conv: torch.nn.Conv2d, run, target_mean, target_std: float) -> None:
    """Scale a final conv so a probe batch gives the wanted per-channel mean and overall std.

    Random initialisation shrinks activations layer by layer; without this the tiny autoencoder
    decodes every latent to nearly the same black image and prompts or frames barely show.
    """
    captured = {}
    handle = conv.register_forward_hook(lambda mod, inp, out: captured.__setitem__("x", inp[0]))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    with torch.no_grad():
        z = torch.nn.functional.conv2d(captured["x"], conv.weight, None, conv.stride, conv.padding)
        gain = target_std / z.std().clamp_min(1e-8)
        conv.weight.mul_(gain)
        conv.bias.copy_(torch.as_tensor(target_mean, dtype=z.dtype, device=z.device) - gain * z.mean(dim=(0, 2, 3)))


def _sharpen_cross_attention(unet, qk_gain: float = 3.0, out_gain: float = 4.0) -> None:
    """Make random cross-attention peaky and louder so the prompt visibly changes the output.

    With random weights attention is near-uniform over ~270 conditioning tokens of which only a
    handful depend on the prompt, so prompts changed the tiny model's output by ~1 grey level.
    q/k pass through RMS norms, so their gains (not the projections) set the attention temperature.
    """
    with torch.no_grad():
        for name, module in unet.named_modules():
            if not name.endswith("attn2"):
                continue
            for norm in (getattr(module, "norm_q", None), getattr(module, "norm_k", None)):
                if norm is not None and getattr(norm, "weight", None) is not None:
                    norm.weight.mul_(qk_gain)
            module.to_out[0].weight.mul_(out_gain)


def _calibrate_vae(vae, seed: int) -> None:
    """Latents of std ~1 from images, and decoded images centred on grey with visible contrast."""
    g = torch.Generator().manual_seed(seed + 4)
    device = next(vae.parameters()).device
    images = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1).to(device)
    _rescale_output_conv(vae.encoder.layers[-1], lambda: vae.encoder(images), 0.0, 1.0)
    latents = torch.randn(2, vae.config.latent_channels, 8, 8, generator=g).to(device)
    # DecoderTiny returns 2 * conv_out - 1: conv mean 0.5 / std 0.25 is grey +- half the range.
    _rescale_output_conv(vae.decoder.layers[-1], lambda: vae.decoder(latents), 0.5, 0.25)


def build_synthetic(size: str, seed: int = 0, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> DreamLiteBundle:
    """Build a random-weight bundle; the same (size, seed) gives identical weights every call.

    `device="meta"` builds shapes only (parameter counting without memory).
    """
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3VLForConditionalGeneration

    _check_size(size)
    tokenizer = build_tokenizer()
    te_config = text_encoder_config(size, tokenizer)
    # Fork the RNG so building a model neither depends on nor disturbs the caller's random state.
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            text_encoder = Qwen3VLForConditionalGeneration(te_config)
            torch.manual_seed(seed + 1)
            unet = DreamLiteUNetModel(**unet_config(size))
            torch.manual_seed(seed + 2)
            vae = AutoencoderTiny(**vae_config(size))
        if str(device) != "meta":
            _sharpen_cross_attention(unet)
            _calibrate_vae(vae, seed)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    bundle = DreamLiteBundle(
        name=f"synthetic:{size}",
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_processor=dict(IMAGE_PROCESSOR_CONFIG),
        unet=unet,
        vae=vae,
        scheduler=scheduler,
    )
    if dtype is not None:
        bundle.to(dtype=dtype)
    for module in bundle.modules().values():
        module.eval().requires_grad_(False)
    return bundle


def model_index() -> dict:
    """`model_index.json` in the layout of the DreamLite-mobile diffusers repo."""
    import diffusers

    return {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": diffusers.__version__,
        "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "processor": ["transformers", "Qwen3VLProcessor"],
        "vae": ["diffusers", "AutoencoderTiny"],
        "unet": ["diffusers", "DreamLiteUNetModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }


def save_bundle(bundle: DreamLiteBundle, path: str | os.PathLike) -> Path:
    """Write a bundle as a DreamLite model folder (every component via `save_pretrained`, safetensors)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    bundle.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
    bundle.tokenizer.save_pretrained(root / "tokenizer")
    processor_dir = root / "processor"
    bundle.tokenizer.save_pretrained(processor_dir)
    (processor_dir / "preprocessor_config.json").write_text(json.dumps(bundle.image_processor, indent=2) + "\n")
    bundle.unet.save_pretrained(root / "unet", safe_serialization=True)
    bundle.vae.save_pretrained(root / "vae", safe_serialization=True)
    bundle.scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")
    return root


def write_model_folder(path: str | os.PathLike, size: str, seed: int = 0,
                       dtype: torch.dtype | None = None) -> DreamLiteBundle:
    """Build a synthetic model and save it as a model folder (weights in `dtype`, default float32)."""
    bundle = build_synthetic(size, seed=seed, dtype=dtype)
    save_bundle(bundle, path)
    return bundle

"""CLIP-conditioned Stable Diffusion models (SD-Turbo, SD 1.5 + merged LCM-LoRA, SDXS): bundle,
offline folder loader and random-weight synthetic builds.

A model folder has the diffusers `StableDiffusionPipeline` layout (`model_index.json`,
`text_encoder/` a `CLIPTextModel`, `tokenizer/` a CLIP tokenizer, `unet/` a
`UNet2DConditionModel`, `vae/` an `AutoencoderKL` or `AutoencoderTiny`, `scheduler/`), so a
folder written here also loads with `StableDiffusionPipeline.from_pretrained` and a real hub
snapshot (`stabilityai/sd-turbo`) loads here.

Synthetic sizes (random weights, built offline, identical for the same seed):

- `sd-turbo-tiny`: every architectural feature at a few million parameters, for tests on a CPU;
- `sd-turbo`: stabilityai/sd-turbo's exact U-Net and OpenCLIP ViT-H text encoder, with a
  TAESD-shaped `AutoencoderTiny` (what real-time users run and what the benchmark races);
- `sd-turbo-kl`: the same U-Net and text encoder with SD 2.1's `AutoencoderKL`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .bundle import ModelBundle
from .loading import HAS_ACCELERATE, default_device, default_dtype, finish_bundle, load_parts, read_model_settings

SD_SYNTHETIC_SIZES = ("sd-turbo-tiny", "sd-turbo", "sd-turbo-kl")
SD_COMPONENTS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")
SD_PIPELINES = (
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "LatentConsistencyModelPipeline",
    "LatentConsistencyModelImg2ImgPipeline", "StableDiffusionControlNetPipeline",
)
CLIP_LENGTH = 77
_LAYOUT = (
    "a Stable Diffusion model folder holds model_index.json and the subfolders "
    + ", ".join(SD_COMPONENTS) + " (the diffusers StableDiffusionPipeline layout)"
)

# stabilityai/sd-turbo scheduler/scheduler_config.json
SD_TURBO_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


@dataclass
class SDBundle(ModelBundle):
    """CLIP text encoder, tokenizer, U-Net, VAE (KL or tiny) and scheduler of an SD-class model."""

    name: str
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderTiny or AutoencoderKL
    scheduler: Any  # a diffusers scheduler (Euler-style or LCM)
    defaults: dict = field(default_factory=dict)  # the model's own parameter defaults (node_server.json)
    max_strength: float = 1.0  # the highest strength it was trained for (node_server.json)
    family: str = field(default="sd", init=False)

    @property
    def vae_is_tiny(self) -> bool:
        return type(self.vae).__name__ == "AutoencoderTiny"


# -- tokenizer -------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _clip_vocab() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """A small byte-level BPE in CLIP's format (every byte alone and with `</w>`, then merges),
    trained on the built-in corpus: the real 49408-token vocabulary cannot be downloaded here."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from .tokenizer import _CORPUS

    tok = Tokenizer(BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = BpeTrainer(vocab_size=1500, min_frequency=1, show_progress=False, end_of_word_suffix="</w>",
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.splitlines() * 5, trainer=trainer)
    trained = json.loads(tok.to_str())["model"]["merges"]
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars + [c + "</w>" for c in chars]:
        vocab[c] = len(vocab)
    merges = []
    for merge in trained:
        a, b = merge if isinstance(merge, list) else merge.split(" ")
        if a in vocab and b in vocab and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return tuple(vocab.items()), tuple(merges)


def build_clip_tokenizer():
    """An offline `CLIPTokenizer` (77 tokens, CLIP's normaliser and pre-tokeniser); same every call."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CLIP_LENGTH)


# -- configs ---------------------------------------------------------------------------------
def _check_size(size: str) -> None:
    if size not in SD_SYNTHETIC_SIZES:
        raise ModelLoadError(f"unknown synthetic SD model {size!r}; expected one of: {', '.join(SD_SYNTHETIC_SIZES)}")


def text_encoder_config(size: str, vocab_size: int | None = None):
    """`CLIPTextConfig`: OpenCLIP ViT-H's text tower as SD 2.x ships it (23 layers), or a tiny one."""
    from transformers import CLIPTextConfig

    _check_size(size)
    if size == "sd-turbo-tiny":
        return CLIPTextConfig(
            vocab_size=vocab_size or 1536, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=CLIP_LENGTH, hidden_act="gelu",
            projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        )
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=CLIP_LENGTH, hidden_act="gelu",
        projection_dim=512, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        torch_dtype="float32",
    )


def unet_config(size: str) -> dict:
    """`UNet2DConditionModel` keyword arguments: stabilityai/sd-turbo's (SD 2.1 base), or tiny."""
    _check_size(size)
    if size == "sd-turbo-tiny":
        return dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        )
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        act_fn="silu", norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
        downsample_padding=1, mid_block_scale_factor=1, upcast_attention=False,
    )


def tiny_vae_config(size: str) -> dict:
    """`AutoencoderTiny` keyword arguments: the library defaults are TAESD's shape."""
    _check_size(size)
    if size == "sd-turbo-tiny":
        return dict(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    return {}


def kl_vae_config() -> dict:
    """SD 2.1's `AutoencoderKL` (stabilityai/sd-turbo vae/config.json)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), sample_size=768, scaling_factor=0.18215, act_fn="silu",
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


# -- synthetic builds -----------------------------------------------------------------------
def build_synthetic_sd(size: str, seed: int = 0, *, device="cpu", dtype: torch.dtype | None = None) -> SDBundle:
    """A random-weight SD bundle; the same (size, seed) gives identical weights every call.

    `device="meta"` builds shapes only (parameter counting without memory).
    """
    from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .synthetic import _calibrate_vae, _sharpen_cross_attention

    _check_size(size)
    tokenizer = build_clip_tokenizer()
    vocab = -(-len(tokenizer) // 128) * 128
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            text_encoder = CLIPTextModel(text_encoder_config(size, vocab))
            torch.manual_seed(seed + 1)
            unet = UNet2DConditionModel(**unet_config(size))
            torch.manual_seed(seed + 2)
            vae = AutoencoderKL(**kl_vae_config()) if size == "sd-turbo-kl" else AutoencoderTiny(**tiny_vae_config(size))
        if dev.type != "meta":
            _sharpen_cross_attention(unet)
            if isinstance(vae, AutoencoderTiny):
                _calibrate_vae(vae, seed)
    scheduler = EulerDiscreteScheduler.from_config(SD_TURBO_SCHEDULER)
    bundle = SDBundle(f"synthetic:{size}", text_encoder, tokenizer, unet, vae, scheduler)
    if dtype is not None:
        bundle.to(dtype=dtype)
    for module in bundle.modules().values():
        module.eval().requires_grad_(False)
    return bundle


def model_index(bundle: SDBundle) -> dict:
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(bundle.scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", type(bundle.vae).__name__],
    }


def save_sd_bundle(bundle: SDBundle, path: str | os.PathLike) -> Path:
    """Write an SD bundle as a `StableDiffusionPipeline` folder (safetensors)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    bundle.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
    bundle.tokenizer.save_pretrained(root / "tokenizer")
    bundle.unet.save_pretrained(root / "unet", safe_serialization=True)
    bundle.vae.save_pretrained(root / "vae", safe_serialization=True)
    bundle.scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(model_index(bundle), indent=2) + "\n")
    return root


def write_sd_model_folder(path, size: str, seed: int = 0, dtype: torch.dtype | None = None) -> SDBundle:
    bundle = build_synthetic_sd(size, seed=seed, dtype=dtype)
    save_sd_bundle(bundle, path)
    return bundle


# -- loading ---------------------------------------------------------------------------------
def is_sd_folder(folder) -> bool:
    """True when `folder/model_index.json` names an SD pipeline or a CLIP text encoder + U-Net2D."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    if data.get("_class_name") in SD_PIPELINES:
        return True
    te, unet = data.get("text_encoder") or [None, None], data.get("unet") or [None, None]
    return te[-1] == "CLIPTextModel" and unet[-1] == "UNet2DConditionModel"


def load_sd_folder(folder, *, device=None, dtype=None, progress: bool = True, name: str | None = None) -> SDBundle:
    """Load an SD-layout folder with no network access (the VAE class comes from model_index.json)."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    missing = [c for c in SD_COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise ModelLoadError(f"model folder {str(folder)!r} is missing the component subfolder(s) "
                             f"{', '.join(missing)}; {_LAYOUT}")
    index = json.loads((folder / "model_index.json").read_text())

    def diffusers_class(component: str, allowed: tuple[str, ...]):
        cls_name = (index.get(component) or [None, None])[-1]
        if cls_name is None:
            cfg_name = "scheduler_config.json" if component == "scheduler" else "config.json"
            try:
                cls_name = json.loads((folder / component / cfg_name).read_text()).get("_class_name")
            except (OSError, ValueError):
                cls_name = None
        if not allowed or cls_name in allowed:
            cls = getattr(diffusers, str(cls_name), None)
            if cls is not None:
                return cls
        raise ModelLoadError(f"{str(folder / component)!r}: unsupported class {cls_name!r}; expected one of "
                             f"{', '.join(allowed) if allowed else 'a diffusers scheduler'}")

    local = dict(local_files_only=True)
    model_kwargs = dict(torch_dtype=dtype, low_cpu_mem_usage=HAS_ACCELERATE, **local)
    loaders = {
        "text_encoder": lambda: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, **local),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **local),
        "unet": lambda: diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **model_kwargs),
        "vae": lambda: diffusers_class("vae", ("AutoencoderKL", "AutoencoderTiny")).from_pretrained(
            folder, subfolder="vae", **model_kwargs),
        "scheduler": lambda: diffusers_class("scheduler", ()).from_pretrained(folder, subfolder="scheduler", **local),
    }
    settings = read_model_settings(folder)  # checked before the weights are read
    parts = load_parts(folder, loaders, progress)
    bundle = SDBundle(name or str(folder), **parts, defaults=settings["defaults"],
                      max_strength=settings["max_strength"])
    te_dim = bundle.text_encoder.config.hidden_size
    cross = bundle.unet.config.cross_attention_dim
    if te_dim != cross:
        raise ModelLoadError(f"model folder {str(folder)!r}: text encoder width {te_dim} does not match the "
                             f"U-Net's cross_attention_dim {cross} (an SDXL model? only SD 1.x/2.x-class models load)")
    return finish_bundle(bundle, device, dtype)


def build_sd_synthetic_for(name: str, device: torch.device, dtype: torch.dtype) -> SDBundle:
    """`synthetic:sd-turbo*` for `load_model`: tiny built on the CPU (same weights everywhere),
    full size built where it will run (a CPU initialisation of ~1.2B parameters is slow)."""
    build_on = torch.device("cpu") if name == "sd-turbo-tiny" else device
    return finish_bundle(build_synthetic_sd(name, device=build_on), device, dtype)

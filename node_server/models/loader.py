"""`load_model(spec)`: one entry point for synthetic models, local model folders and hub ids.

Every real model goes through the same path: a folder in the DreamLite-mobile diffusers layout,
each component loaded with its class's `from_pretrained(folder, subfolder=...)`. Hub ids are first
resolved to a local snapshot, so a cached or local model never touches the network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import ModelLoadError, ParamError
from ..progress import step
from .bundle import DreamLiteBundle
from .loading import HAS_ACCELERATE, default_device, default_dtype, finish_bundle, load_parts, read_model_settings
from .sd import SD_SYNTHETIC_SIZES, build_sd_synthetic_for, is_sd_folder, load_sd_folder
from .synthetic import IMAGE_PROCESSOR_CONFIG, SYNTHETIC_SIZES, build_synthetic

# The embedded demo model (trained by tools/train_demo_model.py, docs/DEMO_MODEL.md): real weights
# shipped inside the package, so a fresh install stylizes visibly with no download.
DEMO_SPEC = "demo"
DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEFAULT_MODEL = DEMO_SPEC
# The frame size `serve` and `render` use when neither the user nor the model folder names one.
DEFAULT_FRAME_SIZE = 512
SYNTHETIC_PREFIX = "synthetic:"
# Component subfolders of a DreamLite model folder, in load order.
COMPONENTS = ("text_encoder", "tokenizer", "processor", "unet", "vae", "scheduler")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_IMAGE_KEYS = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
_LAYOUT = (
    "a DreamLite model folder holds model_index.json and the subfolders " + ", ".join(COMPONENTS)
    + " (as written by `node-server synth-model` or the DreamLite-mobile diffusers repo)"
)


def resolve_device(choice: str | None) -> str:
    """A `--device` value (`auto`, `cpu`, `cuda`, `cuda:N`) -> the device to use; `auto` picks a GPU
    when one is usable, and asking for CUDA without one is a clear error."""
    d = (choice or "auto").lower()
    if d == "auto":
        return str(default_device())
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ParamError("device", f"{choice} was asked for but no CUDA device is available; use cpu or auto")
    return d


def load_model(spec: str = DEFAULT_MODEL, *, device=None, dtype=None, progress: bool = True) -> DreamLiteBundle:
    """Load a model by spec: `synthetic:tiny|paper|sd-turbo-tiny|sd-turbo|sd-turbo-kl`, a local folder
    (DreamLite or Stable Diffusion layout), or a hub id (`owner/name[@revision]`)."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    spec = str(spec)
    if spec == DEMO_SPEC:
        if not (DEMO_DIR / "model_index.json").is_file():
            raise ModelLoadError(f"the demo model's folder {str(DEMO_DIR)!r} is missing or incomplete; "
                                 "reinstall the package or train it with tools/train_demo_model.py")
        return load_folder(DEMO_DIR, device=device, dtype=dtype, progress=progress, name=DEMO_SPEC)
    if spec.startswith(SYNTHETIC_PREFIX):
        name = spec[len(SYNTHETIC_PREFIX):]
        if name in SD_SYNTHETIC_SIZES:  # CLIP-conditioned SD-class models (models/sd.py)
            step(f"building synthetic model {name} (random weights)...", enabled=progress)
            return build_sd_synthetic_for(name, device, dtype)
        if name not in SYNTHETIC_SIZES:
            raise ModelLoadError(
                f"unknown synthetic model {spec!r}; expected one of: "
                + ", ".join(SYNTHETIC_PREFIX + s for s in SYNTHETIC_SIZES + SD_SYNTHETIC_SIZES)
            )
        step(f"building synthetic model {name} (random weights)...", enabled=progress)
        # tiny is built on the CPU so its weights are the same on every machine; paper (2.6B
        # parameters) is built where it will run, since a CPU initialisation takes minutes
        build_on = device if name == "paper" else torch.device("cpu")
        bundle = build_synthetic(name, device=build_on)
        return finish_bundle(bundle, device, dtype)

    path = Path(spec).expanduser()
    if path.exists():
        if is_sd_folder(path):
            return load_sd_folder(path, device=device, dtype=dtype, progress=progress)
        return load_folder(path, device=device, dtype=dtype, progress=progress)
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelLoadError(
            f"model folder not found: {spec!r}; expected an existing folder, a hub id such as "
            f"'owner/name', or one of: " + ", ".join(SYNTHETIC_PREFIX + s for s in SYNTHETIC_SIZES + SD_SYNTHETIC_SIZES)
        )
    folder = _download(spec, progress)
    if is_sd_folder(folder):
        return load_sd_folder(folder, device=device, dtype=dtype, progress=progress, name=spec)
    return load_folder(folder, device=device, dtype=dtype, progress=progress, name=spec)


def _looks_like_path(spec: str) -> bool:
    """A spec meant as a folder (absolute, relative, home, Windows or nested) rather than `owner/name`."""
    return (
        spec.startswith((".", "/", "~"))
        or "\\" in spec
        or spec.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:", spec))
    )


def _download(spec: str, progress: bool) -> Path:
    """Resolve a hub id to a local snapshot (the cache when offline); only the pipeline's files."""
    from huggingface_hub import snapshot_download

    repo_id, _, revision = spec.partition("@")
    step(f"fetching {repo_id}{' @ ' + revision if revision else ''} from the hub (or the local cache)...",
         enabled=progress)
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision or None,
                allow_patterns=["model_index.json"] + [f"{c}/*" for c in COMPONENTS],
            )
        )
    except Exception as exc:  # network, auth, missing repo, offline without cache: all one answer
        raise ModelLoadError(
            f"could not fetch model {spec!r} from the Hugging Face hub (offline, not cached, or no such "
            f"repository: {type(exc).__name__}); expected a reachable hub id or a local model folder"
        ) from None


def read_image_processor(folder: Path) -> dict:
    """The image-processor settings the engine needs, from `processor/preprocessor_config.json`."""
    cfg_path = folder / "processor" / "preprocessor_config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"model folder {str(folder)!r} lacks processor/preprocessor_config.json; {_LAYOUT}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {cfg_path}: {exc}; expected a JSON image-processor config") from None
    cfg = dict(IMAGE_PROCESSOR_CONFIG)
    cfg.update(raw)
    for key in _IMAGE_KEYS:
        if cfg.get(key) is None:
            raise ModelLoadError(f"{cfg_path} has no {key!r}; expected a Qwen2-VL image-processor config")
    cfg["image_mean"] = [float(v) for v in cfg["image_mean"]]
    cfg["image_std"] = [float(v) for v in cfg["image_std"]]
    for key in ("patch_size", "temporal_patch_size", "merge_size"):
        cfg[key] = int(cfg[key])
    return cfg


def load_folder(folder, *, device=None, dtype=None, progress: bool = True, name: str | None = None) -> DreamLiteBundle:
    """Load a DreamLite model folder with no network access."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    folder = Path(folder)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    if not folder.is_dir():
        raise ModelLoadError(f"model path {str(folder)!r} is not a folder; {_LAYOUT}")
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{str(folder)!r} has no model_index.json, so it is not a model folder; {_LAYOUT}")
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise ModelLoadError(
            f"model folder {str(folder)!r} is missing the component subfolder(s) {', '.join(missing)}; {_LAYOUT}"
        )

    local = dict(local_files_only=True)
    loaders = {
        "text_encoder": lambda: Qwen3VLForConditionalGeneration.from_pretrained(
            folder, subfolder="text_encoder", dtype=dtype, **local),
        "tokenizer": lambda: AutoTokenizer.from_pretrained(folder, subfolder="tokenizer", **local),
        "processor": lambda: read_image_processor(folder),
        "unet": lambda: DreamLiteUNetModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, low_cpu_mem_usage=HAS_ACCELERATE, **local),
        "vae": lambda: AutoencoderTiny.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, low_cpu_mem_usage=HAS_ACCELERATE, **local),
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler", **local),
    }
    settings = read_model_settings(folder)  # checked before the weights are read
    parts = load_parts(folder, loaders, progress)
    bundle = DreamLiteBundle(
        name=name or str(folder),
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        image_processor=parts["processor"],
        unet=parts["unet"],
        vae=parts["vae"],
        scheduler=parts["scheduler"],
        defaults=settings["defaults"],
        max_strength=settings["max_strength"],
    )
    _check_token_ids(bundle, folder)
    return finish_bundle(bundle, device, dtype)


def model_frame_size(spec: str | None = None) -> int | None:
    """The frame size the model `spec` asks for in its folder's `node_server.json` ("size"), read
    without loading the model: the demo model and local folders; None for synthetic models, hub ids
    and folders that name no size (the caller then uses DEFAULT_FRAME_SIZE)."""
    spec = str(spec or DEFAULT_MODEL)
    if spec == DEMO_SPEC:
        folder = DEMO_DIR
    elif spec.startswith(SYNTHETIC_PREFIX):
        return None
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            return None  # a hub id, or a missing folder the load will report
    return read_model_settings(folder).get("size")


def frame_size_for(spec: str | None = None) -> int:
    """The square frame size `serve` and `render` use for `spec` when none is given: the model
    folder's own (`model_frame_size`), else DEFAULT_FRAME_SIZE."""
    return model_frame_size(spec) or DEFAULT_FRAME_SIZE


def _check_token_ids(bundle: DreamLiteBundle, folder: Path) -> None:
    """The encoder finds the image by token id: tokenizer and config must agree or outputs are silently wrong."""
    cfg = bundle.text_encoder.config
    tok = bundle.tokenizer
    for token, attr in (("<|image_pad|>", "image_token_id"), ("<|vision_start|>", "vision_start_token_id")):
        tid = tok.convert_tokens_to_ids(token)
        if tid != getattr(cfg, attr):
            raise ModelLoadError(
                f"model folder {str(folder)!r}: tokenizer id of {token} is {tid} but text_encoder config "
                f"{attr} is {getattr(cfg, attr)}; expected the tokenizer that belongs to this encoder"
            )



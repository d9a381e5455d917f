"""What every model folder's loader shares (DreamLite `loader.py`, SD `sd.py`): the default device
and dtype, loading the components one by one with progress and one error per failure, the folder's
own settings (`node_server.json`) and the last step that puts a bundle where it runs.
"""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..progress import step
from .bundle import ModelBundle

# diffusers' fast (meta-device) loading needs accelerate; say so explicitly instead of a warning per load.
HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (the paper's setting), float32 on the CPU where bf16 matmuls are slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_parts(folder: Path, loaders: dict, progress: bool) -> dict:
    """Run each component's loader in order, showing progress; a failure names the component and
    the first line of the library's error (shared by DreamLite and SD folders)."""
    parts = {}
    with _library_progress_bars(progress):
        for i, (component, load) in enumerate(loaders.items(), 1):
            step(f"loading {component} ({i}/{len(loaders)})...", enabled=progress)
            try:
                parts[component] = load()
            except ModelLoadError:
                raise
            except Exception as exc:
                raise ModelLoadError(
                    f"could not load {component} from {str(folder / component)!r}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}; expected files written by save_pretrained"
                ) from None
    return parts


@contextmanager
def _library_progress_bars(enabled: bool):
    """transformers and diffusers draw their own bars ("Loading weights: 100%|...") whatever our
    `progress` says; with progress off (tests, `--quiet`) they are switched off for the load too."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    were = [lib.is_progress_bar_enabled() for lib in libraries]
    if not enabled:
        for lib in libraries:
            lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libraries, were):
            (lib.enable_progress_bar if was else lib.disable_progress_bar)()


# A model folder's own settings for this server (optional):
#   {"defaults": {"strength": 0.05}, "size": 256, "max_strength": 0.08}
# "defaults": parameter defaults (the engine fills them in for settings left at the global default);
# "size": the frame size (a multiple of 32) `serve` and `render` use when no size is given;
# "max_strength": the highest edit strength the model was trained for: the engine runs a higher
# requested strength at this one (a model trained only at low strengths, like the demo model, turns
# to noise above its range), and says so in the log.
MODEL_DEFAULTS_FILE = "node_server.json"


def read_model_settings(folder: Path) -> dict:
    """`node_server.json` of a model folder ({} when there is none), every entry checked, so a bad
    file fails the load (or the command) with its path in the message."""
    path = Path(folder) / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {"defaults": {}, "size": None, "max_strength": 1.0}
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        unknown = set(raw) - {"defaults", "size", "max_strength"}
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; expected defaults, size, max_strength")
        defaults = dict(raw.get("defaults", {}))
        from ..engine.params import Params

        Params().replace(**defaults)
        max_strength = raw.get("max_strength", 1.0)
        if isinstance(max_strength, bool) or not isinstance(max_strength, (int, float)) \
                or not 0 < max_strength <= 1:
            raise ValueError(f"max_strength must be a number in (0, 1], got {max_strength!r}")
        if defaults.get("strength", 0) > max_strength:
            raise ValueError(f"the default strength {defaults['strength']} is above max_strength {max_strength}")
        size = raw.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or not 32 <= size <= 4096 or size % 32):
            raise ValueError(f"size must be a multiple of 32 in 32..4096, got {size!r}")
    except Exception as exc:
        raise ModelLoadError(f"{path}: bad model settings: {exc}") from None
    return {"defaults": defaults, "size": size, "max_strength": float(max_strength)}


def finish_bundle(bundle: ModelBundle, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    """`bundle` on `device` in `dtype`, in eval mode without gradients (channels-last on the CPU)."""
    bundle.to(device, dtype)
    for module in bundle.modules().values():
        module.eval().requires_grad_(False)
    if torch.device(device).type == "cpu":
        use_cpu_layout(bundle)
    return bundle


def use_cpu_layout(bundle) -> None:
    """Channels-last (NHWC) convolution weights for the U-Net and the autoencoder, so that oneDNN's
    CPU convolutions run in that layout: about twice as fast as NCHW at these channel counts (on 2
    CPU cores: the demo model's autoencoder 74 -> 34 ms to encode and 83 -> 39 ms to decode a 256
    frame). The values, and so the outputs up to rounding, stay the same."""
    for module in (bundle.unet, bundle.vae):
        module.to(memory_format=torch.channels_last)

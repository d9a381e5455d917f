"""Models: loading (`load_model`), synthetic random-weight builds (DreamLite and CLIP-conditioned SD), the stock reference."""

from .bundle import DreamLiteBundle
from .loader import DEFAULT_MODEL, load_folder, load_model
from .sd import SD_SYNTHETIC_SIZES, SDBundle, build_synthetic_sd, load_sd_folder, write_sd_model_folder
from .synthetic import SYNTHETIC_SIZES, build_synthetic, write_model_folder

__all__ = [
    "DEFAULT_MODEL",
    "DreamLiteBundle",
    "SD_SYNTHETIC_SIZES",
    "SDBundle",
    "SYNTHETIC_SIZES",
    "build_synthetic",
    "build_synthetic_sd",
    "load_folder",
    "load_model",
    "load_sd_folder",
    "write_model_folder",
    "write_sd_model_folder",
]

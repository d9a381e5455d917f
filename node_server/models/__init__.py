"""DreamLite-family models: loading (`load_model`), synthetic random-weight builds, the stock reference."""

from .bundle import DreamLiteBundle
from .loader import DEFAULT_MODEL, load_folder, load_model
from .synthetic import SYNTHETIC_SIZES, build_synthetic, write_model_folder

__all__ = [
    "DEFAULT_MODEL",
    "DreamLiteBundle",
    "SYNTHETIC_SIZES",
    "build_synthetic",
    "load_folder",
    "load_model",
    "write_model_folder",
]

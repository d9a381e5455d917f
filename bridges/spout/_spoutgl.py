"""Loading SpoutGL (lazily) and the pixel-format rules shared by the receiver and the sender.

SpoutGL (https://pypi.org/project/SpoutGL/, a pybind11 wrapper of the Spout 2.007 SDK) exists
only for Windows. Nothing here imports it at module import time: `load_spoutgl()` does, when a
Spout input or output is actually asked for, and turns a missing module into one clear error.
Tests pass a stand-in module with the same calls instead (`load_spoutgl(module)`, or by placing
it in `sys.modules["SpoutGL"]`).
"""

from __future__ import annotations

import sys
from typing import Any

INSTALL_HINT = 'pip install "node-server[spout]"'

# DXGI_FORMAT values a Spout sender may report through getSenderFormat() (Spout 2.007 stores the
# DirectX 11 texture format of the shared texture; DX9 senders report D3DFMT values 21/22, which
# Spout itself opens as BGRA).
DXGI_R8G8B8A8_TYPELESS = 27
DXGI_R8G8B8A8_UNORM = 28
DXGI_R8G8B8A8_UNORM_SRGB = 29
DXGI_R8G8B8A8_UINT = 30
DXGI_R8G8B8A8_SNORM = 31
DXGI_B8G8R8A8_UNORM = 87  # Spout's default; Resolume, Notch and most DirectX senders
DXGI_B8G8R8X8_UNORM = 88
DXGI_B8G8R8A8_TYPELESS = 90
DXGI_B8G8R8A8_UNORM_SRGB = 91
DXGI_B8G8R8X8_TYPELESS = 92
DXGI_B8G8R8X8_UNORM_SRGB = 93
D3DFMT_A8R8G8B8 = 21  # DX9 (byte order B, G, R, A in memory)
D3DFMT_X8R8G8B8 = 22

BGRA_FORMATS = frozenset({
    DXGI_B8G8R8A8_UNORM, DXGI_B8G8R8X8_UNORM, DXGI_B8G8R8A8_TYPELESS, DXGI_B8G8R8A8_UNORM_SRGB,
    DXGI_B8G8R8X8_TYPELESS, DXGI_B8G8R8X8_UNORM_SRGB, D3DFMT_A8R8G8B8, D3DFMT_X8R8G8B8,
})
RGBA_FORMATS = frozenset({
    DXGI_R8G8B8A8_TYPELESS, DXGI_R8G8B8A8_UNORM, DXGI_R8G8B8A8_UNORM_SRGB, DXGI_R8G8B8A8_UINT,
    DXGI_R8G8B8A8_SNORM,
})

FORMAT_NAMES = {
    DXGI_R8G8B8A8_UNORM: "RGBA8", DXGI_R8G8B8A8_UNORM_SRGB: "RGBA8 sRGB", DXGI_R8G8B8A8_SNORM: "RGBA8 snorm",
    DXGI_B8G8R8A8_UNORM: "BGRA8", DXGI_B8G8R8X8_UNORM: "BGRX8", DXGI_B8G8R8A8_UNORM_SRGB: "BGRA8 sRGB",
    D3DFMT_A8R8G8B8: "BGRA8 (DX9)", D3DFMT_X8R8G8B8: "BGRX8 (DX9)",
    24: "RGB10A2", 10: "RGBA16 float", 11: "RGBA16", 2: "RGBA32 float",
}


class SpoutUnavailable(RuntimeError):
    """SpoutGL cannot be imported here (not Windows, or the package is not installed)."""


def unavailable_message(platform: str | None = None) -> str:
    platform = platform or sys.platform
    if platform != "win32":
        return (f"Spout is Windows-only (it shares DirectX textures between programs) and this machine "
                f"runs {platform}; use ZeroMQ (--zmq-in/--zmq-out) here, or run the server on Windows "
                f"after {INSTALL_HINT}")
    return f"SpoutGL is not installed; install it with {INSTALL_HINT} (or pip install SpoutGL)"


def load_spoutgl(module: Any = None) -> Any:
    """The SpoutGL module: `module` when given (a stand-in), else `import SpoutGL`."""
    if module is not None:
        return module
    try:
        import SpoutGL  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SpoutUnavailable(unavailable_message()) from exc
    return SpoutGL


def gl_enums(spoutgl: Any) -> Any:
    """`SpoutGL.enums` (GL_RGBA, GL_BGRA_EXT, GL_RGB, GL_BGR_EXT as plain ints)."""
    enums = getattr(spoutgl, "enums", None)
    if enums is None or not hasattr(enums, "GL_RGBA"):
        import importlib

        enums = importlib.import_module(spoutgl.__name__ + ".enums")
    return enums


def describe_format(dxgi: int) -> str:
    return FORMAT_NAMES.get(int(dxgi), f"DXGI format {int(dxgi)}")


def read_plan(dxgi: int, enums: Any) -> tuple[int, tuple[int, int, int], bool]:
    """How to read a sender of texture format `dxgi`: (GL format to ask for, channel order of
    R, G, B in the received 4-byte pixels, whether the format is one Spout copies byte for byte).

    The receiver asks Spout for the sender's own byte order (BGRA for BGRA senders, RGBA for RGBA
    senders): that is the copy Spout does without swizzling on both of its paths (GL/DX interop
    and the CPU staging-texture fallback), and the bridge then picks R, G, B by index. Other
    formats (10/16/32-bit) are asked for as RGBA and converted by Spout's OpenGL path.
    """
    if dxgi in BGRA_FORMATS:
        return enums.GL_BGRA_EXT, (2, 1, 0), True
    if dxgi in RGBA_FORMATS:
        return enums.GL_RGBA, (0, 1, 2), True
    return enums.GL_RGBA, (0, 1, 2), False

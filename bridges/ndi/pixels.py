"""NDI pixel formats <-> the engine's HxWx3 RGB, vectorised numpy (no per-pixel Python loop).

Formats (NDI SDK `Processing.NDI.structs.h`): BGRA/BGRX/RGBA/RGBX are 4 bytes a pixel in that
memory order; UYVY is 4:2:2 YCbCr, 2 pixels in 4 bytes ordered U0 Y0 V0 Y1; UYVA is a UYVY plane
followed by an alpha plane (the alpha is not used here). Rows are `line_stride_in_bytes` apart.

YCbCr is BT.709 with video ("limited") range (Y 16..235, Cb/Cr 16..240). That is what the NDI
runtime itself produces: a red BGRX frame received as UYVY reads Y 61, Cb 102, Cr 239 at every
size tried (64x48, 640x360, 1920x1080), BT.709's values (BT.601 would give Y 81), so a frame
converted here and one converted by the runtime agree. Integer arithmetic with 10-bit
coefficients keeps the error within one level of the exact formula.

Channel moves are written one channel at a time: numpy copies a reversed-channel view
(`bgrx[:, :, 2::-1]`) about seven times slower than three plain strided assignments.
"""

from __future__ import annotations

import numpy as np


def fourcc(code: str) -> int:
    """NDI_LIB_FOURCC: the four characters as a little-endian 32-bit integer."""
    a, b, c, d = (ord(ch) for ch in code)
    return a | (b << 8) | (c << 16) | (d << 24)


UYVY, UYVA = fourcc("UYVY"), fourcc("UYVA")
BGRA, BGRX, RGBA, RGBX = fourcc("BGRA"), fourcc("BGRX"), fourcc("RGBA"), fourcc("RGBX")

BYTES_PER_PIXEL = {UYVY: 2, UYVA: 2, BGRA: 4, BGRX: 4, RGBA: 4, RGBX: 4}
RED_INDEX = {BGRA: 2, BGRX: 2, RGBA: 0, RGBX: 0}  # where R sits in a 4-byte pixel (B is at 2 - R)
NAMES = {UYVY: "UYVY", UYVA: "UYVA", BGRA: "BGRA", BGRX: "BGRX", RGBA: "RGBA", RGBX: "RGBX"}
MAX_SIDE = 16384  # NDI frames larger than this are refused before anything is allocated


class PixelFormatError(ValueError):
    """A frame whose format, size or stride cannot be read."""


def describe(code: int) -> str:
    if code in NAMES:
        return NAMES[code]
    chars = "".join(chr((int(code) >> s) & 0xFF) for s in (0, 8, 16, 24))
    return chars if chars.isprintable() else f"FourCC 0x{int(code) & 0xFFFFFFFF:08x}"


def frame_view(data: np.ndarray, code: int, width: int, height: int) -> np.ndarray:
    """The (height, width, bytes-per-pixel) view of a received frame.

    `data` holds the frame's `height` rows, each at least a row of pixels long (ndi-python hands a
    copy shaped (height, width, stride // width): with a padded stride the extra bytes sit at each
    row's end and are cut off here). Raises PixelFormatError for formats this bridge does not read
    and for sizes that do not fit the buffer, before anything is allocated.
    """
    if code not in BYTES_PER_PIXEL:
        raise PixelFormatError(f"NDI pixel format {describe(code)} is not supported (ask for BGRX or UYVY)")
    bpp = BYTES_PER_PIXEL[code]
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise PixelFormatError(f"NDI frame size {width}x{height} is out of range")
    if code in (UYVY, UYVA) and width % 2:
        raise PixelFormatError(f"NDI {describe(code)} frame width {width} is odd")
    flat = np.asarray(data)
    if flat.dtype != np.uint8:
        raise PixelFormatError(f"NDI frame buffer must be uint8, got {flat.dtype}")
    row = width * bpp
    if flat.size % height or flat.size // height < row:
        raise PixelFormatError(f"NDI frame buffer of {flat.size} bytes does not hold {height} rows of "
                               f"{width} {describe(code)} pixels")
    return flat.reshape(height, -1)[:, :row].reshape(height, width, bpp)


def to_rgb(pixels: np.ndarray, code: int, out: np.ndarray | None = None) -> np.ndarray:
    """A new (or `out`) HxWx3 uint8 RGB array from an (H, W, 4) or (H, W, 2) view of format `code`."""
    h, w = pixels.shape[:2]
    if out is None:
        out = np.empty((h, w, 3), np.uint8)
    if code in RED_INDEX:
        r = RED_INDEX[code]
        out[:, :, 0] = pixels[:, :, r]
        out[:, :, 1] = pixels[:, :, 1]
        out[:, :, 2] = pixels[:, :, 2 - r]
        return out
    if code in (UYVY, UYVA):
        return uyvy_to_rgb(pixels, out)
    raise PixelFormatError(f"NDI pixel format {describe(code)} is not supported (ask for BGRX or UYVY)")


# BT.709 video range, scaled by 1024.
_Y = 1192  # 255/219
_R_CR, _G_CB, _G_CR, _B_CB = 1836, 218, 546, 2163
_Y_R, _Y_G, _Y_B = 187, 629, 63
_CB_R, _CB_G, _CB_B = -103, -347, 450
_CR_R, _CR_G, _CR_B = 450, -409, -41


def uyvy_to_rgb(uyvy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 2) UYVY (byte 0: U of even / V of odd pixels, byte 1: Y) -> (H, W, 3) RGB."""
    h, w = uyvy.shape[:2]
    if w % 2:
        raise PixelFormatError(f"UYVY width {w} is odd")
    if out is None:
        out = np.empty((h, w, 3), np.uint8)
    pairs = out.reshape(h, w // 2, 2, 3)
    y = uyvy[:, :, 1].astype(np.int32)
    y -= 16
    y *= _Y
    y += 512  # rounding for the >> 10 below
    y = y.reshape(h, w // 2, 2)
    cb = uyvy[:, 0::2, 0].astype(np.int32)
    cb -= 128
    cr = uyvy[:, 1::2, 0].astype(np.int32)
    cr -= 128
    for channel, chroma in ((0, _R_CR * cr), (1, -(_G_CB * cb + _G_CR * cr)), (2, _B_CB * cb)):
        value = y + chroma[:, :, None]
        value >>= 10
        np.clip(value, 0, 255, out=value)
        pairs[:, :, :, channel] = value
    return out


def rgb_to_uyvy(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) RGB, W even -> (H, W, 2) UYVY; each pixel pair's chroma is the mean of the two."""
    h, w = rgb.shape[:2]
    if w % 2:
        raise PixelFormatError(f"UYVY needs an even width, got {w}")
    if out is None:
        out = np.empty((h, w, 2), np.uint8)
    r = rgb[:, :, 0].astype(np.int32)
    g = rgb[:, :, 1].astype(np.int32)
    b = rgb[:, :, 2].astype(np.int32)
    y = _Y_R * r + _Y_G * g + _Y_B * b
    y += 512 + (16 << 10)
    y >>= 10
    out[:, :, 1] = y  # 16..235 by construction
    rs, gs, bs = r[:, 0::2] + r[:, 1::2], g[:, 0::2] + g[:, 1::2], b[:, 0::2] + b[:, 1::2]
    for column, (kr, kg, kb) in ((0, (_CB_R, _CB_G, _CB_B)), (1, (_CR_R, _CR_G, _CR_B))):
        c = kr * rs + kg * gs + kb * bs
        c += 1024 + (128 << 11)
        c >>= 11
        out[:, column::2, 0] = c  # 16..240 by construction
    return out


def rgb_to_bgrx(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3 or 4) RGB(A) -> (H, W, 4) BGRX with X = 255 (alpha is not sent: outputs are opaque)."""
    h, w = rgb.shape[:2]
    if out is None:
        out = np.empty((h, w, 4), np.uint8)
        out[:, :, 3] = 255
    out[:, :, 0] = rgb[:, :, 2]
    out[:, :, 1] = rgb[:, :, 1]
    out[:, :, 2] = rgb[:, :, 0]
    return out

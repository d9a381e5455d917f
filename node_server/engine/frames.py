"""Frame ingest and output on the device: uint8 HxWxC in, normalised NCHW out, and back.

Inputs of any size and aspect ratio are centre-cropped to the engine's aspect ratio and then
resized (bilinear, antialiased when shrinking); grey frames are repeated to RGB and the alpha of
RGBA frames is dropped. Everything after the host-to-device copy runs as tensor ops.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


def check_size(size: "int | Sequence[int]") -> tuple[int, int]:
    """Normalise `size` (an int or (height, width)) and check it is a multiple of 32."""
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(s) for s in size)
    for name, v in (("height", h), ("width", w)):
        if v < 32 or v % 32:
            from ..errors import ParamError

            raise ParamError("size", f"{name} must be a positive multiple of 32, got {v}")
    return h, w


def _from_numpy(frame: np.ndarray) -> torch.Tensor:
    """Wrap without copying; read-only buffers (a ZeroMQ message) are only ever read here."""
    frame = np.ascontiguousarray(frame)
    if frame.flags.writeable:
        return torch.from_numpy(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(frame)


def _as_hwc(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = _from_numpy(frame) if isinstance(frame, np.ndarray) else frame
    if t.dtype != torch.uint8:
        raise InputError(f"frames must be uint8, got {t.dtype}")
    if t.ndim == 2:
        t = t[:, :, None]
    if t.ndim != 3 or t.shape[2] not in (1, 3, 4):
        raise InputError(f"frames must be HxW, HxWx1, HxWx3 or HxWx4 uint8 arrays, got shape {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise InputError(f"empty frame of shape {tuple(t.shape)}")
    return t


def centre_crop_box(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centred crop with the output's aspect ratio."""
    if h * out_w > w * out_h:  # too tall
        ch = max(1, round(w * out_h / out_w))
        return (h - ch) // 2, 0, ch, w
    cw = max(1, round(h * out_w / out_h))
    return 0, (w - cw) // 2, h, cw


def _staged(frames: Sequence[np.ndarray | torch.Tensor], size: tuple[int, int], device: torch.device):
    """The common case on a GPU (host RGB frames already at the engine's size): one pinned staging
    buffer and one asynchronous copy for the whole batch. None when the frames need the general path."""
    h, w = size
    if device.type != "cuda" or not all(
        isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.shape == (h, w, 3) for f in frames
    ):
        return None
    stage = torch.empty((len(frames), h, w, 3), dtype=torch.uint8, pin_memory=True)
    view = stage.numpy()
    for k, frame in enumerate(frames):
        np.copyto(view[k], frame)
    # The caching host allocator keeps `stage` from reuse until this copy has finished.
    batch = stage.to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def to_device_batch(
    frames: Sequence[np.ndarray | torch.Tensor], size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """uint8 frames -> float32 [B,3,H,W] in [0,1] on `device`, cropped and resized to `size`."""
    device = torch.device(device)
    staged = _staged(frames, size, device)
    if staged is not None:
        return staged
    out_h, out_w = size
    items = []
    for frame in frames:
        t = _as_hwc(frame)
        t = t.to(device, non_blocking=True)
        c = t.shape[2]
        if c == 1:
            t = t.expand(-1, -1, 3)
        elif c == 4:
            t = t[:, :, :3]
        x = t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        h, w = x.shape[2], x.shape[3]
        if (h, w) != (out_h, out_w):
            top, left, ch, cw = centre_crop_box(h, w, out_h, out_w)
            x = x[:, :, top : top + ch, left : left + cw]
            x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=ch > out_h)
            x = x.clamp_(0.0, 1.0)
        items.append(x)
    return torch.cat(items, 0)


def to_host_frames(images: torch.Tensor, streams) -> np.ndarray:
    """uint8 [B,H,W,3] on the device -> host numpy, through a pinned buffer on a GPU. Waits only for
    the work queued before it on the current stream (an event, not a device-wide synchronise)."""
    if images.device.type != "cuda":
        return images.numpy()
    host = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(images, non_blocking=True)
    streams.record().synchronize()
    return host.numpy()


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """[-1,1] float [B,3,H,W] -> uint8 [B,H,W,3] on the same device (rounded like the stock pipeline)."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_uint8_frames(x: torch.Tensor) -> torch.Tensor:
    """Ingested frames ([B,3,H,W] in [0,1]) back to uint8 [B,H,W,3]: exact for frames that needed
    no resize (pass-through)."""
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

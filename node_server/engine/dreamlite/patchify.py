"""Qwen2-VL image patchification on the device: the stock image processor's output, without PIL.

The stock processor normalises on the CPU with numpy and lays patches out as
(merge row, merge col, 2x2 merge block, channel, temporal copy, patch row, patch col). The engine
runs this per frame, so it is done here with reshapes on whatever device the frames live on.
Resizing is the caller's job (frames arrive already at a multiple of patch_size * merge_size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def grid_thw_for(height: int, width: int, *, patch_size: int = 16, merge_size: int = 2) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) of one still image; the encoder sees grid_h * grid_w / merge_size**2 tokens."""
    factor = patch_size * merge_size
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(f"image size {height}x{width} must be a positive multiple of {factor} (patch x merge)")
    return 1, height // patch_size, width // patch_size


def num_image_tokens(height: int, width: int, *, patch_size: int = 16, merge_size: int = 2) -> int:
    """LLM tokens an image becomes (`<|image_pad|>` count): 256 for 512x512."""
    _, gh, gw = grid_thw_for(height, width, patch_size=patch_size, merge_size=merge_size)
    return gh * gw // (merge_size * merge_size)


def patchify(
    images: torch.Tensor,
    *,
    patch_size: int = 16,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean: Sequence[float] = (0.5, 0.5, 0.5),
    image_std: Sequence[float] = (0.5, 0.5, 0.5),
    grid_device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B,3,H,W] in [0,1] -> (pixel_values [B*gh*gw, 3*T*P*P], grid_thw [B,3] long).

    pixel_values keep the input's floating dtype (float32 input matches the stock processor to
    float rounding). grid_thw goes to `grid_device` (default: the images' device, which is what
    transformers 5's Qwen3-VL vision tower needs: it builds its position indices on grid_thw's device).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped [B, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected floating-point images in [0, 1], got dtype {images.dtype}")
    b, c, h, w = images.shape
    _, gh, gw = grid_thw_for(h, w, patch_size=patch_size, merge_size=merge_size)
    mean = torch.as_tensor(image_mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    std = torch.as_tensor(image_std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    x = (images - mean) / std
    m, p = merge_size, patch_size
    x = x.reshape(b, c, gh // m, m, p, gw // m, m, p)
    # -> (B, merge row, merge col, row in block, col in block, C, patch row, patch col)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    # A still image is its own temporal neighbour: repeat it temporal_patch_size times after C.
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal_patch_size, p, p)
    pixel_values = x.reshape(b * gh * gw, c * temporal_patch_size * p * p)
    grid = torch.tensor([1, gh, gw], dtype=torch.long, device=grid_device or images.device)
    return pixel_values, grid.expand(b, 3).contiguous()

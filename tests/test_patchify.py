"""The device patchifier must reproduce the stock Qwen2-VL (PIL) image processor exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node_server.engine.dreamlite.patchify import grid_thw_for, num_image_tokens, patchify
from node_server.models.reference import build_image_processor
from node_server.models.synthetic import IMAGE_PROCESSOR_CONFIG


def _stock(images_uint8: np.ndarray):
    """Stock processor with resizing bounds opened so that multiples of 32 pass through unresized."""
    from PIL import Image

    proc = build_image_processor(IMAGE_PROCESSOR_CONFIG, size={"shortest_edge": 32 * 32, "longest_edge": 4096 * 4096})
    out = proc(images=[Image.fromarray(im) for im in images_uint8], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (512, 512), (224, 448)])
def test_matches_stock_processor(hw):
    h, w = hw
    rng = np.random.default_rng(h * 1000 + w)
    images = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
    ref_pv, ref_grid = _stock(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    pv, grid = patchify(x)
    assert pv.shape == ref_pv.shape == (2 * (h // 16) * (w // 16), 3 * 2 * 16 * 16)
    assert torch.equal(grid, ref_grid.long()) and grid.dtype == torch.long
    assert (pv - ref_pv.float()).abs().max().item() <= 1e-5


def test_layout_is_not_trivially_symmetric():
    """Catches a wrong permute that the random-image test could not (it would, but say where)."""
    x = torch.zeros(1, 3, 32, 32)
    x[0, 1, 16:, :16] = 1.0  # green in the bottom-left 16x16 patch
    pv, grid = patchify(x, image_mean=(0.0,) * 3, image_std=(1.0,) * 3)
    assert grid.tolist() == [[1, 2, 2]]
    lit = (pv.view(4, 3, 2, 16, 16) > 0)
    # merge order is row-major inside the 2x2 block: patch 2 is (row 1, col 0); channel 1; both copies
    assert lit.sum().item() == 2 * 16 * 16
    assert lit[2, 1].all() and not lit[[0, 1, 3]].any()


def test_grid_helpers_and_errors():
    assert grid_thw_for(512, 512) == (1, 32, 32)
    assert num_image_tokens(512, 512) == 256 and num_image_tokens(256, 256) == 64
    with pytest.raises(ValueError, match="multiple of 32"):
        grid_thw_for(100, 64)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        patchify(torch.zeros(3, 64, 64))
    _, grid = patchify(torch.zeros(3, 3, 64, 96), grid_device="cpu")
    assert grid.tolist() == [[1, 4, 6]] * 3

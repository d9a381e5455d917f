"""One frame with a dreamlite-lllite adapter, through the engine, against that package's forward
semantics on the stock diffusers pipeline (tiny model, CPU, fp32).

The reference is independent of the engine's LLLite code: `tests/lllite_reference.py`
re-implements dreamlite-lllite's controller (its module layout, `set_cond_image` with the
zero-padded source half, the `host(x + m * up(mid(cat[emb, down(x)])))` forward) with forward
pre-hooks, and the frame is made by `DreamLiteMobilePipeline.__call__` with the same image, prompt
and starting noise. The file the engine loads is that controller's state dict, saved the way the
package's training scripts save it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from lllite_reference import UpstreamController, save_like_upstream
from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.lllite.adapter import LLLiteProjection
from node_server.engine.params import Params
from node_server.models.reference import build_reference_pipeline

SIZE = 512  # the stock pipeline shows the encoder a 512x512 image; the adapter's cond_image_size
PROMPT = "turn it into a watercolour"


@pytest.fixture(scope="module")
def setup(tiny_bundle, tmp_path_factory):
    """A private copy of the tiny model, its stock pipeline, and an upstream-saved adapter file."""
    bundle = copy.copy(tiny_bundle)
    bundle.unet = copy.deepcopy(tiny_bundle.unet)
    ctrl = UpstreamController(bundle.unet, cond_image_size=SIZE, sample_size=SIZE // 8).randomize(seed=5, up_std=0.1)
    path = tmp_path_factory.mktemp("lllite") / "temporal_lllite_step001440.safetensors"
    save_like_upstream(ctrl, path)
    return bundle, build_reference_pipeline(bundle), ctrl, path


def photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.BILINEAR))


def stock_frame(reference, img: np.ndarray, seed: int, ctrl=None, cond=None, multiplier: float = 1.0) -> np.ndarray:
    """The stock pipeline's frame, with the reference controller's hooks on the U-Net when given."""
    if ctrl is not None:
        ctrl.set_cond_image(torch.from_numpy(cond.copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1)
        ctrl.set_multiplier(multiplier)
        ctrl.attach()
    try:
        out = reference(prompt=PROMPT, image=Image.fromarray(img), num_inference_steps=1,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    finally:
        if ctrl is not None:
            ctrl.remove()
    return (out * 255).round().astype(np.int16)


def engine_frame(bundle, img: np.ndarray, seed: int, **options) -> np.ndarray:
    params = Params().replace(prompt=PROMPT, steps=1, seed=seed, **options.pop("params", {}))
    with StreamEngine(bundle, params, size=SIZE, encoder_image_size=SIZE, progress=False, **options) as eng:
        out = eng.step([img], [0])[0].image.astype(np.int16)
    assert not any(isinstance(m, LLLiteProjection) for m in bundle.unet.modules())
    return out


@pytest.mark.parametrize("source", ["frame", "temporal"])
def test_one_frame_with_an_upstream_file_matches_upstream_forward(setup, source):
    """The conditioning image of a first frame is the frame itself, for both sources (a temporal
    adapter has no previous output yet)."""
    bundle, reference, ctrl, path = setup
    img = photo(3)
    want = stock_frame(reference, img, seed=0, ctrl=ctrl, cond=img, multiplier=0.8)
    got = engine_frame(bundle, img, seed=0, lllite=str(path), lllite_source=source,
                       params={"lllite_strength": 0.8})
    diff = np.abs(got - want)
    assert diff.max() <= 2, f"max diff {diff.max()} levels"
    assert diff.mean() < 0.05


def test_the_adapter_changes_the_frame_so_the_match_means_something(setup):
    bundle, reference, ctrl, path = setup
    img = photo(4)
    plain_stock = stock_frame(reference, img, seed=1)
    adapted_stock = stock_frame(reference, img, seed=1, ctrl=ctrl, cond=img)
    assert np.abs(adapted_stock - plain_stock).mean() > 2.0, "the reference adapter barely acts"
    plain = engine_frame(bundle, img, seed=1)
    adapted = engine_frame(bundle, img, seed=1, lllite=str(path), lllite_source="frame")
    assert np.abs(plain - plain_stock).max() <= 1  # the engine without an adapter is the stock pipeline
    assert np.abs(adapted - plain).mean() > 2.0
    assert np.abs(adapted - adapted_stock).max() <= 2
    # a different conditioning image gives a different frame (the CNN path is live too)
    other = stock_frame(reference, img, seed=1, ctrl=ctrl, cond=photo(9))
    assert np.abs(other - adapted_stock).mean() > 0.5

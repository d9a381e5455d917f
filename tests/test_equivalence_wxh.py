"""A non-square frame (256x384, 3:2) through the engine against the stock `DreamLiteMobilePipeline`
(tiny model, CPU, fp32): the VAE, the side-by-side edit latent, the size conditioning (width,
height) and the shifted schedule all follow the frame's own shape.

The stock pipeline resizes the encoder's view to 512x512 with PIL (uint8) and the engine on the
device (float); both are given the same pixels here (the engine's resize, rounded to 8 bits), so
the comparison isolates the non-square denoising path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params
from node_server.models.reference import build_reference_pipeline

H, W = 256, 384


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    ref = build_reference_pipeline(tiny_bundle)
    stock = ref.image_processor.resize

    def resize(image, height, width, **kw):  # the encoder's 512x512 view, as the engine makes it
        if (height, width) != (512, 512):
            return stock(image, height=height, width=width, **kw)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return Image.fromarray((x[0].permute(1, 2, 0) * 255).round().byte().numpy())

    ref.image_processor.resize = resize
    return ref


@pytest.mark.parametrize("steps,seed", [(1, 0), (4, 7)])
def test_a_3_2_frame_matches_the_stock_pipeline(tiny_bundle, reference, steps, seed):
    rng = np.random.default_rng(3)
    img = np.asarray(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((W, H), Image.BILINEAR))
    prompt = "turn it into a watercolour"
    ref = reference(prompt=prompt, image=Image.fromarray(img), num_inference_steps=steps,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    ref_u8 = (ref * 255).round().astype(np.int16)
    with StreamEngine(tiny_bundle, Params().replace(prompt=prompt, steps=steps, seed=seed), size=(H, W),
                      encoder_image_size=512) as eng:
        view = eng.encoder.prepare_images
        eng.encoder.prepare_images = lambda frames: (view(frames) * 255).round() / 255  # 8-bit, as PIL's
        out = eng.step([img], [0])[0].image.astype(np.int16)
    assert out.shape == ref_u8.shape == (H, W, 3)
    diff = np.abs(out - ref_u8)
    assert diff.max() <= 1, f"max diff {diff.max()} levels"
    assert diff.mean() < 0.02

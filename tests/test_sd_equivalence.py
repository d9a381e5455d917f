"""The SD engine pinned to diffusers' StableDiffusionImg2ImgPipeline (tiny model, CPU, fp32):
one frame through the engine equals the pipeline with the same scheduler, strength and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from node_server.engine.params import Params
from node_server.engine.sd.encoder import ClipPromptEncoder
from node_server.engine.sd.engine import SDStreamEngine, t_index_list

SIZE = 64


@pytest.fixture(scope="module")
def sd_bundle():
    from node_server.models import build_synthetic_sd

    return build_synthetic_sd("sd-turbo-tiny", seed=0)


def photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.BILINEAR))


def reference(bundle, scheduler_name: str):
    from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline

    scheduler = bundle.scheduler
    if scheduler_name == "lcm":
        scheduler = LCMScheduler.from_config(scheduler.config)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer, unet=bundle.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_clip_conditioning_matches_stock_encode_prompt(sd_bundle):
    pipe = reference(sd_bundle, "euler")
    ref, _ = pipe.encode_prompt("a neon city at night", torch.device("cpu"), 1, False)
    enc = ClipPromptEncoder(sd_bundle.text_encoder, sd_bundle.tokenizer, torch.device("cpu"), torch.float32)
    embeds, mask = enc.encode(enc.tokenize(["a neon city at night", "an oil painting"]))
    assert embeds.shape == (2, 77, sd_bundle.text_encoder.config.hidden_size)
    torch.testing.assert_close(embeds[:1], ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(embeds[0], embeds[1])


# (scheduler, num_inference_steps, strength, steps): the engine's indices equal the pipeline's steps
CASES = [("euler", 2, 0.5, 1), ("euler", 4, 0.5, 2), ("euler", 1, 1.0, 1), ("lcm", 2, 0.5, 1), ("lcm", 1, 1.0, 1)]


@pytest.mark.parametrize("scheduler,n,strength,steps", CASES)
def test_one_frame_matches_stock_img2img_pipeline(sd_bundle, scheduler, n, strength, steps):
    img = photo(n + steps)
    prompt, seed = "make it a watercolour", 7
    assert len(t_index_list(steps, strength, n)) == steps
    ref = reference(sd_bundle, scheduler)(
        prompt=prompt, image=Image.fromarray(img), strength=strength, num_inference_steps=n, guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
    ).images[0]
    ref_u8 = (ref * 255).round().astype(np.int16)
    params = Params().replace(prompt=prompt, steps=steps, strength=strength, seed=seed)
    with SDStreamEngine(sd_bundle, params, size=SIZE, num_inference_steps=n, scheduler=scheduler) as eng:
        out = eng.step([img], [0])[0].image.astype(np.int16)
    assert out.shape == ref_u8.shape
    diff = np.abs(out - ref_u8)
    assert diff.max() <= 1, f"max diff {diff.max()} levels"
    assert diff.mean() < 0.02
    assert ref_u8.std() > 5  # the reference is an image, not a flat field


def test_strength_changes_the_result_like_the_pipeline(sd_bundle):
    """A different strength is a different pipeline result, and the engine follows it."""
    img = photo(11)
    outs = []
    for strength in (0.5, 1.0):
        params = Params().replace(prompt="x", strength=strength)
        with SDStreamEngine(sd_bundle, params, size=SIZE, num_inference_steps=2) as eng:
            outs.append(eng.step([img], [0])[0].image.astype(np.int16))
    assert np.abs(outs[0] - outs[1]).mean() > 1

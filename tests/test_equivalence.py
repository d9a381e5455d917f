"""The engine pinned to the stock diffusers pipeline (tiny model, CPU, fp32).

Conditioning: our fixed-shape, processor-free encoder against
`DreamLiteMobilePipeline.encode_prompt(mode="edit")`. Whole frame: one frame through the engine
against `DreamLiteMobilePipeline.__call__` with the same image, prompt and starting noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from node_server.engine.dreamlite.encoder import EDIT_INSTRUCTION, PromptEncoder
from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params
from node_server.models.reference import build_reference_pipeline

SIZE = 512  # the stock pipeline shows the encoder a 512x512 image


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    return build_reference_pipeline(tiny_bundle)


def photo(seed: int) -> np.ndarray:
    """A smooth random image (a noise field upsampled), closer to a photo than white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.BILINEAR))


@pytest.mark.parametrize("prompt", ["turn it into an oil painting", "make it snowy at night"])
def test_edit_conditioning_matches_stock_encode_prompt(tiny_bundle, reference, prompt):
    img = photo(1)
    ref_embeds, ref_mask = reference.encode_prompt(
        mode="edit", prompts=[EDIT_INSTRUCTION.format(prompt)], device=torch.device("cpu"),
        dtype=torch.float32, image=Image.fromarray(img),
    )
    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=SIZE)
    tokens = enc.tokenize(prompt)
    frames = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    embeds, mask = enc.encode(tokens, frames)
    n = ref_embeds.shape[1]
    assert int(mask.sum()) == n == int(ref_mask.sum())
    assert embeds.shape[1] == enc.cond_length  # fixed length whatever the prompt
    torch.testing.assert_close(embeds[:, :n], ref_embeds, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(embeds[:, n:]) == 0  # padding is zero and masked


@pytest.mark.parametrize("steps,seed", [(1, 0), (4, 7)])
def test_one_frame_matches_stock_pipeline_call(tiny_bundle, reference, steps, seed):
    img = photo(2 + steps)
    prompt = "turn it into a watercolour"
    ref = reference(
        prompt=prompt, image=Image.fromarray(img), num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
    ).images[0]
    ref_u8 = (ref * 255).round().astype(np.int16)
    params = Params().replace(prompt=prompt, steps=steps, seed=seed)
    with StreamEngine(tiny_bundle, params, size=SIZE, encoder_image_size=SIZE) as eng:
        out = eng.step([img], [0])[0].image.astype(np.int16)
    assert out.shape == ref_u8.shape
    diff = np.abs(out - ref_u8)
    assert diff.max() <= 1, f"max diff {diff.max()} levels"
    assert diff.mean() < 0.02
